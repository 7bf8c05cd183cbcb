//! Group commit alone, for profilers (`perf record -g`) and quick side-by-side runs: 256
//! tasks on a two-worker runtime append 900-byte records until `RECORDS` are durable, and
//! the rate is printed. `cargo run --release -p switchyard-benches --example audit_loop --
//! [RECORDS] [DIR] [ROUNDS]` (default 200000 records in `target/audit-loop`, one round).
//! Each round opens a fresh log in the same process, for what a longer-lived process sees.
//! The log's first two segments are zero-filled when it opens, before the clock starts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use switchyard_audit::{AuditConfig, AuditKeys, AuditLog, RecordKind};
use switchyard_benches::audit::{record, RECORD_BYTES};

const APPENDERS: usize = 256;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let dir = args
        .next()
        .map_or_else(|| PathBuf::from("target/audit-loop"), PathBuf::from);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    for _ in 0..rounds {
        round(&rt, n, &dir);
    }
}

/// One log, opened fresh, `n` records through it, closed.
fn round(rt: &tokio::runtime::Runtime, n: usize, dir: &std::path::Path) {
    let _ = std::fs::remove_dir_all(dir);
    let mut config = AuditConfig::new(dir);
    config.segment_bytes = (n * (RECORD_BYTES + 64)) as u64 + (1 << 20);
    let (log, _) = AuditLog::open(config, Arc::new(AuditKeys::demo()))
        .unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    let log = Arc::new(log);
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..APPENDERS {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for i in (t..n).step_by(APPENDERS) {
                    log.append(RecordKind::Pair, record(i))
                        .await
                        .unwrap_or_else(|e| panic!("append: {e}"));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap_or_else(|e| panic!("appender: {e}"));
        }
    });
    let elapsed = start.elapsed();
    println!(
        "{n} durable records in {:.3} s: {:.0} records/s",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    let stats = log.stats();
    let syncs = stats
        .batches
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(1);
    println!(
        "{syncs} fdatasyncs, {:.0} records each, {:.0} µs each",
        n as f64 / syncs as f64,
        stats.sync_nanos.load(std::sync::atomic::Ordering::Relaxed) as f64 / syncs as f64 / 1e3
    );
    if let Ok(log) = Arc::try_unwrap(log) {
        log.close().unwrap_or_else(|e| panic!("close: {e}"));
    }
    let _ = std::fs::remove_dir_all(dir);
}
