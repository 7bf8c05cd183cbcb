//! Following a log as it grows (the audit stream's shipper), and checking records that
//! arrive one by one from elsewhere (the audit stream's verifier).
//!
//! A [`Tail`] keeps one segment open and the byte offset after the last record it handed
//! on, and reads on from there in bounded chunks: a poll costs what is new, not a segment.
//! It hands on each record as its stored bytes (length, CRC, sequence, kind, payload,
//! chain value), so a copy elsewhere can be checked exactly as the log is.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{AuditError, Result};
use crate::format::{self, read_slot, Chain, RawRecord, Slot, HEADER_LEN, RECORD_OVERHEAD};
use crate::keys::ChainKey;
use crate::reader::MAX_PAYLOAD;

/// The first read of a chunk; it grows for a record larger than it.
const CHUNK: usize = 256 << 10;

/// Where a tail is in the log.
#[derive(Debug)]
struct At {
    path: PathBuf,
    file: File,
    /// The byte after the last record handed on (or the first record's place).
    offset: u64,
    /// The sequence number of the record at `offset`, when known.
    next_seq: Option<u64>,
}

/// A reader that follows a log from a sequence number on.
#[derive(Debug)]
pub struct Tail {
    dir: PathBuf,
    at: Option<At>,
    buf: Vec<u8>,
}

impl Tail {
    /// A tail of the log in `dir`.
    pub fn new(dir: &Path) -> Tail {
        Tail {
            dir: dir.to_path_buf(),
            at: None,
            buf: Vec::new(),
        }
    }

    /// Hand `each` the records numbered `from` to `until` (inclusive), at most `max`, each
    /// as its stored bytes; how many. Fewer than asked: the log holds no more yet (a record
    /// being written, or not written yet, is not handed on). A damaged record before the
    /// newest segment's end is an error naming its place.
    pub fn read(
        &mut self,
        from: u64,
        until: u64,
        max: usize,
        mut each: impl FnMut(u64, &[u8]),
    ) -> Result<usize> {
        let mut handed = 0;
        if from > until {
            return Ok(0);
        }
        if self.at.as_ref().and_then(|a| a.next_seq) != Some(from) {
            self.at = Some(self.open_at(from)?);
        }
        let mut cap = CHUNK;
        while handed < max {
            let Some(at) = self.at.as_mut() else {
                return Ok(handed);
            };
            self.buf.resize(cap, 0);
            let n = at
                .file
                .read_at(&mut self.buf, at.offset)
                .map_err(|e| AuditError::io(&at.path, e))?;
            let data = &self.buf[..n];
            let file_len = at
                .file
                .metadata()
                .map_err(|e| AuditError::io(&at.path, e))?
                .len();
            let truncated = at.offset + (n as u64) < file_len;
            let mut pos = 0;
            let mut stop = false;
            while handed < max {
                match read_slot(data, pos, MAX_PAYLOAD) {
                    Slot::Record(r) => {
                        if r.seq > until {
                            stop = true;
                            break;
                        }
                        if r.seq >= from {
                            each(r.seq, &data[pos..pos + r.len()]);
                            handed += 1;
                        }
                        pos += r.len();
                        at.next_seq = Some(r.seq + 1);
                    }
                    // A zero length: no record here yet, or the segment's records ended.
                    Slot::End if !truncated || data.len() - pos >= 4 => {
                        match self::newer_segment(&self.dir, &at.path)? {
                            Some(next) if at.next_seq.is_some_and(|s| s <= until) => {
                                at.offset += pos as u64;
                                let file = open(&next)?;
                                *at = At {
                                    path: next,
                                    file,
                                    offset: HEADER_LEN as u64,
                                    next_seq: at.next_seq,
                                };
                                pos = 0;
                            }
                            _ => stop = true,
                        }
                        break;
                    }
                    // The chunk ends inside a record: read on from it.
                    Slot::End | Slot::Invalid(_) if truncated => break,
                    Slot::End => {
                        stop = true;
                        break;
                    }
                    // The newest segment's last record being written: not yet.
                    Slot::Invalid(_) if self::newer_segment(&self.dir, &at.path)?.is_none() => {
                        stop = true;
                        break;
                    }
                    Slot::Invalid(reason) => {
                        return Err(AuditError::Corrupt {
                            segment: at.path.clone(),
                            offset: at.offset + pos as u64,
                            reason,
                        })
                    }
                }
            }
            if let Some(at) = self.at.as_mut() {
                if pos > 0 || !stop {
                    at.offset += pos as u64;
                }
            }
            if stop || handed >= max {
                return Ok(handed);
            }
            // Nothing read from a full chunk: a record larger than it.
            cap = if pos == 0 && truncated {
                (cap * 2).min(MAX_PAYLOAD + RECORD_OVERHEAD)
            } else {
                CHUNK
            };
        }
        Ok(handed)
    }

