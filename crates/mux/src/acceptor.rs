//! The terminal acceptor: a TCP or TLS listener whose connections carry framed ISO 8583
//! requests to a [`Handler`] and its answers back, in whatever order they are ready.
//!
//! Limits, each a field of [`AcceptorConfig`]: connections in all and per source address
//! (over the limit a connection is closed at once rather than left waiting), the TLS
//! handshake time, the time from a frame's first byte to its last (slow senders are dropped),
//! the idle time, and requests in flight per connection (past it the connection is not read
//! until an answer goes out, so a terminal cannot queue unbounded work).
//!
//! A frame that does not decode is answered with response code 30 when its MTI and STAN
//! (and terminal id, when it can be read) were readable, and the connection stays open
//! ([`Handler::malformed`]); a frame with nothing to answer from, or a stream that cannot be
//! framed, closes that connection only.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use rustls::pki_types::CertificateDer;
use switchyard_iso8583::{MessageBuilder, MessageView, Spec};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::Side;
use crate::framing::{Frame, FrameCodec, Framing};
use crate::io::{write_frames, FrameReader, IoCounters, ReadEnd};
use crate::tls::ServerTls;

/// How long a closing connection waits for the terminal to close after the switch shut its
/// side (see [`FrameReader::linger`]); a terminal answers a FIN at once, so this bounds only
/// peers that never close. Well inside the default SIGTERM grace period of 10 s.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Bytes a closing connection reads and drops, at most, while it waits.
const CLOSE_LINGER_BYTES: usize = 256 * 1024;

/// Settings of one terminal listener.
#[derive(Debug, Clone)]
pub struct AcceptorConfig {
    /// Name used in logs and metrics.
    pub name: Arc<str>,
    /// Framing of the terminals' stream.
    pub framing: Framing,
    /// The dialect the terminals speak.
    pub spec: &'static Spec,
    /// Connections open at once, all sources together.
    pub max_connections: usize,
    /// Connections open at once from one source address.
    pub max_connections_per_source: usize,
    /// Requests of one connection being handled at once.
    pub max_in_flight_per_connection: usize,
    /// Time from a frame's first byte to its last.
    pub frame_timeout: Duration,
    /// Time without a byte (and nothing in flight) before a connection is closed.
    pub idle_timeout: Duration,
    /// Time for a TLS handshake.
    pub handshake_timeout: Duration,
    /// Time for one write to the terminal.
    pub write_timeout: Duration,
}

