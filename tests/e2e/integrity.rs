//! Transaction integrity end to end: the real switch, simulated issuers with ledgers, and
//! terminals that time out, vanish, retransmit, while the switch itself is killed.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchyard_audit::{Outcome, PairRecord};
use switchyard_iso8583::{shipped, Spec};
use switchyard_sim::{IssuerSim, IssuerSimConfig};

use crate::switch::{records, Switch, Terminal};

const WAIT: Duration = Duration::from_secs(30);

fn spec() -> &'static Spec {
    shipped("iso8583-1987-ascii").unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn issuer(rt: &tokio::runtime::Runtime, config: IssuerSimConfig) -> IssuerSim {
    rt.block_on(IssuerSim::start("127.0.0.1:0", config))
        .unwrap()
}

/// A 0200 from terminal `tid`.
fn request(tid: &str, stan: u32, amount: u64) -> Bytes {
    crate::switch::financial("4000056655665556", tid, stan, amount, &[])
}

fn config_body(issuer: SocketAddr, link_extra: &str) -> String {
    format!(
        "[[links]]\nname = \"issuer\"\nendpoints = [\"{issuer}\"]\nreconnect_min_ms = 50\nreconnect_max_ms = 200\n{link_extra}\n\
         [routing]\ndefault = \"issuer\"\n[integrity]\nbackoff_min_ms = 50\nbackoff_max_ms = 300\n"
    )
}

