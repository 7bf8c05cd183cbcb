//! The business day: which day's books a transaction belongs to. A daily cut-over time in
//! a time zone (a fixed offset from UTC, or an IANA zone with its daylight saving) closes one business date and opens the next; an
//! operator can cut over early by hand. Every pair record carries its business date, taken
//! at the moment the request was received, and every cut-over is an audit event.
//!
//! With the cut-over at 23:00, a transaction at 22:59:59 local time belongs to today and
//! one at 23:00:00 to tomorrow; at 00:00 the business date is the local calendar date. A
//! hand cut-over at time T moves every transaction from T on to the next business date,
//! until the scheduled cut-over catches up with it.

use std::sync::Mutex;

use switchyard_iso8583::datetime::Civil;

/// When the day ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutoverSchedule {
    /// The local time of the cut-over, seconds after midnight (0..86400).
    pub at_s: u32,
    /// The time zone.
    pub zone: Zone,
}

/// The time zone the cut-over is kept in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Zone {
    /// A fixed offset: seconds east of UTC.
    Fixed(i32),
    /// An IANA zone (`Europe/Berlin`), its offset changing with daylight saving: the
    /// database is built into the binary (it does not depend on the host's zoneinfo).
    Iana(jiff::tz::TimeZone),
}

impl Zone {
    /// Seconds east of UTC at the instant `us`.
    fn offset_at(&self, us: i64) -> i64 {
        match self {
            Zone::Fixed(s) => i64::from(*s),
            Zone::Iana(tz) => jiff::Timestamp::from_microsecond(us)
                .map_or(0, |t| i64::from(tz.to_offset(t).seconds())),
        }
    }
}

const ZONE_FORMS: &str = "UTC, +HH:MM / -HH:MM, or an IANA name such as Europe/Berlin";

impl CutoverSchedule {
    /// A schedule from `HH:MM` and a zone: `UTC`, an offset `+HH:MM` / `-HH:MM`, or an
    /// IANA name (`Europe/London`: the cut-over follows the local clock through daylight
    /// saving).
    pub fn parse(at: &str, zone: &str) -> Result<CutoverSchedule, String> {
        let hm = |text: &str| -> Option<u32> {
            let (h, m) = text.split_once(':')?;
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 && text.len() == 5).then_some(h * 3600 + m * 60)
        };
        let at_s = hm(at).ok_or_else(|| format!("cut-over time {at:?}: HH:MM"))?;
        let zone = match zone {
            "UTC" | "Z" | "+00:00" => Zone::Fixed(0),
            _ => match zone.split_at_checked(1) {
                Some((sign @ ("+" | "-"), rest)) => {
                    let s = hm(rest)
                        .filter(|s| *s <= 14 * 3600)
                        .ok_or_else(|| format!("time zone {zone:?}: {ZONE_FORMS}"))?;
                    let s = i32::try_from(s).unwrap_or(0);
                    Zone::Fixed(if sign == "-" { -s } else { s })
                }
                _ => Zone::Iana(
                    jiff::tz::TimeZone::get(zone)
                        .map_err(|_| format!("time zone {zone:?}: {ZONE_FORMS}"))?,
                ),
            },
        };
        Ok(CutoverSchedule { at_s, zone })
    }

    /// The business day (days since 1970-01-01) of the instant `us` (µs since the epoch):
    /// the local date, or the next one at and after the cut-over's local time. On a day
    /// the clocks change, the cut-over is at that local time on the new clock (a cut-over
    /// in the hour that is skipped falls at the end of the skipped hour).
    pub fn day_at(&self, us: i64) -> i64 {
        let local = us.div_euclid(1_000_000) + self.zone.offset_at(us);
        let (day, time) = (local.div_euclid(86_400), local.rem_euclid(86_400));
        if self.at_s > 0 && time >= i64::from(self.at_s) {
            day + 1
        } else {
            day
        }
    }
}

/// A business day as `YYYYMMDD`.
pub fn date_text(day: i64) -> String {
    format!("{:08}", date_number(day))
}

/// A business day as the number `YYYYMMDD`.
pub fn date_number(day: i64) -> u64 {
    let c = Civil::from_unix(day * 86_400);
    u64::try_from(c.year).unwrap_or(0) * 10_000 + u64::from(c.month) * 100 + u64::from(c.day)
}

