//! Golden messages (encoded by pyiso8583, see tests/interop/make_golden.py) in every shipped
//! dialect: decode to the recorded values, encode the values back to the same bytes, and
//! fail cleanly on every truncation.

#![allow(clippy::unwrap_used)] // Test helpers: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use switchyard_iso8583::shipped::SHIPPED;
use switchyard_iso8583::{
    shipped, wire, Error, Location, MessageBuilder, MessageView, Mti, Reason, Spec,
};

struct Golden {
    dialect: &'static str,
    name: String,
    frame: Vec<u8>,
    mti: String,
    fields: BTreeMap<u8, String>,
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn goldens() -> Vec<Golden> {
    let mut all = Vec::new();
    for (dialect, _) in SHIPPED {
        let dir = testdata().join(dialect);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "hex"))
            .collect();
        names.sort();
        for hex_path in names {
            let hex = std::fs::read_to_string(&hex_path).unwrap();
            let frame = wire::from_hex(hex.trim().as_bytes()).unwrap();
            let json: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(hex_path.with_extension("json")).unwrap(),
            )
            .unwrap();
            let fields = json["fields"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.parse().unwrap(), v.as_str().unwrap().to_string()))
                .collect();
            all.push(Golden {
                dialect,
                name: hex_path.file_stem().unwrap().to_string_lossy().into_owned(),
                frame,
                mti: json["mti"].as_str().unwrap().to_string(),
                fields,
            });
        }
    }
    all
}

fn spec(g: &Golden) -> &'static Spec {
    shipped(g.dialect).unwrap()
}

#[test]
fn every_dialect_has_the_required_golden_messages() {
    let all = goldens();
    for (dialect, _) in SHIPPED {
        let names: Vec<&str> = all
            .iter()
            .filter(|g| g.dialect == *dialect)
            .map(|g| g.name.as_str())
            .collect();
        let wanted: &[&str] = if dialect.contains("1993") {
            &["1100", "1110", "1200", "1210", "1400", "1420", "1804"]
        } else {
            &["0100", "0110", "0200", "0210", "0400", "0420", "0800"]
        };
        for w in wanted {
            assert!(names.contains(w), "{dialect} lacks golden {w}: {names:?}");
        }
    }
}

#[test]
fn golden_messages_decode_to_their_recorded_values() {
    for g in goldens() {
        let view = MessageView::decode(spec(&g), Bytes::from(g.frame.clone()))
            .unwrap_or_else(|e| panic!("{} {}: {e}", g.dialect, g.name));
        assert_eq!(view.mti().as_str(), g.mti);
        let got: BTreeMap<u8, String> = view.fields().map(|f| (f.number, f.text())).collect();
        assert_eq!(got, g.fields, "{} {}", g.dialect, g.name);
    }
}

#[test]
fn golden_values_encode_to_the_same_bytes() {
    for g in goldens() {
        let spec = spec(&g);
        let mut builder = MessageBuilder::new(spec, Mti::parse(&g.mti).unwrap());
        for (&n, text) in &g.fields {
            if spec.field(n).unwrap().class.is_binary() {
                builder
                    .set(n, wire::from_hex(text.as_bytes()).unwrap())
                    .unwrap();
            } else {
                builder.set(n, text).unwrap();
            }
        }
        assert_eq!(
            builder.encoded_len(),
            g.frame.len(),
            "{} {}",
            g.dialect,
            g.name
        );
        assert_eq!(
            &builder.encode()[..],
            &g.frame[..],
            "{} {}",
            g.dialect,
            g.name
        );
    }
}

#[test]
fn every_prefix_of_a_golden_message_is_a_truncation_error() {
    for g in goldens() {
        let spec = spec(&g);
        for cut in 0..g.frame.len() {
            let err = MessageView::decode(spec, Bytes::copy_from_slice(&g.frame[..cut]))
                .expect_err("a strict prefix cannot decode");
            assert!(
                err.is_truncated(),
                "{} {} cut at {cut}: {err}",
                g.dialect,
                g.name
            );
        }
    }
}

#[test]
fn trailing_bytes_are_rejected_with_their_offset() {
    for g in goldens() {
        let mut frame = g.frame.clone();
        frame.extend_from_slice(b"XY");
        let err = MessageView::decode(spec(&g), Bytes::from(frame)).unwrap_err();
        assert_eq!(
            err,
            Error::Decode {
                location: Location::Message,
                offset: g.frame.len(),
                reason: Reason::TrailingBytes { count: 2 },
                salvage: err.salvage(),
            }
        );
    }
}

#[test]
fn masked_output_never_shows_card_secrets() {
    for g in goldens() {
        let view = MessageView::decode(spec(&g), Bytes::from(g.frame.clone())).unwrap();
        let json = serde_json::to_string(&view.masked()).unwrap();
        let text = view.masked().to_string();
        let debug = format!("{view:?}");
        for shown in [&json, &text, &debug] {
            assert!(!shown.contains("4761739001010119"), "PAN shown: {shown}");
            assert!(
                !shown.contains("25122011758928889"),
                "track 2 shown: {shown}"
            );
            assert!(
                !shown.contains("3A5F0C1D2E4B6978"),
                "PIN block shown: {shown}"
            );
        }
        if g.fields.contains_key(&2) {
            assert!(json.contains("476173******0119"), "{json}");
        }
    }
}

