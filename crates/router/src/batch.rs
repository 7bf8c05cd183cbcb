//! Terminal batch settlement (host capture): each terminal's open batch kept from the
//! switch's own records, and the terminal's 0500 compared with it.
//!
//! What counts (approved only: 00, 08, 10, 11, 16, Y1, Y3, or a stand-in approval):
//! a 0200 or 0220 with processing code 20 (refund) is a **credit**; any other 0200/0220
//! except a balance inquiry (31) is a **debit** (a sale, cash, a completion); a reversal the
//! issuer acknowledged (0400/0420 from the terminal, 00) of either is a credit or debit
//! **reversal**. A 0100 pre-authorisation moves nothing until its 0220. A partial approval
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

/// What one pair record adds to its terminal's batch, in its currency.
fn effect(r: &PairRecord) -> Option<(String, String, Totals)> {
    let approved = matches!(
        r.outcome,
        Some(Outcome::Approved | Outcome::StandInApproved)
    ) || (r.request_mti.starts_with("04")
        && Outcome::approves_code(r.response_code.as_deref()));
    if !approved {
        return None;
    }
    let terminal = r.terminal.as_deref()?.to_string();
    let currency = r.currency.as_deref().unwrap_or("").to_string();
    // A partial approval counts what was approved; a partial reversal what it takes off.
    let amount = match (r.approved_amount, r.replacement_amount) {
        (Some(approved), _) => approved,
        (None, Some(replacement)) => r.amount.unwrap_or(0).saturating_sub(replacement),
        (None, None) => r.amount.unwrap_or(0),
    };
    let refund = r
        .processing_code
        .as_deref()
        .is_some_and(|p| p.starts_with("20"));
    let mut t = Totals::default();
    match r.request_mti.as_str() {
        "0200" | "0220"
            if r.processing_code
                .as_deref()
                .is_some_and(|p| p.starts_with("31")) =>
        {
            return None
        }
        "0200" | "0220" if refund => (t.credits, t.credits_amount) = (1, amount),
        "0200" | "0220" => (t.debits, t.debits_amount) = (1, amount),
        "0400" | "0401" | "0420" | "0421" if refund => {
            (t.credit_reversals, t.credit_reversals_amount) = (1, amount)
        }
        "0400" | "0401" | "0420" | "0421" => {
            (t.debit_reversals, t.debit_reversals_amount) = (1, amount)
        }
        _ => return None,
    }
    Some((terminal, currency, t))
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
    open: Mutex<HashMap<String, BTreeMap<String, Totals>>>,
    closed: Mutex<HashMap<String, (String, Totals)>>,
    /// Each open batch's transactions: RRN (or STAN) -> amount, for the 0320 upload.
    items: Mutex<HashMap<String, HashMap<String, u64>>>,
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

/// The id of a transaction in its batch: its RRN, or its STAN without one.
fn item_id(rrn: Option<&str>, stan: Option<&str>) -> String {
    rrn.map(str::trim)
        .filter(|r| !r.is_empty())
        .or(stan.map(str::trim))
        .unwrap_or("")
        .to_string()
}

impl BatchBook {
    /// Add a recorded pair to its terminal's open batch.
    pub fn add(&self, r: &PairRecord) {
        if let Some((terminal, currency, t)) = effect(r) {
            let id = item_id(r.rrn.as_deref(), r.stan.as_deref());
            let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
            let batch = items.entry(terminal.clone()).or_default();
            if t.debit_reversals + t.credit_reversals > 0 {
                match r.replacement_amount.filter(|a| *a > 0) {
                    Some(rest) => {
                        batch.insert(id, rest);
                    }
                    None => {
                        batch.remove(&id);
                    }
                }
            } else {
                batch.insert(id, r.amount.unwrap_or(0));
            }
            drop(items);
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.entry(terminal)
                .or_default()
                .entry(currency)
                .or_default()
                .add(&t);
        }
    }

    /// The open batch of `terminal`: in `currency`, or all currencies summed.
    pub fn open_totals(&self, terminal: &str, currency: Option<&str>) -> Totals {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
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
        let closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
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
        self.uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(terminal);
        if currency.is_none() {
            self.items
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(terminal);
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(batch) = open.get_mut(terminal) {
            match currency {
                Some(c) => {
                    batch.remove(c);
                }
                None => batch.clear(),
            }
        }
        self.closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(terminal.to_string(), (number.to_string(), totals));
    }

    /// After a 95: the terminal's 0320s are expected.
    pub fn expect_upload(&self, terminal: &str) {
        self.uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(terminal.to_string())
            .or_default();
    }

    /// One 0320 item of `terminal`'s upload, matched against its open batch.
    pub fn upload(
        &self,
        terminal: &str,
        rrn: Option<&str>,
        stan: Option<&str>,
        amount: u64,
    ) -> UploadItem {
        let mut uploads = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        let Some(upload) = uploads.get_mut(terminal) else {
            return UploadItem::Unexpected;
        };
        let id = item_id(rrn, stan);
        let ours = self
            .items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(terminal)
            .and_then(|b| b.get(&id).copied());
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
        let uploads = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        let upload = uploads.get(terminal)?.clone();
        let items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        let missing = items.get(terminal).map_or(0, |b| {
            b.keys().filter(|id| !upload.seen.contains(*id)).count() as u64
        });
        Some((upload, missing))
    }

    /// The open batches as the audit log at `dir` leaves them: every pair added, every
    /// `batch-closed` event closing its terminal's batch.
    pub fn rebuild(dir: &std::path::Path) -> Result<BatchBook, switchyard_audit::AuditError> {
        let book = BatchBook::default();
        switchyard_audit::for_each(dir, |r| {
            match r.kind {
                Some(switchyard_audit::RecordKind::Pair) => {
                    let pair: PairRecord = switchyard_audit::payload::decode(r.seq, r.payload)?;
                    book.add(&pair);
                }
                Some(switchyard_audit::RecordKind::Event) => {
                    let event: serde_json::Value =
                        switchyard_audit::payload::decode(r.seq, r.payload)?;
                    if event["event"] == "batch-closed" {
                        let totals: Totals =
                            serde_json::from_value(event["totals"].clone()).unwrap_or_default();
                        book.close(
                            event["terminal"].as_str().unwrap_or(""),
                            event["batch"].as_str().unwrap_or(""),
                            event["currency"].as_str(),
                            totals,
                        );
                    }
                }
                _ => {}
            }
            Ok(())
        })?;
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
        for p in [
            pair("0200", "000000", 1000, Outcome::Approved, "00"),
            pair("0200", "010000", 2000, Outcome::Approved, "00"),
            pair("0220", "000000", 3000, Outcome::Approved, "00"),
            pair("0200", "200000", 400, Outcome::Approved, "00"),
            pair("0400", "000000", 1000, Outcome::Reversed, "00"),
            pair("0400", "200000", 400, Outcome::Reversed, "00"),
            // Nothing: a decline, a balance inquiry, a pre-authorisation, a stand-in
            // approval counts.
            pair("0200", "000000", 9999, Outcome::Declined, "05"),
            pair("0200", "310000", 0, Outcome::Approved, "00"),
            pair("0100", "000000", 7777, Outcome::Approved, "00"),
            pair("0200", "000000", 50, Outcome::StandInApproved, "00"),
        ] {
            book.add(&p);
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
}
