//! Codec bench: Switchyard against iso_8583_rs 0.2 on the same typical 0200 (fields 2, 3, 4,
//! 7, 11, 12, 13, 14, 18, 22, 25, 35, 37, 41, 42, 43, 49, 52, 55; 440 bytes, the
//! `iso8583-1987-ascii` golden message), measured side by side in one run.
//!
//! `cargo bench -p switchyard-benches --bench codec` prints criterion's report, then an
//! interleaved A/B table (rounds alternate between the two libraries, so a noisy machine
//! hits both alike) with the speed-up (iso_8583_rs time / Switchyard time), and the heap
//! allocations per operation counted by the bench's own allocator.
//! `-- --test` runs every bench once (the smoke mode CI uses).

#![allow(unsafe_code)] // The counting global allocator below.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::BytesMut;
use criterion::Criterion;
use iso_8583_rs::{Builder as TheirBuilder, Message as TheirMessage};
use switchyard_benches::{bench_message, their_spec, ECHO, FIELDS};
use switchyard_iso8583::{MessageBuilder, MessageView, Mti};

struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A criterion bench of `routine`.
fn timed(c: &mut Criterion, name: &'static str, mut routine: impl FnMut()) {
    c.bench_function(name, |b| b.iter(&mut routine));
}

fn allocations_per_op(mut routine: impl FnMut()) -> f64 {
    routine();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..1000 {
        routine();
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / 1000.0
}

fn main() {
    let ours = bench_message();
    let theirs = their_spec();
    let raw: Vec<u8> = ours.frame.to_vec();
    assert_eq!(raw.len(), 440);
    // Both libraries must agree on the message before we time them.
    let parsed = TheirMessage::parse(&theirs, &raw).unwrap_or_else(|e| panic!("iso_8583_rs: {e}"));
    assert_eq!(parsed.fields().count(), FIELDS.len());

    let mut c = Criterion::default().configure_from_args();
    let mti = Mti::parse("0200").unwrap_or_else(|| unreachable!());

    let decode_ours = || {
        let view =
            MessageView::decode(ours.spec, ours.frame.clone()).unwrap_or_else(|e| panic!("{e}"));
        black_box(view.raw(11));
    };
    let decode_theirs = || {
        let msg = TheirMessage::parse(&theirs, black_box(&raw)).unwrap_or_else(|e| panic!("{e}"));
        black_box(msg.get(11));
    };
    timed(&mut c, "decode/switchyard", decode_ours);
    timed(&mut c, "decode/iso_8583_rs", decode_theirs);
    // Structure only (no character-class checks), for reference.
    timed(&mut c, "decode-lenient/switchyard", || {
        let options = switchyard_iso8583::DecodeOptions { strict: false };
        let view = MessageView::decode_with(ours.spec, ours.frame.clone(), options)
            .unwrap_or_else(|e| panic!("{e}"));
        black_box(view.raw(11));
    });
    timed(&mut c, "decode-lenient/iso_8583_rs", || {
        let msg =
            TheirMessage::parse_lazy(&theirs, black_box(&raw)).unwrap_or_else(|e| panic!("{e}"));
        black_box(msg.get(11));
    });

    let mut builder = MessageBuilder::new(ours.spec, mti);
    let mut out = BytesMut::with_capacity(1024);
    let mut encode_ours = || {
        builder.reset(mti);
        for (n, v) in &ours.values {
            builder.set(*n, v).unwrap_or_else(|e| panic!("{e}"));
        }
        out.clear();
        builder.encode_into(&mut out);
        black_box(&out);
    };
    timed(&mut c, "encode/switchyard", &mut encode_ours);
    let mut their_out: Vec<u8> = Vec::with_capacity(1024);
    let mut encode_theirs = || {
        let mut b = TheirBuilder::new(&theirs, b"0200").unwrap_or_else(|e| panic!("{e}"));
        for (n, v) in &ours.wire_values {
            b.set(usize::from(*n), v).unwrap_or_else(|e| panic!("{e}"));
        }
        their_out.clear();
        b.pack_into(&mut their_out);
        black_box(&their_out);
    };
    timed(&mut c, "encode/iso_8583_rs", &mut encode_theirs);

    let mut respond_builder = MessageBuilder::new(ours.spec, mti);
    let mut respond_out = BytesMut::with_capacity(1024);
    let mut respond_ours = || {
        let view =
            MessageView::decode(ours.spec, ours.frame.clone()).unwrap_or_else(|e| panic!("{e}"));
        respond_builder
            .respond_to(&view, b"00")
            .unwrap_or_else(|e| panic!("{e}"));
        respond_out.clear();
        respond_builder.encode_into(&mut respond_out);
        black_box(&respond_out);
    };
    timed(&mut c, "respond/switchyard", &mut respond_ours);
    let mut their_respond_out: Vec<u8> = Vec::with_capacity(1024);
    let mut respond_theirs = || {
        let req = TheirMessage::parse(&theirs, black_box(&raw)).unwrap_or_else(|e| panic!("{e}"));
        let mut b = TheirBuilder::new(&theirs, b"0210").unwrap_or_else(|e| panic!("{e}"));
        for n in ECHO {
            if let Some(v) = req.get(usize::from(n)) {
                b.set(usize::from(n), v).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        b.set(39, b"00").unwrap_or_else(|e| panic!("{e}"));
        their_respond_out.clear();
        b.pack_into(&mut their_respond_out);
        black_box(&their_respond_out);
    };
    timed(&mut c, "respond/iso_8583_rs", &mut respond_theirs);
    c.final_summary();

    let allocs = [
        ("decode", allocations_per_op(decode_ours)),
        (
            "encode (reused builder)",
            allocations_per_op(&mut encode_ours),
        ),
        (
            "decode+respond+encode",
            allocations_per_op(&mut respond_ours),
        ),
    ];
    let (rounds, iters) = if std::env::args().any(|a| a == "--test") {
        (2, 10)
    } else {
        (61, 20_000)
    };
    let rows = [
        (
            "decode (strict)",
            ab(rounds, iters, decode_ours, decode_theirs),
        ),
        (
            "encode",
            ab(rounds, iters, &mut encode_ours, &mut encode_theirs),
        ),
        (
            "decode+respond+encode",
            ab(rounds, iters, &mut respond_ours, &mut respond_theirs),
        ),
    ];
    report(&rows, &allocs);
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Interleaved A/B timing: rounds alternate between the two routines, so drift and noisy
/// neighbours hit both alike; the ratio of the median round times is what the README quotes.
fn ab(rounds: usize, iters: u32, mut ours: impl FnMut(), mut theirs: impl FnMut()) -> (f64, f64) {
    let mut a = Vec::with_capacity(rounds);
    let mut b = Vec::with_capacity(rounds);
    fn time(iters: u32, f: &mut impl FnMut()) -> f64 {
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        start.elapsed().as_nanos() as f64 / f64::from(iters)
    }
    for round in 0..rounds {
        // Alternate which goes first, too.
        if round % 2 == 0 {
            a.push(time(iters, &mut ours));
            b.push(time(iters, &mut theirs));
        } else {
            b.push(time(iters, &mut theirs));
            a.push(time(iters, &mut ours));
        }
    }
    (median(&a), median(&b))
}

fn report(rows: &[(&str, (f64, f64))], allocs: &[(&str, f64)]) {
    println!();
    println!(
        "Interleaved A/B, same run, {} cores (median ns/op over rounds):",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<22} {:>12} {:>12} {:>9}",
        "operation", "switchyard", "iso_8583_rs", "speed-up"
    );
    for (op, (ours, theirs)) in rows {
        println!(
            "{op:<22} {ours:>10.1}ns {theirs:>10.1}ns {:>8.2}x",
            theirs / ours
        );
    }
    for (op, n) in allocs {
        println!("heap allocations per {op}: {n}");
    }
}
