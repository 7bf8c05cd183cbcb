//! Property tests: random valid messages round-trip in every dialect; random corruption of
//! valid messages never panics and never decodes to something that re-encodes differently.

#![allow(clippy::unwrap_used)] // Test helpers: a failed unwrap is a failed test.

use bytes::Bytes;
use proptest::prelude::*;
use switchyard_iso8583::shipped::SHIPPED;
use switchyard_iso8583::testgen::{random_message, Rng};
use switchyard_iso8583::{fuzzing, shipped, DecodeOptions, MessageBuilder, MessageView, Spec};

fn spec_at(i: usize) -> &'static Spec {
    shipped(SHIPPED[i % SHIPPED.len()].0).unwrap()
}

fn build(spec: &'static Spec, seed: u64) -> (Bytes, Vec<(u8, Vec<u8>)>) {
    let mut rng = Rng::new(seed);
    let (mti, fields) = random_message(spec, &mut rng);
    let mut builder = MessageBuilder::new(spec, mti);
    // Set in a shuffled order: the builder must sort.
    let mut order: Vec<usize> = (0..fields.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    for &i in &order {
        let (n, value) = &fields[i];
        builder
            .set(*n, value)
            .unwrap_or_else(|e| panic!("{}: {e}", spec.name()));
    }
    (builder.encode(), fields)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_messages_round_trip(seed in any::<u64>(), dialect in 0usize..SHIPPED.len()) {
        let spec = spec_at(dialect);
        let (frame, fields) = build(spec, seed);
        let view = MessageView::decode(spec, frame.clone()).unwrap();
        let decoded: Vec<(u8, Vec<u8>)> = view.fields().map(|f| (f.number, f.value().into_owned())).collect();
        prop_assert_eq!(&decoded, &fields);
        // Copying every field into a builder reproduces the frame byte for byte.
        let mut again = MessageBuilder::new(spec, view.mti());
        for f in view.fields() {
            again.copy_from(&view, f.number).unwrap();
        }
        prop_assert_eq!(again.encode(), frame);
    }

    #[test]
    fn corrupted_messages_never_panic(seed in any::<u64>(), dialect in 0usize..SHIPPED.len(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
        let spec = spec_at(dialect);
        let (frame, _) = build(spec, seed);
        let mut bytes = frame.to_vec();
        for (at, value) in flips {
            let i = at % bytes.len();
            bytes[i] = value;
        }
        // Decodes strictly and leniently, renders, re-encodes: the fuzz harness's invariants.
        fuzzing::decode_with_spec(spec, &bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        fuzzing::decode_message(&data);
        fuzzing::parse_tlv(&data);
    }
}

#[test]
fn lenient_mode_skips_content_checks_but_not_structure() {
    let spec = shipped("iso8583-1987-ascii").unwrap();
    let mut builder = MessageBuilder::new(spec, switchyard_iso8583::Mti::parse("0200").unwrap());
    builder.set(3, "000000").unwrap().set(11, "000001").unwrap();
    let mut frame = builder.encode().to_vec();
    let last = frame.len() - 1;
    frame[last] = b'Z'; // field 11 is n6
    let strict = MessageView::decode(spec, Bytes::from(frame.clone()));
    assert!(strict.is_err());
    let lenient = MessageView::decode_with(
        spec,
        Bytes::from(frame.clone()),
        DecodeOptions { strict: false },
    )
    .unwrap();
    assert_eq!(lenient.str(11), Some("00000Z"));
    frame.pop();
    let truncated =
        MessageView::decode_with(spec, Bytes::from(frame), DecodeOptions { strict: false });
    assert!(truncated.unwrap_err().is_truncated());
}

#[test]
fn builder_rejects_values_that_break_the_spec() {
    let spec = shipped("iso8583-1987-bcd").unwrap();
    let mut b = MessageBuilder::new(spec, switchyard_iso8583::Mti::parse("0200").unwrap());
    let cases: [(u8, &[u8], &str); 6] = [
        (3, b"00000", "field 3: length 5, the field is fixed at 6"),
        (3, b"00000A", "field 3: character not allowed in class n"),
        (
            2,
            b"47617390010101190123",
            "field 2: length 20 outside the allowed 0..=19",
        ),
        (
            1,
            b"00",
            "field 1: bitmap fields are written by the encoder",
        ),
        (129, b"1", "field 129: field is not defined by the spec"),
        (
            41,
            "TERMÉ001".as_bytes(),
            "field 41: length 9, the field is fixed at 8",
        ),
    ];
    for (n, value, message) in cases {
        assert_eq!(b.set(n, value).unwrap_err().to_string(), message);
    }
    b.set_u64(11, 42).unwrap();
    b.set_u64(4, 12_500).unwrap();
    let view = MessageView::decode(spec, b.encode()).unwrap();
    assert_eq!(view.field(11).unwrap().value().as_ref(), b"000042");
    assert_eq!(view.field(4).unwrap().as_u64(), Some(12_500));
}

#[test]
fn tertiary_bitmap_carries_fields_129_to_192() {
    let text = r#"
        name = "tertiary"
        mti = "ascii"
        bitmap = "binary"
        tertiary_bitmap = true
        [fields]
        3 = { class = "n", len = "fixed", max = 6 }
        70 = { class = "n", len = "fixed", max = 3 }
        150 = { class = "ans", len = "llvar", max = 20 }
        192 = { class = "b", len = "fixed", max = 8 }
    "#;
    let spec: &'static Spec = Box::leak(Box::new(Spec::from_toml("tertiary", text).unwrap()));
    let mut b = MessageBuilder::new(spec, switchyard_iso8583::Mti::parse("0800").unwrap());
    b.set(3, "000000")
        .unwrap()
        .set(150, "third bitmap")
        .unwrap()
        .set(192, [7u8; 8])
        .unwrap();
    let frame = b.encode();
    // MTI + three binary bitmaps + 6 + (2 + 12) + 8.
    assert_eq!(frame.len(), 4 + 24 + 6 + 14 + 8);
    let view = MessageView::decode(spec, frame.clone()).unwrap();
    assert_eq!(view.str(150), Some("third bitmap"));
    assert_eq!(view.raw(192), Some(&[7u8; 8][..]));
    assert!(!view.has(65) && !view.has(1));
    for cut in 0..frame.len() {
        assert!(MessageView::decode(spec, frame.slice(..cut))
            .unwrap_err()
            .is_truncated());
    }
}

#[test]
fn ebcdic_fields_and_mti() {
    let text = r#"
        name = "ebcdic"
        mti = "ebcdic"
        bitmap = "binary"
        encoding = "ebcdic"
        prefix = "ebcdic"
        [fields]
        2 = { class = "n", len = "llvar", max = 19, sensitivity = "pan" }
        43 = { class = "ans", len = "fixed", max = 12 }
        48 = { class = "ans", len = "lllvar", max = 99, prefix = "binary" }
    "#;
    let spec: &'static Spec = Box::leak(Box::new(Spec::from_toml("ebcdic", text).unwrap()));
    let mut b = MessageBuilder::new(spec, switchyard_iso8583::Mti::parse("0100").unwrap());
    b.set(2, "4761739001010119")
        .unwrap()
        .set(43, "Caf[e] Store")
        .unwrap()
        .set(48, "x=1")
        .unwrap();
    let frame = b.encode();
    assert_eq!(&frame[..4], &[0xF0, 0xF1, 0xF0, 0xF0]);
    assert_eq!(&frame[12..14], &[0xF1, 0xF6]);
    let view = MessageView::decode(spec, frame).unwrap();
    assert_eq!(view.field(43).unwrap().value().as_ref(), b"Caf[e] Store");
    assert_eq!(view.field(48).unwrap().units, 3);
    assert_eq!(view.str(43), None, "EBCDIC is not zero-copy text");
    assert_eq!(view.field(2).unwrap().masked_text(), "476173******0119");
}
