//! The acquirer's guarantees around the flow: requests sent at most once, reversals for
//! every unknown outcome, crash recovery from in-flight records, duplicate detection.
//!
//! - Before a request is written to an issuer, an in-flight record (the request in protected
//!   form and what its reversal needs) is made durable; the pair record written afterwards
//!   names it. On start, [`recover`] finds in-flight records without a pair (the switch died
//!   in between) and queues their reversals.
//! - Duplicates: a request whose terminal id, STAN and transmission date and time match one
//!   in flight is answered 94; one matching a completed request within the window gets the
//!   same answer again and is not forwarded. The window is rebuilt from the audit log on
//!   start ([`Integrity::rebuild_duplicates`]), so it survives a restart.
//! - Approvals the terminal never received (its connection was gone) are reversed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchyard_audit::{
    payload, AuditLog, Outcome, PairRecord, ProtectedMessage, RecordKind, ShortText,
};
use switchyard_iso8583::{wire, MessageBuilder, MessageView, Mti, Spec};

use crate::flow::now_us;
use crate::saf::{ReversalBasis, SafQueue};

/// Each listener's dialect, by listener name (a pair record names its listener).
pub type ListenerSpecs = HashMap<String, &'static Spec>;

/// The durable note written before a request goes to an issuer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InFlightRecord {
    /// The issuer link.
    pub link: String,
    /// What the reversal needs.
    pub basis: ReversalBasis,
    /// The request part of the pair record.
    pub pair: PairRecord,
}

/// An [`InFlightRecord`] as it is written: borrowed, so that writing one copies nothing
/// (cloning the pair record so far was a tenth of a request's allocations).
#[derive(Serialize)]
pub(crate) struct InFlightRecordRef<'a> {
    pub(crate) link: &'a str,
    pub(crate) basis: &'a ReversalBasis,
    pub(crate) pair: &'a PairRecord,
}

/// Field texts joined into one inline key, a unit separator (0x1F) between them: the
/// integrity indexes take several keys per request, and keys of owned strings were a
/// dozen allocations per request. Hashing reads only the bytes in use.
#[derive(Clone, Copy)]
pub struct TextKey {
    len: u8,
    bytes: [u8; TextKey::CAPACITY],
}

impl TextKey {
    /// Enough for the standard fields (terminal id 8, STAN 6, field 7 10, a class name)
    /// with room to spare.
    const CAPACITY: usize = 63;

    /// The key of `parts`; `None` when they do not fit or hold the separator (a request
    /// with such fields is not tracked).
    pub fn of(parts: &[&[u8]]) -> Option<TextKey> {
        let mut key = TextKey {
            len: 0,
            bytes: [0; Self::CAPACITY],
        };
        let mut at = 0usize;
        for (i, part) in parts.iter().enumerate() {
            let sep = usize::from(i > 0);
            let end = at + sep + part.len();
            if end > Self::CAPACITY || part.contains(&0x1F) {
                return None;
            }
            if sep == 1 {
                key.bytes[at] = 0x1F;
            }
            key.bytes[at + sep..end].copy_from_slice(part);
            at = end;
        }
        key.len = at as u8;
        Some(key)
    }

    /// The key's bytes (the parts joined by 0x1F).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl PartialEq for TextKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for TextKey {}

impl std::hash::Hash for TextKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl std::fmt::Debug for TextKey {
    /// Terminal ids and STANs only: never card data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TextKey({:?})", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// A forwarded request: terminal id, its STAN, field 7.
pub type OriginalKey = TextKey;
/// Where it went: the link and the STAN the issuer saw.
pub type Original = (ShortText, ShortText);

/// Identifies a terminal's request for duplicate detection: terminal id, STAN,
/// transmission date and time, MTI class.
pub type DuplicateKey = TextKey;

enum Seen {
    InFlight,
    Answered(Bytes),
}

struct Approval {
    link: ShortText,
    basis: ReversalBasis,
    inflight_seq: Option<u64>,
}

/// A map that forgets its oldest entries: past `cap` entries, or older than `ttl`. Eviction
/// walks an insertion-order queue, so each insert costs O(1) amortised (a full scan on every
/// insert once the map is full would cost the whole map per request).
struct BoundedMap<K, V> {
    map: HashMap<K, (V, Instant), foldhash::fast::RandomState>,
    order: VecDeque<(K, Instant)>,
    cap: usize,
    ttl: Duration,
}

impl<K: std::hash::Hash + Eq + Clone, V> BoundedMap<K, V> {
    fn new(cap: usize, ttl: Duration) -> Self {
        BoundedMap {
            map: HashMap::default(),
            order: VecDeque::new(),
            cap,
            ttl,
        }
    }

