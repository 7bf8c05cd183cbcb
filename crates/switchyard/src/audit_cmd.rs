//! `switchyard audit verify|query|report`: the audit log's tools.
//!
//! Keys come from a file (`--*-key-file`), an environment variable (`--*-key-env`) or, for
//! the demo configuration only, `--demo-keys`; a command that needs a key and gets none is
//! a usage error, never a silent default. A PAN given to `query` is hashed with the PAN key
//! and never printed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::anyhow;
use clap::{Args, Subcommand, ValueEnum};
use switchyard_audit::{
    AuditError, ChainKey, Filter, KeySource, OnDamage, Outcome, PairRecord, PanKey, ReportRow,
    VerifyReport,
};
use switchyard_iso8583::datetime::Civil;
use switchyard_router::saf::{EntryState, SafEntry};

use crate::codec_cmd::{
    fail, CmdResult, EX_CONFIG, EX_DATAERR, EX_IOERR, EX_NOINPUT, EX_UNAVAILABLE, EX_USAGE,
};

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check every record's CRC, sequence number and keyed chain; exit 65 at the first problem.
    Verify {
        /// The audit log directory.
        #[arg(long, required_unless_present = "stream", conflicts_with = "stream")]
        dir: Option<PathBuf>,
        /// Or the audit stream: a NATS server URL; each instance's chain verified on its own.
        #[arg(long)]
        stream: Option<String>,
        #[command(flatten)]
        source: StreamArgs,
        #[command(flatten)]
        key: ChainKeyArgs,
    },
    /// List pair records that match every filter given (each record verified as it is read).
    Query {
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Totals per day, issuer, merchant and terminal for reconciliation (each record
    /// verified as it is read).
    Report {
        #[command(flatten)]
        read: ReadArgs,
    },
    /// What the acquirer pays each merchant for a business date: per merchant and currency,
    /// sales, cash, completions, refunds and reversals, counts and the net amount.
    Settle {
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Match a business date's approved, reversed and completed transactions against a
    /// settlement file (CSV: business_date, rrn, terminal, merchant, stan, amount, currency,
    /// response_code, auth_id); exit 0 only when nothing differs.
    Reconcile {
        #[command(flatten)]
        read: ReadArgs,
        /// The settlement file.
        #[arg(long)]
        against: PathBuf,
    },
}

/// What `query` and `report` share: the log, its keys, the filters and the output.
#[derive(Args, Debug)]
pub struct ReadArgs {
    /// The audit log directory.
    #[arg(long, required_unless_present = "stream", conflicts_with = "stream")]
    dir: Option<PathBuf>,
    /// Or the audit stream (a NATS server URL): every instance's records, each instance's
    /// chain verified on its own.
    #[arg(long)]
    stream: Option<String>,
    #[command(flatten)]
    source: StreamArgs,
    #[command(flatten)]
    filter: FilterArgs,
    /// Find a card: the PAN is hashed with the PAN key and never printed.
    #[arg(long, value_name = "PAN")]
    pan: Option<String>,
    /// Read the PAN from standard input instead (keeps it out of shell history).
    #[arg(long, conflicts_with = "pan")]
    pan_stdin: bool,
    #[command(flatten)]
    keys: KeyArgs,
    /// Go on past damaged records instead of stopping at the first one; what was skipped
    /// is listed on standard error and the output says the log is damaged.
    #[arg(long)]
    allow_damaged: bool,
    /// The store-and-forward journal, for each transaction's reversal or advice (default:
    /// `saf` beside --dir, when there is one).
    #[arg(long, value_name = "DIR")]
    saf_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Args, Debug)]
pub struct ChainKeyArgs {
    /// File holding the chain key (64+ hex characters or 32+ bytes).
    #[arg(long, value_name = "FILE")]
    chain_key_file: Option<PathBuf>,
    /// Environment variable holding the chain key as hex.
    #[arg(long, value_name = "VAR")]
    chain_key_env: Option<String>,
    /// Use the public demo keys of the embedded default configuration.
    #[arg(long)]
    demo_keys: bool,
}

/// The chain key (to verify what is read) and the PAN key (for `--pan`).
#[derive(Args, Debug)]
pub struct KeyArgs {
    /// File holding the chain key (64+ hex characters or 32+ bytes).
    #[arg(long, value_name = "FILE")]
    chain_key_file: Option<PathBuf>,
    /// Environment variable holding the chain key as hex.
    #[arg(long, value_name = "VAR")]
    chain_key_env: Option<String>,
    /// File holding the PAN key (only with --pan or --pan-stdin).
    #[arg(long, value_name = "FILE")]
    pan_key_file: Option<PathBuf>,
    /// Environment variable holding the PAN key as hex.
    #[arg(long, value_name = "VAR")]
    pan_key_env: Option<String>,
    /// Use the public demo keys of the embedded default configuration.
    #[arg(long)]
    demo_keys: bool,
}

#[derive(Args, Debug)]
pub struct FilterArgs {
    /// Terminal id (field 41).
    #[arg(long)]
    terminal: Option<String>,
    /// Merchant id (field 42).
    #[arg(long)]
    merchant: Option<String>,
    /// Retrieval reference number (field 37).
    #[arg(long)]
    rrn: Option<String>,
    /// STAN (field 11), the terminal's or the issuer's.
    #[arg(long)]
    stan: Option<String>,
    /// Response code (field 39).
    #[arg(long)]
    response_code: Option<String>,
    /// Outcome: approved, declined, timeout, no-route, format-error, link-down, ...
    #[arg(long)]
    outcome: Option<String>,
    /// Received at or after: YYYY-MM-DD[THH:MM:SS][Z] (UTC) or Unix seconds.
    #[arg(long)]
    from: Option<String>,
    /// Received before: same forms as --from.
    #[arg(long)]
    to: Option<String>,
    /// Business date (YYYYMMDD).
    #[arg(long)]
    business_date: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header line.
    Csv,
}

fn key_source(
    file: &Option<PathBuf>,
    env: &Option<String>,
    demo: bool,
    what: &str,
) -> anyhow::Result<KeySource> {
    match (file, env, demo) {
        (Some(f), None, false) => Ok(KeySource::File(f.clone())),
        (None, Some(v), false) => Ok(KeySource::Env(v.clone())),
        (None, None, true) => {
            eprintln!("switchyard: {}", switchyard_audit::DEMO_WARNING);
            Ok(KeySource::Demo)
        }
        (None, None, false) => Err(anyhow!(
            "the {what} key is needed: give --{what}-key-file, --{what}-key-env or (demo data only) --demo-keys"
        )),
        _ => Err(anyhow!("give one of --{what}-key-file, --{what}-key-env and --demo-keys")),
    }
}

fn parse_time(text: &str, flag: &str) -> anyhow::Result<i64> {
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs * 1_000_000);
    }
    Civil::parse(text)
        .and_then(Civil::to_unix)
        .map(|s| s * 1_000_000)
        .ok_or_else(|| {
            anyhow!("--{flag} {text:?}: expected YYYY-MM-DD[THH:MM:SS][Z] or Unix seconds")
        })
}

