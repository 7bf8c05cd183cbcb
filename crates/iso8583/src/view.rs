//! `MessageView`: a decoded message that is the frame's `Bytes` plus a table of offsets.
//!
//! Decoding walks the bitmap once, records where each field's data starts and how many
//! units it holds, and (in strict mode, the default) checks every length and character
//! class on the way. It allocates nothing: the offset table lives inside the view, and field
//! access returns slices of the original buffer. A bitmap met before is walked by the
//! layout plan the spec learned for it (see `plan`), with the same result; the view then
//! keeps where each of the plan's steps starts rather than where each field does.

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;

use crate::error::{Error, Location, Reason, Result, Salvage};
use crate::mti::Mti;
use crate::plan::{Plan, Step, StepStarts, MAX_STEPS};
use crate::spec::FastCheck;
use crate::spec::{BitmapEncoding, DataClass, Encoding, FieldSpec, MtiEncoding, Spec};
use crate::wire;

/// Decoding options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Check character classes, BCD nibbles and minimum lengths (on by default). Structure
    /// (bitmaps, prefixes, maximum lengths, bounds) is always checked.
    pub strict: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions { strict: true }
    }
}

/// A decoded ISO 8583 message: the frame plus where each field is. Cheap to keep; field
/// access never copies.
#[derive(Clone)]
pub struct MessageView<'s> {
    spec: &'s Spec,
    buf: Bytes,
    mti: Mti,
    bitmap: [u64; 3],
    /// Whether content was checked (strict decode).
    validated: bool,
    /// Where each present field's data starts (after its length prefix).
    places: Places<'s>,
}

/// Where a view's fields start. A field's length is not kept: a fixed field's is in the
/// spec and a variable field's prefix is just before its start.
#[derive(Clone)]
// Boxing the field table would cost a heap allocation per decode that no plan walked.
#[allow(clippy::large_enum_variant)]
enum Places<'s> {
    /// Walked by `plan`: where each of its steps starts. A decode by a plan then stores one
    /// offset per step instead of one per field, and never zeroes a 386-byte field table
    /// (callgrind: 1909 -> 1608 instructions per decode of the bench message).
    Planned { plan: &'s Plan, steps: StepStarts },
    /// Walked field by field: where each present field starts, by field number.
    Walked([u16; 193]),
}

impl std::fmt::Debug for MessageView<'_> {
    /// Masked: a view's `Debug` never shows card data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.render(false))
    }
}

#[inline]
fn bit(bitmap: &[u64; 3], n: usize) -> bool {
    let (w, b) = ((n - 1) / 64, (n - 1) % 64);
    bitmap[w] >> (63 - b) & 1 == 1
}

struct DecodeFailure {
    location: Location,
    offset: usize,
    reason: Reason,
    /// Whether every field's place was known when it failed (content and trailing-byte
    /// errors); otherwise only the fields before `location` were placed.
    layout_done: bool,
}

#[cold]
fn field_failure(n: usize, offset: usize, reason: Reason) -> DecodeFailure {
    DecodeFailure {
        location: Location::Field(n as u8),
        offset,
        reason,
        layout_done: false,
    }
}

impl<'s> MessageView<'s> {
    /// Decode `buf` with strict validation.
    #[inline]
    pub fn decode(spec: &'s Spec, buf: Bytes) -> Result<Self> {
        Self::decode_with(spec, buf, DecodeOptions::default())
    }

    /// Decode `buf` with the given options.
    #[inline]
    pub fn decode_with(spec: &'s Spec, buf: Bytes, options: DecodeOptions) -> Result<Self> {
        // The MTI and bitmaps in locals until the view is made: written to memory as words
        // and read back at once as a vector, they stalled store forwarding (perf: the two
        // hottest instructions of the decode waited on it).
        let (mut mti, mut bitmap) = (
            Mti::new(*b"0000").unwrap_or_else(|| unreachable!()),
            [0u64; 3],
        );
        let header = read_header(spec, &buf, &mut mti, &mut bitmap);
        let validated = options.strict;
        let made = |buf, places| MessageView {
            spec,
            buf,
            mti,
            bitmap,
            validated,
            places,
        };
        let pos = match header {
            Ok(pos) => pos,
            Err(f) => return Err(made(buf, Places::Walked([0; 193])).failure(f)),
        };
        let (table, data) = (spec.table(), &buf[..]);
        if let Some(plan) = spec.plans().get(&bitmap) {
            let mut steps = [0; MAX_STEPS];
            let done = if options.strict {
                read_planned::<true>(plan, table, data, &mut steps, pos)
            } else {
                read_planned::<false>(plan, table, data, &mut steps, pos)
            };
            if let Some((end, content_ok)) = done {
                let places = Places::Planned { plan, steps };
                // Checked before the view is made, which it then is in the result: made
                // first and checked by a method taking it, it cost one more copy of its 464
                // bytes per decode.
                if content_ok && end == buf.len() {
                    return Ok(made(buf, places));
                }
                return Err(made(buf, places).walk_failure(end, content_ok));
            }
        }
        let (mut starts, tertiary) = ([0; 193], spec.has_tertiary_bitmap());
        let walked = if options.strict {
            read_fields::<true>(table, data, bitmap, tertiary, &mut starts, pos)
        } else {
            read_fields::<false>(table, data, bitmap, tertiary, &mut starts, pos)
        };
        let view = made(buf, Places::Walked(starts));
        match walked {
            Ok((end, true)) if end == view.buf.len() => {
                spec.plans()
                    .learn(spec.table(), view.bitmap, spec.has_tertiary_bitmap());
                Ok(view)
            }
            Ok((end, content_ok)) => Err(view.walk_failure(end, content_ok)),
            Err(f) => Err(view.failure(f)),
        }
    }

