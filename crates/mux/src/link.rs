//! Issuer links: a few persistent connections to an issuer host that many terminals' requests
//! share.
//!
//! # How a request travels
//! [`IssuerLink::send`] takes a decoded request, computes its match key (the MTI's request
//! class plus the configured fields, by default 11 and 41), and, with STAN remapping on,
//! gives it a field 11 of the link's own that no other request in flight (or recently timed
//! out) holds. The new STAN is written over the old one while the frame is encoded (a
//! [`Patch`]): the message is not re-encoded. The request waits in the in-flight table (a
//! `DashMap`, bounded per link) for the response with the same key, which the connection's
//! reader hands over with the terminal's STAN restored.
//!
//! # What can go wrong, and what the caller learns
//! - table full: [`MuxError::LinkBusy`] at once; no ready connection: [`MuxError::LinkDown`];
//!   same key already in flight: [`MuxError::DuplicateInFlight`]. None of these was sent.
//! - no response by the deadline: [`MuxError::Timeout`]; the connection closed with the
//!   request on it: [`MuxError::ConnectionLost`]; an undecodable answer:
//!   [`MuxError::MalformedResponse`]. The issuer may have acted on these
//!   ([`MuxError::outcome_unknown`]). A response that arrives after its deadline goes to the
//!   [`LateResponseHandler`], never to the caller that was told "timeout".
//!
//! # Connections
//! Each connection slot has a supervisor task: connect (primary endpoint first, then the
//! others), optional sign-on (0800, field 70 = 001; the connection is not used until it is
//! answered with 00), echo tests (field 70 = 301) when nothing has arrived for a while, down
//! after N missed echoes, reconnect with capped exponential backoff and jitter. Issuer echoes
//! are answered with 0810 by the reader.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use switchyard_iso8583::datetime::Civil;
use switchyard_iso8583::spec::{DataClass, FieldSpec, LengthKind};
use switchyard_iso8583::{MessageBuilder, MessageView, Mti, Spec};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{MuxError, Result, Side};
use crate::framing::{Frame, FrameCodec, Framing, Patch};
use crate::io::{write_frames, FrameReader, IoCounters, ReadEnd};
use crate::tls::ClientTls;

/// One address of an issuer host.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port`.
    pub addr: String,
    /// TLS settings, when the issuer speaks TLS.
    pub tls: Option<Arc<ClientTls>>,
}

/// How a request picks a connection among the ready ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Each in turn.
    RoundRobin,
    /// The one with the fewest requests waiting.
    LeastOutstanding,
}

/// Settings of one issuer link.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Name used in logs, errors and metrics.
    pub name: Arc<str>,
    /// Primary endpoint first, then the fall-backs.
    pub endpoints: Vec<Endpoint>,
    /// Persistent connections kept open.
    pub connections: usize,
    /// Framing on the issuer's stream.
    pub framing: Framing,
    /// Header sent before every message (must be as long as `framing.header`), e.g. a TPDU.
    pub header: Bytes,
    /// The dialect the issuer speaks; requests must be decoded with it.
    pub spec: &'static Spec,
    /// Requests in flight at once on the whole link.
    pub max_in_flight: usize,
    /// Deadline of each request.
    pub request_timeout: Duration,
    /// Fields that, with the MTI class, match a response to its request.
    pub match_fields: Vec<u8>,
    /// Give each request a link-unique STAN and restore the terminal's on the response.
    pub remap_stan: bool,
    /// The STANs handed out (an instance of a group has its own block, so that two
    /// instances never give the issuer one STAN at once).
    pub stans: std::ops::RangeInclusive<u32>,
    /// Connection choice.
    pub selection: Selection,
    /// Send a sign-on 0800 on each new connection and wait for its 0810.
    pub sign_on: bool,
    /// Send an echo 0800 when nothing arrived for this long (`None`: never).
    pub echo_interval: Option<Duration>,
    /// Deadline of an echo or sign-on.
    pub echo_timeout: Duration,
    /// Missed echoes in a row before the connection is closed.
    pub max_missed_echoes: u32,
    /// Deadline of a TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Largest reconnect delay.
    pub reconnect_max: Duration,
    /// Deadline of one write.
    pub write_timeout: Duration,
    /// How long a timed-out request's key is remembered, so that its late response is
    /// recognised (and its STAN not reused).
    pub late_window: Duration,
}

impl LinkConfig {
    /// How many STANs the link may hand out (at least 1).
    fn stan_count(&self) -> u32 {
        (self.stans.end().saturating_sub(*self.stans.start()))
            .saturating_add(1)
            .max(1)
    }

    /// Defaults for a link named `name` to one endpoint.
    pub fn new(name: &str, addr: &str, spec: &'static Spec) -> LinkConfig {
        LinkConfig {
            name: name.into(),
            endpoints: vec![Endpoint {
                addr: addr.to_string(),
                tls: None,
            }],
            connections: 1,
            framing: Framing::default(),
            header: Bytes::new(),
            spec,
            max_in_flight: 1024,
            request_timeout: Duration::from_secs(10),
            match_fields: vec![11, 41],
            remap_stan: true,
            stans: 1..=999_999,
            selection: Selection::LeastOutstanding,
            sign_on: false,
            echo_interval: Some(Duration::from_secs(30)),
            echo_timeout: Duration::from_secs(5),
            max_missed_echoes: 3,
            connect_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(30),
            write_timeout: Duration::from_secs(5),
            late_window: Duration::from_secs(120),
        }
    }

