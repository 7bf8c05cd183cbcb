//! The crate's one error type.
//!
//! Errors say *where* (field number, byte offset) and *why*, never *what*: no variant
//! carries a field value, so an error can be logged without leaking a PAN or track data
//! (moov-io/iso8583 had to add a `SafeError` after values reached logs; we start safe).
//! Decode errors are small `Copy`-able values on the hot path; only spec-loading errors,
//! which happen once at start-up, own strings.

use std::fmt;
use std::ops::Range;

/// Which part of a message an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// The message type indicator.
    Mti,
    /// Bitmap 1 (primary), 2 (secondary) or 3 (tertiary).
    Bitmap(u8),
    /// A data element, 2..=192.
    Field(u8),
    /// The message as a whole (e.g. trailing bytes, too long).
    Message,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Mti => f.write_str("MTI"),
            Location::Bitmap(1) => f.write_str("primary bitmap"),
            Location::Bitmap(2) => f.write_str("secondary bitmap"),
            Location::Bitmap(_) => f.write_str("tertiary bitmap"),
            Location::Field(n) => write!(f, "field {n}"),
            Location::Message => f.write_str("message"),
        }
    }
}

/// Why a message could not be decoded or encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The buffer ends before the element does: more bytes are needed.
    Truncated {
        /// Bytes the element needs from its start.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// MTI is not four decimal digits.
    BadMti,
    /// A hex bitmap holds a character outside `0-9A-Fa-f`.
    BadBitmap,
    /// A bitmap bit is set for a field the spec does not define.
    UnknownField,
    /// The length prefix is not a number in its encoding.
    BadLengthPrefix,
    /// The length is outside the field's bounds (a fixed field has min = max).
    BadLength {
        /// Length found, in the field's units.
        length: usize,
        /// Minimum length, in the field's units.
        min: usize,
        /// Maximum length, in the field's units.
        max: usize,
    },
    /// A byte is not allowed in the field's data class.
    InvalidCharacter {
        /// The data class the field is declared with.
        class: crate::spec::DataClass,
    },
    /// A BCD pad nibble is not the spec's pad value.
    BadPadding,
    /// Bytes remain after the last field the bitmap announces.
    TrailingBytes {
        /// How many bytes remain.
        count: usize,
    },
    /// The message is longer than 65 535 bytes (offsets are kept in 16 bits).
    TooLong,
    /// The field is not part of the spec (encoding side).
    NotInSpec,
    /// The MTI cannot be turned into a response MTI (it already is one).
    NotARequest,
    /// A bitmap field (1 or 65) cannot be set directly; the encoder writes it.
    BitmapField,
    /// A BER-TLV tag is longer than 4 bytes or a length longer than 4 bytes.
    BadTlv,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Reason::Truncated { needed, available } => {
                write!(f, "truncated: needs {needed} bytes, {available} left")
            }
            Reason::BadMti => f.write_str("MTI is not 4 decimal digits"),
            Reason::BadBitmap => f.write_str("bitmap is not valid hex"),
            Reason::UnknownField => f.write_str("bit set for a field the spec does not define"),
            Reason::BadLengthPrefix => f.write_str("length prefix is not a number"),
            Reason::BadLength { length, min, max } if min == max => {
                write!(f, "length {length}, the field is fixed at {max}")
            }
            Reason::BadLength { length, min, max } => {
                write!(f, "length {length} outside the allowed {min}..={max}")
            }
            Reason::InvalidCharacter { class } => {
                write!(f, "character not allowed in class {}", class.as_str())
            }
            Reason::BadPadding => f.write_str("BCD pad nibble is not the spec's pad value"),
            Reason::TrailingBytes { count } => write!(f, "{count} bytes after the last field"),
            Reason::TooLong => f.write_str("message longer than 65535 bytes"),
            Reason::NotInSpec => f.write_str("field is not defined by the spec"),
            Reason::NotARequest => f.write_str("MTI is not a request or advice"),
            Reason::BitmapField => f.write_str("bitmap fields are written by the encoder"),
            Reason::BadTlv => f.write_str("malformed BER-TLV tag or length"),
        }
    }
}

/// What could still be read of a message that failed to decode, as byte ranges into the
/// buffer that was decoded (never the values themselves).
///
/// The acceptor needs the MTI, STAN (11) and terminal id (41) to answer a broken request
/// with response code 30 so that the terminal can match the answer. A character-class
/// error does not stop the structural walk, so fields after the bad one are still found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Salvage {
    /// The MTI as four ASCII digits, when it was readable.
    pub mti: Option<[u8; 4]>,
    /// Range of field 11's encoded bytes.
    pub stan: Option<(u16, u16)>,
    /// Range of field 41's encoded bytes.
    pub terminal_id: Option<(u16, u16)>,
}

impl Salvage {
    /// Field 11's encoded bytes in `buf`, if they were readable.
    pub fn stan<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        self.stan.and_then(|(s, e)| buf.get(range(s, e)))
    }

    /// Field 41's encoded bytes in `buf`, if they were readable.
    pub fn terminal_id<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        self.terminal_id.and_then(|(s, e)| buf.get(range(s, e)))
    }
}

fn range(start: u16, end: u16) -> Range<usize> {
    usize::from(start)..usize::from(end)
}

/// The error type of `switchyard-iso8583`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A message could not be decoded.
    #[error("{location}: {reason} (byte offset {offset})")]
    Decode {
        /// The element that failed.
        location: Location,
        /// Byte offset from the start of the message where the failing element starts
        /// (for invalid characters: the offending byte).
        offset: usize,
        /// Why.
        reason: Reason,
        /// What could still be read, for a format-error response.
        salvage: Salvage,
    },
    /// A message could not be built or encoded.
    #[error("{location}: {reason}")]
    Encode {
        /// The element that failed.
        location: Location,
        /// Why.
        reason: Reason,
    },
    /// A BER-TLV structure (field 55) could not be parsed.
    #[error("BER-TLV: {reason} (byte offset {offset})")]
    Tlv {
        /// Offset within the field data.
        offset: usize,
        /// Why.
        reason: Reason,
    },
    /// A spec file is invalid; every problem found is listed.
    #[error("spec {spec}: {}", .problems.join("; "))]
    Spec {
        /// Spec name or path.
        spec: String,
        /// One line per problem, each naming its location.
        problems: Vec<String>,
    },
    /// Text given as hex (CLI input, JSON binary field values) is not hex.
    #[error("{location}: not valid hex at character {offset}")]
    Hex {
        /// Which element the hex was for.
        location: Location,
        /// Offending character index.
        offset: usize,
    },
}

impl Error {
    /// The salvage of a decode error (empty for other errors).
    pub fn salvage(&self) -> Salvage {
        match self {
            Error::Decode { salvage, .. } => *salvage,
            _ => Salvage::default(),
        }
    }

    /// Whether a decode failed only because the buffer ended early (more bytes may complete it).
    pub fn is_truncated(&self) -> bool {
        matches!(
            self,
            Error::Decode {
                reason: Reason::Truncated { .. },
                ..
            }
        )
    }

    pub(crate) fn encode(location: Location, reason: Reason) -> Self {
        Error::Encode { location, reason }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