/// Wait until the switch's store-and-forward queue is empty (every reversal acknowledged).
fn drained(admin: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = crate::switch::operator_get(admin, "/saf");
        if status == 200 && body.trim() == "[]" {
            return;
        }
        assert!(Instant::now() < deadline, "reversals not drained: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn approvals_the_terminals_never_saw_are_reversed_so_the_ledger_matches_them() {
    let rt = runtime();
    // Answers take 0 to 400 ms; the link waits 250 ms: about a third arrive too late.
    let mut slow = IssuerSimConfig::approving(spec());
    slow.delay_max = Duration::from_millis(400);
    let sim = issuer(&rt, slow);
    let switch = Switch::start(&config_body(sim.addr, "timeout_ms = 250"));
    let addr = switch.terminals;
    let terminals: Vec<_> = (0..4u32)
        .map(|t| {
            std::thread::spawn(move || {
                let mut term = Terminal::connect(addr);
                let (mut approved, mut amount) = (0u64, 0u64);
                for k in 1..=20u32 {
                    let value = u64::from(t * 1000 + k);
                    let answer = term.call(&request(&format!("TERM000{t}"), k, value));
                    if answer.str(39) == Some("00") {
                        approved += 1;
                        amount += value;
                    } else {
                        assert_eq!(answer.str(39), Some("91"));
                    }
                }
                (approved, amount)
            })
        })
        .collect();
    let (mut seen, mut seen_amount) = (0, 0);
    for t in terminals {
        let (a, m) = t.join().unwrap();
        seen += a;
        seen_amount += m;
    }
    drained(switch.admin);
    let ledger = &sim.ledger;
    assert!(
        ledger.reversed.load(Ordering::Relaxed) > 0,
        "some approvals came too late: {}",
        ledger.summary()
    );
    assert_eq!(
        ledger.standing().len() as u64,
        seen,
        "the issuer holds exactly the approvals the terminals saw"
    );
    assert_eq!(ledger.standing_amount(), seen_amount);
    let records = records(&switch.audit_dir());
    let timeouts = records
        .iter()
        .filter(|r| r.outcome == Some(Outcome::Timeout))
        .count();
    assert_eq!(records.len(), 80);
    assert_eq!(timeouts as u64, 80 - seen);
    assert!(records
        .iter()
        .filter(|r| r.outcome == Some(Outcome::Timeout))
        .all(|r| r.reversal_id.is_some()));
}

#[test]
fn reversals_wait_for_an_issuer_that_went_quiet_and_drain_in_order_when_it_is_back() {
    let rt = runtime();
    let mut quiet = IssuerSimConfig::approving(spec());
    quiet.silence_rate = 1.0;
    let sim = issuer(&rt, quiet);
    let switch = Switch::start(&config_body(
        sim.addr,
        "timeout_ms = 200\necho_interval_ms = 0",
    ));
    let mut term = Terminal::connect(switch.terminals);
    for k in 1..=5 {
        assert_eq!(term.call(&request("TERMQUIE", k, 100)).str(39), Some("91"));
    }
    std::thread::sleep(Duration::from_millis(600));
    let (_, waiting) = crate::switch::operator_get(switch.admin, "/saf");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&waiting).unwrap();
    assert_eq!(entries.len(), 5, "{waiting}");
    assert!(
        entries[0]["attempts"].as_u64().unwrap() >= 1,
        "already retried: {waiting}"
    );
    sim.set_silence_rate(0.0);
    drained(switch.admin);
    // In the order the requests were made: the STANs the issuer saw, as the audit log has them.
    let expected: Vec<String> = records(&switch.audit_dir())
        .into_iter()
        .filter_map(|r| r.issuer_stan.map(|s| s.to_string()))
        .collect();
    let mut arrived: Vec<String> = Vec::new();
    for stan in sim.ledger.reversal_order.lock().unwrap().iter() {
        if !arrived.contains(stan) {
            arrived.push(stan.clone());
        }
    }
    assert_eq!(arrived, expected);

    // Each reversal's fate is visible: in the audit tools and the journal's whole history.
    let audit = switch.audit_dir();
    let d = audit.to_str().unwrap();
    let out = crate::support::switchyard(
        &[
            "audit",
            "query",
            "--dir",
            d,
            "--demo-keys",
            "--format",
            "jsonl",
        ],
        b"",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    for line in &lines {
        assert_eq!(line["reversal"]["state"], "delivered", "{line}");
        assert_eq!(line["reversal"]["last_result"], "00", "{line}");
    }
    let first = &lines[0]["reversal"];
    assert!(
        first["attempts"].as_u64().unwrap() >= 1,
        "retried while quiet: {first}"
    );
    let out = crate::support::switchyard(
        &[
            "audit",
            "report",
            "--dir",
            d,
            "--demo-keys",
            "--format",
            "csv",
        ],
        b"",
    );
    let report = String::from_utf8_lossy(&out.stdout);
    let terminal = report
        .lines()
        .find(|l| l.starts_with("terminal,TERMQUIE,"))
        .unwrap();
    // count 5; approved 0; declined 0; reversed 5 (500); timed out 0.
    assert_eq!(
        terminal, "terminal,TERMQUIE,978,5,0,0,0,0,5,500,0,0,0",
        "{report}"
    );
    let saf = switch.dir.path().join("saf");
    let out = crate::support::switchyard(
        &[
            "saf",
            "list",
            "--dir",
            saf.to_str().unwrap(),
            "--all",
            "--json",
        ],
        b"",
    );
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        listed
            .lines()
            .filter(|l| l.contains("\"delivered\""))
            .count(),
        5,
        "{listed}"
    );
    let out = crate::support::switchyard(&["saf", "list", "--dir", saf.to_str().unwrap()], b"");
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 entries"));
}