impl FilterArgs {
    fn to_filter(&self) -> anyhow::Result<Filter> {
        let outcome = match &self.outcome {
            None => None,
            Some(name) => Some(Outcome::from_name(name).ok_or_else(|| {
                let names: Vec<&str> = Outcome::ALL.iter().map(|o| o.name()).collect();
                anyhow!("--outcome {name:?}: expected one of {}", names.join(", "))
            })?),
        };
        Ok(Filter {
            terminal: self.terminal.clone(),
            merchant: self.merchant.clone(),
            rrn: self.rrn.clone(),
            stan: self.stan.clone(),
            response_code: self.response_code.clone(),
            outcome,
            from_us: self
                .from
                .as_deref()
                .map(|t| parse_time(t, "from"))
                .transpose()?,
            to_us: self
                .to
                .as_deref()
                .map(|t| parse_time(t, "to"))
                .transpose()?,
            pan_hash: None,
            business_date: self.business_date.clone(),
        })
    }
}

pub(crate) fn audit_failure(e: AuditError) -> crate::codec_cmd::Failure {
    let code = match &e {
        AuditError::Corrupt { .. } | AuditError::Payload { .. } => EX_DATAERR,
        AuditError::NotALog { .. } => EX_NOINPUT,
        AuditError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            EX_NOINPUT
        }
        AuditError::Key { .. } | AuditError::Config(_) => EX_CONFIG,
        _ => EX_IOERR,
    };
    fail(code)(e.into())
}

