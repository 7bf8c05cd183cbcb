//! Terminal batch totals shared by the group: every instance applies the other instances'
//! audit records, as the audit stream carries them, to its own book of terminal batches
//! (its own records it applies as it writes them). A terminal's 0500 on any instance is
//! then compared with everything the group approved for it, whichever instance approved
//! it; a batch closed on one instance is closed on all.
//!
//! The view is as fresh as the stream: a transaction another instance approved a moment
//! ago may not be in it yet (a 0500 sent within that moment gets 95 and is simply sent
//! again). While the broker is unreachable an instance's book holds what it has seen;
//! the follower takes up where it stopped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use futures_util::StreamExt;
use switchyard_audit::RecordKind;
use switchyard_router::batch::BatchBook;

use crate::{connect, ClusterConfig, ClusterError};

/// Follow the audit stream into `book` until `stop`; failures are logged and retried.
pub async fn follow(
    config: ClusterConfig,
    book: Arc<BatchBook>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // The last stream sequence applied, and each instance's last record applied (a
    // restarted consumer never applies a record twice).
    let mut position = 0u64;
    let mut applied: HashMap<String, u64> = HashMap::new();
    let mut backoff = Duration::from_millis(200);
    loop {
        let run = session(&config, &book, &mut position, &mut applied);
        let ended = tokio::select! {
            r = run => r,
            _ = stop.changed() => return,
        };
        if let Err(e) = ended {
            tracing::warn!(error = %e, "group batch totals: following paused");
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
    book: &BatchBook,
    position: &mut u64,
    applied: &mut HashMap<String, u64>,
) -> Result<(), ClusterError> {
    let failed = |what: &'static str| move |e: String| ClusterError::Broker { what, reason: e };
    let client = connect(config).await?;
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
            filter_subject: format!("{}.>", config.audit_subject),
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
    let prefix = format!("{}.", config.audit_subject);
    tracing::info!(
        from = *position + 1,
        "group batch totals: following the audit stream"
    );
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| failed("consumer")(e.to_string()))?;
        if let Ok(info) = message.info() {
            *position = info.stream_sequence;
        }
        let subject = message.subject.as_str();
        if subject == own {
            continue;
        }
        let instance = subject.strip_prefix(&prefix).unwrap_or(subject);
        let Ok(record) = switchyard_audit::read_frame(&message.payload) else {
            tracing::warn!(
                instance,
                "group batch totals: a record that does not read, skipped"
            );
            continue;
        };
        let last = applied.entry(instance.to_string()).or_insert(0);
        if record.seq <= *last {
            continue;
        }
        *last = record.seq;
        if let Err(e) = book.apply(
            record.seq,
            RecordKind::from_code(record.kind),
            record.payload,
        ) {
            tracing::warn!(instance, seq = record.seq, error = %e, "group batch totals: record not applied");
        }
    }
    Ok(())
}