#[test]
fn an_approval_whose_terminal_hung_up_is_reversed() {
    let rt = runtime();
    let mut slow = IssuerSimConfig::approving(spec());
    slow.delay_min = Duration::from_millis(300);
    slow.delay_max = Duration::from_millis(300);
    let sim = issuer(&rt, slow);
    let switch = Switch::start(&config_body(sim.addr, ""));
    {
        let mut term = Terminal::connect(switch.terminals);
        term.send(&request("TERMGONE", 1, 4200));
        std::thread::sleep(Duration::from_millis(50));
    } // the terminal hangs up before the answer
    let deadline = Instant::now() + WAIT;
    while sim.ledger.reversed.load(Ordering::Relaxed) < 1 {
        assert!(
            Instant::now() < deadline,
            "no reversal: {}",
            sim.ledger.summary()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drained(switch.admin);
    assert_eq!(sim.ledger.standing().len(), 0);
    assert!(switch.metric("switchyard_undelivered_responses_total", &[]) >= 1.0);
}

#[test]
fn retransmissions_reach_the_issuer_once() {
    let rt = runtime();
    let mut slow = IssuerSimConfig::approving(spec());
    slow.delay_min = Duration::from_millis(200);
    slow.delay_max = Duration::from_millis(200);
    let sim = issuer(&rt, slow);
    let switch = Switch::start(&config_body(sim.addr, ""));
    let mut term = Terminal::connect(switch.terminals);
    let original = request("TERMDUP1", 7, 990);
    term.send(&original);
    term.send(&original); // retransmitted while the first is in flight
    let (first, second) = (term.recv().unwrap(), term.recv().unwrap());
    let mut codes = vec![
        first.str(39).unwrap().to_string(),
        second.str(39).unwrap().to_string(),
    ];
    codes.sort();
    assert_eq!(codes, ["00", "94"]);
    let approval = if first.str(39) == Some("00") {
        first
    } else {
        second
    };
    // Retransmitted after the answer: the same answer again, not forwarded.
    let again = term.call(&original);
    assert_eq!(
        (again.str(39), again.str(38)),
        (Some("00"), approval.str(38))
    );
    assert_eq!(
        sim.ledger.requests.load(Ordering::Relaxed),
        1,
        "the issuer saw it once"
    );

    // The window survives a restart: the answer is rebuilt from the audit log.
    let mut restarted = switch.restart();
    let mut term = Terminal::connect(restarted.terminals);
    let after = term.call(&original);
    assert_eq!(
        (after.str(39), after.str(38), after.str(11)),
        (Some("00"), approval.str(38), Some("000007"))
    );
    assert_eq!(sim.ledger.requests.load(Ordering::Relaxed), 1);
    assert_eq!(restarted.wait_for_term(), Some(0));
}

#[test]
fn five_percent_retransmitted_under_load_reach_the_issuer_once() {
    let rt = runtime();
    let mut slow = IssuerSimConfig::approving(spec());
    slow.delay_max = Duration::from_millis(20);
    let sim = issuer(&rt, slow);
    let switch = Switch::start(&config_body(sim.addr, ""));
    let addr = switch.terminals;
    let terminals: Vec<_> = (0..4u32)
        .map(|t| {
            std::thread::spawn(move || {
                let mut term = Terminal::connect(addr);
                let mut answers = 0;
                for k in 1..=50u32 {
                    let message = request(&format!("TERMRTX{t}"), k, 100 + u64::from(k));
                    term.send(&message);
                    if k % 20 == 0 {
                        // Every twentieth request is sent again before its answer came.
                        term.send(&message);
                        let (a, b) = (term.recv().unwrap(), term.recv().unwrap());
                        let mut codes = [
                            a.str(39).unwrap().to_string(),
                            b.str(39).unwrap().to_string(),
                        ];
                        codes.sort();
                        assert!(codes == ["00", "94"] || codes == ["00", "00"], "{codes:?}");
                        answers += 2;
                    } else {
                        assert_eq!(term.recv().unwrap().str(39), Some("00"));
                        answers += 1;
                    }
                }
                answers
            })
        })
        .collect();
    let answered: u32 = terminals.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(
        answered,
        4 * 50 + 4 * 2,
        "every request and retransmission answered"
    );
    assert_eq!(
        sim.ledger.requests.load(Ordering::Relaxed),
        200,
        "the issuer saw each request once"
    );
    assert_eq!(sim.ledger.standing().len(), 200);
}

/// The switch killed with SIGKILL under load, again and again, then left to recover: no
/// approval at the issuer lacks its audit pair, and every approval left orphaned is reversed.
/// `SWITCHYARD_KILL_CYCLES` sets the number of kills (default 3).
#[test]
fn a_switch_killed_under_load_leaves_no_orphaned_approval() {
    let cycles: usize = std::env::var("SWITCHYARD_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let rt = runtime();
    let mut slow = IssuerSimConfig::approving(spec());
    slow.delay_max = Duration::from_millis(40);
    let sim = issuer(&rt, slow);
    let mut switch = Switch::start(&config_body(sim.addr, ""));
    let mut stan = 0u32;
    for cycle in 0..=cycles {
        let addr = switch.terminals;
        let load: Vec<_> = (0..4u32)
            .map(|t| {
                let first = stan + t * 100_000;
                std::thread::spawn(move || {
                    let Ok(stream) = TcpStream::connect_timeout(&addr, WAIT) else {
                        return;
                    };
                    stream.set_read_timeout(Some(WAIT)).unwrap();
                    let mut term = Terminal::over(stream);
                    for k in 1..=100_000u32 {
                        term.send(&request(
                            &format!("TERMK{t:03}"),
                            (first + k) % 999_999 + 1,
                            100,
                        ));
                        if term.recv().is_none() {
                            return;
                        }
                    }
                })
            })
            .collect();
        stan += 1_000;
        std::thread::sleep(Duration::from_millis(300 + 97 * cycle as u64 % 300));
        if cycle == cycles {
            switch.signal("-TERM");
            assert_eq!(switch.wait_exit(), Some(0));
        } else {
            switch.signal("-KILL");
            switch.wait_exit();
        }
        for t in load {
            t.join().unwrap();
        }
        switch = switch.restart();
    }
    drained(switch.admin);
    let records = records(&switch.audit_dir());
    let approved: HashMap<String, &PairRecord> = records
        .iter()
        .filter(|r| r.outcome == Some(Outcome::Approved))
        .filter_map(|r| Some((r.issuer_stan.as_deref()?.to_string(), r)))
        .collect();
    for ((tid, issuer_stan, _), _) in sim.ledger.standing() {
        let pair = approved.get(&issuer_stan);
        assert!(
            pair.is_some_and(|p| p.terminal.as_deref() == Some(tid.as_str())),
            "approval {tid}/{issuer_stan} at the issuer has no approved audit pair ({} standing, {})",
            sim.ledger.standing().len(),
            sim.ledger.summary()
        );
    }
    switch.assert_audit_verifies();
    eprintln!(
        "{cycles} kills: {} pairs, {} recovered, ledger {}",
        records.len(),
        records
            .iter()
            .filter(|r| r.outcome == Some(Outcome::Recovered))
            .count(),
        sim.ledger.summary()
    );
}

#[test]
fn dead_letters_are_listed_retried_and_dropped_by_operators_and_the_registry_applies() {
    let rt = runtime();
    let mut quiet = IssuerSimConfig::approving(spec());
    quiet.silence_rate = 1.0;
    let sim = issuer(&rt, quiet);
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry.toml");
    std::fs::write(
        &registry,
        "[[merchants]]\nid = \"MERCHANT0000001\"\nmcc = \"5411\"\n[[terminals]]\nid = \"TERMOPS1\"\nmerchant = \"MERCHANT0000001\"\n",
    )
    .unwrap();
    let body = format!(
        "[registry]\nfile = \"{}\"\n{}max_attempts = 2\n",
        registry.display(),
        config_body(sim.addr, "timeout_ms = 150\necho_interval_ms = 0")
    );
    let switch = Switch::start(&body);
    let mut term = Terminal::connect(switch.terminals);
    let mcc_jump = crate::switch::financial(
        "4000056655665556",
        "TERMOPS1",
        1,
        100,
        &[(18, "7995"), (42, "MERCHANT0000001")],
    );
    assert_eq!(
        term.call(&mcc_jump).str(39),
        Some("03"),
        "MCC 7995 is not the merchant's 5411"
    );
    assert_eq!(
        switch.metric(
            "switchyard_registry_refusals_total",
            &[("reason", "mcc_mismatch")]
        ),
        1.0
    );
    assert_eq!(
        term.call(&request("TERMOPS2", 2, 100)).str(39),
        Some("58"),
        "unknown terminal"
    );
    assert_eq!(
        term.call(&request("TERMOPS1", 3, 100)).str(39),
        Some("91"),
        "silent issuer"
    );

    let admin = switch.admin.to_string();
    let deadline = Instant::now() + WAIT;
    let id = loop {
        let out = crate::support::switchyard(
            &[
                "saf",
                "list",
                "--admin",
                &admin,
                "--json",
                "--token-file",
                &switch.token_file("alice"),
            ],
            b"",
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let dead: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|e: &serde_json::Value| e["state"] == "dead")
            .collect();
        if let Some(e) = dead.first() {
            break e["id"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "no dead letter: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(switch.metric("switchyard_saf_dead_letters", &[]), 1.0);
    let retried = crate::support::switchyard(
        &[
            "saf",
            "retry",
            "--admin",
            &admin,
            "--id",
            &id.to_string(),
            "--token-file",
            &switch.token_file("alice"),
        ],
        b"",
    );
    assert!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    let dropped = crate::support::switchyard(
        &[
            "saf",
            "drop",
            "--admin",
            &admin,
            "--id",
            &id.to_string(),
            "--token-file",
            &switch.token_file("bob"),
        ],
        b"",
    );
    assert!(
        dropped.status.success(),
        "{}",
        String::from_utf8_lossy(&dropped.stderr)
    );
    let listed = crate::support::switchyard(
        &[
            "saf",
            "list",
            "--dir",
            switch.dir.path().join("saf").to_str().unwrap(),
        ],
        b"",
    );
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("0 entries"),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );
    let missing = crate::support::switchyard(
        &[
            "saf",
            "drop",
            "--admin",
            &admin,
            "--id",
            "1",
            "--token-file",
            &switch.token_file("bob"),
        ],
        b"",
    );
    assert_eq!(missing.status.code(), Some(65));
    // Without a valid credential an operator action is refused and counted; a scrape
    // token may not act; nobody names another operator.
    let post = |path: &str, token: Option<&str>| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(switch.admin).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(s, "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.get(9..12).unwrap_or_default().to_string()
    };
    let [(_, _, alice), _, (_, _, scraper)] = crate::switch::TOKENS;
    assert_eq!(
        post(&format!("/saf/drop?id={id}&operator=mallory"), None),
        "401"
    );
    assert_eq!(
        post(&format!("/saf/drop?id={id}"), Some("guessed-token")),
        "401"
    );
    assert_eq!(post(&format!("/saf/drop?id={id}"), Some(scraper)), "403");
    assert_eq!(
        post(&format!("/saf/drop?id={id}&operator=mallory"), Some(alice)),
        "400"
    );
    assert_eq!(crate::switch::http_get(switch.admin, "/saf").0, 401);
    let failures = |reason| {
        switch.metric(
            "switchyard_admin_auth_failures_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(
        (
            failures("missing"),
            failures("invalid"),
            failures("forbidden")
        ),
        (2.0, 1.0, 1.0)
    );
    // Both operator actions are in the audit log.
    let mut operators = Vec::new();
    switchyard_audit::for_each(&switch.audit_dir(), |r| {
        if r.kind == Some(switchyard_audit::RecordKind::Operator) {
            let action: serde_json::Value = switchyard_audit::payload::decode(r.seq, r.payload)?;
            operators.push(action.to_string());
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(operators.len(), 2, "{operators:?}");
    assert!(operators[0].contains("saf-retry") && operators[0].contains("alice"));
    assert!(operators[1].contains("saf-drop") && operators[1].contains("bob"));
}
