//! `MessageBuilder`: set fields in any order, encode once into a `BytesMut`.
//!
//! Each `set` checks the value against the spec and stores it already encoded (length
//! prefix written, BCD packed, EBCDIC mapped, hex written) in one scratch buffer. Fields set
//! in ascending order, each once (the usual way to build a message), lie in that buffer
//! exactly as they go on the wire, so encoding is the MTI, the bitmaps and one `memcpy`;
//! otherwise it is a `memcpy` per field. A builder is meant to be reused (`reset`): after
//! the first messages its buffers have grown to size and building allocates nothing.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{Error, Location, Reason, Result, Salvage};
use crate::mti::Mti;
use crate::spec::{BitmapEncoding, Encoding, FieldSpec, LengthKind, MtiEncoding, Spec};
use crate::view::{check_content, MessageView};
use crate::wire;

/// Fields a response copies from its request when present: the ones an acquirer matches
/// on or reconciles with. Card secrets (35, 36, 45, 52) and chip data (55) are never
/// echoed; the issuer answers with its own.
pub const ECHO_FIELDS: &[u8] = &[
    2, 3, 4, 5, 6, 7, 11, 12, 13, 15, 19, 24, 25, 32, 33, 37, 41, 42, 49, 50, 51, 90, 100, 102, 103,
];

/// One set field: `data[start..start + len]` is its length prefix and then its data.
#[derive(Debug, Clone, Copy)]
struct Entry {
    field: u8,
    prefix_len: u8,
    start: u32,
    len: u32,
}

impl Entry {
    fn wire(&self) -> std::ops::Range<usize> {
        self.start as usize..(self.start + self.len) as usize
    }
}

/// Write `f`'s length prefix for `units` units (nothing for a fixed field).
#[inline]
fn push_prefix(f: &FieldSpec, units: usize, data: &mut Vec<u8>) {
    if f.prefix_bytes != 0 {
        wire::write_prefix(f.prefix, f.prefix_bytes, f.prefix_value(units), data);
    }
}

/// `data.extend_from_slice(v)` with fixed-size (overlapping) copies for the short values
/// most fields hold: `memcpy` calls of varying sizes were a sixth of an encode (perf).
#[inline]
fn extend_small(data: &mut Vec<u8>, v: &[u8]) {
    let (len, start) = (v.len(), data.len());
    let mut two = |head: &[u8], tail: &[u8]| {
        data.extend_from_slice(head);
        data.truncate(start + len - tail.len());
        data.extend_from_slice(tail);
    };
    match len {
        8..=16 => {
            if let (Ok(head), Ok(tail)) = (
                <&[u8; 8]>::try_from(&v[..8]),
                <&[u8; 8]>::try_from(&v[len - 8..]),
            ) {
                two(head, tail);
            }
        }
        4..8 => {
            if let (Ok(head), Ok(tail)) = (
                <&[u8; 4]>::try_from(&v[..4]),
                <&[u8; 4]>::try_from(&v[len - 4..]),
            ) {
                two(head, tail);
            }
        }
        _ => data.extend_from_slice(v),
    }
}

/// Builds and encodes messages for one spec.
#[derive(Clone)]
pub struct MessageBuilder<'s> {
    spec: &'s Spec,
    mti: Mti,
    data: Vec<u8>,
    entries: Vec<Entry>,
    /// Bits of the fields set (indicator bits 1 and 65 are added when encoding).
    bitmap: [u64; 3],
    /// Encoded bytes of all fields, prefixes included: `encoded_len` is O(1).
    body_len: usize,
    /// Whether `data` is exactly the fields' wire bytes in field order (no field set out of
    /// order, replaced or removed since `reset`).
    in_wire_order: bool,
}

