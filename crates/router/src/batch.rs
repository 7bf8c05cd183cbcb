//! Terminal batch settlement (host capture): each terminal's open batch kept from the
//! switch's own records, and the terminal's 0500 compared with it.
//!
//! What counts (approved only: 00, 08, 10, 11, 16, Y1, Y3, or a stand-in approval):
//! a 0200 or 0220 with processing code 20 (refund) is a **credit**; any other 0200/0220
//! except a balance inquiry (31) is a **debit** (a sale, cash, a completion); a reversal the
//! issuer acknowledged (0400/0420 from the terminal, 00) of either is a credit or debit
//! **reversal**. A 0100 pre-authorisation moves nothing: it is a hold until its 0220, which
//! must name it by RRN and authorisation id; a void (0200, processing code 02) names its
//! original in the open batch the same way and counts as that side's reversal. A partial approval
//! (10) counts the approved amount; a partial reversal (field 95) counts the amount it
//! takes off, and the transaction stays in the batch. The 0500 carries the
//! terminal's counts and amounts (fields 74-77 and 86-89 of ISO 8583:1987) and its batch
//! number (field 60); with field 49 only that currency's totals are compared.
//!
//! In balance: 0510 with 00, the batch closes (an audit event with its totals) and a new one
//! opens. Out of balance: 95, the batch stays open, and an audit event holds both sides'
//! totals. A repeat (0501) of a 0500 already answered 00 is answered 00 again and counted
//! once. The open batches are rebuilt from the audit log at start.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use switchyard_audit::{Outcome, PairRecord};
use switchyard_iso8583::MessageView;

/// A batch's counts and amounts (minor units).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Credits (refunds): number.
    pub credits: u64,
    /// Credits: amount.
    pub credits_amount: u64,
    /// Credit reversals: number.
    pub credit_reversals: u64,
    /// Credit reversals: amount.
    pub credit_reversals_amount: u64,
    /// Debits (sales, cash, completions): number.
    pub debits: u64,
    /// Debits: amount.
    pub debits_amount: u64,
    /// Debit reversals: number.
    pub debit_reversals: u64,
    /// Debit reversals: amount.
    pub debit_reversals_amount: u64,
}

impl Totals {
    fn add(&mut self, other: &Totals) {
        self.credits += other.credits;
        self.credits_amount += other.credits_amount;
        self.credit_reversals += other.credit_reversals;
        self.credit_reversals_amount += other.credit_reversals_amount;
        self.debits += other.debits;
        self.debits_amount += other.debits_amount;
        self.debit_reversals += other.debit_reversals;
        self.debit_reversals_amount += other.debit_reversals_amount;
    }

    /// The terminal's totals in a 0500 (fields 74-77, 86-89; absent fields are 0).
    pub fn of_request(request: &MessageView<'_>) -> Totals {
        let n = |f| request.field(f).and_then(|v| v.as_u64()).unwrap_or(0);
        Totals {
            credits: n(74),
            credit_reversals: n(75),
            debits: n(76),
            debit_reversals: n(77),
            credits_amount: n(86),
            credit_reversals_amount: n(87),
            debits_amount: n(88),
            debit_reversals_amount: n(89),
        }
    }
}

/// Whether a pair record is an approval that counts: the issuer's (or a stand-in) approval
/// of a request, or the issuer's acknowledgement of a terminal's reversal.
fn counts(r: &PairRecord) -> bool {
    matches!(
        r.outcome,
        Some(Outcome::Approved | Outcome::StandInApproved)
    ) || (r.request_mti.starts_with("04") && Outcome::approves_code(r.response_code.as_deref()))
}

/// What a request is to a terminal's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// 0100: a hold, nothing in the batch until its 0220.
    PreAuth,
    /// 0200/0220, processing code 20.
    Credit,
    /// Any other 0200/0220 (a sale, cash, a completion).
    Debit,
    /// 0200, processing code 02: the original (same RRN) taken out.
    Void,
    /// 04xx of a refund.
    CreditReversal,
    /// 04xx of anything else.
    DebitReversal,
    /// A balance inquiry (31) and everything else: nothing.
    Nothing,
}

