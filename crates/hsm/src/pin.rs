//! ISO 9564-1 PIN blocks, formats 0, 1 and 3 (TDES, 8 bytes), and their translation from
//! one key (and format) to another without the clear PIN leaving this module.
//!
//! - Format 0: `0 L P..P F..F` XOR `0000` + the 12 rightmost PAN digits before the check
//!   digit.
//! - Format 1: `1 L P..P R..R` (random fill; no PAN).
//! - Format 3: `3 L P..P R..R` (fill of random digits A-F) XOR the PAN field as format 0.

use zeroize::{Zeroize, Zeroizing};

use crate::error::{HsmError, Result};
use crate::tdes::TdesKey;

/// A PIN block format this module handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// ISO 9564-1 format 0 (ANSI X9.8), PAN-bound.
    Iso0,
    /// Format 1, not PAN-bound.
    Iso1,
    /// Format 3, PAN-bound, random A-F fill.
    Iso3,
}

impl Format {
    fn code(self) -> u8 {
        match self {
            Format::Iso0 => 0,
            Format::Iso1 => 1,
            Format::Iso3 => 3,
        }
    }
}

/// Where fill nibbles come from (random in use; fixed in tests).
pub trait Fill {
    /// The next nibble, 0-15.
    fn nibble(&mut self) -> u8;
}

/// No fill: for format 0, whose fill is fixed (F). Formats 1 and 3 given it get zeros, so
/// it is for tests and format 0 only.
#[derive(Debug, Clone, Copy)]
pub struct NoFill;

impl Fill for NoFill {
    fn nibble(&mut self) -> u8 {
        0
    }
}

/// The PAN field of formats 0 and 3: `0000` + the 12 rightmost digits before the check digit.
fn pan_field(pan: &[u8]) -> Result<[u8; 8]> {
    if !(13..=19).contains(&pan.len()) || !pan.iter().all(u8::is_ascii_digit) {
        return Err(HsmError::Pan { len: pan.len() });
    }
    let digits = &pan[pan.len() - 13..pan.len() - 1];
    let mut field = [0u8; 8];
    for (i, pair) in digits.chunks(2).enumerate() {
        field[2 + i] = (pair[0] - b'0') << 4 | (pair[1] - b'0');
    }
    Ok(field)
}

/// The clear PIN block of `pin` (4-12 digits) in `format`; `pan` for formats 0 and 3.
pub fn clear_block(
    format: Format,
    pin: &[u8],
    pan: Option<&[u8]>,
    fill: &mut dyn Fill,
) -> Result<Zeroizing<[u8; 8]>> {
    if !(4..=12).contains(&pin.len()) || !pin.iter().all(u8::is_ascii_digit) {
        return Err(HsmError::Pin { len: pin.len() });
    }
    let mut nibbles = Zeroizing::new([0u8; 16]);
    nibbles[0] = format.code();
    nibbles[1] = pin.len() as u8;
    for (n, d) in nibbles[2..].iter_mut().zip(pin) {
        *n = d - b'0';
    }
    for n in nibbles[2 + pin.len()..].iter_mut() {
        *n = match format {
            Format::Iso0 => 0xF,
            Format::Iso1 => fill.nibble() & 0xF,
            Format::Iso3 => 0xA + fill.nibble() % 6,
        };
    }
    let mut block = Zeroizing::new([0u8; 8]);
    for (i, b) in block.iter_mut().enumerate() {
        *b = nibbles[2 * i] << 4 | nibbles[2 * i + 1];
    }
    if format != Format::Iso1 {
        let field = pan_field(pan.ok_or(HsmError::Pan { len: 0 })?)?;
        for (b, p) in block.iter_mut().zip(field) {
            *b ^= p;
        }
    }
    Ok(block)
}

/// The PIN of a clear block in `format` (with `pan` for formats 0 and 3), as ASCII digits.
pub fn pin_of(format: Format, block: &[u8; 8], pan: Option<&[u8]>) -> Result<Zeroizing<Vec<u8>>> {
    let bad = |reason| HsmError::PinBlock {
        format: format.code(),
        reason,
    };
    let mut clear = Zeroizing::new(*block);
    if format != Format::Iso1 {
        let field = pan_field(pan.ok_or(HsmError::Pan { len: 0 })?)?;
        for (b, p) in clear.iter_mut().zip(field) {
            *b ^= p;
        }
    }
    let nibble = |i: usize| clear[i / 2] >> (4 * (1 - i % 2)) & 0xF;
    if nibble(0) != format.code() {
        return Err(bad("wrong format nibble"));
    }
    let len = usize::from(nibble(1));
    if !(4..=12).contains(&len) {
        return Err(bad("PIN length outside 4-12"));
    }
    let mut pin = Zeroizing::new(Vec::with_capacity(len));
    for i in 2..2 + len {
        let d = nibble(i);
        if d > 9 {
            return Err(bad("a PIN digit that is not decimal"));
        }
        pin.push(b'0' + d);
    }
    let fill_ok = (2 + len..16).all(|i| match format {
        Format::Iso0 => nibble(i) == 0xF,
        Format::Iso1 => true,
        Format::Iso3 => nibble(i) >= 0xA,
    });
    if !fill_ok {
        return Err(bad("fill digits of the wrong kind"));
    }
    Ok(pin)
}