pub fn run(command: AuditCommand) -> CmdResult {
    match command {
        AuditCommand::Verify {
            dir,
            stream,
            source,
            key,
        } => {
            let key_source = key_source(
                &key.chain_key_file,
                &key.chain_key_env,
                key.demo_keys,
                "chain",
            )
            .map_err(fail(EX_USAGE))?;
            let key = ChainKey::load(&key_source).map_err(audit_failure)?;
            let Some(dir) = dir else {
                return verify_stream(&source.config(stream.unwrap_or_default()), &key);
            };
            let report = switchyard_audit::verify(&dir, &key).map_err(audit_failure)?;
            let range = match (report.first_seq, report.last_seq) {
                (Some(a), Some(b)) => format!("sequence {a}..={b}"),
                _ => "no records".to_string(),
            };
            let line = format!(
                "ok: {} records in {} segments verified ({range}); chain head {}",
                report.records, report.segments, report.head
            );
            written(writeln!(std::io::stdout(), "{line}"))
        }
        AuditCommand::Query { read } => {
            let (filter, key, on_damage) = read.open()?;
            let reversals = read.reversals(&key)?;
            query(
                &read.records(),
                &key,
                on_damage,
                &filter,
                &reversals,
                read.format,
            )
        }
        AuditCommand::Settle { read } => {
            let (filter, key, on_damage) = read.open()?;
            let reversals = read.reversals(&key)?;
            let day =
                crate::books_cmd::Day::read(&read.records(), &key, on_damage, &filter, &reversals)?;
            crate::books_cmd::print_settlement(&day, read.format)
        }
        AuditCommand::Reconcile { read, against } => {
            let (filter, key, on_damage) = read.open()?;
            if filter.business_date.is_none() {
                return Err(fail(EX_USAGE)(anyhow!("reconcile needs --business-date")));
            }
            let reversals = read.reversals(&key)?;
            let day =
                crate::books_cmd::Day::read(&read.records(), &key, on_damage, &filter, &reversals)?;
            crate::books_cmd::reconcile(
                &day,
                &against,
                filter.business_date.as_deref().unwrap_or_default(),
                read.format,
            )
        }
        AuditCommand::Report { read } => {
            let (filter, key, on_damage) = read.open()?;
            let delivered = read
                .reversals(&key)?
                .into_values()
                .filter(|e| e.state == EntryState::Delivered)
                .map(|e| e.id)
                .collect();
            let dir = match read.records() {
                Source::Dir(dir) => dir,
                stream @ Source::Stream(_) => {
                    let mut reporter = switchyard_audit::Reporter::new(&delivered);
                    let pairs = for_each_pair(&stream, &key, on_damage, &filter, |_, _, r| {
                        reporter.add(&r)
                    })?;
                    written(print_report(&reporter.rows(), read.format))?;
                    if let (Some(note), Format::Table) = (pairs.damaged, read.format) {
                        written(writeln!(std::io::stdout(), "{note}"))?;
                    }
                    return Ok(());
                }
            };
            let report = switchyard_audit::report(&dir, &key, on_damage, &filter, &delivered)
                .map_err(audit_failure)?;
            warn_skipped(&report.read);
            written(print_report(&report.rows, read.format))?;
            if !report.read.skipped.is_empty() && read.format == Format::Table {
                written(writeln!(
                    std::io::stdout(),
                    "{}",
                    damaged_note(&report.read)
                ))?;
            }
            Ok(())
        }
    }
}