    /// Check the settings against each other and the spec; every problem in one message.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if let Err(e) = self.framing.validate() {
            problems.push(e.to_string());
        }
        if self.endpoints.is_empty() {
            problems.push("no endpoint".to_string());
        }
        if self.connections == 0 || self.max_in_flight == 0 {
            problems.push("connections and max_in_flight must be at least 1".to_string());
        }
        if self.max_in_flight >= 900_000 {
            problems.push("max_in_flight must stay well below the 999999 STANs".to_string());
        }
        if self.header.len() != self.framing.header.len() {
            problems.push(format!(
                "header is {} bytes, the framing's header {}",
                self.header.len(),
                self.framing.header.len()
            ));
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            problems.push("reconnect_min must be above zero and at most reconnect_max".into());
        }
        let mut key_bytes = 4;
        for &n in &self.match_fields {
            match self.spec.field(n) {
                Some(f) => key_bytes += 2 + f.encoded_len(usize::from(f.max)),
                None => problems.push(format!(
                    "match field {n} is not in spec {}",
                    self.spec.name()
                )),
            }
        }
        // The terminal's key adds field 41 when it is not a match field.
        if let Some(f) = self
            .spec
            .field(41)
            .filter(|_| !self.match_fields.contains(&41))
        {
            key_bytes += 2 + f.encoded_len(usize::from(f.max));
        }
        if key_bytes > MatchKey::CAPACITY {
            problems.push(format!(
                "match fields take up to {key_bytes} bytes, more than {}",
                MatchKey::CAPACITY
            ));
        }
        let stans = usize::try_from(self.stan_count()).unwrap_or(usize::MAX);
        if *self.stans.start() == 0 || *self.stans.end() > 999_999 || stans <= self.max_in_flight {
            problems.push(format!(
                "STANs {:?}: within 1..=999999 and more than max_in_flight ({})",
                self.stans, self.max_in_flight
            ));
        }
        if self.remap_stan || self.sign_on || self.echo_interval.is_some() {
            if stan_field(self.spec).is_none() {
                problems.push("STAN remapping, sign-on and echo need field 11 as fixed n6".into());
            }
            if !self.match_fields.contains(&11) {
                problems
                    .push("STAN remapping, sign-on and echo need field 11 in the match key".into());
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(MuxError::Config(format!(
                "link {}: {}",
                self.name,
                problems.join("; ")
            )))
        }
    }
}

fn stan_field(spec: &Spec) -> Option<FieldSpec> {
    spec.field(11)
        .filter(|f| f.length == LengthKind::Fixed && f.max == 6 && f.class == DataClass::N)
        .copied()
}

/// Work to do after a request has its place in the in-flight table and before it is
/// written (see [`IssuerLink::forward_with`]).
pub trait BeforeSend: Send {
    /// Run with the STAN the issuer will see; `false` stops the request.
    fn before_send(
        self,
        issuer_stan: Option<u32>,
    ) -> impl std::future::Future<Output = bool> + Send;
}

/// No work before sending.
#[derive(Debug, Clone, Copy)]
pub struct NoHook;

impl BeforeSend for NoHook {
    async fn before_send(self, _: Option<u32>) -> bool {
        true
    }
}

impl<F, Fut> BeforeSend for F
where
    F: FnOnce(Option<u32>) -> Fut + Send,
    Fut: std::future::Future<Output = bool> + Send,
{
    fn before_send(
        self,
        issuer_stan: Option<u32>,
    ) -> impl std::future::Future<Output = bool> + Send {
        self(issuer_stan)
    }
}

/// What became of a forwarded request.
#[derive(Debug)]
pub struct Forwarded {
    /// The STAN the issuer saw, when the link remapped it.
    pub issuer_stan: Option<u32>,
    /// The response (terminal's STAN restored) or why there is none.
    pub result: Result<MessageView<'static>>,
}

/// A response that came after its request had timed out (or its caller had gone).
#[derive(Debug)]
pub struct LateResponse {
    /// The link it came on.
    pub link: Arc<str>,
    /// The response, with the terminal's STAN restored.
    pub response: MessageView<'static>,
    /// How long after the request was sent it arrived.
    pub after: Duration,
}

/// Told about responses nobody waits for any more (the router reverses late approvals).
pub trait LateResponseHandler: Send + Sync + 'static {
    /// One late response.
    fn late_response(&self, late: LateResponse);
}

/// Takes the issuer's own network management requests that are not echoes (a key exchange
/// 0800): the link hands them over and sends back the answer it is given.
pub trait IssuerRequestHandler: Send + Sync + 'static {
    /// `Some(answer)` for a request this handler takes (the encoded 0810, or `None` from the
    /// future to send nothing); `None` to let the link answer it itself (echo, sign-on: 00).
    #[allow(clippy::type_complexity)]
    fn network_request(
        &self,
        link: &Arc<str>,
        request: &MessageView<'static>,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = Option<Bytes>> + Send>>>;
}

/// What a link has seen (read by the switch's metrics).
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Requests handed to a connection.
    pub sent: AtomicU64,
    /// Responses delivered to their caller.
    pub responses: AtomicU64,
    /// Requests refused because the in-flight table was full.
    pub busy: AtomicU64,
    /// Requests refused because no connection was ready.
    pub down: AtomicU64,
    /// Requests refused as duplicates of one in flight.
    pub duplicates: AtomicU64,
    /// Requests that timed out.
    pub timeouts: AtomicU64,
    /// Requests failed because their connection closed.
    pub connection_lost: AtomicU64,
    /// Responses after their deadline.
    pub late_responses: AtomicU64,
    /// Responses that matched nothing.
    pub unmatched_responses: AtomicU64,
    /// Responses that did not decode.
    pub malformed_responses: AtomicU64,
    /// Connections established.
    pub connects: AtomicU64,
    /// Connection attempts that failed (TCP or TLS).
    pub connect_failures: AtomicU64,
    /// Connections that ended.
    pub disconnects: AtomicU64,
    /// Sign-ons refused or unanswered.
    pub sign_on_failures: AtomicU64,
    /// Echo tests sent.
    pub echoes_sent: AtomicU64,
    /// Echo tests unanswered.
    pub echoes_missed: AtomicU64,
    /// Connections closed after too many missed echoes.
    pub echo_down: AtomicU64,
    /// Network management requests from the issuer answered.
    pub issuer_echoes_answered: AtomicU64,
    /// Frame and write counts.
    pub io: IoCounters,
}

/// State of one connection slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Not connected (waiting to reconnect).
    Down,
    /// Connecting or handshaking.
    Connecting,
    /// Connected, sign-on not yet answered.
    SigningOn,
    /// Carrying requests.
    Ready,
}

impl ConnectionState {
    fn from_u8(v: u8) -> ConnectionState {
        match v {
            1 => ConnectionState::Connecting,
            2 => ConnectionState::SigningOn,
            3 => ConnectionState::Ready,
            _ => ConnectionState::Down,
        }
    }
}

/// A match key: the MTI's request class and the match fields' encoded bytes, inline (no
/// allocation per request).
#[derive(Clone, Copy)]
pub struct MatchKey {
    len: u8,
    bytes: [u8; MatchKey::CAPACITY],
}

