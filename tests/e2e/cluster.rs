//! Several instances as one switch, end to end with a real `nats-server` (JetStream) on a
//! loopback port and a temporary store: the audit stream.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchyard_sim::IssuerSimConfig;

use crate::switch::{free_port, http_get, issuers, link, metric_in, route, runtime, Switch};

/// A `nats-server` with JetStream, restartable on the same port and store.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    store: tempfile::TempDir,
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The nats-server binary (`.ci/run` installs Debian's package).
fn nats_server() -> PathBuf {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

impl Nats {
    pub fn start() -> Nats {
        Nats::with_accounts("")
    }

    /// A server whose configuration file holds `accounts` (users and their permissions).
    pub fn with_accounts(accounts: &str) -> Nats {
        let store = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = store.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\n{accounts}\n",
                store.path().join("js").display()
            ),
        )
        .unwrap();
        let mut nats = Nats {
            child: None,
            port,
            store,
        };
        nats.spawn();
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(nats_server())
            .arg("-c")
            .arg(self.store.path().join("nats.conf"))
            .arg("-l")
            .arg(self.store.path().join("nats.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (apt-get install nats-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the broker gone at once.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

/// The `[cluster]` section of instance `id`.
pub fn cluster_section(nats: &Nats, id: &str) -> String {
    format!(
        "[cluster]\nservers = [\"{}\"]\ninstance = \"{id}\"\nconnect_timeout_ms = 500\nack_timeout_ms = 1000\nhome_settle_s = 1\n",
        nats.url()
    )
}

/// Two instances, `sw-0` and `sw-1`, of one group on `nats`, both linked to `issuer` (the
/// link's `extra` settings added, and `top` settings before the sections).
fn two_instances(
    nats: &Nats,
    issuer: std::net::SocketAddr,
    extra: &str,
    top: &str,
) -> (Switch, Switch) {
    let body = |id: &str| {
        format!(
            "spec = \"iso8583-1987-ascii\"\n{top}{}{}{}",
            cluster_section(nats, id),
            link("issuer", issuer, extra),
            route("all", "\"2\", \"4\", \"5\", \"6\"", "issuer")
        )
    };
    (Switch::start(&body("sw-0")), Switch::start(&body("sw-1")))
}

/// Load on `switch` from a `sim terminal` process for `seconds`: (sent, answered).
fn load(
    switch: &Switch,
    seconds: u64,
    first_terminal: &str,
) -> std::thread::JoinHandle<(u64, u64)> {
    let target = switch.terminals.to_string();
    let first = first_terminal.to_string();
    std::thread::spawn(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            // Open loop at a modest rate: the suite's other tests share the two cores.
            .args(["sim", "terminal", "--target", &target, "--connections", "2"])
            .args(["--rate", "250", "--json", "--first-terminal", &first])
            .args(["--duration", &seconds.to_string()])
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        (
            report["sent"].as_u64().unwrap(),
            report["answered"].as_u64().unwrap(),
        )
    })
}

/// The number of records in a switch's local log (`audit verify`).
fn local_records(dir: &Path) -> u64 {
    let out = crate::support::switchyard(
        &[
            "audit",
            "verify",
            "--dir",
            dir.to_str().unwrap(),
            "--demo-keys",
        ],
        b"",
    );
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    said.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}{}", String::from_utf8_lossy(&out.stderr)))
}

/// Wait until the switch's audit stream has caught up with its log.
fn wait_shipped(switch: &Switch) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let scrape = http_get(switch.admin, "/metrics").1;
        let lag = metric_in(&scrape, "switchyard_audit_stream_lag_records", &[]);
        let connected = metric_in(&scrape, "switchyard_audit_stream_connected", &[]);
        let acked = metric_in(&scrape, "switchyard_audit_stream_acked_seq", &[]);
        if lag == 0.0 && connected == 1.0 && acked > 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not shipped: lag {lag}, connected {connected}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `audit <command> --stream ... --format jsonl`: its lines.
fn stream_jsonl(nats: &Nats, command: &str) -> Vec<serde_json::Value> {
    let url = nats.url();
    let args = [
        "audit",
        command,
        "--stream",
        &url,
        "--demo-keys",
        "--format",
        "jsonl",
    ];
    crate::support::json_lines(&crate::support::switchyard(&args, b""))
}

/// `audit verify --stream`: per instance, (records verified, first, last).
fn verify_stream(nats: &Nats) -> Vec<(String, u64, u64, u64)> {
    let out = crate::support::switchyard(
        &["audit", "verify", "--stream", &nats.url(), "--demo-keys"],
        b"",
    );
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    said.lines()
        .filter_map(|l| {
            // ok: instance sw-0: 123 records verified (sequence 1..=123)
            let rest = l.strip_prefix("ok: instance ")?;
            let (name, rest) = rest.split_once(": ")?;
            let records = rest.split_whitespace().next()?.parse().ok()?;
            let range = rest.split("sequence ").nth(1)?.trim_end_matches(')');
            let (a, b) = range.split_once("..=")?;
            Some((name.to_string(), records, a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// Two instances under load ship every record of their logs to the audit stream; the
/// broker killed for 10 s under that load fails no terminal request, and once it is back
/// every record of both is in the stream exactly once (each chain verified on its own:
/// sequence 1 to the last, none missing or repeated); a restarted instance resumes where
/// the stream stands.
#[test]
fn two_instances_ship_every_record_once_through_a_broker_outage() {
    let rt = runtime();
    let sims = issuers(&rt, vec![IssuerSimConfig::approving(crate::switch::spec())]);
    let mut nats = Nats::start();
    let (a, b) = two_instances(&nats, sims[0].addr, "", "");
    let loads = [load(&a, 14, "1"), load(&b, 14, "20")];
    std::thread::sleep(Duration::from_secs(2));
    nats.kill();
    std::thread::sleep(Duration::from_secs(10));
    nats.restart();
    for l in loads {
        let (sent, answered) = l.join().unwrap();
        assert!(sent > 100, "{sent}");
        assert_eq!(answered, sent, "no request failed for the broker");
    }
    let outage_errors = metric_in(
        &http_get(a.admin, "/metrics").1,
        "switchyard_audit_stream_errors_total",
        &[],
    );
    for s in [&a, &b] {
        wait_shipped(s);
    }
    let shipped = verify_stream(&nats);
    let expect = |s: &Switch, id: &str| {
        let n = local_records(&s.audit_dir());
        (id.to_string(), n, 1, n)
    };
    assert_eq!(
        shipped,
        vec![expect(&a, "sw-0"), expect(&b, "sw-1")],
        "exactly once"
    );
    assert!(outage_errors > 0.0, "the outage was seen and counted");
    // The shared state is back too (its in-memory buckets made again): once the client has
    // reconnected, a load on B from terminals new to it has every request claimed (each
    // terminal's first synchronously, its coming home written to the group, the rest by
    // their records or behind), none unreachable.
    let shared = |s: &Switch, op: &str, result: &str| {
        let scrape = http_get(s.admin, "/metrics").1;
        metric_in(
            &scrape,
            "switchyard_shared_state_total",
            &[("op", op), ("result", result)],
        )
    };
    let counts = || {
        let of = |op, result| shared(&b, op, result);
        let unreachable = ["claim", "claim-behind", "come-home"].map(|op| of(op, "unreachable"));
        (
            of("claim", "ok"),
            of("come-home", "ok"),
            of("claim-behind", "ok") + of("claim-behind", "recorded"),
            unreachable.iter().sum::<f64>(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    for round in 0.. {
        let before = counts();
        let first = (40 + 2 * round).to_string();
        let (sent, answered) = load(&b, 2, &first).join().unwrap();
        assert_eq!(answered, sent);
        let after = counts();
        let (claimed, homes, behind) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
        if after.3 == before.3 && claimed >= 1.0 && homes >= 1.0 && claimed + behind >= sent as f64
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shared state not back: {claimed} claimed, {homes} come home, {behind} behind, of {sent}"
        );
    }
    // Queried and reported from the stream: every pair of both instances, once.
    let pairs = |s: &Switch| crate::switch::records(&s.audit_dir()).len();
    let both = pairs(&a) + pairs(&b);
    let lines = stream_jsonl(&nats, "query");
    assert_eq!(lines.len(), both);
    assert_eq!(
        lines.iter().filter(|l| l["instance"] == "sw-1").count(),
        pairs(&b)
    );
    let counted: u64 = stream_jsonl(&nats, "report")
        .iter()
        .filter(|r| r["dimension"] == "day")
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, both as u64, "the report covers both instances");
    // A restart resumes where the stream stands: nothing again, nothing skipped.
    let a = a.restart();
    let (sent, answered) = load(&a, 2, "1").join().unwrap();
    assert_eq!(answered, sent);
    wait_shipped(&a);
    let shipped = verify_stream(&nats);
    assert_eq!(shipped[0], expect(&a, "sw-0"));
    let duplicates = metric_in(
        &http_get(a.admin, "/metrics").1,
        "switchyard_audit_stream_duplicates_total",
        &[],
    );
    assert_eq!(duplicates, 0.0, "resumed after the stream's last record");
    // A batch damaged on the broker (one byte of its last frame changed, put in place of
    // the original) fails the verification: every frame of a message is checked.
    rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("SWITCHYARD_AUDIT").await.unwrap();
        let last = stream
            .get_last_raw_message_by_subject("switchyard.audit.sw-1")
            .await
            .unwrap();
        let mut damaged = last.payload.to_vec();
        let at = damaged.len() - 40;
        damaged[at] ^= 1;
        // In place of the original, so that the damage is the only fault.
        assert!(stream.delete_message(last.sequence).await.unwrap());
        js.publish("switchyard.audit.sw-1", damaged.into())
            .await
            .unwrap()
            .await
            .unwrap();
    });
    let out = crate::support::switchyard(
        &["audit", "verify", "--stream", &nats.url(), "--demo-keys"],
        b"",
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "a damaged batch verified: {said}");
    assert!(said.contains("sw-1"), "{said}");
    drop(sims);
}

/// A 0200 from terminal `tid` with STAN `stan` (the same bytes every time: a retransmission).
fn purchase(tid: &str, stan: u32, amount: u64) -> bytes::Bytes {
    let rrn = format!("{stan:012}");
    crate::switch::financial(
        "4761730000000119",
        tid,
        stan,
        amount,
        &[(37, &rrn), (42, "MERCHANT0000001")],
    )
}

fn code_and_auth(answer: &switchyard_iso8583::MessageView<'_>) -> (String, String) {
    let text = |n| answer.field(n).map(|f| f.text()).unwrap_or_default();
    (text(39), text(38))
}

/// Two instances share the duplicate window and the reversal index: a retransmission sent
/// to the other instance while the original is in flight gets 94, and after it the same
/// answer, and the issuer saw the request once (its ledger says so); a terminal's reversal
/// sent to the other instance reverses the original at the issuer (quoting the STAN the
/// issuer saw from the first instance's link).
#[test]
fn a_retransmission_or_a_reversal_on_the_other_instance_is_handled_as_one_switch() {
    use std::sync::atomic::Ordering;
    let rt = runtime();
    let mut slow = IssuerSimConfig::approving(crate::switch::spec());
    slow.delay_min = Duration::from_millis(600);
    slow.delay_max = Duration::from_millis(600);
    let sims = issuers(&rt, vec![slow]);
    let nats = Nats::start();
    let (a, b) = two_instances(&nats, sims[0].addr, "timeout_ms = 3000", "");
    let ledger = &sims[0].ledger;
    let mut on_a = crate::switch::Terminal::connect(a.terminals);
    let mut on_b = crate::switch::Terminal::connect(b.terminals);
    // The terminal at home on A (its requests claimed behind there, not waited for).
    assert_eq!(
        code_and_auth(&on_a.call(&purchase("TCLUSTR1", 40, 100))).0,
        "00"
    );
    std::thread::sleep(Duration::from_millis(1300));
    let before = ledger.requests.load(Ordering::Relaxed);
    let request = purchase("TCLUSTR1", 41, 4_200);
    on_a.send(&request);
    std::thread::sleep(Duration::from_millis(200));
    // In flight on A: B says 94 and forwards nothing.
    let (code, _) = code_and_auth(&on_b.call(&request));
    assert_eq!(
        code,
        "94",
        "{}",
        std::fs::read_to_string(b.config.with_file_name("switchyard.log")).unwrap()
    );
    let first = on_a.recv().expect("A answers");
    let (code, auth) = code_and_auth(&first);
    assert_eq!(code, "00");
    assert!(!auth.is_empty());
    // Answered on A: B answers the same, still without forwarding.
    let deadline = Instant::now() + Duration::from_secs(5);
    let again = loop {
        let (code, auth) = code_and_auth(&on_b.call(&request));
        if code != "94" || Instant::now() > deadline {
            break (code, auth);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(again, ("00".to_string(), auth), "the same answer");
    assert_eq!(
        ledger.requests.load(Ordering::Relaxed) - before,
        1,
        "the issuer saw it once"
    );
    let claimed_behind = metric_in(
        &http_get(a.admin, "/metrics").1,
        "switchyard_shared_state_total",
        &[("op", "claim-behind"), ("result", "ok")],
    );
    assert!(
        claimed_behind >= 1.0,
        "A claimed it behind: {claimed_behind}"
    );
    // A reversal on B of a purchase A forwarded reverses it at the issuer.
    let original = purchase("TCLUSTR1", 42, 5_100);
    assert_eq!(code_and_auth(&on_a.call(&original)).0, "00");
    std::thread::sleep(Duration::from_millis(300));
    let reversed_before = ledger.reversed.load(Ordering::Relaxed);
    let mut reversal = switchyard_iso8583::MessageBuilder::new(
        crate::switch::spec(),
        switchyard_iso8583::Mti::parse("0400").unwrap(),
    );
    let view = switchyard_iso8583::MessageView::decode(crate::switch::spec(), original).unwrap();
    for n in [2, 3, 4, 7, 37, 41, 42, 49] {
        reversal.copy_from(&view, n).unwrap();
    }
    reversal.set(11, "000043").unwrap();
    reversal
        .set(90, format!("0200000042{}{:022}", "1124093000", 0))
        .unwrap();
    assert_eq!(code_and_auth(&on_b.call(&reversal.encode())).0, "00");
    assert_eq!(
        ledger.reversed.load(Ordering::Relaxed) - reversed_before,
        1,
        "the original found and reversed at the issuer"
    );
    // Quoting the STAN the issuer saw from A's link: A's block (sw-0: block 0 of 10).
    let quoted = ledger.reversal_order.lock().unwrap().last().cloned();
    let quoted: u32 = quoted.and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!((1..=99_999).contains(&quoted), "{quoted}");
    // Found in B's copy of the group's records (the audit stream), not asked of the broker.
    let scrape = http_get(b.admin, "/metrics").1;
    let asked = metric_in(
        &scrape,
        "switchyard_shared_state_total",
        &[("op", "followed")],
    );
    assert_eq!(asked, 0.0, "found in the followed records");
    drop(sims);
}

/// A request answered at once on A, where its terminal is at home, is claimed by its
/// audit record alone (no write to the duplicates bucket); its retransmission on B, a
/// second later, gets the same answer from B's copy of the group's records (the audit
/// stream) and the issuer sees the request once. Each instance's follower reads the other's
/// subject only.
#[test]
fn a_retransmission_of_a_request_answered_at_home_is_answered_from_the_followed_records() {
    use std::sync::atomic::Ordering;
    let rt = runtime();
    let sims = issuers(&rt, vec![IssuerSimConfig::approving(crate::switch::spec())]);
    let nats = Nats::start();
    let (a, b) = two_instances(&nats, sims[0].addr, "", "");
    let ledger = &sims[0].ledger;
    let mut on_a = crate::switch::Terminal::connect(a.terminals);
    let mut on_b = crate::switch::Terminal::connect(b.terminals);
    assert_eq!(
        code_and_auth(&on_a.call(&purchase("TCLUSTR2", 50, 100))).0,
        "00"
    );
    std::thread::sleep(Duration::from_millis(1300)); // the terminal's home settles on A
    let before = ledger.requests.load(Ordering::Relaxed);
    let request = purchase("TCLUSTR2", 51, 4_200);
    let (code, auth) = code_and_auth(&on_a.call(&request));
    assert_eq!(code, "00");
    assert!(!auth.is_empty());
    let shared = |s: &Switch, op, result| {
        metric_in(
            &http_get(s.admin, "/metrics").1,
            "switchyard_shared_state_total",
            &[("op", op), ("result", result)],
        )
    };
    assert_eq!(
        shared(&a, "claim-behind", "recorded"),
        1.0,
        "no claim written"
    );
    assert_eq!(shared(&a, "claim-behind", "ok"), 0.0);
    std::thread::sleep(Duration::from_secs(1)); // the terminal's timeout, say
    assert_eq!(
        code_and_auth(&on_b.call(&request)),
        ("00".to_string(), auth),
        "the same answer"
    );
    assert_eq!(
        ledger.requests.load(Ordering::Relaxed) - before,
        1,
        "the issuer saw it once"
    );
    for s in [&a, &b] {
        assert_eq!(shared(s, "claim-behind", "lost"), 0.0);
    }
    // Each follows the other's subject alone: the broker sends neither its own records.
    let filters = rt.block_on(async {
        use futures_util::StreamExt;
        let client = async_nats::connect(nats.url()).await.unwrap();
        let stream = async_nats::jetstream::new(client)
            .get_stream("SWITCHYARD_AUDIT")
            .await
            .unwrap();
        let mut filters: Vec<String> = stream
            .consumers()
            .map(|c| c.unwrap().config.filter_subject)
            .collect()
            .await;
        filters.sort();
        filters
    });
    assert_eq!(filters, ["switchyard.audit.sw-0", "switchyard.audit.sw-1"]);
    drop(sims);
}

/// The shared state's own operations on a real broker, two instances' views of it: the
/// first claim wins and the other sees it in flight, then answered; a request settled with
/// no answer can be claimed again (over its delete marker); counters add up across both;
/// and after the broker restarts without its in-memory buckets, an operation that hangs
/// (the client's read of a key in a stream that is gone is answered by no one) is given up
/// on, the buckets are made again and the next operations succeed.
#[test]
fn the_shared_state_claims_once_and_comes_back_after_the_broker_restarts() {
    use switchyard_cluster::shared::JetStreamState;
    use switchyard_router::shared::{Claim, SharedAnswer, SharedState};
    let rt = runtime();
    let mut nats = Nats::start();
    let state = |id: &str| {
        let config = switchyard_cluster::ClusterConfig {
            ack_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(500),
            ..switchyard_cluster::ClusterConfig::new(vec![nats.url()], id, PathBuf::new())
        };
        JetStreamState::new(config, Duration::from_secs(600))
    };
    let (a, b) = (state("sw-0"), state("sw-1"));
    let answer = SharedAnswer {
        code: "00".into(),
        auth_id: Some("A1B2C3".into()),
        amount: None,
    };
    rt.block_on(async {
        assert!(matches!(a.claim(b"k1").await, Ok(Claim::Ours)));
        assert!(matches!(b.claim(b"k1").await, Ok(Claim::InFlight)));
        a.settle(b"k1", Some(answer.clone())).await.unwrap();
        match b.claim(b"k1").await {
            Ok(Claim::Answered(got)) => assert_eq!(got, answer),
            other => panic!("{other:?}"),
        }
        // Settled with no answer (nothing reached the issuer): free to be claimed again.
        assert!(matches!(b.claim(b"k2").await, Ok(Claim::Ours)));
        b.settle(b"k2", None).await.unwrap();
        assert!(matches!(a.claim(b"k2").await, Ok(Claim::Ours)));
        assert!(matches!(b.claim(b"k2").await, Ok(Claim::InFlight)));
        assert_eq!(a.count(b"card", 3600, 100).await.unwrap(), (1, 100));
        assert_eq!(b.count(b"card", 3600, 250).await.unwrap(), (2, 350));
    });
    nats.restart();
    rt.block_on(async {
        // As the switch does: each operation bounded (here 250 ms), tried again until the
        // client has reconnected; bounded in all by 30 s.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut tries = 0;
        loop {
            tries += 1;
            let claimed = tokio::time::timeout(Duration::from_millis(250), a.claim(b"k4")).await;
            if let Ok(Ok(claim)) = claimed {
                assert!(matches!(claim, Claim::Ours), "{claim:?}");
                break;
            }
            assert!(Instant::now() < deadline, "no claim after {tries} tries");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(matches!(b.claim(b"k4").await, Ok(Claim::InFlight)));
        // The file-backed counters kept what they held.
        assert_eq!(a.count(b"card", 3600, 1).await.unwrap(), (3, 351));
    });
}

/// The group's users: the switches, and two merchants' back offices that may each read
/// their own feed subject and nothing else.
const ACCOUNTS: &str = r#"accounts {
  GROUP {
    jetstream: enabled
    users: [
      { user: "switch", password: "switch-secret" }
      { user: "m1", password: "m1-secret",
        permissions: { publish: { deny: [">"] }, subscribe: { allow: ["switchyard.tx.MERCHANT0000001"] } } }
    ]
  }
}"#;

/// The merchant feed: a merchant's back office subscribed to its subject gets exactly one
/// report per transaction of that merchant and none of another's (the server's
/// permissions refuse it the other's subject and the audit stream), and no message on the
/// broker holds a full PAN.
#[test]
fn each_merchant_reads_its_own_transactions_and_no_message_holds_a_pan() {
    use futures_util::StreamExt;
    let rt = runtime();
    let sims = issuers(&rt, vec![IssuerSimConfig::approving(crate::switch::spec())]);
    let nats = Nats::with_accounts(ACCOUNTS);
    let connect = |user: &str, password: &str| {
        async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
            .connect(nats.url())
    };
    let body = format!(
        "spec = \"iso8583-1987-ascii\"\n[cluster]\nservers = [\"{}\"]\ninstance = \"sw-0\"\nuser = \"switch\"\npassword_env = \"NATS_PASSWORD\"\n{}{}",
        nats.url(),
        link("issuer", sims[0].addr, ""),
        route("all", "\"2\", \"4\", \"5\", \"6\"", "issuer")
    );
    let switch = Switch::start_with_env(&body, &[("NATS_PASSWORD", "switch-secret")]);
    // The back office of merchant 1, and everything on the broker (as the switches' user).
    let (own, others, audit, everything) = rt.block_on(async {
        let m1 = connect("m1", "m1-secret").await.unwrap();
        let all = connect("switch", "switch-secret").await.unwrap();
        (
            m1.subscribe("switchyard.tx.MERCHANT0000001").await.unwrap(),
            m1.subscribe("switchyard.tx.MERCHANT0000002").await.unwrap(),
            m1.subscribe("switchyard.audit.>").await.unwrap(),
            all.subscribe(">").await.unwrap(),
        )
    });
    for (first, count) in [("1", "10"), ("2", "7")] {
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["sim", "terminal", "--target", &switch.terminals.to_string()])
            .args(["--count", count, "--first-terminal", first])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_shipped(&switch);
    let drain = |mut sub: async_nats::Subscriber| {
        rt.block_on(async move {
            let mut got = Vec::new();
            while let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(500), sub.next()).await
            {
                got.push(m);
            }
            got
        })
    };
    let own = drain(own);
    assert_eq!(
        drain(others).len(),
        0,
        "another merchant's subject is refused"
    );
    assert_eq!(drain(audit).len(), 0, "the audit stream is refused");
    let reports: Vec<serde_json::Value> = own
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    let ours: Vec<_> = crate::switch::records(&switch.audit_dir())
        .into_iter()
        .filter(|p| p.merchant.as_deref() == Some("MERCHANT0000001"))
        .collect();
    assert_eq!(ours.len(), 10);
    assert_eq!(
        reports.len(),
        ours.len(),
        "one report per transaction: {reports:?}"
    );
    let mut ids: Vec<&str> = reports.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "each once");
    for r in &reports {
        assert_eq!(r["merchant"], "MERCHANT0000001");
        assert_eq!(
            (r["type"].as_str(), r["outcome"].as_str()),
            (Some("sale"), Some("approved")),
            "{r}"
        );
        assert!(r["pan"].as_str().is_some_and(|p| p.contains('*')), "{r}");
    }
    let amounts: u64 = reports.iter().map(|r| r["amount"].as_u64().unwrap()).sum();
    assert_eq!(amounts, ours.iter().map(|p| p.amount.unwrap()).sum::<u64>());
    // The canary: the simulator's card numbers appear in no message on the broker.
    let everything = drain(everything);
    let on = |subject: &str| {
        everything
            .iter()
            .filter(|m| m.subject.as_str() == subject)
            .count()
    };
    assert_eq!(
        on("switchyard.tx.MERCHANT0000002"),
        7,
        "merchant 2's reports were there, refused to m1"
    );
    // And the audit records, in batches on the instance's subject: each forwarded
    // request's in-flight record and its pair.
    let kinds: Vec<u8> = everything
        .iter()
        .filter(|m| m.subject.as_str() == "switchyard.audit.sw-0")
        .flat_map(|m| switchyard_audit::split_frames(&m.payload))
        .map(|f| switchyard_audit::read_frame(f.unwrap()).unwrap().kind)
        .collect();
    let of =
        |kind: switchyard_audit::RecordKind| kinds.iter().filter(|k| **k == kind.code()).count();
    assert_eq!(of(switchyard_audit::RecordKind::InFlight), 17, "{kinds:?}");
    assert_eq!(of(switchyard_audit::RecordKind::Pair), 17, "{kinds:?}");
    assert_eq!(on("switchyard.audit.sw-0.in-flight"), 0);
    for m in &everything {
        let text = String::from_utf8_lossy(&m.payload);
        let headers = format!("{:?}", m.headers);
        for pan in switchyard_sim::terminal::TEST_PANS {
            assert!(
                !text.contains(pan) && !headers.contains(pan),
                "a full PAN on {}",
                m.subject
            );
        }
    }
    drop(sims);
}

/// A terminal's velocity limit (2 a minute) holds across the group: its first request on
/// one instance and its second on the other are approved, the third, on the first again,
/// is blocked (each instance alone would have counted two).
#[test]
fn a_velocity_limit_holds_across_both_instances() {
    let rt = runtime();
    let sims = issuers(&rt, vec![IssuerSimConfig::approving(crate::switch::spec())]);
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry.toml");
    std::fs::write(
        &registry,
        "[[merchants]]\nid = \"MERCHANT0000001\"\nmcc = \"5411\"\n[[terminals]]\nid = \"TVELOCT1\"\nmerchant = \"MERCHANT0000001\"\n\
         [rules]\nterminal_velocity = { window_s = 60, max_count = 2, action = \"block\", response_code = \"65\" }\n",
    )
    .unwrap();
    let top = format!("[registry]\nfile = \"{}\"\n", registry.display());
    let (a, b) = two_instances(&nats, sims[0].addr, "", &top);
    let mut on_a = crate::switch::Terminal::connect(a.terminals);
    let mut on_b = crate::switch::Terminal::connect(b.terminals);
    let code = |t: &mut crate::switch::Terminal<TcpStream>, stan| {
        code_and_auth(&t.call(&purchase("TVELOCT1", stan, 1_000))).0
    };
    let codes = [
        code(&mut on_a, 51),
        code(&mut on_b, 52),
        code(&mut on_a, 53),
    ];
    assert_eq!(
        codes,
        ["00", "00", "65"],
        "the third in the minute is blocked"
    );
    let scrape = http_get(a.admin, "/metrics").1;
    assert_eq!(
        metric_in(
            &scrape,
            "switchyard_shared_state_total",
            &[("op", "count"), ("result", "ok")]
        ),
        2.0
    );
    drop(sims);
}

/// A terminal's 0500 with its debits (count and amount): the answer's code.
fn close_batch(
    t: &mut crate::switch::Terminal<TcpStream>,
    tid: &str,
    stan: u64,
    debits: u64,
    amount: u64,
) -> String {
    use switchyard_iso8583::{MessageBuilder, Mti};
    let mut b = MessageBuilder::new(crate::switch::spec(), Mti::parse("0500").unwrap());
    b.set(7, "1124093000").unwrap().set_u64(11, stan).unwrap();
    b.set(41, tid).unwrap().set(42, "MERCHANT0000001").unwrap();
    b.set(60, "000001").unwrap().set_u64(76, debits).unwrap();
    b.set_u64(88, amount).unwrap();
    code_and_auth(&t.call(&b.encode())).0
}

/// A terminal's batch totals are the group's: three sales approved on one instance and two
/// on the other close in balance (00) with the 0500 sent to the second, and the close is the
/// first instance's too (the same 0500 there is a repeat, 00, and records no close there).
#[test]
fn a_terminal_batch_closes_with_the_sales_of_both_instances() {
    let rt = runtime();
    let sims = issuers(&rt, vec![IssuerSimConfig::approving(crate::switch::spec())]);
    let nats = Nats::start();
    let (a, b) = two_instances(&nats, sims[0].addr, "", "[batch]\nenabled = true\n");
    let mut on_a = crate::switch::Terminal::connect(a.terminals);
    let mut on_b = crate::switch::Terminal::connect(b.terminals);
    let mut total = 0;
    for (on, stan, amount) in [
        (0, 61, 1_000),
        (0, 62, 2_000),
        (0, 63, 3_000),
        (1, 64, 4_000),
        (1, 65, 5_000),
    ] {
        let t = if on == 0 { &mut on_a } else { &mut on_b };
        assert_eq!(
            code_and_auth(&t.call(&purchase("TBATCH01", stan, amount))).0,
            "00"
        );
        total += amount;
    }
    for s in [&a, &b] {
        wait_shipped(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        close_batch(&mut on_b, "TBATCH01", 70, 5, total),
        "00",
        "in balance on B"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        close_batch(&mut on_a, "TBATCH01", 71, 5, total),
        "00",
        "A knows the close: a repeat"
    );
    let closes = crate::switch::audit_events(&a.audit_dir(), |e| e == "batch-closed");
    assert!(
        closes.is_empty(),
        "A recorded no close of its own: {closes:?}"
    );
    drop(sims);
}

/// An instance id is the group's once: a second process with the id of a running instance
/// (its own data directory) does not start, and says which instance holds it; nor does one
/// whose id is another but whose block of issuer STANs is the running one's (`edge-0`: its
/// ordinal is 0 too); the running instance restarted takes its id back at once.
#[test]
fn a_second_process_with_a_running_instances_id_does_not_start() {
    let nats = Nats::start();
    let body = |nats: &Nats, id: &str| {
        format!(
            "spec = \"iso8583-1987-ascii\"\n{}[[links]]\nname = \"issuer\"\nsimulated = true\n{}",
            cluster_section(nats, id),
            route("all", "\"4\"", "issuer")
        )
    };
    let a = Switch::start(&body(&nats, "sw-0"));
    let other = tempfile::tempdir().unwrap();
    let config = other.path().join("switchyard.toml");
    let second = |id: &str| {
        std::fs::write(
            &config,
            format!(
                "[admin]\nlisten = \"127.0.0.1:{}\"\n[audit]\ndir = \"{}\"\ndemo_keys = true\n[[listeners]]\nname = \"terminals\"\nlisten = \"127.0.0.1:{}\"\n{}",
                free_port(),
                other.path().join("audit").display(),
                free_port(),
                body(&nats, id)
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["run", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(78), "{said}");
        said
    };
    let said = second("sw-0");
    assert!(said.contains("instance \"sw-0\" is in use"), "{said}");
    let said = second("edge-0");
    assert!(
        said.contains("STAN block 0 is in use by instance \"sw-0\""),
        "{said}"
    );
    let a = a.restart();
    assert_eq!(
        http_get(a.admin, "/readyz").0,
        200,
        "the same instance takes it back"
    );
}
