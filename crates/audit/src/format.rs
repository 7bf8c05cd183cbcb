//! The on-disk format.
//!
//! A log is a directory of segment files `audit-<first seq, 20 digits>.seg`, each created at
//! its full size (zero-filled) so that appends never grow a file and `fdatasync` has no
//! metadata to write. A segment starts with a 64-byte header:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `SWYAUDT1` |
//! | 8..16 | first sequence number (u64 LE) |
//! | 16..48 | chain value before the first record (the previous segment's last) |
//! | 48..56 | the segment's size in bytes (u64 LE): a shorter file was truncated |
//! | 56..60 | CRC32C of bytes 0..56 |
//! | 60..64 | zero |
//!
//! then records, back to back, then zeros:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | payload length n (u32 LE, at least 1; 0 marks the end of the records) |
//! | 4..8 | CRC32C of bytes 8..49+n |
//! | 8..16 | sequence number (u64 LE), one more than the previous record's |
//! | 16 | record kind |
//! | 17..17+n | payload ([`crate::payload`]: MessagePack; JSON in logs written before) |
//! | 17+n..49+n | chain value: HMAC-SHA256(chain key, previous chain value ‖ seq ‖ kind ‖ SHA-256(payload)) |
//!
//! The CRC finds torn writes and bit rot; the keyed chain finds any edit, deletion,
//! insertion or reordering by someone without the chain key.

use std::path::{Path, PathBuf};

use ring::hmac;

/// Segment magic.
pub const MAGIC: &[u8; 8] = b"SWYAUDT1";
/// Bytes of the segment header.
pub const HEADER_LEN: usize = 64;
/// Bytes a record takes besides its payload.
pub const RECORD_OVERHEAD: usize = 49;
/// A chain value.
pub type Chain = [u8; 32];

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    /// A request/response pair (or the switch's own answer).
    Pair,
    /// A request about to be forwarded (crash recovery finds those without a pair).
    InFlight,
    /// An operator's action (store-and-forward retry or drop, ...).
    Operator,
    /// A log event (opened, torn tail repaired, ...).
    Event,
    /// A store-and-forward journal event (its own log directory).
    Saf,
}

impl RecordKind {
    /// The byte on disk.
    pub fn code(self) -> u8 {
        match self {
            RecordKind::Pair => 1,
            RecordKind::InFlight => 2,
            RecordKind::Operator => 3,
            RecordKind::Event => 4,
            RecordKind::Saf => 5,
        }
    }

    /// The kind for a byte on disk.
    pub fn from_code(code: u8) -> Option<RecordKind> {
        match code {
            1 => Some(RecordKind::Pair),
            2 => Some(RecordKind::InFlight),
            3 => Some(RecordKind::Operator),
            4 => Some(RecordKind::Event),
            5 => Some(RecordKind::Saf),
            _ => None,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Pair => "pair",
            RecordKind::InFlight => "in-flight",
            RecordKind::Operator => "operator",
            RecordKind::Event => "event",
            RecordKind::Saf => "saf",
        }
    }
}

/// A segment's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Sequence number of the first record.
    pub first_seq: u64,
    /// Chain value the first record continues.
    pub prev_chain: Chain,
    /// The file's size.
    pub segment_len: u64,
}

impl SegmentHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(MAGIC);
        h[8..16].copy_from_slice(&self.first_seq.to_le_bytes());
        h[16..48].copy_from_slice(&self.prev_chain);
        h[48..56].copy_from_slice(&self.segment_len.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..56]);
        h[56..60].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Read a header; the reason when it is not one.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, String> {
        let h = bytes
            .get(..HEADER_LEN)
            .ok_or_else(|| format!("{} bytes, shorter than a segment header", bytes.len()))?;
        if &h[0..8] != MAGIC {
            return Err("not an audit segment (bad magic)".into());
        }
        if crc32c::crc32c(&h[0..56]).to_le_bytes() != h[56..60] {
            return Err("segment header CRC mismatch".into());
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let mut prev_chain = [0u8; 32];
        prev_chain.copy_from_slice(&h[16..48]);
        Ok(SegmentHeader {
            first_seq: u64_at(8),
            prev_chain,
            segment_len: u64_at(48),
        })
    }
}

/// The file name of the segment starting at `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("audit-{first_seq:020}.seg")
}

/// The segments in `dir`, oldest first, with their first sequence numbers (from the name).
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let seq = name
            .strip_prefix("audit-")
            .and_then(|s| s.strip_suffix(".seg"))
            .filter(|s| s.len() == 20)
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(seq) = seq {
            segments.push((seq, entry.path()));
        }
    }
    segments.sort();
    Ok(segments)
}

/// SHA-256 of a payload. Appenders compute it on their own threads, so the writer's
/// sequential part of the chain is one short HMAC per record whatever the record's size.
pub type Digest = [u8; 32];

/// The digest of `payload`.
pub fn digest(payload: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, payload).as_ref());
    out
}

/// The chain value of a record: HMAC(key, previous ‖ seq ‖ kind ‖ SHA-256(payload)).
pub fn chain_of(
    key: &hmac::Key,
    prev: &Chain,
    seq: u64,
    kind: u8,
    payload_digest: &Digest,
) -> Chain {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(prev);
    ctx.update(&seq.to_le_bytes());
    ctx.update(&[kind]);
    ctx.update(payload_digest);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Append one record to `out`; returns its chain value.
pub fn encode_record(
    out: &mut Vec<u8>,
    key: &hmac::Key,
    prev: &Chain,
    seq: u64,
    kind: RecordKind,
    payload: &[u8],
    payload_digest: &Digest,
) -> Chain {
    let chain = chain_of(key, prev, seq, kind.code(), payload_digest);
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(kind.code());
    out.extend_from_slice(payload);
    out.extend_from_slice(&chain);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    chain
}

/// One record as read from a segment.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    /// Byte offset in the segment.
    pub offset: usize,
    /// Sequence number.
    pub seq: u64,
    /// Kind byte.
    pub kind: u8,
    /// The payload.
    pub payload: &'a [u8],
    /// The stored chain value.
    pub chain: Chain,
}