impl MatchKey {
    /// Bytes a key can hold.
    pub const CAPACITY: usize = 62;

    fn build<'a>(
        mti: Mti,
        fields: &[u8],
        mut value: impl FnMut(u8) -> Option<&'a [u8]>,
    ) -> Option<MatchKey> {
        let mut key = MatchKey {
            len: 0,
            bytes: [0; MatchKey::CAPACITY],
        };
        key.push(&mti.request_class().digits())?;
        for &n in fields {
            match value(n) {
                Some(v) => {
                    key.push(&[n, u8::try_from(v.len()).ok()?])?;
                    key.push(v)?;
                }
                None => key.push(&[n, 0xFF])?,
            }
        }
        Some(key)
    }

    fn push(&mut self, v: &[u8]) -> Option<()> {
        let at = usize::from(self.len);
        self.bytes.get_mut(at..at + v.len())?.copy_from_slice(v);
        self.len += v.len() as u8;
        Some(())
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl PartialEq for MatchKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}
impl Eq for MatchKey {}
impl Hash for MatchKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}
impl std::fmt::Debug for MatchKey {
    /// Only the length: a key holds a terminal id and STAN, which stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MatchKey({} bytes)", self.len)
    }
}

/// An encoded STAN (6 ASCII/EBCDIC bytes or 3 BCD bytes), inline.
#[derive(Debug, Clone, Copy)]
struct Stan {
    len: u8,
    bytes: [u8; 8],
}

impl Stan {
    fn from_encoded(raw: &[u8]) -> Option<Stan> {
        let mut bytes = [0u8; 8];
        bytes.get_mut(..raw.len())?.copy_from_slice(raw);
        Some(Stan {
            len: raw.len() as u8,
            bytes,
        })
    }

    fn encode(field: &FieldSpec, value: u32) -> Option<Stan> {
        let mut digits = [b'0'; 6];
        let mut v = value;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        let mut out = StanBuf(Stan {
            len: 0,
            bytes: [0; 8],
        });
        field.encode_value(&digits, &mut out).ok()?;
        Some(out.0)
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// `Extend<u8>` over a [`Stan`], for the codec's value encoder.
struct StanBuf(Stan);

impl<'a> Extend<&'a u8> for StanBuf {
    fn extend<I: IntoIterator<Item = &'a u8>>(&mut self, iter: I) {
        Extend::<u8>::extend(self, iter.into_iter().copied());
    }
}

impl Extend<u8> for StanBuf {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        for b in iter {
            if let Some(slot) = self.0.bytes.get_mut(usize::from(self.0.len)) {
                *slot = b;
                self.0.len += 1;
            }
        }
    }
}

type Reply = Result<MessageView<'static>>;

struct Pending {
    reply: oneshot::Sender<Reply>,
    conn_id: u64,
    slot: usize,
    /// The terminal's STAN, to put back on the response.
    restore: Option<Stan>,
    sent_at: Instant,
}

struct TimedOut {
    at: Instant,
    sent_at: Instant,
    restore: Option<Stan>,
}

#[derive(Clone)]
struct ConnHandle {
    id: u64,
    tx: mpsc::Sender<Frame>,
}

struct Slot {
    state: AtomicU8,
    conn: RwLock<Option<ConnHandle>>,
    outstanding: AtomicUsize,
    endpoint: AtomicUsize,
    /// Milliseconds since the link's epoch when a frame last arrived.
    last_rx_ms: AtomicU64,
}

/// The match maps' hasher: their keys come from the network, so randomly seeded; foldhash
/// rather than SipHash, which took several per cent of the switch's CPU on these short keys.
type KeyHasher = foldhash::fast::RandomState;

struct Shared {
    cfg: LinkConfig,
    stan_field: Option<FieldSpec>,
    /// The match fields plus field 41: what identifies a terminal's request.
    terminal_fields: Vec<u8>,
    pending: DashMap<MatchKey, Pending, KeyHasher>,
    /// Terminal keys in flight, when STANs are remapped (duplicates are refused by these).
    originals: DashMap<MatchKey, (), KeyHasher>,
    timed_out: DashMap<MatchKey, TimedOut, KeyHasher>,
    in_flight: AtomicUsize,
    next_stan: AtomicU32,
    slots: Vec<Slot>,
    round_robin: AtomicUsize,
    next_conn_id: AtomicU64,
    ready: watch::Sender<usize>,
    late: Option<Arc<dyn LateResponseHandler>>,
    issuer_requests: std::sync::OnceLock<Arc<dyn IssuerRequestHandler>>,
    stats: LinkStats,
    epoch: Instant,
}

/// A multiplexed issuer link. Dropping it stops its connections.
pub struct IssuerLink {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for IssuerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerLink")
            .field("name", &self.shared.cfg.name)
            .field("ready_connections", &self.ready_connections())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Drop for IssuerLink {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Counts a request in flight until dropped.
struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Holds a terminal key in `originals` until dropped.
struct OriginalKey<'a>(&'a Shared, MatchKey);

impl Drop for OriginalKey<'_> {
    fn drop(&mut self) {
        self.0.originals.remove(&self.1);
    }
}

/// Removes a request from the table if its caller stops waiting (the future is dropped):
/// its response, if one comes, is then handled as late.
struct Waiting<'a> {
    shared: &'a Shared,
    key: MatchKey,
    armed: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.expire(&self.key);
        }
    }
}

