//! Following a log as it grows, across segments, and checking the records elsewhere.

use std::sync::Arc;

use switchyard_audit::{ChainCheck, ChainKey, KeySource, Tail};

use crate::{append_many, disk_dir, open, small};

fn chain_key() -> ChainKey {
    ChainKey::load(&KeySource::Demo).unwrap()
}

#[tokio::test]
async fn a_tail_hands_on_each_durable_record_once_across_segments_and_the_chain_checks() {
    let dir = disk_dir();
    let (log, _) = open(small(dir.path()));
    let log = Arc::new(log);
    let mut tail = Tail::new(dir.path());
    let mut frames: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut next = 1;
    // Appends and reads interleaved, in uneven steps, over several segment rotations.
    for round in 0..12 {
        append_many(&log, 50, 4).await;
        let until = log
            .stats()
            .last_seq
            .load(std::sync::atomic::Ordering::Acquire);
        let n = tail
            .read(next, until, 7 + round * 5, |seq, frame| {
                frames.push((seq, frame.to_vec()))
            })
            .unwrap();
        next += n as u64;
    }
    loop {
        let n = tail
            .read(next, u64::MAX, 100, |seq, frame| {
                frames.push((seq, frame.to_vec()))
            })
            .unwrap();
        if n == 0 {
            break;
        }
        next += n as u64;
    }
    assert!(
        log.stats()
            .segments_created
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    let seqs: Vec<u64> = frames.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=600).collect::<Vec<_>>(), "each once, in order");
    let key = chain_key();
    let mut check = ChainCheck::new(&key);
    for (_, frame) in &frames {
        check.check(frame).unwrap();
    }
    assert_eq!((check.records, check.anchored_at), (600, None));
    // A tail from the middle (a restart at a cursor), and one record beyond `until` waits.
    let mut later = Tail::new(dir.path());
    let mut got = Vec::new();
    later.read(300, 310, 1000, |seq, _| got.push(seq)).unwrap();
    assert_eq!(got, (300..=310).collect::<Vec<_>>());
    // Tampering, a gap and a repeat are each caught.
    let mut altered = frames[5].1.clone();
    let last = altered.len() - 40;
    altered[last] ^= 1;
    let mut check = ChainCheck::new(&key);
    for (_, f) in &frames[..5] {
        check.check(f).unwrap();
    }
    assert!(check.check(&altered).is_err(), "CRC");
    let mut gap = ChainCheck::new(&key);
    gap.check(&frames[0].1).unwrap();
    assert!(gap.check(&frames[2].1).unwrap_err().contains("missing"));
    let mut repeat = ChainCheck::new(&key);
    repeat.check(&frames[0].1).unwrap();
    assert!(repeat.check(&frames[0].1).is_err());
    // A stream that no longer holds the start anchors at its first record.
    let mut anchored = ChainCheck::new(&key);
    for (_, f) in &frames[100..] {
        anchored.check(f).unwrap();
    }
    assert_eq!(anchored.anchored_at, Some(101));
}

/// A batch of frames shipped as one message splits back into the same frames; a damaged
/// frame ends the list with its offset, and the frames before it stand.
#[tokio::test]
async fn frames_shipped_as_one_message_split_back_and_a_damaged_one_is_named() {
    let dir = disk_dir();
    let (log, _) = open(small(dir.path()));
    let log = Arc::new(log);
    append_many(&log, 5, 1).await;
    let mut frames: Vec<Vec<u8>> = Vec::new();
    Tail::new(dir.path())
        .read(1, u64::MAX, 100, |_, f| frames.push(f.to_vec()))
        .unwrap();
    assert_eq!(frames.len(), 5);
    let message: Vec<u8> = frames.concat();
    let split = switchyard_audit::split_frames(&message);
    let back: Vec<Vec<u8>> = split.iter().map(|f| f.clone().unwrap().to_vec()).collect();
    assert_eq!(back, frames);
    let mut damaged = message.clone();
    let second = frames[0].len() + frames[1].len();
    damaged[second + 20] ^= 1;
    let split = switchyard_audit::split_frames(&damaged);
    assert_eq!(split.len(), 3, "two good frames, then the damaged one");
    let (offset, reason) = split[2].clone().unwrap_err();
    assert_eq!(offset, second);
    assert!(reason.contains("CRC"), "{reason}");
    assert!(switchyard_audit::split_frames(&[])
        .first()
        .unwrap()
        .is_err());
}
