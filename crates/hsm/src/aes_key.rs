//! AES keys (128, 192 or 256 bits), single-block encryption, key check values.

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::{Aes128, Aes192, Aes256};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{HsmError, Result};

/// An AES key of 16, 24 or 32 bytes. Zeroised on drop; its `Debug` shows only its check
/// value. As with [`crate::TdesKey`], the ciphers are made from fixed-size slices.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct AesKey {
    bytes: [u8; 32],
    len: usize,
}

impl AesKey {
    /// A key from its bytes.
    pub fn new(bytes: &[u8]) -> Result<AesKey> {
        if ![16, 24, 32].contains(&bytes.len()) {
            return Err(HsmError::KeyLength {
                algorithm: "AES",
                len: bytes.len(),
                expected: "16, 24 or 32",
            });
        }
        let mut key = AesKey {
            bytes: [0; 32],
            len: bytes.len(),
        };
        key.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(key)
    }

    /// The key's bytes (for deriving other keys; never for output).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Encrypt one 16-byte block (ECB).
    pub fn encrypt_block(&self, block: &mut [u8; 16]) {
        let b = GenericArray::from_mut_slice(block);
        match self.len {
            16 => Aes128::new(GenericArray::from_slice(&self.bytes[..16])).encrypt_block(b),
            24 => Aes192::new(GenericArray::from_slice(&self.bytes[..24])).encrypt_block(b),
            _ => Aes256::new(GenericArray::from_slice(&self.bytes)).encrypt_block(b),
        }
    }

    /// Decrypt one 16-byte block (ECB).
    pub fn decrypt_block(&self, block: &mut [u8; 16]) {
        let b = GenericArray::from_mut_slice(block);
        match self.len {
            16 => Aes128::new(GenericArray::from_slice(&self.bytes[..16])).decrypt_block(b),
            24 => Aes192::new(GenericArray::from_slice(&self.bytes[..24])).decrypt_block(b),
            _ => Aes256::new(GenericArray::from_slice(&self.bytes)).decrypt_block(b),
        }
    }

    /// The key check value as ANSI X9.24-1:2017 defines it for AES keys (and TR-31 blocks
    /// carry it): the first 3 bytes of the AES-CMAC of a block of zeros. (The older
    /// "encrypt a zero block" value is not used for AES: it is a known plaintext pair.)
    pub fn check_value(&self) -> [u8; 3] {
        let mac = crate::mac::aes_cmac(self.bytes(), &[0u8; 16]).unwrap_or([0; 16]);
        [mac[0], mac[1], mac[2]]
    }
}

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AesKey(kcv {})", crate::to_hex(&self.check_value()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{from_hex, to_hex};

    #[test]
    fn check_value_is_the_cmac_one_tr31_blocks_carry() {
        // TR-31:2018 A.7.4: the AES key 3F41...F8B8 has the check value 08793E.
        let key = AesKey::new(&from_hex("3F419E1CB7079442AA37474C2EFBF8B8").unwrap()).unwrap();
        assert_eq!(to_hex(&key.check_value()), "08793E");
        assert_eq!(format!("{key:?}"), "AesKey(kcv 08793E)");
        let mut block = [9u8; 16];
        key.encrypt_block(&mut block);
        key.decrypt_block(&mut block);
        assert_eq!(block, [9u8; 16]);
        assert!(matches!(
            AesKey::new(&[0u8; 20]),
            Err(HsmError::KeyLength { len: 20, .. })
        ));
    }
}