impl IssuerLink {
    /// Validate `config` and start its connections (inside a tokio runtime).
    pub fn start(
        config: LinkConfig,
        late: Option<Arc<dyn LateResponseHandler>>,
    ) -> Result<IssuerLink> {
        config.validate()?;
        let slots = (0..config.connections)
            .map(|_| Slot {
                state: AtomicU8::new(0),
                conn: RwLock::new(None),
                outstanding: AtomicUsize::new(0),
                endpoint: AtomicUsize::new(0),
                last_rx_ms: AtomicU64::new(0),
            })
            .collect();
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos());
        let first_stan = seed % config.stan_count();
        let mut terminal_fields = config.match_fields.clone();
        if !terminal_fields.contains(&41) && config.spec.field(41).is_some() {
            terminal_fields.push(41);
        }
        let shared = Arc::new(Shared {
            terminal_fields,
            stan_field: stan_field(config.spec),
            cfg: config,
            pending: DashMap::default(),
            originals: DashMap::default(),
            timed_out: DashMap::default(),
            in_flight: AtomicUsize::new(0),
            // Start somewhere arbitrary so that a restart does not reuse the last STANs.
            next_stan: AtomicU32::new(first_stan),
            slots,
            round_robin: AtomicUsize::new(0),
            next_conn_id: AtomicU64::new(1),
            ready: watch::channel(0).0,
            late,
            issuer_requests: std::sync::OnceLock::new(),
            stats: LinkStats::default(),
            epoch: Instant::now(),
        });
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        for slot in 0..shared.slots.len() {
            tasks.spawn(supervise(shared.clone(), slot, shutdown.clone()));
        }
        tasks.spawn(forget_timed_out(shared.clone(), shutdown.clone()));
        tasks.close();
        Ok(IssuerLink {
            shared,
            shutdown,
            tasks,
        })
    }

    /// Hand the issuer's network requests to `handler` (once; later calls are ignored).
    pub fn set_issuer_requests(&self, handler: Arc<dyn IssuerRequestHandler>) {
        let _ = self.shared.issuer_requests.set(handler);
    }

    /// The link's name.
    pub fn name(&self) -> &Arc<str> {
        &self.shared.cfg.name
    }

    /// The link's dialect.
    pub fn spec(&self) -> &'static Spec {
        self.shared.cfg.spec
    }

    /// Send `request` and wait for its response (with the terminal's STAN restored).
    pub async fn send(&self, request: &MessageView<'static>) -> Result<MessageView<'static>> {
        self.forward(request).await.result
    }

    /// [`send`](Self::send), also telling which STAN the issuer saw (the audit log keeps it,
    /// and a reversal must quote it).
    pub async fn forward(&self, request: &MessageView<'static>) -> Forwarded {
        self.forward_with(request, NoHook).await
    }

    /// [`forward`](Self::forward), running `before_send` with the issuer's STAN once the
    /// request holds its place in the in-flight table and before a byte is written: the
    /// router durably records the request there, so that a crash between sending and
    /// answering leaves a trace it can reverse. When the hook returns `false` the request
    /// is not sent.
    pub async fn forward_with(
        &self,
        request: &MessageView<'static>,
        before_send: impl BeforeSend,
    ) -> Forwarded {
        if !std::ptr::eq(request.spec(), self.shared.cfg.spec) {
            let error = MuxError::Config(format!(
                "link {} speaks {}, the request was decoded as {}",
                self.shared.cfg.name,
                self.shared.cfg.spec.name(),
                request.spec().name()
            ));
            return Forwarded {
                issuer_stan: None,
                result: Err(error),
            };
        }
        let remap = self.shared.cfg.remap_stan;
        let mut issuer_stan = None;
        let result = self
            .shared
            .exchange(
                request,
                None,
                remap,
                self.shared.cfg.request_timeout,
                &mut issuer_stan,
                before_send,
            )
            .await;
        Forwarded {
            issuer_stan,
            result,
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    /// Connections ready to carry requests.
    pub fn ready_connections(&self) -> usize {
        *self.shared.ready.borrow()
    }

    /// Whether at least one connection is ready.
    pub fn is_ready(&self) -> bool {
        self.ready_connections() > 0
    }

    /// Wait until at least one connection is ready; `false` if `timeout` passed first.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.ready.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|&n| n > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Each connection slot's state and the index of the endpoint it uses (or last used).
    pub fn connections(&self) -> Vec<(ConnectionState, usize)> {
        self.shared
            .slots
            .iter()
            .map(|s| {
                (
                    ConnectionState::from_u8(s.state.load(Ordering::Acquire)),
                    s.endpoint.load(Ordering::Acquire),
                )
            })
            .collect()
    }

    /// The counters.
    pub fn stats(&self) -> &LinkStats {
        &self.shared.stats
    }

    /// Close every connection (requests in flight fail with `ConnectionLost`) and wait for
    /// the link's tasks to end.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tasks.wait().await;
    }
}

impl Shared {
    fn key_of(&self, view: &MessageView<'_>, stan: Option<&[u8]>) -> Result<MatchKey> {
        self.key_with(&self.cfg.match_fields, view, stan)
    }

    fn key_with(
        &self,
        fields: &[u8],
        view: &MessageView<'_>,
        stan: Option<&[u8]>,
    ) -> Result<MatchKey> {
        MatchKey::build(view.mti(), fields, |n| match (n, stan) {
            (11, Some(s)) => Some(s),
            _ => view.raw(n),
        })
        .ok_or_else(|| MuxError::Config("match key longer than its capacity".into()))
    }

    fn choose_slot(&self) -> Option<usize> {
        let n = self.slots.len();
        let start = self.round_robin.fetch_add(1, Ordering::Relaxed);
        let ready = |i: &usize| {
            self.slots[*i].state.load(Ordering::Acquire) == ConnectionState::Ready as u8
        };
        let mut order = (0..n).map(|k| (start + k) % n);
        match self.cfg.selection {
            Selection::RoundRobin => order.find(ready),
            Selection::LeastOutstanding => order
                .filter(ready)
                .min_by_key(|&i| self.slots[i].outstanding.load(Ordering::Relaxed)),
        }
    }

    /// The next STAN of the link's range (`next_stan` holds the last one's offset in it).
    fn next_stan(&self) -> u32 {
        let count = self.cfg.stan_count();
        let last = self
            .next_stan
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some((v + 1) % count)
            })
            .unwrap_or(0);
        self.cfg.stans.start() + (last + 1) % count
    }

    /// Remove a request from the table (it is answered, failed or expired).
    fn take(&self, key: &MatchKey) -> Option<Pending> {
        let (_, p) = self.pending.remove(key)?;
        self.slots[p.slot]
            .outstanding
            .fetch_sub(1, Ordering::Relaxed);
        Some(p)
    }

    /// A request nobody waits for any more: remember it so that its late response is
    /// recognised and its STAN is not handed out again meanwhile.
    fn expire(&self, key: &MatchKey) -> bool {
        let Some(p) = self.take(key) else {
            return false;
        };
        let timed_out = TimedOut {
            at: Instant::now(),
            sent_at: p.sent_at,
            restore: p.restore,
        };
        // Bounded: past this, late responses are only counted as unmatched.
        if self.timed_out.len() < self.cfg.max_in_flight.saturating_mul(16) {
            self.timed_out.insert(*key, timed_out);
        }
        true
    }

    /// Put a request on a connection and wait for its response. `slot`: a given connection
    /// (network management) or any ready one. `remap`: give it a link STAN.
    async fn exchange(
        &self,
        request: &MessageView<'static>,
        slot: Option<usize>,
        remap: bool,
        timeout: Duration,
        issuer_stan: &mut Option<u32>,
        before_send: impl BeforeSend,
    ) -> Result<MessageView<'static>> {
        let cfg = &self.cfg;
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= cfg.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.stats.busy.fetch_add(1, Ordering::Relaxed);
            return Err(MuxError::LinkBusy {
                link: cfg.name.clone(),
                limit: cfg.max_in_flight,
            });
        }
        let _in_flight = InFlight(self);
        let duplicate = || {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            MuxError::DuplicateInFlight {
                link: cfg.name.clone(),
            }
        };
        let down = || {
            self.stats.down.fetch_add(1, Ordering::Relaxed);
            MuxError::LinkDown {
                link: cfg.name.clone(),
            }
        };
        let original = self.key_of(request, None)?;
        let stan_range = request.range(11).filter(|_| remap);
        let _original_guard = match stan_range {
            // The terminal's own key always includes its terminal id: two terminals may use
            // the same STAN even when the issuer matches on the STAN alone.
            Some(_) => {
                match self
                    .originals
                    .entry(self.key_with(&self.terminal_fields, request, None)?)
                {
                    dashmap::Entry::Occupied(_) => return Err(duplicate()),
                    dashmap::Entry::Vacant(v) => {
                        let key = *v.key();
                        v.insert(());
                        Some(OriginalKey(self, key))
                    }
                }
            }
            None => None,
        };
        let slot = match slot {
            Some(s) => s,
            None => self.choose_slot().ok_or_else(down)?,
        };
        let conn = self.slots[slot]
            .conn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(down)?;
        let (reply, mut answer) = oneshot::channel();
        let mut pending = Pending {
            reply,
            conn_id: conn.id,
            slot,
            restore: None,
            sent_at: Instant::now(),
        };
        let (key, patch) = match (stan_range, self.stan_field) {
            (Some(range), Some(field)) => {
                pending.restore = request.raw(11).and_then(Stan::from_encoded);
                let mut placed = None;
                // Bounded: at most max_in_flight + timed-out keys can be taken.
                for _ in 0..cfg.max_in_flight.saturating_mul(17) + 2 {
                    let number = self.next_stan();
                    let stan = Stan::encode(&field, number).ok_or_else(|| {
                        MuxError::Config("field 11 cannot hold a link STAN".into())
                    })?;
                    let key = self.key_of(request, Some(stan.as_slice()))?;
                    if self.timed_out.contains_key(&key) {
                        continue;
                    }
                    if let dashmap::Entry::Vacant(v) = self.pending.entry(key) {
                        v.insert(pending);
                        *issuer_stan = Some(number);
                        placed = Some((key, Patch::new(range.start, stan.as_slice())));
                        break;
                    }
                }
                placed.ok_or_else(duplicate)?
            }
            _ => match self.pending.entry(original) {
                dashmap::Entry::Occupied(_) => return Err(duplicate()),
                dashmap::Entry::Vacant(v) => {
                    v.insert(pending);
                    (original, None)
                }
            },
        };
        self.slots[slot].outstanding.fetch_add(1, Ordering::Relaxed);
        let mut waiting = Waiting {
            shared: self,
            key,
            armed: true,
        };
        if !before_send.before_send(*issuer_stan).await {
            // Never written.
            waiting.armed = false;
            self.take(&key);
            return Err(MuxError::NotSent {
                link: cfg.name.clone(),
            });
        }
        let frame = Frame {
            header: cfg.header.clone(),
            message: request.buffer().clone(),
            patch,
        };
        if conn.tx.try_send(frame).is_err() {
            // Never written: safe to report as down.
            waiting.armed = false;
            self.take(&key);
            return Err(down());
        }
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        let result = match tokio::time::timeout(timeout, &mut answer).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(MuxError::ConnectionLost {
                link: cfg.name.clone(),
            }),
            Err(_) if self.expire(&key) => {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(MuxError::Timeout {
                    link: cfg.name.clone(),
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
            // The response was being handed over as the deadline passed: take it.
            Err(_) => answer.await.unwrap_or_else(|_| {
                Err(MuxError::ConnectionLost {
                    link: cfg.name.clone(),
                })
            }),
        };
        waiting.armed = false;
        result
    }

    /// A response (or an issuer request) arrived on connection `conn_id` of `slot`.
    fn on_frame(&self, frame: Frame, tx: &mpsc::Sender<Frame>) {
        let cfg = &self.cfg;
        let view = match MessageView::decode(cfg.spec, frame.message.clone()) {
            Ok(view) => view,
            Err(error) => return self.on_malformed(&frame.message, error),
        };
        let mti = view.mti();
        if mti.is_request() {
            if mti.class() == 8 {
                let taken = self
                    .issuer_requests
                    .get()
                    .and_then(|h| h.network_request(&cfg.name, &view));
                match taken {
                    Some(answer) => {
                        let (tx, header) = (tx.clone(), cfg.framing.header.reply_to(&frame.header));
                        tokio::spawn(async move {
                            if let Some(bytes) = answer.await {
                                let _ = tx.send(Frame::with_header(header, bytes)).await;
                            }
                        });
                    }
                    None => self.answer_network_request(&view, &frame.header, tx),
                }
            } else {
                self.stats
                    .unmatched_responses
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(link = %cfg.name, mti = %mti, "issuer sent a request the link does not take");
            }
            return;
        }
        let Ok(key) = self.key_of(&view, None) else {
            self.stats
                .unmatched_responses
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        if let Some(p) = self.take(&key) {
            let _ = p.reply.send(restore_stan(view, p.restore));
            self.stats.responses.fetch_add(1, Ordering::Relaxed);
        } else if let Some((_, t)) = self.timed_out.remove(&key) {
            self.stats.late_responses.fetch_add(1, Ordering::Relaxed);
            tracing::info!(link = %cfg.name, mti = %mti, "late response");
            if let (Some(handler), Ok(response)) = (&self.late, restore_stan(view, t.restore)) {
                handler.late_response(LateResponse {
                    link: cfg.name.clone(),
                    response,
                    after: t.sent_at.elapsed(),
                });
            }
        } else {
            self.stats
                .unmatched_responses
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(link = %cfg.name, mti = %mti, "response matches no request");
        }
    }

    /// An undecodable response still fails its request when its MTI and match fields
    /// could be read, so the caller learns at once that the outcome is unknown.
    fn on_malformed(&self, message: &Bytes, error: switchyard_iso8583::Error) {
        self.stats
            .malformed_responses
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(link = %self.cfg.name, %error, "undecodable response from issuer");
        let salvage = error.salvage();
        let key = salvage.mti.and_then(Mti::new).and_then(|mti| {
            MatchKey::build(mti, &self.cfg.match_fields, |n| match n {
                11 => salvage.stan(message),
                41 => salvage.terminal_id(message),
                _ => None,
            })
        });
        if let Some(p) = key.and_then(|k| self.take(&k)) {
            let _ = p.reply.send(Err(MuxError::MalformedResponse {
                link: self.cfg.name.clone(),
                source: error,
            }));
        }
    }

    fn answer_network_request(
        &self,
        view: &MessageView<'static>,
        header: &Bytes,
        tx: &mpsc::Sender<Frame>,
    ) {
        let mut builder = MessageBuilder::new(self.cfg.spec, view.mti());
        match builder.respond_to(view, b"00") {
            Ok(_) => {
                let header = self.cfg.framing.header.reply_to(header);
                if tx
                    .try_send(Frame::with_header(header, builder.encode()))
                    .is_ok()
                {
                    self.stats
                        .issuer_echoes_answered
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(error) => {
                tracing::warn!(link = %self.cfg.name, %error, "cannot answer the issuer's network request")
            }
        }
    }

    /// Fail every request waiting on connection `conn_id`: their outcome is unknown.
    fn fail_connection(&self, conn_id: u64) {
        let keys: Vec<MatchKey> = self
            .pending
            .iter()
            .filter(|e| e.value().conn_id == conn_id)
            .map(|e| *e.key())
            .collect();
        for key in keys {
            if let Some(p) = self.take(&key) {
                self.stats.connection_lost.fetch_add(1, Ordering::Relaxed);
                let _ = p.reply.send(Err(MuxError::ConnectionLost {
                    link: self.cfg.name.clone(),
                }));
            }
        }
    }

    /// Take connection `conn_id` out of its slot (if it is still there) and fail what was
    /// waiting on it.
    fn close_connection(&self, slot: usize, conn_id: u64) {
        {
            let mut current = self.slots[slot]
                .conn
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if current.as_ref().is_some_and(|h| h.id == conn_id) {
                *current = None;
            }
        }
        self.fail_connection(conn_id);
    }

    fn set_state(&self, slot: usize, state: ConnectionState) {
        self.slots[slot].state.store(state as u8, Ordering::Release);
        let ready = self
            .slots
            .iter()
            .filter(|s| s.state.load(Ordering::Acquire) == ConnectionState::Ready as u8)
            .count();
        self.ready.send_replace(ready);
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// An 0800 of the link's own (sign-on 001, echo 301) on connection `slot`.
    async fn network_exchange(&self, slot: usize, code: &[u8; 3]) -> Result<MessageView<'static>> {
        let spec = self.cfg.spec;
        let codec_err = |source| MuxError::Codec {
            side: Side::Local,
            source,
        };
        let mut builder =
            MessageBuilder::new(spec, Mti::new(*b"0800").unwrap_or_else(|| unreachable!()));
        if spec.field(7).is_some() {
            builder
                .set(7, transmission_time(SystemTime::now()))
                .map_err(codec_err)?;
        }
        builder
            .set_u64(11, u64::from(self.next_stan()))
            .map_err(codec_err)?;
        builder.set(70, code).map_err(codec_err)?;
        let view = MessageView::decode(spec, builder.encode()).map_err(codec_err)?;
        self.exchange(
            &view,
            Some(slot),
            false,
            self.cfg.echo_timeout,
            &mut None,
            NoHook,
        )
        .await
    }
}

fn restore_stan(mut view: MessageView<'static>, stan: Option<Stan>) -> Reply {
    if let Some(stan) = stan {
        view.patch_fixed(11, stan.as_slice())
            .map_err(|source| MuxError::Codec {
                side: Side::Upstream,
                source,
            })?;
    }
    Ok(view)
}

/// Field 7 (MMDDhhmmss, UTC) for `now`.
fn transmission_time(now: SystemTime) -> [u8; 10] {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Civil::from_unix(i64::try_from(secs).unwrap_or(0)).mmddhhmmss()
}

/// Capped exponential backoff with jitter: attempt k waits a random time between half and
/// all of `min * 2^k`, never more than `max`.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// A backoff between `min` and `max`, with its own jitter seed.
    pub fn new(min: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            min,
            max,
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: jitter needs no cryptographic quality.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let fraction = 0.5 + (self.rng % 1000) as f64 / 2000.0;
        ceiling.mul_f64(fraction).max(self.min.min(ceiling))
    }

    /// Start again from `min` (after a connection that worked).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Forget timed-out keys after the late window.
async fn forget_timed_out(shared: Arc<Shared>, shutdown: CancellationToken) {
    let tick =
        (shared.cfg.late_window / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let window = shared.cfg.late_window;
        shared.timed_out.retain(|_, t| t.at.elapsed() < window);
    }
}

/// Keep connection `slot` up until shutdown.
async fn supervise(shared: Arc<Shared>, slot: usize, shutdown: CancellationToken) {
    let cfg = &shared.cfg;
    let seed = shared.epoch.elapsed().as_nanos() as u64
        ^ (slot as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut backoff = Backoff::new(cfg.reconnect_min, cfg.reconnect_max, seed);
    // Failing to connect is a warning; staying down past the echo budget (the time a
    // connection may go unanswered before it is dropped) is an error, said once per outage.
    let budget =
        cfg.echo_interval.unwrap_or(Duration::from_secs(30)) * cfg.max_missed_echoes.max(1);
    let mut down_since: Option<(Instant, bool)> = None;
    while !shutdown.is_cancelled() {
        for (index, endpoint) in cfg.endpoints.iter().enumerate() {
            shared.set_state(slot, ConnectionState::Connecting);
            let connected = tokio::select! {
                _ = shutdown.cancelled() => break,
                c = tokio::time::timeout(cfg.connect_timeout, connect(endpoint)) => c,
            };
            let outcome = match connected {
                Ok(Ok(Stream::Plain(s))) => {
                    Some(run_connection(&shared, slot, index, s, &shutdown).await)
                }
                Ok(Ok(Stream::Tls(s))) => {
                    Some(run_connection(&shared, slot, index, *s, &shutdown).await)
                }
                Ok(Err(e)) => {
                    tracing::warn!(link = %cfg.name, endpoint = %endpoint.addr, error = %e, "connect failed");
                    None
                }
                Err(_) => {
                    tracing::warn!(link = %cfg.name, endpoint = %endpoint.addr, "connect timed out");
                    None
                }
            };
            match outcome {
                None => {
                    shared
                        .stats
                        .connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                    let (since, said) = down_since.get_or_insert((Instant::now(), false));
                    if !*said && since.elapsed() >= budget {
                        *said = true;
                        tracing::error!(link = %cfg.name, down_s = since.elapsed().as_secs(), "link connection still down past its echo budget");
                    }
                }
                Some(lasted) => {
                    down_since = None;
                    // Only a connection that worked for a while resets the backoff: an
                    // issuer that accepts and drops at once is still retried ever more slowly.
                    if lasted >= cfg.reconnect_max {
                        backoff.reset();
                    }
                    break;
                }
            }
        }
        shared.set_state(slot, ConnectionState::Down);
        let delay = backoff.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    shared.set_state(slot, ConnectionState::Down);
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn connect(endpoint: &Endpoint) -> Result<Stream> {
    let io = |e| MuxError::io(Side::Upstream, e);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&endpoint.addr)
        .await
        .map_err(io)?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                return match &endpoint.tls {
                    None => Ok(Stream::Plain(tcp)),
                    Some(tls) => {
                        let stream = tls
                            .connector()
                            .connect(tls.server_name(), tcp)
                            .await
                            .map_err(io)?;
                        Ok(Stream::Tls(Box::new(stream)))
                    }
                };
            }
            Err(e) => last = Some(e),
        }
    }
    Err(io(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "address resolves to nothing")
    })))
}