impl std::fmt::Debug for MessageBuilder<'_> {
    /// Lists field numbers only: a builder may hold card data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageBuilder")
            .field("spec", &self.spec.name())
            .field("mti", &self.mti)
            .field(
                "fields",
                &self.entries.iter().map(|e| e.field).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<'s> MessageBuilder<'s> {
    /// A builder for `spec`, starting with `mti` and no fields.
    pub fn new(spec: &'s Spec, mti: Mti) -> Self {
        MessageBuilder {
            spec,
            mti,
            data: Vec::with_capacity(512),
            entries: Vec::with_capacity(32),
            bitmap: [0; 3],
            body_len: 0,
            in_wire_order: true,
        }
    }

    /// Start a new message, keeping the buffers.
    pub fn reset(&mut self, mti: Mti) -> &mut Self {
        self.mti = mti;
        self.data.clear();
        self.entries.clear();
        self.bitmap = [0; 3];
        self.body_len = 0;
        self.in_wire_order = true;
        self
    }

    /// The spec this builder encodes for.
    pub fn spec(&self) -> &'s Spec {
        self.spec
    }

    /// The MTI.
    pub fn mti(&self) -> Mti {
        self.mti
    }

    /// Change the MTI.
    pub fn set_mti(&mut self, mti: Mti) -> &mut Self {
        self.mti = mti;
        self
    }

    /// Field `n`'s definition. A spec never defines a bitmap bit (1, or 65 with a tertiary
    /// bitmap), so they are told apart only on the way to the error.
    #[inline]
    fn definition(&self, n: u8) -> Result<&'s crate::spec::FieldSpec> {
        self.spec.field(n).ok_or_else(|| self.undefined(n))
    }

    #[cold]
    fn undefined(&self, n: u8) -> Error {
        let reason = if self.spec.is_bitmap_bit(usize::from(n)) {
            Reason::BitmapField
        } else {
            Reason::NotInSpec
        };
        Error::encode(Location::Field(n), reason)
    }

    /// Set field `n` from its logical value: ASCII characters for character fields (digits
    /// for `n`, digits and `=`/`D` for track data), raw bytes for binary fields. The value
    /// is checked against the field's class and length, then stored encoded.
    pub fn set(&mut self, n: u8, value: impl AsRef<[u8]>) -> Result<&mut Self> {
        let value = value.as_ref();
        let f = self.definition(n)?;
        f.check_value(value)?;
        let start = self.data.len();
        push_prefix(f, value.len(), &mut self.data);
        match f.encoding {
            Encoding::Ascii | Encoding::Binary => extend_small(&mut self.data, value),
            Encoding::Hex => wire::push_hex_in_place(&mut self.data, value),
            _ => f.write_value(value, &mut self.data),
        }
        self.insert(f, start);
        Ok(self)
    }

    /// Set a numeric field from an integer, zero-padded to the length of a fixed field.
    pub fn set_u64(&mut self, n: u8, value: u64) -> Result<&mut Self> {
        let f = self.definition(n)?;
        let width = if f.length == LengthKind::Fixed {
            usize::from(f.max)
        } else {
            0
        };
        let (digits, from) = wire::decimal(value, width);
        self.set(n, &digits[from..])
    }

    /// Set field `n` from bytes already encoded for this spec (e.g. copied from a view of a
    /// message in the same dialect). The length and content are checked all the same.
    pub fn set_encoded(&mut self, n: u8, encoded: &[u8], units: usize) -> Result<&mut Self> {
        let f = self.definition(n)?;
        let location = Location::Field(n);
        if encoded.len() != f.encoded_len(units) || units > usize::from(f.max) {
            let reason = Reason::BadLength {
                length: units,
                min: usize::from(f.min),
                max: usize::from(f.max),
            };
            return Err(Error::encode(location, reason));
        }
        check_content(f, encoded, units).map_err(|(_, reason)| Error::encode(location, reason))?;
        self.push_encoded(f, encoded, units);
        Ok(self)
    }

    /// Store a field whose encoded data is already checked.
    fn push_encoded(&mut self, f: &FieldSpec, encoded: &[u8], units: usize) {
        let start = self.data.len();
        push_prefix(f, units, &mut self.data);
        extend_small(&mut self.data, encoded);
        self.insert(f, start);
    }

    /// Record field `f`, whose prefix and data were just written at `data[start..]`.
    #[inline(always)]
    fn insert(&mut self, f: &FieldSpec, start: usize) {
        let field = f.number;
        let entry = Entry {
            field,
            prefix_len: f.prefix_bytes,
            start: start as u32,
            len: (self.data.len() - start) as u32,
        };
        let i = usize::from(field) - 1;
        let bit = 1u64 << (63 - i % 64);
        // Fields are usually set in ascending order, each for the first time.
        let in_order = self.entries.last().is_none_or(|last| last.field < field);
        if in_order {
            self.entries.push(entry);
        } else {
            self.in_wire_order = false;
            match self.entries.binary_search_by_key(&field, |e| e.field) {
                Ok(at) => {
                    self.body_len -= self.entries[at].len as usize;
                    self.entries[at] = entry;
                }
                Err(at) => self.entries.insert(at, entry),
            }
        }
        self.body_len += entry.len as usize;
        self.bitmap[i / 64] |= bit;
    }

    /// Remove field `n` if set.
    pub fn remove(&mut self, n: u8) -> &mut Self {
        if let Ok(i) = self.entries.binary_search_by_key(&n, |e| e.field) {
            let e = self.entries.remove(i);
            self.body_len -= e.len as usize;
            self.in_wire_order = false;
            let b = usize::from(n) - 1;
            self.bitmap[b / 64] &= !(1 << (63 - b % 64));
        }
        self
    }

    /// Whether field `n` is set.
    pub fn has(&self, n: u8) -> bool {
        self.entries.binary_search_by_key(&n, |e| e.field).is_ok()
    }

    /// Field `n`'s encoded bytes, if set.
    pub fn encoded(&self, n: u8) -> Option<&[u8]> {
        let i = self.entries.binary_search_by_key(&n, |e| e.field).ok()?;
        let e = self.entries[i];
        self.data
            .get(e.wire().start + usize::from(e.prefix_len)..e.wire().end)
    }

    /// Copy field `n` from `view` if present. Same spec: the encoded bytes are copied as
    /// they are; another spec: the logical value is re-encoded. Returns whether it was there.
    pub fn copy_from(&mut self, view: &MessageView<'_>, n: u8) -> Result<bool> {
        let Some(field) = view.field(n) else {
            return Ok(false);
        };
        if std::ptr::eq(view.spec(), self.spec) && view.is_validated() {
            // Same dialect and already checked by a strict decode: copy the bytes as they are.
            let f = self.definition(n)?;
            self.push_encoded(f, field.raw, field.units);
        } else if std::ptr::eq(view.spec(), self.spec) {
            self.set_encoded(n, field.raw, field.units)?;
        } else {
            self.set(n, field.value())?;
        }
        Ok(true)
    }

    /// Turn this builder into the response to `request`: response MTI, the request's
    /// [`ECHO_FIELDS`] copied, field 39 set to `response_code`.
    pub fn respond_to(
        &mut self,
        request: &MessageView<'_>,
        response_code: &[u8],
    ) -> Result<&mut Self> {
        let mti = request
            .mti()
            .response()
            .ok_or_else(|| Error::encode(Location::Mti, Reason::NotARequest))?;
        self.reset(mti);
        // Field 39 set in its place among the echo fields: a builder whose fields came in
        // order encodes with one copy of its data, not one per field.
        let (before, after) = ECHO_FIELDS.split_at(ECHO_FIELDS.partition_point(|&n| n < 39));
        self.echo(request, before)?;
        self.set(39, response_code)?;
        self.echo(request, after)?;
        Ok(self)
    }

    /// Copy `fields` of `request` that it has, for [`MessageBuilder::respond_to`].
    fn echo(&mut self, request: &MessageView<'_>, fields: &[u8]) -> Result<()> {
        if std::ptr::eq(request.spec(), self.spec) && request.is_validated() {
            // Same dialect, checked by a strict decode: each field's wire bytes (length
            // prefix and data) copied as they are, found once, not looked up, re-encoded or
            // checked again as `copy_from` does for any one field.
            for &n in fields {
                let (Some(wire), Some(f)) = (request.wire_range(n), self.spec.field(n)) else {
                    continue;
                };
                if let Some(bytes) = request.buffer().get(wire) {
                    let start = self.data.len();
                    extend_small(&mut self.data, bytes);
                    self.insert(f, start);
                }
            }
        } else {
            for &n in fields {
                if self.spec.field(n).is_some() {
                    self.copy_from(request, n)?;
                }
            }
        }
        Ok(())
    }

    /// The response to a frame that could not be decoded (usually with code 30, format
    /// error): the response MTI and fields 11 and 41 as far as they were readable.
    /// `frame` is the buffer that failed to decode against this builder's spec.
    pub fn respond_to_salvage(
        &mut self,
        salvage: &Salvage,
        frame: &[u8],
        response_code: &[u8],
    ) -> Result<&mut Self> {
        let mti = salvage
            .mti
            .and_then(Mti::new)
            .and_then(|m| m.response())
            .ok_or_else(|| Error::encode(Location::Mti, Reason::NotARequest))?;
        self.reset(mti);
        for (n, raw) in [
            (11u8, salvage.stan(frame)),
            (41, salvage.terminal_id(frame)),
        ] {
            if let (Some(raw), Some(f)) = (raw, self.spec.field(n)) {
                let units = if f.length == LengthKind::Fixed {
                    usize::from(f.max)
                } else {
                    f.units_of_bytes(raw.len()).unwrap_or(0)
                };
                // A salvaged field may itself be malformed; then it is left out.
                let _ = self.set_encoded(n, raw, units);
            }
        }
        self.set(39, response_code)
    }

    fn bitmaps(&self) -> [u64; 3] {
        let mut bitmap = self.bitmap;
        if bitmap[2] != 0 {
            bitmap[1] |= 1 << 63;
        }
        if bitmap[1] != 0 {
            bitmap[0] |= 1 << 63;
        }
        bitmap
    }

    /// Bytes the encoded message takes.
    pub fn encoded_len(&self) -> usize {
        let n_bitmaps = 1
            + usize::from(self.bitmap[1] != 0 || self.bitmap[2] != 0)
            + usize::from(self.bitmap[2] != 0);
        self.spec.mti_len() + n_bitmaps * self.spec.bitmap_len() + self.body_len
    }

    /// Append the encoded message to `out`.
    pub fn encode_into(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        let digits = self.mti.digits();
        match self.spec.mti_encoding() {
            MtiEncoding::Ascii => out.put_slice(&digits),
            MtiEncoding::Ebcdic => out.extend(digits.iter().map(|&d| 0xF0 | (d - b'0'))),
            MtiEncoding::Bcd => {
                let d = digits.map(|d| d - b'0');
                out.put_slice(&[d[0] << 4 | d[1], d[2] << 4 | d[3]]);
            }
        }
        let bitmaps = self.bitmaps();
        for (w, &bits) in bitmaps.iter().enumerate() {
            if w > 0 && bits == 0 {
                break;
            }
            match self.spec.bitmap_encoding() {
                BitmapEncoding::Binary => out.put_u64(bits),
                BitmapEncoding::Hex => wire::push_hex(out, &bits.to_be_bytes()),
            }
        }
        if self.in_wire_order {
            out.put_slice(&self.data);
        } else {
            for e in &self.entries {
                out.put_slice(&self.data[e.wire()]);
            }
        }
    }

    /// Encode into a new buffer.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use crate::{shipped, MessageBuilder, Mti};

    /// Bitmap bits and fields the spec does not define are refused, each for its reason.
    #[test]
    fn bitmap_bits_and_undefined_fields_are_refused() {
        let spec = shipped("iso8583-1987-ascii").unwrap();
        let mut b = MessageBuilder::new(spec, Mti::parse("0200").unwrap());
        let refused = |b: &mut MessageBuilder<'_>, n: u8| b.set(n, "1").unwrap_err().to_string();
        assert!(refused(&mut b, 1).contains("bitmap fields are written by the encoder"));
        for n in [0, 193, 255] {
            assert!(
                refused(&mut b, n).contains("not defined by the spec"),
                "{n}"
            );
        }
        let tertiary = crate::Spec::from_toml(
            "tertiary",
            "name = \"t\"\nmti = \"ascii\"\nbitmap = \"hex\"\nencoding = \"ascii\"\n\
             prefix = \"ascii\"\ntertiary_bitmap = true\n[fields]\n\
             2 = { name = \"PAN\", class = \"n\", len = \"llvar\", max = 19 }\n",
        )
        .unwrap();
        let mut b = MessageBuilder::new(&tertiary, Mti::parse("0200").unwrap());
        assert!(refused(&mut b, 65).contains("bitmap fields are written by the encoder"));
    }

    /// The one-`memcpy` encoding (fields set in order) and the per-field one (anything
    /// else) give the same bytes, whatever happened to the builder before.
    #[test]
    fn replaced_removed_and_refused_fields_leave_no_trace() {
        for name in ["iso8583-1987-ascii", "iso8583-1987-bcd"] {
            let spec = shipped(name).unwrap();
            let mti = Mti::parse("0200").unwrap();
            let mut straight = MessageBuilder::new(spec, mti);
            straight.set(2, "4761730000000119").unwrap();
            straight.set(4, "000000001000").unwrap();
            straight.set(11, "000123").unwrap();
            straight.set(41, "TERM0001").unwrap();
            let expected = straight.encode();

            let mut winding = MessageBuilder::new(spec, mti);
            winding.set(11, "999999").unwrap();
            winding.set(2, "4761730000000119").unwrap();
            assert!(winding.set(4, "12AB").is_err(), "{name}: refused value");
            winding.set(4, "000000001000").unwrap();
            winding.set(3, "000000").unwrap();
            winding.set(41, "TERM0001").unwrap();
            winding.remove(3);
            winding.set(11, "000123").unwrap();
            assert_eq!(winding.encoded_len(), expected.len(), "{name}");
            assert_eq!(winding.encode(), expected, "{name}");
            assert_eq!(winding.encoded(11), straight.encoded(11), "{name}");

            // A removal between in-order sets.
            let mut removed = MessageBuilder::new(spec, mti);
            removed.set(2, "4761730000000119").unwrap();
            removed.set(3, "000000").unwrap();
            removed.set(4, "000000001000").unwrap();
            removed.remove(3);
            removed.set(11, "000123").unwrap();
            removed.set(41, "TERM0001").unwrap();
            assert_eq!(removed.encode(), expected, "{name}");

            // Refused values leave nothing behind in the in-order path either.
            let mut refused = MessageBuilder::new(spec, mti);
            refused.set(2, "4761730000000119").unwrap();
            assert!(refused.set(4, "1234567890123").is_err(), "{name}: too long");
            refused.set(4, "000000001000").unwrap();
            refused.set(11, "000123").unwrap();
            refused.set(41, "TERM0001").unwrap();
            assert_eq!(refused.encode(), expected, "{name}");
        }
    }
}
