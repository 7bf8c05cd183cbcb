//! `switchyard-hsm`: the cryptography an acquirer switch needs for card security, and the
//! security-module interface the switch calls it through. TDES and AES keys and their
//! check values; TDES DUKPT (ANSI X9.24-1) and AES DUKPT (X9.24-3); ISO 9564-1 PIN blocks
//! (formats 0, 1, 3 and 4) and their translation; ISO 9797-1 MACs (algorithms 1 and 3) and
//! AES-CMAC; key import under a zone master key (X9.17, TR-31 versions B and D).
//! Primitives come from RustCrypto (`des`, `aes`, `cmac`, `aes-gcm`); every key and clear
//! PIN buffer is zeroised when dropped (`zeroize`), and no key, PIN or PIN block is ever
//! put in an error or a `Debug` output. No tokio: the interface is async through boxed
//! futures, so a hardware module's network client implements it elsewhere.
//!
//! The [`software`] module is not a PCI PIN certified device: it is for tests, labs and
//! small pilots. Production runs the same operations in a hardware security module.
//!
//! # Layout
//! - [`tdes`], [`aes_key`], [`key`]: keys, block encryption, key check values.
//! - [`dukpt`], [`dukpt_aes`]: DUKPT key derivation.
//! - [`pin`]: ISO 9564-1 PIN blocks and [`pin::translate`].
//! - [`mac`]: ISO 9797-1 algorithms 1 and 3 (X9.9, X9.19), AES-CMAC (RFC 4493).
//! - [`wrap`]: X9.17 and TR-31 key import.
//! - [`module`]: the [`module::SecurityModule`] interface; [`software`]: its software
//!   implementation with an encrypted key store.

#![forbid(unsafe_code)]

pub mod aes_key;
pub mod dukpt;
pub mod dukpt_aes;
pub mod error;
pub mod key;
pub mod mac;
pub mod module;
pub mod pin;
pub mod software;
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