impl ReadArgs {
    /// The filter (with the PAN's hash when one is asked for), the chain key and what to do
    /// at damage.
    fn open(&self) -> Result<(Filter, ChainKey, OnDamage), crate::codec_cmd::Failure> {
        let k = &self.keys;
        let mut filter = self.filter.to_filter().map_err(fail(EX_USAGE))?;
        // --demo-keys stands for whichever key is not given explicitly.
        let demo_chain = k.demo_keys && k.chain_key_file.is_none() && k.chain_key_env.is_none();
        let source = key_source(&k.chain_key_file, &k.chain_key_env, demo_chain, "chain")
            .map_err(fail(EX_USAGE))?;
        let chain = ChainKey::load(&source).map_err(audit_failure)?;
        let pan = match (&self.pan, self.pan_stdin) {
            (Some(p), _) => Some(p.clone()),
            (None, true) => {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .map_err(|e| fail(EX_NOINPUT)(e.into()))?;
                Some(line.trim().to_string())
            }
            (None, false) => None,
        };
        if let Some(pan) = pan {
            if pan.is_empty() || pan.len() > 19 || !pan.bytes().all(|b| b.is_ascii_digit()) {
                return Err(fail(EX_USAGE)(anyhow!("--pan: expected 1 to 19 digits")));
            }
            let source = match (&k.pan_key_file, &k.pan_key_env, k.demo_keys) {
                // The demo warning was printed for the chain key already.
                (None, None, true) if demo_chain => KeySource::Demo,
                (file, env, _) => {
                    let demo = k.demo_keys && file.is_none() && env.is_none();
                    key_source(file, env, demo, "pan").map_err(fail(EX_USAGE))?
                }
            };
            let key = PanKey::load(&source).map_err(audit_failure)?;
            filter.pan_hash = Some(key.hash(pan.as_bytes()));
        }
        let on_damage = if self.allow_damaged {
            OnDamage::Skip
        } else {
            OnDamage::Stop
        };
        Ok((filter, chain, on_damage))
    }

    /// Every reversal and advice the journal ever held, by id, each journal record
    /// verified under the chain key (the journal is written with the audit keys).
    /// Where the records are read from.
    pub(crate) fn records(&self) -> Source {
        match (&self.dir, &self.stream) {
            (Some(dir), _) => Source::Dir(dir.clone()),
            (None, server) => Source::Stream(Box::new(
                self.source.config(server.clone().unwrap_or_default()),
            )),
        }
    }

    fn reversals(&self, chain: &ChainKey) -> Result<Reversals, crate::codec_cmd::Failure> {
        let dir = match (&self.saf_dir, &self.dir) {
            (Some(d), _) => d.clone(),
            // The stream carries no store-and-forward journal.
            (None, None) => return Ok(Reversals::new()),
            (None, Some(dir)) => match dir.parent() {
                Some(parent) if parent.join("saf").is_dir() => parent.join("saf"),
                _ => return Ok(Reversals::new()),
            },
        };
        switchyard_router::saf::history(&dir, Some(chain)).map_err(audit_failure)
    }
}

/// Where pair records are read from: one log directory, or the audit stream (every
/// instance of the group).
pub(crate) enum Source {
    /// A log directory.
    Dir(PathBuf),
    /// The audit stream.
    Stream(Box<switchyard_cluster::ClusterConfig>),
}

/// What a read of pair records found.
pub(crate) struct PairsRead {
    /// Records `filter` selected.
    pub matched: u64,
    /// With damage skipped: the note that says the output is incomplete.
    pub damaged: Option<String>,
}

