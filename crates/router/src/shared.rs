//! What a group of instances shares so that it behaves as one switch: the duplicate window
//! (a retransmission that reaches another instance is answered from it, never forwarded
//! twice) and the reversal index (a terminal's reversal on any instance finds where its
//! original went). The router only defines the interface; the group's engine keeps the
//! state (`switchyard-cluster`: NATS JetStream key-value buckets), so the routing core stays
//! testable without sockets.
//!
//! Nothing shared holds card data: keys are terminal ids, STANs and transmission times,
//! and an answer is kept as its response code, authorisation id and approved amount (the
//! instance answering a retransmission builds the answer from the retransmitted request).
//!
//! When the engine cannot be reached within [`SharedConfig::timeout`], the policy decides:
//! **continue** with this instance's own view (counted: a retransmission that lands on
//! another instance in that time may be forwarded again, and a reversal there may not find
//! its original and go by its BIN with the terminal's STAN), or **fail closed** (91: the
//! terminal retries later, and nothing is forwarded that the group could not check).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use switchyard_iso8583::{MessageBuilder, MessageView};

/// A shared-state operation's result; `Err` when the engine could not be reached in time.
pub type SharedFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Unreachable>> + Send + 'a>>;

/// The engine did not answer in time (or refused): why, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable(pub String);

/// What the group says about a request an instance is about to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// No instance has it: this one forwards it.
    Ours,
    /// Another instance has it in flight: 94.
    InFlight,
    /// Answered already: the same answer again.
    Answered(SharedAnswer),
}

/// An answer as the group keeps it (no card data).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedAnswer {
    /// Field 39.
    pub code: String,
    /// Field 38.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_id: Option<String>,
    /// Field 4 of the answer when it differs from the request's (a partial approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
}

impl SharedAnswer {
    /// What the group keeps of `answer`.
    pub fn of(request: &MessageView<'_>, answer: &MessageView<'_>) -> Option<SharedAnswer> {
        let text = |m: &MessageView<'_>, n| m.field(n).map(|f| f.text());
        let amount = text(answer, 4).filter(|a| Some(a) != text(request, 4).as_ref());
        Some(SharedAnswer {
            code: text(answer, 39)?,
            auth_id: text(answer, 38),
            amount,
        })
    }

    /// The answer to `request` (a retransmission of the one answered).
    pub fn answer_to(&self, request: &MessageView<'_>) -> Option<bytes::Bytes> {
        let mut b = MessageBuilder::new(request.spec(), request.mti());
        b.respond_to(request, self.code.as_bytes()).ok()?;
        if let Some(auth) = &self.auth_id {
            b.set(38, auth).ok()?;
        }
        if let Some(amount) = &self.amount {
            b.set(4, amount).ok()?;
        }
        Some(b.encode())
    }
}

/// The group's shared state.
pub trait SharedState: Send + Sync + std::fmt::Debug {
    /// Claim the request with duplicate key `key` for this instance (atomic in the group:
    /// the first instance to claim it wins).
    fn claim<'a>(&'a self, key: &'a [u8]) -> SharedFuture<'a, Claim>;
    /// The claimed request's answer (`None`: it had none, forget it).
    fn settle<'a>(&'a self, key: &'a [u8], answer: Option<SharedAnswer>) -> SharedFuture<'a, ()>;
    /// Count one event of `amount` for `key` (a terminal's or a card's velocity) in the
    /// current window of `window_s` seconds: the window's count and amount, this one
    /// included. Windows are fixed (aligned at multiples of `window_s` since the epoch).
    fn count<'a>(
        &'a self,
        key: &'a [u8],
        window_s: u64,
        amount: u64,
    ) -> SharedFuture<'a, (u32, u64)>;
    /// Whether the group last named this instance the home of `terminal` (the instance its
    /// requests arrive at), from a local copy kept current by the engine: no round trip.
    /// A terminal at home has its requests claimed behind (see [`SharedConfig::claims_behind`]).
    fn at_home(&self, _terminal: &[u8]) -> bool {
        false
    }
    /// Name this instance the home of `terminal` (a request of it arrived here while the
    /// group named another, or none): whether it was written (not when already named, or
    /// being named).
    fn come_home<'a>(&'a self, _terminal: &'a [u8]) -> SharedFuture<'a, bool> {
        Box::pin(std::future::ready(Ok(false)))
    }
}

/// What to do when the engine cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WhenUnreachable {
    /// Go on with this instance's own view, counted.
    #[default]
    Continue,
    /// Answer 91 without forwarding.
    FailClosed,
}

