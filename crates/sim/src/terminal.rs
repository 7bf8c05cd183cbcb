//! A terminal load generator: many connections sending realistic 0200/0100 requests with
//! unique STANs per terminal, closed loop (a window of requests in flight per connection) or
//! open loop (a fixed total rate, latency measured from the scheduled send time so that a
//! slow switch cannot hide its queueing: coordinated omission corrected). Every run is
//! bounded by a count or a duration, and each request by a timeout.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use switchyard_iso8583::datetime::Civil;
use switchyard_iso8583::{MessageBuilder, MessageView, Mti, Spec};
use switchyard_mux::{ClientTls, Frame, FrameCodec, Framing};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder};

use crate::rng::Rng;
use crate::SimError;

/// Test cards: Luhn-valid PANs of common BIN ranges (Visa, Mastercard, Mastercard 2-series,
/// Discover).
pub const TEST_PANS: &[&str] = &[
    "4000056655665556",
    "5413330089020011",
    "2223000048400011",
    "6011000990139424",
];

/// A load run.
#[derive(Debug, Clone)]
pub struct TerminalSimConfig {
    /// `host:port` of the switch.
    pub target: String,
    /// The dialect.
    pub spec: &'static Spec,
    /// The framing.
    pub framing: Framing,
    /// Terminal connections.
    pub connections: usize,
    /// Requests in all (`None`: until `duration`).
    pub count: Option<u64>,
    /// How long to send (`None`: until `count`).
    pub duration: Option<Duration>,
    /// Requests per second in all, open loop (`None`: closed loop with `window`).
    pub rate: Option<f64>,
    /// Requests in flight per connection in closed loop.
    pub window: usize,
    /// TLS towards the switch.
    pub tls: Option<Arc<ClientTls>>,
    /// Cards used in turn.
    pub pans: Vec<String>,
    /// Request MTI (0100 or 0200).
    pub mti: Mti,
    /// How long to wait for each answer.
    pub timeout: Duration,
    /// Print a progress line every second (to standard error).
    pub progress: bool,
    /// Number of the first terminal (terminal ids are `T` and seven digits; connection i's
    /// merchant is `MERCHANT` and the same seven digits, as in the example registry).
    pub first_terminal: u32,
    /// One terminal id for the (single) connection, in place of the numbered ones.
    pub terminal: Option<String>,
    /// One merchant id (field 42) for every connection.
    pub merchant: Option<String>,
    /// Field 18 (merchant category code), when given.
    pub mcc: Option<String>,
    /// A PIN pad: every request carries a PIN block (and a KSN, a MAC as configured).
    pub security: Option<Arc<crate::card_security::TerminalSecurity>>,
}

