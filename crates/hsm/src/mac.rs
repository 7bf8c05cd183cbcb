//! Message authentication codes: ISO 9797-1 algorithm 1 (CBC-MAC; ANSI X9.9 with a DES
//! key) and algorithm 3 (the retail MAC, ANSI X9.19) over DES, and AES-CMAC (NIST SP
//! 800-38B, RFC 4493) with an AES-128, -192 or -256 key.

use aes::{Aes128, Aes192, Aes256};
use cmac::{Cmac, Mac};
use zeroize::Zeroize;

use crate::error::{HsmError, Result};
use crate::tdes::{des_decrypt, des_encrypt, TdesKey};

/// ISO 9797-1 padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Method 1: zeros to a whole block (none when already whole; an empty message is one
    /// block of zeros).
    Zeros,
    /// Method 2: one 0x80 byte, then zeros to a whole block.
    Bit,
}

/// The message's blocks, padded.
fn blocks(message: &[u8], padding: Padding) -> impl Iterator<Item = [u8; 8]> + '_ {
    let padded_len = match padding {
        Padding::Zeros => message.len().max(1).next_multiple_of(8),
        Padding::Bit => (message.len() + 1).next_multiple_of(8),
    };
    (0..padded_len / 8).map(move |i| {
        let mut block = [0u8; 8];
        for (j, b) in block.iter_mut().enumerate() {
            let at = 8 * i + j;
            *b = match message.get(at) {
                Some(&byte) => byte,
                None if at == message.len() && padding == Padding::Bit => 0x80,
                None => 0,
            };
        }
        block
    })
}

fn xor_into(state: &mut [u8; 8], block: &[u8; 8]) {
    for (s, b) in state.iter_mut().zip(block) {
        *s ^= b;
    }
}

/// ISO 9797-1 algorithm 1: CBC-MAC under one key, a DES key (8 bytes; ANSI X9.9) or a
/// TDES key (16 or 24 bytes), the whole last block as the MAC.
pub fn iso9797_alg1(key: &[u8], message: &[u8], padding: Padding) -> Result<[u8; 8]> {
    let mut state = [0u8; 8];
    match key.len() {
        8 => {
            let mut k = [0u8; 8];
            k.copy_from_slice(key);
            for block in blocks(message, padding) {
                xor_into(&mut state, &block);
                des_encrypt(&k, &mut state);
            }
            k.zeroize();
        }
        _ => {
            let k = TdesKey::new(key)?;
            for block in blocks(message, padding) {
                xor_into(&mut state, &block);
                k.encrypt_block(&mut state);
            }
        }
    }
    Ok(state)
}

/// ISO 9797-1 algorithm 3, the retail MAC (ANSI X9.19): CBC under DES key K, the last
/// block then decrypted under K' and encrypted under K again. `key` is K ‖ K' (16 bytes).
pub fn iso9797_alg3(key: &[u8], message: &[u8], padding: Padding) -> Result<[u8; 8]> {
    if key.len() != 16 {
        return Err(HsmError::KeyLength {
            algorithm: "ISO 9797-1 algorithm 3",
            len: key.len(),
            expected: "16",
        });
    }
    let (mut k, mut k2) = ([0u8; 8], [0u8; 8]);
    k.copy_from_slice(&key[..8]);
    k2.copy_from_slice(&key[8..]);
    let mut state = [0u8; 8];
    for block in blocks(message, padding) {
        xor_into(&mut state, &block);
        des_encrypt(&k, &mut state);
    }
    des_decrypt(&k2, &mut state);
    des_encrypt(&k, &mut state);
    k.zeroize();
    k2.zeroize();
    Ok(state)
}