    /// The error of a walk that placed every field and ended at `end`: a content check
    /// failed (`content_ok` false), or bytes follow the last field.
    #[cold]
    fn walk_failure(&self, end: usize, content_ok: bool) -> Error {
        // A bad character does not stop the walk, so that fields 11 and 41 after it are
        // still found for the salvage; the first bad field is named afterwards.
        let f = if content_ok {
            DecodeFailure {
                location: Location::Message,
                offset: end,
                reason: Reason::TrailingBytes {
                    count: self.buf.len() - end,
                },
                layout_done: true,
            }
        } else {
            self.first_content_error()
        };
        self.failure(f)
    }

    /// Where placed field `n`'s data starts.
    #[inline]
    fn start(&self, n: usize) -> usize {
        match &self.places {
            Places::Planned { plan, steps } => plan.start_of(steps, n),
            Places::Walked(starts) => usize::from(starts[n]),
        }
    }

    fn failure(&self, f: DecodeFailure) -> Error {
        // Fields before the failing one have their slots; all have after a content error.
        let done_upto = match f.location {
            _ if f.layout_done => 193,
            Location::Field(n) => usize::from(n),
            Location::Mti | Location::Bitmap(_) | Location::Message => 0,
        };
        let found = |n: usize| {
            (n < done_upto && bit(&self.bitmap, n)).then(|| {
                let start = self.start(n) as u16;
                let len = self.spec.entry(n).encoded_len(self.units_at(n));
                (start, start.saturating_add(len as u16))
            })
        };
        let mti_read = f.location != Location::Mti && f.reason != Reason::TooLong;
        Error::Decode {
            location: f.location,
            offset: f.offset,
            reason: f.reason,
            salvage: Salvage {
                mti: mti_read.then(|| self.mti.digits()),
                stan: found(11),
                terminal_id: found(41),
            },
        }
    }

    /// The slow path after a failed content check: the first field, in order, whose content
    /// is wrong, and the offending byte.
    #[cold]
    fn first_content_error(&self) -> DecodeFailure {
        for n in (2..=192usize).filter(|&n| self.has(n as u8)) {
            let f = self.spec.entry(n);
            let (start, units) = (self.start(n), self.units_at(n));
            let end = start + f.encoded_len(units);
            if let Err((at, reason)) = check_content(f, &self.buf[start..end], units) {
                return DecodeFailure {
                    location: Location::Field(n as u8),
                    offset: start + at,
                    reason,
                    layout_done: true,
                };
            }
        }
        // Unreachable in practice: a run failed, so one of its fields fails on its own.
        DecodeFailure {
            location: Location::Message,
            offset: 0,
            reason: Reason::BadLengthPrefix,
            layout_done: true,
        }
    }

    /// Units (characters, digits or bytes) of placed field `n`: the spec's for a fixed
    /// field, its length prefix's (checked when decoding) for a variable one.
    #[inline]
    fn units_at(&self, n: usize) -> usize {
        let f = self.spec.entry(n);
        let pl = usize::from(f.prefix_bytes);
        if pl == 0 {
            return usize::from(f.max);
        }
        let start = self.start(n);
        start
            .checked_sub(pl)
            .and_then(|from| self.buf.get(from..start))
            .and_then(|raw| f.units_in_prefix(raw))
            .unwrap_or(0)
    }

