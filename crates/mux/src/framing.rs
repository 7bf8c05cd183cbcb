//! Length-prefixed framing: how ISO 8583 messages are cut out of a TCP stream.
//!
//! Real hosts put a length before each message: 2 bytes binary big-endian (the most
//! common), 4 ASCII digits, 2 bytes BCD or 4 bytes binary, counting itself or not, and some
//! add a fixed header after the prefix (the 5-byte TPDU of many POS networks, whose source and
//! destination are swapped on the reply). [`FrameCodec`] is a tokio-util `Decoder`/`Encoder`
//! for all of them.
//!
//! The announced length is checked against the maximum before a single byte is reserved
//! (tokio's `LengthDelimitedCodec` does the same), "need more bytes" is `Ok(None)` while a
//! malformed prefix is an error, and a frame comes out as `Bytes` split off the read buffer:
//! the message is never copied into an owned structure.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::{MuxError, Result, Side};

/// The length prefix before every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LengthPrefix {
    /// Two bytes, binary big-endian (0..=65535).
    Binary2,
    /// Four ASCII decimal digits (0..=9999).
    Ascii4,
    /// Two bytes of packed BCD, four digits (0..=9999).
    Bcd2,
    /// Four bytes, binary big-endian.
    Binary4,
}

impl LengthPrefix {
    /// Every variant, for configuration parsing and tests.
    pub const ALL: [LengthPrefix; 4] = [
        LengthPrefix::Binary2,
        LengthPrefix::Ascii4,
        LengthPrefix::Bcd2,
        LengthPrefix::Binary4,
    ];

    /// Bytes the prefix takes.
    pub fn width(self) -> usize {
        match self {
            LengthPrefix::Binary2 | LengthPrefix::Bcd2 => 2,
            LengthPrefix::Ascii4 | LengthPrefix::Binary4 => 4,
        }
    }

    /// The largest value the prefix can hold.
    pub fn max_value(self) -> usize {
        match self {
            LengthPrefix::Binary2 => 0xFFFF,
            LengthPrefix::Ascii4 | LengthPrefix::Bcd2 => 9999,
            LengthPrefix::Binary4 => u32::MAX as usize,
        }
    }

    /// The configuration name (`binary2`, `ascii4`, `bcd2`, `binary4`).
    pub fn name(self) -> &'static str {
        match self {
            LengthPrefix::Binary2 => "binary2",
            LengthPrefix::Ascii4 => "ascii4",
            LengthPrefix::Bcd2 => "bcd2",
            LengthPrefix::Binary4 => "binary4",
        }
    }

    /// The variant with this configuration name.
    pub fn from_name(name: &str) -> Option<LengthPrefix> {
        LengthPrefix::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Read the prefix value from exactly `width()` bytes; `None` when it is not a number.
    fn read(self, p: &[u8]) -> Option<usize> {
        match (self, p) {
            (LengthPrefix::Binary2, &[a, b]) => Some(usize::from(u16::from_be_bytes([a, b]))),
            (LengthPrefix::Binary4, &[a, b, c, d]) => {
                usize::try_from(u32::from_be_bytes([a, b, c, d])).ok()
            }
            (LengthPrefix::Ascii4, digits) => digits.iter().try_fold(0usize, |acc, &d| {
                d.is_ascii_digit().then(|| acc * 10 + usize::from(d - b'0'))
            }),
            (LengthPrefix::Bcd2, packed) => packed.iter().try_fold(0usize, |acc, &b| {
                let (hi, lo) = (b >> 4, b & 0x0F);
                (hi <= 9 && lo <= 9).then(|| acc * 100 + usize::from(hi * 10 + lo))
            }),
            _ => None,
        }
    }

    /// Append the prefix for `value` (the caller checked `value <= max_value()`).
    fn write(self, value: usize, out: &mut BytesMut) {
        match self {
            LengthPrefix::Binary2 => out.put_u16(value as u16),
            LengthPrefix::Binary4 => out.put_u32(value as u32),
            LengthPrefix::Ascii4 => {
                for div in [1000, 100, 10, 1] {
                    out.put_u8(b'0' + (value / div % 10) as u8);
                }
            }
            LengthPrefix::Bcd2 => {
                let (hi, lo) = (value / 100 % 100, value % 100);
                out.put_u8((((hi / 10) << 4) | (hi % 10)) as u8);
                out.put_u8((((lo / 10) << 4) | (lo % 10)) as u8);
            }
        }
    }
}

impl fmt::Display for LengthPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A fixed header between the length prefix and the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Header {
    /// No header.
    None,
    /// A header of this many bytes, sent back unchanged on the reply.
    Fixed(u8),
    /// The 5-byte TPDU (id, destination, source): destination and source are swapped on the
    /// reply.
    Tpdu,
}

