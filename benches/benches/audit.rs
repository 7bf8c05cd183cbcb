//! Audit bench: durable records per second with Switchyard's group commit against, in the
//! same run and on the same disk, (a) a loop of write + fdatasync per record and (b) a loop
//! that writes the same records in batches of the size group commit reached, one fdatasync
//! per batch (the best a writer could do knowing the batches in advance).
//!
//! `cargo bench -p switchyard-benches --bench audit` prints criterion's report, then an
//! interleaved table: rounds alternate between the three writers so a noisy disk hits all
//! alike, and medians are printed with the ratios, the p99 append latency of group commit
//! and the p99 of one fdatasync. `-- --test` runs a smoke size (what CI runs).
//! The data goes to `target/audit-bench` (the disk under test); `SWITCHYARD_BENCH_DIR`
//! points it elsewhere.

// A bench: a failed unwrap is a failed measurement, reported as such.
#![allow(clippy::unwrap_used)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use switchyard_audit::{AuditConfig, AuditKeys, AuditLog, RecordKind};
use switchyard_benches::audit::{self, record, segment_bytes_for, RECORD_BYTES};

/// Concurrent appenders: transactions waiting for their audit record (more than one batch,
/// so that one batch gathers while the previous one syncs).
const APPENDERS: usize = 256;
/// The steady load of the latency measurement: a busy switch, well below saturation.
const OPEN_LOOP_RATE: f64 = 20_000.0;

fn bench_dir() -> PathBuf {
    std::env::var_os("SWITCHYARD_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/audit-bench"))
}

fn fresh(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
}

fn preallocated(path: &Path, len: usize) -> File {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all_at(&vec![0u8; len], 0).unwrap();
    f.sync_all().unwrap();
    f
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

/// write + fdatasync per record: (elapsed, every sync's duration).
fn fsync_per_record(dir: &Path, n: usize) -> (Duration, Vec<Duration>) {
    let f = preallocated(&dir.join("per-record.dat"), n * (RECORD_BYTES + 64));
    let mut syncs = Vec::with_capacity(n);
    let start = Instant::now();
    let mut at = 0u64;
    for i in 0..n {
        let r = record(i);
        f.write_all_at(&r, at).unwrap();
        at += r.len() as u64;
        let s = Instant::now();
        f.sync_data().unwrap();
        syncs.push(s.elapsed());
    }
    (start.elapsed(), syncs)
}

/// write + fdatasync per batch of `batch` records.
fn batched_loop(dir: &Path, n: usize, batch: usize) -> Duration {
    let f = preallocated(&dir.join("batched.dat"), n * (RECORD_BYTES + 64));
    let start = Instant::now();
    let mut at = 0u64;
    let mut buf = Vec::with_capacity(batch * RECORD_BYTES);
    for chunk in (0..n).collect::<Vec<_>>().chunks(batch.max(1)) {
        buf.clear();
        for &i in chunk {
            buf.extend_from_slice(&record(i));
        }
        f.write_all_at(&buf, at).unwrap();
        at += buf.len() as u64;
        f.sync_data().unwrap();
    }
    start.elapsed()
}

/// The same, with every record encoded as the log encodes it (SHA-256 of the payload, CRC32C,
/// HMAC chain): what an ideal single-threaded writer of this format could do.
fn batched_encoded_loop(dir: &Path, n: usize, batch: usize) -> Duration {
    use switchyard_audit::format::{digest, encode_record, RecordKind as Kind};
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7u8; 32]);
    let f = preallocated(&dir.join("batched-encoded.dat"), n * (RECORD_BYTES + 64));
    let start = Instant::now();
    let (mut at, mut chain, mut seq) = (0u64, [0u8; 32], 1u64);
    let mut buf = Vec::with_capacity(batch * (RECORD_BYTES + 64));
    for chunk in (0..n).collect::<Vec<_>>().chunks(batch.max(1)) {
        buf.clear();
        for &i in chunk {
            let r = record(i);
            chain = encode_record(&mut buf, &key, &chain, seq, Kind::Pair, &r, &digest(&r));
            seq += 1;
        }
        f.write_all_at(&buf, at).unwrap();
        at += buf.len() as u64;
        f.sync_data().unwrap();
    }
    start.elapsed()
}

/// Append latencies of `n` records at a steady `rate` per second, into a fresh log in `dir`.
fn open_loop_latency(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    n: usize,
    rate: f64,
) -> Vec<Duration> {
    fresh(dir);
    let mut config = AuditConfig::new(dir);
    config.segment_bytes = segment_bytes_for(n);
    let (log, _) = AuditLog::open(config, Arc::new(AuditKeys::demo())).unwrap();
    let log = Arc::new(log);
    let latencies = audit::open_loop_latency(rt, &log, n, rate).unwrap();
    log.close().unwrap();
    latencies
}

