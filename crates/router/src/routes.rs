//! The route table: which issuer link takes a request, by card BIN, message type and
//! processing code.
//!
//! A rule names BIN prefixes (`"4"`, `"5413"`) or ranges of equal-length prefixes
//! (`"222100-272099"`), optionally narrowed to some MTIs and processing codes. The most
//! specific rule wins: the longest prefix, then the narrowest range, then the rule with more
//! conditions, then the one written first. A request that no rule takes goes to the default
//! link, if there is one, and is otherwise refused with response code 15.
//!
//! Rules are checked in priority order, each a few integer comparisons: a table of hundreds
//! of rules costs well under a microsecond. A table is immutable; the router swaps whole
//! tables on reload.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::fmt;

use switchyard_iso8583::{MessageView, Mti};

use crate::error::RouterError;

/// One BIN condition: the first `digits` digits of the PAN, as a number, within `low..=high`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinRange {
    digits: u8,
    low: u64,
    high: u64,
}

impl BinRange {
    /// Parse `"4"`, `"541333"` or `"222100-272099"` (both ends with the same number of digits).
    pub fn parse(text: &str) -> Result<BinRange, String> {
        let digits_of = |s: &str| -> Result<(u8, u64), String> {
            if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("BIN {text:?}: expected 1 to 19 digits"));
            }
            Ok((
                s.len() as u8,
                s.parse()
                    .map_err(|_| format!("BIN {text:?}: not a number"))?,
            ))
        };
        match text.split_once('-') {
            None => {
                let (digits, v) = digits_of(text.trim())?;
                Ok(BinRange {
                    digits,
                    low: v,
                    high: v,
                })
            }
            Some((a, b)) => {
                let ((da, low), (db, high)) = (digits_of(a.trim())?, digits_of(b.trim())?);
                if da != db {
                    return Err(format!(
                        "BIN range {text:?}: both ends need the same number of digits"
                    ));
                }
                if low > high {
                    return Err(format!(
                        "BIN range {text:?}: the low end is above the high end"
                    ));
                }
                Ok(BinRange {
                    digits: da,
                    low,
                    high,
                })
            }
        }
    }

    fn matches(&self, pan: &[u8]) -> bool {
        let Some(prefix) = pan.get(..usize::from(self.digits)) else {
            return false;
        };
        let n = prefix.iter().try_fold(0u64, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
        });
        n.is_some_and(|n| (self.low..=self.high).contains(&n))
    }
}

impl fmt::Display for BinRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = usize::from(self.digits);
        if self.low == self.high {
            write!(f, "{:0w$}", self.low)
        } else {
            write!(f, "{:0w$}-{:0w$}", self.low, self.high)
        }
    }
}

/// Stand-in processing of a route: when its issuer link is down or busy, approve small
/// amounts for some merchant categories and transaction types, and tell the issuer later
/// with an advice (0120/0220) through the store-and-forward queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StandIn {
    /// Largest amount approved (minor units).
    pub floor_limit: u64,
    /// Merchant category codes (field 18, or the merchant's registered MCC) allowed.
    pub mccs: Vec<String>,
    /// Processing codes (field 3) or their leading digits allowed.
    pub processing_codes: Vec<String>,
}

/// A rule as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteRule {
    /// Name (a metrics label and the audit record's `route`).
    pub name: String,
    /// BIN prefixes and ranges (at least one).
    pub bins: Vec<String>,
    /// Request MTIs the rule takes (`0100`, `0200`, ...); empty: all.
    pub mtis: Vec<String>,
    /// Processing codes (field 3) or their leading digits (`"00"`, `"01"`); empty: all.
    pub processing_codes: Vec<String>,
    /// The issuer link.
    pub link: String,
    /// Stand-in processing when the link is down or busy (none: decline with 91).
    pub stand_in: Option<StandIn>,
}

#[derive(Debug, Clone)]
struct Compiled {
    route: usize,
    bin: BinRange,
    mtis: Vec<Mti>,
    processing_codes: Vec<String>,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'t> {
    /// The rule's name (`"default"` for the default route).
    pub name: &'t str,
    /// The issuer link.
    pub link: &'t str,
    /// Stand-in processing, if configured.
    pub stand_in: Option<&'t StandIn>,
}

/// An immutable route table.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    names: Vec<(String, String, Option<StandIn>)>,
    rules: Vec<Compiled>,
    default_link: Option<String>,
}

