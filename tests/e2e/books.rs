//! Closing the books, end to end: business dates on every pair record, a hand cut-over
//! (an authenticated admin action) during load splitting the transactions with none lost
//! or counted twice, and the cut-over kept across a restart.

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchyard_iso8583::datetime::Civil;
use switchyard_iso8583::{MessageBuilder, Mti};
use switchyard_router::batch::Totals;
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

/// Now (seconds since the epoch) and a cut-over time (`HH:MM`) about half a day away, so
/// that only a hand cut-over falls in a test.
fn cutover_far_away() -> (i64, String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let away = Civil::from_unix(now + 12 * 3600);
    (now, format!("{:02}:{:02}", away.hour, away.minute))
}

fn cut_over_events(switch: &Switch) -> Vec<serde_json::Value> {
    audit_events(&switch.audit_dir(), |e| e == "cut-over")
}

#[test]
fn a_hand_cut_over_during_load_splits_the_day_and_survives_a_restart() {
    let rt = runtime();
    let sims = issuers(&rt, vec![IssuerSimConfig::approving(crate::switch::spec())]);
    let (now, cutover) = cutover_far_away();
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
/// A `sim issuer` process writing its settlement file to `ledger` at stop: it and its port.
fn issuer_process(ledger: &std::path::Path, args: &[&str]) -> (std::process::Child, u16) {
    let port = crate::switch::free_port();
    let issuer = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["sim", "issuer", "--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .arg("--ledger-csv")
        .arg(ledger)
        .stdout(std::process::Stdio::piped())
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
    (issuer, port)
}

/// `switchyard audit reconcile` (against `against`) or `audit settle` of `date`.
fn audit_books(
    switch: &Switch,
    command: &str,
    date: &str,
    format: &str,
    against: Option<&std::path::Path>,
) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    c.args(["audit", command, "--dir"])
        .arg(switch.audit_dir())
        .args(["--demo-keys", "--business-date", date, "--format", format]);
    if let Some(file) = against {
        c.arg("--against").arg(file);
    }
    c.output().unwrap()
}

/// `audit settle` of `date`: its JSON rows, one per merchant and currency.
fn settle_rows(switch: &Switch, date: &str) -> Vec<serde_json::Value> {
    crate::support::json_lines(&audit_books(switch, "settle", date, "jsonl", None))
}

/// Stop an issuer process: its ledger summary line.
fn stop_issuer(issuer: std::process::Child) -> String {
    let _ = Command::new("kill")
        .args(["-TERM", &issuer.id().to_string()])
        .status();
    let out = issuer.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn reconcile_against_the_issuers_file_and_settle_the_merchants() {
    let work = tempfile::tempdir().unwrap();
    let ledger = work.path().join("issuer-settlement.csv");
    let (issuer, port) = issuer_process(&ledger, &["--approval-rate", "0.8"]);
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
    stop_issuer(issuer);
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
    let reconcile = |against: &std::path::Path, format: &str| {
        audit_books(&switch, "reconcile", &date, format, Some(against))
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
    let rows = settle_rows(&switch, &date);
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

/// A terminal of the mixed day: its connection, its RRNs and what it knows of its batch.
struct Till {
    tid: &'static str,
    merchant: &'static str,
    conn: crate::switch::Terminal<std::net::TcpStream>,
    stan: u32,
    /// The batch as the terminal keeps it.
    totals: Totals,
    /// The transactions the terminal would upload: (RRN, amount).
    items: Vec<(String, u64)>,
}

/// An answer: (response code, authorisation id, field 4).
type Answer = (String, String, u64);

impl Till {
    fn new(switch: &Switch, tid: &'static str, merchant: &'static str, first: u32) -> Till {
        Till {
            tid,
            merchant,
            conn: crate::switch::Terminal::connect(switch.terminals),
            stan: first,
            totals: Totals::default(),
            items: Vec::new(),
        }
    }

    /// Send `mti` with processing code `pc` and `amount`; `rrn` and `auth` name an original
    /// (none: a new RRN).
    fn send(
        &mut self,
        mti: &str,
        pc: &str,
        amount: u64,
        original: Option<(&str, &str)>,
    ) -> (String, Answer) {
        let mut b = self.message(mti);
        let rrn = original.map_or(format!("{}{:08}", &self.tid[4..], self.stan), |o| {
            o.0.to_string()
        });
        b.set(2, "4761730000000119").unwrap().set(3, pc).unwrap();
        b.set_u64(4, amount).unwrap().set(37, &rrn).unwrap();
        b.set(49, "978").unwrap();
        if let Some((_, auth)) = original.filter(|o| !o.1.is_empty()) {
            b.set(38, auth).unwrap();
        }
        if mti == "0400" {
            // The original's MTI, STAN and transmission time (field 90).
            let stan = rrn[rrn.len() - 6..].to_string();
            b.set(90, format!("0200{stan}1124093000{:022}", 0)).unwrap();
        }
        let a = self.conn.call(&b.encode());
        let text = |n| {
            a.field(n)
                .map(|f| f.text().trim().to_string())
                .unwrap_or_default()
        };
        let amount = a.field(4).and_then(|f| f.as_u64()).unwrap_or(0);
        (rrn, (text(39), text(38), amount))
    }

    /// A message `mti` from this terminal with its next STAN, transmission time, terminal
    /// and merchant.
    fn message(&mut self, mti: &str) -> MessageBuilder<'static> {
        self.stan += 1;
        let mut b = MessageBuilder::new(crate::switch::spec(), Mti::parse(mti).unwrap());
        b.set(7, "1124093000")
            .unwrap()
            .set_u64(11, u64::from(self.stan))
            .unwrap();
        b.set(41, self.tid).unwrap().set(42, self.merchant).unwrap();
        b
    }

    /// Send `b`: the answer's response code.
    fn code_of(&mut self, b: &MessageBuilder) -> String {
        let a = self.conn.call(&b.encode());
        a.field(39).map(|f| f.text()).unwrap_or_default()
    }

    /// A debit (sale, cash, completion) or credit (refund) the terminal keeps.
    fn keep(&mut self, rrn: &str, amount: u64, credit: bool) {
        match credit {
            true => {
                (self.totals.credits, self.totals.credits_amount) =
                    (self.totals.credits + 1, self.totals.credits_amount + amount)
            }
            false => {
                (self.totals.debits, self.totals.debits_amount) =
                    (self.totals.debits + 1, self.totals.debits_amount + amount)
            }
        }
        self.items.push((rrn.to_string(), amount));
    }

    /// A debit the terminal took back (void or reversal).
    fn take_back(&mut self, rrn: &str, amount: u64) {
        self.totals.debit_reversals += 1;
        self.totals.debit_reversals_amount += amount;
        self.items.retain(|(r, _)| r != rrn);
    }

    /// The day's mix: sales, cash, a refund, a balance inquiry, a void, a pre-authorisation
    /// and its completion, a completion and a void the switch has no original of (25),
    /// a partial approval, a timeout and a reversal.
    fn mixed_day(&mut self) {
        let mut sales = Vec::new();
        for amount in [1_000, 2_000, 3_000, 4_000] {
            let (rrn, (code, auth, _)) = self.send("0200", "000000", amount, None);
            assert_eq!(code, "00", "{} sale", self.tid);
            self.keep(&rrn, amount, false);
            sales.push((rrn, auth, amount));
        }
        let (rrn, (code, _, _)) = self.send("0200", "010000", 5_000, None);
        assert_eq!(code, "00", "cash");
        self.keep(&rrn, 5_000, false);
        let (rrn, (code, _, _)) = self.send("0200", "200000", 500, None);
        assert_eq!(code, "00", "refund");
        self.keep(&rrn, 500, true);
        let (_, (code, _, _)) = self.send("0200", "310000", 0, None);
        assert_eq!(code, "00", "balance inquiry");
        // The first sale voided (its RRN and authorisation id), the second reversed.
        let (rrn, auth, amount) = sales[0].clone();
        let (_, (code, _, _)) = self.send("0200", "020000", amount, Some((&rrn, &auth)));
        assert_eq!(code, "00", "void");
        self.take_back(&rrn, amount);
        let (rrn, _, amount) = sales[1].clone();
        let (_, (code, _, _)) = self.send("0400", "000000", amount, Some((&rrn, "")));
        assert_eq!(code, "00", "reversal");
        self.take_back(&rrn, amount);
        // A pre-authorisation of 200.00 completed at 180.00.
        let (rrn, (code, auth, _)) = self.send("0100", "000000", 20_000, None);
        assert_eq!(code, "00", "pre-authorisation");
        assert!(!auth.is_empty(), "an authorisation id");
        let (_, (code, _, _)) = self.send("0220", "000000", 18_000, Some((&rrn, "999999")));
        assert_eq!(code, "25", "a completion naming another authorisation id");
        let (_, (code, _, _)) = self.send("0220", "000000", 18_000, Some((&rrn, &auth)));
        assert_eq!(code, "00", "completion");
        self.keep(&rrn, 18_000, false);
        let (_, (code, _, _)) = self.send("0220", "000000", 18_000, Some((&rrn, &auth)));
        assert_eq!(code, "25", "a second completion of the same authorisation");
        let (_, (code, _, _)) = self.send("0200", "020000", 900, Some(("000000000404", "123456")));
        assert_eq!(code, "25", "a void of nothing");
        // 600.00 asked, 500.00 approved.
        let (rrn, (code, _, approved)) = self.send("0200", "000000", 60_000, None);
        assert_eq!(
            (code.as_str(), approved),
            ("10", 50_000),
            "partial approval"
        );
        self.keep(&rrn, 50_000, false);
        // No answer from the issuer: the terminal is told so, the switch reverses it.
        let (_, (code, _, _)) = self.send("0200", "000000", 777, None);
        assert_ne!(code, "00", "a timeout is no approval");
    }

    /// The terminal's 0500 (or 0501) with its totals: the answer's code.
    fn settle(&mut self, batch: &str, totals: &Totals) -> String {
        let mut b = self.message("0500");
        b.set(60, batch).unwrap();
        for (n, v) in [
            (74, totals.credits),
            (75, totals.credit_reversals),
            (76, totals.debits),
            (77, totals.debit_reversals),
            (86, totals.credits_amount),
            (87, totals.credit_reversals_amount),
            (88, totals.debits_amount),
            (89, totals.debit_reversals_amount),
        ] {
            b.set_u64(n, v).unwrap();
        }
        self.code_of(&b)
    }

    /// One 0320 upload item: the answer's code.
    fn upload(&mut self, batch: &str, rrn: &str, amount: u64) -> String {
        let mut b = self.message("0320");
        b.set(2, "4761730000000119")
            .unwrap()
            .set(3, "000000")
            .unwrap();
        b.set_u64(4, amount).unwrap().set(37, rrn).unwrap();
        b.set(60, batch).unwrap();
        self.code_of(&b)
    }
}

/// A business day of mixed traffic from several terminals through the real switch and a
/// `sim issuer` process, with load from a `sim terminal` process beside it and a hand
/// cut-over in the middle: each terminal's batch closes in balance with 00; one that claims
/// a sale the switch never approved gets 95, uploads (the switch restarted half-way
/// through the upload) and the extra is reported, not absorbed; both business dates
/// reconcile against the issuer's settlement file with no differences and between them
/// hold every row of it once; settle pays each merchant what its terminal kept.
#[test]
fn a_mixed_day_closes_every_batch_and_reconciles_both_dates_with_the_issuer() {
    let work = tempfile::tempdir().unwrap();
    let ledger = work.path().join("issuer-settlement.csv");
    let (issuer, port) = issuer_process(
        &ledger,
        &["--partial-over", "50000", "--silent-amount", "777"],
    );
    // The cut-over in an IANA zone.
    let (_, cutover) = cutover_far_away();
    let body = format!(
        "spec = \"iso8583-1987-ascii\"\n[business_day]\ncutover = \"{cutover}\"\ntime_zone = \"Europe/Berlin\"\n[batch]\nenabled = true\n{}settlement_date = true\ntimeout_ms = 400\n{}",
        link("issuer", format!("127.0.0.1:{port}"), ""),
        route("all", "\"2\", \"4\", \"5\", \"6\"", "issuer")
    );
    let switch = Switch::start(&body);
    let target = switch.terminals.to_string();
    let load = std::thread::spawn(move || {
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["sim", "terminal", "--target", &target, "--connections", "2"])
            .args([
                "--window",
                "2",
                "--duration",
                "4",
                "--json",
                "--first-terminal",
                "50",
            ])
            .output()
            .unwrap()
    });
    let mut tills = vec![
        Till::new(&switch, "TMIX0001", "MERCHANTMIX0001", 100),
        Till::new(&switch, "TMIX0002", "MERCHANTMIX0002", 200),
        Till::new(&switch, "TMIX0003", "MERCHANTMIX0003", 300),
    ];
    for t in &mut tills {
        t.mixed_day();
    }
    let day_one: Vec<Totals> = tills.iter().map(|t| t.totals).collect();
    let (status, said) = post(&switch, "/cutover", TOKENS[0].2);
    assert_eq!(status, "200", "{said}");
    // After the cut-over: two more sales each, on the next business date.
    for t in &mut tills {
        for amount in [1_100, 1_200] {
            let (rrn, (code, _, _)) = t.send("0200", "000000", amount, None);
            assert_eq!(code, "00");
            t.keep(&rrn, amount, false);
        }
    }
    let out = load.join().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["answered"], report["sent"], "{report}");
    // Two terminals close in balance.
    for t in &mut tills[..2] {
        let totals = t.totals;
        assert_eq!(t.settle("000001", &totals), "00", "{} in balance", t.tid);
    }
    // The third claims one sale more, gets 95 and uploads; the switch restarts half-way.
    let t3 = &mut tills[2];
    let mut claimed = t3.totals;
    claimed.debits += 1;
    claimed.debits_amount += 4_242;
    assert_eq!(t3.settle("000001", &claimed), "95");
    let mut upload = t3.items.clone();
    upload.push(("MIX3EXTRA001".to_string(), 4_242));
    let half = upload.len() / 2;
    for (rrn, amount) in &upload[..half] {
        assert_eq!(t3.upload("000001", rrn, *amount), "00");
    }
    let switch = switch.restart();
    t3.conn = crate::switch::Terminal::connect(switch.terminals);
    for (rrn, amount) in &upload[half..] {
        assert_eq!(t3.upload("000001", rrn, *amount), "00");
    }
    assert_eq!(t3.settle("000001", &claimed), "00", "the final 0500");
    let kept = t3.items.len() as u64;
    let summary = stop_issuer(issuer);
    // The batches: closed on the switch's totals, equal to what each terminal kept.
    let events = audit_events(&switch.audit_dir(), |e| e.starts_with("batch-"));
    for t in &tills {
        let closed: Vec<_> = events
            .iter()
            .filter(|e| e["event"] == "batch-closed" && e["terminal"] == t.tid)
            .collect();
        assert_eq!(closed.len(), 1, "{events:?}");
        let totals: Totals = serde_json::from_value(closed[0]["totals"].clone()).unwrap();
        assert_eq!(totals, t.totals, "{}", t.tid);
    }
    let after = events
        .iter()
        .find(|e| e["event"] == "batch-closed" && e["terminal"] == "TMIX0003")
        .unwrap();
    assert_eq!(
        after["after_upload"]["matched"].as_u64(),
        Some(kept),
        "{after}"
    );
    assert_eq!(after["after_upload"]["unknown_to_switch"].as_u64(), Some(1));
    assert_eq!(after["after_upload"]["not_uploaded"].as_u64(), Some(0));
    let unknown: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "batch-upload-unknown")
        .collect();
    assert_eq!(unknown.len(), 1, "{events:?}");
    assert_eq!(unknown[0]["rrn"], "MIX3EXTRA001");
    // What had no original never reached the issuer.
    let pairs = records(&switch.audit_dir());
    let refused: Vec<_> = pairs
        .iter()
        .filter(|p| p.outcome == Some(switchyard_audit::Outcome::NoOriginal))
        .collect();
    assert_eq!(refused.len(), 9, "three a terminal");
    assert!(refused
        .iter()
        .all(|p| p.issuer.is_none() && p.response_code.as_deref() == Some("25")));
    // The timeouts were reversed to the issuer: 3 of them and the terminals' 3 reversals.
    let reversals: u64 = summary
        .split("reversals ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(reversals >= 6, "{summary}");
    // Both business dates reconcile with the issuer's file, and hold every row of it once.
    let file = std::fs::read_to_string(&ledger).unwrap();
    let mut dates: Vec<String> = pairs
        .iter()
        .filter_map(|p| p.business_date.as_deref().map(str::to_string))
        .collect();
    dates.sort();
    dates.dedup();
    assert_eq!(dates.len(), 2, "{dates:?}");
    let mut matched = 0;
    for date in &dates {
        let out = audit_books(&switch, "reconcile", date, "table", Some(&ledger));
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{date}: {said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let n: usize = said
            .lines()
            .last()
            .and_then(|l| l.strip_suffix(" matched, 0 differences"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{said}"));
        matched += n;
    }
    assert_eq!(
        matched,
        file.lines().count() - 1,
        "every row of the file once"
    );
    // Settle: each mixed merchant on the first date is owed what its terminal kept then.
    let rows = settle_rows(&switch, &dates[0]);
    for (t, kept) in tills.iter().zip(&day_one) {
        let row = rows
            .iter()
            .find(|r| r["merchant"] == t.merchant)
            .unwrap_or_else(|| panic!("{rows:?}"));
        let net = kept.debits_amount as i64
            - kept.debit_reversals_amount as i64
            - kept.credits_amount as i64;
        assert_eq!(row["net"].as_i64(), Some(net), "{row}");
        assert_eq!(row["completions_amount"].as_u64(), Some(18_000), "{row}");
        assert_eq!(
            row["reversed_count"].as_u64(),
            Some(2),
            "the void and the reversal: {row}"
        );
        assert_eq!(row["refunds_amount"].as_u64(), Some(500), "{row}");
    }
    switch.assert_audit_verifies();
}