impl RawRecord<'_> {
    /// Bytes the record takes.
    pub fn len(&self) -> usize {
        RECORD_OVERHEAD + self.payload.len()
    }

    /// Never empty: a record has at least a one-byte payload.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What is at an offset of a segment.
#[derive(Debug)]
pub enum Slot<'a> {
    /// A record whose length and CRC check out.
    Record(RawRecord<'a>),
    /// The end marker (or the exact end of the segment).
    End,
    /// Not a valid record: why.
    Invalid(String),
}

/// Read what is at `offset` of `segment` (the whole file's bytes).
pub fn read_slot(segment: &[u8], offset: usize, max_payload: usize) -> Slot<'_> {
    let rest = segment.get(offset..).unwrap_or_default();
    // Zeros to the end (or fewer zero bytes than a length field) end the records: the last
    // record that did not fit went to the next segment.
    if rest.len() < 4 && rest.iter().all(|&b| b == 0) {
        return Slot::End;
    }
    let Some(len) = rest.get(..4) else {
        return Slot::Invalid("segment ends inside a record header".into());
    };
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len == 0 {
        return Slot::End;
    }
    let Some(head) = rest.get(..17) else {
        return Slot::Invalid("segment ends inside a record header".into());
    };
    if len > max_payload {
        return Slot::Invalid(format!(
            "record length {len} exceeds the maximum {max_payload}"
        ));
    }
    let end = offset + RECORD_OVERHEAD + len;
    let Some(body) = segment.get(offset + 8..end) else {
        return Slot::Invalid("record runs past the end of the segment".into());
    };
    if crc32c::crc32c(body).to_le_bytes() != head[4..8] {
        return Slot::Invalid("record CRC mismatch".into());
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&head[8..16]);
    let mut chain = [0u8; 32];
    chain.copy_from_slice(&segment[end - 32..end]);
    Slot::Record(RawRecord {
        offset,
        seq: u64::from_le_bytes(seq),
        kind: head[16],
        payload: &segment[offset + 17..end - 32],
        chain,
    })
}

/// Offset just past the last non-zero byte at or after `from` (`from` if there is none).
pub fn end_of_data(segment: &[u8], from: usize) -> usize {
    segment
        .get(from..)
        .and_then(|rest| rest.iter().rposition(|&b| b != 0))
        .map_or(from, |p| from + p + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_seen() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[9u8; 32]);
        let mut seg = vec![0u8; HEADER_LEN];
        let (p1, p2) = (&b"{\"a\":1}"[..], &b"{}"[..]);
        let c1 = encode_record(
            &mut seg,
            &key,
            &[0; 32],
            1,
            RecordKind::Pair,
            p1,
            &digest(p1),
        );
        let c2 = encode_record(&mut seg, &key, &c1, 2, RecordKind::Event, p2, &digest(p2));
        seg.resize(seg.len() + 100, 0);
        let Slot::Record(r1) = read_slot(&seg, HEADER_LEN, 1 << 20) else {
            panic!()
        };
        assert_eq!(
            (r1.seq, r1.kind, r1.payload, r1.chain),
            (1, 1, &b"{\"a\":1}"[..], c1)
        );
        let Slot::Record(r2) = read_slot(&seg, HEADER_LEN + r1.len(), 1 << 20) else {
            panic!()
        };
        assert_eq!((r2.seq, r2.chain), (2, c2));
        assert_eq!(chain_of(&key, &c1, 2, r2.kind, &digest(r2.payload)), c2);
        assert!(matches!(
            read_slot(&seg, HEADER_LEN + r1.len() + r2.len(), 1 << 20),
            Slot::End
        ));
        assert_eq!(
            end_of_data(&seg, HEADER_LEN),
            HEADER_LEN + r1.len() + r2.len()
        );

        let mut flipped = seg.clone();
        flipped[HEADER_LEN + 20] ^= 1;
        assert!(
            matches!(read_slot(&flipped, HEADER_LEN, 1 << 20), Slot::Invalid(r) if r.contains("CRC"))
        );
        assert!(matches!(
            read_slot(&seg[..HEADER_LEN + 30], HEADER_LEN, 1 << 20),
            Slot::Invalid(_)
        ));
        assert!(
            matches!(read_slot(&seg, HEADER_LEN, 3), Slot::Invalid(r) if r.contains("maximum"))
        );
    }

    #[test]
    fn headers_round_trip_and_reject_damage() {
        let h = SegmentHeader {
            first_seq: 77,
            prev_chain: [3; 32],
            segment_len: 1 << 20,
        };
        let bytes = h.encode();
        assert_eq!(SegmentHeader::decode(&bytes).unwrap(), h);
        let mut bad = bytes;
        bad[9] ^= 0x10;
        assert!(SegmentHeader::decode(&bad).is_err());
        assert!(SegmentHeader::decode(&bytes[..10]).is_err());
        assert_eq!(segment_name(77), "audit-00000000000000000077.seg");
    }
}
