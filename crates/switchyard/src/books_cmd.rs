//! `switchyard audit settle` and `audit reconcile`: a business date's books from the audit
//! log as it is (no second database), read once, each record verified as it is read.
//!
//! What each transaction type does to the books:
//! | request | processing code | effect |
//! |---|---|---|
//! | 0200 purchase | 00 | a sale: the merchant is owed the amount |
//! | 0200 cash | 01 | cash: owed the amount |
//! | 0200 refund | 20 | a refund: the merchant owes the amount back |
//! | 0200 balance inquiry | 31 | no money moves |
//! | 0100 pre-authorisation | any | no money moves until its completion |
//! | 0220 completion | any | owed the completed amount |
//! | reversal (0400/0420 from the terminal, or the switch's own after an unknown outcome) | - | the original no longer counts; it is listed as reversed |
//!
//! Only approvals count (00, 08, 10, 11, 16, Y1, Y3, and stand-in approvals); a declined
//! or refused request moves nothing. A partial approval (10) counts the approved amount
//! (field 4 of the answer); a partial reversal (field 95) leaves the original at its
//! replacement amount. Net = sales + cash + completions - refunds.
//!
//! Memory: one entry per approved transaction of the date, its texts inline (about 300
//! bytes with the index), and one audit segment at a time; the records are streamed.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use anyhow::anyhow;
use switchyard_audit::{ChainKey, Filter, OnDamage, Outcome, PairRecord, ShortText};
use switchyard_router::saf::EntryState;

use crate::audit_cmd::{audit_failure, warn_skipped, write_csv, write_table, Format, Reversals};
use crate::codec_cmd::{fail, CmdResult, EX_DATAERR, EX_NOINPUT};

/// What a transaction is, for the books.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// 0200, processing code 00.
    Sale,
    /// 0200, 01.
    Cash,
    /// 0200, 20.
    Refund,
    /// 0200, 31.
    Balance,
    /// 0100.
    PreAuth,
    /// 0220.
    Completion,
    /// Anything else (not counted).
    Other,
}

impl Kind {
    fn of(mti: &str, processing_code: &str) -> Kind {
        match (mti, processing_code.get(..2).unwrap_or("")) {
            ("0100", _) => Kind::PreAuth,
            ("0220", _) => Kind::Completion,
            ("0200", "00") => Kind::Sale,
            ("0200", "01") => Kind::Cash,
            ("0200", "20") => Kind::Refund,
            ("0200", "31") => Kind::Balance,
            _ => Kind::Other,
        }
    }

    /// Its effect on the merchant's net, per unit of amount.
    fn sign(self) -> i64 {
        match self {
            Kind::Sale | Kind::Cash | Kind::Completion => 1,
            Kind::Refund => -1,
            Kind::Balance | Kind::PreAuth | Kind::Other => 0,
        }
    }
}

/// One approved transaction of the date (inline texts: no allocation each).
#[derive(Debug, Clone)]
pub struct Txn {
    merchant: ShortText,
    stan: ShortText,
    amount: u64,
    currency: ShortText,
    code: ShortText,
    auth_id: ShortText,
    kind: Kind,
    reversed: bool,
}

/// A business date's approved transactions by (terminal, RRN or STAN).
#[derive(Debug, Default)]
pub struct Day {
    txns: HashMap<(ShortText, ShortText), Txn>,
}

fn key_of(terminal: &str, rrn: &str, stan: &str) -> (ShortText, ShortText) {
    let id = if rrn.trim().is_empty() { stan } else { rrn };
    (ShortText::from(terminal.trim()), ShortText::from(id.trim()))
}

fn take(t: &mut Option<ShortText>) -> ShortText {
    t.take().unwrap_or_default()
}

