//! `switchyard sim issuer` and `switchyard sim terminal`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use switchyard_iso8583::Mti;
use switchyard_mux::{ClientTls, ClientTlsFiles, Framing, LengthPrefix};
use switchyard_sim::card_security::{key_from_file, IssuerKeys, PadKeys, TerminalSecurity};
use switchyard_sim::{IssuerSim, IssuerSimConfig, TerminalSimConfig};

use crate::codec_cmd::{fail, resolve_spec, CmdResult, EX_IOERR, EX_UNAVAILABLE, EX_USAGE};

#[derive(Subcommand, Debug)]
pub enum SimCommand {
    /// A simulated issuer host (runs until SIGTERM/SIGINT, then prints its ledger).
    Issuer(IssuerArgs),
    /// Simulated terminals sending load; prints throughput, latency and response codes.
    Terminal(TerminalArgs),
    /// A payShield host-command simulator (runs until SIGTERM/SIGINT); or, with
    /// --form-key, form a key from components and print its LMK token and check value.
    Hsm(HsmArgs),
}

#[derive(Args, Debug)]
pub struct HsmArgs {
    /// Address to listen on.
    #[arg(long, required_unless_present = "form_key")]
    listen: Option<String>,
    /// The simulator's LMK: a file of 32 hex digits.
    #[arg(long)]
    lmk_file: PathBuf,
    /// Message header characters.
    #[arg(long, default_value_t = 4)]
    header_len: usize,
    /// Form a key of this usage (zmk, zpk, ...) from --component files, print its token.
    #[arg(long, requires = "components")]
    form_key: Option<String>,
    /// A component file (32 hex digits); give two or three.
    #[arg(long = "component")]
    components: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct Wire {
    /// Dialect: a shipped spec name or a spec file.
    #[arg(long, default_value = "iso8583-1987-ascii")]
    spec: String,
    /// Length prefix: binary2, ascii4, bcd2, binary4.
    #[arg(long, default_value = "binary2")]
    framing: String,
}

impl Wire {
    pub(crate) fn resolve(&self) -> anyhow::Result<(&'static switchyard_iso8583::Spec, Framing)> {
        let spec = resolve_spec(&self.spec)?;
        let prefix = LengthPrefix::from_name(&self.framing).ok_or_else(|| {
            anyhow!(
                "--framing {:?}: expected binary2, ascii4, bcd2 or binary4",
                self.framing
            )
        })?;
        Ok((
            spec,
            Framing {
                prefix,
                ..Framing::default()
            },
        ))
    }
}

#[derive(Args, Debug)]
pub struct IssuerArgs {
    /// Address to listen on.
    #[arg(long)]
    listen: String,
    #[command(flatten)]
    wire: Wire,
    /// Share of requests approved, 0 to 1.
    #[arg(long, default_value_t = 1.0)]
    approval_rate: f64,
    /// Response code of declines.
    #[arg(long, default_value = "05")]
    decline_code: String,
    /// Answer delay in milliseconds: N, or MIN-MAX for a uniform spread (answers out of order).
    #[arg(long, default_value = "0")]
    delay_ms: String,
    /// Share of requests never answered, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    silence_rate: f64,
    /// Close each connection after this many requests.
    #[arg(long)]
    disconnect_after: Option<u64>,
    /// Serve TLS with this certificate chain (PEM)...
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// ...and this key.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    keys: IssuerKeyArgs,
    /// At stop, write the standing approvals here as a settlement file (the schema
    /// `audit reconcile` reads).
    #[arg(long)]
    ledger_csv: Option<PathBuf>,
    /// Approve a sale or pre-authorisation above this amount (minor units) in part:
    /// response code 10 with this amount in field 4.
    #[arg(long)]
    partial_over: Option<u64>,
    /// Never answer a request of exactly this amount (a timeout the switch reverses).
    #[arg(long)]
    silent_amount: Option<u64>,
}

/// The simulated issuer's zone keys (files of hex digits; `aes:` before them for AES).
#[derive(Args, Debug)]
pub struct IssuerKeyArgs {
    /// Zone PIN key: PIN blocks are decrypted with it; the expected PIN approves, others
    /// are declined 55.
    #[arg(long)]
    zpk_file: Option<PathBuf>,
    /// Zone MAC key: requests must carry its MAC (63 otherwise), answers get one.
    #[arg(long)]
    zak_file: Option<PathBuf>,
    /// PIN block format the switch translates to (0, 1, 3 or 4).
    #[arg(long, default_value_t = 0)]
    pin_format: u8,
    /// The PIN that approves.
    #[arg(long, default_value = "1234")]
    expected_pin: String,
    /// MAC algorithm: x9.19, iso9797-1 or aes-cmac.
    #[arg(long, default_value = "x9.19")]
    mac_algorithm: String,
    /// Zone master key file: new ZPKs travel under it (the switch's key exchanges taken;
    /// with --key-exchange-after-ms, one of its own sent).
    #[arg(long)]
    zmk_file: Option<PathBuf>,
    /// Milliseconds after the link connects to send one key exchange 0800.
    #[arg(long, requires = "zmk_file")]
    key_exchange_after_ms: Option<u64>,
    /// Field 70 of the key exchange.
    #[arg(long, default_value = "161")]
    key_exchange_code: String,
    /// The field that carries the new key.
    #[arg(long, default_value_t = 48)]
    key_field: u8,
}

/// The simulated terminal's PIN pad (key files of hex digits; `aes:` before them for AES).
#[derive(Args, Debug)]
pub struct PadArgs {
    /// Enter this PIN on every request (a PIN block in field 52).
    #[arg(long)]
    pin: Option<String>,
    /// PIN block format: 0, 1, 3 or 4.
    #[arg(long, default_value_t = 0)]
    pin_format: u8,
    /// Terminal PIN key file.
    #[arg(long, conflicts_with = "dukpt_key_file")]
    tpk_file: Option<PathBuf>,
    /// Terminal MAC key file: requests are MACed, answers' MACs checked.
    #[arg(long)]
    tak_file: Option<PathBuf>,
    /// DUKPT initial key file (IPEK; `aes:` for an AES DUKPT initial key).
    #[arg(long, requires = "ksn")]
    dukpt_key_file: Option<PathBuf>,
    /// DUKPT key serial number (hex, counter 0): 20 digits TDES, 24 AES; it advances by
    /// one each request.
    #[arg(long)]
    ksn: Option<String>,
    /// MAC requests with the DUKPT request MAC key.
    #[arg(long)]
    dukpt_mac: bool,
    /// The field the KSN goes in.
    #[arg(long, default_value_t = 53)]
    ksn_field: u8,
    /// MAC algorithm: x9.19, iso9797-1 or aes-cmac.
    #[arg(long, default_value = "x9.19")]
    mac_algorithm: String,
    /// Send MACs that do not verify.
    #[arg(long)]
    corrupt_mac: bool,
}

fn pin_format(code: u8) -> anyhow::Result<switchyard_hsm::pin::Format> {
    switchyard_hsm::pin::Format::from_code(code)
        .ok_or_else(|| anyhow!("--pin-format {code}: 0, 1, 3 or 4"))
}

fn mac_algorithm(name: &str) -> anyhow::Result<switchyard_hsm::module::MacAlgorithm> {
    switchyard_hsm::module::MacAlgorithm::from_name(name)
        .ok_or_else(|| anyhow!("--mac-algorithm {name:?}: x9.19, iso9797-1 or aes-cmac"))
}

impl IssuerKeyArgs {
    fn keys(&self) -> anyhow::Result<Option<Arc<IssuerKeys>>> {
        if self.zpk_file.is_none() && self.zak_file.is_none() {
            return Ok(None);
        }
        let load = |p: &Option<PathBuf>| p.as_deref().map(key_from_file).transpose();
        let mut keys = IssuerKeys::new(
            load(&self.zpk_file)?,
            pin_format(self.pin_format)?,
            &self.expected_pin,
            load(&self.zak_file)?,
            mac_algorithm(&self.mac_algorithm)?,
        );
        keys.zmk = load(&self.zmk_file)?;
        keys.exchange_after = self.key_exchange_after_ms.map(Duration::from_millis);
        keys.exchange_code = self.key_exchange_code.clone();
        keys.key_field = self.key_field;
        Ok(Some(Arc::new(keys)))
    }
}

impl PadArgs {
    fn pad(&self) -> anyhow::Result<Option<Arc<TerminalSecurity>>> {
        let Some(pin) = &self.pin else {
            return Ok(None);
        };
        let keys = match (&self.tpk_file, &self.dukpt_key_file, &self.ksn) {
            (Some(tpk), None, _) => PadKeys::Fixed {
                tpk: key_from_file(tpk)?,
                tak: self.tak_file.as_deref().map(key_from_file).transpose()?,
            },
            (None, Some(initial), Some(ksn)) => PadKeys::Dukpt {
                initial: key_from_file(initial)?,
                ksn_base: switchyard_hsm::from_hex(ksn).map_err(|e| anyhow!("--ksn: {e}"))?,
                macs: self.dukpt_mac,
            },
            _ => {
                return Err(anyhow!(
                    "--pin needs --tpk-file, or --dukpt-key-file and --ksn"
                ))
            }
        };
        let mut pad = TerminalSecurity::new(
            keys,
            pin,
            pin_format(self.pin_format)?,
            self.ksn_field,
            mac_algorithm(&self.mac_algorithm)?,
        );
        pad.corrupt_mac = self.corrupt_mac;
        Ok(Some(Arc::new(pad)))
    }
}

#[derive(Args, Debug)]
pub struct TerminalArgs {
    /// The switch, host:port.
    #[arg(long)]
    target: String,
    #[command(flatten)]
    wire: Wire,
    /// Terminal connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Requests in all.
    #[arg(long, conflicts_with = "duration")]
    count: Option<u64>,
    /// Seconds to send for.
    #[arg(long)]
    duration: Option<f64>,
    /// Requests per second in all (open loop).
    #[arg(long, conflicts_with = "window")]
    rate: Option<f64>,
    /// Requests in flight per connection (closed loop).
    #[arg(long)]
    window: Option<usize>,
    /// Request MTI: 0100 or 0200.
    #[arg(long, default_value = "0200")]
    mti: String,
    /// Milliseconds to wait for each answer (longer than the switch's default issuer
    /// timeout of 10 s, so that its 91 answers arrive as answers).
    #[arg(long, default_value_t = 15_000)]
    timeout_ms: u64,
    /// Number of the first terminal id (T0000001, ...; each with merchant MERCHANT0000001,
    /// ..., as in deploy/config/registry.toml).
    #[arg(long, default_value_t = 1)]
    first_terminal: u32,
    /// One terminal id (field 41) instead of the numbered ones (one connection).
    #[arg(long)]
    terminal: Option<String>,
    /// One merchant id (field 42) for every connection.
    #[arg(long)]
    merchant: Option<String>,
    /// Merchant category code (field 18).
    #[arg(long)]
    mcc: Option<String>,
    /// CA certificate of the switch: connect with TLS.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Name on the switch's certificate.
    #[arg(long, default_value = "localhost")]
    tls_server_name: String,
    /// Client certificate (mutual TLS).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Client key (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pad: PadArgs,
}

fn runtime() -> Result<tokio::runtime::Runtime, crate::codec_cmd::Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(EX_IOERR)(e.into()))
}

