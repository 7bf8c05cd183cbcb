//! Issuer links against fake issuer hosts on 127.0.0.1.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use switchyard_iso8583::{MessageBuilder, Mti};
use switchyard_mux::{
    ConnectionState, Endpoint, Framing, IssuerLink, LateResponse, LateResponseHandler, LinkConfig,
    MuxError,
};
use tokio::net::TcpListener;

use crate::support::{eventually, request, respond, spec, view, FakeIssuer, Peer, Reply, WAIT};

fn link_config(addr: std::net::SocketAddr) -> LinkConfig {
    let mut cfg = LinkConfig::new("issuer-a", &addr.to_string(), spec());
    cfg.request_timeout = Duration::from_secs(5);
    cfg.reconnect_min = Duration::from_millis(20);
    cfg.reconnect_max = Duration::from_millis(200);
    cfg
}

async fn ready_link(cfg: LinkConfig) -> IssuerLink {
    let link = IssuerLink::start(cfg, None).unwrap();
    assert!(link.wait_ready(WAIT).await, "link ready");
    link
}

#[derive(Default)]
struct LateLog(Mutex<Vec<(String, String, Duration)>>);

impl LateResponseHandler for LateLog {
    fn late_response(&self, late: LateResponse) {
        let r = &late.response;
        self.0.lock().unwrap().push((
            r.str(11).unwrap_or("").to_string(),
            r.str(39).unwrap_or("").to_string(),
            late.after,
        ));
    }
}

#[tokio::test]
async fn a_thousand_concurrent_requests_on_one_connection_each_get_their_own_shuffled_response() {
    const N: usize = 1000;
    let issuer = FakeIssuer::start(Framing::default(), Some(N), |_| Reply::Code(b"00")).await;
    let mut cfg = link_config(issuer.addr);
    cfg.max_in_flight = N;
    let link = Arc::new(ready_link(cfg).await);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..N {
        let link = link.clone();
        calls.spawn(async move {
            // 100 terminals, each using STANs 1..=10: many STANs collide across terminals.
            let (stan, tid) = ((i % 10 + 1) as u32, format!("TERM{:04}", i / 10));
            let amount = 1000 + i as u64;
            let response = link.send(&view(request(stan, &tid, amount))).await.unwrap();
            assert_eq!(response.mti().as_str(), "0210");
            assert_eq!(
                response.str(4).unwrap().parse::<u64>().unwrap(),
                amount,
                "own response"
            );
            assert_eq!(response.str(41), Some(tid.as_str()));
            assert_eq!(
                response.str(11).unwrap().parse::<u32>().unwrap(),
                stan,
                "STAN restored"
            );
        });
    }
    let all = tokio::time::timeout(WAIT * 3, async {
        while let Some(done) = calls.join_next().await {
            done.unwrap();
        }
    });
    all.await.expect("all resolved in time");
    let seen = issuer.received.lock().unwrap();
    let stans: HashSet<&str> = seen.iter().filter_map(|v| v.str(11)).collect();
    assert_eq!(stans.len(), N, "the issuer saw {N} distinct link STANs");
    assert_eq!(issuer.accepted.load(Ordering::SeqCst), 1, "one connection");
    let stats = link.stats();
    assert_eq!(stats.responses.load(Ordering::Relaxed), N as u64);
    assert!(
        stats.io.write_calls.load(Ordering::Relaxed)
            < stats.io.frames_written.load(Ordering::Relaxed),
        "concurrent requests were coalesced into fewer writes"
    );
    assert_eq!(link.in_flight(), 0);
}

