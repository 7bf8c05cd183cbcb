//! The dialect model: how each field of a message is laid out, loaded from TOML.
//!
//! A spec is parsed and validated once (every problem is reported at once, naming the field)
//! and then compiled into a flat table of 193 small `Copy` entries that the decoder indexes
//! by field number. The strings (names, notes) live beside the table, off the hot path.
//!
//! File format (see `specs/*.toml` for complete examples):
//!
//! ```toml
//! name = "iso8583-1987-ascii"
//! description = "..."
//! mti = "ascii"            # ascii | bcd
//! bitmap = "hex"           # hex (ASCII-hex) | binary
//! tertiary_bitmap = false  # true: field 65 is the tertiary bitmap, fields 129..=192 exist
//! encoding = "ascii"       # default data encoding of character fields
//! prefix = "ascii"         # default length-prefix encoding
//!
//! [fields]
//! 2 = { name = "Primary account number", class = "n", len = "llvar", max = 19, sensitivity = "pan" }
//! 52 = { name = "PIN data", class = "b", len = "fixed", max = 8, encoding = "hex", sensitivity = "pin" }
//!
//! [composite.90]
//! parts = [["original_mti", 4], ["original_stan", 6]]
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::error::{Error, Location, Reason, Result};
use crate::wire;

/// Highest field number a spec can define (fields 129..=192 need the tertiary bitmap).
pub const MAX_FIELD: u8 = 192;

/// The character class of a field's data, as in the standard's attribute notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataClass {
    /// Numeric digits `0-9`.
    N,
    /// Alphabetic `A-Za-z` and space (fixed fields are space padded).
    A,
    /// Special characters: printable ASCII that is neither letter nor digit.
    S,
    /// Alphabetic and numeric (and space).
    An,
    /// Alphabetic and special.
    As,
    /// Numeric and special.
    Ns,
    /// Alphabetic, numeric and special: printable ASCII `0x20..=0x7E`.
    Ans,
    /// Binary data.
    B,
    /// Track 2/3 code set: digits, `=` and `D` (separator); BCD nibbles `0-9`, `D`.
    Z,
    /// `x+n`: a sign `C` (credit) or `D` (debit) followed by digits.
    Xn,
}

impl DataClass {
    /// The class as written in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            DataClass::N => "n",
            DataClass::A => "a",
            DataClass::S => "s",
            DataClass::An => "an",
            DataClass::As => "as",
            DataClass::Ns => "ns",
            DataClass::Ans => "ans",
            DataClass::B => "b",
            DataClass::Z => "z",
            DataClass::Xn => "xn",
        }
    }

    /// Whether the field's value is bytes (shown as hex) rather than characters.
    pub fn is_binary(self) -> bool {
        self == DataClass::B
    }
}

/// How the length of a field is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LengthKind {
    /// Always `max` units long, no prefix.
    Fixed,
    /// Two-digit length prefix.
    Llvar,
    /// Three-digit length prefix.
    Lllvar,
    /// Four-digit length prefix.
    Llllvar,
}

impl LengthKind {
    /// Number of decimal digits of the prefix (0 for fixed).
    pub fn digits(self) -> u8 {
        match self {
            LengthKind::Fixed => 0,
            LengthKind::Llvar => 2,
            LengthKind::Lllvar => 3,
            LengthKind::Llllvar => 4,
        }
    }
}

/// How a field's data bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    /// One ASCII byte per character.
    Ascii,
    /// One EBCDIC (code page 500) byte per character.
    Ebcdic,
    /// Packed BCD, two digits a byte, right-justified: an odd length gets a leading pad nibble.
    Bcd,
    /// Packed BCD, left-justified: an odd length gets a trailing pad nibble.
    BcdLeft,
    /// Raw bytes (binary fields).
    Binary,
    /// Binary fields written as ASCII hex, two characters a byte (upper case on output).
    Hex,
}

/// How a length prefix is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrefixEncoding {
    /// ASCII decimal digits (`LL` = 2 bytes, `LLL` = 3, `LLLL` = 4).
    Ascii,
    /// EBCDIC decimal digits.
    Ebcdic,
    /// Packed BCD (`LL` = 1 byte, `LLL`/`LLLL` = 2 bytes).
    Bcd,
    /// Unsigned big-endian binary (`LL` = 1 byte, `LLL`/`LLLL` = 2 bytes).
    Binary,
}

