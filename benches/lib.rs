//! Shared fixtures for the codec bench and the profiling loop: the golden 0200 and an
//! iso_8583_rs spec with the same layout; the audit bench's records and open-loop test
//! ([`audit`]); and the load benchmark ([`loadbench`]).

pub mod audit;
pub mod loadbench;

use bytes::Bytes;
use iso_8583_rs::specfile::{FieldDescription, Spec as TheirSpec};
use iso_8583_rs::CompiledSpec;
use switchyard_iso8583::{shipped, MessageView, Spec};

/// The fields of the bench message and the response's echo fields.
pub const FIELDS: [u8; 19] = [
    2, 3, 4, 7, 11, 12, 13, 14, 18, 22, 25, 35, 37, 41, 42, 43, 49, 52, 55,
];
pub const ECHO: [u8; 11] = [2, 3, 4, 7, 11, 12, 13, 37, 41, 42, 49];

pub fn their_spec() -> CompiledSpec {
    // The same layout as our iso8583-1987-ascii for these fields. iso_8583_rs does not check
    // b or z content; Switchyard checks hex digits and the track-2 code set on top.
    let f = |content: &str, len_type: &str, max_len: usize| FieldDescription {
        content_type: content.into(),
        len_type: len_type.into(),
        max_len,
        min_len: 0,
        label: String::new(),
    };
    let fields = [
        (2, f("n", "llvar", 19)),
        (3, f("n", "fixed", 6)),
        (4, f("n", "fixed", 12)),
        (7, f("n", "fixed", 10)),
        (11, f("n", "fixed", 6)),
        (12, f("n", "fixed", 6)),
        (13, f("n", "fixed", 4)),
        (14, f("n", "fixed", 4)),
        (18, f("n", "fixed", 4)),
        (22, f("n", "fixed", 3)),
        (25, f("n", "fixed", 2)),
        (35, f("z", "llvar", 37)),
        (37, f("an", "fixed", 12)),
        (38, f("an", "fixed", 6)),
        (39, f("an", "fixed", 2)),
        (41, f("ans", "fixed", 8)),
        (42, f("ans", "fixed", 15)),
        (43, f("ans", "fixed", 40)),
        (49, f("an", "fixed", 3)),
        (52, f("b", "fixed", 16)),
        (55, f("b", "lllvar", 510)),
    ];
    let spec = TheirSpec {
        fields: fields.into_iter().collect(),
    };
    CompiledSpec::compile(&spec).unwrap_or_else(|e| panic!("iso_8583_rs spec: {e}"))
}

/// The frame as static `Bytes`: cloning it costs no reference count, as moving a received
/// frame into a view costs none in the switch. Both libraries then pay for decoding only.
pub fn golden_0200() -> Bytes {
    let hex = include_str!("../crates/iso8583/testdata/iso8583-1987-ascii/0200.hex");
    let bytes = switchyard_iso8583::wire::from_hex(hex.trim().as_bytes()).unwrap_or_default();
    Bytes::from_static(Box::leak(bytes.into_boxed_slice()))
}

/// The bench message decoded once, with the field values each library's builder takes.
#[derive(Debug)]
pub struct BenchMessage {
    /// `iso8583-1987-ascii`.
    pub spec: &'static Spec,
    /// The golden 0200.
    pub frame: Bytes,
    /// Logical values (what a Switchyard user sets: binary fields as bytes).
    pub values: Vec<(u8, Vec<u8>)>,
    /// Wire values (what an iso_8583_rs user sets: binary fields as hex text).
    pub wire_values: Vec<(u8, Vec<u8>)>,
}

/// Decode the golden 0200 and extract [`FIELDS`] in both forms.
pub fn bench_message() -> BenchMessage {
    let spec = shipped("iso8583-1987-ascii").unwrap_or_else(|e| panic!("{e}"));
    let frame = golden_0200();
    let view = MessageView::decode(spec, frame.clone()).unwrap_or_else(|e| panic!("{e}"));
    let values = FIELDS
        .iter()
        .map(|&n| {
            (
                n,
                view.field(n)
                    .map(|f| f.value().into_owned())
                    .unwrap_or_default(),
            )
        })
        .collect();
    let wire_values = FIELDS
        .iter()
        .map(|&n| (n, view.raw(n).unwrap_or_default().to_vec()))
        .collect();
    BenchMessage {
        spec,
        frame,
        values,
        wire_values,
    }
}
