//! See `switchyard_iso8583::fuzzing::load_spec` for the invariants; the corpus in
//! `fuzz/corpus/load_spec` is replayed by the stable test `crates/iso8583/tests/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    switchyard_iso8583::fuzzing::load_spec(data);
});
