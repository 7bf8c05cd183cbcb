//! Calendar arithmetic for the date and time fields (7 transmission date and time,
//! 12/13 local time and date) and for timestamps in tools, without a date-time dependency.

/// A UTC calendar date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Civil {
    /// Year, e.g. 2026.
    pub year: i64,
    /// Month, 1..=12.
    pub month: u32,
    /// Day of the month, 1..=31.
    pub day: u32,
    /// Hour, 0..=23.
    pub hour: u32,
    /// Minute, 0..=59.
    pub minute: u32,
    /// Second, 0..=59.
    pub second: u32,
}

impl Civil {
    /// The UTC date and time `secs` seconds after 1970-01-01T00:00:00Z.
    pub fn from_unix(secs: i64) -> Civil {
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        // Howard Hinnant's days-to-civil algorithm.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem / 60 % 60) as u32,
            second: (rem % 60) as u32,
        }
    }

    /// Seconds since 1970-01-01T00:00:00Z; `None` for an impossible date or time.
    pub fn to_unix(self) -> Option<i64> {
        let days_in_month = match self.month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if (self.year % 4 == 0 && self.year % 100 != 0) || self.year % 400 == 0 => 29,
            2 => 28,
            _ => return None,
        };
        if self.day == 0
            || self.day > days_in_month
            || self.hour > 23
            || self.minute > 59
            || self.second > 59
        {
            return None;
        }
        // Civil-to-days, the inverse of `from_unix`.
        let y = self.year - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        Some(days * 86_400 + i64::from(self.hour * 3600 + self.minute * 60 + self.second))
    }

    /// Field 7's form, `MMDDhhmmss`.
    pub fn mmddhhmmss(&self) -> [u8; 10] {
        let mut out = [0u8; 10];
        for (i, v) in [self.month, self.day, self.hour, self.minute, self.second]
            .into_iter()
            .enumerate()
        {
            out[2 * i] = b'0' + (v / 10) as u8;
            out[2 * i + 1] = b'0' + (v % 10) as u8;
        }
        out
    }

    /// `YYYY-MM-DD`.
    pub fn date_string(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// `YYYY-MM-DDThh:mm:ssZ`.
    pub fn rfc3339(&self) -> String {
        format!(
            "{}T{:02}:{:02}:{:02}Z",
            self.date_string(),
            self.hour,
            self.minute,
            self.second
        )
    }

    /// Parse `YYYY-MM-DD`, `YYYY-MM-DDThh:mm:ss` or either followed by `Z` (UTC).
    pub fn parse(text: &str) -> Option<Civil> {
        let text = text.strip_suffix('Z').unwrap_or(text);
        let (date, time) = match text.split_once(['T', ' ']) {
            Some((d, t)) => (d, Some(t)),
            None => (text, None),
        };
        let num = |s: &str, len: usize| -> Option<u32> {
            (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        let mut d = date.split('-');
        let (year, month, day) = (num(d.next()?, 4)?, num(d.next()?, 2)?, num(d.next()?, 2)?);
        let (hour, minute, second) = match time {
            None => (0, 0, 0),
            Some(t) => {
                let mut t = t.split(':');
                (num(t.next()?, 2)?, num(t.next()?, 2)?, num(t.next()?, 2)?)
            }
        };
        let civil = Civil {
            year: i64::from(year),
            month,
            day,
            hour,
            minute,
            second,
        };
        civil.to_unix().map(|_| civil)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        let c = Civil::from_unix(1_795_499_071);
        assert_eq!(c.rfc3339(), "2026-11-24T05:44:31Z");
        assert_eq!(&c.mmddhhmmss(), b"1124054431");
        assert_eq!(Civil::from_unix(0).rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(Civil::from_unix(951_782_400).date_string(), "2000-02-29");
    }

    #[test]
    fn round_trips_and_parsing() {
        for secs in [0i64, 59, 86_399, 951_782_400, 1_795_499_071, 4_102_444_800] {
            assert_eq!(Civil::from_unix(secs).to_unix(), Some(secs));
        }
        assert_eq!(
            Civil::parse("2026-11-24T05:44:31Z").and_then(Civil::to_unix),
            Some(1_795_499_071)
        );
        assert_eq!(
            Civil::parse("2026-11-24").and_then(Civil::to_unix),
            Some(1_795_478_400)
        );
        for bad in [
            "2026-02-30",
            "2026-13-01",
            "26-11-24",
            "2026-11-24T25:00:00",
            "yesterday",
        ] {
            assert_eq!(Civil::parse(bad), None, "{bad}");
        }
    }
}
