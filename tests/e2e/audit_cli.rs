//! `switchyard audit verify|query|report` on a real log written through the audit crate.

use std::path::Path;
use std::sync::Arc;

use switchyard_audit::{
    AuditConfig, AuditKeys, AuditLog, KeySource, Outcome, PairRecord, RecordKind,
};
use switchyard_iso8583::{shipped, MessageBuilder, MessageView, Mti};

use crate::support::switchyard;

const PAN: &str = "4000056655665556";

struct Keys {
    _dir: tempfile::TempDir,
    chain: String,
    pan: String,
    keys: Arc<AuditKeys>,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let (chain, pan) = (dir.path().join("chain.key"), dir.path().join("pan.key"));
    std::fs::write(&chain, "c1".repeat(32)).unwrap();
    std::fs::write(&pan, "9a".repeat(32)).unwrap();
    let keys = AuditKeys::load(
        &KeySource::File(chain.clone()),
        &KeySource::File(pan.clone()),
    )
    .unwrap();
    Keys {
        chain: chain.display().to_string(),
        pan: pan.display().to_string(),
        keys: Arc::new(keys),
        _dir: dir,
    }
}

fn pair(
    keys: &AuditKeys,
    pan: &str,
    tid: &str,
    stan: u64,
    amount: u64,
    code: &str,
    day: i64,
) -> PairRecord {
    let spec = shipped("iso8583-1987-ascii").unwrap();
    let mut b = MessageBuilder::new(spec, Mti::parse("0200").unwrap());
    b.set(2, pan)
        .unwrap()
        .set(3, "000000")
        .unwrap()
        .set_u64(4, amount)
        .unwrap();
    b.set_u64(11, stan)
        .unwrap()
        .set(41, tid)
        .unwrap()
        .set(42, "MERCHANT0000001")
        .unwrap();
    b.set(49, "978").unwrap();
    let request = MessageView::decode(spec, b.encode()).unwrap();
    let mut r = PairRecord::from_request(
        "terminals",
        &request,
        keys,
        day * 86_400_000_000 + 3_600_000_000,
    );
    let mut answer = MessageBuilder::new(spec, request.mti());
    answer.respond_to(&request, code.as_bytes()).unwrap();
    r.set_response(&MessageView::decode(spec, answer.encode()).unwrap());
    r.outcome = Some(if code == "00" {
        Outcome::Approved
    } else {
        Outcome::Declined
    });
    r.issuer = Some("issuer-a".into());
    r
}