/// The business day of the switch: its schedule and any hand cut-over.
#[derive(Debug)]
pub struct BusinessDay {
    schedule: CutoverSchedule,
    /// A hand cut-over: from this instant (µs) the day is at least this one.
    manual: Mutex<Option<(i64, i64)>>,
    /// The last day a cut-over event opened (none yet: the first check announces).
    announced: Mutex<Option<i64>>,
}

impl BusinessDay {
    /// The business day on `schedule`.
    pub fn new(schedule: CutoverSchedule) -> BusinessDay {
        BusinessDay {
            schedule,
            manual: Mutex::new(None),
            announced: Mutex::new(None),
        }
    }

    /// The cut-over due at `now_us` that no event has announced yet: (closed, opened). The
    /// first call after a start announces the day the switch starts in when the log's last
    /// cut-over opened an earlier one.
    pub fn due(&self, now_us: i64) -> Option<(i64, i64)> {
        let today = self.day_at(now_us);
        let mut announced = self.announced.lock().unwrap_or_else(|p| p.into_inner());
        match *announced {
            Some(last) if last >= today => None,
            Some(last) => {
                *announced = Some(today);
                Some((last, today))
            }
            None => {
                *announced = Some(today);
                None
            }
        }
    }

    /// The business day of the instant `us`.
    pub fn day_at(&self, us: i64) -> i64 {
        let scheduled = self.schedule.day_at(us);
        match *self.manual.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((from, day)) if us >= from => scheduled.max(day),
            _ => scheduled,
        }
    }

    /// The business date (`YYYYMMDD`) of the instant `us`.
    pub fn date_at(&self, us: i64) -> String {
        date_text(self.day_at(us))
    }

    /// Cut over by hand at `now_us`: the business day after the current one starts now.
    /// The (closed, opened) days.
    pub fn cut_over(&self, now_us: i64) -> (i64, i64) {
        let closed = self.day_at(now_us);
        *self.manual.lock().unwrap_or_else(|p| p.into_inner()) = Some((now_us, closed + 1));
        *self.announced.lock().unwrap_or_else(|p| p.into_inner()) = Some(closed + 1);
        (closed, closed + 1)
    }

    /// Restore the last cut-over found in the audit log (at `from_us`, opening `day`): a
    /// hand cut-over keeps its effect across a restart, and a scheduled one missed while
    /// the switch was down is announced by the next [`due`](Self::due).
    pub fn restore(&self, from_us: i64, day: i64) {
        let mut manual = self.manual.lock().unwrap_or_else(|p| p.into_inner());
        if manual.is_none_or(|(f, _)| from_us >= f) {
            *manual = Some((from_us, day));
        }
        *self.announced.lock().unwrap_or_else(|p| p.into_inner()) = Some(day);
    }

    /// The audit event of a cut-over.
    pub fn event(closed: i64, opened: i64, by: &str, at_us: i64) -> serde_json::Value {
        serde_json::json!({
            "event": "cut-over",
            "closed": date_text(closed),
            "opened": date_text(opened),
            "opened_day": opened,
            "by": by,
            "at_us": at_us,
        })
    }
}

/// The last cut-over event in the audit log at `dir`: (at_us, opened day). Read once at
/// start, over the whole log.
pub fn last_cut_over(
    dir: &std::path::Path,
) -> Result<Option<(i64, i64)>, switchyard_audit::AuditError> {
    let mut last = None;
    switchyard_audit::for_each(dir, |r| {
        if r.kind == Some(switchyard_audit::RecordKind::Event) {
            let event: serde_json::Value = switchyard_audit::payload::decode(r.seq, r.payload)?;
            if event["event"] == "cut-over" {
                if let (Some(at), Some(day)) =
                    (event["at_us"].as_i64(), event["opened_day"].as_i64())
                {
                    last = Some((at, day));
                }
            }
        }
        Ok(())
    })?;
    Ok(last)
}