/// What a length prefix counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PrefixCounts {
    /// Units of the data class: characters, digits (BCD nibbles) or bytes for binary.
    #[default]
    Units,
    /// Encoded bytes on the wire (e.g. hex characters of an ASCII-hex binary field).
    Bytes,
}

/// How the MTI is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtiEncoding {
    /// Four ASCII digits.
    Ascii,
    /// Two bytes of packed BCD.
    Bcd,
    /// Four EBCDIC digits.
    Ebcdic,
}

/// How bitmaps are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BitmapEncoding {
    /// Eight raw bytes per bitmap.
    Binary,
    /// Sixteen ASCII-hex characters per bitmap.
    Hex,
}

/// What kind of card data a field holds; drives masking and audit-log protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Sensitivity {
    /// Not card data.
    #[default]
    None,
    /// A primary account number: shown as first 6 + last 4 at most.
    Pan,
    /// Magnetic-stripe track data: never shown or stored.
    Track,
    /// A PIN block: never shown or stored.
    Pin,
    /// Card verification value: never shown or stored.
    Cvv,
    /// EMV BER-TLV data (field 55): shown tag by tag with the card-data tags hidden.
    /// (Beyond the four classes the issue lists: field 55 is neither wholly secret nor
    /// wholly safe, so it needs a class of its own.)
    Emv,
}

/// One field's layout. Small and `Copy`: the decoder keeps 193 of them in one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    /// Field number.
    pub number: u8,
    /// Whether the spec defines this field.
    pub defined: bool,
    /// Character class.
    pub class: DataClass,
    /// Fixed or variable length.
    pub length: LengthKind,
    /// Data encoding.
    pub encoding: Encoding,
    /// Length-prefix encoding.
    pub prefix: PrefixEncoding,
    /// What the prefix counts.
    pub prefix_counts: PrefixCounts,
    /// BCD pad nibble (0x0 or 0xF).
    pub pad: u8,
    /// Card-data class.
    pub sensitivity: Sensitivity,
    /// Maximum length in units (exact length for fixed fields).
    pub max: u16,
    /// Minimum length in units.
    pub min: u16,
    /// Encoded bytes of the length prefix (0 for fixed fields).
    pub prefix_bytes: u8,
    /// How the decoder's fast path checks this field's content (derived).
    pub(crate) fast: FastCheck,
    /// Encoded bytes of a fixed field (derived; 0 for variable fields).
    pub(crate) fixed_bytes: u16,
    /// Whether the bytes before the data (an ASCII prefix, or none) may join a run of
    /// content checks (derived).
    pub(crate) prefix_in_run: bool,
    /// How a builder checks a value for this field (derived).
    pub(crate) value_check: FastCheck,
}

/// Content checks the decoder can run over several adjacent fields at once. Adjacent fields
/// with the same check (and ASCII length prefixes between them, which are digits and so
/// valid in every one of these) are checked as one run of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FastCheck {
    /// Nothing to check (raw binary).
    Nothing,
    /// ASCII digits.
    Digits,
    /// Printable ASCII.
    Printable,
    /// ASCII letters, digits and space.
    AlnumSpace,
    /// ASCII hex digits.
    Hex,
    /// ASCII track data: digits, `=` and `D`.
    Track,
    /// Anything else: checked field by field.
    PerField,
}

impl FastCheck {
    fn of(class: DataClass, encoding: Encoding) -> FastCheck {
        match (encoding, class) {
            (Encoding::Binary, _) => FastCheck::Nothing,
            (Encoding::Hex, _) => FastCheck::Hex,
            (Encoding::Ascii, DataClass::N) => FastCheck::Digits,
            (Encoding::Ascii, DataClass::Ans) => FastCheck::Printable,
            (Encoding::Ascii, DataClass::An) => FastCheck::AlnumSpace,
            (Encoding::Ascii, DataClass::Z) => FastCheck::Track,
            _ => FastCheck::PerField,
        }
    }