impl RouteTable {
    /// Build a table; every problem is listed, each with its rule.
    pub fn new(rules: &[RouteRule], default_link: Option<&str>) -> Result<RouteTable, RouterError> {
        let mut problems = Vec::new();
        let mut table = RouteTable {
            default_link: default_link.map(str::to_string),
            ..RouteTable::default()
        };
        for (i, rule) in rules.iter().enumerate() {
            let at = format!("route {:?}", rule.name);
            if rule.bins.is_empty() {
                problems.push(format!("{at}: no BINs"));
            }
            let mut mtis = Vec::new();
            for m in &rule.mtis {
                match Mti::parse(m) {
                    Some(mti) if mti.is_request() => mtis.push(mti.request_class()),
                    _ => problems.push(format!("{at}: {m:?} is not a request MTI")),
                }
            }
            for pc in &rule.processing_codes {
                if pc.is_empty() || pc.len() > 6 || !pc.bytes().all(|b| b.is_ascii_digit()) {
                    problems.push(format!("{at}: processing code {pc:?} is not 1 to 6 digits"));
                }
            }
            for bin in &rule.bins {
                match BinRange::parse(bin) {
                    Ok(bin) => table.rules.push(Compiled {
                        route: i,
                        bin,
                        mtis: mtis.clone(),
                        processing_codes: rule.processing_codes.clone(),
                    }),
                    Err(e) => problems.push(format!("{at}: {e}")),
                }
            }
            table
                .names
                .push((rule.name.clone(), rule.link.clone(), rule.stand_in.clone()));
        }
        if !problems.is_empty() {
            return Err(RouterError::Routes(problems));
        }
        // Most specific first; the sort is stable, so equal rules keep their written order.
        table.rules.sort_by_key(|r| {
            (
                Reverse(r.bin.digits),
                r.bin.high - r.bin.low,
                Reverse(
                    usize::from(!r.mtis.is_empty()) + usize::from(!r.processing_codes.is_empty()),
                ),
                Reverse(
                    r.processing_codes
                        .iter()
                        .map(String::len)
                        .max()
                        .unwrap_or(0),
                ),
            )
        });
        Ok(table)
    }

    /// The links every rule and the default name, for checking against the configured links.
    pub fn links(&self) -> impl Iterator<Item = &str> {
        self.names
            .iter()
            .map(|(_, l, _)| l.as_str())
            .chain(self.default_link.as_deref())
    }

