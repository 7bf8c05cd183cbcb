//! TDES DUKPT (ANSI X9.24-1): the initial key of a device from the base derivation key and
//! its key serial number, the transaction key of each counter value, and the PIN variant.
//!
//! The key serial number is 10 bytes: the key set and device ids, then a 21-bit transaction
//! counter in its rightmost bits.

use zeroize::Zeroize;

use crate::error::{HsmError, Result};
use crate::tdes::{des_encrypt, TdesKey};

/// The mask XORed onto a key to make its companion key in the derivations.
const KEY_MASK: [u8; 16] = [
    0xC0, 0xC0, 0xC0, 0xC0, 0, 0, 0, 0, 0xC0, 0xC0, 0xC0, 0xC0, 0, 0, 0, 0,
];
/// The PIN encryption variant of a transaction key.
const PIN_VARIANT: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0xFF];
/// The MAC variant for requests (the device generates, the host verifies).
const MAC_REQUEST_VARIANT: [u8; 16] = [0, 0, 0, 0, 0, 0, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0];
/// The MAC variant for responses (the host generates, the device verifies).
const MAC_RESPONSE_VARIANT: [u8; 16] = [0, 0, 0, 0, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0, 0, 0];
/// The transaction counter's bits in the key serial number's last 8 bytes.
const COUNTER_BITS: u64 = 0x1F_FFFF;

fn ksn_of(ksn: &[u8]) -> Result<&[u8; 10]> {
    ksn.try_into()
        .map_err(|_| HsmError::Ksn("expected 10 bytes"))
}

/// The device's initial key (IPEK) from the base derivation key and any key serial number
/// of the device (its counter is ignored).
pub fn initial_key(bdk: &TdesKey, ksn: &[u8]) -> Result<TdesKey> {
    let ksn = ksn_of(ksn)?;
    if bdk.bytes().len() != 16 {
        return Err(HsmError::KeyLength {
            algorithm: "TDES DUKPT base derivation",
            len: bdk.bytes().len(),
            expected: "16",
        });
    }
    let mut reg = [0u8; 8];
    reg.copy_from_slice(&ksn[..8]);
    reg[7] &= 0xE0;
    let mut left = reg;
    bdk.encrypt_block(&mut left);
    let mut masked = [0u8; 16];
    for (m, (k, x)) in masked.iter_mut().zip(bdk.bytes().iter().zip(KEY_MASK)) {
        *m = k ^ x;
    }
    let companion = TdesKey::new(&masked)?;
    masked.zeroize();
    let mut right = reg;
    companion.encrypt_block(&mut right);
    let mut ipek = [0u8; 16];
    ipek[..8].copy_from_slice(&left);
    ipek[8..].copy_from_slice(&right);
    let key = TdesKey::new(&ipek);
    ipek.zeroize();
    left.zeroize();
    right.zeroize();
    key
}

/// The transaction key of the counter in `ksn`, from the device's initial key.
pub fn transaction_key(ipek: &TdesKey, ksn: &[u8]) -> Result<TdesKey> {
    let ksn = ksn_of(ksn)?;
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&ksn[2..]);
    let tail = u64::from_be_bytes(tail);
    let counter = tail & COUNTER_BITS;
    if counter == 0 {
        return Err(HsmError::Ksn("a transaction counter of 0"));
    }
    let mut reg = tail & !COUNTER_BITS;
    let mut key = [0u8; 16];
    key.copy_from_slice(ipek.bytes());
    let mut bit = 1u64 << 20;
    while bit != 0 {
        if counter & bit != 0 {
            reg |= bit;
            key = next_key(&key, reg);
        }
        bit >>= 1;
    }
    let derived = TdesKey::new(&key);
    key.zeroize();
    derived
}

/// The PIN encryption key of a transaction key.
pub fn pin_key(transaction_key: &TdesKey) -> Result<TdesKey> {
    variant(transaction_key, PIN_VARIANT)
}

/// The request MAC key of a transaction key (the device's MAC on its requests).
pub fn mac_request_key(transaction_key: &TdesKey) -> Result<TdesKey> {
    variant(transaction_key, MAC_REQUEST_VARIANT)
}

/// The response MAC key of a transaction key (the host's MAC on its answers).
pub fn mac_response_key(transaction_key: &TdesKey) -> Result<TdesKey> {
    variant(transaction_key, MAC_RESPONSE_VARIANT)
}

fn variant(transaction_key: &TdesKey, mask: [u8; 16]) -> Result<TdesKey> {
    let mut key = [0u8; 16];
    for (k, (t, v)) in key.iter_mut().zip(transaction_key.bytes().iter().zip(mask)) {
        *k = t ^ v;
    }
    let pin = TdesKey::new(&key);
    key.zeroize();
    pin
}

