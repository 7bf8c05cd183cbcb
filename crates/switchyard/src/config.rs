//! The configuration file: TOML, unknown keys refused, validated whole before anything
//! binds. `check` returns every problem at once, each with where it is.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use switchyard_audit::{AuditConfig, KeySource};
use switchyard_iso8583::Spec;
use switchyard_mux::{
    AcceptorConfig, ClientTls, ClientTlsFiles, Endpoint, Framing, Header, LengthPrefix, LinkConfig,
    Selection, ServerTls, ServerTlsFiles,
};
use switchyard_router::{RouteRule, RouteTable};

use crate::codec_cmd::resolve_spec;

/// The configuration `switchyard run` uses when given none: works on a fresh machine with
/// nothing else installed (a simulated issuer in the same process, demo audit keys).
pub const EMBEDDED_DEFAULT: &str = r#"
# Switchyard's embedded default: one terminal listener, a simulated issuer that approves,
# the audit log under ./switchyard-data, demo keys. See deploy/config/switchyard.toml.
[admin]
listen = "127.0.0.1:9583"

[audit]
dir = "./switchyard-data/audit"
demo_keys = true

[[listeners]]
name = "terminals"
listen = "127.0.0.1:8583"
spec = "iso8583-1987-ascii"

[[links]]
name = "simulated-issuer"
simulated = true
spec = "iso8583-1987-ascii"

[routing]
default = "simulated-issuer"
"#;

fn default_admin_listen() -> String {
    "127.0.0.1:9583".into()
}
fn default_spec() -> String {
    "iso8583-1987-ascii".into()
}
fn default_true() -> bool {
    true
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The admin HTTP listener.
    #[serde(default)]
    pub admin: AdminSection,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
    /// Shutdown.
    #[serde(default)]
    pub shutdown: ShutdownSection,
    /// The audit log.
    pub audit: AuditSection,
    /// Terminal listeners.
    #[serde(default)]
    pub listeners: Vec<ListenerSection>,
    /// Issuer links.
    #[serde(default)]
    pub links: Vec<LinkSection>,
    /// Routes.
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    /// Routing defaults.
    #[serde(default)]
    pub routing: RoutingSection,
    /// Reversals, store-and-forward, duplicates.
    #[serde(default)]
    pub integrity: IntegritySection,
    /// Card security: the security module and where a DUKPT KSN arrives.
    #[serde(default)]
    pub security: Option<SecuritySection>,
    /// The business day: pair records dated, a daily cut-over.
    #[serde(default)]
    pub business_day: Option<BusinessDaySection>,
    /// Terminal batch settlement (host capture).
    #[serde(default)]
    pub batch: BatchSection,
    /// What the pair records keep for the books.
    #[serde(default)]
    pub books: BooksSection,
    /// The merchant and terminal registry.
    #[serde(default)]
    pub registry: RegistrySection,
    /// Several instances as one switch (NATS JetStream): the audit stream.
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
}

/// `[cluster]`: this instance's place in a group of instances on NATS JetStream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// NATS server URLs.
    pub servers: Vec<String>,
    /// This instance's id (unique in the group), or...
    #[serde(default)]
    pub instance: Option<String>,
    /// ...the environment variable holding it (a StatefulSet's pod name, `sw-0`).
    #[serde(default)]
    pub instance_env: Option<String>,
    /// A NATS credentials file.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// A CA certificate to trust for TLS to the servers (TLS then required).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Or a user name, with its password in the environment variable `password_env`.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    /// The audit stream (default `SWITCHYARD_AUDIT`).
    #[serde(default)]
    pub audit_stream: Option<String>,
    /// The audit subjects' prefix (default `switchyard.audit`).
    #[serde(default)]
    pub audit_subject: Option<String>,
    /// The audit stream's duplicate window in seconds, when the switch creates it
    /// (default 600).
    #[serde(default)]
    pub stream_duplicate_window_s: Option<u64>,
    /// The stream's replicas, when the switch creates it (default 1; 3 on a 3-node cluster).
    #[serde(default)]
    pub replicas: Option<usize>,
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    #[serde(default)]
    pub ack_timeout_ms: Option<u64>,
    /// Publishes waiting for their acknowledgement at most (default 256).
    #[serde(default)]
    pub max_pending: Option<usize>,
    /// Share the duplicate window and the reversal index with the group (default on;
    /// needs `[integrity]`).
    #[serde(default = "default_true")]
    pub shared_state: bool,
    /// How long a shared-state operation may take before the broker counts as unreachable.
    #[serde(default = "default_shared_timeout")]
    pub shared_timeout_ms: u64,
    /// Then: `continue` with this instance's own view (counted) or `fail-closed` (91).
    #[serde(default)]
    pub when_unreachable: WhenUnreachableSetting,
    /// The merchant feed: each pair, masked, on `<feed_subject>.<merchant id>` (default on).
    #[serde(default = "default_true")]
    pub feed: bool,
    /// The feed's stream (default `SWITCHYARD_TX`).
    #[serde(default)]
    pub feed_stream: Option<String>,
    /// The feed subjects' prefix (default `switchyard.tx`).
    #[serde(default)]
    pub feed_subject: Option<String>,
    /// Days the feed stream keeps a report, when the switch creates it (default 7).
    #[serde(default)]
    pub feed_max_age_days: Option<u64>,
    /// Seconds a terminal must have been at home on an instance (sending its requests
    /// there) before they are claimed behind, off their path (default 60; longer than a
    /// terminal's timeout and retries, so the requests it had outstanding when it moved are
    /// claimed synchronously where they are retransmitted).
    #[serde(default)]
    pub home_settle_s: Option<u64>,
    /// This instance's block of the issuer STANs (default: the number its id ends in, a
    /// StatefulSet pod's ordinal), unique in the group...
    #[serde(default)]
    pub stan_block: Option<u32>,
    /// ...of this many (default 10; at least the group's most instances).
    #[serde(default)]
    pub stan_blocks: Option<u32>,
}

