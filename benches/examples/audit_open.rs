//! The audit bench's open-loop latency alone, for quick side-by-side runs and for telling the
//! disk's share of the append latency from the threads' share:
//! `cargo run --release -p switchyard-benches --example audit_open -- [RECORDS] [RATE] [DIR]`
//! (default 20000 records at 20000/s in `target/audit-open`).
//!
//! It times 1,000 write + fdatasync of one record (the bench's bound is their p99 plus the
//! batch window), then starts appends of 900-byte records on schedule from this thread,
//! whether or not earlier ones finished, and prints the append latencies and the batches'
//! fdatasyncs. With DIR on a tmpfs (`/dev/shm/...`), where a write and a sync take about a
//! microsecond, what is left is the cost of handing each record to the writer thread and
//! its answer back to the task.

// A measuring tool: a failed unwrap is a failed measurement, reported as such.
#![allow(clippy::unwrap_used)]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_audit::{AuditConfig, AuditKeys, AuditLog, BatchObserver};
use switchyard_benches::audit::{open_loop_latency, record, segment_bytes_for};

const SINGLE_SYNCS: usize = 1000;

/// The `p` quantile in milliseconds.
fn ms(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort_unstable();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

/// write + fdatasync of one record at a time: every sync's duration.
fn single_syncs(dir: &std::path::Path) -> Vec<Duration> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("per-record.dat"))
        .unwrap();
    f.write_all_at(&vec![0u8; SINGLE_SYNCS * 1024], 0).unwrap();
    f.sync_all().unwrap();
    (0..SINGLE_SYNCS)
        .map(|i| {
            f.write_all_at(&record(i), (i * 1024) as u64).unwrap();
            let s = Instant::now();
            f.sync_data().unwrap();
            s.elapsed()
        })
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let rate: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(20_000.0);
    let dir = args
        .next()
        .map_or_else(|| PathBuf::from("target/audit-open"), PathBuf::from);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut syncs = single_syncs(&dir);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut config = AuditConfig::new(dir.join("log"));
    let window = config.batch_window;
    config.segment_bytes = segment_bytes_for(n);
    let batch_syncs: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let observed = batch_syncs.clone();
    config.on_batch = Some(BatchObserver(Arc::new(move |_, took| {
        observed.lock().unwrap().push(took);
    })));
    let (log, _) = AuditLog::open(config, Arc::new(AuditKeys::demo())).unwrap();
    let log = Arc::new(log);
    let mut latencies = open_loop_latency(&rt, &log, n, rate).unwrap();
    log.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let mut batch_syncs = std::mem::take(&mut *batch_syncs.lock().unwrap());
    let bound = ms(&mut syncs, 0.99) + window.as_secs_f64() * 1e3;
    println!(
        "write + fdatasync of one record: p50 {:.3} ms, p99 {:.3} ms",
        ms(&mut syncs, 0.5),
        ms(&mut syncs, 0.99)
    );
    println!(
        "append at {rate:.0}/s: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms; {} batches of {:.1} records, their fdatasync p50 {:.3} ms, p99 {:.3} ms",
        ms(&mut latencies, 0.5),
        ms(&mut latencies, 0.9),
        ms(&mut latencies, 0.99),
        ms(&mut latencies, 1.0),
        batch_syncs.len(),
        n as f64 / batch_syncs.len().max(1) as f64,
        ms(&mut batch_syncs, 0.5),
        ms(&mut batch_syncs, 0.99),
    );
    println!(
        "append p99 / (single fdatasync p99 + {:.3} ms window): {:.2}",
        window.as_secs_f64() * 1e3,
        ms(&mut latencies, 0.99) / bound
    );
}