pub fn run(command: SimCommand) -> CmdResult {
    match command {
        SimCommand::Issuer(args) => issuer(args),
        SimCommand::Terminal(args) => terminal(args),
        SimCommand::Hsm(args) => hsm(args),
    }
}

fn hsm(args: HsmArgs) -> CmdResult {
    use switchyard_payshield::simulator::{form_key, Lmk};
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(&args.lmk_file)
            .map_err(|e| fail(EX_USAGE)(anyhow!("{}: {e}", args.lmk_file.display())))?,
    );
    let lmk = || Lmk::from_hex(&text).map_err(|e| fail(EX_USAGE)(e.into()));
    if let Some(usage) = &args.form_key {
        let usage = switchyard_hsm::module::KeyUsage::from_name(usage).ok_or_else(|| {
            fail(EX_USAGE)(anyhow!(
                "--form-key {usage:?}: zmk, zpk, tpk, tak, zak or bdk"
            ))
        })?;
        if args.components.len() < 2 {
            return Err(fail(EX_USAGE)(anyhow!(
                "a key is formed from at least two components"
            )));
        }
        let mut parts = Vec::new();
        for path in &args.components {
            let hex = zeroize::Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| fail(EX_USAGE)(anyhow!("{}: {e}", path.display())))?,
            );
            parts.push(
                switchyard_hsm::from_hex(hex.trim())
                    .map_err(|e| fail(EX_USAGE)(anyhow!("{}: {e}", path.display())))?,
            );
        }
        let (token, kcv) =
            form_key(&lmk()?, usage, &parts).map_err(|e| fail(EX_USAGE)(e.into()))?;
        println!("token {token} kcv {kcv}");
        return Ok(());
    }
    let listen = args.listen.unwrap_or_default();
    let lmk = lmk()?;
    runtime()?.block_on(async {
        let sim = switchyard_payshield::HsmSimulator::start(&listen, lmk, args.header_len)
            .await
            .map_err(|e| fail(EX_IOERR)(anyhow!("binding {listen}: {e}")))?;
        eprintln!(
            "simulated payShield on {} (not a certified device: for tests and labs)",
            sim.addr
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| fail(EX_IOERR)(e.into()))?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}

fn delays(text: &str) -> anyhow::Result<(Duration, Duration)> {
    let ms = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| anyhow!("--delay-ms {text:?}: expected N or MIN-MAX"))
    };
    match text.split_once('-') {
        Some((a, b)) => Ok((ms(a)?, ms(b)?)),
        None => {
            let d = ms(text)?;
            Ok((d, d))
        }
    }
}