/// Every pair record `filter` selects, each verified as it is read (a log's chain, or each
/// instance's chain in the stream): `each(instance, seq, pair)` (the instance with the
/// stream only). A damaged record stops the read, or is skipped and said so, as `on_damage`
/// says.
pub(crate) fn for_each_pair(
    source: &Source,
    key: &ChainKey,
    on_damage: OnDamage,
    filter: &Filter,
    mut each: impl FnMut(Option<&str>, u64, PairRecord),
) -> Result<PairsRead, crate::codec_cmd::Failure> {
    let config = match source {
        Source::Dir(dir) => {
            let queried =
                switchyard_audit::query(dir, key, on_damage, filter, |seq, r| each(None, seq, r))
                    .map_err(audit_failure)?;
            warn_skipped(&queried.read);
            return Ok(PairsRead {
                matched: queried.matched,
                damaged: (!queried.read.skipped.is_empty()).then(|| damaged_note(&queried.read)),
            });
        }
        Source::Stream(config) => config,
    };
    let mut matched = 0;
    let mut checks: BTreeMap<String, switchyard_audit::ChainCheck<'_>> = BTreeMap::new();
    let mut damage: Option<String> = None;
    let mut skipped = 0u64;
    crate::keys_cmd::runtime()?
        .block_on(switchyard_cluster::read_audit_stream(
            config,
            |instance, frame| {
                if damage.is_some() {
                    return;
                }
                let check = checks
                    .entry(instance.to_string())
                    .or_insert_with(|| switchyard_audit::ChainCheck::new(key));
                if let Err(e) = check.check(frame) {
                    match on_damage {
                        OnDamage::Stop => damage = Some(format!("instance {instance}: {e}")),
                        OnDamage::Skip => {
                            eprintln!(
                                "switchyard: skipped in the stream: instance {instance}: {e}"
                            );
                            skipped += 1;
                            // Taken up again from the next record that reads.
                            *check = switchyard_audit::ChainCheck::new(key);
                        }
                    }
                    return;
                }
                let Ok(r) = switchyard_audit::read_frame(frame) else {
                    return;
                };
                if switchyard_audit::RecordKind::from_code(r.kind)
                    != Some(switchyard_audit::RecordKind::Pair)
                {
                    return;
                }
                match switchyard_audit::payload::decode::<PairRecord>(r.seq, r.payload) {
                    Ok(pair) if filter.matches(&pair) => {
                        matched += 1;
                        each(Some(instance), r.seq, pair);
                    }
                    Ok(_) => {}
                    Err(e) => damage = Some(format!("instance {instance}: record {}: {e}", r.seq)),
                }
            },
        ))
        .map_err(|e| fail(EX_UNAVAILABLE)(e.into()))?;
    if let Some(d) = damage {
        return Err(fail(EX_DATAERR)(anyhow!(
            "the audit stream does not verify: {d}"
        )));
    }
    let damaged = (skipped > 0).then(|| {
        format!("WARNING: the stream is damaged: {skipped} records skipped; these results are incomplete")
    });
    if let Some(note) = &damaged {
        eprintln!("switchyard: {note}");
    }
    Ok(PairsRead { matched, damaged })
}

/// Where the audit stream is (`--stream URL`).
#[derive(Args, Debug)]
pub struct StreamArgs {
    /// The stream's name.
    #[arg(long, default_value = "SWITCHYARD_AUDIT")]
    stream_name: String,
    /// The audit subjects' prefix.
    #[arg(long, default_value = "switchyard.audit")]
    stream_subject: String,
    /// A NATS credentials file.
    #[arg(long)]
    stream_credentials: Option<PathBuf>,
    /// A CA certificate to trust for TLS to the server.
    #[arg(long)]
    stream_tls_ca: Option<PathBuf>,
}

impl StreamArgs {
    fn config(&self, server: String) -> switchyard_cluster::ClusterConfig {
        let mut c =
            switchyard_cluster::ClusterConfig::new(vec![server], "audit-cli", PathBuf::new());
        c.audit_stream.clone_from(&self.stream_name);
        c.audit_subject.clone_from(&self.stream_subject);
        c.credentials_file.clone_from(&self.stream_credentials);
        c.tls_ca_file.clone_from(&self.stream_tls_ca);
        c
    }
}

