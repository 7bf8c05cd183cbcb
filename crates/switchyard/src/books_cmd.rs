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
//! | 0220 completion (the pre-authorisation's RRN and authorisation id) | any | owed the completed amount; it takes the pre-authorisation's place |
//! | 0200 void (the original's RRN and authorisation id) | 02 | the original no longer counts; it is listed as reversed |
//! | reversal (0400/0420 from the terminal, or the switch's own after an unknown outcome) | - | the original no longer counts; it is listed as reversed |
//!
//! Only approvals count (00, 08, 10, 11, 16, Y1, Y3, and stand-in approvals); a declined
//! or refused request moves nothing. A partial approval (10) counts the approved amount
//! (field 4 of the answer); a partial reversal (field 95) leaves the original at its
//! replacement amount. Net = sales + cash + completions - refunds.
//!
//! Memory is bounded whatever the size of the day: the approved transactions (and the
//! settlement file's rows) are spilled as they are read to [`PARTITIONS`] files in a
//! temporary directory (`TMPDIR`) by a hash of their key, and the books are made one
//! partition at a time, so what is held is one partition's entries, one audit segment and
//! the partitions' write buffers.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use anyhow::anyhow;
use serde::{Deserialize, Serialize};
use switchyard_audit::{ChainKey, Filter, OnDamage, Outcome, PairRecord, ShortText};
use switchyard_router::saf::EntryState;

use crate::audit_cmd::{write_csv, write_csv_row, write_table, Format, Reversals, Source};
use crate::codec_cmd::{fail, CmdResult, EX_DATAERR, EX_NOINPUT};

/// What a transaction is, for the books.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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
    /// 0220 (its pre-authorisation's RRN: it takes the 0100's place).
    Completion,
    /// 0200, 02: a void, carrying its original's RRN.
    Void,
    /// Anything else (not counted).
    Other,
}

impl Kind {
    fn of(mti: &str, processing_code: &str) -> Kind {
        match (mti, processing_code.get(..2).unwrap_or("")) {
            ("0100", _) => Kind::PreAuth,
            ("0220" | "0221", _) => Kind::Completion,
            ("0200", "02") => Kind::Void,
            ("0200", "00") => Kind::Sale,
            ("0200", "01") => Kind::Cash,
            ("0200", "20") => Kind::Refund,
            ("0200", "31") => Kind::Balance,
            _ => Kind::Other,
        }
    }

    /// Whether money moves (what a settlement file lists).
    fn moves_money(self) -> bool {
        self.sign() != 0
    }

    /// Its effect on the merchant's net, per unit of amount.
    fn sign(self) -> i64 {
        match self {
            Kind::Sale | Kind::Cash | Kind::Completion => 1,
            Kind::Refund => -1,
            Kind::Balance | Kind::PreAuth | Kind::Void | Kind::Other => 0,
        }
    }
}

/// One approved transaction of the date (inline texts: no allocation each).
#[derive(Debug, Clone, Serialize, Deserialize)]
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

impl Txn {
    /// Whether it stands in the books: not reversed, and money moves.
    fn stands(&self) -> bool {
        !self.reversed && self.kind.moves_money()
    }
}

/// A transaction's key: (terminal, RRN or STAN).
type Key = (ShortText, ShortText);

/// How many partitions a day is spilled into: at 10 million transactions a partition holds
/// about 40,000 (some 12 MiB in memory).
pub const PARTITIONS: usize = 256;

/// The largest spilled entry read back.
const MAX_ENTRY: usize = 1 << 20;

/// What is spilled, in log order.
#[derive(Debug, Serialize, Deserialize)]
enum Spilled {
    /// An approved transaction.
    Txn(Key, Txn),
    /// A reversal or void of the transaction with this key (a partial one: what remains).
    Reversal(Key, Option<u64>),
}

/// Which partition a key belongs to (the same for the log's entries and the file's rows).
fn partition_of(key: &Key) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % PARTITIONS as u64) as usize
}

