//! `switchyard-hsm`: the cryptography an acquirer switch needs for card security, as a
//! software security module: TDES keys and their check values, ANSI X9.24-1 TDES DUKPT key
//! derivation, ISO 9564-1 PIN blocks (formats 0, 1 and 3) and their translation from one key
//! to another, ISO 9797-1 MACs (algorithms 1 and 3) and AES-CMAC. Primitives come from RustCrypto (`des`, `aes`, `cmac`); every
//! key and clear PIN buffer is zeroised when dropped (`zeroize`), and no key, PIN or PIN
//! block is ever put in an error or a `Debug` output.
//!
//! This is not a PCI PIN certified device: it is for tests, labs and small pilots.
//! Production runs the same operations in a hardware security module.
//!
//! # Layout
//! - [`tdes`]: [`TdesKey`], block encryption, key check values.
//! - [`dukpt`]: TDES DUKPT (initial key, transaction keys, the PIN variant).
//! - [`pin`]: ISO 9564-1 PIN blocks and [`pin::translate`].
//! - [`mac`]: ISO 9797-1 algorithms 1 and 3 (X9.9, X9.19), AES-CMAC (RFC 4493).

#![forbid(unsafe_code)]

pub mod aes_key;
pub mod dukpt;
pub mod dukpt_aes;
pub mod error;
pub mod key;
pub mod mac;
pub mod pin;
pub mod tdes;
pub mod wrap;

pub use aes_key::AesKey;
pub use error::{HsmError, Result};
pub use key::{Algorithm, Key};
pub use tdes::TdesKey;

/// Hex digits of `text` as bytes (for keys and vectors given as hex).
pub fn from_hex(text: &str) -> Result<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return Err(HsmError::Hex { at: digits.len() });
    }
    let nibble = |at: usize| match digits[at] {
        b @ b'0'..=b'9' => Ok(b - b'0'),
        b @ b'a'..=b'f' => Ok(b - b'a' + 10),
        b @ b'A'..=b'F' => Ok(b - b'A' + 10),
        _ => Err(HsmError::Hex { at }),
    };
    (0..digits.len() / 2)
        .map(|i| Ok(nibble(2 * i)? << 4 | nibble(2 * i + 1)?))
        .collect()
}

/// Upper-case hex of `bytes` (for check values and test output; never for keys).
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
        .map(char::from)
        .collect()
}