impl AcceptorConfig {
    /// Defaults for a listener named `name`.
    pub fn new(name: &str, spec: &'static Spec) -> AcceptorConfig {
        AcceptorConfig {
            name: name.into(),
            framing: Framing::default(),
            spec,
            max_connections: 10_000,
            max_connections_per_source: 1_000,
            max_in_flight_per_connection: 64,
            frame_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// Who sent a request.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// Unique per acceptor.
    pub id: u64,
    /// The terminal's address.
    pub peer: SocketAddr,
    /// The listener's name.
    pub listener: Arc<str>,
    /// The client certificate (leaf) of a mutual-TLS connection.
    pub client_certificate: Option<CertificateDer<'static>>,
}

/// What the switch does with the terminals' messages.
pub trait Handler: Send + Sync + 'static {
    /// Answer a decoded request: the response message (unframed), or `None` for no answer.
    fn request(
        &self,
        conn: &Arc<ConnectionInfo>,
        request: MessageView<'static>,
    ) -> impl Future<Output = Option<Bytes>> + Send;

    /// Answer a frame that did not decode. The default is the format-error response (39 =
    /// 30) when the MTI, STAN and terminal id could be read, as [`format_error_response`].
    fn malformed(
        &self,
        conn: &Arc<ConnectionInfo>,
        spec: &'static Spec,
        frame: Bytes,
        error: switchyard_iso8583::Error,
    ) -> impl Future<Output = Option<Bytes>> + Send {
        let _ = conn;
        std::future::ready(format_error_response(spec, &frame, &error))
    }

    /// A response could not be delivered because the terminal's connection was gone (the
    /// router reverses an approval the terminal never saw). The default does nothing.
    fn undelivered(&self, conn: &Arc<ConnectionInfo>, response: Bytes) {
        let _ = (conn, response);
    }
}

/// The 39 = 30 answer to a frame that failed to decode, carrying whatever of fields 11 and
/// 41 was readable; `None` when not even a request MTI was.
pub fn format_error_response(
    spec: &'static Spec,
    frame: &Bytes,
    error: &switchyard_iso8583::Error,
) -> Option<Bytes> {
    let salvage = error.salvage();
    salvage.stan?;
    let mut builder = MessageBuilder::new(spec, switchyard_iso8583::Mti::new(*b"0000")?);
    builder.respond_to_salvage(&salvage, frame, b"30").ok()?;
    Some(builder.encode())
}

/// Counters of one acceptor (read by the switch's metrics).
#[derive(Debug, Default)]
pub struct AcceptorStats {
    /// Connections accepted and served.
    pub connections_accepted: AtomicU64,
    /// Connections closed at once because a connection limit was reached.
    pub connections_refused: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicUsize,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: AtomicU64,
    /// Frames that did not decode.
    pub decode_errors: AtomicU64,
    /// Connections closed because their stream could not be framed.
    pub framing_errors: AtomicU64,
    /// Connections closed because a frame arrived too slowly.
    pub slow_frames: AtomicU64,
    /// Connections closed for being idle.
    pub idle_closed: AtomicU64,
    /// Responses that found their connection gone.
    pub undelivered: AtomicU64,
    /// Closing connections whose terminal did not close within the linger bounds (closed
    /// then anyway, at the risk of a reset).
    pub linger_expired: AtomicU64,
    /// Frame and write counts.
    pub io: IoCounters,
}

/// A terminal listener.
#[derive(Debug)]
pub struct Acceptor<H> {
    config: AcceptorConfig,
    handler: Arc<H>,
    tls: Option<Arc<ServerTls>>,
    stats: Arc<AcceptorStats>,
    connections: Arc<Semaphore>,
    per_source: Arc<DashMap<IpAddr, usize>>,
    next_id: AtomicU64,
    tracker: TaskTracker,
    log_limit: LogLimiter,
}

/// Repeated log lines of one event on one listener: the first in each window is logged,
/// the rest only counted (the metrics count every one), and how many were not logged is
/// said with the next line that is. A flood of refused connections cannot fill the logs.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    window: Duration,
    events: std::sync::Mutex<std::collections::HashMap<&'static str, (Instant, u64)>>,
}

impl LogLimiter {
    pub(crate) fn new(window: Duration) -> LogLimiter {
        LogLimiter {
            window,
            events: std::sync::Mutex::default(),
        }
    }

    /// Whether to log `event` now: `Some(lines not logged since the last that was)`.
    pub(crate) fn allow(&self, event: &'static str) -> Option<u64> {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match events.get_mut(event) {
            Some((since, suppressed)) if now.duration_since(*since) < self.window => {
                *suppressed += 1;
                None
            }
            Some((since, suppressed)) => {
                let not_logged = *suppressed;
                (*since, *suppressed) = (now, 0);
                Some(not_logged)
            }
            None => {
                events.insert(event, (now, 0));
                Some(0)
            }
        }
    }
}