impl Entry {
    fn of(mti: &str, processing_code: Option<&str>) -> Entry {
        let pc = processing_code.and_then(|p| p.get(..2)).unwrap_or("");
        match (mti, pc) {
            ("0100" | "0101", _) => Entry::PreAuth,
            ("0200" | "0201" | "0220" | "0221", "31") => Entry::Nothing,
            ("0200" | "0201", "02") => Entry::Void,
            ("0200" | "0201" | "0220" | "0221", "20") => Entry::Credit,
            ("0200" | "0201" | "0220" | "0221", _) => Entry::Debit,
            ("0400" | "0401" | "0420" | "0421", "20") => Entry::CreditReversal,
            ("0400" | "0401" | "0420" | "0421", _) => Entry::DebitReversal,
            _ => Entry::Nothing,
        }
    }
}

/// One transaction of an open batch (for the 0320 upload and voids).
#[derive(Debug, Clone)]
struct Item {
    amount: u64,
    credit: bool,
    auth_id: String,
}

/// A standing pre-authorisation, waiting for its completion.
#[derive(Debug, Clone)]
struct Hold {
    auth_id: String,
    at_us: i64,
}

/// What the switch does with a completion whose authorisation it does not hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnmatchedCompletions {
    /// Answer 25 (no original), never forwarded.
    #[default]
    Refuse,
    /// Forward it (a voice-authorised "forced post"), flagged
    /// `completion-without-authorisation` in its record.
    Forward,
}

/// How the book treats completions and pre-authorisations.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// A completion without its authorisation.
    pub unmatched_completions: UnmatchedCompletions,
    /// How long a pre-authorisation stands waiting for its completion.
    pub hold_us: i64,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            unmatched_completions: UnmatchedCompletions::Refuse,
            hold_us: 30 * 86_400 * 1_000_000,
        }
    }
}

/// Whether a completion or void found its original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Original {
    /// Found, with the same authorisation id.
    Matched,
    /// Found under that RRN with another authorisation id.
    AuthIdDiffers,
    /// Nothing under that RRN (or the hold expired).
    Missing,
}

/// What the switch answers a 0500.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// The totals agree: the batch closed (its totals).
    InBalance(Totals),
    /// A repeat of a batch already closed in balance.
    Repeat,
    /// They differ: (the switch's, the terminal's).
    OutOfBalance(Totals, Totals),
}

/// Every terminal's open batch (per currency) and the last one it closed.
#[derive(Debug, Default)]
pub struct BatchBook {
    policy: BatchPolicy,
    open: Mutex<HashMap<String, BTreeMap<String, Totals>>>,
    closed: Mutex<HashMap<String, (String, Totals)>>,
    /// Each open batch's transactions by RRN (or STAN), for the 0320 upload and voids.
    items: Mutex<HashMap<String, HashMap<String, Item>>>,
    /// Each terminal's standing pre-authorisations by RRN, for their completions.
    holds: Mutex<HashMap<String, HashMap<String, Hold>>>,
    /// Terminals uploading after a 95: what their 0320s matched and did not.
    uploads: Mutex<HashMap<String, Upload>>,
}

/// A batch upload in progress (after a 95, until the final 0500).
#[derive(Debug, Default, Clone)]
pub struct Upload {
    /// Uploaded items the switch has (by RRN or STAN).
    pub matched: u64,
    /// Uploaded items whose amount differs from the switch's.
    pub amount_differs: u64,
    /// Uploaded items the switch never approved (recorded, never added).
    pub unknown: u64,
    /// The items uploaded, by id.
    seen: std::collections::HashSet<String>,
}

/// What one 0320 item is to the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadItem {
    /// The switch approved it, for this amount.
    Matched,
    /// The switch approved it for another amount (the switch's).
    AmountDiffers(u64),
    /// The switch has no approval of it.
    Unknown,
    /// No upload is expected from this terminal (no 95 before it).
    Unexpected,
}

fn same_auth_id(ours: &str, theirs: Option<&str>) -> Original {
    match theirs.map(str::trim) == Some(ours.trim()) {
        true => Original::Matched,
        false => Original::AuthIdDiffers,
    }
}

