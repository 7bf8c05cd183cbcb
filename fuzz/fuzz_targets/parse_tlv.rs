//! See `switchyard_iso8583::fuzzing::parse_tlv` for the invariants; the corpus in
//! `fuzz/corpus/parse_tlv` is replayed by the stable test `crates/iso8583/tests/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    switchyard_iso8583::fuzzing::parse_tlv(data);
});
