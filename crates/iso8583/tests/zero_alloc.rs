//! Decoding allocates nothing, and a reused builder encodes a response without allocating.
//! A counting global allocator proves it. (Its own test binary, so no other test's
//! allocations are counted; the counter is per thread so the harness's threads don't count.)

#![allow(clippy::unwrap_used)] // Test helpers: a failed unwrap is a failed test.
#![allow(unsafe_code)] // A global allocator cannot be written without it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{Bytes, BytesMut};
use switchyard_iso8583::{shipped, wire, MessageBuilder, MessageView};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn golden(dialect: &str, name: &str) -> Bytes {
    let path = format!(
        "{}/testdata/{dialect}/{name}.hex",
        env!("CARGO_MANIFEST_DIR")
    );
    let hex = std::fs::read_to_string(path).unwrap();
    Bytes::from(wire::from_hex(hex.trim().as_bytes()).unwrap())
}

#[test]
fn decoding_allocates_nothing_and_a_warm_builder_neither() {
    for dialect in [
        "iso8583-1987-ascii",
        "iso8583-1987-binary-bitmap",
        "iso8583-1987-bcd",
    ] {
        let spec = shipped(dialect).unwrap();
        let frame = golden(dialect, "0200");
        let mut builder =
            MessageBuilder::new(spec, switchyard_iso8583::Mti::parse("0210").unwrap());
        let mut out = BytesMut::with_capacity(4096);
        // Warm up: the builder's buffers grow to size once.
        for _ in 0..2 {
            let view = MessageView::decode(spec, frame.clone()).unwrap();
            builder.respond_to(&view, b"00").unwrap();
            out.clear();
            builder.encode_into(&mut out);
        }

        let before = allocations();
        let mut fields_seen = 0usize;
        for _ in 0..1000 {
            let view = MessageView::decode(spec, frame.clone()).unwrap();
            fields_seen += view.fields().count();
            let stan = view.raw(11).unwrap();
            assert_eq!(stan.len(), if dialect.contains("bcd") { 3 } else { 6 });
        }
        assert_eq!(allocations() - before, 0, "{dialect}: decode allocated");
        assert_eq!(fields_seen, 19 * 1000);

        let before = allocations();
        for _ in 0..1000 {
            let view = MessageView::decode(spec, frame.clone()).unwrap();
            builder.respond_to(&view, b"00").unwrap();
            out.clear();
            builder.encode_into(&mut out);
        }
        assert_eq!(
            allocations() - before,
            0,
            "{dialect}: decode + respond + encode allocated"
        );
        let response = MessageView::decode(spec, out.split().freeze()).unwrap();
        assert_eq!(response.field(39).unwrap().value().as_ref(), b"00");
    }
}

#[test]
fn the_counter_counts() {
    // Guard against a counter that cannot fail: an allocation must show.
    let before = allocations();
    let v: Vec<u8> = Vec::with_capacity(64);
    std::hint::black_box(&v);
    assert!(allocations() > before);
}
