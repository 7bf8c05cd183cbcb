//! Byte-level encodings: character classes, packed BCD, EBCDIC (code page 500), ASCII hex
//! and length prefixes. Pure functions over slices; the decoder and builder call them.
//!
//! The class checks are written as branch-free folds over the whole slice so that LLVM
//! vectorises them (16-32 bytes per instruction on x86-64); the exact offending byte is only
//! searched for once a check has failed, off the hot path.

use crate::spec::{DataClass, PrefixEncoding};

/// EBCDIC (cp500) code of each printable ASCII character `0x20..=0x7E`, in order.
const CP500_PRINTABLE: [u8; 95] = [
    0x40, 0x4F, 0x7F, 0x7B, 0x5B, 0x6C, 0x50, 0x7D, 0x4D, 0x5D, 0x5C, 0x4E, 0x6B, 0x60, 0x4B, 0x61,
    0xF0, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0x7A, 0x5E, 0x4C, 0x7E, 0x6E, 0x6F,
    0x7C, 0xC1, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6,
    0xD7, 0xD8, 0xD9, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0x4A, 0xE0, 0x5A, 0x5F, 0x6D,
    0x79, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x91, 0x92, 0x93, 0x94, 0x95, 0x96,
    0x97, 0x98, 0x99, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xC0, 0xBB, 0xD0, 0xA1,
];

/// EBCDIC byte -> ASCII; 0 marks a byte with no printable ASCII equivalent.
const EBCDIC_TO_ASCII: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < CP500_PRINTABLE.len() {
        t[CP500_PRINTABLE[i] as usize] = 0x20 + i as u8;
        i += 1;
    }
    t
};

/// Printable ASCII -> EBCDIC; 0 marks a character outside `0x20..=0x7E`.
const ASCII_TO_EBCDIC: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < CP500_PRINTABLE.len() {
        t[0x20 + i] = CP500_PRINTABLE[i];
        i += 1;
    }
    t
};

/// EBCDIC byte to ASCII (`None` for bytes outside the printable set).
#[inline]
pub fn ebcdic_to_ascii(b: u8) -> Option<u8> {
    match EBCDIC_TO_ASCII[usize::from(b)] {
        0 => None,
        a => Some(a),
    }
}

/// Printable ASCII to EBCDIC (`None` for anything else).
#[inline]
pub fn ascii_to_ebcdic(a: u8) -> Option<u8> {
    match ASCII_TO_EBCDIC[usize::from(a)] {
        0 => None,
        e => Some(e),
    }
}

const DIGIT: u8 = 1;
const ALPHA: u8 = 2;
const SPECIAL: u8 = 4;
const TRACK: u8 = 8;

/// Class bits per ASCII byte. Space counts as alphabetic and special: fixed-length `a`/`an`
/// fields are space padded in practice.
const CLASS_BITS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0x20;
    while b <= 0x7E {
        t[b] = if b >= b'0' as usize && b <= b'9' as usize {
            DIGIT | TRACK
        } else if (b >= b'A' as usize && b <= b'Z' as usize)
            || (b >= b'a' as usize && b <= b'z' as usize)
        {
            ALPHA
        } else if b == b' ' as usize {
            ALPHA | SPECIAL
        } else {
            SPECIAL
        };
        b += 1;
    }
    t[b'=' as usize] |= TRACK;
    t[b'D' as usize] |= TRACK;
    t
};

fn class_mask(class: DataClass) -> u8 {
    match class {
        DataClass::N => DIGIT,
        DataClass::A => ALPHA,
        DataClass::S => SPECIAL,
        DataClass::An => DIGIT | ALPHA,
        DataClass::As => ALPHA | SPECIAL,
        DataClass::Ns => DIGIT | SPECIAL,
        DataClass::Ans => DIGIT | ALPHA | SPECIAL,
        DataClass::Z => TRACK,
        // Binary accepts anything; x+n is checked by its own rule.
        DataClass::B | DataClass::Xn => 0xFF,
    }
}

const fn splat(b: u8) -> u64 {
    b as u64 * 0x0101_0101_0101_0101
}