impl Header {
    /// Bytes the header takes.
    pub fn len(self) -> usize {
        match self {
            Header::None => 0,
            Header::Fixed(n) => usize::from(n),
            Header::Tpdu => 5,
        }
    }

    /// Whether there is no header.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// The header to send with the reply to a frame that came with `request_header`.
    pub fn reply_to(self, request_header: &Bytes) -> Bytes {
        match (self, &request_header[..]) {
            (Header::Tpdu, &[id, d1, d2, s1, s2]) => Bytes::copy_from_slice(&[id, s1, s2, d1, d2]),
            _ => request_header.clone(),
        }
    }
}

/// How frames are laid out on one listener or link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// The length prefix.
    pub prefix: LengthPrefix,
    /// Whether the prefix value counts the prefix's own bytes.
    pub prefix_includes_itself: bool,
    /// The header after the prefix.
    pub header: Header,
    /// The largest frame accepted or sent, header and message (not the prefix).
    pub max_frame_len: usize,
}

impl Default for Framing {
    /// 2-byte binary prefix that does not count itself, no header, 8 KiB frames.
    fn default() -> Self {
        Framing {
            prefix: LengthPrefix::Binary2,
            prefix_includes_itself: false,
            header: Header::None,
            max_frame_len: 8 * 1024,
        }
    }
}

impl Framing {
    /// Check that the settings can work together.
    pub fn validate(&self) -> Result<()> {
        let own = if self.prefix_includes_itself {
            self.prefix.width()
        } else {
            0
        };
        if self.max_frame_len <= self.header.len() {
            return Err(MuxError::Config(format!(
                "max frame length {} leaves no room after the {}-byte header",
                self.max_frame_len,
                self.header.len()
            )));
        }
        if self.max_frame_len + own > self.prefix.max_value() {
            return Err(MuxError::Config(format!(
                "max frame length {} does not fit a {} prefix (at most {})",
                self.max_frame_len,
                self.prefix,
                self.prefix.max_value() - own
            )));
        }
        Ok(())
    }
}

/// One frame: the header (empty without one) and the ISO 8583 message, both slices of the
/// buffer the frame was read into. An outgoing frame may carry a [`Patch`], applied while
/// it is written, so that a forwarded message is changed without being re-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The fixed header after the prefix.
    pub header: Bytes,
    /// The ISO 8583 message.
    pub message: Bytes,
    /// Bytes written over part of `message` on the way out.
    pub patch: Option<Patch>,
}

impl Frame {
    /// A frame with no header.
    pub fn new(message: Bytes) -> Frame {
        Frame {
            header: Bytes::new(),
            message,
            patch: None,
        }
    }

    /// A frame with a header.
    pub fn with_header(header: Bytes, message: Bytes) -> Frame {
        Frame {
            header,
            message,
            patch: None,
        }
    }
}

/// Up to 16 bytes written over `message[at..at + len]` when a frame is encoded (a STAN is 6
/// ASCII digits or 3 BCD bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patch {
    at: usize,
    len: u8,
    bytes: [u8; 16],
}

impl Patch {
    /// A patch of `bytes` at offset `at` of the message; `None` if longer than 16 bytes.
    pub fn new(at: usize, bytes: &[u8]) -> Option<Patch> {
        let mut buf = [0u8; 16];
        buf.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(Patch {
            at,
            len: bytes.len() as u8,
            bytes: buf,
        })
    }

    /// The bytes written.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The tokio-util codec for one [`Framing`].
#[derive(Debug, Clone)]
pub struct FrameCodec {
    framing: Framing,
    /// Stream offset of the start of the read buffer (for error messages).
    consumed: u64,
}

impl FrameCodec {
    /// A codec for `framing`.
    pub fn new(framing: Framing) -> FrameCodec {
        FrameCodec {
            framing,
            consumed: 0,
        }
    }

    /// The framing.
    pub fn framing(&self) -> &Framing {
        &self.framing
    }

    /// Bytes of the stream consumed by complete frames so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The payload length (header + message) announced by a complete prefix.
    fn payload_len(&self, prefix: &[u8]) -> Result<usize> {
        let f = &self.framing;
        let bad = || MuxError::BadLengthPrefix {
            prefix: f.prefix,
            offset: self.consumed,
        };
        let value = f.prefix.read(prefix).ok_or_else(bad)?;
        let length = if f.prefix_includes_itself {
            value.checked_sub(f.prefix.width()).ok_or_else(bad)?
        } else {
            value
        };
        if length > f.max_frame_len {
            return Err(MuxError::FrameTooLong {
                length,
                max: f.max_frame_len,
                offset: self.consumed,
            });
        }
        Ok(length)
    }