/// How long a request claimed behind may be in flight before its claim is written (one
/// answered within it is claimed by its audit record, which the group follows).
pub const CLAIM_BEHIND_HOLD: Duration = Duration::from_millis(50);

/// Writes behind go out on ticks of this length, all those due in a tick together: the
/// client sends them in one flush and the broker reads them in one wake-up, where one each
/// would cost a wake-up of each side per write (what the broker's CPU went to, measured).
const WRITE_BEHIND_TICK: Duration = Duration::from_millis(20);

/// The first write-behind tick at least `after` from now.
pub fn write_behind_at(after: Duration) -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    let due = (tokio::time::Instant::now() + after).duration_since(epoch);
    let tick = WRITE_BEHIND_TICK.as_micros().max(1);
    let ticks = due.as_micros().div_ceil(tick);
    epoch + Duration::from_micros(u64::try_from(ticks * tick).unwrap_or(u64::MAX))
}

/// After a failure, how long the engine is taken as unreachable without asking it (so that
/// an outage costs each request nothing, not a timeout each).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The shared state and how it is used.
#[derive(Debug, Clone)]
pub struct SharedConfig {
    /// The engine.
    pub state: std::sync::Arc<dyn SharedState>,
    /// How long an operation may take before the engine counts as unreachable.
    pub timeout: Duration,
    /// Then.
    pub when_unreachable: WhenUnreachable,
    /// Until when (ms since the epoch) the engine is taken as unreachable.
    down_until_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Whether the last operation failed (an outage is logged when it starts and ends,
    /// not once per request: each is counted in the metrics).
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl SharedConfig {
    /// `state`, its operations bounded by `timeout`.
    pub fn new(
        state: std::sync::Arc<dyn SharedState>,
        timeout: Duration,
        when_unreachable: WhenUnreachable,
    ) -> SharedConfig {
        SharedConfig {
            state,
            timeout,
            when_unreachable,
            down_until_ms: std::sync::Arc::default(),
            down: std::sync::Arc::default(),
        }
    }

    /// Whether a fresh request of `terminal` is claimed behind: forwarded at once, its claim
    /// written to the group meanwhile, instead of waiting for the claim's round trip.
    ///
    /// Only for a terminal at home here (the group named this instance its home, the last it
    /// heard) and only in the `continue` policy with the engine answering. The claim is
    /// written when the request has been [`CLAIM_BEHIND_HOLD`] in flight, and lands within
    /// [`SharedConfig::timeout`] after (or counts as unreachable); one answered before that
    /// is claimed by its audit record alone, which the other instances follow on the audit
    /// stream into their own duplicate windows (milliseconds after the answer). A
    /// retransmission reaches another instance after its terminal's timeout and a
    /// reconnection, seconds later; there the terminal is not at home, so that instance
    /// finds the answer in its window, or claims synchronously and finds the claim. A terminal's home moves only with a request the group has not seen (a
    /// retransmission does not move it), and the engine counts a terminal at home only a
    /// while after it came (`[cluster] home_settle_s`), so the requests it still had
    /// outstanding elsewhere are claimed synchronously where they are retransmitted. A
    /// terminal that sends the same request to two instances within the hold, or
    /// retransmits one after longer than the settling time, is not covered: counted as
    /// `claim-behind` `lost` when it happens. Fail closed claims every request
    /// synchronously.
    pub fn claims_behind(&self, terminal: &[u8]) -> bool {
        use std::sync::atomic::Ordering;
        self.when_unreachable == WhenUnreachable::Continue
            && now_ms() >= self.down_until_ms.load(Ordering::Relaxed)
            && self.state.at_home(terminal)
    }

    /// Run `op` within the timeout; after a failure, for [`RETRY_AFTER`], fail at once.
    pub async fn within<T>(&self, op: SharedFuture<'_, T>) -> Result<T, Unreachable> {
        use std::sync::atomic::Ordering;
        if now_ms() < self.down_until_ms.load(Ordering::Relaxed) {
            return Err(Unreachable("unreachable a moment ago".into()));
        }
        let result = match tokio::time::timeout(self.timeout, op).await {
            Ok(r) => r,
            Err(_) => Err(Unreachable(format!("no answer in {:?}", self.timeout))),
        };
        match &result {
            Err(why) => {
                let until = now_ms() + RETRY_AFTER.as_millis() as u64;
                self.down_until_ms.store(until, Ordering::Relaxed);
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        reason = %why.0,
                        policy = ?self.when_unreachable,
                        "shared state unreachable: every request by the policy until it answers"
                    );
                }
            }
            Ok(_) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("shared state answering again");
                }
            }
        }
        result
    }
}
