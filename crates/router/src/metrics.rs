//! The router's Prometheus metrics. Labels are bounded: listener, route and link names come
//! from the configuration, MTIs from a fixed list (anything else is `other`), outcomes from
//! a fixed enum, response codes are two alphanumeric characters (anything else is
//! `invalid`). Never a PAN, STAN, RRN or terminal id.

use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};
use switchyard_audit::Outcome;
use switchyard_iso8583::{MessageView, Mti};

use crate::error::RouterError;
use crate::registry::Refusal;

/// Latency buckets in seconds: 100 µs to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Shared-state operations: 50 µs to 250 ms (the default timeout).
const SHARED_BUCKETS: [f64; 12] = [
    0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25,
];

const KNOWN_MTIS: &[&str] = &[
    "0100", "0101", "0120", "0121", "0200", "0201", "0220", "0221", "0400", "0401", "0420", "0421",
    "0800", "0810", "0110", "0210", "0410", "0430",
];

/// The MTI as a label value.
pub fn mti_label(mti: Mti) -> &'static str {
    KNOWN_MTIS
        .iter()
        .copied()
        .find(|m| *m == mti.as_str())
        .unwrap_or("other")
}

/// A response code as a label value.
pub fn code_label(code: &[u8]) -> &str {
    match std::str::from_utf8(code) {
        Ok(code) if code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphanumeric()) => code,
        _ => "invalid",
    }
}

/// The reason of a decode error as a label value.
pub fn decode_reason(error: &switchyard_iso8583::Error) -> &'static str {
    use switchyard_iso8583::Reason;
    match error {
        switchyard_iso8583::Error::Decode { reason, .. } => match reason {
            Reason::Truncated { .. } => "truncated",
            Reason::BadMti => "bad_mti",
            Reason::BadBitmap => "bad_bitmap",
            Reason::UnknownField => "unknown_field",
            Reason::BadLengthPrefix => "bad_length_prefix",
            Reason::BadLength { .. } => "bad_length",
            Reason::InvalidCharacter { .. } => "invalid_character",
            Reason::BadPadding => "bad_padding",
            Reason::TrailingBytes { .. } => "trailing_bytes",
            Reason::TooLong => "too_long",
            _ => "other",
        },
        _ => "other",
    }
}

/// Every value [`decode_reason`] gives.
const DECODE_REASONS: [&str; 11] = [
    "truncated",
    "bad_mti",
    "bad_bitmap",
    "unknown_field",
    "bad_length_prefix",
    "bad_length",
    "invalid_character",
    "bad_padding",
    "trailing_bytes",
    "too_long",
    "other",
];

/// The abnormal-activity rules (the `rule` label).
const RULES: [&str; 4] = [
    "terminal_velocity",
    "card_velocity",
    "decline_burst",
    "merchant_amount_limit",
];

/// The router's metrics.
#[derive(Debug, Clone)]
pub struct RouterMetrics {
    requests: IntCounterVec,
    responses: IntCounterVec,
    duration: HistogramVec,
    issuer_duration: HistogramVec,
    decode_errors: IntCounterVec,
    audit_append: Histogram,
    audit_failures: IntCounter,
    undelivered: IntCounterVec,
    refused: IntCounterVec,
    rule_hits: IntCounterVec,
    shared: SharedStateMetrics,
}

/// The group's shared state: operations by result, and their times.
#[derive(Debug, Clone)]
struct SharedStateMetrics {
    ops: IntCounterVec,
    duration: HistogramVec,
}

