//! The terminal acceptor over real TCP sockets.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchyard_mux::{Acceptor, AcceptorConfig, Frame, Framing, Header, LengthPrefix, ServerTls};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::{eventually, request, spec, Approver, Peer, WAIT};

pub struct Running {
    pub addr: SocketAddr,
    pub acceptor: Arc<Acceptor<Approver>>,
    pub handler: Arc<Approver>,
    pub shutdown: CancellationToken,
    pub served: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn start(
    config: AcceptorConfig,
    handler: Approver,
    tls: Option<Arc<ServerTls>>,
) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    let acceptor = Arc::new(Acceptor::new(config, handler.clone(), tls));
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(acceptor.clone().serve(listener, shutdown.clone()));
    Running {
        addr,
        acceptor,
        handler,
        shutdown,
        served,
    }
}

fn config() -> AcceptorConfig {
    AcceptorConfig::new("test", spec())
}

#[tokio::test]
async fn every_framing_variant_carries_requests_and_tpdu_replies_are_swapped() {
    for prefix in LengthPrefix::ALL {
        for prefix_includes_itself in [false, true] {
            for header in [Header::None, Header::Tpdu] {
                let framing = Framing {
                    prefix,
                    prefix_includes_itself,
                    header,
                    ..Framing::default()
                };
                let mut cfg = config();
                cfg.framing = framing;
                let server = start(cfg, Approver::default(), None).await;
                let mut terminal = Peer::connect(server.addr, framing).await;
                let tpdu = Bytes::from_static(&[0x60, 0x00, 0x01, 0x80, 0x02]);
                let sent_header = if header == Header::Tpdu {
                    tpdu
                } else {
                    Bytes::new()
                };
                terminal
                    .send(Frame::with_header(
                        sent_header.clone(),
                        request(42, "TERM0001", 100),
                    ))
                    .await;
                let answer = terminal.recv().await.expect("answered");
                let expected_header: &[u8] = if header == Header::Tpdu {
                    &[0x60, 0x80, 0x02, 0x00, 0x01]
                } else {
                    &[]
                };
                assert_eq!(&answer.header[..], expected_header, "{framing:?}");
                let view = crate::support::view(answer.message);
                assert_eq!(view.mti().as_str(), "0210");
                assert_eq!(view.str(11), Some("000042"));
                assert_eq!(view.str(39), Some("00"));
            }
        }
    }
}

