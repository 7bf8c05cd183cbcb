//! See `switchyard_iso8583::fuzzing::decode_message` for the invariants; the corpus in
//! `fuzz/corpus/decode_message` is replayed by the stable test `crates/iso8583/tests/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    switchyard_iso8583::fuzzing::decode_message(data);
});
