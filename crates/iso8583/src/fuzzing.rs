//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the stable tests that
//! replay their corpus, so both exercise exactly the same code. Each function must never
//! panic on any input; the `assert!`s state invariants whose failure is a bug.

use bytes::Bytes;

use crate::builder::MessageBuilder;
use crate::shipped::{shipped, SHIPPED};
use crate::spec::Spec;
use crate::view::{DecodeOptions, MessageView};
use crate::{mask, tlv};

/// Decode `data[1..]` with the shipped spec picked by `data[0]`, strictly and leniently;
/// whatever decodes must render, re-encode and decode again to the same fields.
pub fn decode_message(data: &[u8]) {
    let Some((&selector, frame)) = data.split_first() else {
        return;
    };
    let Ok(spec) = shipped(SHIPPED[usize::from(selector) % SHIPPED.len()].0) else {
        return;
    };
    decode_with_spec(spec, frame);
}

/// The invariants of [`decode_message`] for one spec.
pub fn decode_with_spec(spec: &Spec, frame: &[u8]) {
    let buf = Bytes::copy_from_slice(frame);
    for strict in [true, false] {
        match MessageView::decode_with(spec, buf.clone(), DecodeOptions { strict }) {
            Ok(view) => {
                let _ = view.masked().to_string();
                if strict {
                    reencode_matches(spec, &view);
                }
            }
            Err(e) => {
                let _ = e.to_string();
                let salvage = e.salvage();
                // Salvaged ranges always lie inside the frame.
                if salvage.stan.is_some() {
                    assert!(salvage.stan(frame).is_some());
                }
                if salvage.terminal_id.is_some() {
                    assert!(salvage.terminal_id(frame).is_some());
                }
            }
        }
    }
}

fn reencode_matches(spec: &Spec, view: &MessageView<'_>) {
    let mut builder = MessageBuilder::new(spec, view.mti());
    for field in view.fields() {
        let copied = builder.copy_from(view, field.number);
        assert!(
            matches!(copied, Ok(true)),
            "field {} did not copy: {copied:?}",
            field.number
        );
    }
    let again = MessageView::decode(spec, builder.encode());
    let Ok(again) = again else {
        panic!("re-encoded message does not decode: {again:?}");
    };
    assert_eq!(again.mti(), view.mti());
    for field in view.fields() {
        assert_eq!(
            again.raw(field.number),
            Some(field.raw),
            "field {}",
            field.number
        );
    }
}

/// Walk `data` as BER-TLV and mask it.
pub fn parse_tlv(data: &[u8]) {
    // The iterator stops after its first error, so `flatten` sees every good object.
    for t in tlv::iter(data).flatten() {
        assert!(t.value_offset + t.value.len() <= data.len());
        let _ = tlv::find(t.value, 0x9F26);
    }
    let _ = mask::mask_emv(data);
}

/// Load `data` as a spec file.
pub fn load_spec(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(spec) = Spec::from_toml("fuzz", text) {
            decode_with_spec(&spec, b"0200");
        }
    }
}