/// Whether every byte of `x` lies in one of `ranges` (inclusive, all below 0x80), eight bytes
/// at once in a general-purpose register. With the high bits cleared no byte carries or
/// borrows into its neighbour: `above` gets a byte's high bit when it is over `hi`,
/// `at_least` keeps it when it is at or over `lo`.
#[inline(always)]
fn word_in_ranges(x: u64, ranges: &[(u8, u8)]) -> bool {
    const HIGH: u64 = splat(0x80);
    let y = x & !HIGH;
    let inside = ranges.iter().fold(0u64, |inside, &(lo, hi)| {
        let above = y + splat(0x7F - hi);
        let at_least = (y | HIGH) - splat(lo);
        inside | (at_least & !above)
    });
    (x & HIGH == 0) & (inside & HIGH == HIGH)
}

/// `word_ok` over a slice shorter than 16 bytes, read as two words with fixed-size
/// (overlapping) loads, the gaps filled with `fill`. Out of line, so that the decoder's
/// field loop stays small.
#[inline(never)]
fn short_ok<W: Fn(u64) -> bool + Copy>(v: &[u8], fill: u8, word_ok: W) -> bool {
    short_words_ok(v, fill, word_ok)
}

/// A value shorter than 16 bytes with every byte in one of `ranges` (which hold `'0'`),
/// checked in line: the builder checks one short value per field, and the calls to the
/// out-of-line [`short_ok`] were 118 of the 4274 instructions of the bench's encode.
#[inline(always)]
pub(crate) fn short_in_ranges(v: &[u8], ranges: &[(u8, u8)]) -> bool {
    short_words_ok(v, b'0', |x| word_in_ranges(x, ranges))
}

#[inline(always)]
fn short_words_ok<W: Fn(u64) -> bool + Copy>(v: &[u8], fill: u8, word_ok: W) -> bool {
    let fill = splat(fill);
    let len = v.len();
    let u32_at = |at: usize| {
        let w = <[u8; 4]>::try_from(&v[at..at + 4]).map_or(0, u32::from_le_bytes);
        u64::from(w)
    };
    let u64_at = |at: usize| <[u8; 8]>::try_from(&v[at..at + 8]).map_or(0, u64::from_le_bytes);
    match len {
        0 => true,
        1..4 => {
            let three = u64::from(v[0]) | u64::from(v[len / 2]) << 8 | u64::from(v[len - 1]) << 16;
            word_ok(three | fill << 24)
        }
        4..8 => word_ok(u32_at(0) | u32_at(len - 4) << 32),
        _ => word_ok(u64_at(0)) & word_ok(u64_at(len - 8)),
    }
}

/// Whether `ok` holds for every byte, in chunks of 16 to 64 bytes. The per-chunk loop has a
/// fixed length, so LLVM turns it into a handful of SSE2 instructions; the tail is checked
/// as an overlapping last chunk. Branch-free within a chunk: no early exit, the verdict is
/// read once. Inputs shorter than 16 bytes (most single fields) are checked in two words by
/// `word_ok`, which accepts the same bytes as `ok` (and accepts `fill`): gathering them into
/// a vector costs more (a byte-wise copy into a stack buffer read back as one vector stalls
/// store forwarding, which was a third of an encode, and a copy of `v.len()` bytes is a
/// `memcpy` call).
#[inline(always)]
fn all_bytes<F, W>(v: &[u8], fill: u8, word_ok: W, ok: F) -> bool
where
    F: Fn(u8) -> bool + Copy,
    W: Fn(u64) -> bool + Copy,
{
    // Not inlined on purpose: compiled on its own, LLVM vectorises this fixed-size loop
    // (SLP: two SSE2 compares and a movemask for 32 bytes); inlined into the chunk loop it
    // stayed scalar (callgrind: 4064 against 2648 instructions per decode of the bench
    // message). It returns the verdict rather than writing an accumulator to memory, which
    // cost a store-forwarding stall per chunk.
    #[inline(never)]
    fn chunk_ok<F: Fn(u8) -> bool + Copy, const N: usize>(chunk: &[u8; N], ok: F) -> bool {
        let mut bad = [0u8; N];
        for (a, &b) in bad.iter_mut().zip(chunk) {
            *a = u8::from(!ok(b));
        }
        bad.iter().fold(0u8, |acc, &b| acc | b) == 0
    }
    // One chunk of `N` bytes at `from` (in bounds by the caller's length match).
    fn at<const N: usize, F: Fn(u8) -> bool + Copy>(v: &[u8], from: usize, ok: F) -> bool {
        <&[u8; N]>::try_from(&v[from..from + N]).map_or(true, |c| chunk_ok(c, ok))
    }
    match v.len() {
        0..16 => short_ok(v, fill, word_ok),
        16..32 => at::<16, F>(v, 0, ok) & at::<16, F>(v, v.len() - 16, ok),
        32..64 => at::<32, F>(v, 0, ok) & at::<32, F>(v, v.len() - 32, ok),
        len => {
            // 64 bytes a call, the last chunk overlapping the one before.
            let mut all_ok = true;
            let mut chunks = v.chunks_exact(64);
            for chunk in &mut chunks {
                if let Ok(chunk) = <&[u8; 64]>::try_from(chunk) {
                    all_ok &= chunk_ok(chunk, ok);
                }
            }
            if !chunks.remainder().is_empty() {
                all_ok &= at::<64, F>(v, len - 64, ok);
            }
            all_ok
        }
    }
}