fn default_shared_timeout() -> u64 {
    250
}

/// `[cluster] when_unreachable`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WhenUnreachableSetting {
    /// This instance's own view.
    #[default]
    Continue,
    /// 91.
    FailClosed,
}

impl ClusterSection {
    /// The shipper's configuration, its cursor beside the audit directory.
    pub fn config(&self, audit_dir: &Path) -> Result<switchyard_cluster::ClusterConfig, String> {
        let instance = match (&self.instance, &self.instance_env) {
            (Some(id), None) => id.clone(),
            (None, Some(var)) => {
                std::env::var(var).map_err(|_| format!("cluster.instance_env: {var} is not set"))?
            }
            _ => return Err("cluster: one of instance or instance_env".into()),
        };
        let mut c = switchyard_cluster::ClusterConfig::new(
            self.servers.clone(),
            &instance,
            audit_dir.with_extension("stream-cursor"),
        );
        c.credentials_file.clone_from(&self.credentials_file);
        c.user = match (&self.user, &self.password_env) {
            (None, None) => None,
            (Some(user), Some(var)) => {
                let password = std::env::var(var)
                    .map_err(|_| format!("cluster.password_env: {var} is not set"))?;
                Some((user.clone(), switchyard_cluster::Password(password)))
            }
            _ => return Err("cluster: user and password_env go together".into()),
        };
        c.tls_ca_file.clone_from(&self.tls_ca_file);
        if let Some(v) = &self.audit_stream {
            c.audit_stream.clone_from(v);
        }
        if let Some(v) = &self.audit_subject {
            c.audit_subject.clone_from(v);
        }
        if let Some(v) = self.stream_duplicate_window_s {
            c.duplicate_window = Duration::from_secs(v);
        }
        if let Some(v) = self.replicas {
            c.replicas = v;
        }
        if let Some(v) = self.connect_timeout_ms {
            c.connect_timeout = Duration::from_millis(v);
        }
        if let Some(v) = self.ack_timeout_ms {
            c.ack_timeout = Duration::from_millis(v);
        }
        if let Some(v) = self.max_pending {
            c.max_pending = v;
        }
        c.feed = self.feed;
        if let Some(v) = &self.feed_stream {
            c.feed_stream.clone_from(v);
        }
        if let Some(v) = &self.feed_subject {
            c.feed_subject.clone_from(v);
        }
        if let Some(v) = self.home_settle_s {
            c.home_settle = Duration::from_secs(v);
        }
        if let Some(v) = self.feed_max_age_days {
            c.feed_max_age = Duration::from_secs(v * 86_400);
        }
        if self.stan_block.is_some() {
            c.stan_block = self.stan_block;
        }
        if let Some(v) = self.stan_blocks {
            c.stan_blocks = v;
        }
        c.check().map_err(|e| e.to_string())?;
        Ok(c)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    /// The registry file (merchants, terminals, rules); none: no registry checks.
    pub file: Option<PathBuf>,
}

/// `[batch]`: keep each terminal's open batch and answer its 0500s.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSection {
    /// On: 05xx are taken; off: they are invalid transactions (12).
    #[serde(default)]
    pub enabled: bool,
    /// A completion whose pre-authorisation the switch does not hold: `refuse` (25, the
    /// default) or `forward` (a voice-authorised forced post, flagged in its record).
    #[serde(default)]
    pub unmatched_completions: UnmatchedCompletionsSetting,
    /// How many days a pre-authorisation stands waiting for its completion.
    #[serde(default = "default_hold_days")]
    pub preauth_hold_days: u32,
}

fn default_hold_days() -> u32 {
    30
}

/// `[batch] unmatched_completions`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UnmatchedCompletionsSetting {
    /// Answer 25.
    #[default]
    Refuse,
    /// Forward, flagged.
    Forward,
}

impl BatchSection {
    /// The book's policy.
    pub fn policy(&self) -> switchyard_router::batch::BatchPolicy {
        use switchyard_router::batch::{BatchPolicy, UnmatchedCompletions};
        BatchPolicy {
            unmatched_completions: match self.unmatched_completions {
                UnmatchedCompletionsSetting::Refuse => UnmatchedCompletions::Refuse,
                UnmatchedCompletionsSetting::Forward => UnmatchedCompletions::Forward,
            },
            hold_us: i64::from(self.preauth_hold_days) * 86_400 * 1_000_000,
        }
    }
}

