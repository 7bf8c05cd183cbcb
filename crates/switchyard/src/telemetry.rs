//! Metrics and logs.
//!
//! The router registers its own metrics; the connection layer and the audit writer keep
//! plain atomic counters (they know nothing of Prometheus), which are copied into
//! Prometheus counters and gauges at each scrape. Every name starts with `switchyard_`,
//! counters end in `_total`, durations are in seconds, and labels are bounded (listener,
//! link, event names from the configuration or fixed lists).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use switchyard_audit::{AuditLog, BatchObserver};
use switchyard_mux::{AcceptorStats, IssuerLink};
use switchyard_router::metrics::LATENCY_BUCKETS;

fn sync(counter: &IntCounter, current: u64) {
    let have = counter.get();
    if current > have {
        counter.inc_by(current - have);
    }
}

/// Everything the admin endpoint exports.
pub struct Telemetry {
    pub registry: Registry,
    link_ready: IntGaugeVec,
    link_up: IntGaugeVec,
    link_in_flight: IntGaugeVec,
    link_events: IntCounterVec,
    link_reconnects: IntCounterVec,
    listener_open: IntGaugeVec,
    listener_events: IntCounterVec,
    tls_failures: IntCounterVec,
    audit_records: IntCounter,
    audit_bytes: IntCounter,
    audit_direct_writes: IntCounter,
    audit_write_failures: IntCounter,
    audit_failed: IntGauge,
    audit_batch: Histogram,
    audit_sync: Histogram,
    cert_expiry: IntGaugeVec,
    saf_backlog: IntGauge,
    saf_dead: IntGauge,
    saf_delivered: IntCounter,
    saf_attempts: IntCounter,
    pub ready: IntGauge,
    pub reloads: IntCounterVec,
}

/// What the scrape reads from.
pub struct Sources {
    pub listeners: Vec<(String, Arc<AcceptorStats>)>,
    pub links: Vec<(String, Arc<IssuerLink>, usize)>,
    pub audit: Arc<AuditLog>,
    pub saf: Option<Arc<switchyard_router::SafQueue>>,
    pub certificates: Vec<(String, Arc<switchyard_mux::ServerTls>)>,
}

