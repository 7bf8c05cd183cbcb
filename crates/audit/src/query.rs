//! Searching pair records and totalling them for reconciliation.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;
use switchyard_iso8583::datetime::Civil;

use crate::error::Result;
use crate::format::RecordKind;
use crate::keys::ChainKey;
use crate::reader::{read_checked, OnDamage, VerifyReport};
use crate::record::{Outcome, PairRecord, ShortText};

/// Which pair records a query returns; every field set must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Field 41.
    pub terminal: Option<String>,
    /// Field 42.
    pub merchant: Option<String>,
    /// Field 37.
    pub rrn: Option<String>,
    /// The terminal's or the issuer's STAN.
    pub stan: Option<String>,
    /// Field 39 of the answer.
    pub response_code: Option<String>,
    /// The outcome.
    pub outcome: Option<Outcome>,
    /// Received at or after (microseconds since the epoch).
    pub from_us: Option<i64>,
    /// Received before.
    pub to_us: Option<i64>,
    /// The PAN's keyed hash (see [`crate::AuditKeys::pan_hash`]).
    pub pan_hash: Option<crate::keys::PanHash>,
    /// The business date (`YYYYMMDD`).
    pub business_date: Option<String>,
}

impl Filter {
    /// Whether `r` matches.
    pub fn matches(&self, r: &PairRecord) -> bool {
        let eq = |want: &Option<String>, have: &Option<ShortText>| {
            want.as_ref()
                .is_none_or(|w| have.as_deref() == Some(w.as_str()))
        };
        eq(&self.terminal, &r.terminal)
            && eq(&self.merchant, &r.merchant)
            && eq(&self.rrn, &r.rrn)
            && self
                .stan
                .as_ref()
                .is_none_or(|s| r.stan.as_deref() == Some(s) || r.issuer_stan.as_deref() == Some(s))
            && eq(&self.response_code, &r.response_code)
            && eq(&self.business_date, &r.business_date)
            && self.outcome.is_none_or(|o| r.outcome == Some(o))
            && self.from_us.is_none_or(|t| r.received_us >= t)
            && self.to_us.is_none_or(|t| r.received_us < t)
            && self
                .pan_hash
                .as_ref()
                .is_none_or(|h| r.pan.as_ref().is_some_and(|p| &p.hash == h))
    }
}

/// What a query read: how many records matched, and what the checked read covered
/// (including anything it skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryReport {
    /// Pair records that matched.
    pub matched: u64,
    /// The checked read.
    pub read: VerifyReport,
}

/// Call `each` with every pair record that matches `filter`, in log order, each record
/// checked (CRC, sequence, chain under `key`) before it counts; damage stops the query or
/// is skipped and listed, as `on_damage` says.
pub fn query(
    dir: &Path,
    key: &ChainKey,
    on_damage: OnDamage,
    filter: &Filter,
    mut each: impl FnMut(u64, PairRecord),
) -> Result<QueryReport> {
    let mut matched = 0;
    let read = read_checked(dir, key, on_damage, |r| {
        if r.kind != Some(RecordKind::Pair) {
            return Ok(());
        }
        let pair: PairRecord = crate::payload::decode(r.seq, r.payload)?;
        if filter.matches(&pair) {
            matched += 1;
            each(r.seq, pair);
        }
        Ok(())
    })?;
    Ok(QueryReport { matched, read })
}

/// Counts and amounts of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Pair records in the group.
    pub count: u64,
    /// Approved requests.
    pub approved: u64,
    /// Their amount (minor units).
    pub approved_amount: u64,
    /// Declined requests.
    pub declined: u64,
    /// Their amount.
    pub declined_amount: u64,
    /// Acknowledged reversals.
    pub reversed: u64,
    /// Their amount.
    pub reversed_amount: u64,
    /// Requests whose outcome was unknown (timeout or connection lost).
    pub timed_out: u64,
    /// Their amount.
    pub timed_out_amount: u64,
    /// Everything else (format errors, no route, link down, network management...).
    pub other: u64,
}