/// The byte ranges of the checks below, for their eight-byte forms.
pub(crate) const DIGITS: &[(u8, u8)] = &[(b'0', b'9')];
pub(crate) const PRINTABLE: &[(u8, u8)] = &[(0x20, 0x7E)];
pub(crate) const ALNUM_SPACE: &[(u8, u8)] =
    &[(b'0', b'9'), (b'A', b'Z'), (b'a', b'z'), (b' ', b' ')];
pub(crate) const TRACK_CHARS: &[(u8, u8)] = &[(b'0', b'9'), (b'=', b'='), (b'D', b'D')];
pub(crate) const HEX_DIGITS: &[(u8, u8)] = &[(b'0', b'9'), (b'A', b'F'), (b'a', b'f')];

#[inline(always)]
fn is_digit(b: u8) -> bool {
    b.wrapping_sub(b'0') < 10
}

/// Every byte an ASCII digit.
#[inline(always)]
pub(crate) fn all_digits(v: &[u8]) -> bool {
    let word_ok = |x| word_in_ranges(x, DIGITS);
    all_bytes(v, b'0', word_ok, is_digit)
}

/// Every byte printable ASCII (`0x20..=0x7E`).
#[inline(always)]
pub(crate) fn all_printable(v: &[u8]) -> bool {
    let word_ok = |x| word_in_ranges(x, PRINTABLE);
    all_bytes(v, b'0', word_ok, |b| b.wrapping_sub(0x20) < 0x5F)
}

/// Every byte a letter, digit or space.
#[inline(always)]
pub(crate) fn all_alnum_space(v: &[u8]) -> bool {
    let word_ok = |x| word_in_ranges(x, ALNUM_SPACE);
    all_bytes(v, b'0', word_ok, |b| {
        is_digit(b) | ((b | 0x20).wrapping_sub(b'a') < 26) | (b == b' ')
    })
}

/// Every byte track data: a digit, `=` or `D`.
#[inline(always)]
pub(crate) fn all_track(v: &[u8]) -> bool {
    let word_ok = |x| word_in_ranges(x, TRACK_CHARS);
    all_bytes(v, b'0', word_ok, |b| {
        is_digit(b) | (b == b'=') | (b == b'D')
    })
}

/// Whether every byte of ASCII `v` belongs to `class`.
#[inline]
pub fn class_ok(class: DataClass, v: &[u8]) -> bool {
    match class {
        DataClass::B => true,
        DataClass::N => all_digits(v),
        DataClass::Ans => all_printable(v),
        DataClass::An => all_alnum_space(v),
        DataClass::Z => all_track(v),
        DataClass::Xn => match v.split_first() {
            Some((sign, digits)) => matches!(sign, b'C' | b'D') && all_digits(digits),
            None => true,
        },
        _ => {
            let mask = class_mask(class);
            v.iter().fold(0u8, |bad, &b| {
                bad | u8::from(CLASS_BITS[usize::from(b)] & mask == 0)
            }) == 0
        }
    }
}

/// Index of the first byte of ASCII `v` that is not in `class` (for error offsets).
pub fn first_invalid(class: DataClass, v: &[u8]) -> Option<usize> {
    if class == DataClass::Xn {
        return match v.split_first() {
            Some((sign, _)) if !matches!(sign, b'C' | b'D') => Some(0),
            Some((_, digits)) => digits
                .iter()
                .position(|b| !b.is_ascii_digit())
                .map(|i| i + 1),
            None => None,
        };
    }
    let mask = class_mask(class);
    v.iter()
        .position(|&b| CLASS_BITS[usize::from(b)] & mask == 0)
}