impl Telemetry {
    pub fn new() -> prometheus::Result<Telemetry> {
        let registry = Registry::new();
        let t = Telemetry {
            link_ready: IntGaugeVec::new(
                Opts::new(
                    "switchyard_link_ready_connections",
                    "Issuer link connections ready to carry requests.",
                ),
                &["link"],
            )?,
            link_up: IntGaugeVec::new(
                Opts::new(
                    "switchyard_link_up",
                    "1 when the issuer link has at least one ready connection.",
                ),
                &["link"],
            )?,
            link_in_flight: IntGaugeVec::new(
                Opts::new(
                    "switchyard_link_in_flight",
                    "Requests waiting for the issuer on this link.",
                ),
                &["link"],
            )?,
            link_events: IntCounterVec::new(
                Opts::new(
                    "switchyard_link_events_total",
                    "Issuer link events: timeouts, late responses, connection failures...",
                ),
                &["link", "event"],
            )?,
            link_reconnects: IntCounterVec::new(
                Opts::new(
                    "switchyard_link_reconnects_total",
                    "Connections opened to replace lost ones.",
                ),
                &["link"],
            )?,
            listener_open: IntGaugeVec::new(
                Opts::new(
                    "switchyard_listener_connections",
                    "Terminal connections open.",
                ),
                &["listener"],
            )?,
            listener_events: IntCounterVec::new(
                Opts::new(
                    "switchyard_listener_events_total",
                    "Terminal connection events: accepted, refused, framing errors...",
                ),
                &["listener", "event"],
            )?,
            tls_failures: IntCounterVec::new(
                Opts::new(
                    "switchyard_tls_handshake_failures_total",
                    "Terminal TLS handshakes that failed.",
                ),
                &["listener"],
            )?,
            audit_records: IntCounter::new(
                "switchyard_audit_records_total",
                "Audit records made durable.",
            )?,
            audit_bytes: IntCounter::new(
                "switchyard_audit_bytes_total",
                "Bytes written to the audit log.",
            )?,
            audit_direct_writes: IntCounter::new(
                "switchyard_audit_direct_writes_total",
                "Audit log writes that went to the disk with direct I/O (0 on a filesystem without it).",
            )?,
            audit_write_failures: IntCounter::new(
                "switchyard_audit_write_failures_total",
                "Audit log write or fdatasync failures.",
            )?,
            audit_failed: IntGauge::new(
                "switchyard_audit_failed",
                "1 when the audit log has failed and the switch answers 96.",
            )?,
            audit_batch: Histogram::with_opts(
                HistogramOpts::new(
                    "switchyard_audit_batch_records",
                    "Records per group commit.",
                )
                .buckets(vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
                ]),
            )?,
            audit_sync: Histogram::with_opts(
                HistogramOpts::new(
                    "switchyard_audit_sync_duration_seconds",
                    "fdatasync time per group commit.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            cert_expiry: IntGaugeVec::new(
                Opts::new(
                    "switchyard_tls_certificate_expiry_timestamp_seconds",
                    "When the listener's TLS certificate expires (Unix time).",
                ),
                &["listener"],
            )?,
            saf_backlog: IntGauge::new(
                "switchyard_saf_backlog",
                "Reversals waiting to be delivered.",
            )?,
            saf_dead: IntGauge::new(
                "switchyard_saf_dead_letters",
                "Reversals out of attempts, waiting for an operator.",
            )?,
            saf_delivered: IntCounter::new(
                "switchyard_saf_delivered_total",
                "Reversals the issuer acknowledged.",
            )?,
            saf_attempts: IntCounter::new(
                "switchyard_saf_attempts_total",
                "Reversal delivery attempts.",
            )?,
            ready: IntGauge::new(
                "switchyard_ready",
                "1 when the switch is ready (what /readyz says).",
            )?,
            reloads: IntCounterVec::new(
                Opts::new(
                    "switchyard_config_reloads_total",
                    "Configuration reloads (SIGHUP), by result.",
                ),
                &["result"],
            )?,
            registry,
        };
        let build = IntGaugeVec::new(
            Opts::new("switchyard_build_info", "Build information; always 1."),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let r = &t.registry;
        r.register(Box::new(build))?;
        r.register(Box::new(t.link_ready.clone()))?;
        r.register(Box::new(t.link_up.clone()))?;
        r.register(Box::new(t.link_in_flight.clone()))?;
        r.register(Box::new(t.link_events.clone()))?;
        r.register(Box::new(t.link_reconnects.clone()))?;
        r.register(Box::new(t.listener_open.clone()))?;
        r.register(Box::new(t.listener_events.clone()))?;
        r.register(Box::new(t.tls_failures.clone()))?;
        r.register(Box::new(t.audit_records.clone()))?;
        r.register(Box::new(t.audit_bytes.clone()))?;
        r.register(Box::new(t.audit_direct_writes.clone()))?;
        r.register(Box::new(t.audit_write_failures.clone()))?;
        r.register(Box::new(t.audit_failed.clone()))?;
        r.register(Box::new(t.audit_batch.clone()))?;
        r.register(Box::new(t.audit_sync.clone()))?;
        r.register(Box::new(t.cert_expiry.clone()))?;
        r.register(Box::new(t.saf_backlog.clone()))?;
        r.register(Box::new(t.saf_dead.clone()))?;
        r.register(Box::new(t.saf_delivered.clone()))?;
        r.register(Box::new(t.saf_attempts.clone()))?;
        r.register(Box::new(t.ready.clone()))?;
        r.register(Box::new(t.reloads.clone()))?;
        for result in ["ok", "restart_required", "error"] {
            t.reloads.with_label_values(&[result]);
        }
        Ok(t)
    }

    /// The audit writer's batch callback.
    pub fn batch_observer(&self) -> BatchObserver {
        let (batch, sync) = (self.audit_batch.clone(), self.audit_sync.clone());
        BatchObserver(Arc::new(move |records: u64, took: Duration| {
            batch.observe(records as f64);
            sync.observe(took.as_secs_f64());
        }))
    }

    /// Copy the counters of the connection layer and the audit writer, then render the text
    /// exposition format.
    pub fn render(&self, sources: &Sources) -> Vec<u8> {
        for (name, link, connections) in &sources.links {
            let ready = link.ready_connections() as i64;
            self.link_ready.with_label_values(&[name]).set(ready);
            self.link_up
                .with_label_values(&[name])
                .set(i64::from(ready > 0));
            self.link_in_flight
                .with_label_values(&[name])
                .set(link.in_flight() as i64);
            let s = link.stats();
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            for (event, value) in [
                ("sent", load(&s.sent)),
                ("response", load(&s.responses)),
                ("timeout", load(&s.timeouts)),
                ("late_response", load(&s.late_responses)),
                ("unmatched_response", load(&s.unmatched_responses)),
                ("malformed_response", load(&s.malformed_responses)),
                ("connection_lost", load(&s.connection_lost)),
                ("busy", load(&s.busy)),
                ("down", load(&s.down)),
                ("duplicate", load(&s.duplicates)),
                ("connect", load(&s.connects)),
                ("connect_failure", load(&s.connect_failures)),
                ("disconnect", load(&s.disconnects)),
                ("echo_sent", load(&s.echoes_sent)),
                ("echo_missed", load(&s.echoes_missed)),
                ("echo_down", load(&s.echo_down)),
                ("sign_on_failure", load(&s.sign_on_failures)),
            ] {
                sync(&self.link_events.with_label_values(&[name, event]), value);
            }
            sync(
                &self.link_reconnects.with_label_values(&[name]),
                load(&s.connects).saturating_sub(*connections as u64),
            );
        }
        for (name, s) in &sources.listeners {
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            self.listener_open
                .with_label_values(&[name])
                .set(s.connections_open.load(Ordering::Relaxed) as i64);
            for (event, value) in [
                ("accepted", load(&s.connections_accepted)),
                ("refused", load(&s.connections_refused)),
                ("decode_error", load(&s.decode_errors)),
                ("framing_error", load(&s.framing_errors)),
                ("slow_frame", load(&s.slow_frames)),
                ("idle_closed", load(&s.idle_closed)),
                ("undelivered", load(&s.undelivered)),
                ("linger_expired", load(&s.linger_expired)),
            ] {
                sync(
                    &self.listener_events.with_label_values(&[name, event]),
                    value,
                );
            }
            sync(
                &self.tls_failures.with_label_values(&[name]),
                load(&s.tls_handshake_failures),
            );
        }
        let a = sources.audit.stats();
        sync(&self.audit_records, a.records.load(Ordering::Relaxed));
        sync(&self.audit_bytes, a.bytes.load(Ordering::Relaxed));
        sync(
            &self.audit_direct_writes,
            a.direct_writes.load(Ordering::Relaxed),
        );
        sync(
            &self.audit_write_failures,
            a.failures.load(Ordering::Relaxed),
        );
        self.audit_failed.set(i64::from(sources.audit.is_failed()));
        for (listener, tls) in &sources.certificates {
            self.cert_expiry
                .with_label_values(&[listener])
                .set(tls.not_after());
        }
        if let Some(saf) = &sources.saf {
            self.saf_backlog.set(saf.backlog() as i64);
            self.saf_dead.set(saf.dead_letters() as i64);
            sync(&self.saf_delivered, saf.delivered.load(Ordering::Relaxed));
            sync(&self.saf_attempts, saf.attempts.load(Ordering::Relaxed));
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for these metric types.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Set up `tracing`: text or JSON lines on standard error, filtered by `RUST_LOG` or the
/// configured level.
pub fn init_logging(json: bool, level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level.unwrap_or("info")));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second initialisation (tests) is refused quietly.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
