//! AES DUKPT (ANSI X9.24-3-2017): the initial key of a device from an AES base derivation
//! key and its initial key id, and the working keys (PIN, MAC, data) of each transaction.
//!
//! The key serial number is 12 bytes: the 8-byte initial key id (BDK id + derivation id)
//! and a 32-bit transaction counter with at most 16 bits set. Every key comes from one
//! AES-ECB encryption per 16 bytes of output of a derivation data block
//! `01 | block counter | key usage | algorithm | length in bits | data`.

use zeroize::{Zeroize, Zeroizing};

use crate::aes_key::AesKey;
use crate::error::{HsmError, Result};
use crate::key::Key;

/// The type of a key derived by AES DUKPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// Double-length TDES.
    Tdes2,
    /// Triple-length TDES.
    Tdes3,
    /// AES-128.
    Aes128,
    /// AES-192.
    Aes192,
    /// AES-256.
    Aes256,
}

impl KeyType {
    fn indicator(self) -> u16 {
        match self {
            KeyType::Tdes2 => 0,
            KeyType::Tdes3 => 1,
            KeyType::Aes128 => 2,
            KeyType::Aes192 => 3,
            KeyType::Aes256 => 4,
        }
    }

    fn len(self) -> usize {
        match self {
            KeyType::Tdes2 | KeyType::Aes128 => 16,
            KeyType::Tdes3 | KeyType::Aes192 => 24,
            KeyType::Aes256 => 32,
        }
    }

    fn of_aes(key: &AesKey) -> KeyType {
        match key.bytes().len() {
            16 => KeyType::Aes128,
            24 => KeyType::Aes192,
            _ => KeyType::Aes256,
        }
    }
}

/// What a working key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// Key encryption.
    KeyEncryption,
    /// PIN encryption.
    Pin,
    /// MAC generation (the request MAC of the device).
    MacGeneration,
    /// MAC verification (the response MAC the device checks).
    MacVerification,
    /// MAC both ways.
    MacBoth,
    /// Data encryption.
    DataEncrypt,
    /// Data decryption.
    DataDecrypt,
    /// Data both ways.
    DataBoth,
}

impl Usage {
    fn indicator(self) -> u16 {
        match self {
            Usage::KeyEncryption => 0x0002,
            Usage::Pin => 0x1000,
            Usage::MacGeneration => 0x2000,
            Usage::MacVerification => 0x2001,
            Usage::MacBoth => 0x2002,
            Usage::DataEncrypt => 0x3000,
            Usage::DataDecrypt => 0x3001,
            Usage::DataBoth => 0x3002,
        }
    }
}

const KEY_DERIVATION: u16 = 0x8000;
const INITIAL_KEY: u16 = 0x8001;

/// The 8-byte initial key id and the counter of a 12-byte key serial number.
fn split_ksn(ksn: &[u8]) -> Result<([u8; 8], u32)> {
    let ksn: &[u8; 12] = ksn
        .try_into()
        .map_err(|_| HsmError::Ksn("expected 12 bytes (AES DUKPT)"))?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&ksn[..8]);
    let counter = u32::from_be_bytes([ksn[8], ksn[9], ksn[10], ksn[11]]);
    Ok((id, counter))
}

fn derivation_data(usage: u16, key_type: KeyType, id: &[u8; 8], counter: u32) -> [u8; 16] {
    let mut data = [0u8; 16];
    data[0] = 1;
    data[1] = 1;
    data[2..4].copy_from_slice(&usage.to_be_bytes());
    data[4..6].copy_from_slice(&key_type.indicator().to_be_bytes());
    data[6..8].copy_from_slice(&((key_type.len() * 8) as u16).to_be_bytes());
    if usage == INITIAL_KEY {
        data[8..].copy_from_slice(id);
    } else {
        data[8..12].copy_from_slice(&id[4..]);
        data[12..].copy_from_slice(&counter.to_be_bytes());
    }
    data
}

/// `key_type.len()` bytes: AES-ECB of the derivation data under `key`, block counter 1, 2.
fn derive(key: &AesKey, key_type: KeyType, mut data: [u8; 16]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(32));
    for counter in 1..=key_type.len().div_ceil(16) {
        data[1] = counter as u8;
        let mut block = data;
        key.encrypt_block(&mut block);
        out.extend_from_slice(&block);
        block.zeroize();
    }
    out.truncate(key_type.len());
    out
}

/// The device's initial key from the base derivation key and its 8-byte initial key id.
pub fn initial_key(bdk: &AesKey, initial_key_id: &[u8]) -> Result<AesKey> {
    let id: [u8; 8] = initial_key_id
        .try_into()
        .map_err(|_| HsmError::Ksn("an initial key id of 8 bytes"))?;
    let key_type = KeyType::of_aes(bdk);
    AesKey::new(&derive(
        bdk,
        key_type,
        derivation_data(INITIAL_KEY, key_type, &id, 0),
    ))
}