/// Index of the first EBCDIC byte of `v` whose ASCII equivalent is not in `class`.
pub fn first_invalid_ebcdic(class: DataClass, v: &[u8]) -> Option<usize> {
    let mut ascii = [0u8; 64];
    for (chunk_no, chunk) in v.chunks(ascii.len()).enumerate() {
        for (i, &e) in chunk.iter().enumerate() {
            match ebcdic_to_ascii(e) {
                Some(a) => ascii[i] = a,
                None => return Some(chunk_no * 64 + i),
            }
        }
        // x+n's sign rule only applies to the first character of the field.
        let class = if chunk_no > 0 && class == DataClass::Xn {
            DataClass::N
        } else {
            class
        };
        if let Some(i) = first_invalid(class, &ascii[..chunk.len()]) {
            return Some(chunk_no * 64 + i);
        }
    }
    None
}

/// Whether `v` is ASCII hex (either case).
#[inline]
pub fn is_hex(v: &[u8]) -> bool {
    let word_ok = |x| word_in_ranges(x, HEX_DIGITS);
    all_bytes(v, b'0', word_ok, |b| {
        is_digit(b) | ((b | 0x20).wrapping_sub(b'a') < 6)
    })
}

/// Sixteen ASCII hex digits (already checked with [`is_hex`]) to their value, eight at a
/// time: each byte becomes its nibble, then neighbouring nibbles and bytes are folded.
#[inline]
pub fn hex16_to_u64(v: &[u8; 16]) -> u64 {
    let half = |w: [u8; 8]| -> u64 {
        let x = u64::from_be_bytes(w);
        // '0'-'9' -> 0-9 from the low nibble; letters (bit 6 set) get 9 more: 'A'/'a' -> 10.
        let nibbles = (x & splat(0x0F)) + ((x >> 6) & splat(0x01)) * 9;
        let bytes = ((nibbles >> 4) | nibbles) & 0x00FF_00FF_00FF_00FF;
        let pairs = ((bytes >> 8) | bytes) & 0x0000_FFFF_0000_FFFF;
        ((pairs >> 16) | pairs) & 0xFFFF_FFFF
    };
    let (hi, lo) = v.split_at(8);
    let word = |s: &[u8]| [s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]];
    half(word(hi)) << 32 | half(word(lo))
}

/// Value of one hex digit, or 0xFF.
#[inline]
pub fn hex_val(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'A'..=b'F' => b - b'A' + 10,
        b'a'..=b'f' => b - b'a' + 10,
        _ => 0xFF,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// The two upper-case hex characters of every byte value.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX_UPPER[i >> 4], HEX_UPPER[i & 0xF]];
        i += 1;
    }
    t
};

/// Append `v` as upper-case hex, through a stack buffer so that the output grows by whole
/// slices (a flattened iterator of pairs grew a `Vec` one byte and one capacity check at
/// a time). A table look-up per byte: arithmetic on four bytes in a register, and an SSE2
/// version on sixteen, measured no faster.
pub fn push_hex<O: for<'a> Extend<&'a u8>>(out: &mut O, v: &[u8]) {
    let mut buf = [[0u8; 2]; 64];
    for chunk in v.chunks(64) {
        for (pair, &b) in buf.iter_mut().zip(chunk) {
            *pair = HEX_PAIRS[usize::from(b)];
        }
        out.extend(buf[..chunk.len()].as_flattened());
    }
}

/// Append `v` to `out` as upper-case hex, written in place: 16 bytes at a time in vector
/// lanes, then four pairs to a store, then pair by pair. Copied out of a stack buffer just
/// written (as [`push_hex`] does for any `Extend`), the pairs stalled store forwarding (the
/// copy's wide loads waited for the pairs' narrow stores), and a store per pair filled the
/// store queue.
pub fn push_hex_in_place(out: &mut Vec<u8>, v: &[u8]) {
    let start = out.len();
    out.resize(start + 2 * v.len(), 0);
    let Some(dst) = out.get_mut(start..) else {
        return;
    };
    let (mut wide, mut sixteen) = (dst.chunks_exact_mut(32), v.chunks_exact(16));
    for (d, s) in (&mut wide).zip(&mut sixteen) {
        if let (Ok(d), Ok(s)) = (<&mut [u8; 32]>::try_from(d), <&[u8; 16]>::try_from(s)) {
            hex_of_16(s, d);
        }
    }
    let pair = |b: u8| u64::from(u16::from_le_bytes(HEX_PAIRS[usize::from(b)]));
    let (mut eight, mut four) = (
        wide.into_remainder().chunks_exact_mut(8),
        sixteen.remainder().chunks_exact(4),
    );
    for (d, s) in (&mut eight).zip(&mut four) {
        if let (Ok(d), &[a, b, c, e]) = (<&mut [u8; 8]>::try_from(d), s) {
            let w = pair(a) | pair(b) << 16 | pair(c) << 32 | pair(e) << 48;
            *d = w.to_le_bytes();
        }
    }
    for (d, &b) in eight
        .into_remainder()
        .chunks_exact_mut(2)
        .zip(four.remainder())
    {
        d.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
    }
}