    /// The segment holding `seq`, positioned at its first record (the records before `seq`
    /// are skipped as they are read).
    fn open_at(&self, seq: u64) -> Result<At> {
        let segments =
            format::list_segments(&self.dir).map_err(|e| AuditError::io(&self.dir, e))?;
        let (_, path) = segments
            .iter()
            .rev()
            .find(|(first, _)| *first <= seq)
            .or(segments.first())
            .cloned()
            .ok_or_else(|| {
                AuditError::io(
                    &self.dir,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no audit segments"),
                )
            })?;
        Ok(At {
            file: open(&path)?,
            path,
            offset: HEADER_LEN as u64,
            next_seq: None,
        })
    }
}

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| AuditError::io(path, e))
}

/// The segment after `path`, if one exists.
fn newer_segment(dir: &Path, path: &Path) -> Result<Option<PathBuf>> {
    let segments = format::list_segments(dir).map_err(|e| AuditError::io(dir, e))?;
    let at = segments.iter().position(|(_, p)| p == path);
    Ok(at.and_then(|i| segments.get(i + 1)).map(|(_, p)| p.clone()))
}

/// One record from its stored bytes (as [`Tail`] hands them on), its CRC checked.
pub fn read_frame(frame: &[u8]) -> std::result::Result<RawRecord<'_>, String> {
    match read_slot(frame, 0, MAX_PAYLOAD) {
        Slot::Record(r) if r.len() == frame.len() => Ok(r),
        Slot::Record(_) => Err("bytes after the record".into()),
        Slot::End => Err("an empty record".into()),
        Slot::Invalid(reason) => Err(reason),
    }
}

/// The records of a message that holds several frames one after another (the audit
/// stream ships a batch of records as one message): each frame's bytes in order, each
/// checked as [`read_frame`] checks one. The first that does not read ends the list with
/// its reason and its offset in `frames`.
pub fn split_frames(frames: &[u8]) -> Vec<std::result::Result<&[u8], (usize, String)>> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < frames.len() {
        match read_slot(frames, offset, MAX_PAYLOAD) {
            Slot::Record(r) => {
                let end = offset + r.len();
                let Some(frame) = frames.get(offset..end) else {
                    out.push(Err((offset, "record runs past the end".into())));
                    break;
                };
                out.push(Ok(frame));
                offset = end;
            }
            Slot::End => {
                out.push(Err((offset, "an empty record".into())));
                break;
            }
            Slot::Invalid(reason) => {
                out.push(Err((offset, reason)));
                break;
            }
        }
    }
    if frames.is_empty() {
        out.push(Err((0, "an empty record".into())));
    }
    out
}

/// A chain checked record by record, as the records of one log arrive from elsewhere: each
/// must follow the one before it (sequence number and keyed chain value). The first one
/// anchors the chain when it is not record 1 (a stream that no longer holds the start).
#[derive(Debug)]
pub struct ChainCheck<'k> {
    key: &'k ChainKey,
    expected: Option<(u64, Chain)>,
    /// Records checked.
    pub records: u64,
    /// The first record checked, when it was not record 1 (the chain taken on trust up to
    /// it).
    pub anchored_at: Option<u64>,
}

impl<'k> ChainCheck<'k> {
    /// A check under `key`, from record 1 (whose chain starts from zeros).
    pub fn new(key: &'k ChainKey) -> ChainCheck<'k> {
        ChainCheck {
            key,
            expected: None,
            records: 0,
            anchored_at: None,
        }
    }

    /// Check the next record's stored bytes: its sequence number and chain value.
    pub fn check(&mut self, frame: &[u8]) -> std::result::Result<u64, String> {
        let r = read_frame(frame)?;
        let (seq, prev) = match self.expected {
            Some(e) => e,
            None if r.seq == 1 => (1, [0u8; 32]),
            None => {
                self.anchored_at = Some(r.seq);
                self.expected = Some((r.seq + 1, r.chain));
                self.records += 1;
                return Ok(r.seq);
            }
        };
        if r.seq != seq {
            return Err(format!(
                "record {} where {seq} was expected: records missing, repeated or reordered",
                r.seq
            ));
        }
        let computed = format::chain_of(
            self.key.hmac(),
            &prev,
            r.seq,
            r.kind,
            &format::digest(r.payload),
        );
        if computed != r.chain {
            return Err(format!(
                "record {}: chain value does not verify: altered, inserted or removed records",
                r.seq
            ));
        }
        self.expected = Some((r.seq + 1, r.chain));
        self.records += 1;
        Ok(r.seq)
    }
}
