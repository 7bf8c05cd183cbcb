//! Audit log tests on real files with real fsync: round trips, tamper detection, crash
//! recovery with SIGKILLed child processes, write failures, and card-data safety.

// Test helpers outside #[test] functions: a failed unwrap is a failed test here.
#![allow(clippy::unwrap_used)]

mod crash;
mod durability;
mod pci;
mod tail;
mod tamper;

use std::path::Path;
use std::sync::Arc;

use switchyard_audit::{AuditConfig, AuditKeys, AuditLog, RecordKind, Recovery};

/// A directory for a test's log on the disk the workspace is on, where the log writes with
/// direct I/O if the filesystem takes it (a `/tmp` on tmpfs would not exercise that).
pub fn disk_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// A small-segment configuration so that tests cross segment boundaries.
pub fn small(dir: &Path) -> AuditConfig {
    let mut c = AuditConfig::new(dir);
    c.segment_bytes = 16 << 10;
    c.max_record_bytes = 4 << 10;
    c.max_write_bytes = 8 << 10;
    c
}

pub fn keys() -> Arc<AuditKeys> {
    Arc::new(AuditKeys::demo())
}

pub fn open(config: AuditConfig) -> (AuditLog, Recovery) {
    AuditLog::open(config, keys()).unwrap()
}

/// A JSON payload that says which record it is.
pub fn payload(n: u64) -> Vec<u8> {
    format!(
        "{{\"n\":{n},\"pad\":\"{}\"}}",
        "x".repeat((n % 300) as usize)
    )
    .into_bytes()
}

/// Every record as (seq, kind, payload).
pub fn records(dir: &Path) -> Vec<(u64, Option<RecordKind>, Vec<u8>)> {
    let mut all = Vec::new();
    switchyard_audit::for_each(dir, |r| {
        all.push((r.seq, r.kind, r.payload.to_vec()));
        Ok(())
    })
    .unwrap();
    all
}

/// Append `n` records at once, each from a task of its own; what each append returned.
pub async fn append_concurrently(
    log: &Arc<AuditLog>,
    n: u64,
) -> Vec<switchyard_audit::Result<u64>> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let log = log.clone();
        set.spawn(async move { log.append(RecordKind::Event, payload(i)).await });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.push(r.unwrap());
    }
    all
}

/// Append `n` records from `tasks` concurrent tasks; their sequence numbers.
pub async fn append_many(log: &Arc<AuditLog>, n: u64, tasks: u64) -> Vec<u64> {
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let log = log.clone();
        set.spawn(async move {
            let mut seqs = Vec::new();
            for i in (t..n).step_by(tasks as usize) {
                seqs.push(log.append(RecordKind::Event, payload(i)).await.unwrap());
            }
            seqs
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.unwrap());
    }
    all.sort_unstable();
    all
}
