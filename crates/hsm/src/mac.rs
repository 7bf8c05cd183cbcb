//! AES-CMAC (NIST SP 800-38B, RFC 4493) over a message, with an AES-128, -192 or -256 key.

use aes::{Aes128, Aes192, Aes256};
use cmac::{Cmac, Mac};

use crate::error::{HsmError, Result};

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
