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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy, kv};
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
    // Each other instance's place: the last stream sequence read from its subject and its
    // last record applied (a restarted consumer never applies a record twice).
    let mut members: HashMap<String, Member> = HashMap::new();
    let mut backoff = Duration::from_millis(200);
    loop {
        let run = session(&config, &views, &mut members);
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

/// Where the follower is in one other instance's records.
#[derive(Debug, Default)]
struct Member {
    /// The stream sequence of the last message read from the instance's subject.
    position: u64,
    /// The instance's last record applied.
    applied: u64,
    /// Its last message read left more pending and was not recent.
    behind: bool,
}

type Messages = futures_util::stream::SelectAll<
    std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<jetstream::Message, pull::OrderedError>> + Send>,
    >,
>;

/// One ordered consumer per other instance, each on that instance's subject: the broker
/// sends no instance its own records (nats-server 2.9 has one filter subject a consumer; a
/// wildcard over every instance's subject had it deliver each record to its own instance
/// too, which was half of what the group's followers cost it). The instances followed:
/// those in the instances bucket, watched (an instance takes its id there before it writes
/// a record, so its first records are followed), and those with records in the stream,
/// looked for every [`CHECK_CURRENT`] (an instance gone, one that started with the broker
/// away, or the bucket lost with a broker restart).
async fn session(
    config: &ClusterConfig,
    views: &Views,
    members: &mut HashMap<String, Member>,
) -> Result<(), ClusterError> {
    let client = connect(config).await?;
    let connection = client.clone();
    let js = jetstream::ContextBuilder::new()
        .timeout(config.ack_timeout)
        .build(client);
    let stream = crate::audit_stream(&js, config).await?;
    let mut group = Group {
        config,
        stream: &stream,
        own: config.instance_subject(),
        followed: HashSet::new(),
        messages: futures_util::stream::SelectAll::new(),
    };
    let mut instances = watch_instances(&js, config).await;
    group.follow_stream_members(members).await?;
    tracing::info!(
        instances = group.followed.len(),
        "the group's records: following the audit stream"
    );
    // Current when, for every other instance, the last message read left none pending or
    // was published within CURRENT_WITHIN (under load there are always a few more);
    // checked every second too: not while disconnected, and current again at the end of
    // each instance's records (an idle stream brings no message to say so).
    let mut check = tokio::time::interval(CHECK_CURRENT);
    loop {
        let message = tokio::select! {
            m = group.messages.next(), if !group.messages.is_empty() => m,
            entry = next_instance(&mut instances) => {
                match entry {
                    Some(Ok(e)) if e.operation == kv::Operation::Put => {
                        if let Some(id) = crate::instances::instance_of_key(&e.key) {
                            let subject = format!("{}.{id}", config.audit_subject);
                            group.follow(&subject, members).await?;
                        }
                    }
                    Some(Ok(_)) => {}
                    // Lost (the bucket went with a broker restart): opened again on a check.
                    Some(Err(_)) | None => instances = None,
                }
                continue;
            }
            _ = check.tick() => {
                if connection.connection_state() != async_nats::connection::State::Connected {
                    views.current(false);
                    continue;
                }
                if instances.is_none() {
                    instances = watch_instances(&js, config).await;
                }
                group.follow_stream_members(members).await?;
                for (subject, member) in members.iter_mut() {
                    if member.behind && last_of(&stream, subject).await? <= member.position {
                        member.behind = false;
                    }
                }
                views.current(members.values().all(|m| !m.behind));
                continue;
            }
        };
        let Some(message) = message else {
            break;
        };
        let message = message.map_err(|e| failed("consumer")(e.to_string()))?;
        let subject = message.subject.as_str();
        // Every subject consumed is a member's (Group::follow).
        let Some(member) = members.get_mut(subject) else {
            continue;
        };
        if let Ok(info) = message.info() {
            member.position = info.stream_sequence;
            let lag_ns = now_ns().saturating_sub(info.published.unix_timestamp_nanos());
            member.behind = info.pending != 0 && lag_ns >= CURRENT_WITHIN.as_nanos() as i128;
        }
        let instance = config.instance_of(subject);
        // A message is a batch of the member's records, its in-flight records among them
        // (of no use here: the pair that follows is what the views hold).
        for frame in switchyard_audit::split_frames(&message.payload) {
            let Ok(record) = frame
                .map_err(|(_, e)| e)
                .and_then(switchyard_audit::read_frame)
            else {
                tracing::warn!(
                    instance,
                    "the group's records: a record that does not read, the rest of its batch skipped"
                );
                break;
            };
            if record.seq <= member.applied {
                continue;
            }
            member.applied = record.seq;
            let kind = RecordKind::from_code(record.kind);
            if kind == Some(RecordKind::InFlight) {
                continue;
            }
            if let Err(e) = views.apply(record.seq, kind, record.payload) {
                tracing::warn!(instance, seq = record.seq, error = %e, "the group's records: record not applied");
            }
        }
        views.current(members.values().all(|m| !m.behind));
    }
    Ok(())
}

fn failed(what: &'static str) -> impl Fn(String) -> ClusterError {
    move |reason| ClusterError::Broker { what, reason }
}

/// The other instances' records being read in one session.
struct Group<'s> {
    config: &'s ClusterConfig,
    stream: &'s jetstream::stream::Stream,
    own: String,
    followed: HashSet<String>,
    messages: Messages,
}