/// `[books]`: what the pair records keep for settlement and reconciliation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BooksSection {
    /// Where the terminals' dialect carries a partial approval's amount (response code
    /// 10): `4` (field 4 of the answer, the default) or `54` (additional amounts).
    #[serde(default)]
    pub partial_amount_field: Option<u8>,
    /// With field 54: the amount type of the approved amount (2 digits).
    #[serde(default)]
    pub partial_amount_type: Option<String>,
}

impl BooksSection {
    /// Where a partial approval's amount is, or what is wrong with the setting.
    pub fn partial_amount(&self) -> Result<switchyard_audit::PartialAmount, String> {
        use switchyard_audit::PartialAmount;
        match (
            self.partial_amount_field,
            self.partial_amount_type.as_deref(),
        ) {
            (None | Some(4), None) => Ok(PartialAmount::Field4),
            (Some(54), Some(t)) => match t.as_bytes() {
                [a, b] if a.is_ascii_digit() && b.is_ascii_digit() => {
                    Ok(PartialAmount::AdditionalAmounts {
                        amount_type: [*a, *b],
                    })
                }
                _ => Err(format!("books.partial_amount_type: {t:?} is not 2 digits")),
            },
            (Some(54), None) => {
                Err("books.partial_amount_field = 54 needs partial_amount_type".into())
            }
            (None | Some(4), Some(_)) => {
                Err("books.partial_amount_type: only with partial_amount_field = 54".into())
            }
            (Some(f), _) => Err(format!("books.partial_amount_field: {f} (4 or 54)")),
        }
    }
}

/// `[business_day]`: the daily cut-over that closes one business date and opens the next.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessDaySection {
    /// Local time of the cut-over, `HH:MM` (`00:00`: the calendar date).
    pub cutover: String,
    /// The time zone of the cut-over: `UTC`, a fixed offset `+HH:MM` / `-HH:MM`, or an IANA
    /// zone (`Europe/Berlin`: the cut-over follows the local clock through daylight saving).
    #[serde(default = "default_zone")]
    pub time_zone: String,
}

fn default_zone() -> String {
    "UTC".into()
}

/// `[security]`: the security module the switch translates PIN blocks and checks MACs
/// with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySection {
    /// `software` (keys in a local store, sealed under a master key; not PCI PIN certified).
    #[serde(default = "default_module")]
    pub module: String,
    /// The software module's key store file.
    pub key_store: Option<PathBuf>,
    /// The file holding the store's master key (64 hex digits)...
    pub master_key_file: Option<PathBuf>,
    /// ...or the environment variable holding it. Never the key itself in this file.
    pub master_key_env: Option<String>,
    /// The field a terminal's DUKPT key serial number arrives in (hex text).
    #[serde(default = "default_ksn_field")]
    pub ksn_field: u8,
    /// The response code of a security failure.
    #[serde(default = "default_security_code")]
    pub response_code: String,
    /// `module = "payshield"`: the HSM and the table of its key tokens.
    pub payshield: Option<PayShieldSection>,
}

/// `[security.payshield]`: a Thales payShield's host port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayShieldSection {
    /// `host:port`.
    pub endpoint: String,
    /// Message header characters (as the HSM is configured).
    #[serde(default = "default_header_len")]
    pub header_len: usize,
    /// Connections in the pool.
    #[serde(default = "default_hsm_connections")]
    pub connections: usize,
    /// Longest a command may take.
    #[serde(default = "default_hsm_timeout")]
    pub timeout_ms: u64,
    /// The key table: key id -> token under the HSM's LMK.
    pub key_table: PathBuf,
}

fn default_header_len() -> usize {
    4
}
fn default_hsm_connections() -> usize {
    2
}
fn default_hsm_timeout() -> u64 {
    2000
}

fn default_module() -> String {
    "software".into()
}
fn default_ksn_field() -> u8 {
    53
}
fn default_security_code() -> String {
    "63".into()
}

/// `[links.security]`: an issuer link's zone keys, by id in the security module.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSecuritySection {
    /// The zone PIN key PIN blocks are translated to.
    pub zpk: Option<String>,
    /// The PIN block format the issuer takes (0, 1, 3 or 4).
    #[serde(default)]
    pub pin_format: u8,
    /// The zone MAC key: requests are MACed, answers must carry a MAC.
    pub zak: Option<String>,
    /// `x9.19` (default), `iso9797-1` or `aes-cmac`.
    pub mac_algorithm: Option<String>,
    /// Issuer-initiated key exchange.
    pub key_exchange: Option<KeyExchangeSection>,
}

/// `[links.security.key_exchange]`: 0800s from the issuer bringing a new ZPK or ZAK.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyExchangeSection {
    /// The ZMK the keys come under.
    pub zmk: String,
    /// Field 70 of a ZPK exchange.
    #[serde(default = "default_zpk_code")]
    pub zpk_code: String,
    /// Field 70 of a ZAK exchange.
    #[serde(default = "default_zak_code")]
    pub zak_code: String,
    /// The field that carries the key (a TR-31 block, or X9.17 hex and a check value).
    #[serde(default = "default_key_field")]
    pub key_field: u8,
    /// Send the issuer a new ZPK (and ZAK) this often, seconds (none: only take theirs).
    pub interval_s: Option<u64>,
}

