//! Shared by the audit bench and the audit examples: the records they append and the
//! open-loop latency test.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_audit::{AuditLog, RecordKind};

/// A pair record's typical size in the log (about what a masked 0200/0210 pair takes).
pub const RECORD_BYTES: usize = 900;

/// Record `i`: JSON of `RECORD_BYTES` bytes.
pub fn record(i: usize) -> Vec<u8> {
    let mut r = format!("{{\"n\":{i},\"pad\":\"").into_bytes();
    r.resize(RECORD_BYTES - 2, b'x');
    r.extend_from_slice(b"\"}");
    r
}

/// Segment size for a log that takes `n` records without rotating.
pub fn segment_bytes_for(n: usize) -> u64 {
    ((n * (RECORD_BYTES + 64)) as u64 + (1 << 20)).max(4 << 20)
}

/// Let this thread's sleeps end on time: Linux lets a timer fire up to the thread's timer
/// slack late (50 µs by default), as long as a gap of the 20K/s schedule itself.
fn precise_sleeps() {
    let Ok(me) = std::fs::read_link("/proc/thread-self") else {
        return;
    };
    // "<pid>/task/<tid>": the slack file is per task.
    let _ = std::fs::write(Path::new("/proc").join(me).join("timerslack_ns"), "1000");
}

/// Append latencies of `n` records at a steady `rate` per second (open loop: each append is
/// started on schedule whether or not earlier ones finished). This thread keeps the
/// schedule, sleeping out each gap, and starts the appends on the runtime: tokio's 1 ms
/// timer would start them in bunches of `rate / 1000`, a burst test rather than a steady
/// load. Each latency is measured from the call: the generator never waits for appends.
pub fn open_loop_latency(
    rt: &tokio::runtime::Runtime,
    log: &Arc<AuditLog>,
    n: usize,
    rate: f64,
) -> Result<Vec<Duration>, String> {
    precise_sleeps();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let (log, payload) = (log.clone(), record(i));
        tasks.push(rt.spawn(async move {
            let called = Instant::now();
            log.append(RecordKind::Pair, payload)
                .await
                .map(|_| called.elapsed())
                .map_err(|e| e.to_string())
        }));
    }
    rt.block_on(async {
        let mut all = Vec::with_capacity(n);
        for t in tasks {
            all.push(t.await.map_err(|e| e.to_string())??);
        }
        Ok(all)
    })
}