/// One side of a translation: the key a block is under, its format, and the PAN it is bound
/// to (formats 0 and 3).
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    /// The key.
    pub key: &'a TdesKey,
    /// The format.
    pub format: Format,
    /// The PAN.
    pub pan: Option<&'a [u8]>,
}

/// Re-encrypt a PIN block from one key and format to another (PIN translation: a terminal
/// key or DUKPT key to a zone PIN key). The clear PIN exists only in zeroised buffers here.
pub fn translate(
    block: &[u8; 8],
    from: Side<'_>,
    to: Side<'_>,
    fill: &mut dyn Fill,
) -> Result<[u8; 8]> {
    let mut clear = *block;
    from.key.decrypt_block(&mut clear);
    let pin = pin_of(from.format, &clear, from.pan);
    clear.zeroize();
    let pin = pin?;
    let mut out = *clear_block(to.format, &pin, to.pan, fill)?;
    to.key.encrypt_block(&mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{from_hex, to_hex};

    struct Counting(u8);
    impl Fill for Counting {
        fn nibble(&mut self) -> u8 {
            self.0 = self.0.wrapping_add(7);
            self.0 & 0xF
        }
    }

    #[test]
    fn format_0_example() {
        // PIN 1234, PAN 43219876543210987: 041234FFFFFFFFFF XOR 0000987654321098.
        let block = clear_block(
            Format::Iso0,
            b"1234",
            Some(b"43219876543210987"),
            &mut Counting(0),
        )
        .unwrap();
        assert_eq!(to_hex(&*block), "0412AC89ABCDEF67");
        let pin = pin_of(Format::Iso0, &block, Some(b"43219876543210987")).unwrap();
        assert_eq!(&pin[..], b"1234");
    }

    #[test]
    fn formats_1_and_3_round_trip_with_their_fill() {
        let pan = Some(&b"4761739001010119"[..]);
        for format in [Format::Iso1, Format::Iso3] {
            let block = clear_block(format, b"98765", pan, &mut Counting(3)).unwrap();
            assert_eq!(block[0] >> 4, format.code());
            assert_eq!(&pin_of(format, &block, pan).unwrap()[..], b"98765");
        }
        // Format 3's fill is A-F once the PAN field is taken off.
        let block = clear_block(Format::Iso3, b"1234", pan, &mut Counting(0)).unwrap();
        let field = pan_field(b"4761739001010119").unwrap();
        let clear: Vec<u8> = block.iter().zip(field).map(|(b, p)| b ^ p).collect();
        assert!(to_hex(&clear)[6..]
            .bytes()
            .all(|c| (b'A'..=b'F').contains(&c)));
    }

    #[test]
    fn translation_moves_a_pin_between_keys_and_formats() {
        let tpk = TdesKey::new(&from_hex("0123456789ABCDEFFEDCBA9876543210").unwrap()).unwrap();
        let zpk = TdesKey::new(&from_hex("89ABCDEF0123456776543210FEDCBA98").unwrap()).unwrap();
        let pan = Some(&b"4761739001010119"[..]);
        let mut under_tpk = *clear_block(Format::Iso0, b"1234", pan, &mut Counting(0)).unwrap();
        tpk.encrypt_block(&mut under_tpk);
        let from = Side {
            key: &tpk,
            format: Format::Iso0,
            pan,
        };
        let to = Side {
            key: &zpk,
            format: Format::Iso3,
            pan,
        };
        let mut under_zpk = translate(&under_tpk, from, to, &mut Counting(1)).unwrap();
        zpk.decrypt_block(&mut under_zpk);
        assert_eq!(&pin_of(Format::Iso3, &under_zpk, pan).unwrap()[..], b"1234");
        // Under the wrong key the block does not decode: an error, never a PIN.
        let wrong = Side {
            key: &zpk,
            format: Format::Iso0,
            pan,
        };
        assert!(matches!(
            translate(&under_tpk, wrong, to, &mut Counting(1)),
            Err(HsmError::PinBlock { .. })
        ));
    }

    #[test]
    fn bad_pins_and_pans_are_refused_without_their_digits() {
        let err = clear_block(
            Format::Iso0,
            b"12",
            Some(b"4761739001010119"),
            &mut Counting(0),
        );
        assert_eq!(err.unwrap_err(), HsmError::Pin { len: 2 });
        let err = clear_block(Format::Iso0, b"1234", Some(b"476173"), &mut Counting(0));
        assert_eq!(
            err.unwrap_err().to_string(),
            "PAN of 6 characters: 13 to 19 decimal digits"
        );
    }
}
