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

/// Call `each` for every record in order, CRC-checked but not chain-checked: the switch's
/// own reads (store-and-forward journal, recovery). A damaged record stops the read with
/// its place, except at the very end of the newest segment, which a running writer may be
/// filling. Tools that report from a log use [`read_checked`].
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

/// What a checked read does at a damaged record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDamage {
    /// Stop with an [`AuditError::Corrupt`] naming the segment and byte offset (the
    /// default of every tool: a report over a damaged log must not look complete).
    Stop,
    /// Note what was skipped and go on from the next record that reads, the chain taken up
    /// again from it (`--allow-damaged`).
    Skip,
}

/// A stretch of a log that a [`OnDamage::Skip`] read could not vouch for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The segment file.
    pub segment: PathBuf,
    /// Byte offset of the damage.
    pub offset: u64,
    /// What is wrong there.
    pub reason: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at byte offset {}: {}",
            self.segment.display(),
            self.offset,
            self.reason
        )
    }
}

/// What a checked read covered.
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
    /// What was skipped (only with [`OnDamage::Skip`]; empty means everything verified).
    pub skipped: Vec<Skipped>,
}

/// The segments of the log in `dir`, failing closed: a missing directory, a plain file, a
/// directory without segments and files that are not segments are each an error of their
/// own (only the writer's `LOCK`, its spare segment and its `torn/` copies may sit beside
/// the segments).
fn log_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let not_a_log = |reason: String| AuditError::NotALog {
        dir: dir.to_path_buf(),
        reason,
    };
    if dir.is_file() {
        return Err(not_a_log("is a file, not an audit log directory".into()));
    }
    let all = segments(dir)?;
    let entries = std::fs::read_dir(dir).map_err(|e| AuditError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| AuditError::io(dir, e))?;
        let name = entry.file_name();
        let known = matches!(
            name.to_str(),
            Some("LOCK" | "torn" | crate::log::SPARE_NAME)
        ) || all.iter().any(|(_, p)| p.file_name() == Some(&name));
        if !known {
            return Err(not_a_log(format!(
                "{:?} is not an audit segment: is this the audit log directory?",
                name
            )));
        }
    }
    if all.is_empty() {
        return Err(not_a_log("no audit segments".into()));
    }
    Ok(all)
}

/// Check every segment and record: headers, sizes, CRCs, sequence numbers without gaps or
/// reordering, and the keyed chain across records and segments. The first problem is an
/// [`AuditError::Corrupt`] naming the segment and byte offset.
pub fn verify(dir: &Path, key: &ChainKey) -> Result<VerifyReport> {
    read_checked(dir, key, OnDamage::Stop, |_| Ok(()))
}

/// Call `each` for every record in order, each checked as [`verify`] checks it before it
/// is handed on; at damage, stop or skip as `on_damage` says. What tools that report from a
/// log read with, so that a damaged log never yields a complete-looking answer.
pub fn read_checked(
    dir: &Path,
    key: &ChainKey,
    on_damage: OnDamage,
    mut each: impl FnMut(RecordRef<'_>) -> Result<()>,
) -> Result<VerifyReport> {
    let all = log_segments(dir)?;
    let mut read = CheckedRead {
        key,
        on_damage,
        report: VerifyReport {
            segments: all.len(),
            records: 0,
            first_seq: None,
            last_seq: None,
            head: String::new(),
            skipped: Vec::new(),
        },
        expected: None,
    };
    for (i, (named_seq, path)) in all.iter().enumerate() {
        read.segment(*named_seq, path, i + 1 == all.len(), &mut each)?;
    }
    read.report.head = read.expected.map(|(_, c)| hex(&c)).unwrap_or_default();
    Ok(read.report)
}

/// One checked read's state across segments.
struct CheckedRead<'k> {
    key: &'k ChainKey,
    on_damage: OnDamage,
    report: VerifyReport,
    /// The next sequence number and the chain value before it, when known (unknown before
    /// the first record and after skipped damage: the next record that reads anchors it).
    expected: Option<(u64, Chain)>,
}