/// Serve one connection until it closes; how long it was ready.
async fn run_connection<S>(
    shared: &Arc<Shared>,
    slot: usize,
    endpoint: usize,
    stream: S,
    shutdown: &CancellationToken,
) -> Duration
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let cfg = &shared.cfg;
    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    shared.stats.connects.fetch_add(1, Ordering::Relaxed);
    shared.slots[slot]
        .endpoint
        .store(endpoint, Ordering::Release);
    shared.slots[slot]
        .last_rx_ms
        .store(shared.now_ms(), Ordering::Relaxed);
    tracing::info!(link = %cfg.name, endpoint = %cfg.endpoints[endpoint].addr, "connected");
    let (input, output) = tokio::io::split(stream);
    let codec = FrameCodec::new(cfg.framing);
    let (tx, rx) = mpsc::channel::<Frame>(cfg.max_in_flight + 16);
    let mut writer: JoinHandle<Result<()>> = {
        let (shared, codec) = (shared.clone(), codec.clone());
        tokio::spawn(async move {
            let s = &shared;
            write_frames(
                output,
                rx,
                codec,
                Side::Upstream,
                s.cfg.write_timeout,
                &s.stats.io,
            )
            .await
            // What was not written fails with the connection (outcome unknown): the
            // requests' callers learn it from the in-flight table.
            .map_err(|f| f.error)
        })
    };
    let mut reader: JoinHandle<ReadEnd> = {
        let (shared, tx) = (shared.clone(), tx.clone());
        let mut frames = FrameReader::new(input, codec, Side::Upstream);
        tokio::spawn(async move {
            loop {
                // A response is one frame: it may take as long to arrive as a request may wait.
                match frames.next(shared.cfg.request_timeout, None).await {
                    Ok(frame) => {
                        shared.slots[slot]
                            .last_rx_ms
                            .store(shared.now_ms(), Ordering::Relaxed);
                        shared.stats.io.frames_read.fetch_add(1, Ordering::Relaxed);
                        shared.on_frame(frame, &tx);
                    }
                    Err(end) => {
                        // Whatever was waiting on this connection learns now, not at its deadline.
                        shared.close_connection(slot, conn_id);
                        return end;
                    }
                }
            }
        })
    };
    *shared.slots[slot]
        .conn
        .write()
        .unwrap_or_else(|p| p.into_inner()) = Some(ConnHandle { id: conn_id, tx });

    let mut ready = false;
    let mut ready_since = Instant::now();
    let mut missed = 0u32;
    let tick = cfg.echo_interval.map_or(Duration::from_secs(1), |i| {
        (i / 4).max(Duration::from_millis(10))
    });
    if cfg.sign_on {
        shared.set_state(slot, ConnectionState::SigningOn);
    }
    let end = loop {
        if !ready && !cfg.sign_on {
            ready = true;
            ready_since = Instant::now();
            shared.set_state(slot, ConnectionState::Ready);
        }
        if !ready {
            // Sign-on, while the reader is already running to take its answer.
            let signed_on = tokio::select! {
                r = shared.network_exchange(slot, b"001") => r,
                _ = shutdown.cancelled() => break "shutdown",
            };
            match signed_on {
                Ok(resp) if resp.raw(39) == encoded_approval(cfg.spec).as_deref() => {
                    ready = true;
                    ready_since = Instant::now();
                    shared.set_state(slot, ConnectionState::Ready);
                    tracing::info!(link = %cfg.name, "signed on");
                    continue;
                }
                Ok(_) | Err(_) => {
                    shared
                        .stats
                        .sign_on_failures
                        .fetch_add(1, Ordering::Relaxed);
                    break "sign-on refused or unanswered";
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break "shutdown",
            r = &mut reader => break match r {
                Ok(ReadEnd::Eof) => "closed by issuer",
                Ok(ReadEnd::Error(e)) => { tracing::warn!(link = %cfg.name, error = %e, "read failed"); "read failed" }
                _ => "reader ended",
            },
            r = &mut writer => {
                if let Ok(Err(e)) = r {
                    tracing::warn!(link = %cfg.name, error = %e, "write failed");
                }
                break "write failed";
            }
            _ = tokio::time::sleep(tick) => {}
        }
        let Some(interval) = cfg.echo_interval else {
            continue;
        };
        let quiet = shared
            .now_ms()
            .saturating_sub(shared.slots[slot].last_rx_ms.load(Ordering::Relaxed));
        if quiet < interval.as_millis() as u64 {
            missed = 0;
            continue;
        }
        shared.stats.echoes_sent.fetch_add(1, Ordering::Relaxed);
        match shared.network_exchange(slot, b"301").await {
            Ok(_) => missed = 0,
            Err(_) => {
                missed += 1;
                shared.stats.echoes_missed.fetch_add(1, Ordering::Relaxed);
                if missed >= cfg.max_missed_echoes {
                    shared.stats.echo_down.fetch_add(1, Ordering::Relaxed);
                    break "echo tests unanswered";
                }
            }
        }
    };
    if end == "echo tests unanswered" {
        tracing::error!(link = %cfg.name, reason = end, "connection down");
    } else {
        tracing::warn!(link = %cfg.name, reason = end, "connection down");
    }
    shared.set_state(slot, ConnectionState::Down);
    shared.stats.disconnects.fetch_add(1, Ordering::Relaxed);
    shared.close_connection(slot, conn_id);
    reader.abort();
    writer.abort();
    if ready {
        ready_since.elapsed()
    } else {
        Duration::ZERO
    }
}

/// Field 39 = "00" as the spec encodes it.
fn encoded_approval(spec: &Spec) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(2);
    spec.field(39)?.encode_value(b"00", &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_within_its_cap() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut b = Backoff::new(min, max, 42);
        let delays: Vec<Duration> = (0..30).map(|_| b.next_delay()).collect();
        assert!(
            delays.iter().all(|d| *d >= min / 2 && *d <= max),
            "{delays:?}"
        );
        assert!(delays[0] <= min);
        assert!(
            delays[10..].iter().all(|d| *d >= max / 2),
            "reaches the cap: {delays:?}"
        );
        // Jitter: not all capped delays are equal.
        assert!(delays[10..].windows(2).any(|w| w[0] != w[1]));
        b.reset();
        assert!(b.next_delay() <= min);
    }

    #[test]
    fn transmission_time_is_mmddhhmmss_utc() {
        // 2026-11-24 05:44:31 UTC
        let t = UNIX_EPOCH + Duration::from_secs(1_795_499_071);
        assert_eq!(&transmission_time(t), b"1124054431");
        assert_eq!(&transmission_time(UNIX_EPOCH), b"0101000000");
    }

    #[test]
    fn match_keys_use_the_request_class_and_mark_absent_fields() {
        let fields = [11u8, 41];
        let mti = |s| Mti::parse(s).unwrap();
        let values = |n: u8| match n {
            11 => Some(&b"000123"[..]),
            41 => Some(&b"TERM0001"[..]),
            _ => None,
        };
        let request = MatchKey::build(mti("0200"), &fields, values).unwrap();
        assert_eq!(
            MatchKey::build(mti("0210"), &fields, values).unwrap(),
            request
        );
        assert_ne!(
            MatchKey::build(mti("0110"), &fields, values).unwrap(),
            request
        );
        let repeat = MatchKey::build(mti("0401"), &fields, values).unwrap();
        assert_eq!(
            MatchKey::build(mti("0410"), &fields, values).unwrap(),
            repeat
        );
        let without_41 = MatchKey::build(mti("0200"), &fields, |n| {
            (n == 11).then_some(&b"000123"[..])
        });
        assert_ne!(without_41.unwrap(), request);
        assert!(MatchKey::build(mti("0200"), &[2], |_| Some(&[0u8; 70][..])).is_none());
    }

    #[test]
    fn stans_encode_per_spec_and_wrap_within_six_digits() {
        let ascii = switchyard_iso8583::shipped("iso8583-1987-ascii").unwrap();
        let bcd = switchyard_iso8583::shipped("iso8583-1987-bcd").unwrap();
        let f = stan_field(ascii).unwrap();
        assert_eq!(Stan::encode(&f, 42).unwrap().as_slice(), b"000042");
        let f = stan_field(bcd).unwrap();
        assert_eq!(
            Stan::encode(&f, 123_456).unwrap().as_slice(),
            &[0x12, 0x34, 0x56]
        );
        let stans_of = |stans, last| {
            let shared = Shared {
                terminal_fields: vec![11, 41],
                stan_field: stan_field(ascii),
                cfg: LinkConfig {
                    stans,
                    ..LinkConfig::new("t", "127.0.0.1:1", ascii)
                },
                pending: DashMap::default(),
                originals: DashMap::default(),
                timed_out: DashMap::default(),
                in_flight: AtomicUsize::new(0),
                next_stan: AtomicU32::new(last),
                slots: Vec::new(),
                round_robin: AtomicUsize::new(0),
                next_conn_id: AtomicU64::new(1),
                ready: watch::channel(0).0,
                late: None,
                issuer_requests: std::sync::OnceLock::new(),
                stats: LinkStats::default(),
                epoch: Instant::now(),
            };
            (0..4).map(|_| shared.next_stan()).collect::<Vec<u32>>()
        };
        assert_eq!(stans_of(1..=999_999, 999_997), [999_999, 1, 2, 3]);
        // An instance's block of a group: within it, round and round.
        assert_eq!(
            stans_of(200_000..=200_004, 3),
            [200_004, 200_000, 200_001, 200_002]
        );
    }

    #[test]
    fn validation_lists_every_problem() {
        let ascii = switchyard_iso8583::shipped("iso8583-1987-ascii").unwrap();
        let mut cfg = LinkConfig::new("bad", "127.0.0.1:1", ascii);
        cfg.endpoints.clear();
        cfg.match_fields = vec![41, 200];
        cfg.header = Bytes::from_static(b"xx");
        cfg.stans = 1..=1000; // no more than max_in_flight (1024)
        let msg = cfg.validate().unwrap_err().to_string();
        for part in [
            "STANs 1..=1000",
            "no endpoint",
            "match field 200",
            "header is 2 bytes",
            "field 11 in the match key",
        ] {
            assert!(msg.contains(part), "{part} missing from {msg}");
        }
        assert!(LinkConfig::new("ok", "127.0.0.1:1", ascii)
            .validate()
            .is_ok());
    }
}