/// Sixteen bytes as 32 upper-case hex digits, in fixed-size lanes that LLVM vectorises.
#[inline(always)]
fn hex_of_16(src: &[u8; 16], dst: &mut [u8; 32]) {
    let digit = |n: u8| n + b'0' + 7 * u8::from(n > 9);
    let (hi, lo) = (src.map(|b| digit(b >> 4)), src.map(|b| digit(b & 0x0F)));
    // Paired as 16-bit lanes (first digit in the low byte): an interleave of the two
    // vectors, where storing them byte by byte had LLVM widen and mask every byte.
    let pairs: [u16; 16] = std::array::from_fn(|i| u16::from(hi[i]) | u16::from(lo[i]) << 8);
    for (d, pair) in dst.chunks_exact_mut(2).zip(pairs) {
        d.copy_from_slice(&pair.to_le_bytes());
    }
}

/// `n` in decimal, zero-padded to `width` digits (more when `n` needs them; at most 20),
/// as ASCII in a stack buffer: `(buffer, start)`, the digits being `&buffer[start..]`.
pub fn decimal(n: u64, width: usize) -> ([u8; 20], usize) {
    let mut digits = [b'0'; 20];
    let (mut at, mut rest) = (digits.len(), n);
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    (digits, at.min(digits.len().saturating_sub(width)))
}

/// Append `v` to a string as upper-case hex (see [`push_hex`]).
pub fn push_hex_str(out: &mut String, v: &[u8]) {
    let mut buf = [[0u8; 2]; 64];
    for chunk in v.chunks(64) {
        for (pair, &b) in buf.iter_mut().zip(chunk) {
            *pair = HEX_PAIRS[usize::from(b)];
        }
        // Hex digits: always ASCII.
        if let Ok(text) = std::str::from_utf8(buf[..chunk.len()].as_flattened()) {
            out.push_str(text);
        }
    }
}

/// Upper-case hex of `v` as a `String` (for human output).
pub fn to_hex(v: &[u8]) -> String {
    let mut out = Vec::with_capacity(v.len() * 2);
    push_hex(&mut out, v);
    String::from_utf8(out).unwrap_or_default()
}

/// Decode hex text (no separators) into bytes. `Err(index)` names the first bad character.
pub fn from_hex(text: &[u8]) -> Result<Vec<u8>, usize> {
    if !text.len().is_multiple_of(2) {
        return Err(text.len());
    }
    text.chunks_exact(2)
        .enumerate()
        .map(|(i, pair)| {
            let (hi, lo) = (hex_val(pair[0]), hex_val(pair[1]));
            if hi > 15 {
                Err(2 * i)
            } else if lo > 15 {
                Err(2 * i + 1)
            } else {
                Ok(hi << 4 | lo)
            }
        })
        .collect()
}

/// Nibble `i` (0 = high nibble of byte 0) of `v`.
#[inline]
fn nibble(v: &[u8], i: usize) -> u8 {
    let b = v[i / 2];
    if i.is_multiple_of(2) {
        b >> 4
    } else {
        b & 0xF
    }
}

/// Position of the data nibbles of a BCD field of `units` digits in `bytes` bytes:
/// the index of the first data nibble.
#[inline]
fn bcd_first_nibble(bytes: usize, units: usize, right_justified: bool) -> usize {
    if right_justified {
        bytes * 2 - units
    } else {
        0
    }
}