impl Day {
    /// The approved transactions `filter` (its business date) selects, reversals applied.
    pub fn read(
        dir: &Path,
        key: &ChainKey,
        on_damage: OnDamage,
        filter: &Filter,
        reversals: &Reversals,
    ) -> Result<Day, crate::codec_cmd::Failure> {
        let mut day = Day::default();
        let mut terminal_reversals = Vec::new();
        let report =
            switchyard_audit::query(dir, key, on_damage, filter, |_, mut r: PairRecord| {
                let id = key_of(
                    r.terminal.as_deref().unwrap_or(""),
                    r.rrn.as_deref().unwrap_or(""),
                    r.stan.as_deref().unwrap_or(""),
                );
                let mti = r.request_mti.as_str();
                if mti.starts_with("04") {
                    if Outcome::approves_code(r.response_code.as_deref()) {
                        // A partial reversal leaves the original at its replacement amount.
                        terminal_reversals.push((id, r.replacement_amount.filter(|a| *a > 0)));
                    }
                    return;
                }
                if !matches!(
                    r.outcome,
                    Some(Outcome::Approved | Outcome::StandInApproved)
                ) {
                    return;
                }
                let reversed = r
                    .reversal_id
                    .and_then(|id| reversals.get(&id))
                    .is_some_and(|e| e.state == EntryState::Delivered);
                let kind = Kind::of(mti, r.processing_code.as_deref().unwrap_or(""));
                let txn = Txn {
                    merchant: take(&mut r.merchant),
                    stan: take(&mut r.stan),
                    amount: r.approved_amount.or(r.amount).unwrap_or(0),
                    currency: take(&mut r.currency),
                    code: take(&mut r.response_code),
                    auth_id: take(&mut r.auth_id),
                    kind,
                    reversed,
                };
                day.txns.insert(id, txn);
            })
            .map_err(audit_failure)?;
        warn_skipped(&report.read);
        for (k, rest) in terminal_reversals {
            if let Some(t) = day.txns.get_mut(&k) {
                match rest {
                    Some(rest) => t.amount = rest.min(t.amount),
                    None => t.reversed = true,
                }
            }
        }
        Ok(day)
    }
}

/// One merchant's settlement in one currency.
#[derive(Debug, Default, Clone)]
struct Totals {
    counts: BTreeMap<&'static str, u64>,
    amounts: BTreeMap<&'static str, u64>,
    net: i64,
}

const COLUMNS: [&str; 5] = ["sales", "cash", "completions", "refunds", "reversed"];

/// `audit settle`: per merchant and currency.
pub fn print_settlement(day: &Day, format: Format) -> std::io::Result<()> {
    let mut by: BTreeMap<(String, String), Totals> = BTreeMap::new();
    for t in day.txns.values() {
        let column = match (t.reversed, t.kind) {
            (true, Kind::Sale | Kind::Cash | Kind::Completion | Kind::Refund) => "reversed",
            (false, Kind::Sale) => "sales",
            (false, Kind::Cash) => "cash",
            (false, Kind::Completion) => "completions",
            (false, Kind::Refund) => "refunds",
            _ => continue,
        };
        let totals = by
            .entry((t.merchant.to_string(), t.currency.to_string()))
            .or_default();
        *totals.counts.entry(column).or_default() += 1;
        *totals.amounts.entry(column).or_default() += t.amount;
        if !t.reversed {
            totals.net += t.kind.sign() * i64::try_from(t.amount).unwrap_or(i64::MAX);
        }
    }
    let mut out = std::io::stdout().lock();
    if format == Format::Jsonl {
        for ((merchant, currency), t) in &by {
            let mut row =
                serde_json::json!({"merchant": merchant, "currency": currency, "net": t.net});
            for c in COLUMNS {
                row[format!("{c}_count")] = t.counts.get(c).copied().unwrap_or(0).into();
                row[format!("{c}_amount")] = t.amounts.get(c).copied().unwrap_or(0).into();
            }
            writeln!(out, "{row}")?;
        }
        return Ok(());
    }
    let header: [String; 13] = [
        "merchant",
        "currency",
        "sales",
        "sales_amount",
        "cash",
        "cash_amount",
        "completions",
        "completions_amount",
        "refunds",
        "refunds_amount",
        "reversed",
        "reversed_amount",
        "net",
    ]
    .map(String::from);
    let rows: Vec<[String; 13]> = by
        .iter()
        .map(|((merchant, currency), t)| {
            let n = |c| t.counts.get(c).copied().unwrap_or(0).to_string();
            let a = |c| t.amounts.get(c).copied().unwrap_or(0).to_string();
            [
                merchant.clone(),
                currency.clone(),
                n("sales"),
                a("sales"),
                n("cash"),
                a("cash"),
                n("completions"),
                a("completions"),
                n("refunds"),
                a("refunds"),
                n("reversed"),
                a("reversed"),
                t.net.to_string(),
            ]
        })
        .collect();
    match format {
        Format::Csv => write_csv(&mut out, &header, &rows),
        _ => write_table(&mut out, &header, &rows),
    }
}

/// The settlement file's columns, in order.
pub const FILE_COLUMNS: [&str; 9] = [
    "business_date",
    "rrn",
    "terminal",
    "merchant",
    "stan",
    "amount",
    "currency",
    "response_code",
    "auth_id",
];