    /// The check of a value as a builder is given it (characters, or bytes for a binary
    /// field). EBCDIC fields also need every character to have an EBCDIC code: per field.
    fn of_value(class: DataClass, encoding: Encoding) -> FastCheck {
        match (encoding, class.is_binary()) {
            (_, true) => FastCheck::Nothing,
            (Encoding::Ebcdic, false) => FastCheck::PerField,
            (_, false) => FastCheck::of(class, Encoding::Ascii),
        }
    }

    /// Whether `v` passes this check (`PerField`: the caller checks field by field).
    #[inline(always)]
    pub(crate) fn accepts(self, v: &[u8]) -> bool {
        match self {
            FastCheck::Digits => crate::wire::all_digits(v),
            FastCheck::Printable => crate::wire::all_printable(v),
            FastCheck::AlnumSpace => crate::wire::all_alnum_space(v),
            FastCheck::Hex => crate::wire::is_hex(v),
            FastCheck::Track => crate::wire::all_track(v),
            FastCheck::Nothing | FastCheck::PerField => true,
        }
    }

    /// [`FastCheck::accepts`] for a builder's value: one shorter than 16 bytes (most) is
    /// checked in line.
    #[inline(always)]
    pub(crate) fn accepts_value(self, v: &[u8]) -> bool {
        use crate::wire::{
            short_in_ranges, ALNUM_SPACE, DIGITS, HEX_DIGITS, PRINTABLE, TRACK_CHARS,
        };
        if v.len() >= 16 {
            return self.accepts(v);
        }
        match self {
            FastCheck::Digits => short_in_ranges(v, DIGITS),
            FastCheck::Printable => short_in_ranges(v, PRINTABLE),
            FastCheck::AlnumSpace => short_in_ranges(v, ALNUM_SPACE),
            FastCheck::Hex => short_in_ranges(v, HEX_DIGITS),
            FastCheck::Track => short_in_ranges(v, TRACK_CHARS),
            FastCheck::Nothing | FastCheck::PerField => true,
        }
    }
}

impl FieldSpec {
    const UNDEFINED: FieldSpec = FieldSpec {
        number: 0,
        defined: false,
        class: DataClass::B,
        length: LengthKind::Fixed,
        encoding: Encoding::Binary,
        prefix: PrefixEncoding::Binary,
        prefix_counts: PrefixCounts::Units,
        pad: 0,
        sensitivity: Sensitivity::None,
        max: 0,
        min: 0,
        prefix_bytes: 0,
        fast: FastCheck::Nothing,
        fixed_bytes: 0,
        prefix_in_run: false,
        value_check: FastCheck::Nothing,
    };

    /// Encoded bytes of a value that is `units` long.
    #[inline]
    pub fn encoded_len(&self, units: usize) -> usize {
        // (units * mul + add) >> shift per encoding, without a branch on the hot path.
        const SIZE: [(usize, usize, u32); 6] = [
            (1, 0, 0), // Ascii
            (1, 0, 0), // Ebcdic
            (1, 1, 1), // Bcd: two digits a byte
            (1, 1, 1), // BcdLeft
            (1, 0, 0), // Binary
            (2, 0, 0), // Hex: two characters a byte
        ];
        let (mul, add, shift) = SIZE[self.encoding as usize];
        (units * mul + add) >> shift
    }

    /// Units a field of `bytes` encoded bytes holds, when the prefix counts bytes.
    /// `None` when the byte count cannot be an encoding of whole units.
    #[inline]
    pub(crate) fn units_of_bytes(&self, bytes: usize) -> Option<usize> {
        match self.encoding {
            Encoding::Ascii | Encoding::Ebcdic | Encoding::Binary => Some(bytes),
            Encoding::Bcd | Encoding::BcdLeft => Some(bytes * 2),
            Encoding::Hex => bytes.is_multiple_of(2).then_some(bytes / 2),
        }
    }

    /// Units of a variable field whose length prefix is `raw`. `None` when the prefix is not
    /// a number, or counts bytes that cannot be whole units.
    #[inline]
    pub(crate) fn units_in_prefix(&self, raw: &[u8]) -> Option<usize> {
        let value = crate::wire::read_prefix(self.prefix, raw)?;
        match self.prefix_counts {
            PrefixCounts::Units => Some(value),
            PrefixCounts::Bytes => self.units_of_bytes(value),
        }
    }