/// `audit verify --stream`: every instance's records in the stream, each instance's chain
/// checked on its own (sequence numbers in order, none missing or repeated, chain values).
fn verify_stream(config: &switchyard_cluster::ClusterConfig, key: &ChainKey) -> CmdResult {
    struct Instance<'k> {
        check: switchyard_audit::ChainCheck<'k>,
        first: u64,
        last: u64,
        failure: Option<String>,
    }
    let mut instances: BTreeMap<String, Instance<'_>> = BTreeMap::new();
    let read = crate::keys_cmd::runtime()?
        .block_on(switchyard_cluster::read_audit_stream(
            config,
            |instance, frame| {
                let i = instances
                    .entry(instance.to_string())
                    .or_insert_with(|| Instance {
                        check: switchyard_audit::ChainCheck::new(key),
                        first: 0,
                        last: 0,
                        failure: None,
                    });
                if i.failure.is_some() {
                    return;
                }
                match i.check.check(frame) {
                    Ok(seq) => {
                        if i.first == 0 {
                            i.first = seq;
                        }
                        i.last = seq;
                    }
                    Err(e) => i.failure = Some(format!("after record {}: {e}", i.last)),
                }
            },
        ))
        .map_err(|e| fail(EX_UNAVAILABLE)(e.into()))?;
    let mut out = std::io::stdout().lock();
    let mut failed = Vec::new();
    for (name, i) in &instances {
        let anchored = i
            .check
            .anchored_at
            .map(|s| format!(" (the stream starts at record {s}: chained from there)"))
            .unwrap_or_default();
        let line = match &i.failure {
            None => format!(
                "ok: instance {name}: {} records verified (sequence {}..={}){anchored}",
                i.check.records, i.first, i.last
            ),
            Some(f) => {
                failed.push(name.clone());
                format!("FAILED: instance {name}: {f}")
            }
        };
        written(writeln!(out, "{line}"))?;
    }
    written(writeln!(
        out,
        "{read} records of {} instances in stream {}",
        instances.len(),
        config.audit_stream
    ))?;
    match failed.is_empty() {
        true => Ok(()),
        false => Err(fail(EX_DATAERR)(anyhow!(
            "the audit stream does not verify for {}",
            failed.join(", ")
        ))),
    }
}

/// Reversals and advices by id.
pub(crate) type Reversals = BTreeMap<u64, SafEntry>;

/// A reversal's fate in a cell: id, state and the last result.
fn reversal_text(r: &PairRecord, reversals: &Reversals) -> String {
    let Some(id) = r.reversal_id else {
        return String::new();
    };
    match reversals.get(&id) {
        Some(e) => {
            let state = e.state.name();
            match &e.last_result {
                Some(last) => format!("{id} {state} ({last})"),
                None => format!("{id} {state}"),
            }
        }
        None => format!("{id} not in the journal"),
    }
}

/// A write to standard output: one that found it closed (`| head`) ends the command
/// quietly, as Unix tools do.
pub(crate) fn written(result: std::io::Result<()>) -> CmdResult {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| fail(EX_IOERR)(e.into())),
    }
}

/// List on standard error what a `--allow-damaged` read skipped.
pub(crate) fn warn_skipped(read: &VerifyReport) {
    for skipped in &read.skipped {
        eprintln!("switchyard: DAMAGED LOG, skipped: {skipped}");
    }
    if !read.skipped.is_empty() {
        eprintln!("switchyard: {}", damaged_note(read));
    }
}

fn damaged_note(read: &VerifyReport) -> String {
    format!(
        "WARNING: the log is damaged: {} place(s) skipped, {} records read; these results are incomplete",
        read.skipped.len(),
        read.records
    )
}

const QUERY_COLUMNS: [&str; 15] = [
    "seq", "received", "terminal", "merchant", "mti", "stan", "rrn", "amount", "currency",
    "response", "outcome", "issuer", "route", "pan", "reversal",
];

fn time_text(us: i64) -> String {
    let c = Civil::from_unix(us.div_euclid(1_000_000));
    format!(
        "{}.{:06}Z",
        c.rfc3339().trim_end_matches('Z'),
        us.rem_euclid(1_000_000)
    )
}

fn query_row(seq: u64, r: &PairRecord, reversals: &Reversals) -> [String; 15] {
    let opt = |v: Option<&str>| v.unwrap_or_default().to_string();
    [
        seq.to_string(),
        time_text(r.received_us),
        opt(r.terminal.as_deref()),
        opt(r.merchant.as_deref()),
        r.request_mti.to_string(),
        opt(r.stan.as_deref()),
        opt(r.rrn.as_deref()),
        r.amount.map(|a| a.to_string()).unwrap_or_default(),
        opt(r.currency.as_deref()),
        opt(r.response_code.as_deref()),
        r.outcome.map(|o| o.name().to_string()).unwrap_or_default(),
        opt(r.issuer.as_deref()),
        opt(r.route.as_deref()),
        r.pan
            .as_ref()
            .map(|p| p.masked.to_string())
            .unwrap_or_default(),
        reversal_text(r, reversals),
    ]
}

