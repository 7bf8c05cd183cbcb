//! TDES keys (double or triple length), single-block encryption, key check values.

use des::cipher::generic_array::GenericArray;
use des::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use des::{Des, TdesEde2, TdesEde3};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{HsmError, Result};

/// A TDES key: 16 bytes (K1 K2, two-key) or 24 (K1 K2 K3). Zeroised on drop; its `Debug`
/// shows only its check value. The ciphers are made from fixed-size slices of it, so that
/// no length check can fail at use and leave a block unencrypted.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct TdesKey {
    bytes: [u8; 24],
    len: usize,
}

impl TdesKey {
    /// A key from its bytes.
    pub fn new(bytes: &[u8]) -> Result<TdesKey> {
        if bytes.len() != 16 && bytes.len() != 24 {
            return Err(HsmError::KeyLength {
                algorithm: "TDES",
                len: bytes.len(),
                expected: "16 or 24",
            });
        }
        let mut key = TdesKey {
            bytes: [0; 24],
            len: bytes.len(),
        };
        key.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(key)
    }

    /// The key's bytes (for deriving other keys; never for output).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Encrypt one 8-byte block (ECB).
    pub fn encrypt_block(&self, block: &mut [u8; 8]) {
        let b = GenericArray::from_mut_slice(block);
        match self.len {
            16 => TdesEde2::new(GenericArray::from_slice(&self.bytes[..16])).encrypt_block(b),
            _ => TdesEde3::new(GenericArray::from_slice(&self.bytes)).encrypt_block(b),
        }
    }

    /// Decrypt one 8-byte block (ECB).
    pub fn decrypt_block(&self, block: &mut [u8; 8]) {
        let b = GenericArray::from_mut_slice(block);
        match self.len {
            16 => TdesEde2::new(GenericArray::from_slice(&self.bytes[..16])).decrypt_block(b),
            _ => TdesEde3::new(GenericArray::from_slice(&self.bytes)).decrypt_block(b),
        }
    }

    /// The key check value: the first 3 bytes of the encryption of a zero block.
    pub fn check_value(&self) -> [u8; 3] {
        let mut block = [0u8; 8];
        self.encrypt_block(&mut block);
        [block[0], block[1], block[2]]
    }
}

impl std::fmt::Debug for TdesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TdesKey(kcv {})", crate::to_hex(&self.check_value()))
    }
}

/// Single-DES encryption of one block under an 8-byte key (DUKPT's key generation and the
/// retail MAC use it).
pub(crate) fn des_encrypt(key: &[u8; 8], block: &mut [u8; 8]) {
    Des::new(GenericArray::from_slice(key)).encrypt_block(GenericArray::from_mut_slice(block));
}

/// Single-DES decryption of one block under an 8-byte key.
pub(crate) fn des_decrypt(key: &[u8; 8], block: &mut [u8; 8]) {
    Des::new(GenericArray::from_slice(key)).decrypt_block(GenericArray::from_mut_slice(block));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{from_hex, to_hex};

    #[test]
    fn check_value_of_the_standard_test_key() {
        let key = TdesKey::new(&from_hex("0123456789ABCDEFFEDCBA9876543210").unwrap()).unwrap();
        assert_eq!(to_hex(&key.check_value()), "08D7B4");
        assert_eq!(format!("{key:?}"), "TdesKey(kcv 08D7B4)");
    }

    #[test]
    fn a_block_decrypts_to_what_was_encrypted_and_bad_lengths_are_refused() {
        let key = TdesKey::new(&[7u8; 24]).unwrap();
        let mut block = *b"ABCDEFGH";
        key.encrypt_block(&mut block);
        assert_ne!(&block, b"ABCDEFGH");
        key.decrypt_block(&mut block);
        assert_eq!(&block, b"ABCDEFGH");
        assert!(matches!(
            TdesKey::new(&[0u8; 8]),
            Err(HsmError::KeyLength { len: 8, .. })
        ));
    }
}