/// Releases a source address's connection slot when the connection ends.
struct SourceSlot {
    map: Arc<DashMap<IpAddr, usize>>,
    ip: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        self.map.remove_if_mut(&self.ip, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

impl<H: Handler> Acceptor<H> {
    /// An acceptor serving `handler`, over TLS when `tls` is given.
    pub fn new(config: AcceptorConfig, handler: Arc<H>, tls: Option<Arc<ServerTls>>) -> Self {
        Acceptor {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            config,
            handler,
            tls,
            stats: Arc::default(),
            per_source: Arc::default(),
            next_id: AtomicU64::new(1),
            tracker: TaskTracker::new(),
            log_limit: LogLimiter::new(Duration::from_secs(10)),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<AcceptorStats> {
        &self.stats
    }

    /// Accept connections from `listener` until `shutdown` is cancelled, then stop
    /// accepting, let every connection finish the requests it has in flight (no new ones
    /// are read), and return when they are all closed. Bound the wait with a timeout.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => self.admit(stream, peer, &shutdown),
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(listener = %self.config.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(listener);
        self.tracker.close();
        self.tracker.wait().await;
    }

    fn admit(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr, shutdown: &CancellationToken) {
        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            self.stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.log_limit.allow("connection limit") {
                tracing::warn!(listener = %self.config.name, %peer, suppressed, "connection limit reached");
            }
            return;
        };
        let ip = peer.ip();
        let mut over = false;
        self.per_source
            .entry(ip)
            .and_modify(|n| {
                over = *n >= self.config.max_connections_per_source;
                *n += usize::from(!over);
            })
            .or_insert(1);
        if over {
            self.stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.log_limit.allow("per-source limit") {
                tracing::warn!(listener = %self.config.name, %peer, suppressed, "per-source connection limit reached");
            }
            return;
        }
        let slot = SourceSlot {
            map: self.per_source.clone(),
            ip,
        };
        let _ = stream.set_nodelay(true);
        self.stats
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        let shutdown = shutdown.clone();
        self.tracker.spawn(async move {
            let _held = (permit, slot);
            this.stats.connections_open.fetch_add(1, Ordering::Relaxed);
            this.clone().connection(stream, peer, shutdown).await;
            this.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
        });
    }

    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let Some(tls) = &self.tls else {
            let info = ConnectionInfo {
                id,
                peer,
                listener: self.config.name.clone(),
                client_certificate: None,
            };
            return self.serve_stream(stream, Arc::new(info), shutdown).await;
        };
        let handshake = tls.acceptor().accept(stream);
        let stream = match tokio::time::timeout(self.config.handshake_timeout, handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                self.stats
                    .tls_handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.log_limit.allow("TLS handshake failed") {
                    tracing::info!(listener = %self.config.name, %peer, error = %e, suppressed, "TLS handshake failed");
                }
                return;
            }
            Err(_) => {
                self.stats
                    .tls_handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.log_limit.allow("TLS handshake timed out") {
                    tracing::info!(listener = %self.config.name, %peer, suppressed, "TLS handshake timed out");
                }
                return;
            }
        };
        let client_certificate = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|c| c.clone().into_owned());
        let info = ConnectionInfo {
            id,
            peer,
            listener: self.config.name.clone(),
            client_certificate,
        };
        self.serve_stream(stream, Arc::new(info), shutdown).await;
    }

