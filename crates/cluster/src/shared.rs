//! The group's shared state on JetStream key-value buckets: the duplicate window
//! (`<prefix>_duplicates`, in memory, entries kept for the duplicate window), the velocity
//! counters (`<prefix>_counters`, one per terminal and card, two days) and the terminals'
//! homes (`<prefix>_homes`, see `homes.rs`). Keys are the router's keys in hex (terminal
//! ids, STANs, transmission times: no card data); values are small JSON documents (a home:
//! the instance id). The reversal index is no bucket: each instance follows the others'
//! audit records (`batches.rs`), which say where each request went.
//!
//! A claim is a write over no value (atomic: it fails when the key exists), so the first
//! instance to claim a request wins. An in-flight claim older than [`STALE_CLAIM`] (its instance died
//! with it) is taken over with a compare-and-set on its revision.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use std::sync::Arc;
use switchyard_router::shared::{Claim, SharedAnswer, SharedFuture, SharedState, Unreachable};
use tokio::sync::OnceCell;

use crate::homes::{self, Homes, HOMES_TTL};
use crate::{connect, ClusterConfig};

/// An in-flight claim older than this is an instance's that died with the request.
pub const STALE_CLAIM: Duration = Duration::from_secs(120);

/// One claim or answer, as the bucket holds it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
enum Entry {
    InFlight { instance: String, at_ms: u64 },
    Answered(SharedAnswer),
}

/// The buckets, opened (or created) at first use, and again after an operation failed
/// (a broker restarted without its in-memory buckets has them made again).
#[derive(Debug)]
struct Buckets {
    duplicates: kv::Store,
    counters: kv::Store,
    homes: kv::Store,
    opened: std::time::Instant,
}

/// Buckets are opened again after an operation that never finished no sooner than this
/// after they were opened (a broker slow for a while costs one opening a second, not one a
/// request).
const REOPEN_AFTER_UNFINISHED: Duration = Duration::from_secs(1);

type OpenBuckets = Arc<std::sync::Mutex<Option<Arc<Buckets>>>>;

/// An operation on the buckets that its caller gave up on (its timeout dropped it) leaves
/// them to be opened again: a broker restarted without a bucket's stream leaves some of
/// the client's calls on it waiting far longer than any caller waits (a direct get on a
/// stream that is gone is answered by no one), so they never fail, and without this the
/// buckets would never be made again.
struct Unfinished {
    open: OpenBuckets,
    buckets: Option<Arc<Buckets>>,
}

impl Unfinished {
    fn finished(mut self) {
        self.buckets = None;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        let Some(gave_up_on) = self.buckets.take() else {
            return;
        };
        if gave_up_on.opened.elapsed() < REOPEN_AFTER_UNFINISHED {
            return;
        }
        if let Ok(mut open) = self.open.lock() {
            if open.as_ref().is_some_and(|b| Arc::ptr_eq(b, &gave_up_on)) {
                *open = None;
            }
        }
    }
}

/// How long a velocity window's counter is kept (the longest window a rule may have).
const COUNTERS_TTL: Duration = Duration::from_secs(2 * 24 * 3600);

/// A terminal's or card's velocity counter: its current window and what it holds (one
/// entry each, whatever the window: a new window starts it again).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Counter {
    window: u64,
    count: u32,
    amount: u64,
}

/// The group's shared state on JetStream.
#[derive(Debug)]
pub struct JetStreamState {
    config: ClusterConfig,
    duplicate_window: Duration,
    js: OnceCell<jetstream::Context>,
    open: OpenBuckets,
    opening: Arc<tokio::sync::Mutex<()>>,
    homes: Arc<Homes>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

impl JetStreamState {
    /// Shared state for the group `config` names; answers kept for `duplicate_window`.
    pub fn new(config: ClusterConfig, duplicate_window: Duration) -> JetStreamState {
        JetStreamState {
            homes: Arc::new(Homes::new(&config.instance, config.home_settle)),
            config,
            duplicate_window,
            js: OnceCell::new(),
            open: Arc::default(),
            opening: Arc::default(),
        }
    }

    fn prefix(&self) -> String {
        self.config.audit_stream.to_ascii_lowercase()
    }