    /// The spec this view was decoded with.
    pub fn spec(&self) -> &'s Spec {
        self.spec
    }

    /// The message type indicator.
    pub fn mti(&self) -> Mti {
        self.mti
    }

    /// Whether every field's content was checked (a strict decode).
    pub fn is_validated(&self) -> bool {
        self.validated
    }

    /// The whole frame.
    pub fn buffer(&self) -> &Bytes {
        &self.buf
    }

    /// Give the frame back.
    pub fn into_bytes(self) -> Bytes {
        self.buf
    }

    /// The three bitmaps as decoded (unused ones are zero).
    pub fn bitmaps(&self) -> [u64; 3] {
        self.bitmap
    }

    /// Whether field `n` is present.
    #[inline]
    pub fn has(&self, n: u8) -> bool {
        let n = usize::from(n);
        (2..=192).contains(&n) && !self.spec.is_bitmap_bit(n) && bit(&self.bitmap, n)
    }

    /// Byte range of field `n`'s data (after any length prefix) within the buffer. Used to
    /// patch fixed-length fields in place (STAN remapping) without re-encoding.
    #[inline]
    pub fn range(&self, n: u8) -> Option<Range<usize>> {
        if !self.has(n) {
            return None;
        }
        let n = usize::from(n);
        let (f, start) = (self.spec.entry(n), self.start(n));
        let len = if f.prefix_bytes == 0 {
            usize::from(f.fixed_bytes)
        } else {
            f.encoded_len(self.units_at(n))
        };
        Some(start..start + len)
    }

    /// Field `n`'s bytes on the wire: its length prefix and its data.
    pub(crate) fn wire_range(&self, n: u8) -> Option<Range<usize>> {
        let data = self.range(n)?;
        let prefix = usize::from(self.spec.entry(usize::from(n)).prefix_bytes);
        Some(data.start.checked_sub(prefix)?..data.end)
    }

    /// Replace the encoded data of fixed-length field `n` with `encoded` (same length, checked
    /// like a decoded field), keeping every offset. Used to restore a remapped STAN on a
    /// response: one copy of the frame, no re-encoding and no new decode.
    pub fn patch_fixed(&mut self, n: u8, encoded: &[u8]) -> Result<()> {
        let location = Location::Field(n);
        let f = *self.spec.entry(usize::from(n));
        let range = match self.range(n) {
            Some(r) if f.length == crate::spec::LengthKind::Fixed => r,
            _ => return Err(Error::encode(location, Reason::NotInSpec)),
        };
        if encoded.len() != range.len() {
            let reason = Reason::BadLength {
                length: encoded.len(),
                min: range.len(),
                max: range.len(),
            };
            return Err(Error::encode(location, reason));
        }
        check_content(&f, encoded, usize::from(f.max))
            .map_err(|(_, reason)| Error::encode(location, reason))?;
        let mut patched = bytes::BytesMut::with_capacity(self.buf.len());
        patched.extend_from_slice(&self.buf[..range.start]);
        patched.extend_from_slice(encoded);
        patched.extend_from_slice(&self.buf[range.end..]);
        self.buf = patched.freeze();
        Ok(())
    }

    /// Field `n`'s encoded data bytes (no prefix): a slice of the frame.
    #[inline]
    pub fn raw(&self, n: u8) -> Option<&[u8]> {
        self.range(n).and_then(|r| self.buf.get(r))
    }

    /// Field `n`'s encoded data as `Bytes` sharing the frame's memory.
    pub fn raw_bytes(&self, n: u8) -> Option<Bytes> {
        self.range(n).map(|r| self.buf.slice(r))
    }

    /// Field `n`'s length in units (characters, digits or bytes).
    pub fn units(&self, n: u8) -> Option<usize> {
        self.has(n).then(|| self.units_at(usize::from(n)))
    }

    /// Field `n` with its layout.
    pub fn field(&self, n: u8) -> Option<Field<'_>> {
        let raw = self.raw(n)?;
        Some(Field {
            number: n,
            spec: self.spec.entry(usize::from(n)),
            raw,
            units: self.units_at(usize::from(n)),
        })
    }

    /// Field `n` as text, without copying, when it is an ASCII character field.
    /// (Use [`Field::value`] for BCD and EBCDIC fields.)
    #[inline]
    pub fn str(&self, n: u8) -> Option<&str> {
        let f = self.spec.entry(usize::from(n));
        if f.encoding != Encoding::Ascii {
            return None;
        }
        self.raw(n).and_then(|r| std::str::from_utf8(r).ok())
    }

    /// Every present field in field-number order. Walks the bitmaps' set bits (highest
    /// first in each word: field numbers ascend): asking for each of the 191 numbers in turn
    /// cost more than the rest of protecting a message for the audit log.
    pub fn fields(&self) -> impl Iterator<Item = Field<'_>> + '_ {
        let mut word = 0;
        let mut left = self.bitmap[0];
        std::iter::from_fn(move || loop {
            while left == 0 {
                word += 1;
                left = *self.bitmap.get(word)?;
            }
            let at = left.leading_zeros() as usize;
            left &= !(1u64 << (63 - at));
            let n = word * 64 + at + 1;
            if n >= 2 && !self.spec.is_bitmap_bit(n) {
                // n <= 192 and present: the field is there.
                if let Some(field) = u8::try_from(n).ok().and_then(|n| self.field(n)) {
                    return Some(field);
                }
            }
        })
    }
}

/// Where a walk is: the read position, the content verdict so far, and the open run of
/// content checks, which covers `run_start..pos` with `run_check` (every field since it
/// began joined it; no separate end: one register less in a loop that ran out of them).
struct Walk {
    pos: usize,
    ok: bool,
    run_check: FastCheck,
    run_start: usize,
}

impl Walk {
    #[inline(always)]
    fn new(pos: usize) -> Walk {
        Walk {
            pos,
            ok: true,
            run_check: FastCheck::Nothing,
            run_start: 0,
        }
    }