fn default_zpk_code() -> String {
    "161".into()
}
fn default_zak_code() -> String {
    "162".into()
}
fn default_key_field() -> u8 {
    48
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandInSection {
    pub floor_limit: u64,
    #[serde(default)]
    pub mccs: Vec<String>,
    #[serde(default)]
    pub processing_codes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegritySection {
    /// Reversals for unknown outcomes, in-flight records, duplicate detection (on by default).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The store-and-forward journal (default: `saf` beside the audit directory).
    pub saf_dir: Option<PathBuf>,
    /// Seconds a completed request is remembered for duplicate detection.
    pub duplicate_window_s: Option<u64>,
    /// Delivery attempts of a reversal before it becomes a dead letter.
    pub max_attempts: Option<u32>,
    pub backoff_min_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    /// Response codes to a reversal that mean "try again later".
    pub retryable_codes: Option<Vec<String>>,
}

impl Default for IntegritySection {
    fn default() -> Self {
        IntegritySection {
            enabled: true,
            saf_dir: None,
            duplicate_window_s: None,
            max_attempts: None,
            backoff_min_ms: None,
            backoff_max_ms: None,
            retryable_codes: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Operators' and scrapers' bearer tokens, hashed (`NAME ROLE SHA256-HEX` a line; make
    /// one with `switchyard admin-token`). None: every operator action is refused.
    pub tokens_file: Option<PathBuf>,
    /// `/metrics` without a token (true), or only with a `scrape` or `operator` token.
    #[serde(default = "default_true")]
    pub metrics_open: bool,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: default_admin_listen(),
            tokens_file: None,
            metrics_open: true,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `text` or `json` (the command line's --log-format wins).
    pub format: Option<String>,
    /// A tracing filter such as `info` or `switchyard=debug,info`.
    pub level: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSection {
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(default = "ShutdownSection::default_grace")]
    pub grace_ms: u64,
}

impl ShutdownSection {
    fn default_grace() -> u64 {
        10_000
    }
}

impl Default for ShutdownSection {
    fn default() -> Self {
        ShutdownSection {
            grace_ms: Self::default_grace(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    pub dir: PathBuf,
    /// `durable` (answer after the record is on disk) or `fire-and-forget`.
    #[serde(default)]
    pub durability: Option<String>,
    #[serde(default)]
    pub batch_window_us: Option<u64>,
    #[serde(default)]
    pub segment_mib: Option<u64>,
    #[serde(default)]
    pub chain_key_file: Option<PathBuf>,
    #[serde(default)]
    pub chain_key_env: Option<String>,
    #[serde(default)]
    pub pan_key_file: Option<PathBuf>,
    #[serde(default)]
    pub pan_key_env: Option<String>,
    /// Use the public demo keys (refused unless set explicitly; loudly labelled).
    #[serde(default)]
    pub demo_keys: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FramingSection {
    /// `binary2`, `ascii4`, `bcd2` or `binary4`.
    pub prefix: Option<String>,
    #[serde(default)]
    pub prefix_includes_itself: bool,
    /// `none`, `tpdu` or `fixed:N`.
    pub header: Option<String>,
    pub max_frame_bytes: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsSection {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub name: String,
    pub listen: String,
    #[serde(default = "default_spec")]
    pub spec: String,
    #[serde(default)]
    pub framing: FramingSection,
    pub max_connections: Option<usize>,
    pub max_connections_per_source: Option<usize>,
    pub max_in_flight_per_connection: Option<usize>,
    pub frame_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub handshake_timeout_ms: Option<u64>,
    pub tls: Option<ServerTlsSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsSection {
    pub ca: PathBuf,
    pub server_name: String,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSection {
    pub name: String,
    /// `host:port`, primary first.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Start a simulated issuer in this process and connect to it (demo and tests).
    #[serde(default)]
    pub simulated: bool,
    #[serde(default = "default_spec")]
    pub spec: String,
    #[serde(default)]
    pub framing: FramingSection,
    /// Header bytes sent before each message, hex (for `tpdu` or `fixed:N` framing).
    pub header_hex: Option<String>,
    pub connections: Option<usize>,
    pub max_in_flight: Option<usize>,
    pub timeout_ms: Option<u64>,
    /// 0 turns echo tests off.
    pub echo_interval_ms: Option<u64>,
    pub echo_timeout_ms: Option<u64>,
    pub max_missed_echoes: Option<u32>,
    #[serde(default)]
    pub sign_on: bool,
    pub match_fields: Option<Vec<u8>>,
    #[serde(default = "default_true")]
    pub remap_stan: bool,
    /// `least-outstanding` or `round-robin`.
    pub selection: Option<String>,
    pub connect_timeout_ms: Option<u64>,
    pub reconnect_min_ms: Option<u64>,
    pub reconnect_max_ms: Option<u64>,
    /// Reversals as `0400` (default) or advices `0420`.
    pub reversal_mti: Option<String>,
    pub tls: Option<ClientTlsSection>,
    /// The link's zone keys.
    pub security: Option<LinkSecuritySection>,
    /// Set field 15 (settlement date, MMDD of the business date) on its requests; needs
    /// `[business_day]`.
    #[serde(default)]
    pub settlement_date: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub name: String,
    pub bins: Vec<String>,
    #[serde(default)]
    pub mti: Vec<String>,
    #[serde(default)]
    pub processing_codes: Vec<String>,
    pub link: String,
    /// Approve small amounts while the link is down or busy (advice sent later).
    pub stand_in: Option<StandInSection>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSection {
    /// The link of requests no route takes (none: they get 15).
    pub default: Option<String>,
}

/// Everything built from a valid configuration, before anything binds.
pub struct Plan {
    pub config: Config,
    pub registry: Option<switchyard_router::Registry>,
    pub saf_dir: PathBuf,
    pub saf: switchyard_router::SafConfig,
    pub listeners: Vec<(ListenerSection, AcceptorConfig, Option<Arc<ServerTls>>)>,
    /// Links; `simulated` links get their endpoint when the simulator is started.
    pub links: Vec<(LinkSection, LinkConfig)>,
    pub routes: RouteTable,
    pub audit: AuditConfig,
    pub durable: bool,
    pub chain_key: KeySource,
    pub pan_key: KeySource,
}

/// Where a configuration came from (for messages).
pub fn origin(path: Option<&Path>) -> String {
    path.map_or_else(
        || "embedded default configuration".into(),
        |p| p.display().to_string(),
    )
}

/// Read and check a configuration; every problem at once.
pub fn load(path: Option<&Path>) -> Result<Plan, Vec<String>> {
    let text = match path {
        None => EMBEDDED_DEFAULT.to_string(),
        Some(p) => std::fs::read_to_string(p).map_err(|e| vec![format!("{}: {e}", p.display())])?,
    };
    let config: Config = toml::from_str(&text)
        .map_err(|e| vec![format!("{}: {}", origin(path), e.to_string().trim_end())])?;
    let mut config = config;
    if let Some(base) = path.and_then(Path::parent) {
        config.resolve_paths(base);
    }
    plan(config)
}

impl Config {
    /// Make the file paths of a configuration file relative to the file's directory (a
    /// config and its registry, keys and certificates can move together).
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let fix_opt = |p: &mut Option<PathBuf>| {
            if let Some(p) = p {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        };
        fix(&mut self.audit.dir);
        fix_opt(&mut self.admin.tokens_file);
        fix_opt(&mut self.audit.chain_key_file);
        fix_opt(&mut self.audit.pan_key_file);
        fix_opt(&mut self.integrity.saf_dir);
        fix_opt(&mut self.registry.file);
        if let Some(sec) = &mut self.security {
            fix_opt(&mut sec.key_store);
            fix_opt(&mut sec.master_key_file);
            if let Some(p) = &mut sec.payshield {
                fix(&mut p.key_table);
            }
        }
        for l in &mut self.listeners {
            if let Some(t) = &mut l.tls {
                fix(&mut t.cert);
                fix(&mut t.key);
                fix_opt(&mut t.client_ca);
            }
        }
        for l in &mut self.links {
            if let Some(t) = &mut l.tls {
                fix(&mut t.ca);
                fix_opt(&mut t.cert);
                fix_opt(&mut t.key);
            }
        }
    }
}

fn framing(at: &str, f: &FramingSection, problems: &mut Vec<String>) -> Framing {
    let mut framing = Framing::default();
    if let Some(p) = &f.prefix {
        match LengthPrefix::from_name(p) {
            Some(prefix) => framing.prefix = prefix,
            None => problems.push(format!(
                "{at}.framing.prefix: {p:?} is not one of binary2, ascii4, bcd2, binary4"
            )),
        }
    }
    framing.prefix_includes_itself = f.prefix_includes_itself;
    if let Some(h) = &f.header {
        framing.header = match h.as_str() {
            "none" => Header::None,
            "tpdu" => Header::Tpdu,
            other => match other
                .strip_prefix("fixed:")
                .and_then(|n| n.parse::<u8>().ok())
            {
                Some(n) if n > 0 => Header::Fixed(n),
                _ => {
                    problems.push(format!(
                        "{at}.framing.header: {h:?} is not none, tpdu or fixed:N (N 1..255)"
                    ));
                    Header::None
                }
            },
        };
    }
    if let Some(max) = f.max_frame_bytes {
        framing.max_frame_len = max;
    }
    if let Err(e) = framing.validate() {
        problems.push(format!("{at}.framing: {e}"));
    }
    framing
}

fn spec(at: &str, name: &str, problems: &mut Vec<String>) -> Option<&'static Spec> {
    match resolve_spec(name) {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(format!("{at}.spec: {e}"));
            None
        }
    }
}

fn ms(v: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default))
}

fn key_source(
    at: &str,
    file: &Option<PathBuf>,
    env: &Option<String>,
    demo: bool,
    problems: &mut Vec<String>,
) -> KeySource {
    match (file, env) {
        (Some(f), None) => KeySource::File(f.clone()),
        (None, Some(v)) => KeySource::Env(v.clone()),
        (Some(_), Some(_)) => {
            problems.push(format!(
                "{at}: give a key file or an environment variable, not both"
            ));
            KeySource::Demo
        }
        (None, None) if demo => KeySource::Demo,
        (None, None) => {
            problems.push(format!(
                "{at}: no key: set {at}_file or {at}_env (or demo_keys = true for a demo)"
            ));
            KeySource::Demo
        }
    }
}

/// The `[security]` section and each link's keys: a module that can open, formats and
/// algorithms that exist, PIN fields that hold the blocks.
fn check_security(config: &Config, problems: &mut Vec<String>) {
    let linked = config.links.iter().filter(|l| l.security.is_some());
    let Some(sec) = &config.security else {
        for l in linked {
            problems.push(format!(
                "links ({:?}).security: needs a [security] section (the module holding the keys)",
                l.name
            ));
        }
        return;
    };
    match sec.module.as_str() {
        "software" => {
            if sec.key_store.is_none() {
                problems.push("security.key_store: the software module needs its key store file".into());
            }
            match (&sec.master_key_file, &sec.master_key_env) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => problems.push(
                    "security: give master_key_file or master_key_env (one; never the key itself)".into(),
                ),
            }
        }
        "payshield" => match &sec.payshield {
            None => problems.push("security.payshield: the payshield module needs its endpoint and key_table".into()),
            Some(p) if p.connections == 0 || p.connections > 64 || p.timeout_ms == 0 || p.header_len > 9 => problems.push(
                "security.payshield: connections 1-64, timeout_ms at least 1, header_len at most 9".into(),
            ),
            Some(_) => {}
        },
        other => problems.push(format!("security.module: {other:?} is not software or payshield")),
    }
    if sec.response_code.len() != 2 {
        problems.push("security.response_code: two characters".into());
    }
    if !(2..=128).contains(&sec.ksn_field) {
        problems.push(format!(
            "security.ksn_field: {} is not a field 2-128",
            sec.ksn_field
        ));
    }
    for l in &config.links {
        let Some(ls) = &l.security else { continue };
        let at = format!("links ({:?}).security", l.name);
        match switchyard_hsm::pin::Format::from_code(ls.pin_format) {
            None => problems.push(format!(
                "{at}.pin_format: {} is not 0, 1, 3 or 4",
                ls.pin_format
            )),
            Some(format) => {
                let holds = resolve_spec(&l.spec)
                    .ok()
                    .and_then(|spec| spec.field(52).map(|f| usize::from(f.max)));
                if holds.is_some_and(|max| max < format.block_len()) {
                    problems.push(format!(
                        "{at}.pin_format: format {} blocks are {} bytes; field 52 of {} holds {}",
                        ls.pin_format,
                        format.block_len(),
                        l.spec,
                        holds.unwrap_or(0)
                    ));
                }
            }
        }
        if ls.zak.is_some() && l.remap_stan {
            problems.push(format!(
                "{at}.zak: the link's MAC covers field 11, so set remap_stan = false on this link (its match fields keep terminals apart)"
            ));
        }
        if let Some(name) = &ls.mac_algorithm {
            if switchyard_hsm::module::MacAlgorithm::from_name(name).is_none() {
                problems.push(format!(
                    "{at}.mac_algorithm: {name:?} is not x9.19, iso9797-1 or aes-cmac"
                ));
            }
        }
    }
}

fn plan(config: Config) -> Result<Plan, Vec<String>> {
    let mut problems = Vec::new();
    let mut names = HashSet::new();
    if config.listeners.is_empty() {
        problems.push("listeners: at least one [[listeners]] is needed".into());
    }
    let mut listeners = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let at = format!("listeners[{i}] ({:?})", l.name);
        if !names.insert(format!("listener:{}", l.name)) {
            problems.push(format!("{at}.name: used twice"));
        }
        if l.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!(
                "{at}.listen: {:?} is not an address:port",
                l.listen
            ));
        }
        let framing = framing(&at, &l.framing, &mut problems);
        let Some(spec) = spec(&at, &l.spec, &mut problems) else {
            continue;
        };
        let mut a = AcceptorConfig::new(&l.name, spec);
        a.framing = framing;
        a.max_connections = l.max_connections.unwrap_or(a.max_connections);
        a.max_connections_per_source = l
            .max_connections_per_source
            .unwrap_or(a.max_connections_per_source);
        a.max_in_flight_per_connection = l
            .max_in_flight_per_connection
            .unwrap_or(a.max_in_flight_per_connection);
        a.frame_timeout = ms(l.frame_timeout_ms, 5_000);
        a.idle_timeout = ms(l.idle_timeout_ms, 300_000);
        a.handshake_timeout = ms(l.handshake_timeout_ms, 10_000);
        if a.max_connections == 0
            || a.max_connections_per_source == 0
            || a.max_in_flight_per_connection == 0
        {
            problems.push(format!(
                "{at}: connection and in-flight limits must be at least 1"
            ));
        }
        let tls = match &l.tls {
            None => None,
            Some(t) => match ServerTls::load(ServerTlsFiles {
                cert_chain: t.cert.clone(),
                private_key: t.key.clone(),
                client_ca: t.client_ca.clone(),
            }) {
                Ok(tls) => Some(Arc::new(tls)),
                Err(e) => {
                    problems.push(format!("{at}.tls: {e}"));
                    None
                }
            },
        };
        listeners.push((l.clone(), a, tls));
    }
    // In a group, each instance's links hand out the STANs of its own block (a bad
    // `[cluster]` is reported below).
    let cluster = config
        .cluster
        .as_ref()
        .and_then(|c| c.config(&config.audit.dir).ok());
    let mut links = Vec::new();
    for (i, l) in config.links.iter().enumerate() {
        let at = format!("links[{i}] ({:?})", l.name);
        if !names.insert(format!("link:{}", l.name)) {
            problems.push(format!("{at}.name: used twice"));
        }
        if l.simulated != l.endpoints.is_empty() {
            problems.push(format!(
                "{at}: give endpoints, or simulated = true, not both"
            ));
        }
        let framing = framing(&at, &l.framing, &mut problems);
        let Some(spec) = spec(&at, &l.spec, &mut problems) else {
            continue;
        };
        let first = l
            .endpoints
            .first()
            .cloned()
            .unwrap_or_else(|| "127.0.0.1:0".into());
        let mut c = LinkConfig::new(&l.name, &first, spec);
        c.framing = framing;
        let tls = match &l.tls {
            None => None,
            Some(t) => {
                let client_auth = match (&t.cert, &t.key) {
                    (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                    (None, None) => None,
                    _ => {
                        problems.push(format!("{at}.tls: cert and key go together"));
                        None
                    }
                };
                match ClientTls::load(ClientTlsFiles {
                    ca: t.ca.clone(),
                    server_name: t.server_name.clone(),
                    client_auth,
                }) {
                    Ok(tls) => Some(Arc::new(tls)),
                    Err(e) => {
                        problems.push(format!("{at}.tls: {e}"));
                        None
                    }
                }
            }
        };
        c.endpoints = l
            .endpoints
            .iter()
            .map(|addr| Endpoint {
                addr: addr.clone(),
                tls: tls.clone(),
            })
            .collect();
        if c.endpoints.is_empty() {
            c.endpoints.push(Endpoint {
                addr: first,
                tls: None,
            });
        }
        if let Some(h) = &l.header_hex {
            match switchyard_iso8583::wire::from_hex(h.as_bytes()) {
                Ok(bytes) => c.header = Bytes::from(bytes),
                Err(at_char) => {
                    problems.push(format!("{at}.header_hex: not hex at character {at_char}"))
                }
            }
        }
        c.connections = l.connections.unwrap_or(c.connections);
        c.max_in_flight = l.max_in_flight.unwrap_or(c.max_in_flight);
        c.request_timeout = ms(l.timeout_ms, 10_000);
        c.echo_interval = match l.echo_interval_ms {
            Some(0) => None,
            v => Some(ms(v, 30_000)),
        };
        c.echo_timeout = ms(l.echo_timeout_ms, 5_000);
        c.max_missed_echoes = l.max_missed_echoes.unwrap_or(c.max_missed_echoes);
        c.sign_on = l.sign_on;
        if let Some(f) = &l.match_fields {
            c.match_fields = f.clone();
        }
        c.remap_stan = l.remap_stan;
        if let Some(group) = &cluster {
            c.stans = group.stans();
        }
        c.selection = match l.selection.as_deref() {
            None | Some("least-outstanding") => Selection::LeastOutstanding,
            Some("round-robin") => Selection::RoundRobin,
            Some(other) => {
                problems.push(format!(
                    "{at}.selection: {other:?} is not least-outstanding or round-robin"
                ));
                Selection::LeastOutstanding
            }
        };
        if let Some(m) = &l.reversal_mti {
            if m != "0400" && m != "0420" {
                problems.push(format!("{at}.reversal_mti: {m:?} is not 0400 or 0420"));
            }
        }
        c.connect_timeout = ms(l.connect_timeout_ms, 5_000);
        c.reconnect_min = ms(l.reconnect_min_ms, 200);
        c.reconnect_max = ms(l.reconnect_max_ms, 30_000);
        if let Err(e) = c.validate() {
            problems.push(format!("{at}: {e}"));
        }
        links.push((l.clone(), c));
    }
    let rules: Vec<RouteRule> = config
        .routes
        .iter()
        .map(|r| RouteRule {
            name: r.name.clone(),
            bins: r.bins.clone(),
            mtis: r.mti.clone(),
            processing_codes: r.processing_codes.clone(),
            link: r.link.clone(),
            stand_in: r.stand_in.as_ref().map(|s| switchyard_router::StandIn {
                floor_limit: s.floor_limit,
                mccs: s.mccs.clone(),
                processing_codes: s.processing_codes.clone(),
            }),
        })
        .collect();
    let link_names: HashSet<&str> = config.links.iter().map(|l| l.name.as_str()).collect();
    for (i, r) in config.routes.iter().enumerate() {
        if !link_names.contains(r.link.as_str()) {
            problems.push(format!(
                "routes[{i}] ({:?}).link: no link named {:?}",
                r.name, r.link
            ));
        }
    }
    if let Some(d) = &config.routing.default {
        if !link_names.contains(d.as_str()) {
            problems.push(format!("routing.default: no link named {d:?}"));
        }
    }
    let routes = match RouteTable::new(&rules, config.routing.default.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            problems.push(e.to_string());
            RouteTable::default()
        }
    };
    let a = &config.audit;
    let durable = match a.durability.as_deref() {
        None | Some("durable") => true,
        Some("fire-and-forget") => false,
        Some(other) => {
            problems.push(format!(
                "audit.durability: {other:?} is not durable or fire-and-forget"
            ));
            true
        }
    };
    let mut audit = AuditConfig::new(&a.dir);
    if let Some(w) = a.batch_window_us {
        audit.batch_window = Duration::from_micros(w);
    }
    if let Some(mib) = a.segment_mib {
        audit.segment_bytes = mib << 20;
    }
    let before_keys = problems.len();
    let chain_key = key_source(
        "audit.chain_key",
        &a.chain_key_file,
        &a.chain_key_env,
        a.demo_keys,
        &mut problems,
    );
    let pan_key = key_source(
        "audit.pan_key",
        &a.pan_key_file,
        &a.pan_key_env,
        a.demo_keys,
        &mut problems,
    );
    if problems.len() == before_keys {
        // Each key on its own first, so that every missing one is reported at once.
        let chain = switchyard_audit::ChainKey::load(&chain_key).map_err(|e| format!("audit: {e}"));
        let pan = switchyard_audit::PanKey::load(&pan_key).map_err(|e| format!("audit: {e}"));
        match (chain, pan) {
            (Ok(_), Ok(_)) => {
                if let Err(e) = switchyard_audit::AuditKeys::load(&chain_key, &pan_key) {
                    problems.push(format!("audit: {e}"));
                }
            }
            (chain, pan) => problems.extend(chain.err().into_iter().chain(pan.err())),
        }
    }
    if config.admin.listen.parse::<std::net::SocketAddr>().is_err() {
        problems.push(format!(
            "admin.listen: {:?} is not an address:port",
            config.admin.listen
        ));
    }
    if let Some(f) = &config.log.format {
        if f != "text" && f != "json" {
            problems.push(format!("log.format: {f:?} is not text or json"));
        }
    }
    let i = &config.integrity;
    let saf_dir = i.saf_dir.clone().unwrap_or_else(|| {
        a.dir
            .parent()
            .map_or_else(|| PathBuf::from("saf"), |p| p.join("saf"))
    });
    if saf_dir == a.dir {
        problems.push("integrity.saf_dir: must differ from audit.dir".into());
    }
    let mut saf = switchyard_router::SafConfig::default();
    saf.max_attempts = i.max_attempts.unwrap_or(saf.max_attempts);
    saf.backoff_min = i
        .backoff_min_ms
        .map_or(saf.backoff_min, Duration::from_millis);
    saf.backoff_max = i
        .backoff_max_ms
        .map_or(saf.backoff_max, Duration::from_millis);
    if let Some(codes) = &i.retryable_codes {
        saf.retryable_codes = codes.clone();
    }
    if saf.max_attempts == 0 || saf.backoff_min.is_zero() || saf.backoff_min > saf.backoff_max {
        problems.push(
            "integrity: max_attempts at least 1, 0 < backoff_min_ms <= backoff_max_ms".into(),
        );
    }
    let registry = match &config.registry.file {
        None => None,
        Some(path) => match switchyard_router::Registry::load(path) {
            Ok(r) => Some(r),
            Err(switchyard_router::RouterError::Registry(list)) => {
                problems.extend(list.into_iter().map(|p| format!("registry.file: {p}")));
                None
            }
            Err(e) => {
                problems.push(format!("registry.file: {e}"));
                None
            }
        },
    };
    check_security(&config, &mut problems);
    if let Err(e) = config.books.partial_amount() {
        problems.push(e);
    }
    if let Some(c) = &config.cluster {
        if let Err(e) = c.config(&config.audit.dir) {
            problems.push(e);
        }
        if c.shared_state && !config.integrity.enabled {
            problems.push("cluster.shared_state: needs [integrity] (the duplicate window and reversal index it shares)".into());
        }
    }
    if config.business_day.is_none() {
        for l in config.links.iter().filter(|l| l.settlement_date) {
            problems.push(format!(
                "links ({:?}).settlement_date: needs a [business_day] section",
                l.name
            ));
        }
    }
    if let Some(b) = &config.business_day {
        if let Err(e) =
            switchyard_router::business_day::CutoverSchedule::parse(&b.cutover, &b.time_zone)
        {
            problems.push(format!("business_day: {e}"));
        }
    }
    if let Some(file) = &config.admin.tokens_file {
        if let Err(e) =
            crate::admin_auth::AdminAuth::load(Some(file), true, &prometheus::Registry::new())
        {
            problems.push(format!("admin.tokens_file: {e:#}"));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Plan {
        registry,
        saf_dir,
        saf,
        config,
        listeners,
        links,
        routes,
        audit,
        durable,
        chain_key,
        pan_key,
    })
}