/// Check a packed BCD field: data nibbles in the class (`0-9`, plus `D` for track data)
/// and any pad nibble equal to `pad`. Returns the offending byte index on failure.
pub fn bcd_check(
    v: &[u8],
    units: usize,
    right_justified: bool,
    track: bool,
    pad: u8,
) -> Result<(), (usize, bool)> {
    let first = bcd_first_nibble(v.len(), units, right_justified);
    for i in 0..v.len() * 2 {
        let nib = nibble(v, i);
        let data = i >= first && i < first + units;
        if data {
            if nib > 9 && !(track && nib == 0xD) {
                return Err((i / 2, false));
            }
        } else if nib != pad {
            return Err((i / 2, true));
        }
    }
    Ok(())
}

/// Append the digits of a packed BCD field as ASCII (`D` nibbles as `D`).
pub fn bcd_to_ascii(v: &[u8], units: usize, right_justified: bool, out: &mut Vec<u8>) {
    let first = bcd_first_nibble(v.len(), units, right_justified);
    out.extend((first..first + units).map(|i| HEX_UPPER[usize::from(nibble(v, i))]));
}

/// Pack ASCII digits (and `=`/`D` as nibble D for track data) into BCD. The caller has
/// checked the class. `pad` fills the odd nibble: at the start when right-justified.
pub fn ascii_to_bcd(digits: &[u8], right_justified: bool, pad: u8, out: &mut impl Extend<u8>) {
    let nib = |c: u8| match c {
        b'=' | b'D' | b'd' => 0xD,
        c => c.wrapping_sub(b'0') & 0xF,
    };
    let odd = digits.len() % 2 == 1;
    let mut pending: Option<u8> = (odd && right_justified).then_some(pad);
    let mut bytes = [0u8; 1];
    for &c in digits {
        match pending.take() {
            Some(hi) => {
                bytes[0] = hi << 4 | nib(c);
                out.extend(bytes);
            }
            None => pending = Some(nib(c)),
        }
    }
    if let Some(hi) = pending {
        bytes[0] = hi << 4 | pad;
        out.extend(bytes);
    }
}

/// Read a length prefix of `prefix_bytes` bytes. `None` when it is not a number.
#[inline]
pub fn read_prefix(enc: PrefixEncoding, p: &[u8]) -> Option<usize> {
    match enc {
        PrefixEncoding::Ascii => p.iter().try_fold(0usize, |acc, &b| {
            let d = b.wrapping_sub(b'0');
            (d <= 9).then(|| acc * 10 + usize::from(d))
        }),
        PrefixEncoding::Ebcdic => p.iter().try_fold(0usize, |acc, &b| {
            let d = b.wrapping_sub(0xF0);
            (d <= 9).then(|| acc * 10 + usize::from(d))
        }),
        PrefixEncoding::Bcd => p.iter().try_fold(0usize, |acc, &b| {
            let (hi, lo) = (b >> 4, b & 0xF);
            (hi <= 9 && lo <= 9).then(|| acc * 100 + usize::from(hi) * 10 + usize::from(lo))
        }),
        PrefixEncoding::Binary => Some(p.iter().fold(0usize, |acc, &b| acc << 8 | usize::from(b))),
    }
}