impl Totals {
    /// Count `r`; `reversed` when its reversal has been acknowledged since (the
    /// store-and-forward journal knows), which makes it reversed whatever it was.
    fn add(&mut self, r: &PairRecord, reversed: bool) {
        let amount = r.amount.unwrap_or(0);
        let approved = r
            .response_code
            .as_deref()
            .is_some_and(Outcome::is_approval_code);
        self.count += 1;
        let is_reversal = r.request_mti.get(1..2) == Some("4");
        match r.outcome {
            _ if reversed => {
                (self.reversed, self.reversed_amount) =
                    (self.reversed + 1, self.reversed_amount + amount)
            }
            Some(Outcome::Reversed) => {
                (self.reversed, self.reversed_amount) =
                    (self.reversed + 1, self.reversed_amount + amount)
            }
            _ if is_reversal && approved => {
                (self.reversed, self.reversed_amount) =
                    (self.reversed + 1, self.reversed_amount + amount)
            }
            Some(Outcome::Approved | Outcome::StandInApproved) => {
                (self.approved, self.approved_amount) =
                    (self.approved + 1, self.approved_amount + amount)
            }
            Some(Outcome::Declined) => {
                (self.declined, self.declined_amount) =
                    (self.declined + 1, self.declined_amount + amount)
            }
            Some(Outcome::Timeout | Outcome::ConnectionLost) => {
                (self.timed_out, self.timed_out_amount) =
                    (self.timed_out + 1, self.timed_out_amount + amount)
            }
            _ => self.other += 1,
        }
    }
}

/// One line of a reconciliation report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    /// `day`, `issuer`, `merchant` or `terminal`.
    pub dimension: &'static str,
    /// The day (`YYYY-MM-DD`, UTC), issuer link, merchant id or terminal id.
    pub key: String,
    /// Field 49 (amounts are only added up within one currency).
    pub currency: String,
    /// The totals.
    #[serde(flatten)]
    pub totals: Totals,
}

/// A reconciliation report and what its read covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The totals, by dimension and key.
    pub rows: Vec<ReportRow>,
    /// The checked read (anything skipped is listed there).
    pub read: VerifyReport,
}

/// Totals per day, issuer, merchant and terminal (each per currency) over the pair records
/// that match `filter`, read as [`query`] reads them. A record whose reversal id is in
/// `delivered_reversals` counts as reversed.
pub fn report(
    dir: &Path,
    key: &ChainKey,
    on_damage: OnDamage,
    filter: &Filter,
    delivered_reversals: &BTreeSet<u64>,
) -> Result<Report> {
    let mut reporter = Reporter::new(delivered_reversals);
    let queried = query(dir, key, on_damage, filter, |_, r| reporter.add(&r))?;
    Ok(Report {
        rows: reporter.rows(),
        read: queried.read,
    })
}

/// The totals of [`report`], made from pair records handed in one by one (from a log, or
/// from the audit stream).
#[derive(Debug)]
pub struct Reporter<'a> {
    groups: BTreeMap<(usize, String, String), Totals>,
    delivered_reversals: &'a BTreeSet<u64>,
}

const DIMENSIONS: [&str; 4] = ["day", "issuer", "merchant", "terminal"];

impl<'a> Reporter<'a> {
    /// A record whose reversal id is in `delivered_reversals` counts as reversed.
    pub fn new(delivered_reversals: &'a BTreeSet<u64>) -> Reporter<'a> {
        Reporter {
            groups: BTreeMap::new(),
            delivered_reversals,
        }
    }

    /// Count `r` in its day, issuer, merchant and terminal.
    pub fn add(&mut self, r: &PairRecord) {
        let day = Civil::from_unix(r.received_us.div_euclid(1_000_000)).date_string();
        let currency = r.currency.as_deref().unwrap_or("-").to_string();
        let reversed = r
            .reversal_id
            .is_some_and(|id| self.delivered_reversals.contains(&id));
        let keys = [
            Some(day),
            r.issuer.as_deref().map(str::to_string),
            r.merchant.as_deref().map(str::to_string),
            r.terminal.as_deref().map(str::to_string),
        ];
        for (i, key) in keys.into_iter().enumerate() {
            let key = key.unwrap_or_else(|| "-".into());
            self.groups
                .entry((i, key, currency.clone()))
                .or_default()
                .add(r, reversed);
        }
    }

    /// The rows, by dimension and key.
    pub fn rows(self) -> Vec<ReportRow> {
        self.groups
            .into_iter()
            .map(|((i, key, currency), totals)| ReportRow {
                dimension: DIMENSIONS[i],
                key,
                currency,
                totals,
            })
            .collect()
    }
}