#[test]
fn responses_echo_the_request_and_set_field_39() {
    for g in goldens()
        .into_iter()
        .filter(|g| g.name == "0200" || g.name == "1200")
    {
        let spec = spec(&g);
        let request = MessageView::decode(spec, Bytes::from(g.frame.clone())).unwrap();
        let code: &[u8] = if g.dialect.contains("1993") {
            b"000"
        } else {
            b"00"
        };
        let mut builder = MessageBuilder::new(spec, request.mti());
        builder.respond_to(&request, code).unwrap();
        // A strictly decoded request's fields are copied as wire bytes; a leniently decoded
        // one's are checked and re-encoded field by field: the same response either way.
        let lenient = MessageView::decode_with(
            spec,
            Bytes::from(g.frame.clone()),
            switchyard_iso8583::DecodeOptions { strict: false },
        )
        .unwrap();
        let mut checked = MessageBuilder::new(spec, request.mti());
        checked.respond_to(&lenient, code).unwrap();
        assert_eq!(builder.encode(), checked.encode(), "{}", g.dialect);
        let response = MessageView::decode(spec, builder.encode()).unwrap();
        assert_eq!(response.mti(), request.mti().response().unwrap());
        assert_eq!(response.field(39).unwrap().value().as_ref(), code);
        for n in [2u8, 3, 4, 7, 11, 37, 41, 42, 49] {
            assert_eq!(response.raw(n), request.raw(n), "{} field {n}", g.dialect);
        }
        for secret in [35u8, 52, 55] {
            assert!(!response.has(secret), "{} echoed field {secret}", g.dialect);
        }
    }
}

#[test]
fn a_bad_field_still_yields_stan_and_terminal_for_a_format_error_response() {
    let spec = shipped("iso8583-1987-ascii").unwrap();
    let g = goldens()
        .into_iter()
        .find(|g| g.dialect == spec.name() && g.name == "0200")
        .unwrap();
    let good = MessageView::decode(spec, Bytes::from(g.frame.clone())).unwrap();
    // Put a letter into field 4 (n12): after 11? No: before 11 and 41, so the walk must go on.
    let at = good.range(4).unwrap().start + 3;
    let mut frame = g.frame.clone();
    frame[at] = b'X';
    let err = MessageView::decode(spec, Bytes::from(frame.clone())).unwrap_err();
    let Error::Decode {
        location,
        offset,
        reason,
        salvage,
    } = err.clone()
    else {
        panic!("{err:?}");
    };
    assert_eq!(location, Location::Field(4));
    assert_eq!(offset, at);
    assert!(matches!(reason, Reason::InvalidCharacter { .. }));
    assert_eq!(salvage.stan(&frame), Some(&b"000451"[..]));
    assert_eq!(salvage.terminal_id(&frame), Some(&b"TERM0001"[..]));
    assert_eq!(
        err.to_string(),
        format!("field 4: character not allowed in class n (byte offset {at})")
    );

    let mut builder = MessageBuilder::new(spec, Mti::parse("0210").unwrap());
    builder.respond_to_salvage(&salvage, &frame, b"30").unwrap();
    let response = MessageView::decode(spec, builder.encode()).unwrap();
    assert_eq!(response.mti().as_str(), "0210");
    assert_eq!(response.str(39), Some("30"));
    assert_eq!(response.str(11), Some("000451"));
    assert_eq!(response.str(41), Some("TERM0001"));
}

#[test]
fn errors_never_carry_field_values() {
    // Every single-byte corruption of every golden message: whatever the error says, it
    // must not contain the PAN, track or PIN block.
    for g in goldens().into_iter().filter(|g| g.name.ends_with("00")) {
        let spec = spec(&g);
        for at in 0..g.frame.len() {
            for byte in [b'X', 0xFF, b'9'] {
                let mut frame = g.frame.clone();
                frame[at] = byte;
                if let Err(e) = MessageView::decode(spec, Bytes::from(frame)) {
                    let text = format!("{e} {e:?}");
                    assert!(
                        !text.contains("4761739001010119") && !text.contains("3A5F0C1D"),
                        "{text}"
                    );
                }
            }
        }
    }
}

#[test]
fn composite_field_90_splits_into_original_data_elements() {
    let spec = shipped("iso8583-1987-ascii").unwrap();
    let g = goldens()
        .into_iter()
        .find(|g| g.dialect == spec.name() && g.name == "0400")
        .unwrap();
    let view = MessageView::decode(spec, Bytes::from(g.frame)).unwrap();
    let parts: Vec<_> = spec
        .composite(90)
        .unwrap()
        .split(view.str(90).unwrap())
        .collect();
    assert_eq!(parts[0], ("original_mti", "0200"));
    assert_eq!(parts[1], ("original_stan", "000451"));
    assert_eq!(parts[2], ("original_transmission_date_time", "1123093015"));
    assert_eq!(parts.len(), 5);
}

#[test]
fn field_55_tlv_is_parsed_on_demand() {
    let spec = shipped("iso8583-1987-binary-bitmap").unwrap();
    let g = goldens()
        .into_iter()
        .find(|g| g.dialect == spec.name() && g.name == "0200")
        .unwrap();
    let view = MessageView::decode(spec, Bytes::from(g.frame)).unwrap();
    let emv = view.raw(55).unwrap();
    let tags: Vec<u32> = switchyard_iso8583::tlv::iter(emv)
        .map(|t| t.unwrap().tag)
        .collect();
    assert_eq!(tags.len(), 16);
    assert_eq!(tags[0], 0x9F26);
    assert_eq!(
        switchyard_iso8583::tlv::find(emv, 0x9F02).unwrap(),
        Some(&[0, 0, 0, 0x01, 0x25, 0x00][..])
    );
}
