//! The real `switchyard run` process with a config file, simulated issuers, and terminals
//! over TCP and TLS on 127.0.0.1. Every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use switchyard_audit::{query, Filter, OnDamage, Outcome, PairRecord};
use switchyard_iso8583::{shipped, MessageBuilder, MessageView, Mti, Spec};
use switchyard_mux::{Frame, FrameCodec, Framing};
use switchyard_sim::{IssuerSim, IssuerSimConfig};
use tokio_util::codec::{Decoder, Encoder};

use crate::support::switchyard;

const WAIT: Duration = Duration::from_secs(15);

pub(crate) fn spec() -> &'static Spec {
    shipped("iso8583-1987-ascii").unwrap()
}

/// A port free right now on 127.0.0.1.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The admin tokens of the test switches: operators alice and bob, and a scraper.
pub const TOKENS: [(&str, &str, &str); 3] = [
    ("alice", "operator", "alice-4f1c9a7e2b"),
    ("bob", "operator", "bob-9d2e7c4a1f"),
    ("prometheus", "scrape", "scrape-3b8e6d1c0a"),
];

/// The tokens file (hashes only) and one file per token, as an operator keeps it.
fn write_tokens(dir: &Path) -> PathBuf {
    let mut lines = String::new();
    for (name, role, token) in TOKENS {
        let hash = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        lines.push_str(&format!("{name} {role} {hex}\n"));
        std::fs::write(dir.join(format!("{name}.token")), token).unwrap();
    }
    let path = dir.join("admin-tokens");
    std::fs::write(&path, lines).unwrap();
    path
}

/// A running switch process; killed when dropped.
pub struct Switch {
    child: Child,
    pub terminals: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// Environment variables the process gets (secrets kept out of the file).
    env: Vec<(String, String)>,
}

impl Drop for Switch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Switch {
    /// Start with `body` (links, routes, extra listeners) added to a base config with one
    /// plain listener, an admin port and the audit log in a temporary directory.
    pub fn start(body: &str) -> Switch {
        Switch::start_with_env(body, &[])
    }