    /// The value the length prefix holds for a field of `units` units.
    #[inline]
    pub(crate) fn prefix_value(&self, units: usize) -> usize {
        match self.prefix_counts {
            PrefixCounts::Units => units,
            PrefixCounts::Bytes => self.encoded_len(units),
        }
    }

    /// Check `value` (the field's logical value: characters, digits, or raw bytes for binary
    /// fields) against this field's length bounds and class, then append its encoding
    /// (without any length prefix) to `out`. Nothing is appended when the check fails.
    /// `out` takes bytes both ways: `Extend<&u8>` lets a `Vec` copy an ASCII or binary value
    /// with one `memcpy` rather than byte by byte.
    pub fn encode_value<O>(&self, value: &[u8], out: &mut O) -> Result<()>
    where
        O: Extend<u8> + for<'a> Extend<&'a u8>,
    {
        self.check_value(value)?;
        self.write_value(value, out);
        Ok(())
    }

    /// The checks of [`FieldSpec::encode_value`]: length bounds and class.
    #[inline]
    pub(crate) fn check_value(&self, value: &[u8]) -> Result<()> {
        let location = Location::Field(self.number);
        let units = value.len();
        if units < usize::from(self.min) || units > usize::from(self.max) {
            let reason = Reason::BadLength {
                length: units,
                min: usize::from(self.min),
                max: usize::from(self.max),
            };
            return Err(Error::encode(location, reason));
        }
        let class_ok = match self.value_check {
            FastCheck::PerField if self.encoding == Encoding::Ebcdic => {
                wire::class_ok(self.class, value)
                    && value.iter().all(|&a| wire::ascii_to_ebcdic(a).is_some())
            }
            FastCheck::PerField => wire::class_ok(self.class, value),
            // Packed track data takes `=` as the separator nibble D, like ASCII track data.
            check => check.accepts_value(value),
        };
        if !class_ok {
            let reason = Reason::InvalidCharacter { class: self.class };
            return Err(Error::encode(location, reason));
        }
        Ok(())
    }

    /// Append the encoding of a checked `value`.
    #[inline]
    pub(crate) fn write_value<O>(&self, value: &[u8], out: &mut O)
    where
        O: Extend<u8> + for<'a> Extend<&'a u8>,
    {
        match self.encoding {
            Encoding::Ascii | Encoding::Binary => out.extend(value),
            Encoding::Hex => wire::push_hex(out, value),
            Encoding::Ebcdic => out.extend(value.iter().filter_map(|&a| wire::ascii_to_ebcdic(a))),
            Encoding::Bcd => wire::ascii_to_bcd(value, true, self.pad, out),
            Encoding::BcdLeft => wire::ascii_to_bcd(value, false, self.pad, out),
        }
    }

    /// Whether the data is packed BCD.
    #[inline]
    pub fn is_bcd(&self) -> bool {
        matches!(self.encoding, Encoding::Bcd | Encoding::BcdLeft)
    }
}

/// A positional composite field (e.g. field 90, original data elements): fixed-width parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composite {
    /// `(name, width in characters)` in order.
    pub parts: Vec<(String, usize)>,
}

impl Composite {
    /// Split a composite field's text into its named parts. A value that ends early gives a
    /// short last part and leaves the rest out. No allocation.
    pub fn split<'v>(&'v self, value: &'v str) -> impl Iterator<Item = (&'v str, &'v str)> + 'v {
        let mut offset = 0usize;
        self.parts.iter().filter_map(move |(name, width)| {
            let start = offset;
            offset += width;
            value
                .get(start..offset.min(value.len()))
                .filter(|part| !part.is_empty())
                .map(|part| (name.as_str(), part))
        })
    }
}

/// A complete, validated dialect.
#[derive(Debug, Clone)]
pub struct Spec {
    name: String,
    description: String,
    mti: MtiEncoding,
    bitmap: BitmapEncoding,
    tertiary: bool,
    fields: Box<[FieldSpec; 193]>,
    names: BTreeMap<u8, String>,
    composites: BTreeMap<u8, Composite>,
    /// Layout plans the decoder made for bitmaps it met (see `plan`).
    plans: crate::plan::Plans,
}

impl Spec {
    /// Spec name (e.g. `iso8583-1987-ascii`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One-line description.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// MTI encoding.
    pub fn mti_encoding(&self) -> MtiEncoding {
        self.mti
    }