impl TerminalSimConfig {
    /// Closed-loop defaults towards `target`.
    pub fn new(target: &str, spec: &'static Spec) -> TerminalSimConfig {
        TerminalSimConfig {
            target: target.to_string(),
            spec,
            framing: Framing::default(),
            connections: 1,
            count: Some(1),
            duration: None,
            rate: None,
            window: 1,
            tls: None,
            pans: TEST_PANS.iter().map(|s| s.to_string()).collect(),
            mti: Mti::new(*b"0200").unwrap_or_else(|| unreachable!()),
            timeout: Duration::from_secs(10),
            progress: false,
            first_terminal: 1,
            terminal: None,
            merchant: None,
            mcc: None,
            security: None,
        }
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct LoadReport {
    /// Requests sent.
    pub sent: u64,
    /// Answers received.
    pub answered: u64,
    /// Requests without an answer within the timeout (or when their connection closed).
    pub unanswered: u64,
    /// Connections that could not be opened.
    pub connect_errors: u64,
    /// Why requests went unanswered or connections failed, with how many each
    /// (connection refused, connect timed out, closed by the peer, timed out, undecodable
    /// answer, ...).
    pub failures: BTreeMap<String, u64>,
    /// Answers by response code.
    pub codes: BTreeMap<String, u64>,
    /// Latency in microseconds.
    pub latency: Histogram<u64>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl LoadReport {
    /// Answers per second.
    pub fn throughput(&self) -> f64 {
        self.answered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at `q` (0..=1) in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// A human summary, several lines.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "sent {} answered {} unanswered {} connect errors {} in {:.2} s: {:.0} tx/s",
            self.sent,
            self.answered,
            self.unanswered,
            self.connect_errors,
            self.elapsed.as_secs_f64(),
            self.throughput()
        );
        if self.answered > 0 {
            let _ = writeln!(
                out,
                "latency ms: p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
                self.latency_ms(0.5),
                self.latency_ms(0.9),
                self.latency_ms(0.99),
                self.latency_ms(0.999),
                self.latency.max() as f64 / 1000.0
            );
        }
        let codes: Vec<String> = self.codes.iter().map(|(c, n)| format!("{c}:{n}")).collect();
        let _ = writeln!(out, "response codes: {}", codes.join(" "));
        if !self.failures.is_empty() {
            let _ = writeln!(out, "failures: {}", self.failure_text());
        }
        out
    }

    /// Whether every request was sent and answered.
    pub fn all_answered(&self) -> bool {
        self.failures.is_empty() && self.unanswered == 0 && self.connect_errors == 0
    }

    /// The failures on one line: `reason: count, ...`.
    pub fn failure_text(&self) -> String {
        let parts: Vec<String> = self
            .failures
            .iter()
            .map(|(reason, n)| format!("{reason}: {n}"))
            .collect();
        parts.join(", ")
    }
}

#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    answered: AtomicU64,
    unanswered: AtomicU64,
    connect_errors: AtomicU64,
}

struct Shared {
    config: TerminalSimConfig,
    totals: Totals,
    failures: Mutex<BTreeMap<String, u64>>,
    codes: Mutex<BTreeMap<String, u64>>,
    latency: Mutex<Histogram<u64>>,
    deadline: Option<Instant>,
}

/// Run the load and report.
pub async fn run(config: TerminalSimConfig) -> Result<LoadReport, SimError> {
    if config.connections == 0 || config.window == 0 {
        return Err(SimError::Config(
            "connections and window must be at least 1".into(),
        ));
    }
    if config.count.is_none() && config.duration.is_none() {
        return Err(SimError::Config(
            "give a count or a duration: every run is bounded".into(),
        ));
    }
    if config.terminal.is_some() && config.connections != 1 {
        // Connections number their STANs alike: one terminal id on several would be
        // duplicates of each other.
        return Err(SimError::Config(
            "one terminal id takes one connection".into(),
        ));
    }
    if config.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(SimError::Config("rate must be a positive number".into()));
    }
    let latency = Histogram::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| SimError::Config(e.to_string()))?;
    let started = Instant::now();
    let shared = Arc::new(Shared {
        deadline: config.duration.map(|d| started + d),
        config,
        totals: Totals::default(),
        failures: Mutex::new(BTreeMap::new()),
        codes: Mutex::new(BTreeMap::new()),
        latency: Mutex::new(latency),
    });
    let n = shared.config.connections;
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let count = shared
            .config
            .count
            .map(|c| c / n as u64 + u64::from((i as u64) < c % n as u64));
        tasks.push(tokio::spawn(connection(shared.clone(), i, count)));
    }
    let progress = shared.config.progress.then(|| {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let answered = shared.totals.answered.load(Ordering::Relaxed);
                eprintln!(
                    "[{:>5.1}s] sent {} answered {} ({} /s)",
                    started.elapsed().as_secs_f64(),
                    shared.totals.sent.load(Ordering::Relaxed),
                    answered,
                    answered - last
                );
                last = answered;
            }
        })
    });
    for t in tasks {
        let _ = t.await;
    }
    if let Some(p) = progress {
        p.abort();
    }
    let elapsed = started.elapsed();
    let t = &shared.totals;
    let codes = shared
        .codes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let latency = shared
        .latency
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let failures = shared
        .failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(LoadReport {
        sent: t.sent.load(Ordering::Relaxed),
        answered: t.answered.load(Ordering::Relaxed),
        unanswered: t.unanswered.load(Ordering::Relaxed),
        connect_errors: t.connect_errors.load(Ordering::Relaxed),
        failures,
        codes,
        latency,
        elapsed,
    })
}

impl Shared {
    /// Count `n` failures for `reason`.
    fn failed(&self, reason: String, n: u64) {
        if n > 0 {
            *self
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(reason)
                .or_default() += n;
        }
    }