fn issuer(args: IssuerArgs) -> CmdResult {
    let (spec, framing) = args.wire.resolve().map_err(fail(EX_USAGE))?;
    let (delay_min, delay_max) = delays(&args.delay_ms).map_err(fail(EX_USAGE))?;
    if !(0.0..=1.0).contains(&args.approval_rate) || !(0.0..=1.0).contains(&args.silence_rate) {
        return Err(fail(EX_USAGE)(anyhow!(
            "--approval-rate and --silence-rate are between 0 and 1"
        )));
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(
            switchyard_mux::ServerTls::load(switchyard_mux::ServerTlsFiles {
                cert_chain: cert.clone(),
                private_key: key.clone(),
                client_ca: None,
            })
            .map_err(|e| fail(EX_USAGE)(e.into()))?,
        )),
        _ => None,
    };
    let config = IssuerSimConfig {
        tls,
        framing,
        approval_rate: args.approval_rate,
        decline_code: args.decline_code,
        delay_min,
        delay_max,
        silence_rate: args.silence_rate,
        partial_over: args.partial_over,
        silent_amount: args.silent_amount,
        disconnect_after: args.disconnect_after,
        max_connections: 1024,
        keys: args.keys.keys().map_err(fail(EX_USAGE))?,
        ..IssuerSimConfig::approving(spec)
    };
    runtime()?.block_on(async {
        let sim = IssuerSim::start(&args.listen, config)
            .await
            .map_err(|e| fail(EX_IOERR)(anyhow!("binding {}: {e}", args.listen)))?;
        eprintln!("simulated issuer on {}", sim.addr);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| fail(EX_IOERR)(e.into()))?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        sim.stop();
        if let Some(path) = &args.ledger_csv {
            std::fs::write(path, sim.ledger.settlement_csv())
                .map_err(|e| fail(EX_IOERR)(anyhow!("{}: {e}", path.display())))?;
        }
        println!("ledger: {}", sim.ledger.summary());
        Ok(())
    })
}

