//! Several Switchyard instances as one switch, on NATS JetStream.
//!
//! This crate holds the group's connection and the **audit stream**: every record an
//! instance writes to its local audit log is also published to a JetStream stream, on the
//! subject `<subject>.<instance id>`, in batches: a message holds the stored bytes of the
//! records `first..=last` one after another, its message id `<instance id>-<first>-<last>`
//! (the stream's duplicate window drops a repeat), so that each instance's chain can be
//! verified from the stream as it is from the files. The broker's cost is per message:
//! one a batch instead of one a record.
//!
//! The local log stays the source of truth and the switch never waits on the broker: a
//! [`AuditShipper`] task follows the log ([`switchyard_audit::Tail`]), ships only records
//! already durable, keeps a bounded number of publishes waiting for their acknowledgement,
//! and records the last acknowledged sequence number in a cursor file. While the broker is
//! unreachable the backlog is the local log itself. At every (re)connection it resumes
//! after the later of the cursor and the last record of this instance the stream holds, so
//! nothing is skipped and nothing is published twice past the duplicate window.

#![forbid(unsafe_code)]

pub mod feed;
pub mod follower;
mod homes;
pub mod instances;
pub mod shared;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use switchyard_audit::{AuditLog, Tail};

/// What can go wrong in the group's plumbing.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The configuration is not usable.
    #[error("cluster config: {0}")]
    Config(String),
    /// The broker could not be reached or refused.
    #[error("NATS {what}: {reason}")]
    Broker {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The local audit log could not be read.
    #[error("audit log: {0}")]
    Audit(#[from] switchyard_audit::AuditError),
    /// The cursor file could not be read or written.
    #[error("cursor {path}: {reason}")]
    Cursor {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The sequence number of the last record in a message of the audit stream (a batch of
/// frames; an error names the first that does not read).
fn last_seq_of(message: &[u8]) -> Result<u64, String> {
    let mut last = None;
    for frame in switchyard_audit::split_frames(message) {
        let frame = frame.map_err(|(offset, reason)| format!("at byte {offset}: {reason}"))?;
        last = Some(switchyard_audit::read_frame(frame)?.seq);
    }
    last.ok_or_else(|| "an empty message".to_string())
}

fn broker(what: &'static str) -> impl Fn(String) -> ClusterError {
    move |reason| ClusterError::Broker { what, reason }
}

/// How an instance joins the group.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:4222`, `tls://...`).
    pub servers: Vec<String>,
    /// This instance's id: unique in the group, `[A-Za-z0-9_-]`, at most 64 characters.
    pub instance: String,
    /// A NATS credentials file (JWT and NKey seed), if the servers ask for one.
    pub credentials_file: Option<PathBuf>,
    /// Or a user name and password.
    pub user: Option<(String, Password)>,
    /// A CA certificate (PEM) to trust for TLS to the servers (TLS is then required).
    pub tls_ca_file: Option<PathBuf>,
    /// The audit stream's name.
    pub audit_stream: String,
    /// The audit subjects' prefix (each instance publishes on `<prefix>.<instance>`).
    pub audit_subject: String,
    /// The stream's duplicate window (created with it; an existing stream keeps its own).
    pub duplicate_window: Duration,
    /// Copies of the stream in a JetStream cluster (created with it).
    pub replicas: usize,
    /// Connecting.
    pub connect_timeout: Duration,
    /// A publish's acknowledgement.
    pub ack_timeout: Duration,
    /// Publishes waiting for their acknowledgement at most.
    pub max_pending: usize,
    /// The file recording the last acknowledged sequence number.
    pub cursor_file: PathBuf,
    /// Publish the merchant feed (each pair, masked, on `<feed_subject>.<merchant>`).
    pub feed: bool,
    /// The feed's stream.
    pub feed_stream: String,
    /// The feed subjects' prefix.
    pub feed_subject: String,
    /// How long the feed stream keeps a report.
    pub feed_max_age: Duration,
    /// How long a terminal must have been at home here before its requests are claimed
    /// behind (the requests it had outstanding when it moved are retransmitted within it).
    pub home_settle: Duration,
    /// This instance's block of the issuer STAN space (`None`: its id ends in no number
    /// and none was set; refused by [`ClusterConfig::check`]).
    pub stan_block: Option<u32>,
    /// The blocks the STAN space is split into: the group's most instances.
    pub stan_blocks: u32,
}

/// The issuer STANs a link may hand out (field 11, n6; 0 is never used).
pub const STANS: std::ops::RangeInclusive<u32> = 1..=999_999;

/// The number an instance id ends in (a StatefulSet pod's ordinal: `switchyard-2` → 2).
fn ordinal(instance: &str) -> Option<u32> {
    let digits = instance.len()
        - instance
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .len();
    instance[instance.len() - digits..].parse().ok()
}

impl ClusterConfig {
    /// Defaults for the rest, with these servers, instance id and cursor file.
    pub fn new(servers: Vec<String>, instance: &str, cursor_file: PathBuf) -> ClusterConfig {
        ClusterConfig {
            servers,
            instance: instance.to_string(),
            credentials_file: None,
            user: None,
            tls_ca_file: None,
            audit_stream: "SWITCHYARD_AUDIT".into(),
            audit_subject: "switchyard.audit".into(),
            duplicate_window: Duration::from_secs(600),
            replicas: 1,
            connect_timeout: Duration::from_secs(2),
            ack_timeout: Duration::from_secs(5),
            max_pending: 256,
            cursor_file,
            feed: true,
            feed_stream: "SWITCHYARD_TX".into(),
            feed_subject: "switchyard.tx".into(),
            feed_max_age: Duration::from_secs(7 * 86_400),
            home_settle: Duration::from_secs(60),
            stan_block: ordinal(instance),
            stan_blocks: 10,
        }
    }

    /// The issuer STANs this instance's links hand out: its own block, so that no two
    /// instances give an issuer the same STAN for a terminal's requests at once (each
    /// link remaps on its own, and a retransmission or a reversal on another instance
    /// must never be matched with another instance's request).
    pub fn stans(&self) -> std::ops::RangeInclusive<u32> {
        let size = (STANS.end() - STANS.start() + 1) / self.stan_blocks.max(1);
        let block = self.stan_block.unwrap_or(0);
        let first = STANS.start() + block * size;
        first..=first + size - 1
    }

    /// What is wrong with it, if anything.
    pub fn check(&self) -> Result<(), ClusterError> {
        let id_ok = !self.instance.is_empty()
            && self.instance.len() <= 64
            && self
                .instance
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(ClusterError::Config(format!(
                "instance {:?}: 1 to 64 of A-Z a-z 0-9 - _",
                self.instance
            )));
        }
        if self.servers.is_empty() {
            return Err(ClusterError::Config("servers: at least one".into()));
        }
        let subject_ok = |s: &str| {
            !s.is_empty()
                && s.split('.')
                    .all(|t| !t.is_empty() && !t.contains(['*', '>', ' ']))
        };
        for (name, subject) in [
            ("audit_subject", &self.audit_subject),
            ("feed_subject", &self.feed_subject),
        ] {
            if !subject_ok(subject) {
                return Err(ClusterError::Config(format!(
                    "{name} {subject:?}: dot-separated tokens, no wildcards"
                )));
            }
        }
        if self.feed
            && self
                .feed_subject
                .starts_with(&format!("{}.", self.audit_subject))
        {
            return Err(ClusterError::Config(
                "feed_subject: not under audit_subject (the audit stream would take it)".into(),
            ));
        }
        if self.max_pending == 0 {
            return Err(ClusterError::Config("max_pending: at least 1".into()));
        }
        if !(1..=100).contains(&self.stan_blocks) {
            return Err(ClusterError::Config(format!(
                "stan_blocks {}: 1 to 100 (each block 999,999 / stan_blocks STANs)",
                self.stan_blocks
            )));
        }
        match self.stan_block {
            None => {
                return Err(ClusterError::Config(format!(
                    "stan_block: instance {:?} ends in no number, so set its block of the issuer STANs (0 to {}), unique in the group",
                    self.instance,
                    self.stan_blocks - 1
                )))
            }
            Some(b) if b >= self.stan_blocks => {
                return Err(ClusterError::Config(format!(
                    "stan_block {b}: 0 to {} (stan_blocks {}); set stan_blocks to the group's most instances",
                    self.stan_blocks - 1,
                    self.stan_blocks
                )))
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// The subject this instance's audit records go to.
    pub fn instance_subject(&self) -> String {
        format!("{}.{}", self.audit_subject, self.instance)
    }

    /// The subject this instance's in-flight records went to before records were shipped
    /// in batches (one token below [`ClusterConfig::instance_subject`]): a stream written
    /// then still holds them there.
    pub fn in_flight_subject(&self) -> String {
        format!("{}.{}.{IN_FLIGHT_TOKEN}", self.audit_subject, self.instance)
    }

    /// The instance an audit subject is of (the subject itself when it is not one).
    pub fn instance_of<'s>(&self, subject: &'s str) -> &'s str {
        let rest = subject
            .strip_prefix(self.audit_subject.as_str())
            .and_then(|r| r.strip_prefix('.'))
            .unwrap_or(subject);
        rest.strip_suffix(IN_FLIGHT_TOKEN)
            .and_then(|r| r.strip_suffix('.'))
            .unwrap_or(rest)
    }
}

/// A password, never shown.
#[derive(Clone)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// Connect to the group's servers.
pub async fn connect(config: &ClusterConfig) -> Result<async_nats::Client, ClusterError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("switchyard-{}", config.instance))
        .connection_timeout(config.connect_timeout);
    if let Some(path) = &config.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| ClusterError::Config(format!("{}: {e}", path.display())))?;
    }
    if let Some((user, password)) = &config.user {
        options = options.user_and_password(user.clone(), password.0.clone());
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    options
        .connect(config.servers.as_slice())
        .await
        .map_err(|e| broker("connect")(e.to_string()))
}