    /// [`start`](Self::start), the process given these environment variables.
    pub fn start_with_env(body: &str, env: &[(&str, &str)]) -> Switch {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("switchyard.toml");
        let tokens = write_tokens(dir.path());
        // A free port can be taken by another test's process between our probe and the
        // switch's bind: then the switch exits at once, and starts again on other ports.
        for _ in 0..5 {
            let (terminals, admin) = (free_port(), free_port());
            let text = format!(
                "[admin]\nlisten = \"127.0.0.1:{admin}\"\ntokens_file = \"{}\"\n[shutdown]\ngrace_ms = 5000\n[audit]\ndir = \"{}\"\ndemo_keys = true\n\
                 [[listeners]]\nname = \"terminals\"\nlisten = \"127.0.0.1:{terminals}\"\n{body}",
                tokens.display(),
                dir.path().join("audit").display()
            );
            std::fs::write(&config, text).unwrap();
            let _ = std::fs::remove_file(config.with_file_name("switchyard.log"));
            let mut child = Self::spawn(&config, &env);
            let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
            let deadline = Instant::now() + WAIT;
            loop {
                if http_get(admin, "/readyz").0 == 200 {
                    return Switch {
                        child,
                        env,
                        terminals: format!("127.0.0.1:{terminals}").parse().unwrap(),
                        admin,
                        dir,
                        config,
                    };
                }
                let log = || {
                    std::fs::read_to_string(config.with_file_name("switchyard.log"))
                        .unwrap_or_default()
                };
                if child.try_wait().unwrap().is_some() {
                    let log = log();
                    assert!(
                        log.contains("Address already in use"),
                        "switch exited; its log:\n{log}"
                    );
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("switch not ready in time; its log:\n{}", log());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("no free ports for the switch after 5 tries");
    }

    /// Start the process; its log goes to `switchyard.log` beside the config.
    fn spawn(config: &Path, env: &[(String, String)]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(config.with_file_name("switchyard.log"))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["run", "--config"])
            .arg(config)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        while http_get(self.admin, "/readyz").0 != 200 {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.config.with_file_name("switchyard.log"))
                    .unwrap_or_default();
                panic!("switch not ready in time; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the process if it still runs (SIGTERM), then start it again on the same
    /// configuration and data.
    pub fn restart(mut self) -> Switch {
        if self.child.try_wait().unwrap().is_none() {
            self.signal("-TERM");
            self.wait_exit();
        }
        self.child = Self::spawn(&self.config, &self.env);
        self.wait_ready();
        self
    }

    /// SIGTERM and wait: the exit code.
    pub fn wait_for_term(&mut self) -> Option<i32> {
        self.signal("-TERM");
        self.wait_exit()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Wait for the process to exit; its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "switch did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    /// `switchyard audit verify` passes on this switch's log.
    pub fn assert_audit_verifies(&self) {
        let dir = self.audit_dir();
        let out = switchyard(
            &[
                "audit",
                "verify",
                "--dir",
                dir.to_str().unwrap(),
                "--demo-keys",
            ],
            b"",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The file holding `name`'s admin token.
    pub fn token_file(&self, name: &str) -> String {
        self.dir
            .path()
            .join(format!("{name}.token"))
            .display()
            .to_string()
    }

    /// One metric's value with these labels (0 when absent).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_in(&http_get(self.admin, "/metrics").1, name, labels)
    }
}

/// One metric's value with these labels in a scrape (0 when absent).
pub fn metric_in(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A plain HTTP GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_as(addr, path, None)
}

/// An HTTP GET with an operator's bearer token (`/saf`).
pub fn operator_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_as(addr, path, Some(TOKENS[0].2))
}

fn http_get_as(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A terminal speaking framed ISO 8583 over a blocking socket (TCP or anything `Read + Write`).
pub struct Terminal<S> {
    stream: S,
    codec: FrameCodec,
    buf: BytesMut,
}

impl Terminal<TcpStream> {
    pub fn connect(addr: SocketAddr) -> Terminal<TcpStream> {
        let stream = TcpStream::connect_timeout(&addr, WAIT).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Terminal::over(stream)
    }
}

impl<S: Read + Write> Terminal<S> {
    pub fn over(stream: S) -> Terminal<S> {
        Terminal {
            stream,
            codec: FrameCodec::new(Framing::default()),
            buf: BytesMut::new(),
        }
    }

    pub fn send(&mut self, message: &[u8]) {
        let mut out = BytesMut::new();
        self.codec
            .encode(Frame::new(Bytes::copy_from_slice(message)), &mut out)
            .unwrap();
        self.stream.write_all(&out).unwrap();
    }

    /// The next answer; `None` when the connection closed.
    pub fn recv(&mut self) -> Option<MessageView<'static>> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf).unwrap() {
                return Some(MessageView::decode(spec(), frame.message).unwrap());
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub fn call(&mut self, message: &[u8]) -> MessageView<'static> {
        self.send(message);
        self.recv().expect("answered")
    }
}

/// A 0200 with the usual fields, and `extra` fields (number, value) on top.
pub fn financial(pan: &str, tid: &str, stan: u32, amount: u64, extra: &[(u8, &str)]) -> Bytes {
    let mut b = MessageBuilder::new(spec(), Mti::parse("0200").unwrap());
    b.set(2, pan)
        .unwrap()
        .set(3, "000000")
        .unwrap()
        .set_u64(4, amount)
        .unwrap();
    b.set(7, "1124093000")
        .unwrap()
        .set_u64(11, u64::from(stan))
        .unwrap();
    b.set(41, tid).unwrap().set(49, "978").unwrap();
    for (n, v) in extra {
        b.set(*n, v).unwrap();
    }
    b.encode()
}

pub fn request(pan: &str, stan: u32, amount: u64) -> Bytes {
    let rrn = format!("{stan:012}");
    financial(
        pan,
        "TERME2E1",
        stan,
        amount,
        &[(37, &rrn), (42, "MERCHANT0000001")],
    )
}

/// Every pair record of the (demo-keyed) log in `dir`, each verified as it is read.
/// The audit log's events whose name `which` takes, in order.
pub fn audit_events(dir: &Path, which: impl Fn(&str) -> bool) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    switchyard_audit::for_each(dir, |r| {
        if r.kind == Some(switchyard_audit::RecordKind::Event) {
            let v: serde_json::Value = switchyard_audit::payload::decode(r.seq, r.payload)?;
            if v["event"].as_str().is_some_and(&which) {
                all.push(v);
            }
        }
        Ok(())
    })
    .unwrap();
    all
}

pub fn records(dir: &Path) -> Vec<PairRecord> {
    let mut all = Vec::new();
    let keys = switchyard_audit::AuditKeys::demo();
    query(
        dir,
        keys.chain(),
        OnDamage::Stop,
        &Filter::default(),
        |_, r| all.push(r),
    )
    .unwrap();
    all
}

pub(crate) fn link(name: &str, addr: impl std::fmt::Display, extra: &str) -> String {
    format!("[[links]]\nname = \"{name}\"\nendpoints = [\"{addr}\"]\nreconnect_min_ms = 50\nreconnect_max_ms = 200\n{extra}\n")
}

pub(crate) fn route(name: &str, bins: &str, link: &str) -> String {
    format!("[[routes]]\nname = \"{name}\"\nbins = [{bins}]\nlink = \"{link}\"\n")
}

pub(crate) fn issuers(
    rt: &tokio::runtime::Runtime,
    configs: Vec<IssuerSimConfig>,
) -> Vec<IssuerSim> {
    rt.block_on(async {
        let mut all = Vec::new();
        for c in configs {
            all.push(IssuerSim::start("127.0.0.1:0", c).await.unwrap());
        }
        all
    })
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Test certificates for the TLS listener: (CA path, cert path, key path).
fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[test]
fn the_switch_routes_answers_audits_and_counts_every_transaction() {
    let rt = runtime();
    let mut silent = IssuerSimConfig::approving(spec());
    silent.silence_rate = 1.0;
    let mut declining = IssuerSimConfig::approving(spec());
    declining.approval_rate = 0.0;
    let sims = issuers(
        &rt,
        vec![IssuerSimConfig::approving(spec()), declining, silent],
    );
    let dead = free_port();
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(certs.path());
    let tls_port = free_port();
    let body = format!(
        "[[listeners]]\nname = \"terminals-tls\"\nlisten = \"127.0.0.1:{tls_port}\"\n[listeners.tls]\ncert = \"{}\"\nkey = \"{}\"\n{}{}{}{}{}{}{}{}",
        cert.display(),
        key.display(),
        link("approver", sims[0].addr, ""),
        link("decliner", sims[1].addr, ""),
        link("silent", sims[2].addr, "timeout_ms = 700"),
        link("dead", format!("127.0.0.1:{dead}"), ""),
        route("visa", "\"4\"", "approver"),
        route("mastercard", "\"51-55\"", "decliner"),
        route("discover", "\"6011\"", "dead"),
        route("amex", "\"34\", \"37\"", "silent"),
    );
    let switch = Switch::start(&body);
    let mut t = Terminal::connect(switch.terminals);

    let approved = t.call(&request("4000056655665556", 101, 1500));
    assert_eq!(
        (approved.str(39), approved.str(11)),
        (Some("00"), Some("000101")),
        "STAN restored"
    );
    assert_eq!(
        approved.field(38).map(|f| f.text().len()),
        Some(6),
        "issuer's auth id passed through"
    );
    assert_eq!(
        (approved.str(4), approved.str(37), approved.str(41)),
        (Some("000000001500"), Some("000000000101"), Some("TERME2E1"))
    );
    let standing = sims[0].ledger.standing();
    assert_eq!(standing.len(), 1);
    assert_ne!(
        standing[0].0 .1, "000101",
        "the issuer saw the link's own STAN"
    );
    assert_eq!(
        t.call(&request("5413330089020011", 102, 99)).str(39),
        Some("05")
    );
    let started = Instant::now();
    assert_eq!(
        t.call(&request("6011000990139424", 103, 99)).str(39),
        Some("91"),
        "dead issuer"
    );
    assert_eq!(
        t.call(&request("378282246310005", 104, 99)).str(39),
        Some("91"),
        "silent issuer"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "91 within the timeout"
    );
    assert_eq!(
        t.call(&request("3530111333300000", 105, 99)).str(39),
        Some("15"),
        "no route"
    );
    let mut garbage = request("4000056655665556", 106, 99).to_vec();
    let at = MessageView::decode(spec(), Bytes::from(garbage.clone()))
        .unwrap()
        .range(4)
        .unwrap()
        .start;
    garbage[at] = b'Z';
    let answer = t.call(&garbage);
    assert_eq!(
        (answer.str(39), answer.str(11)),
        (Some("30"), Some("000106"))
    );
    assert_eq!(
        t.call(&request("4000056655665556", 107, 250)).str(39),
        Some("00"),
        "the connection survived"
    );

    // Over TLS too.
    let tls = switchyard_mux::ClientTls::load(switchyard_mux::ClientTlsFiles {
        ca: ca.clone(),
        server_name: "localhost".into(),
        client_auth: None,
    })
    .unwrap();
    let over_tls = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
            .await
            .unwrap();
        let mut s = tls
            .connector()
            .connect(tls.server_name(), tcp)
            .await
            .unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut out = BytesMut::new();
        FrameCodec::new(Framing::default())
            .encode(Frame::new(request("4000056655665556", 108, 10)), &mut out)
            .unwrap();
        s.write_all(&out).await.unwrap();
        let mut buf = BytesMut::new();
        let mut codec = FrameCodec::new(Framing::default());
        let answer = async {
            loop {
                if let Some(f) = codec.decode(&mut buf).unwrap() {
                    return MessageView::decode(spec(), f.message).unwrap();
                }
                assert!(s.read_buf(&mut buf).await.unwrap() > 0);
            }
        };
        tokio::time::timeout(WAIT, answer)
            .await
            .expect("no answer over TLS within the test's wait")
    });
    assert_eq!(over_tls.str(39), Some("00"));

    // Exactly one audit pair per transaction, with its outcome; the log verifies.
    let expected = [
        ("000101", Outcome::Approved),
        ("000102", Outcome::Declined),
        ("000103", Outcome::LinkDown),
        ("000104", Outcome::Timeout),
        ("000105", Outcome::NoRoute),
        ("000106", Outcome::FormatError),
        ("000107", Outcome::Approved),
        ("000108", Outcome::Approved),
    ];
    let recorded = records(&switch.audit_dir());
    assert_eq!(recorded.len(), expected.len(), "{recorded:#?}");
    for (stan, outcome) in expected {
        let matching: Vec<_> = recorded
            .iter()
            .filter(|r| r.stan.as_deref() == Some(stan))
            .collect();
        assert_eq!(matching.len(), 1, "one pair for STAN {stan}");
        assert_eq!(matching[0].outcome, Some(outcome), "STAN {stan}");
    }
    switch.assert_audit_verifies();

    // The metrics count what was sent.
    assert_eq!(
        switch.metric("switchyard_requests_total", &[("outcome", "approved")]),
        3.0
    );
    assert_eq!(
        switch.metric(
            "switchyard_requests_total",
            &[("outcome", "approved"), ("listener", "terminals-tls")]
        ),
        1.0
    );
    assert_eq!(
        switch.metric(
            "switchyard_requests_total",
            &[("outcome", "declined"), ("route", "mastercard")]
        ),
        1.0
    );
    assert_eq!(
        switch.metric("switchyard_responses_total", &[("response_code", "91")]),
        2.0
    );
    assert_eq!(
        switch.metric("switchyard_responses_total", &[("response_code", "15")]),
        1.0
    );
    assert_eq!(
        switch.metric(
            "switchyard_decode_errors_total",
            &[("reason", "invalid_character")]
        ),
        1.0
    );
    // Eight pairs, and an in-flight record before each of the five requests put on a wire.
    assert_eq!(switch.metric("switchyard_audit_records_total", &[]), 13.0);
    // The silent issuer's timeout left an unknown outcome: its reversal is queued.
    let (_, saf) = operator_get(switch.admin, "/saf");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&saf).unwrap();
    assert_eq!(entries.len(), 1, "{saf}");
    assert_eq!(entries[0]["link"], "silent");
    assert_eq!(entries[0]["basis"]["original_mti"], "0200");
    assert_eq!(switch.metric("switchyard_saf_backlog", &[]), 1.0);
    assert_eq!(
        switch.metric("switchyard_link_up", &[("link", "dead")]),
        0.0
    );
    assert_eq!(
        switch.metric("switchyard_link_up", &[("link", "approver")]),
        1.0
    );
    // The request's timeout, and one for each reversal attempt the silent issuer has let
    // time out so far (the last one started may still be waiting): from one scrape.
    let (_, metrics) = http_get(switch.admin, "/metrics");
    let timeouts = metric_in(
        &metrics,
        "switchyard_link_events_total",
        &[("link", "silent"), ("event", "timeout")],
    );
    let reversals_sent = metric_in(&metrics, "switchyard_saf_attempts_total", &[]);
    assert!(
        timeouts >= 1.0 && [reversals_sent, reversals_sent + 1.0].contains(&timeouts),
        "{timeouts} timeouts, {reversals_sent} reversal attempts"
    );
    for secret in ["4000056655665556", "000101", "TERME2E1"] {
        assert!(!metrics.contains(secret), "{secret} in /metrics");
    }
    assert_eq!(http_get(switch.admin, "/livez").0, 200);
    // Anything but health and metrics takes a token, even to learn it is not there.
    assert_eq!(http_get(switch.admin, "/nothing").0, 401);
    assert_eq!(operator_get(switch.admin, "/nothing").0, 404);
    drop(sims);
}

#[test]
fn sigterm_under_load_answers_every_request_it_took() {
    let rt = runtime();
    let mut slow = IssuerSimConfig::approving(spec());
    slow.delay_min = Duration::from_millis(5);
    slow.delay_max = Duration::from_millis(60);
    let sims = issuers(&rt, vec![slow]);
    let mut switch = Switch::start(&format!(
        "{}[routing]\ndefault = \"issuer\"\n",
        link("issuer", sims[0].addr, "")
    ));
    let addr = switch.terminals;
    // Eight terminals, each keeping four requests in flight until its connection closes.
    let terminals: Vec<_> = (0..8u32)
        .map(|n| {
            std::thread::spawn(move || {
                let stream = TcpStream::connect_timeout(&addr, WAIT).unwrap();
                stream.set_read_timeout(Some(WAIT)).unwrap();
                let mut writer = Terminal::over(stream.try_clone().unwrap());
                let mut reader = Terminal::over(stream);
                let (mut sent, mut answered) = (0u32, 0u32);
                let deadline = Instant::now() + WAIT;
                for _ in 0..4 {
                    sent += 1;
                    writer.send(&request("4000056655665556", n * 100_000 + sent, 100));
                }
                while Instant::now() < deadline && sent < 50_000 {
                    match reader.recv() {
                        Some(a) => {
                            assert_eq!(a.str(39), Some("00"));
                            answered += 1;
                        }
                        None => break,
                    }
                    sent += 1;
                    let mut out = BytesMut::new();
                    let _ = FrameCodec::new(Framing::default()).encode(
                        Frame::new(request("4000056655665556", n * 100_000 + sent, 100)),
                        &mut out,
                    );
                    if writer.stream.write_all(&out).is_err() {
                        // The switch stopped reading: answers it sent before closing may
                        // still be waiting in this socket.
                        while let Some(a) = reader.recv() {
                            assert_eq!(a.str(39), Some("00"));
                            answered += 1;
                        }
                        break;
                    }
                }
                (sent, answered)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    switch.signal("-TERM");
    let exit = switch.wait_exit();
    let (mut sent, mut answered) = (0, 0);
    for t in terminals {
        let (s, a) = t.join().unwrap();
        sent += s;
        answered += a;
    }
    assert_eq!(exit, Some(0), "clean exit after the drain");
    assert!(answered > 50, "load was running ({answered} answered)");
    let recorded = records(&switch.audit_dir()).len() as u32;
    let forwarded = sims[0].ledger.requests.load(Ordering::Relaxed) as u32;
    // Nothing the switch took was lost: every request it read was forwarded, audited and
    // answered; the rest (sent after it stopped reading) reached neither issuer nor log.
    assert_eq!(recorded, answered, "audited = answered (sent {sent})");
    assert_eq!(forwarded, answered, "forwarded = answered");
    switch.assert_audit_verifies();
}

#[test]
fn sighup_changes_a_route_without_dropping_the_terminal() {
    let rt = runtime();
    let sims = issuers(
        &rt,
        vec![
            IssuerSimConfig::approving(spec()),
            IssuerSimConfig::approving(spec()),
        ],
    );
    let links = format!(
        "{}{}",
        link("first", sims[0].addr, ""),
        link("second", sims[1].addr, "")
    );
    let switch = Switch::start(&format!("{links}{}", route("visa", "\"4\"", "first")));
    let mut t = Terminal::connect(switch.terminals);
    assert_eq!(
        t.call(&request("4000056655665556", 1, 10)).str(39),
        Some("00")
    );
    assert_eq!(sims[0].ledger.approved.load(Ordering::Relaxed), 1);

    let original = std::fs::read_to_string(&switch.config).unwrap();
    std::fs::write(
        &switch.config,
        original.replace("link = \"first\"", "link = \"second\""),
    )
    .unwrap();
    switch.signal("-HUP");
    let deadline = Instant::now() + WAIT;
    while switch.metric("switchyard_config_reloads_total", &[("result", "ok")]) < 1.0 {
        assert!(Instant::now() < deadline, "reload not seen");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        t.call(&request("4000056655665556", 2, 10)).str(39),
        Some("00"),
        "same connection"
    );
    assert_eq!(
        sims[1].ledger.approved.load(Ordering::Relaxed),
        1,
        "now routed to the second issuer"
    );

    // A broken file is refused and the running routes stay.
    std::fs::write(&switch.config, "this is not toml [").unwrap();
    switch.signal("-HUP");
    while switch.metric("switchyard_config_reloads_total", &[("result", "error")]) < 1.0 {
        assert!(Instant::now() < deadline, "failed reload not seen");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        t.call(&request("4000056655665556", 3, 10)).str(39),
        Some("00")
    );
    assert_eq!(sims[1].ledger.approved.load(Ordering::Relaxed), 2);

    // A link endpoint changed: routes reload, the link waits for a restart, and the
    // reload is counted as needing one (not as ok).
    let moved = original.replacen(&sims[1].addr.to_string(), "127.0.0.1:1", 1);
    assert_ne!(moved, original);
    std::fs::write(&switch.config, moved).unwrap();
    switch.signal("-HUP");
    let restart = [("result", "restart_required")];
    while switch.metric("switchyard_config_reloads_total", &restart) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "restart-required reload not seen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        switch.metric("switchyard_config_reloads_total", &[("result", "ok")]),
        1.0
    );
}

#[test]
fn check_config_lists_every_problem_and_run_refuses_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[audit]\ndir = \"x\"\n[[listeners]]\nname = \"a\"\nlisten = \"nope\"\nspec = \"nospec\"\n[[routes]]\nname = \"r\"\nbins = [\"4\"]\nlink = \"missing\"\n",
    )
    .unwrap();
    // A file that is not there is unreadable input (66), not a bad configuration.
    let absent = dir.path().join("absent.toml");
    for args in [
        vec!["check-config", absent.to_str().unwrap()],
        vec!["run", "--config", absent.to_str().unwrap()],
    ] {
        let out = switchyard(&args, b"");
        assert_eq!(out.status.code(), Some(66), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("absent.toml"));
    }
    // Both keys named by variables that are not set: both reported, in one run.
    let keyless = dir.path().join("keyless.toml");
    std::fs::write(
        &keyless,
        "[audit]\ndir = \"x\"\nchain_key_env = \"SWITCHYARD_TEST_UNSET_CHAIN\"\npan_key_env = \"SWITCHYARD_TEST_UNSET_PAN\"\n",
    )
    .unwrap();
    let out = switchyard(&["check-config", keyless.to_str().unwrap()], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("key chain") && stderr.contains("key pan"),
        "every missing key at once: {stderr}"
    );
    let out = switchyard(&["check-config", bad.to_str().unwrap()], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78));
    for part in [
        "listeners[0] (\"a\").listen",
        "listeners[0] (\"a\").spec",
        "routes[0] (\"r\").link",
        "audit.chain_key",
    ] {
        assert!(stderr.contains(part), "{part} missing: {stderr}");
    }
    let out = switchyard(&["run", "--config", bad.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(78));
    let example = crate::support::root().join("deploy/config/switchyard.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check-config"])
        .arg(&example)
        .env("SWITCHYARD_AUDIT_CHAIN_KEY", "ab".repeat(32))
        .env("SWITCHYARD_AUDIT_PAN_KEY", "cd".repeat(32))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_embedded_default_runs_and_the_simulated_terminal_gets_approvals() {
    let dir = tempfile::tempdir().unwrap();
    // Free ports in place of the default 8583/9583: the suite passes while the README's
    // `switchyard run` holds those.
    let (terminals, admin) = (free_port(), free_port());
    let terminals = format!("127.0.0.1:{terminals}");
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--listen", &terminals, "--admin", &admin.to_string()])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while http_get(admin, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "default switch not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Known label sets are there at zero before their first event.
    let (_, metrics) = http_get(admin, "/metrics");
    for series in [
        "switchyard_decode_errors_total{listener=\"terminals\",reason=\"bad_bitmap\"} 0",
        "switchyard_registry_refusals_total{reason=\"unknown_terminal\"} 0",
        "switchyard_rule_hits_total{action=\"block\",rule=\"card_velocity\"} 0",
        "switchyard_config_reloads_total{result=\"restart_required\"} 0",
    ] {
        assert!(metrics.contains(series), "{series} missing");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "sim",
            "terminal",
            "--target",
            &terminals,
            "--connections",
            "4",
            "--count",
            "200",
            "--window",
            "4",
            "--json",
        ])
        .output()
        .unwrap();
    // One test transaction, the card read from standard input and never printed.
    let sent = switchyard(
        &[
            "send",
            "--target",
            &terminals,
            "--pan-stdin",
            "--amount",
            "1234",
        ],
        b"4000056655665556\n",
    );
    let shown = String::from_utf8_lossy(&sent.stdout);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let answer = shown.split("answer\n").nth(1).unwrap_or_default();
    assert!(answer.contains("39 Response code"), "{shown}");
    assert!(
        answer
            .lines()
            .any(|l| l.contains("Response code") && l.trim_end().ends_with("00")),
        "{shown}"
    );
    assert!(answer.contains("400005******5556") && !shown.contains("4000056655665556"));
    // The wrong dialect: noticed at once, with the reason, not after the timeout.
    let started = Instant::now();
    let wrong = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["sim", "terminal", "--target", &terminals, "--count", "1"])
        .args(["--spec", "iso8583-1987-bcd", "--timeout-ms", "8000"])
        .output()
        .unwrap();
    let why = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(69), "{why}");
    assert!(why.contains("1 of 1 requests unanswered"), "{why}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "waited for the timeout: {why}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["answered"], 200, "{report}");
    assert_eq!(report["codes"]["00"], 200, "{report}");
    assert!(status.success());
    assert!(
        stderr.contains("DEMO AUDIT KEYS IN USE"),
        "demo keys are labelled loudly"
    );
    assert!(dir.path().join("switchyard-data/audit").is_dir());
}