#[tokio::test]
async fn stan_remapping_keeps_two_terminals_with_the_same_stan_apart() {
    // This issuer matches on field 11 alone: without remapping the two would collide.
    let issuer = FakeIssuer::start(Framing::default(), Some(2), |_| Reply::Code(b"00")).await;
    let mut cfg = link_config(issuer.addr);
    cfg.match_fields = vec![11];
    let link = Arc::new(ready_link(cfg).await);
    let (a, b) = (link.clone(), link.clone());
    let first = tokio::spawn(async move { a.send(&view(request(777, "TERMAAAA", 111))).await });
    let second = tokio::spawn(async move { b.send(&view(request(777, "TERMBBBB", 222))).await });
    let (first, second) = (
        first.await.unwrap().unwrap(),
        second.await.unwrap().unwrap(),
    );
    assert_eq!(
        (first.str(41), first.str(4)),
        (Some("TERMAAAA"), Some("000000000111"))
    );
    assert_eq!(
        (second.str(41), second.str(4)),
        (Some("TERMBBBB"), Some("000000000222"))
    );
    assert_eq!(first.str(11), Some("000777"));
    assert_eq!(second.str(11), Some("000777"));
    let seen = issuer.received.lock().unwrap();
    assert_ne!(
        seen[0].str(11),
        seen[1].str(11),
        "distinct STANs on the wire"
    );
    assert!(seen.iter().all(|v| v.str(11) != Some("000777")));
}

#[tokio::test]
async fn a_duplicate_in_flight_is_refused_and_never_sent() {
    let issuer = FakeIssuer::start(Framing::default(), None, |_| {
        Reply::After(Duration::from_millis(300))
    })
    .await;
    for remap in [true, false] {
        let mut cfg = link_config(issuer.addr);
        cfg.remap_stan = remap;
        let link = Arc::new(ready_link(cfg).await);
        let before = issuer.received_count();
        let l = link.clone();
        let first = tokio::spawn(async move { l.send(&view(request(5, "TERMDUPL", 1))).await });
        assert!(eventually(WAIT, || link.in_flight() == 1).await);
        let dup = link
            .send(&view(request(5, "TERMDUPL", 1)))
            .await
            .unwrap_err();
        assert!(matches!(dup, MuxError::DuplicateInFlight { .. }), "{dup}");
        assert!(!dup.outcome_unknown());
        assert_eq!(first.await.unwrap().unwrap().str(39), Some("00"));
        assert_eq!(
            issuer.received_count() - before,
            1,
            "sent once (remap {remap})"
        );
    }
}