/// Write `value` as a length prefix of `prefix_bytes` bytes (at most 4). The spec guarantees
/// it fits.
pub fn write_prefix(
    enc: PrefixEncoding,
    prefix_bytes: u8,
    value: usize,
    out: &mut impl Extend<u8>,
) {
    let n = usize::from(prefix_bytes).min(4);
    // Built in a register, lowest byte last on the wire: bytes stored one by one into a
    // buffer and read back as one word stalled store forwarding (perf: a tenth of an encode).
    let mut v = value;
    let mut word = 0u32;
    for k in 0..n {
        let byte = match enc {
            PrefixEncoding::Ascii | PrefixEncoding::Ebcdic => {
                let zero = if enc == PrefixEncoding::Ascii {
                    b'0'
                } else {
                    0xF0
                };
                let digit = zero + (v % 10) as u8;
                v /= 10;
                digit
            }
            PrefixEncoding::Bcd => {
                let two = (v % 100) as u8;
                v /= 100;
                (two / 10) << 4 | (two % 10)
            }
            PrefixEncoding::Binary => {
                let byte = (v & 0xFF) as u8;
                v >>= 8;
                byte
            }
        };
        word |= u32::from(byte) << (8 * k);
    }
    let bytes = word.to_be_bytes();
    out.extend(bytes.into_iter().skip(4 - n));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ebcdic_round_trips_printable_ascii() {
        for a in 0x20u8..=0x7E {
            let e = ascii_to_ebcdic(a).unwrap();
            assert_eq!(ebcdic_to_ascii(e), Some(a));
        }
        assert_eq!(ascii_to_ebcdic(b'0'), Some(0xF0));
        assert_eq!(ascii_to_ebcdic(0x7F), None);
        assert_eq!(ebcdic_to_ascii(0x00), None);
    }

    #[test]
    fn classes() {
        assert!(class_ok(DataClass::N, b"0123456789"));
        assert!(!class_ok(DataClass::N, b"01234a"));
        assert_eq!(first_invalid(DataClass::N, b"0123x5"), Some(4));
        assert!(class_ok(DataClass::An, b"ABC 123 xyz"));
        assert!(!class_ok(DataClass::An, b"AB-1"));
        assert!(class_ok(DataClass::Ans, b"AB-1 ~!"));
        assert!(!class_ok(DataClass::Ans, b"AB\n"));
        assert!(class_ok(DataClass::Z, b"4761739001010119=25121011234"));
        assert!(!class_ok(DataClass::Z, b"4761^"));
        assert!(class_ok(DataClass::Xn, b"C00000100"));
        assert_eq!(first_invalid(DataClass::Xn, b"X00000100"), Some(0));
        assert_eq!(first_invalid(DataClass::Xn, b"D0000a100"), Some(5));
        assert!(class_ok(DataClass::A, b"ab CD"));
        assert!(!class_ok(DataClass::A, b"ab1"));
        assert!(class_ok(DataClass::S, b"-/ *"));
        assert!(class_ok(DataClass::Ns, b"12-34"));
        assert!(class_ok(DataClass::As, b"ab-cd"));
        // Long inputs go through the vectorised loop; the bad byte is still found.
        let mut long = vec![b'7'; 300];
        assert!(class_ok(DataClass::N, &long));
        long[257] = b'/';
        assert!(!class_ok(DataClass::N, &long));
        assert_eq!(first_invalid(DataClass::N, &long), Some(257));
    }

    #[test]
    fn bcd_right_and_left_justified() {
        let mut packed = Vec::new();
        ascii_to_bcd(b"12345", true, 0, &mut packed);
        assert_eq!(packed, [0x01, 0x23, 0x45]);
        let mut text = Vec::new();
        bcd_to_ascii(&packed, 5, true, &mut text);
        assert_eq!(text, b"12345");
        assert!(bcd_check(&packed, 5, true, false, 0).is_ok());
        assert_eq!(bcd_check(&packed, 5, true, false, 0xF), Err((0, true)));

        let mut packed = Vec::new();
        ascii_to_bcd(b"4761=2512", false, 0xF, &mut packed);
        assert_eq!(packed, [0x47, 0x61, 0xD2, 0x51, 0x2F]);
        assert!(bcd_check(&packed, 9, false, true, 0xF).is_ok());
        assert_eq!(bcd_check(&packed, 9, false, false, 0xF), Err((2, false)));
        let mut text = Vec::new();
        bcd_to_ascii(&packed, 9, false, &mut text);
        assert_eq!(text, b"4761D2512");
    }

    #[test]
    fn prefixes_round_trip() {
        for (enc, bytes, value) in [
            (PrefixEncoding::Ascii, 3u8, 999usize),
            (PrefixEncoding::Ascii, 2, 7),
            (PrefixEncoding::Ebcdic, 2, 42),
            (PrefixEncoding::Bcd, 1, 37),
            (PrefixEncoding::Bcd, 2, 999),
            (PrefixEncoding::Binary, 1, 255),
            (PrefixEncoding::Binary, 2, 4000),
        ] {
            let mut out = Vec::new();
            write_prefix(enc, bytes, value, &mut out);
            assert_eq!(out.len(), usize::from(bytes));
            assert_eq!(read_prefix(enc, &out), Some(value), "{enc:?}");
        }
        assert_eq!(read_prefix(PrefixEncoding::Ascii, b"1a"), None);
        assert_eq!(read_prefix(PrefixEncoding::Bcd, &[0x1A]), None);
    }

    #[test]
    fn hex_of_every_byte_at_every_position_matches_the_table() {
        for len in 0..=40 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut v = vec![0x5Au8; len];
                    v[at] = b;
                    let mut out = Vec::new();
                    push_hex(&mut out, &v);
                    let expected: Vec<u8> =
                        v.iter().flat_map(|&b| HEX_PAIRS[usize::from(b)]).collect();
                    assert_eq!(out, expected, "len {len} at {at} byte {b:#04x}");
                    // In place, after what the buffer already holds.
                    let mut in_place = b"ab".to_vec();
                    push_hex_in_place(&mut in_place, &v);
                    assert_eq!(in_place[..2], *b"ab");
                    assert_eq!(in_place[2..], expected, "in place: len {len} at {at}");
                }
            }
        }
    }

    #[test]
    fn short_checks_agree_with_the_byte_predicates() {
        // Every byte value at every position of every short length, against the plain
        // per-byte rule: the two-word (SWAR) path must neither carry nor borrow between bytes.
        type Check = (fn(&[u8]) -> bool, fn(u8) -> bool);
        let checks: [Check; 5] = [
            (all_digits, |b| b.is_ascii_digit()),
            (all_printable, |b| (0x20..=0x7E).contains(&b)),
            (all_alnum_space, |b| b.is_ascii_alphanumeric() || b == b' '),
            (all_track, |b| b.is_ascii_digit() || b == b'=' || b == b'D'),
            (is_hex, |b| b.is_ascii_hexdigit()),
        ];
        for (i, (fast, byte_ok)) in checks.iter().enumerate() {
            for len in 0..40 {
                for at in 0..len {
                    for b in 0..=255u8 {
                        let mut v = vec![b'7'; len];
                        v[at] = b;
                        assert_eq!(fast(&v), byte_ok(b), "check {i} len {len} at {at} {b:#04x}");
                    }
                }
            }
        }
    }

    #[test]
    fn hex_bitmaps() {
        for value in [0u64, u64::MAX, 0xF020_0000_0080_8001, 0x0123_4567_89AB_CDEF] {
            let upper = format!("{value:016X}");
            let lower = format!("{value:016x}");
            assert_eq!(hex16_to_u64(upper.as_bytes().try_into().unwrap()), value);
            assert_eq!(hex16_to_u64(lower.as_bytes().try_into().unwrap()), value);
        }
    }

    #[test]
    fn chunked_checks_agree_with_bytewise_ones_at_every_length_and_position() {
        for len in 0..40 {
            for bad_at in 0..len {
                for bad in [0u8, b'/', b':', 0x7F, 0x80, 0xB9, 0xFF, b'a'] {
                    let mut v = vec![b'5'; len];
                    v[bad_at] = bad;
                    assert_eq!(all_digits(&v), v.iter().all(u8::is_ascii_digit), "{v:?}");
                    assert_eq!(
                        all_printable(&v),
                        v.iter().all(|b| (0x20..=0x7E).contains(b)),
                        "{v:?}"
                    );
                }
            }
            assert!(all_digits(&vec![b'9'; len]) && all_printable(&vec![b'~'; len]));
        }
    }

    #[test]
    fn decimal_digits_are_zero_padded_to_the_width() {
        for (n, width) in [
            (0u64, 0),
            (0, 6),
            (42, 6),
            (999_999, 6),
            (1_234_567, 6),
            (u64::MAX, 3),
        ] {
            let (digits, start) = decimal(n, width);
            assert_eq!(&digits[start..], format!("{n:0width$}").as_bytes());
        }
    }

    #[test]
    fn hex() {
        assert_eq!(to_hex(&[0x01, 0xAB]), "01AB");
        // Appending, across the 64-byte chunks of the stack buffer.
        let bytes: Vec<u8> = (0..=255u8).chain(0..9).collect();
        let mut text = String::from("x:");
        push_hex_str(&mut text, &bytes);
        let expected: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(text, format!("x:{expected}"));
        assert_eq!(from_hex(b"01ab").unwrap(), [0x01, 0xAB]);
        assert_eq!(from_hex(b"01ag"), Err(3));
        assert_eq!(from_hex(b"012"), Err(3));
        assert!(is_hex(b"00ffAA"));
        assert!(!is_hex(b"0g"));
        for len in 0..40usize {
            for at in 0..len {
                for bad in [b'/', b':', b'@', b'G', b'`', b'g', 0x80, 0xC1, 0xE6, 0x10] {
                    let mut v = vec![b'a'; len];
                    v[at] = bad;
                    assert!(!is_hex(&v), "{v:?}");
                }
            }
            assert!(is_hex(&b"0123456789abcdefABCDEF0123456789abcdefAB"[..len]));
        }
    }
}