    /// Close the open run (checking it) when `check` is not its check, or when the bytes
    /// before the next data cannot join it (`joins`), and open one for `check`.
    #[inline(always)]
    fn run_for<const STRICT: bool>(&mut self, data: &[u8], check: FastCheck, joins: bool) {
        if STRICT && (check != self.run_check || !joins) {
            self.ok &= self.run_check.accepts(&data[self.run_start..self.pos]);
            self.run_check = check;
            self.run_start = self.pos;
        }
    }

    /// The end offset and the content verdict, the last run checked.
    #[inline(always)]
    fn finish<const STRICT: bool>(mut self, data: &[u8]) -> (usize, bool) {
        if STRICT {
            self.ok &= self.run_check.accepts(&data[self.run_start..self.pos]);
        }
        (self.pos, self.ok || !STRICT)
    }

    /// Place field `n` at the read position: where its data starts (returned) and ends,
    /// and (`STRICT`) its content joined to a run or checked on its own.
    #[inline(always)]
    fn place<const STRICT: bool>(
        &mut self,
        f: &FieldSpec,
        n: usize,
        data: &[u8],
    ) -> std::result::Result<usize, DecodeFailure> {
        let (len, pos) = (data.len(), self.pos);
        let (start, units, end);
        if f.prefix_bytes == 0 {
            if !f.defined {
                return Err(field_failure(n, pos, Reason::UnknownField));
            }
            start = pos;
            units = usize::from(f.max);
            end = pos + usize::from(f.fixed_bytes);
        } else {
            let pl = usize::from(f.prefix_bytes);
            let Some(raw) = data.get(pos..pos + pl) else {
                return Err(field_failure(
                    n,
                    pos,
                    Reason::Truncated {
                        needed: pl,
                        available: len - pos,
                    },
                ));
            };
            let Some(value) = f.units_in_prefix(raw) else {
                return Err(field_failure(n, pos, Reason::BadLengthPrefix));
            };
            if value > usize::from(f.max) {
                let reason = Reason::BadLength {
                    length: value,
                    min: usize::from(f.min),
                    max: usize::from(f.max),
                };
                return Err(field_failure(n, pos, reason));
            }
            units = value;
            start = pos + pl;
            end = start + f.encoded_len(units);
            self.ok &= units >= usize::from(f.min);
        }
        if end > len {
            return Err(field_failure(
                n,
                pos,
                Reason::Truncated {
                    needed: end - pos,
                    available: len - pos,
                },
            ));
        }
        if STRICT {
            // A field joins the run when it has the run's check and nothing else sits
            // between (an ASCII length prefix is digits, valid in any run; a binary or
            // BCD one is not). A run of per-field checks checks nothing as a run.
            self.run_for::<STRICT>(data, f.fast, f.prefix_in_run);
            if !f.prefix_in_run {
                self.run_start = start;
            }
            if f.fast == FastCheck::PerField {
                self.ok &= check_content(f, &data[start..end], units).is_ok();
            }
        }
        self.pos = end;
        Ok(start)
    }
}

/// MTI and bitmaps of `data` into `mti` and `bitmap`. Returns the offset of the first field.
#[inline(always)]
fn read_header(
    spec: &Spec,
    data: &[u8],
    mti: &mut Mti,
    bitmap: &mut [u64; 3],
) -> std::result::Result<usize, DecodeFailure> {
    let fail = |location, offset, reason| DecodeFailure {
        location,
        offset,
        reason,
        layout_done: false,
    };
    let truncated = |location, offset: usize, needed: usize| {
        fail(
            location,
            offset,
            Reason::Truncated {
                needed,
                available: data.len().saturating_sub(offset),
            },
        )
    };
    if data.len() > usize::from(u16::MAX) {
        return Err(fail(Location::Message, 0, Reason::TooLong));
    }
    let mti_len = spec.mti_len();
    let raw_mti = data
        .get(..mti_len)
        .ok_or_else(|| truncated(Location::Mti, 0, mti_len))?;
    let digits = match spec.mti_encoding() {
        MtiEncoding::Ascii => [raw_mti[0], raw_mti[1], raw_mti[2], raw_mti[3]],
        MtiEncoding::Ebcdic => {
            let mut d = [0u8; 4];
            for (o, &e) in d.iter_mut().zip(raw_mti) {
                *o = wire::ebcdic_to_ascii(e).unwrap_or(0);
            }
            d
        }
        MtiEncoding::Bcd => {
            let n = |b: u8| if b <= 9 { b'0' + b } else { 0 };
            [
                n(raw_mti[0] >> 4),
                n(raw_mti[0] & 0xF),
                n(raw_mti[1] >> 4),
                n(raw_mti[1] & 0xF),
            ]
        }
    };
    *mti = Mti::new(digits).ok_or_else(|| fail(Location::Mti, 0, Reason::BadMti))?;
    let mut pos = mti_len;
    // Primary, then secondary if bit 1, then tertiary if bit 65 (when the spec has one).
    for w in 0..3 {
        let wanted = match w {
            0 => true,
            1 => bitmap[0] >> 63 == 1,
            _ => spec.has_tertiary_bitmap() && bitmap[1] >> 63 == 1,
        };
        if !wanted {
            break;
        }
        let location = Location::Bitmap(w as u8 + 1);
        let len = spec.bitmap_len();
        let raw = data
            .get(pos..pos + len)
            .ok_or_else(|| truncated(location, pos, len))?;
        bitmap[w] = match (spec.bitmap_encoding(), raw) {
            (BitmapEncoding::Binary, &[a, b, c, d, e, f, g, h]) => {
                u64::from_be_bytes([a, b, c, d, e, f, g, h])
            }
            (BitmapEncoding::Hex, raw) => match <&[u8; 16]>::try_from(raw) {
                Ok(hex) if wire::is_hex(hex) => wire::hex16_to_u64(hex),
                _ => return Err(fail(location, pos, Reason::BadBitmap)),
            },
            _ => return Err(fail(location, pos, Reason::BadBitmap)),
        };
        pos += len;
    }
    Ok(pos)
}

