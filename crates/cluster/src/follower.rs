//! The other instances' audit records, followed on the audit stream, into this instance's
//! own views (its own records it applies as it writes them):
//!
//! - the terminal batch totals: a terminal's 0500 on any instance is compared with
//!   everything the group approved for it, whichever instance approved it; a batch closed
//!   on one instance is closed on all;
//! - the duplicate window: each request another instance answered, with its answer, so
//!   that its retransmission here gets the same answer and is not forwarded again (the
//!   instance that has a terminal at home writes no claim for a request answered within
//!   the hold: its record is the claim);
//! - the reversal index: where each request another instance forwarded went (link, the
//!   STAN the issuer saw), so that its terminal's reversal here goes there too.
//!
//! The record is written when the issuer's answer (or its timeout) is in, and the stream
//! carries it at once: a retransmission or a reversal, which comes after its terminal gave
//! up on the answer, finds it.
//!
//! The views are as fresh as the stream: a transaction another instance approved a moment
//! ago may not be in them yet (a 0500 sent within that moment gets 95 and is simply sent
//! again). While the broker is unreachable an instance holds what it has seen, and says so
//! ([`Integrity::set_group_current`]); the follower takes up where it stopped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use futures_util::StreamExt;
use switchyard_audit::{PairRecord, RecordKind};
use switchyard_router::batch::BatchBook;
use switchyard_router::integrity::{Integrity, ListenerSpecs};
use switchyard_router::metrics::RouterMetrics;

use crate::{connect, ClusterConfig, ClusterError};

/// What the other instances' records are applied to.
#[derive(Debug, Clone, Default)]
pub struct Views {
    /// The terminal batches, with `[batch]`.
    pub book: Option<Arc<BatchBook>>,
    /// The duplicate window and the reversal index, with `[integrity]` and the shared
    /// state; the listeners' dialects (the answers are re-made in them); where a request
    /// forwarded twice is counted.
    pub integrity: Option<(Arc<Integrity>, ListenerSpecs, RouterMetrics)>,
}

impl Views {
    fn apply(&self, seq: u64, kind: Option<RecordKind>, payload: &[u8]) -> Result<(), String> {
        if kind != Some(RecordKind::Pair) {
            return match &self.book {
                Some(book) => book.apply(seq, kind, payload).map_err(|e| e.to_string()),
                None => Ok(()),
            };
        }
        let pair: PairRecord =
            switchyard_audit::payload::decode(seq, payload).map_err(|e| e.to_string())?;
        if let Some(book) = &self.book {
            book.apply_pair(&pair);
        }
        if let Some((integrity, specs, metrics)) = &self.integrity {
            if integrity.follow_pair(&pair, specs) {
                metrics.forwarded_twice();
                tracing::warn!(
                    seq,
                    "another instance forwarded a request this instance forwarded too"
                );
            }
        }
        Ok(())
    }

    fn current(&self, current: bool) {
        if let Some((integrity, ..)) = &self.integrity {
            integrity.set_group_current(current);
        }
    }
}

/// Follow the audit stream into `views` until `stop`; failures are logged and retried.
pub async fn follow(
    config: ClusterConfig,
    views: Views,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // The last stream sequence applied, and each instance's last record applied (a
    // restarted consumer never applies a record twice).
    let mut position = 0u64;
    let mut applied: HashMap<String, u64> = HashMap::new();
    let mut backoff = Duration::from_millis(200);
    loop {
        let run = session(&config, &views, &mut position, &mut applied);
        let ended = tokio::select! {
            r = run => r,
            _ = stop.changed() => return,
        };
        views.current(false);
        if let Err(e) = ended {
            tracing::warn!(error = %e, "the group's records: following paused");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn session(
    config: &ClusterConfig,
    views: &Views,
    position: &mut u64,
    applied: &mut HashMap<String, u64>,
) -> Result<(), ClusterError> {
    let failed = |what: &'static str| move |e: String| ClusterError::Broker { what, reason: e };
    let client = connect(config).await?;
    let connection = client.clone();
    let js = jetstream::ContextBuilder::new()
        .timeout(config.ack_timeout)
        .build(client);
    let stream = crate::audit_stream(&js, config).await?;
    let deliver_policy = match *position {
        0 => DeliverPolicy::All,
        p => DeliverPolicy::ByStartSequence {
            start_sequence: p + 1,
        },
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            // One token: every instance's records but their in-flight ones.
            filter_subject: format!("{}.*", config.audit_subject),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| failed("consumer")(e.to_string()))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| failed("consumer")(e.to_string()))?;
    let own = config.instance_subject();
    tracing::info!(
        from = *position + 1,
        "the group's records: following the audit stream"
    );
    // Current when the last message read left none pending or was published within
    // CURRENT_WITHIN (under load there are always a few more); checked every second too:
    // not while disconnected, and current again at the stream's end (an idle stream brings
    // no message to say so).
    let mut check = tokio::time::interval(CHECK_CURRENT);
    loop {
        let message = tokio::select! {
            m = messages.next() => m,
            _ = check.tick() => {
                if connection.connection_state() != async_nats::connection::State::Connected {
                    views.current(false);
                } else if stream_end(&stream).await.is_ok_and(|end| end <= *position) {
                    views.current(true);
                }
                continue;
            }
        };
        let Some(message) = message else {
            break;
        };
        let message = message.map_err(|e| failed("consumer")(e.to_string()))?;
        if let Ok(info) = message.info() {
            *position = info.stream_sequence;
            let lag_ns = now_ns().saturating_sub(info.published.unix_timestamp_nanos());
            views.current(info.pending == 0 || lag_ns < CURRENT_WITHIN.as_nanos() as i128);
        }
        let subject = message.subject.as_str();
        if subject == own {
            continue;
        }
        let instance = config.instance_of(subject);
        let Ok(record) = switchyard_audit::read_frame(&message.payload) else {
            tracing::warn!(
                instance,
                "the group's records: a record that does not read, skipped"
            );
            continue;
        };
        let last = applied.entry(instance.to_string()).or_insert(0);
        if record.seq <= *last {
            continue;
        }
        *last = record.seq;
        if let Err(e) = views.apply(
            record.seq,
            RecordKind::from_code(record.kind),
            record.payload,
        ) {
            tracing::warn!(instance, seq = record.seq, error = %e, "the group's records: record not applied");
        }
    }
    Ok(())
}

/// How often the follower checks that it is connected and at the stream's end.
const CHECK_CURRENT: Duration = Duration::from_secs(1);

/// A follower reading records published this recently is current (a retransmission or a
/// reversal comes after its terminal's timeout, seconds after its original).
const CURRENT_WITHIN: Duration = Duration::from_secs(1);

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// The stream's last sequence number.
async fn stream_end(stream: &jetstream::stream::Stream) -> Result<u64, ClusterError> {
    let mut stream = stream.clone();
    stream
        .info()
        .await
        .map(|i| i.state.last_sequence)
        .map_err(|e| ClusterError::Broker {
            what: "audit stream",
            reason: e.to_string(),
        })
}
