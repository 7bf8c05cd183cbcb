//! Closing the books, end to end: business dates on every pair record, a hand cut-over
//! (an authenticated admin action) during load splitting the transactions with none lost
//! or counted twice, and the cut-over kept across a restart.

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchyard_iso8583::datetime::Civil;
use switchyard_router::business_day::{date_text, CutoverSchedule};
use switchyard_sim::IssuerSimConfig;

use crate::switch::{audit_events, issuers, link, records, route, runtime, Switch, TOKENS};

fn post(switch: &Switch, path: &str, token: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(switch.admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.get(9..12).unwrap_or_default().to_string();
    (
        status,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.trim().to_string())
            .unwrap_or_default(),
    )
}

fn cut_over_events(switch: &Switch) -> Vec<serde_json::Value> {
    audit_events(&switch.audit_dir(), |e| e == "cut-over")
}

#[test]
fn a_hand_cut_over_during_load_splits_the_day_and_survives_a_restart() {
    let rt = runtime();
    let sims = issuers(&rt, vec![IssuerSimConfig::approving(crate::switch::spec())]);
    // The scheduled cut-over twelve hours away, so that only the hand one falls in the test.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let away = Civil::from_unix(now + 12 * 3600);
    let cutover = format!("{:02}:{:02}", away.hour, away.minute);
    let schedule = CutoverSchedule::parse(&cutover, "+02:00").unwrap();
    let today = date_text(schedule.day_at(now * 1_000_000));
    let tomorrow = date_text(schedule.day_at(now * 1_000_000) + 1);
    let body = format!(
        "spec = \"iso8583-1987-ascii\"\n[business_day]\ncutover = \"{cutover}\"\ntime_zone = \"+02:00\"\n{}settlement_date = true\n{}",
        link("issuer", sims[0].addr, ""),
        route("all", "\"2\", \"4\", \"5\", \"6\"", "issuer")
    );
    let switch = Switch::start(&body);
    let target = switch.terminals.to_string();
    let load = std::thread::spawn(move || {
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args([
                "sim",
                "terminal",
                "--target",
                &target,
                "--connections",
                "2",
                "--window",
                "4",
            ])
            .args(["--duration", "3", "--json"])
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(1500));
    // Without a token the cut-over is refused; with alice's it is done, by her.
    assert_eq!(post(&switch, "/cutover", "nobody").0, "401");
    let (status, said) = post(&switch, "/cutover", TOKENS[0].2);
    assert_eq!(status, "200", "{said}");
    assert_eq!(said, format!("business date {tomorrow}"));
    let out = load.join().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sent = report["sent"].as_u64().unwrap();
    assert_eq!(report["answered"].as_u64(), Some(sent), "{report}");
    let events = cut_over_events(&switch);
    let hand: Vec<_> = events.iter().filter(|e| e["by"] == "alice").collect();
    assert_eq!(hand.len(), 1, "{events:?}");
    assert_eq!(
        (hand[0]["closed"].as_str(), hand[0]["opened"].as_str()),
        (Some(today.as_str()), Some(tomorrow.as_str()))
    );
    let at = hand[0]["at_us"].as_i64().unwrap();
    let pairs = records(&switch.audit_dir());
    assert_eq!(pairs.len() as u64, sent, "every transaction recorded once");
    let mut before = 0;
    let mut after = 0;
    for p in &pairs {
        let date = p.business_date.as_deref().expect("every pair is dated");
        if p.received_us < at {
            assert_eq!(date, today, "received before the cut-over");
            before += 1;
        } else {
            assert_eq!(date, tomorrow, "received after the cut-over");
            after += 1;
        }
    }
    assert!(before > 0 && after > 0, "{before} before, {after} after");
    // A restart keeps the hand cut-over: new transactions are still tomorrow's.
    let switch = switch.restart();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "sim",
            "terminal",
            "--target",
            &switch.terminals.to_string(),
            "--count",
            "5",
            "--first-terminal",
            "9",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pairs = records(&switch.audit_dir());
    assert_eq!(pairs.len() as u64, sent + 5);
    assert!(pairs
        .iter()
        .rev()
        .take(5)
        .all(|p| p.business_date.as_deref() == Some(tomorrow.as_str())));
    drop(sims);
}

/// A day of traffic from three terminals through a `sim issuer` process that declines a
/// fifth: `audit reconcile` against the issuer's own settlement file finds nothing; against
/// a copy with three planted differences it reports exactly those and exits 65; `audit
/// settle` nets each merchant's approved sales.
#[test]
fn reconcile_against_the_issuers_file_and_settle_the_merchants() {
    let work = tempfile::tempdir().unwrap();
    let ledger = work.path().join("issuer-settlement.csv");
    let port = crate::switch::free_port();
    let mut issuer = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "sim",
            "issuer",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--approval-rate",
            "0.8",
        ])
        .arg("--ledger-csv")
        .arg(&ledger)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "issuer did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let body = format!(
        "spec = \"iso8583-1987-ascii\"\n[business_day]\ncutover = \"00:00\"\ntime_zone = \"UTC\"\n{}settlement_date = true\n{}",
        link("issuer", format!("127.0.0.1:{port}"), ""),
        route("all", "\"2\", \"4\", \"5\", \"6\"", "issuer")
    );
    let switch = Switch::start(&body);
    let mut sent = 0;
    for first in ["1", "2", "3"] {
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args([
                "sim",
                "terminal",
                "--target",
                &switch.terminals.to_string(),
                "--count",
                "40",
            ])
            .args(["--first-terminal", first, "--window", "4", "--json"])
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["answered"].as_u64(), Some(40), "{report}");
        sent += 40;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &issuer.id().to_string()])
        .status();
    issuer.wait().unwrap();
    let file = std::fs::read_to_string(&ledger).unwrap();
    let pairs = records(&switch.audit_dir());
    assert_eq!(pairs.len(), sent);
    let date = pairs[0].business_date.as_deref().unwrap().to_string();
    let approved: Vec<_> = pairs
        .iter()
        .filter(|p| p.response_code.as_deref() == Some("00"))
        .collect();
    assert_eq!(file.lines().count() - 1, approved.len(), "{file}");
    assert!(
        approved.len() < sent && approved.len() > sent / 2,
        "some declined"
    );
    let dir = switch.audit_dir().display().to_string();
    let reconcile = |against: &std::path::Path, format: &str| {
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args([
                "audit",
                "reconcile",
                "--dir",
                &dir,
                "--demo-keys",
                "--business-date",
                &date,
            ])
            .args(["--format", format])
            .arg("--against")
            .arg(against)
            .output()
            .unwrap()
    };
    let clean = reconcile(&ledger, "table");
    let said = String::from_utf8_lossy(&clean.stdout).to_string();
    assert!(
        clean.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    assert!(
        said.ends_with(&format!("{} matched, 0 differences\n", approved.len())),
        "{said}"
    );
    // Three planted differences: one row taken out, one row added, one amount changed.
    let mut lines: Vec<String> = file.lines().map(String::from).collect();
    let removed = lines.remove(1);
    let changed = lines[1].clone();
    let mut cells: Vec<String> = changed.split(',').map(String::from).collect();
    cells[5] = (cells[5].parse::<u64>().unwrap() + 1).to_string();
    lines[1] = cells.join(",");
    lines.push(format!(
        "{date},999999999999,T0000099,MERCHANT0000099,000001,5000,978,00,123456"
    ));
    let planted = work.path().join("planted.csv");
    std::fs::write(&planted, lines.join("\n") + "\n").unwrap();
    let differs = reconcile(&planted, "csv");
    assert_eq!(differs.status.code(), Some(65));
    let csv = String::from_utf8_lossy(&differs.stdout).to_string();
    let kinds: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    let mut sorted = kinds.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["mismatch", "missing-at-switch", "missing-in-file"],
        "{csv}"
    );
    let removed_rrn = removed.split(',').nth(1).unwrap();
    assert!(
        csv.lines()
            .any(|l| l.starts_with("missing-in-file") && l.contains(removed_rrn)),
        "{csv}"
    );
    assert!(
        csv.lines()
            .any(|l| l.starts_with("missing-at-switch") && l.contains("999999999999")),
        "{csv}"
    );
    // Settlement: each merchant's net is its approved sales.
    let settle = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "audit",
            "settle",
            "--dir",
            &dir,
            "--demo-keys",
            "--business-date",
            &date,
            "--format",
            "jsonl",
        ])
        .output()
        .unwrap();
    assert!(
        settle.status.success(),
        "{}",
        String::from_utf8_lossy(&settle.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&settle.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    for row in &rows {
        let merchant = row["merchant"].as_str().unwrap();
        let expected: u64 = approved
            .iter()
            .filter(|p| p.merchant.as_deref() == Some(merchant))
            .map(|p| p.amount.unwrap())
            .sum();
        assert_eq!(row["net"].as_u64(), Some(expected), "{row}");
        assert_eq!(row["sales_amount"].as_u64(), Some(expected), "{row}");
    }
}

/// `switchyard send` of a 0500 (or 0501) from `terminal` with these totals: the answer's
/// response code.
fn settle_batch(
    switch: &Switch,
    mti: &str,
    terminal: &str,
    batch: &str,
    debits: u64,
    amount: u64,
) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "send",
            "--target",
            &switch.terminals.to_string(),
            "--mti",
            mti,
        ])
        .args([
            "--terminal",
            terminal,
            "--merchant",
            "MERCHANT0000001",
            "--test-card",
            "1",
        ])
        .args([
            "--field",
            &format!("60={batch}"),
            "--field",
            &format!("76={debits:010}"),
        ])
        .args(["--field", &format!("88={amount:016}")])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    let answer = shown
        .split("answer\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    answer
        .lines()
        .find(|l| l.contains("Response code"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("no answer: {shown}{}", String::from_utf8_lossy(&out.stderr)))
        .to_string()
}

/// Two terminals' batches: one closes in balance with 00 after a restart mid-day (its
/// totals rebuilt from the audit log), its repeat is answered 00 again, counted once; the
/// other claims one sale the switch never approved and gets 95, the difference audited,
/// uploads its transactions (0320) and closes on the switch's totals, the extra recorded.
#[test]
fn batches_close_in_balance_and_a_claimed_extra_sale_gets_95() {
    let rt = runtime();
    let sims = issuers(&rt, vec![IssuerSimConfig::approving(crate::switch::spec())]);
    let body = format!(
        "spec = \"iso8583-1987-ascii\"\n[batch]\nenabled = true\n{}{}",
        link("issuer", sims[0].addr, ""),
        route("all", "\"2\", \"4\", \"5\", \"6\"", "issuer")
    );
    let switch = Switch::start(&body);
    for first in ["1", "2"] {
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args([
                "sim",
                "terminal",
                "--target",
                &switch.terminals.to_string(),
                "--count",
                "12",
            ])
            .args(["--first-terminal", first])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let totals = |tid: &str| {
        let sales: Vec<u64> = records(&switch.audit_dir())
            .iter()
            .filter(|p| {
                p.terminal.as_deref() == Some(tid) && p.response_code.as_deref() == Some("00")
            })
            .map(|p| p.amount.unwrap())
            .collect();
        (sales.len() as u64, sales.iter().sum::<u64>())
    };
    let (n1, a1) = totals("T0000001");
    let (n2, a2) = totals("T0000002");
    assert_eq!((n1, n2), (12, 12));
    // A restart mid-day: the open batches come back from the audit log.
    let switch = switch.restart();
    assert_eq!(
        settle_batch(&switch, "0500", "T0000001", "000001", n1, a1),
        "00"
    );
    assert_eq!(
        settle_batch(&switch, "0501", "T0000001", "000001", n1, a1),
        "00",
        "a repeat"
    );
    // The batch is closed: the same totals again under a new batch number do not balance.
    assert_eq!(
        settle_batch(&switch, "0500", "T0000001", "000002", n1, a1),
        "95"
    );
    assert_eq!(
        settle_batch(&switch, "0500", "T0000001", "000002", 0, 0),
        "00",
        "an empty batch"
    );
    // Terminal 2 claims one more sale than the switch approved.
    assert_eq!(
        settle_batch(&switch, "0500", "T0000002", "000007", n2 + 1, a2 + 1500),
        "95"
    );
    // Its upload: every transaction the switch has, and the one it claims extra; then the
    // final 0500 closes on the switch's totals, the extra recorded, never added.
    let theirs: Vec<(String, u64)> = records(&switch.audit_dir())
        .iter()
        .filter(|p| {
            p.terminal.as_deref() == Some("T0000002") && p.response_code.as_deref() == Some("00")
        })
        .filter(|p| p.request_mti.as_str() == "0200")
        .map(|p| (p.rrn.as_deref().unwrap().to_string(), p.amount.unwrap()))
        .chain(std::iter::once(("999999000001".to_string(), 1500)))
        .collect();
    for (rrn, amount) in &theirs {
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args([
                "send",
                "--target",
                &switch.terminals.to_string(),
                "--mti",
                "0320",
            ])
            .args([
                "--terminal",
                "T0000002",
                "--merchant",
                "MERCHANT0000001",
                "--test-card",
                "1",
            ])
            .args([
                "--amount",
                &amount.to_string(),
                "--field",
                &format!("37={rrn}"),
                "--field",
                "60=000007",
            ])
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            shown
                .split("answer\n")
                .nth(1)
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("Response code") && l.trim_end().ends_with("00")),
            "{shown}"
        );
    }
    assert_eq!(
        settle_batch(&switch, "0500", "T0000002", "000007", n2 + 1, a2 + 1500),
        "00",
        "the final 0500"
    );
    let events = audit_events(&switch.audit_dir(), |e| e.starts_with("batch-"));
    let unknown: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "batch-upload-unknown")
        .collect();
    assert_eq!(unknown.len(), 1, "{events:?}");
    assert_eq!(unknown[0]["rrn"], "999999000001");
    let after = events
        .iter()
        .find(|e| e["event"] == "batch-closed" && e["terminal"] == "T0000002")
        .expect("closed after the upload");
    assert_eq!(
        after["totals"]["debits"].as_u64(),
        Some(n2),
        "the switch's own totals"
    );
    assert_eq!(after["after_upload"]["matched"].as_u64(), Some(n2));
    assert_eq!(after["after_upload"]["unknown_to_switch"].as_u64(), Some(1));
    assert_eq!(after["after_upload"]["not_uploaded"].as_u64(), Some(0));
    let closed: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "batch-closed" && e["terminal"] == "T0000001")
        .collect();
    assert_eq!(closed.len(), 2, "the repeat closed nothing: {events:?}");
    assert_eq!(closed[0]["totals"]["debits"].as_u64(), Some(n1));
    assert_eq!(closed[0]["totals"]["debits_amount"].as_u64(), Some(a1));
    let off = events
        .iter()
        .find(|e| e["event"] == "batch-out-of-balance" && e["terminal"] == "T0000002")
        .expect("the difference is audited");
    assert_eq!(
        off["totals"]["debits"].as_u64(),
        Some(n2),
        "the switch's own count, not absorbed"
    );
    assert_eq!(off["claimed"]["debits"].as_u64(), Some(n2 + 1));
    drop(sims);
}