/// The generic walk: where each field starts and how long it is, and (`STRICT`) whether
/// every field's content is valid. Content checks run over runs of adjacent fields with the
/// same fast check (see `FastCheck`), so 19 fields cost a handful of vector checks.
/// Returns the end offset and the content verdict.
/// A free function over plain arguments: the compiler then knows that writing `starts`
/// cannot change the spec table or the frame, and keeps the loop in registers.
#[inline(always)]
fn read_fields<const STRICT: bool>(
    table: &[FieldSpec; 193],
    data: &[u8],
    bitmap: [u64; 3],
    tertiary: bool,
    starts: &mut [u16; 193],
    pos: usize,
) -> std::result::Result<(usize, bool), DecodeFailure> {
    let mut walk = Walk::new(pos);
    for (w, &word) in bitmap.iter().enumerate() {
        // Bits 1 and (with a tertiary bitmap) 65 announce bitmaps, not fields.
        let indicator = w == 0 || (w == 1 && tertiary);
        // Reversed, so that field order is lowest bit first: clearing the lowest set bit is
        // one instruction, where clearing the highest waited on the bit scan, and that was
        // the chain every field waited on.
        let mut bits = (word & !(u64::from(indicator) << 63)).reverse_bits();
        while bits != 0 {
            let n = w * 64 + bits.trailing_zeros() as usize + 1;
            bits &= bits - 1;
            starts[n] = walk.place::<STRICT>(&table[n], n, data)? as u16;
        }
    }
    Ok(walk.finish::<STRICT>(data))
}

/// The same walk by a plan made for this bitmap (see `plan`): the same offsets and verdict,
/// with each block of fixed fields placed at once, and where each step starts recorded in
/// `steps`. `None` on any structural problem: the caller then takes the generic walk,
/// which names it.
#[inline(always)]
fn read_planned<const STRICT: bool>(
    plan: &Plan,
    table: &[FieldSpec; 193],
    data: &[u8],
    steps: &mut StepStarts,
    pos: usize,
) -> Option<(usize, bool)> {
    let mut walk = Walk::new(pos);
    for (&step, start) in plan.steps().iter().zip(steps) {
        *start = match step {
            Step::Field(n) => {
                let n = usize::from(n);
                walk.place::<STRICT>(&table[n], n, data).ok()? as u16
            }
            Step::Block { bytes, check } => {
                let (start, end) = (walk.pos, walk.pos + usize::from(bytes));
                if end > data.len() {
                    return None;
                }
                walk.run_for::<STRICT>(data, check, true);
                walk.pos = end;
                start as u16
            }
        };
    }
    Some(walk.finish::<STRICT>(data))
}

/// Check one field's data against its class and encoding. `Err((offset in field, reason))`.
#[inline]
pub(crate) fn check_content(
    f: &FieldSpec,
    v: &[u8],
    units: usize,
) -> std::result::Result<(), (usize, Reason)> {
    if units < usize::from(f.min) {
        return Err((
            0,
            Reason::BadLength {
                length: units,
                min: usize::from(f.min),
                max: usize::from(f.max),
            },
        ));
    }
    let invalid = Reason::InvalidCharacter { class: f.class };
    match f.encoding {
        Encoding::Ascii => {
            if !wire::class_ok(f.class, v) {
                return Err((wire::first_invalid(f.class, v).unwrap_or(0), invalid));
            }
        }
        Encoding::Binary => {}
        Encoding::Hex => {
            if !wire::is_hex(v) {
                return Err((
                    v.iter().position(|&b| wire::hex_val(b) > 15).unwrap_or(0),
                    invalid,
                ));
            }
        }
        Encoding::Ebcdic => {
            if let Some(at) = wire::first_invalid_ebcdic(f.class, v) {
                return Err((at, invalid));
            }
        }
        Encoding::Bcd | Encoding::BcdLeft => {
            let right = f.encoding == Encoding::Bcd;
            // With a byte-counting prefix the digit count includes the pad nibble; the pad
            // cannot be told apart from data, so only the nibble range is checked.
            let track = f.class == DataClass::Z;
            if let Err((at, pad)) = wire::bcd_check(v, units, right, track, f.pad) {
                return Err((at, if pad { Reason::BadPadding } else { invalid }));
            }
        }
    }
    Ok(())
}

