//! ISO 9564-1 PIN blocks, formats 0, 1 and 3 (TDES, 8 bytes) and 4 (AES, 16 bytes), and
//! their translation from one key (and format) to another without the clear PIN leaving
//! this module.
//!
//! - Format 0: `0 L P..P F..F` XOR `0000` + the 12 rightmost PAN digits before the check
//!   digit.
//! - Format 1: `1 L P..P R..R` (random fill; no PAN).
//! - Format 3: `3 L P..P R..R` (fill of random digits A-F) XOR the PAN field as format 0.
//! - Format 4: the PIN field `4 L P..P A..A` (16 nibbles) + 8 random bytes is encrypted,
//!   XORed with the PAN field `M P..P 0..0` (M = PAN length - 12), and encrypted again.

use zeroize::Zeroizing;

use crate::error::{HsmError, Result};
use crate::key::Key;

/// A PIN block format this module handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// ISO 9564-1 format 0 (ANSI X9.8), PAN-bound.
    Iso0,
    /// Format 1, not PAN-bound.
    Iso1,
    /// Format 3, PAN-bound, random A-F fill.
    Iso3,
    /// Format 4 (AES, 16 bytes), PAN-bound by a second encryption.
    Iso4,
}

impl Format {
    /// The format's number in ISO 9564-1.
    pub fn code(self) -> u8 {
        match self {
            Format::Iso0 => 0,
            Format::Iso1 => 1,
            Format::Iso3 => 3,
            Format::Iso4 => 4,
        }
    }

    /// The format of a number (0, 1, 3 or 4).
    pub fn from_code(code: u8) -> Option<Format> {
        match code {
            0 => Some(Format::Iso0),
            1 => Some(Format::Iso1),
            3 => Some(Format::Iso3),
            4 => Some(Format::Iso4),
            _ => None,
        }
    }

