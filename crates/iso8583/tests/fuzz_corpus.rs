//! Replays the cargo-fuzz corpus (fuzz/corpus/TARGET/*) through the same entry points the
//! fuzz targets call, on the stable toolchain, so every input the fuzzer ever kept stays a
//! regression test.

#![allow(clippy::unwrap_used)] // Test helpers: a failed unwrap is a failed test.

use std::path::Path;

use switchyard_iso8583::fuzzing;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        run(&data);
        count += 1;
    }
    count
}

#[test]
fn decode_message_corpus() {
    assert!(replay("decode_message", fuzzing::decode_message) >= 8);
}

#[test]
fn parse_tlv_corpus() {
    assert!(replay("parse_tlv", fuzzing::parse_tlv) >= 2);
}

#[test]
fn load_spec_corpus() {
    assert!(replay("load_spec", fuzzing::load_spec) >= 4);
}