/// One present field of a [`MessageView`].
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    /// Field number.
    pub number: u8,
    /// Its layout.
    pub spec: &'a FieldSpec,
    /// Encoded data bytes (no prefix), a slice of the frame.
    pub raw: &'a [u8],
    /// Length in units.
    pub units: usize,
}

impl<'a> Field<'a> {
    /// The field's logical value: ASCII characters for character fields, bytes for binary
    /// fields. Borrowed when the wire form already is that (ASCII, binary), decoded
    /// otherwise (BCD, EBCDIC, hex).
    pub fn value(&self) -> Cow<'a, [u8]> {
        match self.spec.encoding {
            Encoding::Ascii | Encoding::Binary => Cow::Borrowed(self.raw),
            _ => {
                let mut out = Vec::with_capacity(self.units);
                self.write_value(&mut out);
                Cow::Owned(out)
            }
        }
    }

    /// Append the logical value (see [`Field::value`]) to `out`.
    pub fn write_value(&self, out: &mut Vec<u8>) {
        match self.spec.encoding {
            Encoding::Ascii | Encoding::Binary => out.extend_from_slice(self.raw),
            Encoding::Ebcdic => out.extend(
                self.raw
                    .iter()
                    .map(|&e| wire::ebcdic_to_ascii(e).unwrap_or(b'?')),
            ),
            Encoding::Bcd => wire::bcd_to_ascii(self.raw, self.units, true, out),
            Encoding::BcdLeft => wire::bcd_to_ascii(self.raw, self.units, false, out),
            Encoding::Hex => {
                out.extend(
                    self.raw
                        .chunks_exact(2)
                        .map(|p| wire::hex_val(p[0]) << 4 | wire::hex_val(p[1]) & 0xF),
                );
            }
        }
    }

    /// The value as text for people and JSON: characters for character fields, upper-case
    /// hex for binary fields. Unmasked: see [`crate::mask`] for what may be shown.
    pub fn text(&self) -> String {
        let mut text = String::new();
        self.push_text(&mut text);
        text
    }

    /// Append the value as text (see [`Field::text`]) to `out`: no allocation of its own
    /// for fields carried as ASCII or as raw binary.
    pub fn push_text(&self, out: &mut String) {
        let value = self.value();
        if self.spec.class.is_binary() {
            wire::push_hex_str(out, &value);
        } else {
            // Valid text (every strictly decoded field) is copied as it is; lossy decoding
            // walks it in chunks, several times the cost, and only bad bytes need it.
            match std::str::from_utf8(&value) {
                Ok(text) => out.push_str(text),
                Err(_) => out.push_str(&String::from_utf8_lossy(&value)),
            }
        }
    }

    /// A numeric field as an integer (`None` for non-numeric content or more than 19 digits).
    pub fn as_u64(&self) -> Option<u64> {
        let value = self.value();
        if value.is_empty() || value.len() > 19 {
            return None;
        }
        value.iter().try_fold(0u64, |acc, &b| {
            let d = b.wrapping_sub(b'0');
            (d <= 9).then(|| acc * 10 + u64::from(d))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{read_fields, read_planned};
    use crate::plan::Plan;
    use crate::{shipped, MessageBuilder, MessageView, Mti};

    fn message(spec_name: &str) -> MessageView<'static> {
        let spec = shipped(spec_name).unwrap();
        let mut b = MessageBuilder::new(spec, Mti::parse("0210").unwrap());
        b.set(3, "000000").unwrap().set(11, "000123").unwrap();
        b.set(39, "00").unwrap().set(41, "TERM0001").unwrap();
        MessageView::decode(spec, b.encode()).unwrap()
    }

    #[test]
    fn patch_fixed_replaces_a_fixed_field_and_keeps_the_rest() {
        for name in ["iso8583-1987-ascii", "iso8583-1987-bcd"] {
            let mut view = message(name);
            let f11 = view.spec().field(11).copied().unwrap();
            let mut stan = Vec::new();
            f11.encode_value(b"999999", &mut stan).unwrap();
            let before = view.buffer().clone();
            view.patch_fixed(11, &stan).unwrap();
            assert_eq!(view.raw(11), Some(&stan[..]), "{name}");
            assert_eq!(view.field(41).unwrap().text(), "TERM0001");
            assert_eq!(view.buffer().len(), before.len());
            // The patched frame decodes to the same layout.
            let again = MessageView::decode(view.spec(), view.buffer().clone()).unwrap();
            assert_eq!(again.field(11).unwrap().text(), "999999");
        }
    }

    #[test]
    fn patch_fixed_refuses_wrong_lengths_bad_content_absent_and_variable_fields() {
        let mut view = message("iso8583-1987-ascii");
        let original = view.buffer().clone();
        assert!(view.patch_fixed(11, b"12345").is_err());
        assert!(view.patch_fixed(11, b"12345X").is_err());
        assert!(view.patch_fixed(4, b"000000000001").is_err(), "absent");
        assert!(
            view.patch_fixed(2, b"4761730000000119").is_err(),
            "absent and variable"
        );
        assert_eq!(
            view.buffer(),
            &original,
            "nothing changed by a refused patch"
        );
    }

    /// The header of `frame` read as the decoder does: bitmaps and where fields start.
    fn header(spec: &'static crate::Spec, frame: &[u8]) -> Option<([u64; 3], usize)> {
        let (mut mti, mut bitmap) = (Mti::new(*b"0000")?, [0; 3]);
        let pos = super::read_header(spec, frame, &mut mti, &mut bitmap).ok()?;
        Some((bitmap, pos))
    }

    type Walked = Option<(usize, bool)>;

    /// The generic walk and the plan's over `frame`: their answers, and where each field
    /// starts by each (by the plan: from where its steps start).
    fn walk_both<const STRICT: bool>(
        plan: &Plan,
        table: &[crate::spec::FieldSpec; 193],
        frame: &[u8],
        bitmap: [u64; 3],
        tertiary: bool,
        pos: usize,
    ) -> (Walked, Walked, [u16; 193], [u16; 193]) {
        let (mut generic, mut steps) = ([0u16; 193], [0u16; crate::plan::MAX_STEPS]);
        let g = read_fields::<STRICT>(table, frame, bitmap, tertiary, &mut generic, pos);
        let p = read_planned::<STRICT>(plan, table, frame, &mut steps, pos);
        let mut planned = [0u16; 193];
        let present = |n: usize| bitmap[(n - 1) / 64] >> (63 - (n - 1) % 64) & 1 == 1;
        let indicator = |n: usize| n == 1 || (n == 65 && tertiary);
        for n in (1..=192).filter(|&n| present(n) && !indicator(n)) {
            planned[n] = plan.start_of(&steps, n) as u16;
        }
        (g.ok(), p, generic, planned)
    }

    /// A plan's walk and the generic one agree on every frame: the same offsets and verdict
    /// when the generic walk places every field, and no answer from the plan (so the decoder
    /// takes the generic walk and its error) when it does not. Frames: random messages of
    /// every dialect, each whole, truncated and with a byte changed.
    #[test]
    fn planned_walks_agree_with_the_generic_walk() {
        let mut rng = crate::testgen::Rng::new(0x9e37);
        let mut compared = [0usize; 2];
        for &(name, _) in crate::shipped::SHIPPED {
            let spec = shipped(name).unwrap();
            let (table, tertiary) = (spec.table(), spec.has_tertiary_bitmap());
            for _ in 0..400 {
                let (mti, fields) = crate::testgen::random_message(spec, &mut rng);
                let mut b = MessageBuilder::new(spec, mti);
                for (n, v) in &fields {
                    b.set(*n, v).unwrap();
                }
                let whole = b.encode().to_vec();
                let mut changed = whole.clone();
                let at = rng.below(changed.len());
                changed[at] = rng.next_u64() as u8;
                let cut = &whole[..rng.below(whole.len())];
                for frame in [&whole[..], &changed, cut] {
                    let Some((bitmap, pos)) = header(spec, frame) else {
                        continue;
                    };
                    let Some(plan) = Plan::build(table, bitmap, tertiary) else {
                        continue;
                    };
                    for strict in [true, false] {
                        let (g, p, generic, planned) = if strict {
                            walk_both::<true>(&plan, table, frame, bitmap, tertiary, pos)
                        } else {
                            walk_both::<false>(&plan, table, frame, bitmap, tertiary, pos)
                        };
                        assert_eq!(g, p, "{name}: {frame:02X?}");
                        if p.is_some() {
                            assert_eq!(generic, planned, "{name}: {frame:02X?}");
                        }
                        compared[usize::from(p.is_some())] += 1;
                    }
                }
            }
        }
        // Both outcomes were exercised, many times.
        assert!(compared[0] > 100 && compared[1] > 1000, "{compared:?}");
    }

    /// The decoder learns a plan from a clean decode and uses it: the second decode of a
    /// shape goes by the plan and finds the same fields, and a truncated frame of that shape
    /// still gets the generic walk's precise error.
    #[test]
    fn decoding_learns_a_plan_per_shape_and_answers_the_same_by_it() {
        // A spec of its own, so that no other test's decodes taught it anything.
        let spec = crate::Spec::from_toml("test", crate::shipped::SHIPPED[0].1).unwrap();
        let spec: &'static crate::Spec = Box::leak(Box::new(spec));
        let first = message_in(spec, "TERM0001");
        assert_eq!(spec.plans().len(), 1, "learned from the clean decode");
        assert!(spec.plans().get(&first.bitmaps()).is_some());
        let second = message_in(spec, "TERM0002");
        assert_eq!(spec.plans().len(), 1, "same shape, same plan");
        assert_eq!(second.str(41), Some("TERM0002"));
        assert_eq!(second.str(11), Some("000123"));
        let frame = second.buffer();
        let err = MessageView::decode(spec, frame.slice(..frame.len() - 3)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "field 41: truncated: needs 8 bytes, 5 left (byte offset 34)"
        );
    }

    /// A view decoded by a plan answers every accessor as one walked field by field, and a
    /// frame with a bad character fails with the same error and salvage either way. Each
    /// random message is decoded with a spec that has not met its shape (the generic walk)
    /// and with one that has (the plan, unless the message has more steps than a plan holds).
    #[test]
    fn views_decoded_by_a_plan_answer_as_walked_ones() {
        let mut rng = crate::testgen::Rng::new(0x5eed);
        let (mut planned, mut failed) = (0, 0);
        for &(name, toml) in crate::shipped::SHIPPED {
            for _ in 0..200 {
                // Each message its own specs: one taught its shape, one not.
                let spec = || -> &'static crate::Spec {
                    Box::leak(Box::new(crate::Spec::from_toml(name, toml).unwrap()))
                };
                let (taught, fresh) = (spec(), spec());
                let (mti, fields) = crate::testgen::random_message(taught, &mut rng);
                let mut b = MessageBuilder::new(taught, mti);
                for (n, v) in &fields {
                    b.set(*n, v).unwrap();
                }
                let frame = b.encode();
                let _learn = MessageView::decode(taught, frame.clone()).unwrap();
                let by_plan = MessageView::decode(taught, frame.clone()).unwrap();
                let walked = MessageView::decode(fresh, frame.clone()).unwrap();
                assert!(matches!(walked.places, super::Places::Walked(_)));
                // `fields` walks the bitmaps' set bits: exactly the present fields, in order,
                // as asking for every number would find them.
                let asked: Vec<u8> = (0..=255u8).filter(|&n| walked.has(n)).collect();
                let walked_fields: Vec<u8> = walked.fields().map(|f| f.number).collect();
                assert_eq!(walked_fields, asked, "{name}");
                let sent: Vec<u8> = fields.iter().map(|(n, _)| *n).collect();
                assert_eq!(walked_fields, sent, "{name}: the fields set");
                if !matches!(by_plan.places, super::Places::Planned { .. }) {
                    continue; // its plan's slot went to another shape
                }
                planned += 1;
                for n in 0..=255u8 {
                    assert_eq!(by_plan.range(n), walked.range(n), "{name} field {n}");
                    assert_eq!(by_plan.wire_range(n), walked.wire_range(n), "{name} {n}");
                    assert_eq!(by_plan.units(n), walked.units(n), "{name} field {n}");
                }
                assert_eq!(format!("{by_plan:?}"), format!("{walked:?}"), "{name}");
                // The same frame with a bad character in its last field's data.
                let (last, _) = fields.last().unwrap();
                let range = walked.range(*last).unwrap();
                let f = taught.entry(usize::from(*last));
                if range.is_empty() || f.encoding == crate::spec::Encoding::Binary {
                    continue;
                }
                let mut bad = frame.to_vec();
                bad[range.start] = 0xFF;
                let bad = bytes::Bytes::from(bad);
                match (
                    MessageView::decode(taught, bad.clone()),
                    MessageView::decode(fresh, bad),
                ) {
                    (Err(by_plan), Err(walked)) => {
                        assert_eq!(by_plan.to_string(), walked.to_string(), "{name}");
                        assert_eq!(by_plan.salvage(), walked.salvage(), "{name}");
                        failed += 1;
                    }
                    (by_plan, walked) => assert_eq!(by_plan.is_ok(), walked.is_ok(), "{name}"),
                }
            }
        }
        assert!(planned > 500, "{planned} of 800 decoded by a plan");
        assert!(failed > 300, "{failed} bad characters found");
    }

    fn message_in(spec: &'static crate::Spec, terminal: &str) -> MessageView<'static> {
        let mut b = MessageBuilder::new(spec, Mti::parse("0210").unwrap());
        b.set(3, "000000").unwrap().set(11, "000123").unwrap();
        b.set(39, "00").unwrap().set(41, terminal).unwrap();
        MessageView::decode(spec, b.encode()).unwrap()
    }

    #[test]
    fn encode_value_checks_before_it_writes() {
        let spec = shipped("iso8583-1987-ascii").unwrap();
        let f11 = spec.field(11).copied().unwrap();
        let mut out = Vec::new();
        assert!(f11.encode_value(b"12a456", &mut out).is_err());
        assert!(f11.encode_value(b"1234567", &mut out).is_err());
        assert!(out.is_empty());
        f11.encode_value(b"123456", &mut out).unwrap();
        assert_eq!(out, b"123456");
    }
}
