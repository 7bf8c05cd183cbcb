//! A working key of either algorithm, as the key store and the security module hold them.

use crate::aes_key::AesKey;
use crate::error::{HsmError, Result};
use crate::tdes::TdesKey;

/// The algorithm of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Triple DES, double or triple length.
    Tdes,
    /// AES, 128, 192 or 256 bits.
    Aes,
}

impl Algorithm {
    /// The name used in the key store and the `keys` command (`tdes`, `aes`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Tdes => "tdes",
            Algorithm::Aes => "aes",
        }
    }

    /// The algorithm of a name from [`Algorithm::name`].
    pub fn from_name(name: &str) -> Option<Algorithm> {
        match name {
            "tdes" => Some(Algorithm::Tdes),
            "aes" => Some(Algorithm::Aes),
            _ => None,
        }
    }
}

/// A TDES or AES key. Zeroised on drop (each variant is); `Debug` shows the check value.
#[derive(Clone, Debug)]
pub enum Key {
    /// A TDES key.
    Tdes(TdesKey),
    /// An AES key.
    Aes(AesKey),
}

impl Key {
    /// A key of `algorithm` from its bytes.
    pub fn new(algorithm: Algorithm, bytes: &[u8]) -> Result<Key> {
        Ok(match algorithm {
            Algorithm::Tdes => Key::Tdes(TdesKey::new(bytes)?),
            Algorithm::Aes => Key::Aes(AesKey::new(bytes)?),
        })
    }

    /// Its algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Key::Tdes(_) => Algorithm::Tdes,
            Key::Aes(_) => Algorithm::Aes,
        }
    }

    /// Its bytes (for wrapping and deriving; never for output).
    pub fn bytes(&self) -> &[u8] {
        match self {
            Key::Tdes(k) => k.bytes(),
            Key::Aes(k) => k.bytes(),
        }
    }

    /// Its check value (TDES: a zero block encrypted; AES: the CMAC of a zero block).
    pub fn check_value(&self) -> [u8; 3] {
        match self {
            Key::Tdes(k) => k.check_value(),
            Key::Aes(k) => k.check_value(),
        }
    }

    /// The TDES key, or an error naming what was needed.
    pub fn tdes(&self, role: &'static str) -> Result<&TdesKey> {
        match self {
            Key::Tdes(k) => Ok(k),
            Key::Aes(_) => Err(HsmError::WrongAlgorithm {
                role,
                needs: "TDES",
            }),
        }
    }

    /// The AES key, or an error naming what was needed.
    pub fn aes(&self, role: &'static str) -> Result<&AesKey> {
        match self {
            Key::Aes(k) => Ok(k),
            Key::Tdes(_) => Err(HsmError::WrongAlgorithm { role, needs: "AES" }),
        }
    }
}