#[tokio::test]
async fn a_malformed_message_gets_30_and_one_with_nothing_to_answer_closes_its_connection() {
    let server = start(config(), Approver::default(), None).await;
    let mut bystander = Peer::connect(server.addr, Framing::default()).await;
    let mut terminal = Peer::connect(server.addr, Framing::default()).await;

    // Field 4 (n12) with a letter in it: framed fine, fails to decode.
    let good = request(777, "TERM0002", 1500);
    let mut bad = good.to_vec();
    let amount_at = crate::support::view(good.clone()).range(4).unwrap().start;
    bad[amount_at + 3] = b'X';
    let answer = terminal.call(Bytes::from(bad)).await;
    assert_eq!(answer.mti().as_str(), "0210");
    assert_eq!(answer.str(39), Some("30"));
    assert_eq!(answer.str(11), Some("000777"), "matchable by the terminal");
    assert_eq!(answer.str(41), Some("TERM0002"));

    // Still served after a format error.
    assert_eq!(terminal.call(good.clone()).await.str(39), Some("00"));

    // Unreadable even as far as the MTI: no answer can be formed, so the connection is
    // closed (the terminal learns at once instead of waiting for its timeout).
    terminal
        .send_message(Bytes::from_static(b"\x00\x01garbage"))
        .await;
    assert!(terminal.recv().await.is_none(), "closed, not left waiting");
    let mut again = Peer::connect(server.addr, Framing::default()).await;
    assert_eq!(
        again.call(good).await.str(39),
        Some("00"),
        "a new connection is served"
    );
    assert_eq!(
        bystander.call(request(1, "TERM0003", 5)).await.str(39),
        Some("00")
    );
    assert_eq!(
        server
            .acceptor
            .stats()
            .decode_errors
            .load(Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn an_oversized_length_prefix_closes_that_connection_only() {
    let server = start(config(), Approver::default(), None).await;
    let mut bystander = Peer::connect(server.addr, Framing::default()).await;
    let mut terminal = Peer::connect(server.addr, Framing::default()).await;
    terminal.send_raw(&[0xFF, 0xFF, b'0', b'2']).await.unwrap();
    assert!(terminal.recv().await.is_none(), "closed");
    assert_eq!(
        bystander.call(request(5, "TERM0004", 1)).await.str(39),
        Some("00")
    );
    assert_eq!(
        server
            .acceptor
            .stats()
            .framing_errors
            .load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_slowloris_sender_is_dropped_and_idle_connections_are_closed() {
    let mut cfg = config();
    cfg.frame_timeout = Duration::from_millis(300);
    cfg.idle_timeout = Duration::from_millis(600);
    let server = start(cfg, Approver::default(), None).await;

    let mut slow = Peer::connect(server.addr, Framing::default()).await;
    let message = request(9, "TERM0005", 1);
    let mut wire = vec![0u8, message.len() as u8];
    wire.extend_from_slice(&message);
    let started = std::time::Instant::now();
    let mut cut_off = false;
    // One byte every 50 ms: the whole frame would take several seconds.
    for b in &wire {
        if slow.send_raw(&[*b]).await.is_err() {
            cut_off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    assert!(
        cut_off || slow.recv().await.is_none(),
        "slow sender dropped"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        server.acceptor.stats().slow_frames.load(Ordering::Relaxed),
        1
    );

    let mut idle = Peer::connect(server.addr, Framing::default()).await;
    assert_eq!(
        idle.call(request(10, "TERM0006", 1)).await.str(39),
        Some("00")
    );
    let quiet = std::time::Instant::now();
    assert!(idle.recv().await.is_none(), "idle connection closed");
    assert!(quiet.elapsed() >= Duration::from_millis(500));
    assert_eq!(
        server.acceptor.stats().idle_closed.load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn connection_limits_refuse_the_extra_connection_at_once() {
    let mut cfg = config();
    cfg.max_connections_per_source = 2;
    let server = start(cfg, Approver::default(), None).await;
    let mut first = Peer::connect(server.addr, Framing::default()).await;
    let mut second = Peer::connect(server.addr, Framing::default()).await;
    assert_eq!(
        first.call(request(1, "TERM0007", 1)).await.str(39),
        Some("00")
    );
    assert_eq!(
        second.call(request(2, "TERM0008", 1)).await.str(39),
        Some("00")
    );
    let mut third = Peer::connect(server.addr, Framing::default()).await;
    assert!(
        third.recv().await.is_none(),
        "over the per-source limit: closed"
    );
    // A slot frees when a connection ends.
    drop(first);
    let stats = server.acceptor.stats().clone();
    assert!(eventually(WAIT, || stats.connections_open.load(Ordering::Relaxed) == 1).await);
    let mut fourth = Peer::connect(server.addr, Framing::default()).await;
    assert_eq!(
        fourth.call(request(3, "TERM0009", 1)).await.str(39),
        Some("00")
    );

    let mut cfg = config();
    cfg.max_connections = 1;
    let small = start(cfg, Approver::default(), None).await;
    let mut only = Peer::connect(small.addr, Framing::default()).await;
    assert_eq!(
        only.call(request(1, "TERM0010", 1)).await.str(39),
        Some("00")
    );
    let mut refused = Peer::connect(small.addr, Framing::default()).await;
    assert!(
        refused.recv().await.is_none(),
        "over the global limit: closed"
    );
    assert!(
        small
            .acceptor
            .stats()
            .connections_refused
            .load(Ordering::Relaxed)
            >= 1
    );
    assert!(
        server
            .acceptor
            .stats()
            .connections_refused
            .load(Ordering::Relaxed)
            >= 1
    );
}

#[tokio::test]
async fn answers_leave_in_any_order_and_in_flight_requests_are_bounded() {
    let mut cfg = config();
    cfg.max_in_flight_per_connection = 4;
    let handler = Approver {
        delay_by_amount: true,
        ..Approver::default()
    };
    let server = start(cfg, handler, None).await;
    let mut terminal = Peer::connect(server.addr, Framing::default()).await;
    // STAN i waits (12 - i) * 40 ms: later requests are answered first.
    for i in 1..=12u32 {
        terminal
            .send_message(request(i, "TERM0011", u64::from(12 - i) * 40))
            .await;
    }
    let mut order = Vec::new();
    for _ in 0..12 {
        let answer = crate::support::view(terminal.recv().await.unwrap().message);
        order.push(answer.str(11).unwrap().parse::<u32>().unwrap());
    }
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (1..=12).collect::<Vec<_>>(),
        "every request answered once"
    );
    assert_ne!(order, sorted, "answers came back out of order: {order:?}");
    let most = server.handler.most_running.load(Ordering::SeqCst);
    assert!((2..=4).contains(&most), "at most 4 in flight, saw {most}");
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_before_closing() {
    let handler = Approver {
        delay_by_amount: true,
        ..Approver::default()
    };
    let mut server = start(config(), handler, None).await;
    let mut terminal = Peer::connect(server.addr, Framing::default()).await;
    terminal.send_message(request(1, "TERM0012", 300)).await;
    assert!(eventually(WAIT, || server.handler.running.load(Ordering::SeqCst) == 1).await);
    server.shutdown.cancel();
    let answer = crate::support::view(
        terminal
            .recv()
            .await
            .expect("answered during drain")
            .message,
    );
    assert_eq!(answer.str(39), Some("00"));
    assert!(terminal.recv().await.is_none(), "closed after the drain");
    tokio::time::timeout(WAIT, &mut server.served)
        .await
        .unwrap()
        .unwrap();
}

/// A connection closed while the terminal's bytes wait unread sends a TCP reset, and a
/// reset makes the kernel drop the answers it has not sent yet. Draining with requests
/// still arriving must end with every answer delivered and a clean end of stream.
#[tokio::test]
async fn a_drain_with_unread_requests_still_delivers_every_answer_then_closes_cleanly() {
    const IN_FLIGHT: u32 = 1500;
    let mut cfg = config();
    cfg.max_in_flight_per_connection = IN_FLIGHT as usize;
    let handler = Approver {
        delay_by_amount: true,
        ..Approver::default()
    };
    let mut server = start(cfg, handler, None).await;
    // A terminal with a small receive window: the switch's last answers wait in its own
    // send queue, where a reset would drop them.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = tokio::time::timeout(WAIT, socket.connect(server.addr))
        .await
        .unwrap()
        .unwrap();
    let mut terminal = Peer::new(stream, Framing::default());
    // Each answered after a second: all of them are in flight when the drain begins.
    for stan in 1..=IN_FLIGHT {
        terminal.send_message(request(stan, "TERM0013", 1000)).await;
    }
    let all_running = eventually(WAIT, || {
        server.handler.running.load(Ordering::SeqCst) == IN_FLIGHT as usize
    })
    .await;
    assert!(all_running, "every request read before the drain");
    server.shutdown.cancel();
    // Sent after the drain began: never read, never answered.
    for stan in IN_FLIGHT + 1..=IN_FLIGHT + 20 {
        terminal.send_message(request(stan, "TERM0013", 0)).await;
    }
    // Not reading until the answers are written: they back up into the switch's send
    // queue, and the switch is done writing when this terminal starts to read.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let mut answered = 0u32;
    while let Some(frame) = terminal.recv().await {
        let answer = crate::support::view(frame.message);
        assert_eq!(answer.str(39), Some("00"));
        assert!(answer.str(11).unwrap().parse::<u32>().unwrap() <= IN_FLIGHT);
        answered += 1;
    }
    assert_eq!(answered, IN_FLIGHT, "every request read was answered");
    let mut rest = [0u8; 64];
    let end = tokio::io::AsyncReadExt::read(terminal.stream(), &mut rest).await;
    assert!(
        matches!(end, Ok(0)),
        "a clean end of stream, not a reset: {end:?}"
    );
    drop(terminal);
    tokio::time::timeout(WAIT, &mut server.served)
        .await
        .unwrap()
        .unwrap();
}

/// Lingering for the terminal's close has its bounds: a terminal that reads the end of
/// stream and never closes is let go after them, and counted.
#[tokio::test]
async fn a_terminal_that_never_closes_is_let_go_after_the_linger() {
    let mut cfg = config();
    cfg.idle_timeout = Duration::from_millis(200);
    let server = start(cfg, Approver::default(), None).await;
    let mut terminal = Peer::connect(server.addr, Framing::default()).await;
    let quiet = std::time::Instant::now();
    assert!(
        terminal.recv().await.is_none(),
        "idle: the switch shut its side"
    );
    let stats = server.acceptor.stats().clone();
    assert_eq!(
        stats.connections_open.load(Ordering::Relaxed),
        1,
        "lingering"
    );
    // The terminal keeps its side open and says nothing.
    let let_go = eventually(WAIT, || stats.connections_open.load(Ordering::Relaxed) == 0).await;
    assert!(let_go, "connection closed at the linger bound");
    let waited = quiet.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(5),
        "closed {waited:?} after going quiet"
    );
    assert_eq!(stats.linger_expired.load(Ordering::Relaxed), 1);
    assert_eq!(stats.idle_closed.load(Ordering::Relaxed), 1);
}