/// Length-prefixed MessagePack entries, one file per partition.
struct Spill {
    dir: tempfile::TempDir,
    writers: Vec<std::io::BufWriter<std::fs::File>>,
}

fn io_failure(what: &str) -> impl Fn(std::io::Error) -> crate::codec_cmd::Failure + '_ {
    move |e| fail(crate::codec_cmd::EX_IOERR)(anyhow!("{what}: {e}"))
}

impl Spill {
    fn new(name: &str) -> Result<Spill, crate::codec_cmd::Failure> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("switchyard-{name}-"))
            .tempdir()
            .map_err(io_failure("temporary directory"))?;
        let writers = (0..PARTITIONS)
            .map(|p| {
                std::fs::File::create(dir.path().join(format!("{p}.part")))
                    .map(|f| std::io::BufWriter::with_capacity(8192, f))
            })
            .collect::<Result<_, _>>()
            .map_err(io_failure("temporary partition"))?;
        Ok(Spill { dir, writers })
    }

    fn put<T: Serialize>(&mut self, partition: usize, entry: &T) -> std::io::Result<()> {
        let bytes = rmp_serde::to_vec(entry).map_err(std::io::Error::other)?;
        let w = &mut self.writers[partition];
        w.write_all(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes())?;
        w.write_all(&bytes)
    }

    /// Every partition flushed: from here on it is read.
    fn finish(mut self) -> Result<Partitions, crate::codec_cmd::Failure> {
        for w in &mut self.writers {
            w.flush().map_err(io_failure("temporary partition"))?;
        }
        Ok(Partitions { dir: self.dir })
    }
}

/// Spilled partitions, read back one at a time.
struct Partitions {
    dir: tempfile::TempDir,
}

impl Partitions {
    fn read<T: serde::de::DeserializeOwned>(
        &self,
        partition: usize,
        mut each: impl FnMut(T),
    ) -> Result<(), crate::codec_cmd::Failure> {
        use std::io::Read;
        let path = self.dir.path().join(format!("{partition}.part"));
        let mut r = std::io::BufReader::new(
            std::fs::File::open(&path).map_err(io_failure("temporary partition"))?,
        );
        let mut len = [0u8; 4];
        let mut buf = Vec::new();
        loop {
            match r.read_exact(&mut len) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(io_failure("temporary partition")(e)),
            }
            // Entries are small (one transaction or one file row): a larger length is a
            // damaged temporary file, not an allocation to make.
            let len = u32::from_be_bytes(len) as usize;
            if len > MAX_ENTRY {
                return Err(io_failure("temporary partition")(std::io::Error::other(
                    format!("an entry of {len} bytes (at most {MAX_ENTRY})"),
                )));
            }
            buf.resize(len, 0);
            r.read_exact(&mut buf)
                .map_err(io_failure("temporary partition"))?;
            let entry = rmp_serde::from_slice(&buf)
                .map_err(|e| io_failure("temporary partition")(std::io::Error::other(e)))?;
            each(entry);
        }
    }
}

/// A business date's approved transactions by (terminal, RRN or STAN), spilled to
/// partitions.
pub struct Day {
    partitions: Partitions,
}

fn key_of(terminal: &str, rrn: &str, stan: &str) -> Key {
    let id = if rrn.trim().is_empty() { stan } else { rrn };
    (ShortText::from(terminal.trim()), ShortText::from(id.trim()))
}

fn take(t: &mut Option<ShortText>) -> ShortText {
    t.take().unwrap_or_default()
}