    /// Encode `frame` into `dst` (also used by writers that gather several frames).
    pub fn encode_frame(&self, frame: &Frame, dst: &mut BytesMut) -> Result<()> {
        let f = &self.framing;
        let length = frame.header.len() + frame.message.len();
        if length > f.max_frame_len {
            return Err(MuxError::OutgoingTooLong {
                length,
                max: f.max_frame_len,
            });
        }
        let own = if f.prefix_includes_itself {
            f.prefix.width()
        } else {
            0
        };
        dst.reserve(f.prefix.width() + length);
        f.prefix.write(length + own, dst);
        dst.extend_from_slice(&frame.header);
        match frame.patch {
            Some(p) if p.at + usize::from(p.len) <= frame.message.len() => {
                dst.extend_from_slice(&frame.message[..p.at]);
                dst.extend_from_slice(p.bytes());
                dst.extend_from_slice(&frame.message[p.at + usize::from(p.len)..]);
            }
            Some(_) => {
                return Err(MuxError::Config(
                    "patch reaches past the end of the message".into(),
                ))
            }
            None => dst.extend_from_slice(&frame.message),
        }
        Ok(())
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = MuxError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>> {
        let width = self.framing.prefix.width();
        loop {
            let Some(prefix) = src.get(..width) else {
                return Ok(None);
            };
            let length = self.payload_len(prefix)?;
            // A zero-length frame is a keep-alive some hosts send: skip it.
            if length == 0 {
                src.advance(width);
                self.consumed += width as u64;
                continue;
            }
            let header_len = self.framing.header.len();
            if length < header_len + 1 {
                return Err(MuxError::FrameTooShort {
                    length,
                    header: header_len,
                    offset: self.consumed,
                });
            }
            if src.len() < width + length {
                // Reserve only what this (already bounded) frame still needs.
                src.reserve(width + length - src.len());
                return Ok(None);
            }
            src.advance(width);
            let mut payload = src.split_to(length).freeze();
            self.consumed += (width + length) as u64;
            let message = payload.split_off(header_len);
            return Ok(Some(Frame::with_header(payload, message)));
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => {
                let width = self.framing.prefix.width();
                let needed = src
                    .get(..width)
                    .and_then(|p| self.payload_len(p).ok())
                    .map_or(0, |l| l + width);
                Err(MuxError::TruncatedFrame {
                    offset: self.consumed,
                    needed,
                    available: src.len(),
                })
            }
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = MuxError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<()> {
        self.encode_frame(&frame, dst)
    }
}

impl From<std::io::Error> for MuxError {
    /// I/O errors that reach a codec through tokio-util's `Framed` wrappers.
    fn from(source: std::io::Error) -> Self {
        MuxError::Io {
            side: Side::Local,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framings() -> Vec<Framing> {
        let mut all = Vec::new();
        for prefix in LengthPrefix::ALL {
            for prefix_includes_itself in [false, true] {
                for header in [Header::None, Header::Fixed(3), Header::Tpdu] {
                    all.push(Framing {
                        prefix,
                        prefix_includes_itself,
                        header,
                        max_frame_len: 4000,
                    });
                }
            }
        }
        all
    }

    fn header_for(f: &Framing) -> Bytes {
        Bytes::from(
            (0..f.header.len() as u8)
                .map(|i| 0x60 + i)
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn every_variant_round_trips_many_frames_fed_byte_by_byte() {
        for framing in framings() {
            let mut codec = FrameCodec::new(framing);
            let frames: Vec<Frame> = [1usize, 2, 99, 100, 255, 256, 3000]
                .iter()
                .map(|&n| {
                    let msg: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
                    Frame::with_header(header_for(&framing), Bytes::from(msg))
                })
                .collect();
            let mut wire = BytesMut::new();
            for f in &frames {
                codec.encode(f.clone(), &mut wire).unwrap();
            }
            // Feed one byte at a time: every prefix of the stream is "need more", never an error.
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for &b in wire.iter() {
                buf.put_u8(b);
                while let Some(f) = codec.decode(&mut buf).unwrap() {
                    out.push(f);
                }
            }
            assert_eq!(out, frames, "{framing:?}");
            assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
        }
    }

    #[test]
    fn prefix_encodings_are_the_documented_bytes() {
        let cases = [
            (LengthPrefix::Binary2, false, vec![0x01, 0x2C]),
            (LengthPrefix::Ascii4, false, b"0300".to_vec()),
            (LengthPrefix::Bcd2, false, vec![0x03, 0x00]),
            (LengthPrefix::Binary4, false, vec![0, 0, 0x01, 0x2C]),
            (LengthPrefix::Binary2, true, vec![0x01, 0x2E]),
            (LengthPrefix::Ascii4, true, b"0304".to_vec()),
        ];
        for (prefix, own, expected) in cases {
            let framing = Framing {
                prefix,
                prefix_includes_itself: own,
                ..Framing::default()
            };
            let mut out = BytesMut::new();
            FrameCodec::new(framing)
                .encode(Frame::new(Bytes::from(vec![b'x'; 300])), &mut out)
                .unwrap();
            assert_eq!(&out[..prefix.width()], &expected[..], "{prefix} own={own}");
        }
    }

    #[test]
    fn oversized_prefix_is_refused_before_any_allocation() {
        let mut codec = FrameCodec::new(Framing::default());
        let mut buf = BytesMut::from(&[0xFF, 0xFF, 0x00][..]);
        let cap = buf.capacity();
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(
                err,
                MuxError::FrameTooLong {
                    length: 65535,
                    max: 8192,
                    offset: 0
                }
            ),
            "{err}"
        );
        assert_eq!(buf.capacity(), cap, "nothing reserved for a refused frame");
    }

    #[test]
    fn bad_prefixes_name_their_offset() {
        let ascii = Framing {
            prefix: LengthPrefix::Ascii4,
            ..Framing::default()
        };
        let mut codec = FrameCodec::new(ascii);
        let mut buf = BytesMut::from(&b"0002OK00x1"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().message, &b"OK"[..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, MuxError::BadLengthPrefix { offset: 6, .. }),
            "{err}"
        );

        let bcd = Framing {
            prefix: LengthPrefix::Bcd2,
            ..Framing::default()
        };
        let mut buf = BytesMut::from(&[0x0A, 0x00][..]);
        assert!(FrameCodec::new(bcd).decode(&mut buf).is_err());

        let own = Framing {
            prefix_includes_itself: true,
            ..Framing::default()
        };
        let mut buf = BytesMut::from(&[0x00, 0x01][..]);
        assert!(FrameCodec::new(own).decode(&mut buf).is_err());
    }

    #[test]
    fn eof_mid_frame_is_an_error_and_clean_eof_is_not() {
        let mut codec = FrameCodec::new(Framing::default());
        let mut buf = BytesMut::from(&[0x00, 0x05, b'a', b'b'][..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        let err = codec.decode_eof(&mut buf).unwrap_err();
        assert!(
            matches!(
                err,
                MuxError::TruncatedFrame {
                    needed: 7,
                    available: 4,
                    offset: 0
                }
            ),
            "{err}"
        );
        let mut half_prefix = BytesMut::from(&[0x00][..]);
        assert!(codec.decode_eof(&mut half_prefix).is_err());
        assert_eq!(codec.decode_eof(&mut BytesMut::new()).unwrap(), None);
    }

    #[test]
    fn keepalives_are_skipped_and_tpdu_replies_swap_addresses() {
        let tpdu = Framing {
            header: Header::Tpdu,
            ..Framing::default()
        };
        let mut codec = FrameCodec::new(tpdu);
        let mut buf = BytesMut::from(&[0, 0, 0, 6, 0x60, 0x00, 0x01, 0x80, 0x02, b'M', 0, 0][..]);
        let frame = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(&frame.header[..], &[0x60, 0x00, 0x01, 0x80, 0x02]);
        assert_eq!(&frame.message[..], b"M");
        assert_eq!(
            &Header::Tpdu.reply_to(&frame.header)[..],
            &[0x60, 0x80, 0x02, 0x00, 0x01]
        );
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn patches_are_applied_while_encoding_and_bounds_checked() {
        let mut codec = FrameCodec::new(Framing::default());
        let mut frame = Frame::new(Bytes::from_static(b"0200xx000123yy"));
        frame.patch = Patch::new(6, b"999999");
        let mut out = BytesMut::new();
        codec.encode(frame.clone(), &mut out).unwrap();
        assert_eq!(&out[2..], b"0200xx999999yy");
        frame.patch = Patch::new(10, b"999999");
        assert!(codec.encode(frame, &mut out).is_err());
        assert!(Patch::new(0, &[0; 17]).is_none());
    }

    #[test]
    fn framing_validation_rejects_impossible_limits() {
        let mut f = Framing {
            prefix: LengthPrefix::Ascii4,
            max_frame_len: 10_000,
            ..Framing::default()
        };
        assert!(f.validate().is_err());
        f.max_frame_len = 9999;
        assert!(f.validate().is_ok());
        f.prefix_includes_itself = true;
        assert!(f.validate().is_err());
        let tiny = Framing {
            header: Header::Tpdu,
            max_frame_len: 5,
            ..Framing::default()
        };
        assert!(tiny.validate().is_err());
    }
}