/// The id of a transaction in its batch: its RRN, or its STAN without one.
fn item_id(rrn: Option<&str>, stan: Option<&str>) -> String {
    rrn.map(str::trim)
        .filter(|r| !r.is_empty())
        .or(stan.map(str::trim))
        .unwrap_or("")
        .to_string()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BatchBook {
    /// An empty book with this policy.
    pub fn new(policy: BatchPolicy) -> BatchBook {
        BatchBook {
            policy,
            ..BatchBook::default()
        }
    }

    /// The policy.
    pub fn policy(&self) -> BatchPolicy {
        self.policy
    }

    /// Add a recorded pair to its terminal's open batch (or its holds).
    pub fn add(&self, r: &PairRecord) {
        if !counts(r) {
            return;
        }
        let Some(terminal) = r.terminal.as_deref() else {
            return;
        };
        let id = item_id(r.rrn.as_deref(), r.stan.as_deref());
        let currency = r.currency.as_deref().unwrap_or("");
        // A partial approval counts what was approved.
        let amount = r.approved_amount.or(r.amount).unwrap_or(0);
        let mut t = Totals::default();
        match Entry::of(&r.request_mti, r.processing_code.as_deref()) {
            Entry::Nothing => return,
            Entry::PreAuth => return self.hold(terminal, id, r),
            entry @ (Entry::Credit | Entry::Debit) => {
                if r.request_mti.starts_with("022") {
                    if let Some(h) = lock(&self.holds).get_mut(terminal) {
                        h.remove(&id);
                    }
                }
                let credit = entry == Entry::Credit;
                match credit {
                    true => (t.credits, t.credits_amount) = (1, amount),
                    false => (t.debits, t.debits_amount) = (1, amount),
                }
                let item = Item {
                    amount,
                    credit,
                    auth_id: r.auth_id.as_deref().unwrap_or("").to_string(),
                };
                lock(&self.items)
                    .entry(terminal.to_string())
                    .or_default()
                    .insert(id, item);
            }
            Entry::Void => {
                // The original taken out of the batch, counted as its side's reversal.
                let original = lock(&self.items)
                    .get_mut(terminal)
                    .and_then(|b| b.remove(&id));
                let Some(o) = original else { return };
                match o.credit {
                    true => (t.credit_reversals, t.credit_reversals_amount) = (1, o.amount),
                    false => (t.debit_reversals, t.debit_reversals_amount) = (1, o.amount),
                }
            }
            entry @ (Entry::CreditReversal | Entry::DebitReversal) => {
                let taken = self.reverse(terminal, &id, r);
                match entry == Entry::CreditReversal {
                    true => (t.credit_reversals, t.credit_reversals_amount) = (1, taken),
                    false => (t.debit_reversals, t.debit_reversals_amount) = (1, taken),
                }
            }
        }
        lock(&self.open)
            .entry(terminal.to_string())
            .or_default()
            .entry(currency.to_string())
            .or_default()
            .add(&t);
    }

    /// A pre-authorisation standing for its completion (the terminal's expired ones gone).
    fn hold(&self, terminal: &str, id: String, r: &PairRecord) {
        let mut holds = lock(&self.holds);
        let standing = holds.entry(terminal.to_string()).or_default();
        let expiry = r.received_us.saturating_sub(self.policy.hold_us);
        standing.retain(|_, h| h.at_us >= expiry);
        let auth_id = r.auth_id.as_deref().unwrap_or("").to_string();
        let at_us = r.received_us;
        standing.insert(id, Hold { auth_id, at_us });
    }

    /// The amount a reversal takes off its original: all of it, or down to a partial
    /// reversal's replacement amount (the rest stays in the batch).
    fn reverse(&self, terminal: &str, id: &str, r: &PairRecord) -> u64 {
        let mut items = lock(&self.items);
        let batch = items.entry(terminal.to_string()).or_default();
        let requested = r.amount.unwrap_or(0);
        match r.replacement_amount.filter(|a| *a > 0) {
            Some(rest) => match batch.get_mut(id) {
                Some(o) => {
                    let before = o.amount;
                    o.amount = rest.min(o.amount);
                    before.saturating_sub(rest)
                }
                None => requested.saturating_sub(rest),
            },
            None => batch.remove(id).map_or(requested, |o| o.amount),
        }
    }

    /// Whether a completion of `terminal` (its RRN and authorisation id, field 38) has a
    /// standing pre-authorisation at `now_us`.
    pub fn authorisation_of(
        &self,
        terminal: &str,
        rrn: Option<&str>,
        auth_id: Option<&str>,
        now_us: i64,
    ) -> Original {
        let holds = lock(&self.holds);
        let id = item_id(rrn, None);
        match holds.get(terminal).and_then(|h| h.get(&id)) {
            Some(h) if h.at_us < now_us.saturating_sub(self.policy.hold_us) => Original::Missing,
            Some(h) => same_auth_id(&h.auth_id, auth_id),
            None => Original::Missing,
        }
    }

    /// Whether a void of `terminal` (the original's RRN and authorisation id) has its
    /// original in the open batch.
    pub fn voided_original(
        &self,
        terminal: &str,
        rrn: Option<&str>,
        auth_id: Option<&str>,
    ) -> Original {
        let items = lock(&self.items);
        let id = item_id(rrn, None);
        match items.get(terminal).and_then(|b| b.get(&id)) {
            Some(item) => same_auth_id(&item.auth_id, auth_id),
            None => Original::Missing,
        }
    }

    /// The open batch of `terminal`: in `currency`, or all currencies summed.
    pub fn open_totals(&self, terminal: &str, currency: Option<&str>) -> Totals {
        let open = lock(&self.open);
        let mut sum = Totals::default();
        for (c, t) in open.get(terminal).into_iter().flatten() {
            if currency.is_none_or(|want| want == c) {
                sum.add(t);
            }
        }
        sum
    }

    /// Compare the terminal's claimed totals (batch `number`) with its open batch. In
    /// balance, the caller records the close and then [`close`](Self::close)s it.
    pub fn settle(
        &self,
        terminal: &str,
        number: &str,
        currency: Option<&str>,
        claimed: Totals,
    ) -> Settlement {
        let ours = self.open_totals(terminal, currency);
        if ours == claimed && ours != Totals::default() {
            return Settlement::InBalance(ours);
        }
        let closed = lock(&self.closed);
        if closed
            .get(terminal)
            .is_some_and(|(n, t)| n == number && *t == claimed)
        {
            return Settlement::Repeat;
        }
        if ours == claimed {
            // An empty batch closing: in balance too.
            return Settlement::InBalance(ours);
        }
        Settlement::OutOfBalance(ours, claimed)
    }

    /// Close `terminal`'s batch (that currency's part, or all of it).
    pub fn close(&self, terminal: &str, number: &str, currency: Option<&str>, totals: Totals) {
        lock(&self.uploads).remove(terminal);
        if currency.is_none() {
            lock(&self.items).remove(terminal);
        }
        let mut open = lock(&self.open);
        if let Some(batch) = open.get_mut(terminal) {
            match currency {
                Some(c) => {
                    batch.remove(c);
                }
                None => batch.clear(),
            }
        }
        lock(&self.closed).insert(terminal.to_string(), (number.to_string(), totals));
    }

    /// After a 95: the terminal's 0320s are expected.
    pub fn expect_upload(&self, terminal: &str) {
        lock(&self.uploads).entry(terminal.to_string()).or_default();
    }

    /// One 0320 item of `terminal`'s upload, matched against its open batch.
    pub fn upload(
        &self,
        terminal: &str,
        rrn: Option<&str>,
        stan: Option<&str>,
        amount: u64,
    ) -> UploadItem {
        let mut uploads = lock(&self.uploads);
        let Some(upload) = uploads.get_mut(terminal) else {
            return UploadItem::Unexpected;
        };
        let id = item_id(rrn, stan);
        let ours = self
            .items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(terminal)
            .and_then(|b| b.get(&id).map(|i| i.amount));
        let first = upload.seen.insert(id);
        let item = match ours {
            Some(a) if a == amount => UploadItem::Matched,
            Some(a) => UploadItem::AmountDiffers(a),
            None => UploadItem::Unknown,
        };
        if first {
            match item {
                UploadItem::Matched => upload.matched += 1,
                UploadItem::AmountDiffers(_) => upload.amount_differs += 1,
                _ => upload.unknown += 1,
            }
        }
        item
    }

    /// The upload of `terminal` if one is in progress, and how many of the switch's own
    /// transactions of the batch it did not include.
    pub fn upload_state(&self, terminal: &str) -> Option<(Upload, u64)> {
        let uploads = lock(&self.uploads);
        let upload = uploads.get(terminal)?.clone();
        let items = lock(&self.items);
        let missing = items.get(terminal).map_or(0, |b| {
            b.keys().filter(|id| !upload.seen.contains(*id)).count() as u64
        });
        Some((upload, missing))
    }

    /// Apply one transaction's record: added, or a 0320's matched.
    pub fn apply_pair(&self, pair: &PairRecord) {
        if pair.request_mti.starts_with("032") && pair.outcome == Some(Outcome::SwitchAnswered) {
            self.upload(
                pair.terminal.as_deref().unwrap_or(""),
                pair.rrn.as_deref(),
                pair.stan.as_deref(),
                pair.amount.unwrap_or(0),
            );
        }
        self.add(pair);
    }

    /// Apply one audit record (of this instance's log, or another instance's from the audit
    /// stream): a pair added, a `batch-closed` event closing its terminal's batch, a
    /// `batch-out-of-balance` one expecting its upload, a 0320 matched.
    pub fn apply(
        &self,
        seq: u64,
        kind: Option<switchyard_audit::RecordKind>,
        payload: &[u8],
    ) -> Result<(), switchyard_audit::AuditError> {
        match kind {
            Some(switchyard_audit::RecordKind::Pair) => {
                let pair: PairRecord = switchyard_audit::payload::decode(seq, payload)?;
                self.apply_pair(&pair);
            }
            Some(switchyard_audit::RecordKind::Event) => {
                let event: serde_json::Value = switchyard_audit::payload::decode(seq, payload)?;
                let terminal = event["terminal"].as_str().unwrap_or("");
                if event["event"] == "batch-out-of-balance" {
                    self.expect_upload(terminal);
                }
                if event["event"] == "batch-closed" {
                    let totals: Totals =
                        serde_json::from_value(event["totals"].clone()).unwrap_or_default();
                    self.close(
                        terminal,
                        event["batch"].as_str().unwrap_or(""),
                        event["currency"].as_str(),
                        totals,
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The book as the audit log at `dir` leaves it: every pair added, every `batch-closed`
    /// event closing its terminal's batch, and an upload after a `batch-out-of-balance`
    /// taken up where it stood (its 0320s replayed), so a restart mid-upload loses nothing.
    pub fn rebuild(
        dir: &std::path::Path,
        policy: BatchPolicy,
    ) -> Result<BatchBook, switchyard_audit::AuditError> {
        let book = BatchBook::new(policy);
        switchyard_audit::for_each(dir, |r| book.apply(r.seq, r.kind, r.payload))?;
        let expiry = crate::flow::now_us().saturating_sub(policy.hold_us);
        for standing in lock(&book.holds).values_mut() {
            standing.retain(|_, h| h.at_us >= expiry);
        }
        Ok(book)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_audit::ShortText;

    fn pair(mti: &str, pc: &str, amount: u64, outcome: Outcome, code: &str) -> PairRecord {
        PairRecord {
            terminal: Some(ShortText::from("T1")),
            request_mti: ShortText::from(mti),
            processing_code: Some(ShortText::from(pc)),
            amount: Some(amount),
            currency: Some(ShortText::from("978")),
            outcome: Some(outcome),
            response_code: Some(ShortText::from(code)),
            ..PairRecord::default()
        }
    }

    #[test]
    fn each_type_lands_in_its_column_and_what_moves_nothing_is_left_out() {
        let book = BatchBook::default();
        // (the RRN: a reversal names its original's)
        for (rrn, p) in [
            ("1", pair("0200", "000000", 1000, Outcome::Approved, "00")),
            ("2", pair("0200", "010000", 2000, Outcome::Approved, "00")),
            ("3", pair("0220", "000000", 3000, Outcome::Approved, "00")),
            ("4", pair("0200", "200000", 400, Outcome::Approved, "00")),
            ("1", pair("0400", "000000", 1000, Outcome::Reversed, "00")),
            ("4", pair("0400", "200000", 400, Outcome::Reversed, "00")),
            // Nothing: a decline, a balance inquiry, a pre-authorisation, a stand-in
            // approval counts.
            ("5", pair("0200", "000000", 9999, Outcome::Declined, "05")),
            ("6", pair("0200", "310000", 0, Outcome::Approved, "00")),
            ("7", pair("0100", "000000", 7777, Outcome::Approved, "00")),
            (
                "8",
                pair("0200", "000000", 50, Outcome::StandInApproved, "00"),
            ),
        ] {
            book.add(&with_ids(p, rrn, "", 0));
        }
        let t = book.open_totals("T1", None);
        assert_eq!((t.debits, t.debits_amount), (4, 6050));
        // A partial approval of 1000 for 600, partly reversed to 250: 600 in, 350 out.
        let partial = BatchBook::default();
        let mut approved = pair("0200", "000000", 1000, Outcome::Approved, "10");
        approved.approved_amount = Some(600);
        let mut reversal = pair("0400", "000000", 600, Outcome::Reversed, "00");
        reversal.replacement_amount = Some(250);
        partial.add(&approved);
        partial.add(&reversal);
        let p = partial.open_totals("T1", None);
        assert_eq!((p.debits_amount, p.debit_reversals_amount), (600, 350));
        assert_eq!((t.credits, t.credits_amount), (1, 400));
        assert_eq!((t.debit_reversals, t.debit_reversals_amount), (1, 1000));
        assert_eq!((t.credit_reversals, t.credit_reversals_amount), (1, 400));
        assert_eq!(book.open_totals("T1", Some("840")), Totals::default());
        assert_eq!(book.settle("T1", "1", None, t), Settlement::InBalance(t));
        let mut extra = t;
        extra.debits += 1;
        assert_eq!(
            book.settle("T1", "1", None, extra),
            Settlement::OutOfBalance(t, extra)
        );
        book.close("T1", "1", None, t);
        assert_eq!(book.settle("T1", "1", None, t), Settlement::Repeat);
        assert_eq!(book.open_totals("T1", None), Totals::default());
    }

    #[test]
    fn an_upload_matches_items_by_rrn_and_counts_what_the_switch_lacks() {
        let book = BatchBook::default();
        let mut sale = pair("0200", "000000", 1000, Outcome::Approved, "00");
        sale.rrn = Some(ShortText::from("000000000001"));
        book.add(&sale);
        assert_eq!(
            book.upload("T1", Some("000000000001"), None, 1000),
            UploadItem::Unexpected
        );
        book.expect_upload("T1");
        assert_eq!(
            book.upload("T1", Some("000000000001"), None, 1000),
            UploadItem::Matched
        );
        assert_eq!(
            book.upload("T1", Some("000000000001"), None, 1000),
            UploadItem::Matched,
            "a repeat"
        );
        assert_eq!(
            book.upload("T1", Some("000000000002"), None, 900),
            UploadItem::Unknown
        );
        let (upload, not_uploaded) = book.upload_state("T1").unwrap();
        assert_eq!((upload.matched, upload.unknown, not_uploaded), (1, 1, 0));
        book.close("T1", "1", None, book.open_totals("T1", None));
        assert!(book.upload_state("T1").is_none());
    }

    fn with_ids(mut p: PairRecord, rrn: &str, auth_id: &str, at_us: i64) -> PairRecord {
        p.rrn = Some(ShortText::from(rrn));
        p.auth_id = Some(ShortText::from(auth_id));
        p.received_us = at_us;
        p
    }

    /// A completion needs its standing pre-authorisation (RRN and authorisation id), takes
    /// it once, and counts as a debit; a hold expires; a void takes its original out of the
    /// open batch as its side's reversal.
    #[test]
    fn completions_match_their_authorisation_and_voids_their_original() {
        let day = 86_400 * 1_000_000;
        let book = BatchBook::new(BatchPolicy {
            hold_us: 2 * day,
            ..BatchPolicy::default()
        });
        let hold = pair("0100", "000000", 5000, Outcome::Approved, "00");
        book.add(&with_ids(hold, "000000000010", "A1B2C3", day));
        assert_eq!(
            book.open_totals("T1", None),
            Totals::default(),
            "a hold moves nothing"
        );
        let rrn = Some("000000000010");
        assert_eq!(
            book.authorisation_of("T1", rrn, Some("A1B2C3"), day + 1),
            Original::Matched
        );
        assert_eq!(
            book.authorisation_of("T1", rrn, Some("ZZZZZZ"), day + 1),
            Original::AuthIdDiffers
        );
        assert_eq!(
            book.authorisation_of("T2", rrn, Some("A1B2C3"), day + 1),
            Original::Missing,
            "another terminal's"
        );
        assert_eq!(
            book.authorisation_of("T1", rrn, Some("A1B2C3"), 4 * day),
            Original::Missing,
            "expired"
        );
        let completion = pair("0220", "000000", 4200, Outcome::Approved, "00");
        book.add(&with_ids(completion, "000000000010", "A1B2C3", day + 2));
        let t = book.open_totals("T1", None);
        assert_eq!((t.debits, t.debits_amount), (1, 4200));
        assert_eq!(
            book.authorisation_of("T1", rrn, Some("A1B2C3"), day + 3),
            Original::Missing,
            "completed once"
        );
        // A refund, then its void: the refund counted, then a credit reversal.
        let refund = pair("0200", "200000", 700, Outcome::Approved, "00");
        book.add(&with_ids(refund, "000000000011", "R00001", day));
        assert_eq!(
            book.voided_original("T1", Some("000000000011"), Some("R00001")),
            Original::Matched
        );
        let void = pair("0200", "020000", 700, Outcome::Approved, "00");
        book.add(&with_ids(void, "000000000011", "R00001", day));
        let t = book.open_totals("T1", None);
        assert_eq!((t.credits, t.credits_amount), (1, 700));
        assert_eq!((t.credit_reversals, t.credit_reversals_amount), (1, 700));
        assert_eq!(
            book.voided_original("T1", Some("000000000011"), Some("R00001")),
            Original::Missing,
            "voided once"
        );
        // A declined void moves nothing.
        let declined = pair("0200", "020000", 4200, Outcome::Declined, "05");
        book.add(&with_ids(declined, "000000000010", "A1B2C3", day));
        assert_eq!(book.open_totals("T1", None).debit_reversals, 0);
    }

    /// An upload in progress survives a restart: the book rebuilt from the audit log has
    /// the 95 and the 0320s already matched.
    #[tokio::test]
    async fn an_upload_in_progress_is_rebuilt_from_the_log() {
        use switchyard_audit::{AuditConfig, AuditKeys, AuditLog, RecordKind};
        let dir = tempfile::tempdir().unwrap();
        let keys = std::sync::Arc::new(AuditKeys::demo());
        let (log, _) = AuditLog::open(AuditConfig::new(dir.path()), keys).unwrap();
        let mut sale = pair("0200", "000000", 1000, Outcome::Approved, "00");
        sale.rrn = Some(ShortText::from("000000000001"));
        log.append_record(RecordKind::Pair, &sale).await.unwrap();
        let event = serde_json::json!({"event": "batch-out-of-balance", "terminal": "T1"});
        log.append_record(RecordKind::Event, &event).await.unwrap();
        for rrn in ["000000000001", "000000000009"] {
            let mut item = pair("0320", "000000", 1000, Outcome::SwitchAnswered, "00");
            item.rrn = Some(ShortText::from(rrn));
            log.append_record(RecordKind::Pair, &item).await.unwrap();
        }
        drop(log);
        let book = BatchBook::rebuild(dir.path(), BatchPolicy::default()).unwrap();
        let (upload, not_uploaded) = book.upload_state("T1").expect("upload in progress");
        assert_eq!((upload.matched, upload.unknown, not_uploaded), (1, 1, 0));
    }
}