fn query(
    source: &Source,
    key: &ChainKey,
    on_damage: OnDamage,
    filter: &Filter,
    reversals: &Reversals,
    format: Format,
) -> CmdResult {
    let mut rows = Vec::new();
    let mut out = std::io::stdout().lock();
    let mut write_error = None;
    let queried = for_each_pair(source, key, on_damage, filter, |instance, seq, r| {
        if write_error.is_some() {
            return;
        }
        let result = match format {
            Format::Jsonl => serde_json::to_value(&r)
                .map(|mut v| {
                    v["seq"] = seq.into();
                    if let Some(i) = instance {
                        v["instance"] = i.into();
                    }
                    // The reversal's or advice's fate, from the journal.
                    if let Some(e) = r.reversal_id.and_then(|id| reversals.get(&id)) {
                        v["reversal"] = serde_json::to_value(e).unwrap_or_default();
                    }
                    v
                })
                .map_err(std::io::Error::other)
                .and_then(|v| writeln!(out, "{v}")),
            Format::Csv | Format::Table => {
                rows.push(query_row(seq, &r, reversals));
                Ok(())
            }
        };
        if let Err(e) = result {
            write_error.get_or_insert(e);
        }
    })?;
    if let Some(e) = write_error {
        return written(Err(e));
    }
    let header = QUERY_COLUMNS.map(String::from);
    let printed = match format {
        Format::Csv => write_csv(&mut out, &header, &rows),
        Format::Table => write_table(&mut out, &header, &rows).and_then(|_| {
            writeln!(out, "{} matching records", queried.matched)?;
            match &queried.damaged {
                None => Ok(()),
                Some(note) => writeln!(out, "{note}"),
            }
        }),
        Format::Jsonl => Ok(()),
    };
    written(printed)
}

fn print_report(rows: &[ReportRow], format: Format) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if format == Format::Jsonl {
        for row in rows {
            writeln!(
                out,
                "{}",
                serde_json::to_string(row).map_err(std::io::Error::other)?
            )?;
        }
        return Ok(());
    }
    let header = [
        "dimension",
        "key",
        "currency",
        "count",
        "approved",
        "approved_amount",
        "declined",
        "declined_amount",
        "reversed",
        "reversed_amount",
        "timed_out",
        "timed_out_amount",
        "other",
    ]
    .map(String::from);
    let table: Vec<[String; 13]> = rows
        .iter()
        .map(|r| {
            let t = &r.totals;
            [
                r.dimension.to_string(),
                r.key.clone(),
                r.currency.clone(),
                t.count.to_string(),
                t.approved.to_string(),
                t.approved_amount.to_string(),
                t.declined.to_string(),
                t.declined_amount.to_string(),
                t.reversed.to_string(),
                t.reversed_amount.to_string(),
                t.timed_out.to_string(),
                t.timed_out_amount.to_string(),
                t.other.to_string(),
            ]
        })
        .collect();
    match format {
        Format::Csv => write_csv(&mut out, &header, &table),
        _ => write_table(&mut out, &header, &table),
    }
}

pub(crate) fn write_csv<const N: usize>(
    out: &mut impl Write,
    header: &[String; N],
    rows: &[[String; N]],
) -> std::io::Result<()> {
    std::iter::once(header)
        .chain(rows)
        .try_for_each(|row| write_csv_row(out, row))
}

/// One CSV line, cells quoted where they must be.
pub(crate) fn write_csv_row(out: &mut impl Write, row: &[String]) -> std::io::Result<()> {
    let cells: Vec<String> = row
        .iter()
        .map(|c| {
            if c.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.clone()
            }
        })
        .collect();
    writeln!(out, "{}", cells.join(","))
}

pub(crate) fn write_table<const N: usize>(
    out: &mut impl Write,
    header: &[String; N],
    rows: &[[String; N]],
) -> std::io::Result<()> {
    let mut widths = header.clone().map(|h| h.len());
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    for row in std::iter::once(header).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}