impl SharedStateMetrics {
    fn new(registry: &Registry) -> Result<SharedStateMetrics, RouterError> {
        let m = SharedStateMetrics {
            ops: IntCounterVec::new(
                Opts::new("switchyard_shared_state_total", "Operations on the group's shared state (duplicate window, reversal index), by operation and result (ok, unreachable; claim-behind recorded: claimed by its audit record alone, answered before its claim was due; lost: a request another instance forwarded too)."),
                &["op", "result"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "switchyard_shared_state_duration_seconds",
                    "Time of an operation on the group's shared state, by operation (a claim is on a request's path unless its terminal is at home here: claim-behind).",
                )
                .buckets(SHARED_BUCKETS.to_vec()),
                &["op"],
            )?,
        };
        for op in [
            "claim",
            "claim-behind",
            "come-home",
            "settle",
            "followed",
            "count",
        ] {
            for result in ["ok", "unreachable"] {
                m.ops.with_label_values(&[op, result]);
            }
        }
        for result in ["lost", "recorded"] {
            m.ops.with_label_values(&["claim-behind", result]);
        }
        registry.register(Box::new(m.ops.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        Ok(m)
    }
}

impl RouterMetrics {
    /// Register the metrics in `registry`.
    pub fn new(registry: &Registry) -> Result<RouterMetrics, RouterError> {
        let histogram = |name: &str, help: &str| {
            HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec())
        };
        let m = RouterMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "switchyard_requests_total",
                    "Requests from terminals, by how they ended.",
                ),
                &["listener", "route", "mti", "outcome"],
            )?,
            responses: IntCounterVec::new(
                Opts::new(
                    "switchyard_responses_total",
                    "Answers to terminals, by response code (field 39).",
                ),
                &["listener", "response_code"],
            )?,
            duration: HistogramVec::new(
                histogram(
                    "switchyard_request_duration_seconds",
                    "From reading a request to having its answer ready, audit included.",
                ),
                &["listener"],
            )?,
            issuer_duration: HistogramVec::new(
                histogram(
                    "switchyard_issuer_duration_seconds",
                    "From forwarding a request to the issuer's answer or failure.",
                ),
                &["link"],
            )?,
            decode_errors: IntCounterVec::new(
                Opts::new(
                    "switchyard_decode_errors_total",
                    "Framed requests that did not decode, by reason.",
                ),
                &["listener", "reason"],
            )?,
            audit_append: Histogram::with_opts(histogram(
                "switchyard_audit_append_duration_seconds",
                "Time to append a pair record (until durable, in durable mode).",
            ))?,
            audit_failures: IntCounter::new(
                "switchyard_audit_append_failures_total",
                "Pair records that could not be written.",
            )?,
            undelivered: IntCounterVec::new(
                Opts::new(
                    "switchyard_undelivered_responses_total",
                    "Answers whose terminal connection was gone.",
                ),
                &["listener"],
            )?,
            refused: IntCounterVec::new(
                Opts::new("switchyard_registry_refusals_total", "Requests the merchant and terminal registry refused, by reason (mcc_mismatch, unknown_terminal...)."),
                &["reason"],
            )?,
            rule_hits: IntCounterVec::new(
                Opts::new("switchyard_rule_hits_total", "Abnormal-activity rules that fired, by rule and action (flag or block)."),
                &["rule", "action"],
            )?,
            shared: SharedStateMetrics::new(registry)?,
        };
        m.start_at_zero();
        registry.register(Box::new(m.refused.clone()))?;
        registry.register(Box::new(m.rule_hits.clone()))?;
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.responses.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.issuer_duration.clone()))?;
        registry.register(Box::new(m.decode_errors.clone()))?;
        registry.register(Box::new(m.audit_append.clone()))?;
        registry.register(Box::new(m.audit_failures.clone()))?;
        registry.register(Box::new(m.undelivered.clone()))?;
        Ok(m)
    }

    pub(crate) fn observe(
        &self,
        listener: &str,
        route: &str,
        mti: Mti,
        outcome: Outcome,
        answer: Option<&MessageView<'_>>,
        elapsed: Duration,
    ) {
        self.requests
            .with_label_values(&[listener, route, mti_label(mti), outcome.name()])
            .inc();
        if let Some(code) = answer.and_then(|a| a.field(39)) {
            self.responses
                .with_label_values(&[listener, code_label(&code.value())])
                .inc();
        }
        self.duration
            .with_label_values(&[listener])
            .observe(elapsed.as_secs_f64());
    }

    /// A shared-state operation, how it went and how long it took.
    pub(crate) fn shared(&self, op: &str, ok: bool, took: Duration) {
        self.shared_result(op, if ok { "ok" } else { "unreachable" }, took);
    }

    /// Another instance's record of a request this instance took too: the group forwarded
    /// it twice (`claim-behind` `lost`).
    pub fn forwarded_twice(&self) {
        self.shared_result("claim-behind", "lost", Duration::ZERO);
    }

    /// A shared-state operation with another result than ok or unreachable.
    pub(crate) fn shared_result(&self, op: &str, result: &str, took: Duration) {
        self.shared.ops.with_label_values(&[op, result]).inc();
        self.shared
            .duration
            .with_label_values(&[op])
            .observe(took.as_secs_f64());
    }

    pub(crate) fn issuer_latency(&self, link: &str, elapsed: Duration) {
        self.issuer_duration
            .with_label_values(&[link])
            .observe(elapsed.as_secs_f64());
    }

    /// Every known label set starts at zero, so that a rate or an alert over them sees the
    /// series before its first event (prometheus.io: "avoid missing metrics").
    fn start_at_zero(&self) {
        for refusal in Refusal::ALL {
            self.refused.with_label_values(&[refusal.name()]);
        }
        for rule in RULES {
            for action in ["flag", "block"] {
                self.rule_hits.with_label_values(&[rule, action]);
            }
        }
    }

    /// Start `listener`'s decode-error series at zero, one per reason.
    pub fn listener(&self, listener: &str) {
        for reason in DECODE_REASONS {
            self.decode_errors.with_label_values(&[listener, reason]);
        }
    }

    pub(crate) fn decode_error(&self, listener: &str, error: &switchyard_iso8583::Error) {
        self.decode_errors
            .with_label_values(&[listener, decode_reason(error)])
            .inc();
    }

    pub(crate) fn audit_latency(&self, elapsed: Duration) {
        self.audit_append.observe(elapsed.as_secs_f64());
    }

    pub(crate) fn audit_failure(&self) {
        self.audit_failures.inc();
    }

    pub(crate) fn refused(&self, reason: &str) {
        self.refused.with_label_values(&[reason]).inc();
    }

    pub(crate) fn rule_hit(&self, rule: &str, block: bool) {
        self.rule_hits
            .with_label_values(&[rule, if block { "block" } else { "flag" }])
            .inc();
    }

    pub(crate) fn undelivered(&self, listener: &str) {
        self.undelivered.with_label_values(&[listener]).inc();
    }
}