/// The PIN encryption key of `ksn` straight from the base derivation key.
pub fn pin_key_for(bdk: &TdesKey, ksn: &[u8]) -> Result<TdesKey> {
    pin_key(&transaction_key(&initial_key(bdk, ksn)?, ksn)?)
}

/// The non-reversible key generation process: the key after `key` for register `reg`.
fn next_key(key: &[u8; 16], reg: u64) -> [u8; 16] {
    let half = |key: &[u8; 16]| {
        let (mut left, mut right) = ([0u8; 8], [0u8; 8]);
        left.copy_from_slice(&key[..8]);
        right.copy_from_slice(&key[8..]);
        let mut block = (reg ^ u64::from_be_bytes(right)).to_be_bytes();
        des_encrypt(&left, &mut block);
        let out = (u64::from_be_bytes(block) ^ u64::from_be_bytes(right)).to_be_bytes();
        left.zeroize();
        right.zeroize();
        out
    };
    let mut masked = *key;
    for (m, x) in masked.iter_mut().zip(KEY_MASK) {
        *m ^= x;
    }
    let mut next = [0u8; 16];
    next[..8].copy_from_slice(&half(&masked));
    next[8..].copy_from_slice(&half(key));
    masked.zeroize();
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{from_hex, to_hex};

    fn bdk() -> TdesKey {
        TdesKey::new(&from_hex("0123456789ABCDEFFEDCBA9876543210").unwrap()).unwrap()
    }

    /// ANSI X9.24-1 (2004), annex A: the initial key, the transaction keys of the first
    /// counter values of the test device, and the PIN key (its variant) of the first.
    #[test]
    fn x9_24_1_test_vectors() {
        let ksn = |counter: &str| from_hex(&format!("FFFF9876543210E{counter}")).unwrap();
        let ipek = initial_key(&bdk(), &ksn("00001")).unwrap();
        assert_eq!(to_hex(ipek.bytes()), "6AC292FAA1315B4D858AB3A3D7D5933A");
        for (counter, expected) in [
            ("00001", "042666B49184CFA368DE9628D0397BC9"),
            ("00002", "C46551CEF9FD24B0AA9AD834130D3BC7"),
            ("00003", "0DF3D9422ACA56E547676D07AD6BADFA"),
        ] {
            let key = transaction_key(&ipek, &ksn(counter)).unwrap();
            assert_eq!(to_hex(key.bytes()), expected, "counter {counter}");
        }
        for (counter, expected, encrypted) in [
            (
                "00001",
                "042666B49184CF5C68DE9628D0397B36",
                "1B9C1845EB993A7A",
            ),
            (
                "00002",
                "C46551CEF9FD244FAA9AD834130D3B38",
                "10A01C8D02C69107",
            ),
            (
                "00003",
                "0DF3D9422ACA561A47676D07AD6BAD05",
                "18DC07B94797B466",
            ),
        ] {
            let pin = pin_key_for(&bdk(), &ksn(counter)).unwrap();
            assert_eq!(to_hex(pin.bytes()), expected, "counter {counter}");
            // The annex's PIN block: PIN 1234, PAN 4012345678909, format 0.
            let pan = Some(&b"4012345678909"[..]);
            let mut block = *crate::pin::clear_block(
                crate::pin::Format::Iso0,
                b"1234",
                pan,
                &mut crate::pin::NoFill,
            )
            .unwrap();
            pin.encrypt_block(&mut block);
            assert_eq!(to_hex(&block), encrypted, "counter {counter}");
        }
    }

    /// The MAC variants of the first transaction key: its bytes with 0xFF in byte 6 and 14
    /// (request) or 4 and 12 (response), X9.24-1 annex A.
    #[test]
    fn mac_variants_of_the_first_transaction_key() {
        let ksn = from_hex("FFFF9876543210E00001").unwrap();
        let key = transaction_key(&initial_key(&bdk(), &ksn).unwrap(), &ksn).unwrap();
        let request = mac_request_key(&key).unwrap();
        assert_eq!(to_hex(request.bytes()), "042666B4918430A368DE9628D03984C9");
        let response = mac_response_key(&key).unwrap();
        assert_eq!(to_hex(response.bytes()), "042666B46E84CFA368DE96282F397BC9");
    }

    #[test]
    fn bad_serial_numbers_are_refused() {
        assert_eq!(
            initial_key(&bdk(), &[0u8; 9]).unwrap_err(),
            HsmError::Ksn("expected 10 bytes")
        );
        let zero = from_hex("FFFF9876543210E00000").unwrap();
        let ipek = initial_key(&bdk(), &zero).unwrap();
        assert!(matches!(
            transaction_key(&ipek, &zero),
            Err(HsmError::Ksn(_))
        ));
    }
}