/// Five transactions over two days (2026-11-23 and 2026-11-24, UTC).
fn write_log(dir: &Path, keys: &Arc<AuditKeys>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (log, _) = AuditLog::open(AuditConfig::new(dir), keys.clone()).unwrap();
    rt.block_on(async {
        let day1 = 20_780; // 2026-11-23
        for (pan, tid, stan, amount, code, day) in [
            (PAN, "TERM0001", 1, 1000, "00", day1),
            (PAN, "TERM0001", 2, 2500, "05", day1),
            ("5413330089020011", "TERM0002", 1, 700, "00", day1),
            ("5413330089020011", "TERM0002", 2, 300, "00", day1 + 1),
            (PAN, "TERM0003", 9, 50, "00", day1 + 1),
        ] {
            let r = pair(keys, pan, tid, stan, amount, code, day);
            log.append_record(RecordKind::Pair, &r).await.unwrap();
        }
    });
    log.close().unwrap();
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn verify_passes_then_names_the_place_of_a_flipped_bit() {
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &k.keys);
    let d = dir.path().to_str().unwrap();
    let out = switchyard(
        &["audit", "verify", "--dir", d, "--chain-key-file", &k.chain],
        b"",
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("ok: 5 records in 1 segments verified (sequence 1..=5)"),
        "{stdout}"
    );

    let missing = switchyard(&["audit", "verify", "--dir", d], b"");
    assert_eq!(missing.status.code(), Some(64));
    assert!(text(&missing).1.contains("--chain-key-file"));

    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[64 + 100] ^= 0x20;
    std::fs::write(&segment, &bytes).unwrap();
    let out = switchyard(
        &["audit", "verify", "--dir", d, "--chain-key-file", &k.chain],
        b"",
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    assert!(stderr.contains(&segment.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("byte offset 64: record CRC mismatch"),
        "{stderr}"
    );
}

#[test]
fn query_by_card_terminal_and_outcome_without_printing_the_pan() {
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &k.keys);
    let d = dir.path().to_str().unwrap();

    let out = switchyard(
        &[
            "audit",
            "query",
            "--dir",
            d,
            "--chain-key-file",
            &k.chain,
            "--pan",
            PAN,
            "--pan-key-file",
            &k.pan,
            "--format",
            "jsonl",
        ],
        b"",
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines
        .iter()
        .all(|l| l["pan"]["masked"] == "400005******5556"));
    assert!(!stdout.contains(PAN) && !stderr.contains(PAN));

    let out = switchyard(
        &[
            "audit",
            "query",
            "--dir",
            d,
            "--chain-key-file",
            &k.chain,
            "--pan-stdin",
            "--pan-key-file",
            &k.pan,
            "--format",
            "csv",
        ],
        format!("{PAN}\n").as_bytes(),
    );
    let (stdout, _) = text(&out);
    assert_eq!(stdout.lines().count(), 4, "header and three rows: {stdout}");
    assert!(stdout.starts_with(
        "seq,received,terminal,merchant,mti,stan,rrn,amount,currency,response,outcome"
    ));

    let out = switchyard(
        &[
            "audit",
            "query",
            "--dir",
            d,
            "--chain-key-file",
            &k.chain,
            "--terminal",
            "TERM0001",
            "--outcome",
            "declined",
        ],
        b"",
    );
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("TERM0001") && stdout.contains("2500") && stdout.contains("declined"),
        "{stdout}"
    );
    assert!(stdout.ends_with("1 matching records\n"), "{stdout}");

    let out = switchyard(
        &[
            "audit",
            "query",
            "--dir",
            d,
            "--chain-key-file",
            &k.chain,
            "--from",
            "2026-11-24",
            "--format",
            "jsonl",
        ],
        b"",
    );
    assert_eq!(text(&out).0.lines().count(), 2);

    // The wrong PAN key finds nothing; a bad filter is a usage error naming the flag.
    let out = switchyard(
        &[
            "audit",
            "query",
            "--dir",
            d,
            "--chain-key-file",
            &k.chain,
            "--pan",
            PAN,
            "--demo-keys",
            "--format",
            "jsonl",
        ],
        b"",
    );
    assert_eq!(text(&out).0.lines().count(), 0);
    let out = switchyard(
        &[
            "audit",
            "query",
            "--dir",
            d,
            "--demo-keys",
            "--outcome",
            "maybe",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out).1.contains("--outcome"));
    let out = switchyard(
        &[
            "audit",
            "query",
            "--dir",
            d,
            "--chain-key-file",
            &k.chain,
            "--pan",
            "4000-0566",
            "--demo-keys",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(!text(&out).1.contains("4000-0566"));
}

#[test]
fn report_totals_per_day_issuer_merchant_and_terminal() {
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &k.keys);
    let out = switchyard(
        &[
            "audit",
            "report",
            "--dir",
            dir.path().to_str().unwrap(),
            "--chain-key-file",
            &k.chain,
            "--format",
            "csv",
        ],
        b"",
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let rows: Vec<&str> = stdout.lines().collect();
    assert!(
        rows.contains(&"day,2026-11-23,978,3,2,1700,1,2500,0,0,0,0,0"),
        "{stdout}"
    );
    assert!(
        rows.contains(&"day,2026-11-24,978,2,2,350,0,0,0,0,0,0,0"),
        "{stdout}"
    );
    assert!(
        rows.contains(&"issuer,issuer-a,978,5,4,2050,1,2500,0,0,0,0,0"),
        "{stdout}"
    );
    assert!(
        rows.contains(&"terminal,TERM0002,978,2,2,1000,0,0,0,0,0,0,0"),
        "{stdout}"
    );
    assert!(
        rows.contains(&"merchant,MERCHANT0000001,978,5,4,2050,1,2500,0,0,0,0,0"),
        "{stdout}"
    );

    let missing = switchyard(
        &[
            "audit",
            "report",
            "--dir",
            "/nonexistent/switchyard-audit",
            "--demo-keys",
        ],
        b"",
    );
    assert_eq!(missing.status.code(), Some(66));
}

/// The byte offsets of the records in the log's one segment, and its path.
fn record_offsets(dir: &Path) -> (std::path::PathBuf, Vec<usize>) {
    use switchyard_audit::format::{read_slot, Slot, HEADER_LEN};
    let segment = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let bytes = std::fs::read(&segment).unwrap();
    let (mut offsets, mut at) = (Vec::new(), HEADER_LEN);
    while let Slot::Record(r) = read_slot(&bytes, at, 1 << 20) {
        offsets.push(at);
        at += r.len();
    }
    (segment, offsets)
}

fn flip_byte(segment: &Path, at: usize) {
    let mut bytes = std::fs::read(segment).unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(segment, &bytes).unwrap();
}

#[test]
fn query_and_report_stop_at_damage_unless_allowed_and_then_say_so() {
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &k.keys);
    let d = dir.path().to_str().unwrap();
    let (segment, offsets) = record_offsets(dir.path());
    assert_eq!(offsets.len(), 5);
    let run = |command: &str, extra: &[&str]| {
        let mut args = vec!["audit", command, "--dir", d, "--chain-key-file", &k.chain];
        args.extend_from_slice(extra);
        let out = switchyard(&args, b"");
        let (stdout, stderr) = text(&out);
        (out.status.code(), stdout, stderr)
    };

    // The first record damaged: no empty report, no "0 matching records".
    flip_byte(&segment, offsets[0] + 30);
    let place = format!(
        "{} at byte offset 64: record CRC mismatch",
        segment.display()
    );
    for command in ["query", "report"] {
        let (code, stdout, stderr) = run(command, &[]);
        assert_eq!(code, Some(65), "{command}: {stdout} {stderr}");
        assert!(stderr.contains(&place), "{command}: {stderr}");
        assert!(!stdout.contains("matching records"), "{command}: {stdout}");
    }
    let (code, stdout, stderr) = run("query", &["--allow-damaged"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("4 matching records"), "{stdout}");
    assert!(
        stdout.contains("WARNING: the log is damaged: 1 place(s) skipped"),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!("DAMAGED LOG, skipped: {place}")),
        "{stderr}"
    );
    flip_byte(&segment, offsets[0] + 30);

    // A record in the middle damaged: the report does not silently stop short.
    flip_byte(&segment, offsets[2] + 30);
    let (code, _, stderr) = run("report", &["--format", "csv"]);
    assert_eq!(code, Some(65), "{stderr}");
    let at = format!("byte offset {}: record CRC mismatch", offsets[2]);
    assert!(stderr.contains(&at), "{stderr}");
    let (code, stdout, stderr) = run("report", &["--format", "csv", "--allow-damaged"]);
    assert_eq!(code, Some(0), "{stderr}");
    // Day one without TERM0002's 700; day two complete (read past the damage).
    assert!(
        stdout.contains("day,2026-11-23,978,2,1,1000,1,2500,0,0,0,0,0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("day,2026-11-24,978,2,2,350,0,0,0,0,0,0,0"),
        "{stdout}"
    );
    assert!(stderr.contains("the log is damaged"), "{stderr}");
}

#[test]
fn verify_refuses_what_is_not_an_audit_log_and_hints_at_a_wrong_key() {
    let k = keys();
    let parent = tempfile::tempdir().unwrap();
    let log = parent.path().join("audit");
    write_log(&log, &k.keys);
    let verify = |dir: &Path, key: &[&str]| {
        let mut args = vec!["audit", "verify", "--dir", dir.to_str().unwrap()];
        args.extend_from_slice(key);
        let out = switchyard(&args, b"");
        (out.status.code(), text(&out).1)
    };
    let chain = ["--chain-key-file", k.chain.as_str()];

    let empty = tempfile::tempdir().unwrap();
    let (code, stderr) = verify(empty.path(), &chain);
    assert_eq!(code, Some(66), "{stderr}");
    assert!(stderr.contains("no audit segments"), "{stderr}");

    let unrelated = tempfile::tempdir().unwrap();
    std::fs::write(unrelated.path().join("notes.txt"), "hello").unwrap();
    let (code, stderr) = verify(unrelated.path(), &chain);
    assert_eq!(code, Some(66), "{stderr}");
    assert!(
        stderr.contains("\"notes.txt\" is not an audit segment"),
        "{stderr}"
    );

    let (code, stderr) = verify(parent.path(), &chain);
    assert_eq!(code, Some(66), "{stderr}");
    assert!(
        stderr.contains("\"audit\" is not an audit segment"),
        "{stderr}"
    );

    let (code, missing) = verify(&parent.path().join("nowhere"), &chain);
    assert_eq!(code, Some(66));
    assert!(missing.contains("no such directory"), "{missing}");
    let file = parent.path().join("plain");
    std::fs::write(&file, "x").unwrap();
    let (code, plain) = verify(&file, &chain);
    assert_eq!(code, Some(66));
    assert!(
        plain.contains("is a file, not an audit log directory"),
        "{plain}"
    );

    let (code, stderr) = verify(&log, &["--demo-keys"]);
    assert_eq!(code, Some(65), "{stderr}");
    assert!(
        stderr.contains("is the chain key the right one?"),
        "{stderr}"
    );
    let (code, stderr) = verify(&log, &chain);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn a_closed_standard_output_ends_a_query_quietly() {
    use std::io::Read;
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (log, _) = AuditLog::open(AuditConfig::new(dir.path()), k.keys.clone()).unwrap();
    rt.block_on(async {
        // Far more than a pipe holds, so the command writes into the closed pipe.
        for stan in 1..=2000 {
            let r = pair(&k.keys, PAN, "TERM0001", stan, 100, "00", 20_780);
            log.append_record(RecordKind::Pair, &r).await.unwrap();
        }
    });
    log.close().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["audit", "query", "--dir", d, "--chain-key-file", &k.chain])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 100];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout); // `| head -c 100`
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}
