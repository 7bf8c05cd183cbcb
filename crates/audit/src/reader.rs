//! Reading a log: every record in order (CRC-checked), and the verifier (CRC, sequence and
//! keyed chain from the first record to the last).

use std::path::{Path, PathBuf};

use crate::error::{AuditError, Result};
use crate::format::{
    self, end_of_data, read_slot, Chain, RecordKind, SegmentHeader, Slot, HEADER_LEN,
};
use crate::keys::{hex, ChainKey};

/// Payloads larger than this are not records (a reader's bound; writers use less).
pub const MAX_PAYLOAD: usize = 16 << 20;

/// One record handed to a reader's callback.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// Sequence number.
    pub seq: u64,
    /// Kind (`None` for a kind this version does not know).
    pub kind: Option<RecordKind>,
    /// The payload.
    pub payload: &'a [u8],
}

fn corrupt(segment: &Path, offset: usize, reason: impl Into<String>) -> AuditError {
    AuditError::Corrupt {
        segment: segment.to_path_buf(),
        offset: offset as u64,
        reason: reason.into(),
    }
}

fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    if !dir.is_dir() {
        return Err(AuditError::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        ));
    }
    format::list_segments(dir).map_err(|e| AuditError::io(dir, e))
}

/// Call `each` for every record in order. A damaged record stops the read with its place,
/// except at the very end of the newest segment, which a running writer may be filling.
pub fn for_each(dir: &Path, each: impl FnMut(RecordRef<'_>) -> Result<()>) -> Result<u64> {
    for_each_recent(dir, usize::MAX, each)
}

/// [`for_each`] over the newest `segments` segments only (crash recovery and the duplicate
/// window look at recent records, not a year of them).
pub fn for_each_recent(
    dir: &Path,
    segments: usize,
    mut each: impl FnMut(RecordRef<'_>) -> Result<()>,
) -> Result<u64> {
    let all = self::segments(dir)?;
    let skip = all.len().saturating_sub(segments);
    let mut count = 0;
    for (i, (_, path)) in all.iter().enumerate().skip(skip) {
        let bytes = std::fs::read(path).map_err(|e| AuditError::io(path, e))?;
        SegmentHeader::decode(&bytes).map_err(|r| corrupt(path, 0, r))?;
        let mut offset = HEADER_LEN;
        loop {
            match read_slot(&bytes, offset, MAX_PAYLOAD) {
                Slot::Record(r) => {
                    each(RecordRef {
                        seq: r.seq,
                        kind: RecordKind::from_code(r.kind),
                        payload: r.payload,
                    })?;
                    count += 1;
                    offset += r.len();
                }
                Slot::End => break,
                Slot::Invalid(_) if i + 1 == all.len() => break,
                Slot::Invalid(reason) => return Err(corrupt(path, offset, reason)),
            }
        }
    }
    Ok(count)
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segments checked.
    pub segments: usize,
    /// Records checked.
    pub records: u64,
    /// First and last sequence numbers (none for an empty log).
    pub first_seq: Option<u64>,
    /// Last sequence number.
    pub last_seq: Option<u64>,
    /// The chain value after the last record, hex: compare it with a copy kept elsewhere to
    /// detect removal of the newest records.
    pub head: String,
}

/// Check every segment and record: headers, sizes, CRCs, sequence numbers without gaps or
/// reordering, and the keyed chain across records and segments. The first problem is an
/// [`AuditError::Corrupt`] naming the segment and byte offset.
pub fn verify(dir: &Path, key: &ChainKey) -> Result<VerifyReport> {
    let all = segments(dir)?;
    let mut report = VerifyReport {
        segments: all.len(),
        records: 0,
        first_seq: None,
        last_seq: None,
        head: String::new(),
    };
    // (next sequence number, chain value) carried across segments.
    let mut expected: Option<(u64, Chain)> = None;
    for (named_seq, path) in &all {
        let bytes = std::fs::read(path).map_err(|e| AuditError::io(path, e))?;
        let header = SegmentHeader::decode(&bytes).map_err(|r| corrupt(path, 0, r))?;
        if bytes.len() as u64 != header.segment_len {
            return Err(corrupt(
                path,
                bytes.len(),
                format!(
                    "segment is {} bytes, its header says {}: truncated or extended",
                    bytes.len(),
                    header.segment_len
                ),
            ));
        }
        if header.first_seq != *named_seq {
            return Err(corrupt(
                path,
                8,
                "first sequence number does not match the file name",
            ));
        }
        let (mut seq, mut chain) = match expected {
            // The oldest segment kept is the anchor (older ones may have been retired).
            None => (header.first_seq, header.prev_chain),
            Some((seq, chain)) => {
                if header.first_seq != seq {
                    return Err(corrupt(
                        path,
                        8,
                        format!(
                            "segment starts at sequence {}, the previous one ends before {seq}: records missing",
                            header.first_seq
                        ),
                    ));
                }
                if header.prev_chain != chain {
                    return Err(corrupt(
                        path,
                        16,
                        "chain does not continue from the previous segment",
                    ));
                }
                (seq, chain)
            }
        };
        let mut offset = HEADER_LEN;
        loop {
            match read_slot(&bytes, offset, MAX_PAYLOAD) {
                Slot::Record(r) => {
                    if r.seq != seq {
                        return Err(corrupt(
                            path,
                            offset,
                            format!("sequence {} where {seq} was expected: records missing or reordered", r.seq),
                        ));
                    }
                    if format::chain_of(
                        key.hmac(),
                        &chain,
                        r.seq,
                        r.kind,
                        &format::digest(r.payload),
                    ) != r.chain
                    {
                        return Err(corrupt(
                            path,
                            offset,
                            format!("record {seq}: chain value does not verify: altered, inserted or removed records"),
                        ));
                    }
                    report.first_seq.get_or_insert(seq);
                    report.last_seq = Some(seq);
                    report.records += 1;
                    chain = r.chain;
                    seq += 1;
                    offset += r.len();
                }
                Slot::End => {
                    let end = end_of_data(&bytes, offset);
                    if end != offset {
                        return Err(corrupt(
                            path,
                            offset,
                            format!("{} bytes after the end of the records", end - offset),
                        ));
                    }
                    break;
                }
                Slot::Invalid(reason) => return Err(corrupt(path, offset, reason)),
            }
        }
        expected = Some((seq, chain));
    }
    report.head = expected.map(|(_, c)| hex(&c)).unwrap_or_default();
    Ok(report)
}
