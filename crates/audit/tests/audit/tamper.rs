//! The verifier finds every kind of tampering, and names the place.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use switchyard_audit::format::{list_segments, read_slot, Slot, HEADER_LEN};
use switchyard_audit::AuditError;

use crate::{append_many, keys, open, small};

/// A closed log of 300 records over several segments; its segment paths.
async fn sample_log(dir: &Path) -> Vec<PathBuf> {
    let (log, _) = open(small(dir));
    let log = Arc::new(log);
    append_many(&log, 300, 4).await;
    log.close().unwrap();
    let segments: Vec<PathBuf> = list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert!(segments.len() >= 3, "{} segments", segments.len());
    switchyard_audit::verify(dir, keys().chain()).unwrap();
    segments
}

/// (offset, length) of each record in a segment.
fn layout(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = HEADER_LEN;
    while let Slot::Record(r) = read_slot(bytes, at, 1 << 20) {
        out.push((at, r.len()));
        at += r.len();
    }
    out
}

fn expect_corrupt(dir: &Path, segment: &Path, offset: Option<u64>, words: &str) {
    match switchyard_audit::verify(dir, keys().chain()) {
        Err(AuditError::Corrupt {
            segment: s,
            offset: o,
            reason,
        }) => {
            assert_eq!(s, segment, "names the segment ({reason})");
            if let Some(offset) = offset {
                assert_eq!(o, offset, "names the offset ({reason})");
            }
            assert!(
                reason.contains(words),
                "{reason:?} should mention {words:?}"
            );
        }
        other => panic!("tampering not detected: {other:?}"),
    }
}

#[tokio::test]
async fn a_flipped_bit_is_found_by_crc_and_a_recomputed_crc_by_the_chain() {
    let dir = crate::disk_dir();
    let segments = sample_log(dir.path()).await;
    let target = &segments[1];
    let mut bytes = std::fs::read(target).unwrap();
    let (at, len) = layout(&bytes)[5];
    bytes[at + 30] ^= 0x04;
    std::fs::write(target, &bytes).unwrap();
    expect_corrupt(dir.path(), target, Some(at as u64), "CRC");

    // An editor who also fixes the CRC: the chain still catches it.
    let crc = crc32c::crc32c(&bytes[at + 8..at + len]);
    bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(target, &bytes).unwrap();
    expect_corrupt(dir.path(), target, Some(at as u64), "chain");
}

#[tokio::test]
async fn a_deleted_record_is_found() {
    let dir = crate::disk_dir();
    let segments = sample_log(dir.path()).await;
    let target = &segments[1];
    let bytes = std::fs::read(target).unwrap();
    let (at, len) = layout(&bytes)[3];
    let mut edited = bytes[..at].to_vec();
    edited.extend_from_slice(&bytes[at + len..]);
    edited.resize(bytes.len(), 0);
    std::fs::write(target, &edited).unwrap();
    expect_corrupt(dir.path(), target, Some(at as u64), "missing or reordered");
}

#[tokio::test]
async fn a_swapped_pair_of_records_is_found() {
    let dir = crate::disk_dir();
    let segments = sample_log(dir.path()).await;
    let target = &segments[0];
    let mut bytes = std::fs::read(target).unwrap();
    let records = layout(&bytes);
    let ((a, alen), (_, blen)) = (records[7], records[8]);
    let (first, second) = (
        bytes[a..a + alen].to_vec(),
        bytes[a + alen..a + alen + blen].to_vec(),
    );
    bytes[a..a + blen].copy_from_slice(&second);
    bytes[a + blen..a + blen + alen].copy_from_slice(&first);
    std::fs::write(target, &bytes).unwrap();
    expect_corrupt(dir.path(), target, Some(a as u64), "missing or reordered");
}

#[tokio::test]
async fn a_truncated_or_emptied_or_removed_middle_segment_is_found() {
    let dir = crate::disk_dir();
    let segments = sample_log(dir.path()).await;
    let target = &segments[1];
    let original = std::fs::read(target).unwrap();

    // Cut short.
    std::fs::write(target, &original[..original.len() / 2]).unwrap();
    expect_corrupt(dir.path(), target, None, "truncated");

    // Same size, last records zeroed: the next segment does not follow on.
    let mut emptied = original.clone();
    let (at, _) = *layout(&original).last().unwrap();
    emptied[at..].fill(0);
    std::fs::write(target, &emptied).unwrap();
    expect_corrupt(dir.path(), &segments[2], Some(8), "records missing");

    // Removed altogether.
    std::fs::remove_file(target).unwrap();
    expect_corrupt(dir.path(), &segments[2], Some(8), "records missing");
}

#[tokio::test]
async fn data_hidden_after_the_end_marker_and_a_wrong_key_are_found() {
    let dir = crate::disk_dir();
    let segments = sample_log(dir.path()).await;
    let last = segments.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    let (at, len) = *layout(&bytes).last().unwrap();
    bytes[at + len + 100] = 1;
    std::fs::write(last, &bytes).unwrap();
    expect_corrupt(dir.path(), last, Some((at + len) as u64), "after the end");

    let other = crate::disk_dir();
    sample_log(other.path()).await;
    let key_dir = crate::disk_dir();
    let (c, p) = (key_dir.path().join("c"), key_dir.path().join("p"));
    std::fs::write(&c, "aa".repeat(32)).unwrap();
    std::fs::write(&p, "bb".repeat(32)).unwrap();
    let wrong = switchyard_audit::AuditKeys::load(
        &switchyard_audit::KeySource::File(c),
        &switchyard_audit::KeySource::File(p),
    )
    .unwrap();
    let err = switchyard_audit::verify(other.path(), wrong.chain()).unwrap_err();
    assert!(err.to_string().contains("chain"), "{err}");
}