/// The working key of `usage` and `key_type` for the 12-byte `ksn`, from the initial key
/// (the host's derivation: one intermediate key per set bit of the counter).
pub fn working_key(initial: &AesKey, ksn: &[u8], usage: Usage, key_type: KeyType) -> Result<Key> {
    let (id, counter) = split_ksn(ksn)?;
    if counter == 0 {
        return Err(HsmError::Ksn("a transaction counter of 0"));
    }
    if counter.count_ones() > 16 {
        return Err(HsmError::Ksn(
            "a transaction counter with more than 16 bits set",
        ));
    }
    let base_type = KeyType::of_aes(initial);
    let mut key = initial.clone();
    let mut reached = 0u32;
    for bit in (0..32).rev().map(|shift| 1u32 << shift) {
        if counter & bit != 0 {
            reached |= bit;
            let data = derivation_data(KEY_DERIVATION, base_type, &id, reached);
            key = AesKey::new(&derive(&key, base_type, data))?;
        }
    }
    let data = derivation_data(usage.indicator(), key_type, &id, counter);
    let bytes = derive(&key, key_type, data);
    match key_type {
        KeyType::Tdes2 | KeyType::Tdes3 => Key::new(crate::key::Algorithm::Tdes, &bytes),
        _ => Key::new(crate::key::Algorithm::Aes, &bytes),
    }
}

/// The working key of `ksn` straight from the base derivation key.
pub fn working_key_for(bdk: &AesKey, ksn: &[u8], usage: Usage, key_type: KeyType) -> Result<Key> {
    let initial = initial_key(
        bdk,
        ksn.get(..8)
            .ok_or(HsmError::Ksn("expected 12 bytes (AES DUKPT)"))?,
    )?;
    working_key(&initial, ksn, usage, key_type)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{from_hex, to_hex};

    fn bdk128() -> AesKey {
        AesKey::new(&from_hex("FEDCBA9876543210F1F1F1F1F1F1F1F1").unwrap()).unwrap()
    }

    /// ANSI X9.24-3-2017 test vectors (the x9.org supplement): AES-128 BDK, initial key id
    /// 1234567890123456.
    #[test]
    fn x9_24_3_test_vectors() {
        let ik = initial_key(&bdk128(), &from_hex("1234567890123456").unwrap()).unwrap();
        assert_eq!(to_hex(ik.bytes()), "1273671EA26AC29AFA4D1084127652A1");
        let ksn = |counter: &str| from_hex(&format!("1234567890123456{counter}")).unwrap();
        for (counter, usage, expected) in [
            ("00000001", Usage::Pin, "AF8CB133A78F8DC2D1359F18527593FB"),
            ("00000002", Usage::Pin, "D30BDC73EC9714B000BEC66BDB7B6D09"),
            (
                "00000001",
                Usage::MacGeneration,
                "A2DC23DE6FDE0824A2BC321E08E4B8B7",
            ),
        ] {
            let key = working_key(&ik, &ksn(counter), usage, KeyType::Aes128).unwrap();
            assert_eq!(to_hex(key.bytes()), expected, "{usage:?} {counter}");
            let same = working_key_for(&bdk128(), &ksn(counter), usage, KeyType::Aes128).unwrap();
            assert_eq!(same.bytes(), key.bytes());
        }
        // AES-256 BDK of the supplement: the BDK-128 pattern twice.
        let bdk256 = AesKey::new(
            &from_hex("FEDCBA9876543210F1F1F1F1F1F1F1F1FEDCBA9876543210F1F1F1F1F1F1F1F1").unwrap(),
        )
        .unwrap();
        let ik = initial_key(&bdk256, &from_hex("1234567890123456").unwrap()).unwrap();
        assert_eq!(
            to_hex(ik.bytes()),
            "CE9CE0C101D1138F97FB6CAD4DF045A7083D4EAE2D35A31789D01CCF0949550F"
        );
    }

    #[test]
    fn bad_counters_and_serial_numbers_are_refused() {
        let ik = initial_key(&bdk128(), &from_hex("1234567890123456").unwrap()).unwrap();
        for (ksn, why) in [
            ("123456789012345600000000", "a transaction counter of 0"),
            (
                "1234567890123456FFFF8000",
                "a transaction counter with more than 16 bits set",
            ),
            ("12345678901234560001", "expected 12 bytes (AES DUKPT)"),
        ] {
            let err = working_key(&ik, &from_hex(ksn).unwrap(), Usage::Pin, KeyType::Aes128);
            assert_eq!(err.unwrap_err(), HsmError::Ksn(why));
        }
    }
}
