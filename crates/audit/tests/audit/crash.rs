//! Crash recovery: a writer process killed with SIGKILL while appending, many times over;
//! torn tails repaired and kept aside; corruption that is not a torn tail refused.
//!
//! `SWITCHYARD_CRASH_ITERATIONS` sets the number of kill cycles (default 20 for CI;
//! `scripts/soak.sh` runs 500).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use switchyard_audit::format::{list_segments, read_slot, Slot, HEADER_LEN};
use switchyard_audit::{AuditError, AuditLog, RecordKind};

use crate::{keys, open, payload, records, small};

const CHILD_DIR: &str = "SWITCHYARD_AUDIT_CHILD_DIR";

/// The writer process: appends from 8 tasks until killed, printing `ack <seq> <n>` for each
/// record the log acknowledged as durable. Run by the crash test, not on its own.
#[tokio::test]
#[ignore = "the crash test's child process"]
async fn child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let (log, _) = AuditLog::open(small(Path::new(&dir)), keys()).unwrap();
    let log = Arc::new(log);
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (log, out) = (log.clone(), out.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let n = t * 1_000_000_000 + i;
                let seq = log.append(RecordKind::Event, payload(n)).await.unwrap();
                let mut out = out.lock().unwrap();
                writeln!(out, "ack {seq} {n}").unwrap();
                out.flush().unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[test]
fn a_writer_killed_mid_append_loses_no_acknowledged_record() {
    let iterations: usize = std::env::var("SWITCHYARD_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = crate::disk_dir();
    let mut acknowledged: BTreeMap<u64, u64> = BTreeMap::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let (mut repaired, mut torn) = (0, 0);
    for round in 0..iterations {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "crash::child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split_whitespace();
                if parts.next() == Some("ack") {
                    if let (Some(Ok(seq)), Some(Ok(n))) = (
                        parts.next().map(str::parse::<u64>),
                        parts.next().map(str::parse::<u64>),
                    ) {
                        acks.push((seq, n));
                    }
                }
            }
            acks
        });
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(150 + rng % 250));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acks = reader.join().unwrap();
        assert!(
            !acks.is_empty() || round > 0,
            "the child wrote records before the kill"
        );
        acknowledged.extend(acks);

        // SIGKILL lets the kernel finish a write() in progress, so a kill alone never
        // tears a record; power loss can. Every third round also tears the tail the way a
        // half-finished write would, so recovery is exercised between kills too.
        if round % 3 == 2 && tear_tail(dir.path()) {
            torn += 1;
        }
        // Recovery: opens, keeps every acknowledged record, continues the chain.
        let (log, recovery) = open(small(dir.path()));
        if recovery.torn_bytes > 0 {
            repaired += 1;
        }
        drop(log);
        let on_disk: BTreeMap<u64, Vec<u8>> = records(dir.path())
            .into_iter()
            .map(|(s, _, p)| (s, p))
            .collect();
        for (seq, n) in &acknowledged {
            assert_eq!(
                on_disk.get(seq),
                Some(&payload(*n)),
                "round {round}: acknowledged record {seq} lost or changed"
            );
        }
        switchyard_audit::verify(dir.path(), keys().chain()).unwrap();
    }
    eprintln!(
        "{iterations} kill cycles, {} acknowledged records kept, {repaired} torn tails repaired",
        acknowledged.len()
    );
    assert!(torn > 0 || iterations < 3, "tails were torn");
    assert!(repaired >= torn, "every torn tail was repaired");
}

/// Write the first half of a copy of the newest segment's last record after it; whether
/// there was room to.
fn tear_tail(dir: &Path) -> bool {
    let (path, mut bytes, layout) = newest(dir);
    let Some(&(at, len)) = layout.last() else {
        return false;
    };
    let half = len / 2;
    if at + len + half > bytes.len() {
        return false;
    }
    let torn = bytes[at..at + half].to_vec();
    bytes[at + len..at + len + half].copy_from_slice(&torn);
    std::fs::write(&path, &bytes).unwrap();
    true
}

/// The newest segment's bytes and its record layout.
fn newest(dir: &Path) -> (std::path::PathBuf, Vec<u8>, Vec<(usize, usize)>) {
    let (_, path) = list_segments(dir).unwrap().pop().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let mut layout = Vec::new();
    let mut at = HEADER_LEN;
    while let Slot::Record(r) = read_slot(&bytes, at, 1 << 20) {
        layout.push((at, r.len()));
        at += r.len();
    }
    (path, bytes, layout)
}

#[tokio::test]
async fn a_torn_tail_is_copied_aside_removed_and_the_chain_continues() {
    let dir = crate::disk_dir();
    let (log, _) = open(small(dir.path()));
    for i in 0..40 {
        log.append(RecordKind::Event, payload(i)).await.unwrap();
    }
    log.close().unwrap();
    drop(log);
    // Half of a copy of the last record, written after it: what a torn write leaves.
    let (path, mut bytes, layout) = newest(dir.path());
    let (at, len) = *layout.last().unwrap();
    let torn: Vec<u8> = bytes[at..at + len / 2].to_vec();
    bytes[at + len..at + len + torn.len()].copy_from_slice(&torn);
    std::fs::write(&path, &bytes).unwrap();

    let (log, recovery) = open(small(dir.path()));
    assert_eq!(recovery.torn_bytes as usize, torn.len());
    let copy = recovery.torn_copy.clone().unwrap();
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        torn,
        "damaged bytes kept aside"
    );
    assert_eq!(recovery.next_seq, 41);
    assert_eq!(
        log.append(RecordKind::Event, payload(41)).await.unwrap(),
        41
    );
    log.close().unwrap();
    switchyard_audit::verify(dir.path(), keys().chain()).unwrap();
}

#[tokio::test]
async fn corruption_that_is_not_a_torn_tail_refuses_to_open() {
    let dir = crate::disk_dir();
    let mut config = small(dir.path());
    config.segment_bytes = 64 << 10;
    config.max_write_bytes = 8 << 10;
    let (log, _) = open(config.clone());
    // Fill the newest segment well past one write's worth (a few hundred records; bounded,
    // so that a log whose records do not read back fails here instead of filling the disk).
    let filled = async {
        for i in 0..20_000u64 {
            log.append(RecordKind::Event, payload(i)).await.unwrap();
            if i % 20 == 19 {
                let (_, _, layout) = newest(dir.path());
                if layout.len() > 1 && layout.last().unwrap().0 - layout[1].0 > 20 << 10 {
                    return true;
                }
            }
        }
        false
    };
    assert!(
        filled.await,
        "the newest segment never read back 20 KiB of records"
    );
    log.close().unwrap();
    drop(log);
    let (path, mut bytes, layout) = newest(dir.path());
    let (at, _) = layout[1];
    bytes[at + 25] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    match AuditLog::open(config, keys()) {
        Err(AuditError::Corrupt {
            segment,
            offset,
            reason,
        }) => {
            assert_eq!((segment, offset), (path, at as u64));
            assert!(reason.contains("CRC"), "{reason}");
        }
        other => panic!("opened a log with corruption in the middle: {other:?}"),
    }
}
