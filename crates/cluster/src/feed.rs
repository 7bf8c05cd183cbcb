//! The merchant transaction feed: each pair record, masked, on a subject per merchant
//! (`<prefix>.<merchant id>`), so that a merchant's back office can follow its own
//! transactions as they happen and check them against its sales.
//!
//! A report holds no card data beyond the masked PAN (first 6 + last 4): the pair record it
//! is made from is already protected (tracks, PIN blocks and CVVs never reach the audit
//! log). Its `id` (`<instance>-<sequence>`) is the audit record's: a subscriber drops a
//! repeat by it, and the feed stream keeps each report once (its duplicate window).

use serde::Serialize;
use switchyard_audit::{Outcome, PairRecord};

/// One transaction as its merchant sees it.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    /// `<instance>-<audit sequence>`.
    pub id: String,
    /// When the request arrived (RFC 3339, UTC).
    pub time: String,
    /// Field 41.
    pub terminal: &'a str,
    /// Field 42.
    pub merchant: &'a str,
    /// Field 43 (the card acceptor's name and location), when the terminal sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merchant_name: Option<&'a str>,
    /// Minor units: what was approved (a partial approval's amount), else what was asked.
    pub amount: Option<u64>,
    /// Field 49.
    pub currency: &'a str,
    /// sale, cash, refund, balance-inquiry, void, pre-authorisation, completion,
    /// reversal, batch or other.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Field 39 of the answer.
    pub response_code: &'a str,
    /// How it ended (the audit log's outcome).
    pub outcome: &'static str,
    /// First 6 and last 4 digits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pan: Option<&'a str>,
    /// Field 37.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rrn: Option<&'a str>,
    /// Field 38 of the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_id: Option<&'a str>,
    /// The business date, when the switch keeps one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub business_date: Option<&'a str>,
}

/// What a request is, by its MTI and processing code.
pub fn kind_of(mti: &str, processing_code: &str) -> &'static str {
    match (
        mti.get(..3).unwrap_or(""),
        processing_code.get(..2).unwrap_or(""),
    ) {
        ("010", _) => "pre-authorisation",
        ("022", _) => "completion",
        ("040" | "042", _) => "reversal",
        ("050" | "032", _) => "batch",
        ("020", "00") => "sale",
        ("020", "01") => "cash",
        ("020", "02") => "void",
        ("020", "20") => "refund",
        ("020", "31") => "balance-inquiry",
        _ => "other",
    }
}

/// A subject token for a merchant id: what NATS subjects cannot carry (`.`, `*`, `>`,
/// spaces, anything outside `A-Z a-z 0-9 - _`) becomes `_`.
pub fn subject_token(merchant: &str) -> String {
    let token: String = merchant
        .trim()
        .chars()
        .map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '-' | '_' => c,
            _ => '_',
        })
        .collect();
    if token.is_empty() {
        "_".into()
    } else {
        token
    }
}

fn rfc3339(us: i64) -> String {
    jiff::Timestamp::from_microsecond(us).map_or_else(|_| us.to_string(), |t| t.to_string())
}

/// The report of `pair` (audit record `seq` of `instance`) and its merchant's subject token;
/// `None` for a pair without a merchant (nobody to tell).
pub fn report(instance: &str, seq: u64, pair: &PairRecord) -> Option<(String, Vec<u8>)> {
    let merchant = pair.merchant.as_deref()?;
    let report = Report {
        id: format!("{instance}-{seq}"),
        time: rfc3339(pair.received_us),
        terminal: pair.terminal.as_deref().unwrap_or(""),
        merchant,
        merchant_name: pair.request.fields.get(43).map(str::trim),
        amount: pair.approved_amount.or(pair.amount),
        currency: pair.currency.as_deref().unwrap_or(""),
        kind: kind_of(
            &pair.request_mti,
            pair.processing_code.as_deref().unwrap_or(""),
        ),
        response_code: pair.response_code.as_deref().unwrap_or(""),
        outcome: pair.outcome.map_or("unknown", Outcome::name),
        pan: pair.pan.as_ref().map(|p| p.masked.as_str()),
        rrn: pair.rrn.as_deref(),
        auth_id: pair.auth_id.as_deref(),
        business_date: pair.business_date.as_deref(),
    };
    let bytes = serde_json::to_vec(&report).ok()?;
    Some((subject_token(merchant), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_audit::ShortText;

    #[test]
    fn a_report_names_the_type_and_carries_no_card_data() {
        let pair = PairRecord {
            received_us: 1_796_300_000_000_000,
            terminal: Some(ShortText::from("T0000001")),
            merchant: Some(ShortText::from("MERCHANT 0001.x")),
            request_mti: ShortText::from("0200"),
            processing_code: Some(ShortText::from("200000")),
            amount: Some(1234),
            currency: Some(ShortText::from("978")),
            response_code: Some(ShortText::from("00")),
            outcome: Some(Outcome::Approved),
            ..PairRecord::default()
        };
        let (subject, bytes) = report("sw-0", 7, &pair).expect("a merchant");
        assert_eq!(subject, "MERCHANT_0001_x");
        let r: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(r["id"], "sw-0-7");
        assert_eq!(r["type"], "refund");
        assert_eq!(r["amount"], 1234);
        assert_eq!(r["outcome"], "approved");
        assert!(r["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{r}");
        let no_merchant = PairRecord {
            merchant: None,
            ..pair
        };
        assert!(report("sw-0", 8, &no_merchant).is_none());
        assert_eq!(kind_of("0100", "000000"), "pre-authorisation");
        assert_eq!(kind_of("0420", "000000"), "reversal");
        assert_eq!(kind_of("0200", "020000"), "void");
    }
}