    /// Bitmap encoding.
    pub fn bitmap_encoding(&self) -> BitmapEncoding {
        self.bitmap
    }

    /// Whether field 65 is the tertiary bitmap (fields 129..=192 exist).
    pub fn has_tertiary_bitmap(&self) -> bool {
        self.tertiary
    }

    /// The layout of field `n`, if the spec defines it.
    #[inline]
    pub fn field(&self, n: u8) -> Option<&FieldSpec> {
        self.fields.get(usize::from(n)).filter(|f| f.defined)
    }

    /// The whole field table, indexed by field number.
    #[inline]
    pub(crate) fn table(&self) -> &[FieldSpec; 193] {
        &self.fields
    }

    /// The decoder's layout plans.
    #[inline]
    pub(crate) fn plans(&self) -> &crate::plan::Plans {
        &self.plans
    }

    /// The table entry for `n` (defined or not); `n` must be at most 192.
    #[inline]
    pub(crate) fn entry(&self, n: usize) -> &FieldSpec {
        &self.fields[n]
    }

    /// The field's name from the spec file.
    pub fn field_name(&self, n: u8) -> Option<&str> {
        self.names.get(&n).map(String::as_str)
    }

    /// The composite layout of field `n`, if the spec gives one.
    pub fn composite(&self, n: u8) -> Option<&Composite> {
        self.composites.get(&n)
    }

    /// Every defined field, in order.
    pub fn fields(&self) -> impl Iterator<Item = &FieldSpec> {
        self.fields.iter().filter(|f| f.defined)
    }

    /// Bytes a bitmap takes on the wire.
    #[inline]
    pub(crate) fn bitmap_len(&self) -> usize {
        match self.bitmap {
            BitmapEncoding::Binary => 8,
            BitmapEncoding::Hex => 16,
        }
    }

    /// Bytes the MTI takes on the wire.
    #[inline]
    pub(crate) fn mti_len(&self) -> usize {
        match self.mti {
            MtiEncoding::Ascii | MtiEncoding::Ebcdic => 4,
            MtiEncoding::Bcd => 2,
        }
    }

    /// Whether bit `n` is a bitmap-presence bit rather than a data field.
    #[inline]
    pub(crate) fn is_bitmap_bit(&self, n: usize) -> bool {
        n == 1 || (n == 65 && self.tertiary)
    }

    /// Load and validate a spec from TOML text. `origin` (a file name) is used in errors.
    pub fn from_toml(origin: &str, text: &str) -> Result<Spec> {
        let raw: RawSpec = toml::from_str(text).map_err(|e| Error::Spec {
            spec: origin.to_string(),
            problems: vec![e.to_string().trim().replace('\n', " ")],
        })?;
        raw.compile(origin)
    }

    /// Load a spec from a file.
    pub fn from_file(path: &std::path::Path) -> Result<Spec> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Spec {
            spec: origin.clone(),
            problems: vec![format!("cannot read: {e}")],
        })?;
        Spec::from_toml(&origin, &text)
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.description)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: String,
    #[serde(default)]
    description: String,
    mti: MtiEncoding,
    bitmap: BitmapEncoding,
    #[serde(default)]
    tertiary_bitmap: bool,
    encoding: Option<Encoding>,
    prefix: Option<PrefixEncoding>,
    fields: BTreeMap<String, RawField>,
    #[serde(default)]
    composite: BTreeMap<String, RawComposite>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    #[serde(default)]
    name: String,
    class: DataClass,
    len: LengthKind,
    max: u16,
    min: Option<u16>,
    encoding: Option<Encoding>,
    prefix: Option<PrefixEncoding>,
    #[serde(default)]
    prefix_counts: PrefixCounts,
    pad: Option<String>,
    #[serde(default)]
    sensitivity: Sensitivity,
    /// Free text: where a definition is a convention rather than the standard.
    #[serde(default)]
    #[allow(dead_code)]
    note: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComposite {
    parts: Vec<(String, usize)>,
}