/// Announce scheduled cut-overs as audit events (checked every second) until `shutdown`.
pub async fn announce(
    day: std::sync::Arc<BusinessDay>,
    audit: std::sync::Arc<switchyard_audit::AuditLog>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        if let Some((closed, opened)) = day.due(crate::flow::now_us()) {
            let event = BusinessDay::event(closed, opened, "schedule", crate::flow::now_us());
            tracing::info!(closed = %date_text(closed), opened = %date_text(opened), "cut-over");
            if let Err(e) = audit
                .append_record(switchyard_audit::RecordKind::Event, &event)
                .await
            {
                tracing::error!(error = %e, "cut-over not audited");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(civil: &str) -> i64 {
        Civil::parse(civil).unwrap().to_unix().unwrap() * 1_000_000
    }

    #[test]
    fn the_cut_over_splits_the_day_in_its_time_zone() {
        // 23:00 in UTC+01:00 is 22:00 UTC.
        let schedule = CutoverSchedule::parse("23:00", "+01:00").unwrap();
        let day = BusinessDay::new(schedule);
        assert_eq!(day.date_at(us("2026-12-03T21:59:59Z")), "20261203");
        assert_eq!(day.date_at(us("2026-12-03T22:00:00Z")), "20261204");
        assert_eq!(day.date_at(us("2026-12-31T22:30:00Z")), "20270101");
        let midnight = CutoverSchedule::parse("00:00", "-05:00").unwrap();
        assert_eq!(
            midnight.day_at(us("2026-12-04T04:59:59Z")),
            midnight.day_at(us("2026-12-03T05:00:00Z"))
        );
        assert_eq!(
            date_text(midnight.day_at(us("2026-12-04T04:59:59Z"))),
            "20261203"
        );
        for bad in [
            ("24:00", "UTC"),
            ("23:00", "Mars/Olympus_Mons"),
            ("23:00", "+1:00"),
            ("7:00", "UTC"),
            ("23:00", "+15:00"),
        ] {
            assert!(CutoverSchedule::parse(bad.0, bad.1).is_err(), "{bad:?}");
        }
    }

    /// An IANA zone: the cut-over at 23:00 on the local clock is 22:00 UTC in winter and
    /// 21:00 UTC in summer in Berlin, and the day the clocks go forward has 23 hours.
    #[test]
    fn an_iana_zone_keeps_the_cut_over_on_the_local_clock_through_daylight_saving() {
        let berlin = CutoverSchedule::parse("23:00", "Europe/Berlin").unwrap();
        let date = |t: &str| date_text(berlin.day_at(us(t)));
        assert_eq!(date("2026-12-03T21:59:59Z"), "20261203");
        assert_eq!(date("2026-12-03T22:00:00Z"), "20261204", "winter: UTC+1");
        assert_eq!(date("2026-07-03T20:59:59Z"), "20260703");
        assert_eq!(date("2026-07-03T21:00:00Z"), "20260704", "summer: UTC+2");
        // 29 March 2026: 02:00 local becomes 03:00 (01:00 UTC). The day before closed at
        // 22:00 UTC, this one at 21:00 UTC.
        assert_eq!(date("2026-03-28T22:00:00Z"), "20260329");
        assert_eq!(date("2026-03-29T20:59:59Z"), "20260329");
        assert_eq!(date("2026-03-29T21:00:00Z"), "20260330");
        // Midnight in New York: the local calendar date.
        let ny = CutoverSchedule::parse("00:00", "America/New_York").unwrap();
        assert_eq!(date_text(ny.day_at(us("2026-12-04T04:59:59Z"))), "20261203");
        assert_eq!(date_text(ny.day_at(us("2026-07-04T03:59:59Z"))), "20260703");
        assert_eq!(date_text(ny.day_at(us("2026-07-04T04:00:00Z"))), "20260704");
    }

    #[test]
    fn a_hand_cut_over_moves_what_follows_it_to_the_next_day() {
        let day = BusinessDay::new(CutoverSchedule::parse("23:00", "UTC").unwrap());
        let noon = us("2026-12-03T12:00:00Z");
        let (closed, opened) = day.cut_over(noon);
        assert_eq!(
            (date_text(closed), date_text(opened)),
            ("20261203".into(), "20261204".into())
        );
        assert_eq!(
            day.date_at(noon - 1),
            "20261203",
            "before the cut-over: the day it closed"
        );
        assert_eq!(day.date_at(noon), "20261204");
        // The scheduled cut-over at 23:00 does not move the day again: it is already there.
        assert_eq!(day.date_at(us("2026-12-03T23:30:00Z")), "20261204");
        assert_eq!(day.date_at(us("2026-12-04T23:30:00Z")), "20261205");
        let restored = BusinessDay::new(CutoverSchedule::parse("23:00", "UTC").unwrap());
        restored.restore(noon, opened);
        assert_eq!(restored.date_at(noon + 1), "20261204");
        // Started two days later: the missed cut-over is announced once.
        let later = us("2026-12-05T12:00:00Z");
        assert_eq!(
            restored
                .due(later)
                .map(|(c, o)| (date_text(c), date_text(o))),
            Some(("20261204".into(), "20261205".into()))
        );
        assert_eq!(restored.due(later), None);
    }
}