impl CheckedRead<'_> {
    /// Stop at `reason`, or note it and go on.
    fn damage(&mut self, path: &Path, offset: usize, reason: String) -> Result<()> {
        // The very first record failing its chain is what a wrong chain key looks like.
        let reason = if self.report.records == 0 && reason.contains("chain value") {
            format!("{reason} (the first record failing: is the chain key the right one?)")
        } else {
            reason
        };
        match self.on_damage {
            OnDamage::Stop => Err(corrupt(path, offset, reason)),
            OnDamage::Skip => {
                self.report.skipped.push(Skipped {
                    segment: path.to_path_buf(),
                    offset: offset as u64,
                    reason,
                });
                Ok(())
            }
        }
    }

    fn segment(
        &mut self,
        named_seq: u64,
        path: &Path,
        newest: bool,
        each: &mut impl FnMut(RecordRef<'_>) -> Result<()>,
    ) -> Result<()> {
        let mut bytes = std::fs::read(path).map_err(|e| AuditError::io(path, e))?;
        let header = match SegmentHeader::decode(&bytes) {
            Ok(h) => h,
            Err(reason) => {
                self.damage(path, 0, format!("{reason}: the whole segment skipped"))?;
                self.expected = None;
                return Ok(());
            }
        };
        if bytes.len() as u64 != header.segment_len {
            let reason = format!(
                "segment is {} bytes, its header says {}: truncated or extended",
                bytes.len(),
                header.segment_len
            );
            self.damage(path, bytes.len(), reason)?;
        }
        if header.first_seq != named_seq {
            let reason = "first sequence number does not match the file name".to_string();
            self.damage(path, 8, reason)?;
        }
        match self.expected {
            // The oldest segment kept is the anchor (older ones may have been retired).
            None => self.expected = Some((header.first_seq, header.prev_chain)),
            Some((seq, chain)) => {
                if header.first_seq != seq {
                    let reason = format!(
                        "segment starts at sequence {}, the previous one ends before {seq}: records missing",
                        header.first_seq
                    );
                    self.damage(path, 8, reason)?;
                }
                if header.prev_chain != chain {
                    let reason = "chain does not continue from the previous segment".to_string();
                    self.damage(path, 16, reason)?;
                }
                self.expected = Some((header.first_seq, header.prev_chain));
            }
        }
        let mut offset = HEADER_LEN;
        let mut rereads = 0;
        loop {
            match read_slot(&bytes, offset, MAX_PAYLOAD) {
                Slot::Record(r) => {
                    self.record(path, offset, &r)?;
                    each(RecordRef {
                        seq: r.seq,
                        kind: RecordKind::from_code(r.kind),
                        payload: r.payload,
                    })?;
                    offset += r.len();
                }
                Slot::End => {
                    let end = end_of_data(&bytes, offset);
                    if end != offset {
                        let reason = format!("{} bytes after the end of the records", end - offset);
                        self.damage(path, offset, reason)?;
                    }
                    return Ok(());
                }
                // A running writer may be filling the newest segment's last record: read
                // it again before calling it damage.
                Slot::Invalid(_) if newest && rereads < REREADS => {
                    rereads += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    bytes = std::fs::read(path).map_err(|e| AuditError::io(path, e))?;
                }
                Slot::Invalid(reason) => {
                    let next = next_slot(&bytes, offset);
                    let reason = match next {
                        Some(next) => format!("{reason}: {} bytes skipped", next - offset),
                        None => format!("{reason}: the rest of the segment skipped"),
                    };
                    self.damage(path, offset, reason)?;
                    self.expected = None;
                    match next {
                        Some(next) => offset = next,
                        None => return Ok(()),
                    }
                }
            }
        }
    }

    /// Check one record's sequence number and chain value.
    fn record(&mut self, path: &Path, offset: usize, r: &format::RawRecord<'_>) -> Result<()> {
        let (seq, chain) = self.expected.unwrap_or((r.seq, r.chain));
        let resync = self.expected.is_none();
        if !resync && r.seq != seq {
            let reason = format!(
                "sequence {} where {seq} was expected: records missing or reordered",
                r.seq
            );
            self.damage(path, offset, reason)?;
        }
        let computed = format::chain_of(
            self.key.hmac(),
            &chain,
            r.seq,
            r.kind,
            &format::digest(r.payload),
        );
        if !resync && computed != r.chain {
            let reason = format!(
                "record {}: chain value does not verify: altered, inserted or removed records",
                r.seq
            );
            self.damage(path, offset, reason)?;
        }
        self.report.first_seq.get_or_insert(r.seq);
        self.report.last_seq = Some(r.seq);
        self.report.records += 1;
        self.expected = Some((r.seq + 1, r.chain));
        Ok(())
    }
}

/// Times the newest segment is read again at an invalid record before it counts as damage.
const REREADS: u32 = 3;

/// Where the record after a damaged one at `offset` starts, when its length field is still
/// believable (the next slot reads or ends the records).
fn next_slot(bytes: &[u8], offset: usize) -> Option<usize> {
    let len = bytes.get(offset..offset + 4)?;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let next = offset.checked_add(format::RECORD_OVERHEAD + len)?;
    if len == 0 || len > MAX_PAYLOAD || next > bytes.len() {
        return None;
    }
    match read_slot(bytes, next, MAX_PAYLOAD) {
        Slot::Invalid(_) => None,
        _ => Some(next),
    }
}
