//! Masked output for people: PANs as first 6 + last 4, track data, PIN blocks and CVVs
//! never shown, EMV data with its card-data tags starred out.
//!
//! Everything that prints a message goes through [`Rendered`]; only an explicit
//! `reveal = true` (the CLI's `--reveal`, for test data) shows values in full.

use std::fmt;

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::spec::Sensitivity;
use crate::tlv;
use crate::view::{Field, MessageView};
use crate::wire;

/// What a secret field shows instead of its value.
pub const REDACTED: &str = "[REDACTED]";

/// Mask a PAN as first 6 + last 4. A PAN shorter than 13 digits (or not all digits) is
/// hidden entirely: 6 + 4 of it would show too much.
pub fn mask_pan(pan: &[u8]) -> String {
    let mut out = String::with_capacity(pan.len().max(REDACTED.len()));
    push_masked_pan(&mut out, pan);
    out
}

/// [`mask_pan`], appended to `out` (the audit log masks into a message's one text buffer).
pub fn push_masked_pan(out: &mut String, pan: &[u8]) {
    if pan.len() < 13 || !pan.iter().all(u8::is_ascii_digit) {
        out.push_str(REDACTED);
        return;
    }
    out.extend(pan[..6].iter().map(|&b| char::from(b)));
    out.extend(std::iter::repeat_n('*', pan.len() - 10));
    out.extend(pan[pan.len() - 4..].iter().map(|&b| char::from(b)));
}

/// EMV data as hex with the values of [`tlv::SENSITIVE_TAGS`] starred out, recursing into
/// constructed objects. Malformed data is hidden entirely.
pub fn mask_emv(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() * 2);
    if write_emv(data, &mut out) {
        out
    } else {
        format!("{REDACTED} (malformed BER-TLV, {} bytes)", data.len())
    }
}

fn write_emv(data: &[u8], out: &mut String) -> bool {
    let mut pos = 0;
    for item in tlv::iter(data) {
        let Ok(t) = item else { return false };
        // Padding bytes between objects, then tag and length as they are.
        out.push_str(&wire::to_hex(&data[pos..t.value_offset]));
        if t.constructed {
            if !write_emv(t.value, out) {
                return false;
            }
        } else if t.is_sensitive() {
            out.extend(std::iter::repeat_n('*', t.value.len() * 2));
        } else {
            out.push_str(&wire::to_hex(t.value));
        }
        pos = t.value_offset + t.value.len();
    }
    out.push_str(&wire::to_hex(&data[pos..]));
    true
}

impl Field<'_> {
    /// The value as it may be shown to people: [`Field::text`] with the field's sensitivity
    /// applied.
    pub fn masked_text(&self) -> String {
        match self.spec.sensitivity {
            Sensitivity::None => self.text(),
            Sensitivity::Pan => mask_pan(&self.value()),
            Sensitivity::Track | Sensitivity::Pin | Sensitivity::Cvv => REDACTED.to_string(),
            Sensitivity::Emv => mask_emv(&self.value()),
        }
    }

    /// Masked or full text.
    pub fn display_text(&self, reveal: bool) -> String {
        if reveal {
            self.text()
        } else {
            self.masked_text()
        }
    }
}

/// A message prepared for people or JSON: `{"mti":"0200","fields":{"2":"...",...}}`.
#[derive(Clone, Copy)]
pub struct Rendered<'v, 's> {
    view: &'v MessageView<'s>,
    reveal: bool,
}

impl std::fmt::Debug for Rendered<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<'s> MessageView<'s> {
    /// The message for output; masked unless `reveal`.
    pub fn render(&self, reveal: bool) -> Rendered<'_, 's> {
        Rendered { view: self, reveal }
    }

    /// The masked form (safe for logs).
    pub fn masked(&self) -> Rendered<'_, 's> {
        self.render(false)
    }
}