    fn get(&self, key: &K) -> Option<&V> {
        self.map
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(v, _)| v)
    }

    fn insert(&mut self, key: K, value: V) {
        let now = Instant::now();
        while let Some((oldest, at)) = self.order.front() {
            if self.order.len() < self.cap && now.duration_since(*at) < self.ttl {
                break;
            }
            // Only the entry still stamped with this time goes (it may have been renewed).
            if self
                .map
                .get(oldest)
                .is_some_and(|(_, stamped)| stamped == at)
            {
                self.map.remove(oldest);
            }
            self.order.pop_front();
        }
        self.order.push_back((key.clone(), now));
        self.map.insert(key, (value, now));
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key).map(|(v, _)| v)
    }
}

/// A [`BoundedMap`] split by key hash into shards, each behind its own lock. Growing a map
/// rehashes all of it with its lock held: as one map of up to a million entries that
/// stalled every request for tens of milliseconds at each doubling (at 100 connections the
/// switch's p99.9 was 36 ms with a 97 ms max; with the maps allocated at full size up front,
/// 17 and 56 ms). A shard grows a sixteenth as much at a time, and only requests whose keys
/// fall in it wait.
struct Sharded<K, V> {
    shards: Box<[Mutex<BoundedMap<K, V>>]>,
    hasher: foldhash::fast::RandomState,
}

const SHARDS: usize = 16;