    fn connect_failed(&self, reason: String) {
        self.totals.connect_errors.fetch_add(1, Ordering::Relaxed);
        self.failed(reason, 1);
    }
}

async fn connection(shared: Arc<Shared>, index: usize, count: Option<u64>) {
    if count == Some(0) {
        return;
    }
    let cfg = &shared.config;
    let tcp = match tokio::time::timeout(cfg.timeout, TcpStream::connect(&cfg.target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return shared.connect_failed("connection refused".into());
        }
        Ok(Err(e)) => return shared.connect_failed(format!("connect failed: {e}")),
        Err(_) => return shared.connect_failed("connect timed out".into()),
    };
    let _ = tcp.set_nodelay(true);
    match &cfg.tls {
        None => drive(shared.clone(), index, count, tcp).await,
        Some(tls) => {
            match tokio::time::timeout(cfg.timeout, tls.connector().connect(tls.server_name(), tcp))
                .await
            {
                Ok(Ok(stream)) => drive(shared.clone(), index, count, stream).await,
                Ok(Err(e)) => shared.connect_failed(format!("TLS handshake failed: {e}")),
                Err(_) => shared.connect_failed("TLS handshake timed out".into()),
            }
        }
    }
}

/// One terminal's requests over one connection.
async fn drive<S: AsyncRead + AsyncWrite + Send + 'static>(
    shared: Arc<Shared>,
    index: usize,
    count: Option<u64>,
    stream: S,
) {
    let cfg = shared.config.clone();
    let (mut input, mut output) = tokio::io::split(stream);
    let number = u64::from(cfg.first_terminal) + index as u64;
    let terminal = cfg
        .terminal
        .clone()
        .unwrap_or_else(|| format!("T{number:07}"));
    // STAN -> when the request was sent (or scheduled, in open loop).
    let pending: Arc<Mutex<HashMap<u32, Instant>>> = Arc::default();
    // Closed loop: permits are the window. Open loop: a generous bound on what may wait.
    let window = Arc::new(Semaphore::new(if cfg.rate.is_some() {
        10_000
    } else {
        cfg.window
    }));
    let reader = {
        let (shared, pending, window, spec, framing) = (
            shared.clone(),
            pending.clone(),
            window.clone(),
            cfg.spec,
            cfg.framing,
        );
        tokio::spawn(async move {
            let mut codec = FrameCodec::new(framing);
            let mut buf = BytesMut::with_capacity(8192);
            // Why the answers stopped; closing the window stops the sender at once.
            let end = 'read: loop {
                loop {
                    let frame = match codec.decode(&mut buf) {
                        Ok(Some(frame)) => frame,
                        Ok(None) => break,
                        Err(_) => break 'read "unframeable answer (another framing?)",
                    };
                    let Ok(answer) = MessageView::decode(spec, frame.message) else {
                        break 'read "undecodable answer (another dialect?)";
                    };
                    let Some(stan) = answer.field(11).and_then(|f| f.as_u64()) else {
                        continue;
                    };
                    let Some(sent) = pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&(stan as u32))
                    else {
                        continue;
                    };
                    if let Some(sec) = &shared.config.security {
                        if let crate::card_security::PadKeys::Fixed { tak: Some(tak), .. } =
                            &sec.keys
                        {
                            let code = answer.field(39).map(|f| f.text()).unwrap_or_default();
                            if code != sec_refused_code()
                                && !crate::card_security::mac_verifies(
                                    &answer,
                                    tak,
                                    sec.mac_algorithm,
                                )
                            {
                                shared.failed("answer MAC does not verify".into(), 1);
                            }
                        }
                    }
                    let micros = sent.elapsed().as_micros().max(1) as u64;
                    let _ = shared
                        .latency
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .record(micros);
                    let code = answer
                        .field(39)
                        .map(|f| f.text())
                        .unwrap_or_else(|| "--".into());
                    *shared
                        .codes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(code)
                        .or_default() += 1;
                    shared.totals.answered.fetch_add(1, Ordering::Relaxed);
                    window.add_permits(1);
                }
                match input.read_buf(&mut buf).await {
                    Ok(0) => break "closed by the peer",
                    Err(_) => break "connection reset",
                    Ok(_) => {}
                }
            };
            window.close();
            end
        })
    };
    let mut rng = Rng::new(0xC0FFEE ^ index as u64);
    let mut codec = FrameCodec::new(cfg.framing);
    let mut out = BytesMut::new();
    let interval = cfg
        .rate
        .map(|r| Duration::from_secs_f64(cfg.connections as f64 / r));
    let start = Instant::now();
    let mut stan = 0u32;
    let mut sent = 0u64;
    loop {
        if count.is_some_and(|c| sent >= c) || shared.deadline.is_some_and(|d| Instant::now() >= d)
        {
            break;
        }
        let scheduled = match interval {
            Some(i) => {
                let at = start + i.mul_f64(sent as f64);
                tokio::time::sleep_until(at).await;
                at
            }
            None => Instant::now(),
        };
        let Ok(permit) = tokio::time::timeout(cfg.timeout, window.acquire()).await else {
            break;
        };
        let Ok(permit) = permit else { break };
        permit.forget();
        stan = stan % 999_999 + 1;
        let Some(message) = request(&cfg, &terminal, stan, index, &mut rng) else {
            break;
        };
        pending.lock().unwrap_or_else(|p| p.into_inner()).insert(
            stan,
            if interval.is_some() {
                scheduled
            } else {
                Instant::now()
            },
        );
        out.clear();
        if codec.encode(Frame::new(message), &mut out).is_err()
            || output.write_all(&out).await.is_err()
        {
            break;
        }
        sent += 1;
        shared.totals.sent.fetch_add(1, Ordering::Relaxed);
    }
    // Wait for the answers still due, then count what never came.
    let wait_until = Instant::now() + cfg.timeout;
    while !pending.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
        && Instant::now() < wait_until
        && !reader.is_finished()
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let reason = if reader.is_finished() {
        reader.await.unwrap_or("reader failed")
    } else {
        reader.abort();
        "timed out"
    };
    let left = pending.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
    shared.totals.unanswered.fetch_add(left, Ordering::Relaxed);
    shared.failed(reason.to_string(), left);
    let _ = output.shutdown().await;
}