    /// The connection, made at first use; the homes' watch starts with it.
    async fn context(&self) -> Result<&jetstream::Context, Unreachable> {
        self.js
            .get_or_try_init(|| async {
                let client = connect(&self.config)
                    .await
                    .map_err(|e| Unreachable(e.to_string()))?;
                let js = jetstream::ContextBuilder::new()
                    .timeout(self.config.ack_timeout)
                    .build(client);
                tokio::spawn(homes::watch(
                    js.clone(),
                    format!("{}_homes", self.prefix()),
                    self.config.replicas,
                    self.homes.clone(),
                ));
                Ok(js)
            })
            .await
    }

    async fn buckets(&self) -> Result<Arc<Buckets>, Unreachable> {
        let open = self.open.clone();
        let opened = move || open.lock().ok().and_then(|open| open.clone());
        if let Some(b) = opened() {
            return Ok(b);
        }
        let one_at_a_time = self.opening.clone().lock_owned().await;
        if let Some(b) = opened() {
            return Ok(b);
        }
        let js = self.context().await?.clone();
        let (prefix, replicas, window) =
            (self.prefix(), self.config.replicas, self.duplicate_window);
        let open = self.open.clone();
        // Opened in a task of its own: an operation's timeout gives up waiting for it, not
        // the opening (a dozen requests to the broker, longer than one operation may take).
        let opening = tokio::spawn(async move {
            let _one_at_a_time = one_at_a_time;
            use jetstream::stream::StorageType::{File, Memory};
            let name = |what: &str| format!("{prefix}_{what}");
            let b = Arc::new(Buckets {
                duplicates: bucket(&js, &name("duplicates"), window, replicas, Memory).await?,
                counters: bucket(&js, &name("counters"), COUNTERS_TTL, replicas, File).await?,
                homes: bucket(&js, &name("homes"), HOMES_TTL, replicas, Memory).await?,
                opened: std::time::Instant::now(),
            });
            if let Ok(mut open) = open.lock() {
                *open = Some(b.clone());
            }
            Ok(b)
        });
        opening
            .await
            .map_err(|e| Unreachable(format!("opening the buckets: {e}")))?
    }

    /// `what` failed: why, for the log; the buckets are opened again at the next operation.
    fn failed<'a>(&'a self, what: &'a str) -> impl Fn(String) -> Unreachable + 'a {
        move |e| {
            if let Ok(mut open) = self.open.lock() {
                *open = None;
            }
            Unreachable(format!("{what}: {e}"))
        }
    }

    fn in_flight(&self) -> Entry {
        Entry::InFlight {
            instance: self.config.instance.clone(),
            at_ms: now_ms(),
        }
    }

    /// Run `op` on the buckets; if it is dropped unfinished (its caller's timeout), they
    /// are opened again (see [`Unfinished`]).
    async fn with_buckets<T, F, Fut>(&self, op: F) -> Result<T, Unreachable>
    where
        F: FnOnce(Arc<Buckets>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Unreachable>>,
    {
        let b = self.buckets().await?;
        let unfinished = Unfinished {
            open: self.open.clone(),
            buckets: Some(b.clone()),
        };
        let result = op(b).await;
        unfinished.finished();
        result
    }

    /// Claim `key` (in flight): written only over no value (revision 0), a delete marker or a stale claim, each by its revision, so one
    /// instance wins. (The client's `create` is not used: when the bucket's stream is gone
    /// it reads the key after the failed write, and that read is never answered.)
    async fn claim_key(&self, key: &[u8]) -> Result<Claim, Unreachable> {
        let (key, entry) = (hex(key), self.in_flight());
        let value =
            Bytes::from(serde_json::to_vec(&entry).map_err(|e| Unreachable(e.to_string()))?);
        self.with_buckets(move |b| async move {
            let mut over_revision = 0;
            for _ in 0..3 {
                match b
                    .duplicates
                    .update(&key, value.clone(), over_revision)
                    .await
                {
                    Ok(_) => return Ok(Claim::Ours),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                    Err(e) => return Err(self.failed("claim")(e.to_string())),
                }
                let found = b
                    .duplicates
                    .entry(key.clone())
                    .await
                    .map_err(|e| self.failed("claim")(e.to_string()))?;
                let Some(found) = found else {
                    over_revision = 0; // gone meanwhile: claim it again
                    continue;
                };
                if found.operation != kv::Operation::Put {
                    over_revision = found.revision; // settled with no answer: claim it again
                    continue;
                }
                match serde_json::from_slice::<Entry>(&found.value) {
                    Ok(Entry::Answered(a)) => return Ok(Claim::Answered(a)),
                    Ok(Entry::InFlight { at_ms, .. })
                        if now_ms().saturating_sub(at_ms) > STALE_CLAIM.as_millis() as u64 =>
                    {
                        // Its instance died with it: take it over, if no one else did first.
                        over_revision = found.revision;
                    }
                    Ok(Entry::InFlight { .. }) => return Ok(Claim::InFlight),
                    Err(e) => return Err(Unreachable(format!("claim: entry: {e}"))),
                }
            }
            Ok(Claim::InFlight)
        })
        .await
    }
}

/// A key-value bucket (its stream made here when missing).
pub(crate) async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
    storage: jetstream::stream::StorageType,
) -> Result<kv::Store, Unreachable> {
    use jetstream::stream::{Config, DiscardPolicy};
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    // The bucket's stream as a key-value bucket is made (the client's own
    // `create_key_value` first asks for account details a 2.9 server does not give).
    js.get_or_create_stream(Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: DiscardPolicy::New,
        duplicate_window: max_age.min(Duration::from_secs(120)),
        ..Default::default()
    })
    .await
    .map_err(|e| Unreachable(format!("bucket {name}: {e}")))?;
    js.get_key_value(name)
        .await
        .map_err(|e| Unreachable(format!("bucket {name}: {e}")))
}