    async fn serve_stream<S>(
        &self,
        stream: S,
        conn: Arc<ConnectionInfo>,
        shutdown: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let cfg = &self.config;
        let (input, output) = tokio::io::split(stream);
        let codec = FrameCodec::new(cfg.framing);
        let (tx, rx) = mpsc::channel::<Frame>(cfg.max_in_flight_per_connection + 2);
        let stats = self.stats.clone();
        let (writer_codec, write_timeout) = (codec.clone(), cfg.write_timeout);
        let writer = tokio::spawn(async move {
            write_frames(
                output,
                rx,
                writer_codec,
                Side::Downstream,
                write_timeout,
                &stats.io,
            )
            .await
        });
        let mut reader = FrameReader::new(input, codec, Side::Downstream);
        let in_flight = Arc::new(Semaphore::new(cfg.max_in_flight_per_connection));
        // Set when the terminal closed or broke the connection: answers still coming are
        // undeliverable (ISO 8583 terminals do not half-close), so they go to `undelivered`.
        let gone = Arc::new(AtomicBool::new(false));
        // Cancelled when a frame could not be decoded far enough to answer (no MTI or
        // STAN): the terminal would wait its whole timeout for an answer that cannot come,
        // so the connection is closed and it knows at once.
        let unanswerable = CancellationToken::new();
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => None,
                _ = unanswerable.cancelled() => break,
                next = reader.next(cfg.frame_timeout, Some(cfg.idle_timeout)) => Some(next),
            };
            let frame = match next {
                // Draining: requests already read in full are still answered; nothing more
                // is read.
                None => match reader.buffered() {
                    Some(frame) => frame,
                    None => break,
                },
                Some(Ok(frame)) => frame,
                Some(Err(ReadEnd::Idle))
                    if in_flight.available_permits() < cfg.max_in_flight_per_connection =>
                {
                    // Waiting on the issuer is not idleness.
                    reader.touch();
                    continue;
                }
                Some(Err(end)) => {
                    if matches!(end, ReadEnd::Eof | ReadEnd::Error(_)) {
                        gone.store(true, Ordering::Release);
                    }
                    self.note_end(&conn, end);
                    break;
                }
            };
            self.stats.io.frames_read.fetch_add(1, Ordering::Relaxed);
            // A full window stops reading until an answer goes out (requests finish within
            // the issuer timeout, so this wait is bounded even while draining).
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break;
            };
            let reply_header = cfg.framing.header.reply_to(&frame.header);
            let decoded = MessageView::decode(cfg.spec, frame.message.clone());
            if let Err(error) = &decoded {
                self.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.log_limit.allow("undecodable request") {
                    tracing::info!(listener = %cfg.name, peer = %conn.peer, %error, suppressed, "undecodable request");
                }
            }
            let (handler, conn, tx, stats, spec, gone, unanswerable) = (
                self.handler.clone(),
                conn.clone(),
                tx.clone(),
                self.stats.clone(),
                cfg.spec,
                gone.clone(),
                unanswerable.clone(),
            );
            // Each request is its own task: answers go back in whatever order they are ready.
            tokio::spawn(async move {
                let answer = match decoded {
                    Ok(view) => handler.request(&conn, view).await,
                    Err(error) => {
                        let answer = handler.malformed(&conn, spec, frame.message, error).await;
                        if answer.is_none() {
                            tracing::warn!(peer = %conn.peer, "undecodable request with no MTI or STAN to answer: closing the connection");
                            unanswerable.cancel();
                        }
                        answer
                    }
                };
                if let Some(response) = answer {
                    let frame = Frame::with_header(reply_header, response);
                    if gone.load(Ordering::Acquire) {
                        stats.undelivered.fetch_add(1, Ordering::Relaxed);
                        handler.undelivered(&conn, frame.message);
                    } else if let Err(unsent) = tx.send(frame).await {
                        stats.undelivered.fetch_add(1, Ordering::Relaxed);
                        handler.undelivered(&conn, unsent.0.message);
                    }
                }
                drop(permit);
            });
        }
        // Requests still being handled hold senders: the writer sends their answers, then
        // shuts our side once the last one is gone.
        drop(tx);
        match writer.await {
            Ok(Err(failure)) => {
                for message in failure.unwritten {
                    self.stats.undelivered.fetch_add(1, Ordering::Relaxed);
                    self.handler.undelivered(&conn, message);
                }
                let e = failure.error;
                tracing::info!(listener = %cfg.name, peer = %conn.peer, error = %e, "write to terminal failed");
            }
            // The terminal may still be sending (draining, idle, a frame too slow): the
            // socket stays open until it closes, so that no reset overtakes the answers.
            // (After an unframeable stream or a broken connection nothing more is owed.)
            Ok(Ok(())) if !gone.load(Ordering::Acquire) => {
                if !reader.linger(CLOSE_LINGER, CLOSE_LINGER_BYTES).await {
                    self.stats.linger_expired.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Ok(())) | Err(_) => {}
        }
    }

    fn note_end(&self, conn: &ConnectionInfo, end: ReadEnd) {
        let (name, peer) = (&self.config.name, conn.peer);
        match end {
            ReadEnd::Eof => {}
            ReadEnd::FrameTimeout => {
                self.stats.slow_frames.fetch_add(1, Ordering::Relaxed);
                tracing::info!(listener = %name, %peer, "frame not complete in time: closing");
            }
            ReadEnd::Idle => {
                self.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(listener = %name, %peer, "idle: closing");
            }
            ReadEnd::Error(e) => {
                if e.is_framing() {
                    self.stats.framing_errors.fetch_add(1, Ordering::Relaxed);
                }
                tracing::info!(listener = %name, %peer, error = %e, "closing connection");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_log_lines_are_counted_and_said_with_the_next_one_logged() {
        let limiter = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(limiter.allow("refused"), Some(0), "the first is logged");
        assert_eq!(limiter.allow("refused"), None);
        assert_eq!(limiter.allow("refused"), None);
        assert_eq!(limiter.allow("other"), Some(0), "events are limited apart");
        let after_window = LogLimiter::new(Duration::ZERO);
        assert_eq!(after_window.allow("refused"), Some(0));
        {
            // Two suppressed lines, then the window has passed.
            let mut events = after_window.events.lock().unwrap();
            events.insert("refused", (Instant::now(), 2));
        }
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(
            after_window.allow("refused"),
            Some(2),
            "the count comes with it"
        );
    }
}