impl<K: std::hash::Hash + Eq + Clone, V> Sharded<K, V> {
    /// At most `cap` entries in all (oldest first out, per shard), each for `ttl`.
    fn new(cap: usize, ttl: Duration) -> Self {
        let per_shard = cap.div_ceil(SHARDS);
        Sharded {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(BoundedMap::new(per_shard, ttl)))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The shard `key` lives in, locked.
    fn lock(&self, key: &K) -> std::sync::MutexGuard<'_, BoundedMap<K, V>> {
        use std::hash::BuildHasher;
        let i = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Bounds on the in-memory state (oldest entries go first past them).
const MAX_DUPLICATE_ENTRIES: usize = 200_000;
const MAX_RECENT_APPROVALS: usize = 200_000;
const RECENT_APPROVAL_TTL: Duration = Duration::from_secs(300);
const MAX_ORIGINALS: usize = 1_000_000;
/// How long a terminal may take to reverse its own request.
const ORIGINAL_TTL: Duration = Duration::from_secs(24 * 3600);

/// The integrity state of one switch.
pub struct Integrity {
    /// The reversal queue.
    pub saf: Arc<SafQueue>,
    /// How long a completed request is remembered for duplicates.
    pub duplicate_window: Duration,
    seen: Sharded<DuplicateKey, Seen>,
    approvals: Sharded<TextKey, Approval>,
    /// Where forwarded requests went, for the terminals' reversals of them (in a group, the
    /// other instances' too, as the audit stream tells: [`Integrity::follow_pair`]).
    originals: Sharded<OriginalKey, Original>,
    /// Whether the other instances' records are followed up to the audit stream's end.
    group_current: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Integrity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Integrity")
            .field("saf", &self.saf)
            .finish_non_exhaustive()
    }
}

/// What duplicate detection says about a new request.
#[derive(Debug)]
pub enum Duplicate {
    /// Not seen: go ahead (and call [`Integrity::finish`] afterwards).
    Fresh(DuplicateKey),
    /// The same request is in flight: answer 94.
    InFlight,
    /// Answered before within the window: send this answer again.
    Answered(Bytes),
    /// Not subject to duplicate detection (network management, reversals, responses).
    NotChecked,
}

impl Integrity {
    /// Integrity over a reversal queue.
    pub fn new(saf: Arc<SafQueue>, duplicate_window: Duration) -> Integrity {
        Integrity {
            saf,
            duplicate_window,
            seen: Sharded::new(MAX_DUPLICATE_ENTRIES, duplicate_window),
            approvals: Sharded::new(MAX_RECENT_APPROVALS, RECENT_APPROVAL_TTL),
            originals: Sharded::new(MAX_ORIGINALS, ORIGINAL_TTL),
            group_current: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn key(request: &MessageView<'_>) -> Option<DuplicateKey> {
        let mti = request.mti();
        if !(matches!(mti.class(), 1 | 2) && mti.function() == 0) {
            return None;
        }
        // Values, not texts: borrowed from the frame for ASCII dialects.
        let value = |n| request.field(n).map(|f| f.value());
        let (terminal, stan) = (value(41)?, value(11)?);
        let field7 = value(7).unwrap_or_default();
        let class = mti.request_class();
        TextKey::of(&[&terminal, &stan, &field7, class.as_str().as_bytes()])
    }

    /// Check a request against the requests in flight and the recent answers.
    pub fn begin(&self, request: &MessageView<'_>) -> Duplicate {
        let Some(key) = Self::key(request) else {
            return Duplicate::NotChecked;
        };
        let mut seen = self.seen.lock(&key);
        match seen.get(&key) {
            Some(Seen::InFlight) => return Duplicate::InFlight,
            Some(Seen::Answered(answer)) => return Duplicate::Answered(answer.clone()),
            None => {}
        }
        seen.insert(key, Seen::InFlight);
        Duplicate::Fresh(key)
    }

    /// A fresh request is finished: remember its answer (or forget it when there is none).
    pub fn finish(&self, key: DuplicateKey, answer: Option<&Bytes>) {
        let mut seen = self.seen.lock(&key);
        match answer {
            Some(a) => {
                seen.insert(key, Seen::Answered(a.clone()));
            }
            None => {
                seen.remove(&key);
            }
        }
    }

    /// Remember where a request went, for the terminal's reversal of it.
    pub fn forwarded(
        &self,
        terminal: &str,
        stan: &str,
        field7: &str,
        link: &str,
        issuer_stan: &str,
    ) {
        let Some(key) = Self::forwarded_key(terminal, stan, field7) else {
            return;
        };
        let mut map = self.originals.lock(&key);
        map.insert(key, (ShortText::from(link), ShortText::from(issuer_stan)));
    }

    /// Another instance's transaction, from the audit stream (a retransmission of it, or
    /// its terminal's reversal, may come here): its answer into the duplicate window, where
    /// it went into the reversal index. The stream carries it as soon as its instance has
    /// logged the answer (or the timeout). Whether this instance took the same request as
    /// fresh too (`true`: the group forwarded it twice); this instance's entry is kept.
    pub fn follow_pair(&self, pair: &PairRecord, specs: &ListenerSpecs) -> bool {
        if pair.outcome == Some(Outcome::Duplicate) {
            return false; // an answer to a repeat: its original's record has it
        }
        self.note_forwarded(pair);
        let Some(key) = self.recent_key(pair) else {
            return false;
        };
        let answer = Self::answer_of(pair, specs);
        let mut seen = self.seen.lock(&key);
        if seen.get(&key).is_some() {
            return pair.forwarded_us.is_some();
        }
        if let Some(answer) = answer {
            seen.insert(key, Seen::Answered(answer));
        }
        false
    }

    /// Where a forwarded request of a pair record went, into the reversal index.
    fn note_forwarded(&self, pair: &PairRecord) {
        if !matches!(pair.request_mti.as_bytes().get(1), Some(b'1' | b'2'))
            || pair.forwarded_us.is_none()
        {
            return;
        }
        let (Some(terminal), Some(stan), Some(link)) = (&pair.terminal, &pair.stan, &pair.issuer)
        else {
            return;
        };
        let field7 = pair.request.fields.get(7).unwrap_or_default();
        let issuer_stan = pair.issuer_stan.as_ref().unwrap_or(stan);
        self.forwarded(terminal, stan, field7, link, issuer_stan);
    }

    /// A pair record's duplicate key, when its request is one the window checks and was
    /// received within the window.
    fn recent_key(&self, pair: &PairRecord) -> Option<DuplicateKey> {
        let window = i64::try_from(self.duplicate_window.as_micros()).unwrap_or(i64::MAX);
        if pair.received_us < now_us().saturating_sub(window) {
            return None;
        }
        let (terminal, stan) = (pair.terminal.as_ref()?, pair.stan.as_ref()?);
        let mti = Mti::parse(&pair.request_mti)
            .filter(|m| matches!(m.class(), 1 | 2) && m.function() == 0)?;
        let field7 = pair.request.fields.get(7).unwrap_or_default();
        TextKey::of(&[
            terminal.as_bytes(),
            stan.as_bytes(),
            field7.as_bytes(),
            mti.request_class().as_str().as_bytes(),
        ])
    }

    /// The answer a pair record holds, re-made in its listener's dialect.
    fn answer_of(pair: &PairRecord, specs: &ListenerSpecs) -> Option<Bytes> {
        rebuild(specs.get(pair.listener.as_str())?, pair.response.as_ref()?)
    }

    /// The other instances' records are followed up to the stream's end (`true`), or the
    /// following stopped (`false`: what they forwarded lately may be missing here).
    pub fn set_group_current(&self, current: bool) {
        self.group_current
            .store(current, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the other instances' records are followed up to the stream's end.
    pub fn group_current(&self) -> bool {
        self.group_current
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// For a terminal's reversal (04xx with field 90): the link its original went to and the
    /// STAN the issuer saw.
    pub fn original_of(&self, request: &MessageView<'_>) -> Option<Original> {
        let key = Self::original_key(request)?;
        self.originals.lock(&key).get(&key).cloned()
    }

    /// The key a terminal's reversal names its original by (terminal id, and field 90's
    /// STAN and transmission time); `None` for anything but a reversal.
    pub fn original_key(request: &MessageView<'_>) -> Option<OriginalKey> {
        if request.mti().class() != 4 {
            return None;
        }
        let f90 = request.field(90)?.text();
        let terminal = request.field(41)?.text();
        let parts = [
            terminal.as_bytes(),
            f90.get(4..10)?.as_bytes(),
            f90.get(10..20)?.as_bytes(),
        ];
        TextKey::of(&parts)
    }

    /// The key a forwarded request is remembered by for its reversal.
    fn forwarded_key(terminal: &str, stan: &str, field7: &str) -> Option<OriginalKey> {
        TextKey::of(&[terminal.as_bytes(), stan.as_bytes(), field7.as_bytes()])
    }

    /// Remember an approval until its answer has surely left (for undelivered answers).
    pub fn approved(
        &self,
        terminal: &str,
        stan: &str,
        link: &str,
        basis: ReversalBasis,
        inflight_seq: Option<u64>,
    ) {
        let Some(key) = TextKey::of(&[terminal.as_bytes(), stan.as_bytes()]) else {
            return;
        };
        let mut map = self.approvals.lock(&key);
        map.insert(
            key,
            Approval {
                link: ShortText::from(link),
                basis,
                inflight_seq,
            },
        );
    }

    /// An answer could not be delivered: if it was an approval, queue its reversal.
    pub async fn undelivered(&self, answer: &MessageView<'_>) {
        let approved = Outcome::approves(answer);
        let (Some(terminal), Some(stan)) = (
            answer.field(41).map(|f| f.text()),
            answer.field(11).map(|f| f.text()),
        ) else {
            return;
        };
        if !approved {
            return;
        }
        let Some(key) = TextKey::of(&[terminal.as_bytes(), stan.as_bytes()]) else {
            return;
        };
        let found = self.approvals.lock(&key).remove(&key);
        if let Some(a) = found {
            if let Err(e) = self
                .saf
                .enqueue(
                    &a.link,
                    "terminal gone before its approval",
                    a.basis,
                    a.inflight_seq,
                )
                .await
            {
                tracing::error!(error = %e, "could not queue the reversal of an undelivered approval");
            }
        }
    }

    /// Load the answers of the duplicate window from the audit log's newest segments.
    /// `specs` maps listener names to their dialects.
    pub fn rebuild_duplicates(
        &self,
        audit_dir: &Path,
        specs: &ListenerSpecs,
    ) -> switchyard_audit::Result<usize> {
        let mut loaded = 0;
        switchyard_audit::for_each_recent(audit_dir, 2, |r| {
            if r.kind != Some(RecordKind::Pair) {
                return Ok(());
            }
            let Ok(pair) = payload::decode::<PairRecord>(r.seq, r.payload) else {
                return Ok(());
            };
            let Some(key) = self.recent_key(&pair) else {
                return Ok(());
            };
            self.note_forwarded(&pair);
            if let Some(answer) = Self::answer_of(&pair, specs) {
                // Remembered from now on: an answer from just inside the window lives up to
                // one window longer after a restart, which only errs towards not forwarding.
                self.seen.lock(&key).insert(key, Seen::Answered(answer));
                loaded += 1;
            }
            Ok(())
        })?;
        Ok(loaded)
    }
}

/// An answer re-made from its protected form: every stored field except the masked PAN.
fn rebuild(spec: &'static Spec, protected: &ProtectedMessage) -> Option<Bytes> {
    let mut b = MessageBuilder::new(spec, Mti::parse(&protected.mti)?);
    for (n, text) in protected.fields.iter() {
        let Some(f) = spec.field(n) else { continue };
        if n == 2 || f.sensitivity != switchyard_iso8583::Sensitivity::None {
            continue;
        }
        let value = if f.class.is_binary() {
            wire::from_hex(text.as_bytes()).ok()?
        } else {
            text.as_bytes().to_vec()
        };
        b.set(n, value).ok()?;
    }
    Some(b.encode())
}

/// Find in-flight records without a pair in the audit log's newest segments (the switch
/// stopped between forwarding and answering), record each as `recovered`, and queue its
/// reversal. Returns how many were found.
pub async fn recover(
    audit_dir: &Path,
    audit: &AuditLog,
    saf: &SafQueue,
) -> switchyard_audit::Result<usize> {
    let mut in_flight: BTreeMap<u64, InFlightRecord> = BTreeMap::new();
    let mut paired = Vec::new();
    switchyard_audit::for_each_recent(audit_dir, 2, |r| {
        match r.kind {
            Some(RecordKind::InFlight) => {
                if let Ok(record) = payload::decode::<InFlightRecord>(r.seq, r.payload) {
                    in_flight.insert(r.seq, record);
                }
            }
            Some(RecordKind::Pair) => {
                if let Ok(pair) = payload::decode::<PairRecord>(r.seq, r.payload) {
                    paired.extend(pair.inflight_seq);
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    for seq in paired {
        in_flight.remove(&seq);
    }
    let mut found = 0;
    for (seq, record) in in_flight {
        if saf.covers_inflight(seq) {
            continue;
        }
        found += 1;
        let id = saf
            .enqueue(
                &record.link,
                "switch restarted with the request in flight",
                record.basis,
                Some(seq),
            )
            .await?;
        let mut pair = record.pair;
        pair.outcome = Some(Outcome::Recovered);
        pair.inflight_seq = Some(seq);
        pair.reversal_id = Some(id);
        pair.answered_us = None;
        audit.append_record(RecordKind::Pair, &pair).await?;
        tracing::warn!(seq, link = %record.link, "request in flight at the last stop: reversal queued");
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_records_are_written_borrowed_and_read_back_owned() {
        let spec = switchyard_iso8583::shipped("iso8583-1987-ascii").unwrap();
        let mut b = MessageBuilder::new(spec, Mti::parse("0200").unwrap());
        b.set(2, "4761730000000119")
            .unwrap()
            .set(3, "000000")
            .unwrap();
        b.set(4, "000000001000")
            .unwrap()
            .set(7, "1124093000")
            .unwrap();
        b.set(11, "000123").unwrap().set(41, "TERM0001").unwrap();
        let request = MessageView::decode(spec, b.encode()).unwrap();
        let keys = switchyard_audit::AuditKeys::demo();
        let pair = PairRecord::from_request("terminals", &request, &keys, 1);
        let basis = ReversalBasis::of(&request, Some(4242));
        let written = payload::encode(&InFlightRecordRef {
            link: "issuer",
            basis: &basis,
            pair: &pair,
        })
        .unwrap();
        let read: InFlightRecord = payload::decode(1, &written).unwrap();
        assert_eq!(read.link, "issuer");
        assert_eq!(read.basis, basis);
        assert_eq!(
            serde_json::to_vec(&read.pair).unwrap(),
            serde_json::to_vec(&pair).unwrap()
        );
    }

    #[test]
    fn sharded_maps_find_what_they_hold_and_keep_to_their_cap() {
        // 16 entries per shard: the 16 keys below fit even if the random hasher sends them
        // all to one shard (with 4 per shard, five of them in one shard, a few per cent of
        // hasher seeds, evicted one and failed this test).
        const CAP: usize = SHARDS * 16;
        let map: Sharded<u32, u32> = Sharded::new(CAP, Duration::from_secs(60));
        for n in 0..16 {
            map.lock(&n).insert(n, n * 10);
        }
        for n in 0..16 {
            assert_eq!(map.lock(&n).get(&n), Some(&(n * 10)));
        }
        assert_eq!(map.lock(&3).remove(&3), Some(30));
        assert_eq!(map.lock(&3).get(&3), None);
        for n in 0..10_000 {
            map.lock(&n).insert(n, n);
        }
        let held: usize = map.shards.iter().map(|s| s.lock().unwrap().map.len()).sum();
        assert!(held <= CAP, "{held} entries for a cap of {CAP}");
        assert_eq!(
            map.lock(&9_999).get(&9_999),
            Some(&9_999),
            "the newest stays"
        );
    }

    #[test]
    fn text_keys_keep_their_parts_apart_and_refuse_what_does_not_fit() {
        let key = |parts: &[&[u8]]| TextKey::of(parts);
        assert_eq!(key(&[b"T1", b"000001"]), key(&[b"T1", b"000001"]));
        assert_ne!(key(&[b"T1", b"000001"]), key(&[b"T10", b"00001"]));
        assert_ne!(key(&[b"T1", b""]), key(&[b"", b"T1"]));
        assert!(
            key(&[b"A\x1fB", b"1"]).is_none(),
            "the separator inside a part"
        );
        assert!(key(&[&[b'9'; 40], &[b'9'; 22]]).is_some(), "63 bytes fit");
        assert!(key(&[&[b'9'; 40], &[b'9'; 23]]).is_none(), "64 do not");
        let mut map = std::collections::HashMap::new();
        map.insert(key(&[b"TERM0001", b"000123"]).unwrap(), 1);
        assert_eq!(map.get(&key(&[b"TERM0001", b"000123"]).unwrap()), Some(&1));
    }

    #[test]
    fn bounded_maps_forget_the_oldest_first_at_constant_cost() {
        let mut m = BoundedMap::new(3, Duration::from_secs(60));
        for k in 0..5 {
            m.insert(k, k * 10);
        }
        assert_eq!(
            (m.get(&0), m.get(&1), m.get(&2), m.get(&4)),
            (None, None, Some(&20), Some(&40))
        );
        // Renewing a key keeps it past its first slot in the queue.
        m.insert(2, 21);
        m.insert(5, 50);
        assert_eq!((m.get(&2), m.get(&3)), (Some(&21), None));
        assert!(m.map.len() <= 3 && m.order.len() <= 4);
        let mut t = BoundedMap::new(100, Duration::from_millis(0));
        t.insert(1, 1);
        assert_eq!(t.get(&1), None, "expired");
    }
}