impl SharedState for JetStreamState {
    fn at_home(&self, terminal: &[u8]) -> bool {
        self.homes.at_home(&hex(terminal))
    }

    fn come_home<'a>(&'a self, terminal: &'a [u8]) -> SharedFuture<'a, bool> {
        Box::pin(async move {
            let key = hex(terminal);
            if self.homes.named_here(&key) || !self.homes.start_move(&key) {
                return Ok(false);
            }
            self.with_buckets(move |b| async move {
                b.homes
                    .put(&key, Bytes::from(self.config.instance.clone()))
                    .await
                    .map(|_| true)
                    .map_err(|e| self.failed("come-home")(e.to_string()))
            })
            .await
        })
    }

    fn claim<'a>(&'a self, key: &'a [u8]) -> SharedFuture<'a, Claim> {
        Box::pin(self.claim_key(key))
    }

    fn settle<'a>(&'a self, key: &'a [u8], answer: Option<SharedAnswer>) -> SharedFuture<'a, ()> {
        Box::pin(self.with_buckets(move |b| async move {
            let key = hex(key);
            let failed = self.failed("settle");
            match answer {
                Some(a) => {
                    let value = serde_json::to_vec(&Entry::Answered(a))
                        .map_err(|e| Unreachable(e.to_string()))?;
                    b.duplicates
                        .put(&key, Bytes::from(value))
                        .await
                        .map(|_| ())
                        .map_err(|e| failed(e.to_string()))
                }
                None => b
                    .duplicates
                    .delete(&key)
                    .await
                    .map_err(|e| failed(e.to_string())),
            }
        }))
    }

    fn count<'a>(
        &'a self,
        key: &'a [u8],
        window_s: u64,
        amount: u64,
    ) -> SharedFuture<'a, (u32, u64)> {
        Box::pin(self.with_buckets(move |b| async move {
            let window = now_ms() / 1000 / window_s.max(1);
            let key = hex(key);
            let failed = self.failed("count");
            // Compare-and-set on the window's counter (revision 0: no counter yet); another
            // instance counting at the same moment makes one of the two read again.
            for _ in 0..8 {
                let found = b
                    .counters
                    .entry(key.clone())
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                let (mut c, revision) = match found {
                    Some(e) => (
                        Some(&e)
                            .filter(|e| e.operation == kv::Operation::Put)
                            .and_then(|e| serde_json::from_slice::<Counter>(&e.value).ok())
                            .filter(|c| c.window == window)
                            .unwrap_or_default(),
                        e.revision,
                    ),
                    None => (Counter::default(), 0),
                };
                c.window = window;
                c.count = c.count.saturating_add(1);
                c.amount = c.amount.saturating_add(amount);
                let value = Bytes::from(serde_json::to_vec(&c).map_err(|e| failed(e.to_string()))?);
                match b.counters.update(&key, value, revision).await {
                    Ok(_) => return Ok((c.count, c.amount)),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                    Err(e) => return Err(failed(e.to_string())),
                }
            }
            Err(Unreachable(
                "count: the counter kept changing under it".into(),
            ))
        }))
    }
}