impl RawSpec {
    fn compile(self, origin: &str) -> Result<Spec> {
        let mut problems = Vec::new();
        let mut fields = Box::new([FieldSpec::UNDEFINED; 193]);
        let mut names = BTreeMap::new();
        for (key, raw) in &self.fields {
            let Some(n) = key
                .parse::<u8>()
                .ok()
                .filter(|n| (2..=MAX_FIELD).contains(n))
            else {
                problems.push(format!("fields.{key}: field number must be 2..=192"));
                continue;
            };
            if n == 65 && self.tertiary_bitmap {
                problems
                    .push("fields.65: is the tertiary bitmap when tertiary_bitmap = true".into());
                continue;
            }
            if n > 128 && !self.tertiary_bitmap {
                problems.push(format!(
                    "fields.{n}: fields above 128 need tertiary_bitmap = true"
                ));
                continue;
            }
            match compile_field(n, raw, self.encoding, self.prefix) {
                Ok(f) => {
                    fields[usize::from(n)] = f;
                    names.insert(n, raw.name.clone());
                }
                Err(mut p) => problems.append(&mut p),
            }
        }
        let mut composites = BTreeMap::new();
        for (key, raw) in self.composite {
            let n = key.parse::<u8>().ok();
            match n.and_then(|n| fields.get(usize::from(n)).filter(|f| f.defined)) {
                Some(f) if !f.class.is_binary() => {
                    let total: usize = raw.parts.iter().map(|(_, w)| w).sum();
                    if total > usize::from(f.max) || raw.parts.iter().any(|(_, w)| *w == 0) {
                        problems.push(format!(
                            "composite.{key}: parts total {total} characters, field max is {}",
                            f.max
                        ));
                    }
                    composites.insert(f.number, Composite { parts: raw.parts });
                }
                _ => problems.push(format!("composite.{key}: not a defined character field")),
            }
        }
        if !problems.is_empty() {
            return Err(Error::Spec {
                spec: origin.to_string(),
                problems,
            });
        }
        Ok(Spec {
            name: self.name,
            description: self.description,
            mti: self.mti,
            bitmap: self.bitmap,
            tertiary: self.tertiary_bitmap,
            fields,
            names,
            composites,
            plans: crate::plan::Plans::new(),
        })
    }
}