/// `audit reconcile`: the switch's standing approvals of `date` against the file's rows of
/// that date. Exit 0 only when nothing differs.
pub fn reconcile(day: &Day, against: &Path, date: &str, format: Format) -> CmdResult {
    let text = std::fs::read_to_string(against)
        .map_err(|e| fail(EX_NOINPUT)(anyhow!("{}: {e}", against.display())))?;
    let mut lines = text.lines().enumerate();
    let header = lines.next().map(|(_, l)| l.trim()).unwrap_or_default();
    if header != FILE_COLUMNS.join(",") {
        return Err(fail(EX_DATAERR)(anyhow!(
            "{} line 1: the header must be {}",
            against.display(),
            FILE_COLUMNS.join(",")
        )));
    }
    let mut seen: std::collections::HashSet<(ShortText, ShortText)> =
        std::collections::HashSet::new();
    let mut differences: Vec<[String; 8]> = Vec::new();
    let mut matched = 0u64;
    for (n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != FILE_COLUMNS.len() || line.contains('"') {
            return Err(fail(EX_DATAERR)(anyhow!(
                "{} line {}: {} columns (expected {}, unquoted)",
                against.display(),
                n + 1,
                cells.len(),
                FILE_COLUMNS.len()
            )));
        }
        if cells[0] != date {
            continue;
        }
        let amount: u64 = cells[5].parse().map_err(|_| {
            fail(EX_DATAERR)(anyhow!(
                "{} line {}: amount {:?} is not minor units",
                against.display(),
                n + 1,
                cells[5]
            ))
        })?;
        let key = key_of(cells[2], cells[1], cells[4]);
        let row = |kind: &str, switch_amount: String, detail: String| {
            [
                kind.to_string(),
                cells[2].to_string(),
                cells[1].to_string(),
                cells[4].to_string(),
                switch_amount,
                amount.to_string(),
                cells[6].to_string(),
                detail,
            ]
        };
        let found = day.txns.get(&key).filter(|t| !t.reversed);
        match found {
            None => differences.push(row(
                "missing-at-switch",
                String::new(),
                "in the file, not approved at the switch".into(),
            )),
            Some(_) if seen.contains(&key) => differences.push(row(
                "duplicate-in-file",
                String::new(),
                "listed twice".into(),
            )),
            Some(t) => {
                let mut why = Vec::new();
                if t.amount != amount {
                    why.push(format!("amount {} at the switch", t.amount));
                }
                if t.code != *cells[7] {
                    why.push(format!("response code {} at the switch", t.code));
                }
                if t.currency != *cells[6] {
                    why.push(format!("currency {} at the switch", t.currency));
                }
                if !cells[8].is_empty() && !t.auth_id.is_empty() && t.auth_id != *cells[8] {
                    why.push(format!("authorisation id {} at the switch", t.auth_id));
                }
                if why.is_empty() {
                    matched += 1;
                } else {
                    differences.push(row("mismatch", t.amount.to_string(), why.join("; ")));
                }
            }
        }
        seen.insert(key);
    }
    for ((terminal, id), t) in day.txns.iter().filter(|(_, t)| !t.reversed) {
        if !seen.contains(&(terminal.clone(), id.clone())) {
            differences.push([
                "missing-in-file".into(),
                terminal.to_string(),
                id.to_string(),
                t.stan.to_string(),
                t.amount.to_string(),
                String::new(),
                t.currency.to_string(),
                "approved at the switch, not in the file".into(),
            ]);
        }
    }
    let mut out = std::io::stdout().lock();
    let header: [String; 8] = [
        "difference",
        "terminal",
        "rrn",
        "stan",
        "switch_amount",
        "file_amount",
        "currency",
        "detail",
    ]
    .map(String::from);
    let written = match format {
        Format::Csv => write_csv(&mut out, &header, &differences),
        Format::Jsonl => differences.iter().try_for_each(|d| {
            let row: serde_json::Map<String, serde_json::Value> = header
                .iter()
                .zip(d)
                .map(|(h, v)| (h.clone(), v.clone().into()))
                .collect();
            writeln!(out, "{}", serde_json::Value::Object(row))
        }),
        Format::Table => write_table(&mut out, &header, &differences)
            .and_then(|()| writeln!(out, "{matched} matched, {} differences", differences.len())),
    };
    written.map_err(|e| fail(crate::codec_cmd::EX_IOERR)(e.into()))?;
    if differences.is_empty() {
        Ok(())
    } else {
        Err(fail(EX_DATAERR)(anyhow!(
            "{} differences ({matched} matched)",
            differences.len()
        )))
    }
}