fn terminal(args: TerminalArgs) -> CmdResult {
    let (spec, framing) = args.wire.resolve().map_err(fail(EX_USAGE))?;
    // The simulator builds authorisations and financials; anything else would go out
    // without the fields its MTI needs.
    let mti = Mti::parse(&args.mti)
        .filter(|m| matches!(m.as_str(), "0100" | "0200"))
        .ok_or_else(|| {
            fail(EX_USAGE)(anyhow!(
                "--mti {:?}: the simulator sends 0100 or 0200",
                args.mti
            ))
        })?;
    let tls = match &args.tls_ca {
        None => None,
        Some(ca) => Some(Arc::new(
            ClientTls::load(ClientTlsFiles {
                ca: ca.clone(),
                server_name: args.tls_server_name.clone(),
                client_auth: args.tls_cert.clone().zip(args.tls_key.clone()),
            })
            .map_err(|e| fail(EX_USAGE)(e.into()))?,
        )),
    };
    if args.count.is_none() && args.duration.is_none() {
        return Err(fail(EX_USAGE)(anyhow!(
            "give --count or --duration: every run is bounded"
        )));
    }
    let duration = match args.duration {
        Some(d) if d.is_finite() && d > 0.0 => Some(Duration::from_secs_f64(d)),
        Some(_) => {
            return Err(fail(EX_USAGE)(anyhow!(
                "--duration must be a positive number of seconds"
            )))
        }
        None => None,
    };
    let config = TerminalSimConfig {
        framing,
        connections: args.connections,
        count: args.count,
        duration,
        rate: args.rate,
        window: args.window.unwrap_or(1),
        tls,
        mti,
        timeout: Duration::from_millis(args.timeout_ms),
        progress: duration.is_some_and(|d| d > Duration::from_secs(2)) && !args.json,
        first_terminal: args.first_terminal,
        terminal: args.terminal.clone(),
        merchant: args.merchant.clone(),
        mcc: args.mcc.clone(),
        security: args.pad.pad().map_err(fail(EX_USAGE))?,
        ..TerminalSimConfig::new(&args.target, spec)
    };
    let report = runtime()?
        .block_on(switchyard_sim::run(config))
        .map_err(|e| fail(EX_USAGE)(e.into()))?;
    if args.json {
        let codes: serde_json::Map<String, serde_json::Value> = report
            .codes
            .iter()
            .map(|(c, n)| (c.clone(), (*n).into()))
            .collect();
        let json = serde_json::json!({
            "sent": report.sent,
            "answered": report.answered,
            "unanswered": report.unanswered,
            "connect_errors": report.connect_errors,
            "failures": report.failures,
            "elapsed_s": report.elapsed.as_secs_f64(),
            "throughput": report.throughput(),
            "latency_ms": {
                "p50": report.latency_ms(0.5),
                "p99": report.latency_ms(0.99),
                "p999": report.latency_ms(0.999),
            },
            "codes": codes,
        });
        println!("{json}");
    } else {
        print!("{}", report.render());
    }
    if report.all_answered() {
        return Ok(());
    }
    Err(fail(EX_UNAVAILABLE)(anyhow!(
        "{} of {} requests unanswered, {} connections failed: {}",
        report.unanswered,
        report.sent,
        report.connect_errors,
        report.failure_text()
    )))
}
