//! BER-TLV as used in field 55 (EMV chip data), parsed on demand without copying.
//!
//! Tags are 1 to 4 bytes (a first byte with all five low bits set continues; a byte with
//! the high bit set continues), lengths are short form (< 0x80) or long form `0x81..=0x84`.
//! EMV allows `0x00` and `0xFF` padding between objects; it is skipped.

use nom::bytes::complete::take;
use nom::number::complete::be_u8;
use nom::{IResult, Parser};

use crate::error::{Error, Reason, Result};

/// EMV tags that carry card data and must never be shown or stored: track 1 and 2
/// equivalents and discretionary data (56, 57, 9F1F, 9F20, 9F6B), the PAN (5A), the
/// cardholder name (5F20) and transaction PIN data (99).
pub const SENSITIVE_TAGS: &[u32] = &[0x56, 0x57, 0x5A, 0x5F20, 0x99, 0x9F1F, 0x9F20, 0x9F6B];

/// One data object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The tag as its bytes read big-endian (`0x9F26`).
    pub tag: u32,
    /// Whether the value is itself a sequence of data objects.
    pub constructed: bool,
    /// The value bytes.
    pub value: &'a [u8],
    /// Offset of the tag within the parsed data.
    pub offset: usize,
    /// Offset of the value within the parsed data.
    pub value_offset: usize,
}

impl Tlv<'_> {
    /// Whether this tag holds card data (see [`SENSITIVE_TAGS`]).
    pub fn is_sensitive(&self) -> bool {
        SENSITIVE_TAGS.contains(&self.tag)
    }
}

fn tag(input: &[u8]) -> IResult<&[u8], (u32, bool)> {
    let (mut rest, first) = be_u8(input)?;
    let constructed = first & 0x20 != 0;
    let mut tag = u32::from(first);
    if first & 0x1F == 0x1F {
        for _ in 0..3 {
            let (r, b) = be_u8(rest)?;
            rest = r;
            tag = tag << 8 | u32::from(b);
            if b & 0x80 == 0 {
                return Ok((rest, (tag, constructed)));
            }
        }
        return Err(nom::Err::Failure(nom::error::Error::new(
            rest,
            nom::error::ErrorKind::TooLarge,
        )));
    }
    Ok((rest, (tag, constructed)))
}

fn length(input: &[u8]) -> IResult<&[u8], usize> {
    let (rest, first) = be_u8(input)?;
    match first {
        0..=0x7F => Ok((rest, usize::from(first))),
        0x81..=0x84 => {
            let (rest, bytes) = take(usize::from(first & 0x7F)).parse(rest)?;
            Ok((
                rest,
                bytes
                    .iter()
                    .fold(0usize, |acc, &b| acc << 8 | usize::from(b)),
            ))
        }
        _ => Err(nom::Err::Failure(nom::error::Error::new(
            input,
            nom::error::ErrorKind::TooLarge,
        ))),
    }
}

/// Iterator over the data objects at one level of `data`. Stops after the first error.
#[derive(Debug, Clone)]
pub struct TlvIter<'a> {
    data: &'a [u8],
    pos: usize,
    failed: bool,
}

/// Iterate the top-level data objects of `data`.
pub fn iter(data: &[u8]) -> TlvIter<'_> {
    TlvIter {
        data,
        pos: 0,
        failed: false,
    }
}

impl<'a> Iterator for TlvIter<'a> {
    type Item = Result<Tlv<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        while matches!(self.data.get(self.pos), Some(0x00 | 0xFF)) {
            self.pos += 1;
        }
        let input = self.data.get(self.pos..).filter(|r| !r.is_empty())?;
        let parsed = (tag, length).parse(input).and_then(|(rest, (t, len))| {
            take(len).parse(rest).map(|(rest, value)| (rest, t, value))
        });
        match parsed {
            Ok((rest, (tag, constructed), value)) => {
                let offset = self.pos;
                let consumed = input.len() - rest.len();
                self.pos += consumed;
                Some(Ok(Tlv {
                    tag,
                    constructed,
                    value,
                    offset,
                    value_offset: offset + consumed - value.len(),
                }))
            }
            Err(_) => {
                self.failed = true;
                Some(Err(Error::Tlv {
                    offset: self.pos,
                    reason: Reason::BadTlv,
                }))
            }
        }
    }
}

/// Find the first object with `tag`, searching constructed objects recursively.
pub fn find(data: &[u8], wanted: u32) -> Result<Option<&[u8]>> {
    for item in iter(data) {
        let tlv = item?;
        if tlv.tag == wanted {
            return Ok(Some(tlv.value));
        }
        if tlv.constructed {
            if let Some(v) = find(tlv.value, wanted)? {
                return Ok(Some(v));
            }
        }
    }
    Ok(None)
}

/// Append an object with `tag` and `value` in BER-TLV form.
pub fn push(out: &mut Vec<u8>, tag: u32, value: &[u8]) {
    let tag_bytes = tag.to_be_bytes();
    let skip = tag_bytes.iter().take_while(|&&b| b == 0).count().min(3);
    out.extend_from_slice(&tag_bytes[skip..]);
    let len = value.len();
    match len {
        0..=0x7F => out.push(len as u8),
        0x80..=0xFF => out.extend_from_slice(&[0x81, len as u8]),
        _ => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
    }
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_typical_field_55() {
        let mut data = Vec::new();
        push(&mut data, 0x9F26, &[1, 2, 3, 4, 5, 6, 7, 8]);
        push(&mut data, 0x82, &[0x39, 0x00]);
        push(
            &mut data,
            0x5A,
            &[0x47, 0x61, 0x73, 0x90, 0x01, 0x01, 0x01, 0x19],
        );
        push(&mut data, 0x9F10, &[0xAB; 200]);
        let tags: Vec<u32> = iter(&data).map(|t| t.unwrap().tag).collect();
        assert_eq!(tags, [0x9F26, 0x82, 0x5A, 0x9F10]);
        assert_eq!(find(&data, 0x82).unwrap(), Some(&[0x39, 0x00][..]));
        assert_eq!(find(&data, 0x9F10).unwrap().map(<[u8]>::len), Some(200));
        assert!(iter(&data).nth(2).unwrap().unwrap().is_sensitive());
    }

    #[test]
    fn finds_inside_constructed_objects_and_skips_padding() {
        let mut inner = Vec::new();
        push(&mut inner, 0x57, &[0x47, 0x61, 0xD2]);
        let mut data = vec![0x00, 0xFF];
        push(&mut data, 0x70, &inner);
        assert_eq!(find(&data, 0x57).unwrap(), Some(&[0x47, 0x61, 0xD2][..]));
    }

    #[test]
    fn truncation_and_bad_lengths_are_errors_with_offsets() {
        let mut data = Vec::new();
        push(&mut data, 0x9F26, &[1; 8]);
        for cut in 1..data.len() {
            let items: Vec<_> = iter(&data[..cut]).collect();
            assert!(items.last().unwrap().is_err(), "prefix {cut}");
        }
        let bad = [0x9F, 0x26, 0x85, 0, 0, 0, 0, 1];
        assert_eq!(
            iter(&bad).next().unwrap(),
            Err(Error::Tlv {
                offset: 0,
                reason: Reason::BadTlv
            })
        );
        let long_tag = [0x9F, 0x81, 0x81, 0x81, 0x01, 0x00];
        assert!(iter(&long_tag).next().unwrap().is_err());
    }
}