impl Group<'_> {
    /// Follow `subject` (an instance's) from where the follower left it, unless it is this
    /// instance's or followed already.
    async fn follow(
        &mut self,
        subject: &str,
        members: &mut HashMap<String, Member>,
    ) -> Result<(), ClusterError> {
        if subject == self.own || self.followed.contains(subject) {
            return Ok(());
        }
        let member = members.entry(subject.to_string()).or_default();
        let deliver_policy = match member.position {
            0 => DeliverPolicy::All,
            p => DeliverPolicy::ByStartSequence {
                start_sequence: p + 1,
            },
        };
        let consumer = self
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject.to_string(),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| failed("consumer")(e.to_string()))?;
        let records = consumer
            .messages()
            .await
            .map_err(|e| failed("consumer")(e.to_string()))?;
        member.behind = last_of(self.stream, subject).await? > member.position;
        tracing::info!(
            instance = self.config.instance_of(subject),
            from = member.position + 1,
            "the group's records: following an instance"
        );
        self.messages.push(Box::pin(records));
        self.followed.insert(subject.to_string());
        Ok(())
    }

    /// Follow every instance with records in the stream.
    async fn follow_stream_members(
        &mut self,
        members: &mut HashMap<String, Member>,
    ) -> Result<(), ClusterError> {
        // One token: every instance's subject but their in-flight ones.
        let mut subjects = self
            .stream
            .info_with_subjects(format!("{}.*", self.config.audit_subject))
            .await
            .map_err(|e| failed("audit stream")(e.to_string()))?;
        let mut found = Vec::new();
        while let Some(subject) = subjects.next().await {
            found.push(
                subject
                    .map_err(|e| failed("audit stream")(e.to_string()))?
                    .0,
            );
        }
        for subject in found {
            self.follow(&subject, members).await?;
        }
        Ok(())
    }
}

/// A watch of the instances bucket, its entries first (none: the bucket is not there).
async fn watch_instances(js: &jetstream::Context, config: &ClusterConfig) -> Option<kv::Watch> {
    let store = js
        .get_key_value(crate::instances::bucket_name(config))
        .await
        .ok()?;
    store.watch_with_history(">").await.ok()
}

async fn next_instance(
    watch: &mut Option<kv::Watch>,
) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watch {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
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

/// The stream sequence of the last message on `subject` (0: none).
async fn last_of(stream: &jetstream::stream::Stream, subject: &str) -> Result<u64, ClusterError> {
    use jetstream::stream::LastRawMessageErrorKind;
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => Ok(message.sequence),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
        Err(e) => Err(failed("audit stream")(e.to_string())),
    }
}