    /// The length of its blocks in bytes.
    pub fn block_len(self) -> usize {
        match self {
            Format::Iso4 => 16,
            _ => 8,
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
    check_pin(pin)?;
    if format == Format::Iso4 {
        return Err(HsmError::PinBlock {
            format: 4,
            reason: "a 16-byte block (see pin_field_4)",
        });
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
            Format::Iso4 => 0xA,
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
/// For format 4, `block` is the first half of the clear PIN field (no PAN).
pub fn pin_of(format: Format, block: &[u8; 8], pan: Option<&[u8]>) -> Result<Zeroizing<Vec<u8>>> {
    let bad = |reason| HsmError::PinBlock {
        format: format.code(),
        reason,
    };
    let mut clear = Zeroizing::new(*block);
    if !matches!(format, Format::Iso1 | Format::Iso4) {
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
        Format::Iso4 => nibble(i) == 0xA,
    });
    if !fill_ok {
        return Err(bad("fill digits of the wrong kind"));
    }
    Ok(pin)
}

fn check_pin(pin: &[u8]) -> Result<()> {
    if !(4..=12).contains(&pin.len()) || !pin.iter().all(u8::is_ascii_digit) {
        return Err(HsmError::Pin { len: pin.len() });
    }
    Ok(())
}

/// Format 4's clear PIN field: `4 L P..P A..A` (16 nibbles), then 8 random bytes.
pub fn pin_field_4(pin: &[u8], fill: &mut dyn Fill) -> Result<Zeroizing<[u8; 16]>> {
    check_pin(pin)?;
    let mut field = Zeroizing::new([0u8; 16]);
    let mut nibbles = Zeroizing::new([0xAu8; 16]);
    nibbles[0] = 4;
    nibbles[1] = pin.len() as u8;
    for (n, d) in nibbles[2..].iter_mut().zip(pin) {
        *n = d - b'0';
    }
    for (i, b) in field[..8].iter_mut().enumerate() {
        *b = nibbles[2 * i] << 4 | nibbles[2 * i + 1];
    }
    for b in field[8..].iter_mut() {
        *b = (fill.nibble() & 0xF) << 4 | (fill.nibble() & 0xF);
    }
    Ok(field)
}

/// Format 4's PAN field: `M` (PAN length - 12, 0 for 12 digits or fewer, which are
/// left-padded with zeros to 12), the PAN, zeros to 32 nibbles.
fn pan_field_4(pan: &[u8]) -> Result<[u8; 16]> {
    if !(12..=19).contains(&pan.len()) || !pan.iter().all(u8::is_ascii_digit) {
        return Err(HsmError::Pan { len: pan.len() });
    }
    let mut nibbles = [0u8; 32];
    nibbles[0] = (pan.len() - 12) as u8;
    for (n, d) in nibbles[1..].iter_mut().zip(pan) {
        *n = d - b'0';
    }
    let mut field = [0u8; 16];
    for (i, b) in field.iter_mut().enumerate() {
        *b = nibbles[2 * i] << 4 | nibbles[2 * i + 1];
    }
    Ok(field)
}

fn xor16(a: &mut [u8; 16], b: &[u8; 16]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

/// `pin` in `format` encrypted under `key` (what a PIN pad does; the simulators use it).
pub fn encrypt(
    format: Format,
    key: &Key,
    pin: &[u8],
    pan: Option<&[u8]>,
    fill: &mut dyn Fill,
) -> Result<Vec<u8>> {
    if format == Format::Iso4 {
        let key = key.aes("format 4 PIN key")?;
        let pan = pan_field_4(pan.ok_or(HsmError::Pan { len: 0 })?)?;
        let mut block = *pin_field_4(pin, fill)?;
        key.encrypt_block(&mut block);
        xor16(&mut block, &pan);
        key.encrypt_block(&mut block);
        return Ok(block.to_vec());
    }
    let key = key.tdes("format 0, 1 or 3 PIN key")?;
    let mut block = *clear_block(format, pin, pan, fill)?;
    key.encrypt_block(&mut block);
    Ok(block.to_vec())
}

/// The PIN (ASCII digits) of a block in `format` encrypted under `key`.
pub fn decrypt(
    format: Format,
    key: &Key,
    block: &[u8],
    pan: Option<&[u8]>,
) -> Result<Zeroizing<Vec<u8>>> {
    if block.len() != format.block_len() {
        return Err(HsmError::PinBlock {
            format: format.code(),
            reason: "a block of the wrong length",
        });
    }
    if format == Format::Iso4 {
        let key = key.aes("format 4 PIN key")?;
        let pan = pan_field_4(pan.ok_or(HsmError::Pan { len: 0 })?)?;
        let mut clear = Zeroizing::new([0u8; 16]);
        clear.copy_from_slice(block);
        key.decrypt_block(&mut clear);
        xor16(&mut clear, &pan);
        key.decrypt_block(&mut clear);
        let mut head = Zeroizing::new([0u8; 8]);
        head.copy_from_slice(&clear[..8]);
        return pin_of(Format::Iso4, &head, None);
    }
    let key = key.tdes("format 0, 1 or 3 PIN key")?;
    let mut clear = Zeroizing::new([0u8; 8]);
    clear.copy_from_slice(block);
    key.decrypt_block(&mut clear);
    pin_of(format, &clear, pan)
}

/// One side of a translation: the key a block is under, its format, and the PAN it is bound
/// to (formats 0 and 3).
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    /// The key.
    pub key: &'a Key,
    /// The format.
    pub format: Format,
    /// The PAN.
    pub pan: Option<&'a [u8]>,
}

/// Re-encrypt a PIN block from one key and format to another (PIN translation: a terminal
/// key or DUKPT key to a zone PIN key). The clear PIN exists only in zeroised buffers here.
pub fn translate(
    block: &[u8],
    from: Side<'_>,
    to: Side<'_>,
    fill: &mut dyn Fill,
) -> Result<Vec<u8>> {
    let pin = decrypt(from.format, from.key, block, from.pan)?;
    encrypt(to.format, to.key, &pin, to.pan, fill)
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

    fn tdes(hex: &str) -> Key {
        Key::Tdes(crate::TdesKey::new(&from_hex(hex).unwrap()).unwrap())
    }

    fn aes(hex: &str) -> Key {
        Key::Aes(crate::AesKey::new(&from_hex(hex).unwrap()).unwrap())
    }

    /// Eight fixed random bytes, as nibbles.
    struct Bytes(Vec<u8>, usize);
    impl Fill for Bytes {
        fn nibble(&mut self) -> u8 {
            let byte = self.0[self.1 / 2];
            self.1 += 1;
            if self.1 % 2 == 1 {
                byte >> 4
            } else {
                byte & 0xF
            }
        }
    }

    /// The format 4 example of the ANSI X9.24-3-2017 supplement: PIN 1234, PAN
    /// 4111111111111111, random bytes 2F69ADDE2E9E7ACE, under the PIN keys of AES DUKPT
    /// counters 1 and 2.
    #[test]
    fn format_4_example() {
        let field = pin_field_4(
            b"1234",
            &mut Bytes(from_hex("2F69ADDE2E9E7ACE").unwrap(), 0),
        );
        assert_eq!(to_hex(&*field.unwrap()), "441234AAAAAAAAAA2F69ADDE2E9E7ACE");
        assert_eq!(
            to_hex(&pan_field_4(b"4111111111111111").unwrap()),
            "44111111111111111000000000000000"
        );
        let pan = Some(&b"4111111111111111"[..]);
        for (key, expected) in [
            (
                "AF8CB133A78F8DC2D1359F18527593FB",
                "A912150391AB65A67E52883D81CE2D15",
            ),
            (
                "D30BDC73EC9714B000BEC66BDB7B6D09",
                "52A00503BD34BA1383F6A7EE9FE2547F",
            ),
        ] {
            let random = &mut Bytes(from_hex("2F69ADDE2E9E7ACE").unwrap(), 0);
            let block = encrypt(Format::Iso4, &aes(key), b"1234", pan, random).unwrap();
            assert_eq!(to_hex(&block), expected);
            assert_eq!(
                &decrypt(Format::Iso4, &aes(key), &block, pan).unwrap()[..],
                b"1234"
            );
        }
        // Bound to the PAN: another PAN does not give the PIN back.
        let block = from_hex("A912150391AB65A67E52883D81CE2D15").unwrap();
        let other = Some(&b"4111111111111112"[..]);
        let key = aes("AF8CB133A78F8DC2D1359F18527593FB");
        assert!(decrypt(Format::Iso4, &key, &block, other).is_err());
    }

    #[test]
    fn translation_moves_a_pin_between_keys_and_formats() {
        let tpk = tdes("0123456789ABCDEFFEDCBA9876543210");
        let zpk = tdes("89ABCDEF0123456776543210FEDCBA98");
        let aes_zpk = aes("00112233445566778899AABBCCDDEEFF");
        let pan = Some(&b"4761739001010119"[..]);
        let under_tpk = encrypt(Format::Iso0, &tpk, b"1234", pan, &mut Counting(0)).unwrap();
        let from = Side {
            key: &tpk,
            format: Format::Iso0,
            pan,
        };
        for (key, format) in [
            (&zpk, Format::Iso3),
            (&zpk, Format::Iso1),
            (&aes_zpk, Format::Iso4),
        ] {
            let to = Side { key, format, pan };
            let under_zpk = translate(&under_tpk, from, to, &mut Counting(1)).unwrap();
            assert_eq!(under_zpk.len(), format.block_len());
            assert_eq!(&decrypt(format, key, &under_zpk, pan).unwrap()[..], b"1234");
        }
        // Under the wrong key the block does not decode: an error, never a PIN.
        let wrong = Side {
            key: &zpk,
            format: Format::Iso0,
            pan,
        };
        let to = Side {
            key: &zpk,
            format: Format::Iso3,
            pan,
        };
        assert!(matches!(
            translate(&under_tpk, wrong, to, &mut Counting(1)),
            Err(HsmError::PinBlock { .. })
        ));
        // A TDES key cannot make a format 4 block, an AES key a format 0 one.
        let to4 = Side {
            key: &zpk,
            format: Format::Iso4,
            pan,
        };
        assert!(matches!(
            translate(&under_tpk, from, to4, &mut Counting(1)),
            Err(HsmError::WrongAlgorithm { .. })
        ));
        assert!(decrypt(Format::Iso0, &tpk, &under_tpk[..7], pan).is_err());
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