impl Serialize for Rendered<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Fields<'a, 'v, 's>(&'a Rendered<'v, 's>);
        impl Serialize for Fields<'_, '_, '_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(None)?;
                for f in self.0.view.fields() {
                    map.serialize_entry(&f.number.to_string(), &f.display_text(self.0.reveal))?;
                }
                map.end()
            }
        }
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("mti", self.view.mti().as_str())?;
        map.serialize_entry("fields", &Fields(self))?;
        map.end()
    }
}

impl fmt::Display for Rendered<'_, '_> {
    /// One line per field: number, name, value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spec = self.view.spec();
        writeln!(f, "MTI {} ({})", self.view.mti(), spec.name())?;
        for field in self.view.fields() {
            let name = spec.field_name(field.number).unwrap_or("");
            writeln!(
                f,
                "{:>4} {:<40} {}",
                field.number,
                name,
                field.display_text(self.reveal)
            )?;
            if field.spec.sensitivity == Sensitivity::Emv {
                write_emv_tags(f, &field.value(), self.reveal, 1)?;
            }
        }
        Ok(())
    }
}

/// EMV data one tag a line under its field, card tags masked unless `reveal` (nothing
/// more is said of data that is not BER-TLV: its field's line says so).
fn write_emv_tags(
    f: &mut fmt::Formatter<'_>,
    data: &[u8],
    reveal: bool,
    depth: usize,
) -> fmt::Result {
    if tlv::iter(data).any(|t| t.is_err()) {
        return Ok(());
    }
    for t in tlv::iter(data).flatten() {
        let indent = 5 + 2 * depth;
        let tag = format!("{:X}", t.tag);
        if t.constructed {
            writeln!(
                f,
                "{:indent$}{tag:<8} constructed, {} bytes",
                "",
                t.value.len()
            )?;
            write_emv_tags(f, t.value, reveal, depth + 1)?;
        } else if t.is_sensitive() && !reveal {
            writeln!(
                f,
                "{:indent$}{tag:<8} {REDACTED} ({} bytes)",
                "",
                t.value.len()
            )?;
        } else {
            writeln!(f, "{:indent$}{tag:<8} {}", "", wire::to_hex(t.value))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pans_show_six_and_four_at_most() {
        assert_eq!(mask_pan(b"4761739001010119"), "476173******0119");
        assert_eq!(mask_pan(b"4761739001010"), "476173***1010");
        assert_eq!(mask_pan(b"476173900101"), REDACTED);
        assert_eq!(mask_pan(b"47617390010101191=2"), REDACTED);
    }

    #[test]
    fn the_named_form_lists_emv_tags_with_card_tags_masked() {
        let spec = crate::shipped("iso8583-1987-ascii").unwrap();
        let mut data = Vec::new();
        tlv::push(&mut data, 0x9F26, &[0xAA; 2]);
        tlv::push(&mut data, 0x5A, &[0x47, 0x61, 0x73, 0x90]);
        let mut b = crate::MessageBuilder::new(spec, crate::Mti::parse("0200").unwrap());
        b.set(3, "000000")
            .unwrap()
            .set(55, data.as_slice())
            .unwrap();
        let view = crate::MessageView::decode(spec, b.encode()).unwrap();
        let text = view.masked().to_string();
        assert!(text.contains("9F26     AAAA"), "{text}");
        assert!(text.contains("5A       [REDACTED] (4 bytes)"), "{text}");
        assert!(!text.contains("47617390"), "{text}");
        assert!(view.render(true).to_string().contains("5A       47617390"));
    }

    #[test]
    fn emv_masking_stars_card_tags_only() {
        let mut inner = Vec::new();
        tlv::push(&mut inner, 0x57, &[0x47, 0x61, 0x73, 0x90, 0xD2]);
        let mut data = Vec::new();
        tlv::push(&mut data, 0x9F26, &[0xAA; 2]);
        tlv::push(&mut data, 0x5A, &[0x47, 0x61]);
        tlv::push(&mut data, 0x70, &inner);
        let masked = mask_emv(&data);
        assert_eq!(masked, "9F2602AAAA5A02****70075705**********");
        assert!(!masked.contains("4761"));
        assert!(mask_emv(&[0x9F, 0x26, 0x08, 0x01]).starts_with(REDACTED));
    }
}