/// Whether two MACs are equal, in time that does not depend on where they differ.
pub fn same_mac(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The 8-byte TDES-CMAC (NIST SP 800-38B) of `message` under a 16- or 24-byte key (TR-31
/// version B uses it for its key derivation and its MAC).
pub fn tdes_cmac(key: &[u8], message: &[u8]) -> Result<[u8; 8]> {
    fn run<M: Mac + cmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Option<[u8; 8]> {
        let mut mac = <M as cmac::digest::KeyInit>::new_from_slice(key).ok()?;
        mac.update(message);
        mac.finalize().into_bytes().as_slice().try_into().ok()
    }
    let tag = match key.len() {
        16 => run::<Cmac<des::TdesEde2>>(key, message),
        24 => run::<Cmac<des::TdesEde3>>(key, message),
        _ => None,
    };
    tag.ok_or(HsmError::KeyLength {
        algorithm: "TDES",
        len: key.len(),
        expected: "16 or 24",
    })
}

/// The 16-byte AES-CMAC of `message` under `key`.
pub fn aes_cmac(key: &[u8], message: &[u8]) -> Result<[u8; 16]> {
    fn run<M: Mac + cmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Option<[u8; 16]> {
        let mut mac = <M as cmac::digest::KeyInit>::new_from_slice(key).ok()?;
        mac.update(message);
        mac.finalize().into_bytes().as_slice().try_into().ok()
    }
    let tag = match key.len() {
        16 => run::<Cmac<Aes128>>(key, message),
        24 => run::<Cmac<Aes192>>(key, message),
        32 => run::<Cmac<Aes256>>(key, message),
        _ => None,
    };
    tag.ok_or(HsmError::KeyLength {
        algorithm: "AES",
        len: key.len(),
        expected: "16, 24 or 32",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{from_hex, to_hex};

    /// ISO/IEC 9797-1 annex B (and ANSI X9.9 / X9.19): "Now is the time for all " and
    /// "Now is the time for it" under K = 0123456789ABCDEF, K' = FEDCBA9876543210.
    #[test]
    fn iso_9797_1_examples() {
        let k = from_hex("0123456789ABCDEF").unwrap();
        let kk = from_hex("0123456789ABCDEFFEDCBA9876543210").unwrap();
        let all = b"Now is the time for all ";
        let it = b"Now is the time for it";
        let alg1 = iso9797_alg1(&k, all, Padding::Zeros).unwrap();
        assert_eq!(to_hex(&alg1), "70A30640CC76DD8B");
        let alg3 = |m: &[u8], p| to_hex(&iso9797_alg3(&kk, m, p).unwrap());
        assert_eq!(alg3(all, Padding::Zeros), "A1C72E74EA3FA9B6");
        assert_eq!(alg3(all, Padding::Bit), "E9086230CA3BE796");
        assert_eq!(alg3(it, Padding::Zeros), "2E2B1428CC78254F");
        assert!(same_mac(
            &iso9797_alg3(&kk, all, Padding::Zeros).unwrap(),
            &from_hex("A1C72E74EA3FA9B6").unwrap()
        ));
        assert!(!same_mac(&alg1, &from_hex("A1C72E74EA3FA9B6").unwrap()));
        assert!(iso9797_alg3(&k, all, Padding::Zeros).is_err());
    }

    /// RFC 4493, section 4: the four examples with the AES-128 key.
    #[test]
    fn rfc_4493_examples() {
        let key = from_hex("2b7e151628aed2a6abf7158809cf4f3c").unwrap();
        let message = from_hex(
            "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51\
             30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
        )
        .unwrap();
        for (len, tag) in [
            (0, "BB1D6929E95937287FA37D129B756746"),
            (16, "070A16B46B4D4144F79BDD9DD04A287C"),
            (40, "DFA66747DE9AE63030CA32611497C827"),
            (64, "51F0BEBF7E3B9D92FC49741779363CFE"),
        ] {
            assert_eq!(
                to_hex(&aes_cmac(&key, &message[..len]).unwrap()),
                tag,
                "{len} bytes"
            );
        }
        assert!(aes_cmac(&key[..10], b"").is_err());
    }
}