#[tokio::test]
async fn timeouts_then_late_responses_go_to_the_late_handler_only() {
    let issuer = FakeIssuer::start(Framing::default(), None, |r| {
        if r.str(41) == Some("TERMSLOW") {
            Reply::After(Duration::from_millis(400))
        } else {
            Reply::Code(b"00")
        }
    })
    .await;
    let mut cfg = link_config(issuer.addr);
    cfg.request_timeout = Duration::from_millis(100);
    let late = Arc::new(LateLog::default());
    let link = IssuerLink::start(cfg, Some(late.clone())).unwrap();
    assert!(link.wait_ready(WAIT).await);
    let err = link
        .send(&view(request(4242, "TERMSLOW", 1)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MuxError::Timeout {
                timeout_ms: 100,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.outcome_unknown(),
        "a timeout must be reversed, not declined"
    );
    // The link is still usable while the late answer is on its way.
    assert_eq!(
        link.send(&view(request(1, "TERMFAST", 1)))
            .await
            .unwrap()
            .str(39),
        Some("00")
    );
    assert!(eventually(WAIT, || late.0.lock().unwrap().len() == 1).await);
    let (stan, code, after) = late.0.lock().unwrap()[0].clone();
    assert_eq!(
        (stan.as_str(), code.as_str()),
        ("004242", "00"),
        "terminal STAN restored"
    );
    assert!(after >= Duration::from_millis(300));
    let stats = link.stats();
    assert_eq!(stats.timeouts.load(Ordering::Relaxed), 1);
    assert_eq!(stats.late_responses.load(Ordering::Relaxed), 1);
    assert_eq!(
        stats.responses.load(Ordering::Relaxed),
        1,
        "the late one was not delivered"
    );
}

#[tokio::test]
async fn a_caller_that_stops_waiting_leaves_its_response_to_the_late_handler() {
    let issuer = FakeIssuer::start(Framing::default(), None, |_| {
        Reply::After(Duration::from_millis(200))
    })
    .await;
    let late = Arc::new(LateLog::default());
    let link = IssuerLink::start(link_config(issuer.addr), Some(late.clone())).unwrap();
    assert!(link.wait_ready(WAIT).await);
    let abandoned = tokio::time::timeout(
        Duration::from_millis(50),
        link.send(&view(request(9, "TERMGONE", 1))),
    )
    .await;
    assert!(abandoned.is_err());
    assert_eq!(link.in_flight(), 0);
    assert!(eventually(WAIT, || late.0.lock().unwrap().len() == 1).await);
}

#[tokio::test]
async fn the_issuer_closing_mid_flight_fails_every_request_with_outcome_unknown() {
    let arrived = Arc::new(AtomicUsize::new(0));
    let count = arrived.clone();
    let issuer = FakeIssuer::start(Framing::default(), None, move |_| {
        if count.fetch_add(1, Ordering::SeqCst) + 1 == 5 {
            Reply::Close
        } else {
            Reply::Ignore
        }
    })
    .await;
    let mut cfg = link_config(issuer.addr);
    cfg.request_timeout = Duration::from_secs(30);
    let link = Arc::new(ready_link(cfg).await);
    let started = std::time::Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..5u32 {
        let link = link.clone();
        calls.spawn(async move { link.send(&view(request(i + 1, "TERMLOST", 1))).await });
    }
    while let Some(done) = calls.join_next().await {
        let err = done.unwrap().unwrap_err();
        assert!(matches!(err, MuxError::ConnectionLost { .. }), "{err}");
        assert!(err.outcome_unknown());
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed at once, not at the 30 s deadline"
    );
    // And the link reconnects by itself.
    assert!(eventually(WAIT, || issuer.accepted.load(Ordering::SeqCst) >= 2).await);
}

#[tokio::test]
async fn a_full_in_flight_table_answers_busy_at_once_and_a_down_link_says_down() {
    let issuer = FakeIssuer::start(Framing::default(), None, |_| Reply::Ignore).await;
    let mut cfg = link_config(issuer.addr);
    cfg.max_in_flight = 2;
    cfg.request_timeout = Duration::from_millis(500);
    let link = Arc::new(ready_link(cfg).await);
    let mut held = Vec::new();
    for i in 0..2u32 {
        let link = link.clone();
        held.push(tokio::spawn(async move {
            link.send(&view(request(i + 1, "TERMBUSY", 1))).await
        }));
    }
    assert!(eventually(WAIT, || link.in_flight() == 2).await);
    let busy = link
        .send(&view(request(3, "TERMBUSY", 1)))
        .await
        .unwrap_err();
    assert!(
        matches!(busy, MuxError::LinkBusy { limit: 2, .. }),
        "{busy}"
    );
    assert!(!busy.outcome_unknown());
    for h in held {
        assert!(matches!(h.await.unwrap(), Err(MuxError::Timeout { .. })));
    }
    assert_eq!(
        issuer.received_count(),
        2,
        "the busy request was never sent"
    );

    let nowhere = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = nowhere.local_addr().unwrap();
    drop(nowhere);
    let down = IssuerLink::start(link_config(dead), None).unwrap();
    let err = down
        .send(&view(request(1, "TERMDOWN", 1)))
        .await
        .unwrap_err();
    assert!(matches!(err, MuxError::LinkDown { .. }), "{err}");
    assert!(!err.outcome_unknown());
}

#[tokio::test]
async fn the_link_fails_over_to_the_secondary_endpoint() {
    let nowhere = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let primary = nowhere.local_addr().unwrap();
    drop(nowhere);
    let secondary = FakeIssuer::start(Framing::default(), None, |_| Reply::Code(b"00")).await;
    let mut cfg = link_config(primary);
    cfg.endpoints.push(Endpoint {
        addr: secondary.addr.to_string(),
        tls: None,
    });
    let link = ready_link(cfg).await;
    assert_eq!(
        link.connections(),
        [(ConnectionState::Ready, 1)],
        "on the secondary"
    );
    assert_eq!(
        link.send(&view(request(1, "TERMFAIL", 1)))
            .await
            .unwrap()
            .str(39),
        Some("00")
    );
    assert!(link.stats().connect_failures.load(Ordering::Relaxed) >= 1);

    // Primary and secondary both up: the primary is preferred after a reconnect.
    let primary_issuer = FakeIssuer::start(Framing::default(), None, |_| Reply::Code(b"00")).await;
    let mut cfg = link_config(primary_issuer.addr);
    cfg.endpoints.push(Endpoint {
        addr: secondary.addr.to_string(),
        tls: None,
    });
    cfg.connections = 2;
    let both = ready_link(cfg).await;
    assert!(eventually(WAIT, || both.ready_connections() == 2).await);
    assert!(both
        .connections()
        .iter()
        .all(|&(_, endpoint)| endpoint == 0));
}

#[tokio::test]
async fn an_issuer_that_goes_silent_is_detected_by_echo_tests_and_reconnected() {
    // Answers sign-on, then nothing more on that connection, never closing it.
    let issuer = FakeIssuer::start(Framing::default(), None, move |r| {
        if r.str(70) == Some("001") {
            Reply::Code(b"00")
        } else {
            Reply::Ignore
        }
    })
    .await;
    let mut cfg = link_config(issuer.addr);
    cfg.sign_on = true;
    cfg.echo_interval = Some(Duration::from_millis(100));
    cfg.echo_timeout = Duration::from_millis(100);
    cfg.max_missed_echoes = 2;
    let link = ready_link(cfg).await;
    let stats = link.stats();
    assert!(
        eventually(WAIT, || stats.echo_down.load(Ordering::Relaxed) >= 1).await,
        "marked down"
    );
    assert!(stats.echoes_missed.load(Ordering::Relaxed) >= 2);
    assert!(
        eventually(WAIT, || issuer.accepted.load(Ordering::SeqCst) >= 2).await,
        "reconnected"
    );
    let seen = issuer.received.lock().unwrap();
    let codes: Vec<&str> = seen.iter().filter_map(|v| v.str(70)).collect();
    assert_eq!(codes.first(), Some(&"001"), "sign-on first: {codes:?}");
    assert!(codes.contains(&"301"), "echo tests sent: {codes:?}");
}

#[tokio::test]
async fn sign_on_gates_readiness() {
    let refusing = FakeIssuer::start(Framing::default(), None, |_| Reply::Code(b"91")).await;
    let mut cfg = link_config(refusing.addr);
    cfg.sign_on = true;
    cfg.echo_timeout = Duration::from_millis(200);
    let link = IssuerLink::start(cfg, None).unwrap();
    assert!(
        !link.wait_ready(Duration::from_millis(600)).await,
        "refused sign-on: not ready"
    );
    assert!(link.stats().sign_on_failures.load(Ordering::Relaxed) >= 1);
    assert!(matches!(
        link.send(&view(request(1, "TERMSIGN", 1))).await,
        Err(MuxError::LinkDown { .. })
    ));
    assert!(
        refusing
            .received
            .lock()
            .unwrap()
            .iter()
            .all(|v| v.mti().as_str() == "0800"),
        "no request reached an issuer that refused sign-on"
    );

    let accepting = FakeIssuer::start(Framing::default(), None, |_| Reply::Code(b"00")).await;
    let mut cfg = link_config(accepting.addr);
    cfg.sign_on = true;
    let link = ready_link(cfg).await;
    assert_eq!(
        link.send(&view(request(2, "TERMSIGN", 1)))
            .await
            .unwrap()
            .str(39),
        Some("00")
    );
}

#[tokio::test]
async fn reconnect_backoff_is_bounded_against_an_issuer_that_drops_every_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counted = accepts.clone();
    let dropper = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    let mut cfg = link_config(addr);
    cfg.reconnect_min = Duration::from_millis(20);
    cfg.reconnect_max = Duration::from_millis(160);
    let link = IssuerLink::start(cfg, None).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let n = accepts.load(Ordering::SeqCst);
    // Delays 10-20, 20-40, 40-80, then 80-160 ms: about 12 attempts in 1.5 s. Without
    // backoff it would be hundreds; with a stuck backoff, one or two.
    assert!((5..=40).contains(&n), "{n} connection attempts in 1.5 s");
    drop(link);
    dropper.abort();
}

#[tokio::test]
async fn issuer_echoes_are_answered_and_malformed_responses_fail_their_request() {
    let issuer = FakeIssuer::start(Framing::default(), None, |r| {
        // A response whose field 4 holds a letter: framed, undecodable, but 11/41 readable.
        let mut raw = respond(r, b"00").to_vec();
        let at = view(Bytes::from(raw.clone())).range(4).unwrap().start;
        raw[at] = b'Z';
        Reply::Raw(Bytes::from(raw))
    })
    .await;
    let link = ready_link(link_config(issuer.addr)).await;
    let started = std::time::Instant::now();
    let err = link
        .send(&view(request(8, "TERMBADR", 1)))
        .await
        .unwrap_err();
    assert!(matches!(err, MuxError::MalformedResponse { .. }), "{err}");
    assert!(err.outcome_unknown());
    assert!(started.elapsed() < Duration::from_secs(4), "failed at once");

    // The issuer sends an echo of its own: the link answers 0810 / 00.
    let echo = {
        let mut b = MessageBuilder::new(spec(), Mti::parse("0800").unwrap());
        b.set(7, "1124093000")
            .unwrap()
            .set(11, "123456")
            .unwrap()
            .set(70, "301")
            .unwrap();
        b.encode()
    };
    let conn = issuer.connections.lock().unwrap()[0].clone();
    conn.send(echo).await.unwrap();
    assert!(
        eventually(WAIT, || {
            issuer.received.lock().unwrap().iter().any(|v| {
                v.mti().as_str() == "0810" && v.str(39) == Some("00") && v.str(11) == Some("123456")
            })
        })
        .await
    );
    assert_eq!(
        link.stats().issuer_echoes_answered.load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_link_and_an_acceptor_together_carry_a_terminal_to_an_issuer() {
    // The simplest switch: terminal -> acceptor -> link -> issuer, and back.
    struct Forward(IssuerLink);
    impl switchyard_mux::Handler for Forward {
        async fn request(
            &self,
            _: &Arc<switchyard_mux::ConnectionInfo>,
            request: switchyard_iso8583::MessageView<'static>,
        ) -> Option<Bytes> {
            Some(self.0.send(&request).await.ok()?.into_bytes())
        }
    }
    let issuer = FakeIssuer::start(Framing::default(), None, |_| Reply::Code(b"05")).await;
    let link = ready_link(link_config(issuer.addr)).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = Arc::new(switchyard_mux::Acceptor::new(
        switchyard_mux::AcceptorConfig::new("terminals", spec()),
        Arc::new(Forward(link)),
        None,
    ));
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(acceptor.serve(listener, shutdown.clone()));
    let mut terminal = Peer::connect(addr, Framing::default()).await;
    let answer = terminal.call(request(321, "TERME2E1", 4500)).await;
    assert_eq!(
        (answer.mti().as_str(), answer.str(39), answer.str(11)),
        ("0210", Some("05"), Some("000321"))
    );
    shutdown.cancel();
}