/// The code of answers the switch refused for card security (they carry no MAC).
fn sec_refused_code() -> &'static str {
    "63"
}

/// A realistic request: card, amount, times, STAN, RRN, terminal and merchant.
fn request(
    cfg: &TerminalSimConfig,
    terminal: &str,
    stan: u32,
    index: usize,
    rng: &mut Rng,
) -> Option<Bytes> {
    let spec = cfg.spec;
    let mut b = MessageBuilder::new(spec, cfg.mti);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let civil = Civil::from_unix(i64::try_from(now).unwrap_or(0));
    let field7 = civil.mmddhhmmss();
    let pan = cfg.pans.get(stan as usize % cfg.pans.len().max(1))?;
    let amount = 100 + rng.next() % 99_900;
    let values: [(u8, String); 13] = [
        (2, pan.clone()),
        (3, "000000".into()),
        (4, format!("{amount:012}")),
        (7, String::from_utf8_lossy(&field7).into_owned()),
        (11, format!("{stan:06}")),
        (12, String::from_utf8_lossy(&field7[4..10]).into_owned()),
        (13, String::from_utf8_lossy(&field7[0..4]).into_owned()),
        (14, "2912".into()),
        (22, "051".into()),
        (25, "00".into()),
        (37, format!("{:06}{stan:06}", index % 1_000_000)),
        (41, terminal.to_string()),
        (49, "978".into()),
    ];
    for (n, v) in &values {
        if spec.field(*n).is_some() {
            b.set(*n, v).ok()?;
        }
    }
    if spec.field(42).is_some() {
        let number = (u64::from(cfg.first_terminal) + index as u64) % 10_000_000;
        match &cfg.merchant {
            Some(m) => b.set(42, m).ok()?,
            None => b.set(42, format!("MERCHANT{number:07}")).ok()?,
        };
    }
    if let Some(mcc) = cfg.mcc.as_ref().filter(|_| spec.field(18).is_some()) {
        b.set(18, mcc).ok()?;
    }
    if let Some(security) = &cfg.security {
        if let Err(e) = security.secure(&mut b, pan) {
            tracing::error!(error = %e, "could not secure a request");
            return None;
        }
    }
    Some(b.encode())
}