/// The audit stream (created when missing), through a JetStream context.
pub async fn audit_stream(
    js: &jetstream::Context,
    config: &ClusterConfig,
) -> Result<stream::Stream, ClusterError> {
    js.get_or_create_stream(stream::Config {
        name: config.audit_stream.clone(),
        subjects: vec![format!("{}.>", config.audit_subject)],
        storage: stream::StorageType::File,
        duplicate_window: config.duplicate_window,
        num_replicas: config.replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| broker("audit stream")(e.to_string()))
}

/// The merchant feed's stream (created when missing).
pub async fn feed_stream(
    js: &jetstream::Context,
    config: &ClusterConfig,
) -> Result<stream::Stream, ClusterError> {
    js.get_or_create_stream(stream::Config {
        name: config.feed_stream.clone(),
        subjects: vec![format!("{}.>", config.feed_subject)],
        storage: stream::StorageType::File,
        duplicate_window: config.duplicate_window,
        max_age: config.feed_max_age,
        num_replicas: config.replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| broker("feed stream")(e.to_string()))
}

/// The audit stream's metrics.
#[derive(Debug, Clone)]
pub struct ShipperMetrics {
    acked: IntGauge,
    lag_records: IntGauge,
    lag_seconds: IntGauge,
    connected: IntGauge,
    published: IntCounter,
    feed: IntCounter,
    duplicates: IntCounter,
    errors: IntCounterVec,
}

impl ShipperMetrics {
    /// Registered in `registry`.
    pub fn new(registry: &Registry) -> Result<ShipperMetrics, prometheus::Error> {
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let errors = IntCounterVec::new(
            Opts::new(
                "switchyard_audit_stream_errors_total",
                "Audit stream failures by what failed (connect, stream, publish, ack, read, cursor)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(errors.clone()))?;
        // Every reason's series from zero, so that a rate over them sees the first failure.
        for reason in ["connect", "stream", "publish", "ack", "read", "cursor"] {
            errors.with_label_values(&[reason]);
        }
        Ok(ShipperMetrics {
            acked: gauge(
                "switchyard_audit_stream_acked_seq",
                "The last audit record the stream acknowledged",
            )?,
            lag_records: gauge(
                "switchyard_audit_stream_lag_records",
                "Durable audit records not yet acknowledged by the stream",
            )?,
            lag_seconds: gauge(
                "switchyard_audit_stream_lag_seconds",
                "Seconds since the stream last held every durable audit record (0: caught up)",
            )?,
            connected: gauge(
                "switchyard_audit_stream_connected",
                "1 while the audit shipper is connected to the broker",
            )?,
            published: counter(
                "switchyard_audit_stream_published_total",
                "Audit records the stream acknowledged",
            )?,
            feed: counter(
                "switchyard_merchant_feed_published_total",
                "Merchant feed reports the feed stream acknowledged",
            )?,
            duplicates: counter(
                "switchyard_audit_stream_duplicates_total",
                "Audit records the stream acknowledged as repeats (dropped by its duplicate window)",
            )?,
            errors,
        })
    }

    fn error(&self, reason: &str) {
        self.errors.with_label_values(&[reason]).inc();
    }
}

/// The last acknowledged sequence number kept in a file (0: none).
#[derive(Debug)]
pub struct Cursor {
    path: PathBuf,
}

impl Cursor {
    /// The cursor at `path`.
    pub fn new(path: &Path) -> Cursor {
        Cursor {
            path: path.to_path_buf(),
        }
    }

    /// The sequence number recorded (0 when there is no file yet).
    pub fn load(&self) -> Result<u64, ClusterError> {
        let failed = |reason: String| ClusterError::Cursor {
            path: self.path.clone(),
            reason,
        };
        match std::fs::read_to_string(&self.path) {
            Ok(text) => text
                .trim()
                .parse()
                .map_err(|_| failed(format!("{:?} is not a sequence number", text.trim()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(failed(e.to_string())),
        }
    }

    /// Record `seq`: a temporary file synced and renamed over the old one.
    pub fn store(&self, seq: u64) -> Result<(), ClusterError> {
        let failed = |e: std::io::Error| ClusterError::Cursor {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let tmp = self.path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(failed)?;
            f.write_all(format!("{seq}\n").as_bytes()).map_err(failed)?;
            f.sync_all().map_err(failed)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(failed)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(failed)?;
        }
        Ok(())
    }
}

/// The last token of the subject in-flight records went to on their own, one message each,
/// before records were shipped in batches; read at resume and by the stream's readers.
const IN_FLIGHT_TOKEN: &str = "in-flight";

/// How often the shipper looks for new records when it has caught up.
const IDLE_POLL: Duration = Duration::from_millis(20);
/// Records read from the log at a time.
const READ_BATCH: usize = 512;
/// A message of the audit stream holds records up to about this many bytes (NATS's
/// default maximum payload is 1 MiB; a record is at most the audit log's maximum).
const BATCH_BYTES: usize = 128 * 1024;
/// The cursor is written at most this often (and when caught up).
const CURSOR_EVERY: Duration = Duration::from_millis(200);

/// Ships the local audit log to the audit stream.
#[derive(Debug)]
pub struct AuditShipper {
    config: ClusterConfig,
    log: Arc<AuditLog>,
    metrics: ShipperMetrics,
    cursor: Cursor,
}

/// Where a shipping session stands.
struct Progress {
    /// The last acknowledged record.
    acked: u64,
    /// The last acknowledged record the cursor file holds.
    stored: u64,
    stored_at: Instant,
    /// Since when the stream has lagged the log (none: caught up).
    behind_since: Option<Instant>,
}

impl AuditShipper {
    /// A shipper of `log` (its cursor file must be readable).
    pub fn new(
        config: ClusterConfig,
        log: Arc<AuditLog>,
        metrics: ShipperMetrics,
    ) -> Result<AuditShipper, ClusterError> {
        config.check()?;
        let cursor = Cursor::new(&config.cursor_file);
        cursor.load()?;
        Ok(AuditShipper {
            config,
            log,
            metrics,
            cursor,
        })
    }

    /// Ship until `stop` says so (then what is acknowledged is recorded and it returns);
    /// every failure is counted, logged and retried with a capped backoff.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        let mut progress = Progress {
            acked: self.cursor.load().unwrap_or(0),
            stored: 0,
            stored_at: Instant::now(),
            behind_since: None,
        };
        progress.stored = progress.acked;
        loop {
            let mut session_stop = stop.clone();
            let session = self.session(&mut progress, &mut session_stop);
            let ended = tokio::select! {
                r = session => r,
                _ = stop.changed() => Ok(()),
            };
            self.metrics.connected.set(0);
            self.store_cursor(&mut progress, true);
            if *stop.borrow() {
                return;
            }
            if let Err(e) = ended {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "audit stream: shipping paused");
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            self.update_lag(&mut progress);
        }
    }

    /// One connection's worth of shipping: connect, find where the stream stands, then
    /// follow the log. Returns on the first failure.
    async fn session(
        &self,
        progress: &mut Progress,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), ClusterError> {
        let client = connect(&self.config).await.inspect_err(|_| {
            self.metrics.error("connect");
        })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(self.config.ack_timeout)
            .ack_timeout(self.config.ack_timeout)
            // A read of `room` records is up to `room` feed reports and `room` batches,
            // all held until acknowledged: the client's own bound must not be met first, or a
            // publish waits for a permit only an acknowledgement behind it would free.
            .max_ack_inflight(self.config.max_pending * 2 + 2)
            .backpressure_on_inflight(true)
            .build(client);
        let stream = audit_stream(&js, &self.config)
            .await
            .inspect_err(|_| self.metrics.error("stream"))?;
        if self.config.feed {
            feed_stream(&js, &self.config)
                .await
                .inspect_err(|_| self.metrics.error("stream"))?;
        }
        let subject = self.config.instance_subject();
        let in_flight_subject = self.config.in_flight_subject();
        let mut in_stream = 0;
        for subject in [&subject, &in_flight_subject] {
            let last = match stream.get_last_raw_message_by_subject(subject).await {
                Ok(m) => last_seq_of(&m.payload).map_err(broker("last audit record"))?,
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => 0,
                Err(e) => {
                    self.metrics.error("stream");
                    return Err(broker("last audit record")(e.to_string()));
                }
            };
            in_stream = in_stream.max(last);
        }
        if in_stream > progress.acked {
            tracing::info!(
                in_stream,
                cursor = progress.acked,
                "audit stream holds more than the cursor: resuming after the stream"
            );
        }
        progress.acked = progress.acked.max(in_stream);
        self.metrics.connected.set(1);
        tracing::info!(resume_after = progress.acked, %subject, "audit stream: shipping");
        let mut tail = Tail::new(self.log.dir());
        // (last sequence, audit records in the publish (0: a feed report), its
        // acknowledgement): records count as shipped when their batch is acknowledged,
        // after their feed reports' (queued before it).
        let mut pending: VecDeque<(u64, u64, PublishAckFuture)> = VecDeque::new();
        let mut next = progress.acked + 1;
        loop {
            let durable = self
                .log
                .stats()
                .last_seq
                .load(std::sync::atomic::Ordering::Acquire);
            let mut frames = Vec::new();
            let room = self.config.max_pending.saturating_sub(pending.len()).max(1);
            tail.read(next, durable, room.min(READ_BATCH), |seq, frame| {
                frames.push((seq, bytes::Bytes::copy_from_slice(frame)))
            })
            .inspect_err(|_| self.metrics.error("read"))?;
            // One message per batch of records read (all an idle poll's worth, up to
            // BATCH_BYTES): the broker's cost is per message, not per byte.
            let mut batch: Vec<u8> = Vec::new();
            let mut first = next;
            for (seq, frame) in frames {
                if let Some((token, report)) = self.feed_report(seq, &frame) {
                    let message = jetstream::message::PublishMessage::build()
                        .message_id(format!("{}-{seq}", self.config.instance))
                        .payload(report.into());
                    let feed_subject = format!("{}.{token}", self.config.feed_subject);
                    let ack = js.send_publish(feed_subject, message).await.map_err(|e| {
                        self.metrics.error("publish");
                        broker("publish")(e.to_string())
                    })?;
                    pending.push_back((seq, 0, ack));
                }
                batch.extend_from_slice(&frame);
                next = seq + 1;
                if batch.len() >= BATCH_BYTES {
                    let ack = self
                        .publish_batch(&js, &subject, first, seq, &mut batch)
                        .await?;
                    pending.push_back((seq, next - first, ack));
                    first = next;
                }
            }
            if !batch.is_empty() {
                let last = next - 1;
                let ack = self
                    .publish_batch(&js, &subject, first, last, &mut batch)
                    .await?;
                pending.push_back((last, next - first, ack));
            }
            // Wait for the oldest acknowledgement when the window is full or nothing is new.
            let caught_up = next > durable;
            while !pending.is_empty() && (pending.len() >= self.config.max_pending || caught_up) {
                let Some((seq, records, ack)) = pending.pop_front() else {
                    break;
                };
                let ack = ack.await.map_err(|e| {
                    self.metrics.error("ack");
                    broker("acknowledgement")(e.to_string())
                })?;
                if records == 0 {
                    self.metrics.feed.inc();
                    continue;
                }
                if ack.duplicate {
                    self.metrics.duplicates.inc_by(records);
                }
                self.metrics.published.inc_by(records);
                progress.acked = seq;
                self.metrics
                    .acked
                    .set(i64::try_from(seq).unwrap_or(i64::MAX));
            }
            self.update_lag(progress);
            self.store_cursor(progress, caught_up && pending.is_empty());
            if caught_up && pending.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = stop.changed() => return Ok(()),
                }
            }
        }
    }

    /// Publishes the frames of records `first..=last` (taken from `batch`) as one message,
    /// its id `<instance>-<first>-<last>`.
    async fn publish_batch(
        &self,
        js: &jetstream::Context,
        subject: &str,
        first: u64,
        last: u64,
        batch: &mut Vec<u8>,
    ) -> Result<PublishAckFuture, ClusterError> {
        let message = jetstream::message::PublishMessage::build()
            .message_id(format!("{}-{first}-{last}", self.config.instance))
            .payload(std::mem::take(batch).into());
        js.send_publish(subject.to_string(), message)
            .await
            .map_err(|e| {
                self.metrics.error("publish");
                broker("publish")(e.to_string())
            })
    }

    /// The merchant feed's report of a pair record (none for other records, or without a
    /// merchant, or with the feed off).
    fn feed_report(&self, seq: u64, frame: &[u8]) -> Option<(String, Vec<u8>)> {
        use switchyard_audit::{PairRecord, RecordKind};
        if !self.config.feed {
            return None;
        }
        let r = switchyard_audit::read_frame(frame).ok()?;
        if RecordKind::from_code(r.kind) != Some(RecordKind::Pair) {
            return None;
        }
        match switchyard_audit::payload::decode::<PairRecord>(seq, r.payload) {
            Ok(pair) => feed::report(&self.config.instance, seq, &pair),
            Err(e) => {
                self.metrics.error("read");
                tracing::warn!(seq, error = %e, "pair record not readable for the merchant feed");
                None
            }
        }
    }

    fn update_lag(&self, progress: &mut Progress) {
        let durable = self
            .log
            .stats()
            .last_seq
            .load(std::sync::atomic::Ordering::Acquire);
        let lag = durable.saturating_sub(progress.acked);
        self.metrics
            .lag_records
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
        progress.behind_since = match (lag, progress.behind_since) {
            (0, _) => None,
            (_, Some(since)) => Some(since),
            (_, None) => Some(Instant::now()),
        };
        let seconds = progress.behind_since.map_or(0, |s| s.elapsed().as_secs());
        self.metrics
            .lag_seconds
            .set(i64::try_from(seconds).unwrap_or(i64::MAX));
    }

    fn store_cursor(&self, progress: &mut Progress, now: bool) {
        let due = now || progress.stored_at.elapsed() >= CURSOR_EVERY;
        if progress.acked == progress.stored || !due {
            return;
        }
        match self.cursor.store(progress.acked) {
            Ok(()) => {
                progress.stored = progress.acked;
                progress.stored_at = Instant::now();
            }
            Err(e) => {
                self.metrics.error("cursor");
                tracing::error!(error = %e, "audit stream cursor not recorded");
            }
        }
    }
}

/// Every audit record the stream holds, in the stream's order: `each(instance, record's
/// stored bytes)`; how many. Reads what the stream held when the read began, through an
/// ephemeral consumer that acknowledges nothing (the stream is not changed).
pub async fn read_audit_stream(
    config: &ClusterConfig,
    mut each: impl FnMut(&str, &[u8]),
) -> Result<u64, ClusterError> {
    use futures_util::StreamExt;
    use jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    let client = connect(config).await?;
    let js = jetstream::ContextBuilder::new()
        .timeout(config.ack_timeout)
        .build(client);
    let mut stream = js
        .get_stream(&config.audit_stream)
        .await
        .map_err(|e| broker("audit stream")(e.to_string()))?;
    let last = stream
        .info()
        .await
        .map_err(|e| broker("audit stream")(e.to_string()))?
        .state
        .last_sequence;
    if last == 0 {
        return Ok(0);
    }
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(|e| broker("consumer")(e.to_string()))?;
    let mut read = 0;
    let mut at = 0;
    while at < last {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(|e| broker("fetch")(e.to_string()))?;
        let before = at;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| broker("fetch")(e.to_string()))?;
            let info = message
                .info()
                .map_err(|e| broker("message")(e.to_string()))?;
            at = info.stream_sequence;
            let instance = config.instance_of(message.subject.as_str());
            // Each frame of the batch on its own; one that does not read is handed on as
            // the rest of the message, for the reader to report (and fail on).
            for frame in switchyard_audit::split_frames(&message.payload) {
                match frame {
                    Ok(frame) => each(instance, frame),
                    Err((at_byte, _)) => {
                        each(instance, message.payload.get(at_byte..).unwrap_or_default())
                    }
                }
                read += 1;
            }
        }
        if at == before {
            // Nothing more came: the rest was removed from the stream meanwhile.
            break;
        }
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_and_subjects_are_checked() {
        let ok = ClusterConfig::new(vec!["nats://127.0.0.1:4222".into()], "sw-0", "c".into());
        assert!(ok.check().is_ok());
        assert_eq!(ok.instance_subject(), "switchyard.audit.sw-0");
        assert_eq!(ok.in_flight_subject(), "switchyard.audit.sw-0.in-flight");
        for (subject, instance) in [
            ("switchyard.audit.sw-0", "sw-0"),
            ("switchyard.audit.sw-1.in-flight", "sw-1"),
            ("switchyard.audit.in-flight", "in-flight"),
            ("switchyard.audit.in-flight.in-flight", "in-flight"),
        ] {
            assert_eq!(ok.instance_of(subject), instance, "{subject}");
        }
        for bad in ["", "a.b", "a b", "a*", &"x".repeat(65)] {
            let c = ClusterConfig {
                instance: bad.to_string(),
                ..ok.clone()
            };
            assert!(c.check().is_err(), "{bad:?}");
        }
        let wild = ClusterConfig {
            audit_subject: "switchyard.>".into(),
            ..ok.clone()
        };
        assert!(wild.check().is_err());
        let none = ClusterConfig {
            servers: vec![],
            ..ok
        };
        assert!(none.check().is_err());
    }

    #[test]
    fn each_instance_has_its_own_block_of_issuer_stans() {
        let config = |id: &str| ClusterConfig::new(vec!["nats://h:4222".into()], id, "c".into());
        assert_eq!(config("switchyard-0").stans(), 1..=99_999);
        assert_eq!(config("switchyard-9").stans(), 899_992..=999_990);
        assert_eq!(config("sw-12").stan_block, Some(12));
        assert!(config("sw-12").check().is_err(), "block 12 of 10");
        let unnumbered = config("edge");
        assert_eq!(unnumbered.stan_block, None);
        let said = unnumbered.check().unwrap_err().to_string();
        assert!(said.contains("stan_block"), "{said}");
        let set = ClusterConfig {
            stan_block: Some(2),
            stan_blocks: 4,
            ..unnumbered
        };
        assert!(set.check().is_ok());
        assert_eq!(set.stans(), 499_999..=749_997);
        let three = |b| {
            ClusterConfig {
                stan_block: Some(b),
                stan_blocks: 3,
                ..config("x")
            }
            .stans()
        };
        let blocks: Vec<_> = (0..3).map(three).collect();
        assert_eq!(blocks, [1..=333_333, 333_334..=666_666, 666_667..=999_999]);
        let zero = ClusterConfig {
            stan_blocks: 0,
            ..config("sw-0")
        };
        assert!(zero.check().is_err());
    }

    #[test]
    fn the_cursor_round_trips_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cursor = Cursor::new(&dir.path().join("audit.stream-cursor"));
        assert_eq!(cursor.load().ok(), Some(0), "no file: nothing shipped");
        cursor.store(4242).expect("stored");
        assert_eq!(cursor.load().ok(), Some(4242));
        std::fs::write(dir.path().join("audit.stream-cursor"), "12x\n").expect("write");
        assert!(cursor.load().is_err());
    }
}