fn compile_field(
    n: u8,
    raw: &RawField,
    default_encoding: Option<Encoding>,
    default_prefix: Option<PrefixEncoding>,
) -> std::result::Result<FieldSpec, Vec<String>> {
    let mut problems = Vec::new();
    let mut problem = |s: String| problems.push(format!("fields.{n}: {s}"));
    let encoding = match (raw.encoding, raw.class) {
        (Some(e), _) => e,
        (None, DataClass::B) => Encoding::Binary,
        (None, _) => default_encoding.unwrap_or(Encoding::Ascii),
    };
    let prefix = raw
        .prefix
        .or(default_prefix)
        .unwrap_or(PrefixEncoding::Ascii);
    let allowed = match raw.class {
        DataClass::B => matches!(encoding, Encoding::Binary | Encoding::Hex),
        DataClass::N | DataClass::Z => !matches!(encoding, Encoding::Binary | Encoding::Hex),
        _ => matches!(encoding, Encoding::Ascii | Encoding::Ebcdic),
    };
    if !allowed {
        problem(format!(
            "class {} cannot use encoding {encoding:?}",
            raw.class.as_str()
        ));
    }
    let pad = match raw.pad.as_deref() {
        None if encoding == Encoding::BcdLeft => 0xF,
        None => 0,
        Some("0") => 0,
        Some("F" | "f") => 0xF,
        Some(other) => {
            problem(format!("pad must be \"0\" or \"F\", not {other:?}"));
            0
        }
    };
    if raw.pad.is_some() && !matches!(encoding, Encoding::Bcd | Encoding::BcdLeft) {
        problem("pad only applies to BCD encodings".into());
    }
    if raw.max == 0 {
        problem("max must be at least 1".into());
    }
    let min = match raw.len {
        LengthKind::Fixed => raw.max,
        _ => raw.min.unwrap_or(0),
    };
    if min > raw.max {
        problem(format!("min {min} is above max {}", raw.max));
    }
    if raw.len == LengthKind::Fixed && raw.min.is_some_and(|m| m != raw.max) {
        problem("a fixed field has min = max".into());
    }
    let mut spec = FieldSpec {
        number: n,
        defined: true,
        class: raw.class,
        length: raw.len,
        encoding,
        prefix,
        prefix_counts: raw.prefix_counts,
        pad,
        sensitivity: raw.sensitivity,
        max: raw.max,
        min,
        prefix_bytes: 0,
        fast: FastCheck::of(raw.class, encoding),
        fixed_bytes: 0,
        prefix_in_run: raw.len == LengthKind::Fixed || prefix == PrefixEncoding::Ascii,
        value_check: FastCheck::of_value(raw.class, encoding),
    };
    if raw.len == LengthKind::Fixed {
        spec.fixed_bytes = spec.encoded_len(usize::from(raw.max)) as u16;
    }
    let digits = raw.len.digits();
    spec.prefix_bytes = match (raw.len, prefix) {
        (LengthKind::Fixed, _) => 0,
        (_, PrefixEncoding::Ascii | PrefixEncoding::Ebcdic) => digits,
        (_, PrefixEncoding::Bcd | PrefixEncoding::Binary) => digits.div_ceil(2),
    };
    if raw.len != LengthKind::Fixed {
        let largest = spec.prefix_value(usize::from(raw.max));
        let limit = match prefix {
            PrefixEncoding::Binary => (1usize << (8 * u32::from(spec.prefix_bytes))) - 1,
            _ => 10usize.pow(u32::from(digits)) - 1,
        };
        if largest > limit {
            problem(format!(
                "max {} needs a prefix of {largest}, above the {limit} a {:?} prefix holds",
                raw.max, raw.len
            ));
        }
    }
    if problems.is_empty() {
        Ok(spec)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINI: &str = r#"
        name = "mini"
        mti = "ascii"
        bitmap = "hex"
        [fields]
        2 = { class = "n", len = "llvar", max = 19, sensitivity = "pan" }
        3 = { class = "n", len = "fixed", max = 6 }
        90 = { class = "n", len = "fixed", max = 42 }
        [composite.90]
        parts = [["mti", 4], ["stan", 6], ["rest", 32]]
    "#;

    #[test]
    fn loads_a_small_spec() {
        let spec = Spec::from_toml("mini", MINI).unwrap();
        assert_eq!(spec.name(), "mini");
        let f2 = spec.field(2).unwrap();
        assert_eq!(f2.prefix_bytes, 2);
        assert_eq!(f2.sensitivity, Sensitivity::Pan);
        assert!(spec.field(4).is_none());
        let parts: Vec<_> = spec
            .composite(90)
            .unwrap()
            .split("0200123456rest")
            .collect();
        assert_eq!(
            parts,
            vec![("mti", "0200"), ("stan", "123456"), ("rest", "rest")]
        );
    }

    #[test]
    fn reports_every_problem_at_once_with_its_field() {
        let text = r#"
            name = "bad"
            mti = "ascii"
            bitmap = "hex"
            [fields]
            1 = { class = "b", len = "fixed", max = 8 }
            2 = { class = "n", len = "llvar", max = 100 }
            3 = { class = "b", len = "fixed", max = 6, encoding = "bcd" }
            4 = { class = "n", len = "lllvar", max = 5, min = 9 }
            130 = { class = "n", len = "fixed", max = 1 }
        "#;
        let Err(Error::Spec { problems, .. }) = Spec::from_toml("bad", text) else {
            panic!("expected a spec error");
        };
        let all = problems.join("\n");
        for needle in [
            "fields.1:",
            "fields.2:",
            "fields.3:",
            "fields.4:",
            "fields.130:",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
    }

    #[test]
    fn rejects_unknown_keys() {
        let text = "name='x'\nmti='ascii'\nbitmap='hex'\ncolour='red'\n[fields]\n";
        let err = Spec::from_toml("x", text).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn binary_prefix_limits_follow_the_prefix_width() {
        let text = r#"
            name = "binprefix"
            mti = "ascii"
            bitmap = "binary"
            [fields]
            48 = { class = "ans", len = "llvar", max = 255, prefix = "binary" }
            55 = { class = "b", len = "lllvar", max = 2000, prefix = "binary" }
        "#;
        let spec = Spec::from_toml("binprefix", text).unwrap();
        assert_eq!(spec.field(48).unwrap().prefix_bytes, 1);
        assert_eq!(spec.field(55).unwrap().prefix_bytes, 2);
    }
}