/// Group commit with `APPENDERS` concurrent appenders: (elapsed, append latencies, mean batch).
fn group_commit(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    n: usize,
) -> (Duration, Vec<Duration>, f64) {
    fresh(dir);
    let mut config = AuditConfig::new(dir);
    config.segment_bytes = segment_bytes_for(n);
    let (log, _) = AuditLog::open(config, Arc::new(AuditKeys::demo())).unwrap();
    let log = Arc::new(log);
    let start = Instant::now();
    let latencies = rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..APPENDERS {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                for i in (t..n).step_by(APPENDERS) {
                    let s = Instant::now();
                    log.append(RecordKind::Pair, record(i)).await.unwrap();
                    lat.push(s.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::with_capacity(n);
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let elapsed = start.elapsed();
    let stats = log.stats();
    let batches = stats
        .batches
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(1);
    let mean_batch =
        stats.records.load(std::sync::atomic::Ordering::Relaxed) as f64 / batches as f64;
    log.close().unwrap();
    (elapsed, latencies, mean_batch)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let base = bench_dir();
    fresh(&base);

    let mut c = Criterion::default().configure_from_args();
    {
        let mut g = c.benchmark_group("audit");
        g.throughput(Throughput::Elements(1));
        g.sample_size(10);
        let dir = base.join("criterion");
        g.bench_function("group_commit_64_appenders", |b| {
            b.iter_custom(|iters| group_commit(&rt, &dir, iters as usize).0)
        });
        g.bench_function("fsync_per_record", |b| {
            b.iter_custom(|iters| {
                fresh(&dir);
                fsync_per_record(&dir, iters as usize).0
            })
        });
        g.finish();
    }
    c.final_summary();

    let (rounds, n_group, n_single, n_open) = if smoke {
        (1, 512, 32, 200)
    } else {
        (5, 40_000, 1_000, 20_000)
    };
    let (mut group_rate, mut single_rate, mut batched_rate, mut encoded_rate) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut syncs, mut batch_sizes, mut open_lat) = (Vec::new(), Vec::new(), Vec::new());
    let mut saturated_lat = Vec::new();
    let window = AuditConfig::new(".").batch_window;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // Each round's figures against the loops and the bound measured in the same round: the
    // disk's speed drifts between rounds, and a stall of the VM in one round should not
    // decide the verdict. Pooled figures are printed too.
    let mut rounds_table = Vec::new();
    let (mut raw_ratio, mut encoded_ratio, mut single_ratio, mut p99_over_bound) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let dir = base.join(format!("round-{round}"));
        let (t, lat, mean_batch) = group_commit(&rt, &dir.join("log"), n_group);
        let g = n_group as f64 / t.as_secs_f64();
        saturated_lat.extend(lat);
        batch_sizes.push(mean_batch);
        fresh(&dir);
        let (t, mut round_syncs) = fsync_per_record(&dir, n_single);
        let single = n_single as f64 / t.as_secs_f64();
        let batch = mean_batch.round().max(1.0) as usize;
        let raw = n_group as f64 / batched_loop(&dir, n_group, batch).as_secs_f64();
        let encoded = n_group as f64 / batched_encoded_loop(&dir, n_group, batch).as_secs_f64();
        let mut lat = open_loop_latency(&rt, &dir.join("open"), n_open, OPEN_LOOP_RATE);
        let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
        let bound = percentile(&mut round_syncs, 0.99) + window;
        rounds_table.push(format!(
            "| {round} | {g:.0} | {:.2}x | {:.3} | {:.3} | {:.3} |",
            g / raw,
            ms(p50),
            ms(p99),
            ms(bound)
        ));
        raw_ratio.push(g / raw);
        encoded_ratio.push(g / encoded);
        single_ratio.push(g / single);
        p99_over_bound.push(p99.as_secs_f64() / bound.as_secs_f64());
        group_rate.push(g);
        single_rate.push(single);
        batched_rate.push(raw);
        encoded_rate.push(encoded);
        syncs.extend(round_syncs);
        open_lat.extend(lat);
    }
    let _ = std::fs::remove_dir_all(&base);
    let (g, s, b, e) = (
        median(group_rate),
        median(single_rate),
        median(batched_rate),
        median(encoded_rate),
    );
    let batch = median(batch_sizes);
    let (raw_ratio, encoded_ratio, single_ratio, p99_over_bound) = (
        median(raw_ratio),
        median(encoded_ratio),
        median(single_ratio),
        median(p99_over_bound),
    );
    let sync_p99 = percentile(&mut syncs, 0.99);
    let (open_p50, open_p99) = (
        percentile(&mut open_lat, 0.5),
        percentile(&mut open_lat, 0.99),
    );
    let saturated_p99 = percentile(&mut saturated_lat, 0.99);
    println!();
    println!(
        "audit log, {RECORD_BYTES}-byte records, {rounds} interleaved rounds, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| round | group commit records/s | / raw batched | open-loop p50 ms | p99 ms | fdatasync p99 + window ms |");
    println!("|---|---|---|---|---|---|");
    for row in &rounds_table {
        println!("{row}");
    }
    println!();
    println!("| writer | durable records/s (median) | group commit / this (median of rounds) |");
    println!("|---|---|---|");
    println!("| group commit, {APPENDERS} appenders (mean batch {batch:.0}) | {g:.0} | 1.00 |");
    println!("| write + fdatasync per record | {s:.0} | {single_ratio:.1}x |");
    println!("| write + fdatasync per batch of {batch:.0}, raw bytes | {b:.0} | {raw_ratio:.2}x |");
    println!(
        "| write + fdatasync per batch of {batch:.0}, same record encoding | {e:.0} | {encoded_ratio:.2}x |"
    );
    println!(
        "append latency at {OPEN_LOOP_RATE:.0} records/s (open loop), all rounds pooled: p50 {:.3} ms, p99 {:.3} ms; \
         fdatasync p99 {:.3} ms + batch window {:.3} ms = {:.3} ms; saturated ({APPENDERS} appenders) p99 {:.3} ms",
        ms(open_p50),
        ms(open_p99),
        ms(sync_p99),
        ms(window),
        ms(sync_p99 + window),
        ms(saturated_p99)
    );
    println!("p99 / (fdatasync p99 + window), median of rounds: {p99_over_bound:.2}");
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "goals (medians of rounds): >= 20x per-record {}; >= 0.8x raw batched {} (same encoding {}); p99 within fdatasync p99 + window {} (pooled: {})",
        verdict(single_ratio >= 20.0),
        verdict(raw_ratio >= 0.8),
        verdict(encoded_ratio >= 0.8),
        verdict(p99_over_bound <= 1.0),
        verdict(open_p99 <= sync_p99 + window),
    );
}
