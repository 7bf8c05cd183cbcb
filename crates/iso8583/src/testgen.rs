//! Random valid messages for any spec: used by the property tests, the interop suite,
//! the benches and to seed the fuzz corpus. Deterministic for a seed; no dependencies.

use crate::mti::Mti;
use crate::spec::{DataClass, Encoding, LengthKind, Spec};
use crate::wire;

/// SplitMix64: tiny, fast, good enough to pick test values.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// One element of `set`.
    pub fn pick(&mut self, set: &[u8]) -> u8 {
        set[self.below(set.len())]
    }
}

const DIGITS: &[u8] = b"0123456789";
const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz ";
const SPECIAL: &[u8] = b" !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// A random logical value for field `n` of `spec` (see `MessageBuilder::set`).
pub fn random_value(spec: &Spec, n: u8, rng: &mut Rng) -> Vec<u8> {
    let Some(f) = spec.field(n) else {
        return Vec::new();
    };
    let max = usize::from(f.max);
    let len = match f.length {
        LengthKind::Fixed => max,
        _ => {
            let min = usize::from(f.min).max(1);
            // Keep long LLL fields modest so messages stay realistic in size.
            let top = max.min(64).max(min);
            min + rng.below(top - min + 1)
        }
    };
    let charset: Vec<u8> = match f.class {
        DataClass::N => DIGITS.to_vec(),
        DataClass::A => LETTERS.to_vec(),
        DataClass::S => SPECIAL.to_vec(),
        DataClass::An => [LETTERS, DIGITS].concat(),
        DataClass::As => [LETTERS, SPECIAL].concat(),
        DataClass::Ns => [DIGITS, SPECIAL].concat(),
        DataClass::Ans => [LETTERS, DIGITS, SPECIAL].concat(),
        DataClass::B => return (0..len).map(|_| rng.next_u64() as u8).collect(),
        DataClass::Z => {
            let sep = if matches!(f.encoding, Encoding::Bcd | Encoding::BcdLeft) {
                b'D'
            } else {
                b'='
            };
            let mut v: Vec<u8> = (0..len).map(|_| rng.pick(DIGITS)).collect();
            if len > 2 {
                let at = 1 + rng.below(len - 2);
                v[at] = sep;
            }
            return v;
        }
        DataClass::Xn => {
            let mut v = vec![rng.pick(b"CD")];
            v.extend((1..len).map(|_| rng.pick(DIGITS)));
            return v;
        }
    };
    (0..len).map(|_| rng.pick(&charset)).collect()
}

/// A random message: an MTI and 1..=30 fields with valid values, in field order.
pub fn random_message(spec: &Spec, rng: &mut Rng) -> (Mti, Vec<(u8, Vec<u8>)>) {
    const MTIS: [&str; 9] = [
        "0100", "0110", "0200", "0210", "0400", "0410", "0420", "0800", "0810",
    ];
    let mti = Mti::parse(MTIS[rng.below(MTIS.len())]).unwrap_or_else(|| unreachable!());
    let numbers: Vec<u8> = spec.fields().map(|f| f.number).collect();
    let wanted = 1 + rng.below(30.min(numbers.len()));
    let mut chosen: Vec<u8> = Vec::with_capacity(wanted);
    while chosen.len() < wanted {
        let n = numbers[rng.below(numbers.len())];
        if !chosen.contains(&n) {
            chosen.push(n);
        }
    }
    chosen.sort_unstable();
    let fields = chosen
        .into_iter()
        .map(|n| (n, random_value(spec, n, rng)))
        .collect();
    (mti, fields)
}

/// The text form of a logical value, as `decode` prints it (hex for binary fields).
pub fn value_text(spec: &Spec, n: u8, value: &[u8]) -> String {
    match spec.field(n) {
        Some(f) if f.class.is_binary() => wire::to_hex(value),
        _ => String::from_utf8_lossy(value).into_owned(),
    }
}