impl Day {
    /// The approved transactions `filter` (its business date) selects, spilled.
    pub fn read(
        source: &Source,
        key: &ChainKey,
        on_damage: OnDamage,
        filter: &Filter,
        reversals: &Reversals,
    ) -> Result<Day, crate::codec_cmd::Failure> {
        let mut spill = Spill::new("day")?;
        let mut spilled: std::io::Result<()> = Ok(());
        crate::audit_cmd::for_each_pair(
            source,
            key,
            on_damage,
            filter,
            |_, _, mut r: PairRecord| {
                if spilled.is_err() {
                    return;
                }
                let id = key_of(
                    r.terminal.as_deref().unwrap_or(""),
                    r.rrn.as_deref().unwrap_or(""),
                    r.stan.as_deref().unwrap_or(""),
                );
                let p = partition_of(&id);
                let mti = r.request_mti.as_str();
                let kind = Kind::of(mti, r.processing_code.as_deref().unwrap_or(""));
                if kind == Kind::Void {
                    // A void carries its original's RRN: the original no longer counts.
                    if r.outcome == Some(Outcome::Approved) {
                        spilled = spill.put(p, &Spilled::Reversal(id, None));
                    }
                    return;
                }
                if mti.starts_with("04") {
                    if Outcome::approves_code(r.response_code.as_deref()) {
                        // A partial reversal leaves the original at its replacement amount.
                        let rest = r.replacement_amount.filter(|a| *a > 0);
                        spilled = spill.put(p, &Spilled::Reversal(id, rest));
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
                spilled = spill.put(p, &Spilled::Txn(id, txn));
            },
        )?;
        spilled.map_err(io_failure("temporary partition"))?;
        Ok(Day {
            partitions: spill.finish()?,
        })
    }

    /// One partition's transactions, reversals and voids applied.
    fn partition(&self, p: usize) -> Result<HashMap<Key, Txn>, crate::codec_cmd::Failure> {
        let mut txns = HashMap::new();
        let mut reversals = Vec::new();
        self.partitions.read(p, |entry| match entry {
            // A completion takes its pre-authorisation's place (the same key).
            Spilled::Txn(k, t) => {
                txns.insert(k, t);
            }
            Spilled::Reversal(k, rest) => reversals.push((k, rest)),
        })?;
        for (k, rest) in reversals {
            if let Some(t) = txns.get_mut(&k) {
                match rest {
                    Some(rest) => t.amount = rest.min(t.amount),
                    None => t.reversed = true,
                }
            }
        }
        Ok(txns)
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
pub fn print_settlement(day: &Day, format: Format) -> CmdResult {
    let mut by: BTreeMap<(String, String), Totals> = BTreeMap::new();
    for p in 0..PARTITIONS {
        for t in day.partition(p)?.values() {
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
    }
    crate::audit_cmd::written(write_settlement(&by, format))
}

fn write_settlement(
    by: &BTreeMap<(String, String), Totals>,
    format: Format,
) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if format == Format::Jsonl {
        for ((merchant, currency), t) in by {
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

/// One row of the settlement file: its line number and cells.
type FileRow = (usize, Vec<String>);

/// `audit reconcile`: the switch's standing approvals of `date` against the file's rows of
/// that date. Exit 0 only when nothing differs. The file is read once, checked whole before
/// anything is compared, and spilled to partitions like the day; the differences are
/// written as they are found (a table: at the end).
pub fn reconcile(day: &Day, against: &Path, date: &str, format: Format) -> CmdResult {
    use std::io::BufRead;
    let at = |n: usize| format!("{} line {}", against.display(), n + 1);
    let file = std::fs::File::open(against)
        .map_err(|e| fail(EX_NOINPUT)(anyhow!("{}: {e}", against.display())))?;
    let mut lines = std::io::BufReader::new(file).lines().enumerate();
    let header = match lines.next() {
        Some((_, Ok(l))) => l,
        Some((n, Err(e))) => return Err(fail(EX_DATAERR)(anyhow!("{}: {e}", at(n)))),
        None => String::new(),
    };
    if header.trim() != FILE_COLUMNS.join(",") {
        return Err(fail(EX_DATAERR)(anyhow!(
            "{}: the header must be {}",
            at(0),
            FILE_COLUMNS.join(",")
        )));
    }
    let mut rows = Spill::new("file")?;
    for (n, line) in lines {
        let line = line.map_err(|e| fail(EX_DATAERR)(anyhow!("{}: {e}", at(n))))?;
        if line.trim().is_empty() {
            continue;
        }
        let cells: Vec<String> = line.split(',').map(|c| c.trim().to_string()).collect();
        if cells.len() != FILE_COLUMNS.len() || line.contains('"') {
            return Err(fail(EX_DATAERR)(anyhow!(
                "{}: {} columns (expected {}, unquoted)",
                at(n),
                cells.len(),
                FILE_COLUMNS.len()
            )));
        }
        if cells[0] != date {
            continue;
        }
        if cells[5].parse::<u64>().is_err() {
            return Err(fail(EX_DATAERR)(anyhow!(
                "{}: amount {:?} is not minor units",
                at(n),
                cells[5]
            )));
        }
        let p = partition_of(&key_of(&cells[2], &cells[1], &cells[4]));
        rows.put(p, &(n, cells))
            .map_err(io_failure("temporary partition"))?;
    }
    let rows = rows.finish()?;
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
    let mut out = std::io::stdout().lock();
    let mut table = Vec::new();
    let mut differences = 0u64;
    let mut matched = 0u64;
    let mut emit = |out: &mut std::io::StdoutLock<'_>, d: [String; 8]| -> std::io::Result<()> {
        differences += 1;
        match format {
            Format::Csv => write_csv_row(out, &d),
            Format::Jsonl => {
                let row: serde_json::Map<String, serde_json::Value> = header
                    .iter()
                    .zip(d)
                    .map(|(h, v)| (h.clone(), v.into()))
                    .collect();
                writeln!(out, "{}", serde_json::Value::Object(row))
            }
            Format::Table => {
                table.push(d);
                Ok(())
            }
        }
    };
    let written =
        |r: std::io::Result<()>| r.map_err(|e| fail(crate::codec_cmd::EX_IOERR)(e.into()));
    if format == Format::Csv {
        written(write_csv_row(&mut out, &header))?;
    }
    for p in 0..PARTITIONS {
        let txns = day.partition(p)?;
        let mut file_rows: Vec<FileRow> = Vec::new();
        rows.read(p, |r: FileRow| file_rows.push(r))?;
        file_rows.sort_by_key(|(n, _)| *n);
        let mut seen: std::collections::HashSet<Key> = std::collections::HashSet::new();
        for (_, cells) in &file_rows {
            let amount: u64 = cells[5].parse().unwrap_or(0);
            let key = key_of(&cells[2], &cells[1], &cells[4]);
            let row = |kind: &str, switch_amount: String, detail: String| {
                [
                    kind.to_string(),
                    cells[2].clone(),
                    cells[1].clone(),
                    cells[4].clone(),
                    switch_amount,
                    amount.to_string(),
                    cells[6].clone(),
                    detail,
                ]
            };
            let found = txns.get(&key).filter(|t| t.stands());
            let difference = match found {
                None => Some(row(
                    "missing-at-switch",
                    String::new(),
                    "in the file, not approved at the switch".into(),
                )),
                Some(_) if seen.contains(&key) => Some(row(
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
                        None
                    } else {
                        Some(row("mismatch", t.amount.to_string(), why.join("; ")))
                    }
                }
            };
            if let Some(d) = difference {
                written(emit(&mut out, d))?;
            }
            seen.insert(key);
        }
        let mut missing: Vec<(&Key, &Txn)> = txns
            .iter()
            .filter(|(k, t)| t.stands() && !seen.contains(*k))
            .collect();
        missing.sort_by(|a, b| a.0.cmp(b.0));
        for ((terminal, id), t) in missing {
            written(emit(
                &mut out,
                [
                    "missing-in-file".into(),
                    terminal.to_string(),
                    id.to_string(),
                    t.stan.to_string(),
                    t.amount.to_string(),
                    String::new(),
                    t.currency.to_string(),
                    "approved at the switch, not in the file".into(),
                ],
            ))?;
        }
    }
    if format == Format::Table {
        written(
            write_table(&mut out, &header, &table)
                .and_then(|()| writeln!(out, "{matched} matched, {differences} differences")),
        )?;
    }
    if differences == 0 {
        Ok(())
    } else {
        Err(fail(EX_DATAERR)(anyhow!(
            "{differences} differences ({matched} matched)"
        )))
    }
}