    /// The route for a request, or `None` (response code 15).
    pub fn route(&self, request: &MessageView<'_>) -> Option<Route<'_>> {
        let pan = pan_of(request);
        let mti = request.mti().request_class();
        let processing = request.field(3).map(|f| f.value());
        for rule in &self.rules {
            let Some(pan) = pan.as_deref() else { break };
            if !rule.bin.matches(pan) {
                continue;
            }
            if !rule.mtis.is_empty() && !rule.mtis.contains(&mti) {
                continue;
            }
            if !rule.processing_codes.is_empty() {
                let Some(pc) = processing.as_deref() else {
                    continue;
                };
                if !rule
                    .processing_codes
                    .iter()
                    .any(|p| pc.starts_with(p.as_bytes()))
                {
                    continue;
                }
            }
            let (name, link, stand_in) = &self.names[rule.route];
            return Some(Route {
                name,
                link,
                stand_in: stand_in.as_ref(),
            });
        }
        self.default_link.as_deref().map(|link| Route {
            name: "default",
            link,
            stand_in: None,
        })
    }
}

/// The PAN of a request: field 2, or the part of track 2 (35) before the separator. A slice
/// of the frame when the dialect carries it as ASCII (no copy of card data to free).
pub fn pan_of<'a>(request: &'a MessageView<'_>) -> Option<Cow<'a, [u8]>> {
    if let Some(pan) = request.field(2) {
        return Some(pan.value());
    }
    let track = request.field(35)?.value();
    let end = track
        .iter()
        .position(|&b| b == b'=' || b == b'D')
        .unwrap_or(track.len());
    Some(match track {
        Cow::Borrowed(track) => Cow::Borrowed(&track[..end]),
        Cow::Owned(mut track) => {
            track.truncate(end);
            Cow::Owned(track)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_iso8583::{shipped, MessageBuilder};

    fn request(mti: &str, pan: &str, processing: &str) -> MessageView<'static> {
        let spec = shipped("iso8583-1987-ascii").unwrap();
        let mut b = MessageBuilder::new(spec, Mti::parse(mti).unwrap());
        b.set(2, pan)
            .unwrap()
            .set(3, processing)
            .unwrap()
            .set(11, "000001")
            .unwrap();
        MessageView::decode(spec, b.encode()).unwrap()
    }

    fn rule(name: &str, bins: &[&str], mtis: &[&str], pcs: &[&str], link: &str) -> RouteRule {
        RouteRule {
            name: name.into(),
            bins: bins.iter().map(|s| s.to_string()).collect(),
            mtis: mtis.iter().map(|s| s.to_string()).collect(),
            processing_codes: pcs.iter().map(|s| s.to_string()).collect(),
            link: link.into(),
            stand_in: None,
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(
            &[
                rule("visa", &["4"], &[], &[], "visa-link"),
                rule("visa-uk", &["476173"], &[], &[], "uk-link"),
                rule("mc", &["51-55", "222100-272099"], &[], &[], "mc-link"),
                rule("visa-cash", &["4"], &["0200"], &["01"], "cash-link"),
                rule("visa-auth", &["4"], &["0100"], &[], "auth-link"),
            ],
            None,
        )
        .unwrap()
    }

    #[test]
    fn the_longest_prefix_and_then_the_narrowest_conditions_win() {
        let t = table();
        let link = |mti, pan, pc| t.route(&request(mti, pan, pc)).map(|r| r.link);
        assert_eq!(
            link("0200", "4000056655665556", "000000"),
            Some("visa-link")
        );
        assert_eq!(
            link("0200", "4761739001010119", "000000"),
            Some("uk-link"),
            "longer prefix"
        );
        assert_eq!(
            link("0200", "4000056655665556", "010000"),
            Some("cash-link"),
            "narrowed by MTI and processing code"
        );
        assert_eq!(
            link("0100", "4000056655665556", "000000"),
            Some("auth-link")
        );
        assert_eq!(
            link("0400", "4000056655665556", "000000"),
            Some("visa-link"),
            "reversal falls back"
        );
        assert_eq!(link("0200", "5413330089020011", "000000"), Some("mc-link"));
        assert_eq!(
            link("0200", "2221000000000009", "000000"),
            Some("mc-link"),
            "range start"
        );
        assert_eq!(
            link("0200", "2720999999999996", "000000"),
            Some("mc-link"),
            "range end"
        );
        assert_eq!(
            link("0200", "2721000000000004", "000000"),
            None,
            "past the range: no route"
        );
        assert_eq!(link("0200", "6011000990139424", "000000"), None);
    }

    #[test]
    fn the_default_link_takes_the_rest_and_track_2_gives_the_pan() {
        let t = RouteTable::new(
            &[rule("visa", &["4"], &[], &[], "visa-link")],
            Some("other"),
        )
        .unwrap();
        let r = t
            .route(&request("0200", "6011000990139424", "000000"))
            .unwrap();
        assert_eq!((r.name, r.link), ("default", "other"));
        let spec = shipped("iso8583-1987-ascii").unwrap();
        let mut b = MessageBuilder::new(spec, Mti::parse("0200").unwrap());
        b.set(35, "4000056655665556=2912101")
            .unwrap()
            .set(11, "000001")
            .unwrap();
        let view = MessageView::decode(spec, b.encode()).unwrap();
        assert_eq!(t.route(&view).unwrap().link, "visa-link");
    }

    #[test]
    fn bad_rules_are_all_reported() {
        let err = RouteTable::new(
            &[
                rule("a", &[], &[], &[], "x"),
                rule("b", &["12-3"], &["0210"], &["0x"], "x"),
                rule("c", &["9-1"], &[], &[], "x"),
            ],
            None,
        )
        .unwrap_err()
        .to_string();
        for part in [
            "route \"a\": no BINs",
            "same number of digits",
            "\"0210\" is not a request MTI",
            "processing code \"0x\"",
            "low end is above",
        ] {
            assert!(err.contains(part), "{part} missing: {err}");
        }
        assert_eq!(
            BinRange::parse("222100-272099").unwrap().to_string(),
            "222100-272099"
        );
    }
}
