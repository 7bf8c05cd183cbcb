//! Runs one codec operation in a loop, for profilers (`perf record`, `valgrind
//! --tool=callgrind`): `cargo run --release -p switchyard-benches --example codec_loop --
//! decode|encode|respond switchyard|iso_8583_rs [ITERATIONS]`.

use std::hint::black_box;

use bytes::BytesMut;
use switchyard_benches::{bench_message, their_spec, BenchMessage};
use switchyard_iso8583::{MessageBuilder, MessageView, Mti};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let op = args.get(1).map_or("decode", String::as_str);
    let lib = args.get(2).map_or("switchyard", String::as_str);
    let iterations: u64 = args
        .get(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let BenchMessage {
        spec,
        frame,
        values,
        wire_values: wire,
    } = bench_message();
    let raw = frame.to_vec();
    let theirs = their_spec();
    let mti = Mti::parse("0200").unwrap_or_else(|| unreachable!());
    let mut builder = MessageBuilder::new(spec, mti);
    let mut out = BytesMut::with_capacity(1024);
    let mut their_out = Vec::with_capacity(1024);
    for _ in 0..iterations {
        match (op, lib) {
            ("decode", "switchyard") => {
                let v = MessageView::decode(spec, frame.clone()).unwrap_or_else(|e| panic!("{e}"));
                black_box(v.raw(11));
            }
            ("decode", _) => {
                let m = iso_8583_rs::Message::parse(&theirs, black_box(&raw))
                    .unwrap_or_else(|e| panic!("{e}"));
                black_box(m.get(11));
            }
            ("encode", "switchyard") => {
                builder.reset(mti);
                for (n, v) in &values {
                    builder.set(*n, v).unwrap_or_else(|e| panic!("{e}"));
                }
                out.clear();
                builder.encode_into(&mut out);
                black_box(&out);
            }
            ("encode", _) => {
                let mut b =
                    iso_8583_rs::Builder::new(&theirs, b"0200").unwrap_or_else(|e| panic!("{e}"));
                for (n, v) in &wire {
                    b.set(usize::from(*n), v).unwrap_or_else(|e| panic!("{e}"));
                }
                their_out.clear();
                b.pack_into(&mut their_out);
                black_box(&their_out);
            }
            _ => {
                let v = MessageView::decode(spec, frame.clone()).unwrap_or_else(|e| panic!("{e}"));
                builder
                    .respond_to(&v, b"00")
                    .unwrap_or_else(|e| panic!("{e}"));
                out.clear();
                builder.encode_into(&mut out);
                black_box(&out);
            }
        }
    }
}
