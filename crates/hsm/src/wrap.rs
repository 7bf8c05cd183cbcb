//! Working keys delivered under a key-encryption key: a zone master key (ZMK) or a key
//! block protection key (KBPK).
//!
//! - ANSI X9.17 / ECB: the key's 8-byte halves (or thirds) each TDES-encrypted under the
//!   ZMK, checked against the check value that comes with it.
//! - TR-31 (ANSI X9.143) key blocks, version B (TDES, CMAC-derived keys) and version D
//!   (AES): a 16-character header (plus optional blocks), the key data encrypted in CBC mode
//!   under a derived encryption key with the block's MAC as IV, and the MAC (CMAC under a
//!   derived MAC key over the header and the clear key data). Unwrapping checks the length,
//!   the header and the MAC before a key comes out.

use zeroize::{Zeroize, Zeroizing};

use crate::error::{HsmError, Result};
use crate::key::{Algorithm, Key};
use crate::mac::{aes_cmac, same_mac, tdes_cmac};
use crate::pin::Fill;
use crate::{from_hex, to_hex, AesKey, TdesKey};

fn bad(reason: impl Into<String>) -> HsmError {
    HsmError::KeyBlock(reason.into())
}

/// A key `wrapped` under `zmk` by X9.17 (ECB), checked against `check_value` when given.
pub fn import_x917(
    zmk: &TdesKey,
    wrapped: &[u8],
    algorithm: Algorithm,
    check_value: Option<&[u8]>,
) -> Result<Key> {
    if wrapped.is_empty() || !wrapped.len().is_multiple_of(8) {
        return Err(bad(format!(
            "an X9.17 key of {} bytes (whole 8-byte blocks)",
            wrapped.len()
        )));
    }
    let mut clear = Zeroizing::new(wrapped.to_vec());
    for chunk in clear.chunks_exact_mut(8) {
        let block: &mut [u8; 8] = chunk.try_into().map_err(|_| bad("block"))?;
        zmk.decrypt_block(block);
    }
    let key = Key::new(algorithm, &clear)?;
    check(&key, check_value)?;
    Ok(key)
}

/// `key` wrapped under `zmk` by X9.17 (ECB).
pub fn export_x917(zmk: &TdesKey, key: &Key) -> Result<Vec<u8>> {
    let mut out = key.bytes().to_vec();
    if !out.len().is_multiple_of(8) {
        return Err(bad("a key that is not whole 8-byte blocks"));
    }
    for chunk in out.chunks_exact_mut(8) {
        let block: &mut [u8; 8] = chunk.try_into().map_err(|_| bad("block"))?;
        zmk.encrypt_block(block);
    }
    Ok(out)
}

/// Whether `key`'s check value starts with `expected` (3 bytes usually; at least 2).
pub fn check(key: &Key, expected: Option<&[u8]>) -> Result<()> {
    check_value_matches(&key.check_value(), expected)
}

/// Whether the check value `kcv` starts with `expected` (when given).
pub fn check_value_matches(kcv: &[u8; 3], expected: Option<&[u8]>) -> Result<()> {
    let Some(expected) = expected else {
        return Ok(());
    };
    if expected.len() < 2 || expected.len() > 3 || !same_mac(&kcv[..expected.len()], expected) {
        return Err(bad(format!(
            "check value {} expected, the key has {}",
            to_hex(expected),
            to_hex(&kcv[..expected.len().min(3)])
        )));
    }
    Ok(())
}

/// The fields of a TR-31 header that say what a key may be used for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tr31Header {
    /// Version: `B` (TDES) or `D` (AES).
    pub version: char,
    /// Key usage: `P0` PIN encryption, `M0`-`M8` MAC keys, `K0` key encryption, `B0` BDK...
    pub usage: String,
    /// Algorithm: `T` TDES, `A` AES.
    pub algorithm: char,
    /// Mode of use: `E`, `D`, `B` (both), `C` (MAC both), `G`, `V`, `X` (derive), `N`.
    pub mode: char,
    /// Key version number (two characters).
    pub key_version: String,
    /// Exportability: `E`, `N`, `S`.
    pub exportability: char,
    /// Optional blocks as (id, data).
    pub optional: Vec<(String, String)>,
}

impl Tr31Header {
    /// A header with no optional blocks.
    pub fn new(version: char, usage: &str, algorithm: char, mode: char) -> Tr31Header {
        Tr31Header {
            version,
            usage: usage.to_string(),
            algorithm,
            mode,
            key_version: "00".to_string(),
            exportability: 'N',
            optional: Vec::new(),
        }
    }

    fn text(&self, total_len: usize) -> String {
        let mut text = format!(
            "{}{:04}{}{}{}{}{}{:02}00",
            self.version,
            total_len,
            self.usage,
            self.algorithm,
            self.mode,
            self.key_version,
            self.exportability,
            self.optional.len()
        );
        for (id, data) in &self.optional {
            text.push_str(&format!("{id}{:02X}{data}", data.len() + 4));
        }
        text
    }

    fn parse(block: &str) -> Result<(Tr31Header, usize)> {
        let ascii = block.as_bytes();
        if ascii.len() < 16 || !block.is_ascii() {
            return Err(bad("a header shorter than 16 characters"));
        }
        let field = |from: usize, to: usize| &block[from..to];
        let declared: usize = field(1, 5)
            .parse()
            .map_err(|_| bad("the length at offset 1 is not 4 digits"))?;
        if declared != ascii.len() {
            return Err(bad(format!(
                "the header says {declared} characters, the block has {}",
                ascii.len()
            )));
        }
        let count: usize = field(12, 14)
            .parse()
            .map_err(|_| bad("the optional block count at offset 12 is not 2 digits"))?;
        let mut at = 16;
        let mut optional = Vec::with_capacity(count);
        for _ in 0..count {
            let id = block
                .get(at..at + 2)
                .ok_or_else(|| bad(format!("optional block at offset {at}")))?;
            let len = block
                .get(at + 2..at + 4)
                .and_then(|h| usize::from_str_radix(h, 16).ok())
                .filter(|&len| len >= 4)
                .ok_or_else(|| bad(format!("optional block length at offset {}", at + 2)))?;
            let data = block.get(at + 4..at + len).ok_or_else(|| {
                bad(format!(
                    "optional block {id} at offset {at} runs past the end"
                ))
            })?;
            optional.push((id.to_string(), data.to_string()));
            at += len;
        }
        let chars: Vec<char> = block[..16].chars().collect();
        Ok((
            Tr31Header {
                version: chars[0],
                usage: field(5, 7).to_string(),
                algorithm: chars[7],
                mode: chars[8],
                key_version: field(9, 11).to_string(),
                exportability: chars[11],
                optional,
            },
            at,
        ))
    }
}

/// A block cipher for TR-31's CBC and CMAC: the KBPK's algorithm.
enum Cipher {
    Tdes(TdesKey),
    Aes(AesKey),
}

impl Cipher {
    fn block_len(&self) -> usize {
        match self {
            Cipher::Tdes(_) => 8,
            Cipher::Aes(_) => 16,
        }
    }

    fn cmac(&self, message: &[u8]) -> Result<Vec<u8>> {
        Ok(match self {
            Cipher::Tdes(k) => tdes_cmac(k.bytes(), message)?.to_vec(),
            Cipher::Aes(k) => aes_cmac(k.bytes(), message)?.to_vec(),
        })
    }

    fn block(&self, chunk: &mut [u8], encrypt: bool) -> Result<()> {
        match self {
            Cipher::Tdes(k) => {
                let b: &mut [u8; 8] = chunk.try_into().map_err(|_| bad("block"))?;
                if encrypt {
                    k.encrypt_block(b)
                } else {
                    k.decrypt_block(b)
                }
            }
            Cipher::Aes(k) => {
                let b: &mut [u8; 16] = chunk.try_into().map_err(|_| bad("block"))?;
                if encrypt {
                    k.encrypt_block(b)
                } else {
                    k.decrypt_block(b)
                }
            }
        }
        Ok(())
    }

    fn cbc_encrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<()> {
        let n = self.block_len();
        let mut chain = iv.to_vec();
        for chunk in data.chunks_exact_mut(n) {
            chunk.iter_mut().zip(&chain).for_each(|(d, c)| *d ^= c);
            self.block(chunk, true)?;
            chain.copy_from_slice(chunk);
        }
        Ok(())
    }

    fn cbc_decrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<()> {
        let n = self.block_len();
        let mut chain = iv.to_vec();
        for chunk in data.chunks_exact_mut(n) {
            let next = chunk.to_vec();
            self.block(chunk, false)?;
            chunk.iter_mut().zip(&chain).for_each(|(d, c)| *d ^= c);
            chain = next;
        }
        Ok(())
    }

    /// The key block encryption (usage 0) and MAC (usage 1) keys: CMAC in counter mode
    /// (NIST SP 800-108) over `counter | usage | 00 | algorithm | length in bits`.
    fn derive(kbpk: &Key, version: char) -> Result<(Cipher, Cipher)> {
        let (algorithm, out_len) = match (version, kbpk) {
            ('B', Key::Tdes(k)) if k.bytes().len() == 16 => (0u16, 16),
            ('B', Key::Tdes(_)) => (1, 24),
            ('D', Key::Aes(k)) => match k.bytes().len() {
                16 => (2, 16),
                24 => (3, 24),
                _ => (4, 32),
            },
            ('B', _) => {
                return Err(HsmError::WrongAlgorithm {
                    role: "TR-31 version B KBPK",
                    needs: "TDES",
                })
            }
            ('D', _) => {
                return Err(HsmError::WrongAlgorithm {
                    role: "TR-31 version D KBPK",
                    needs: "AES",
                })
            }
            (v, _) => return Err(bad(format!("version {v} (B and D are supported)"))),
        };
        let base = match kbpk {
            Key::Tdes(k) => Cipher::Tdes(k.clone()),
            Key::Aes(k) => Cipher::Aes(k.clone()),
        };
        let one = |usage: u16| -> Result<Zeroizing<Vec<u8>>> {
            let mut out = Zeroizing::new(Vec::with_capacity(32));
            let mut counter = 1u8;
            while out.len() < out_len {
                let mut data = [counter, 0, 0, 0, 0, 0, 0, 0];
                data[1..3].copy_from_slice(&usage.to_be_bytes());
                data[4..6].copy_from_slice(&algorithm.to_be_bytes());
                data[6..8].copy_from_slice(&((out_len * 8) as u16).to_be_bytes());
                out.extend_from_slice(&base.cmac(&data)?);
                counter += 1;
            }
            out.truncate(out_len);
            Ok(out)
        };
        let make = |bytes: &[u8]| -> Result<Cipher> {
            Ok(match kbpk {
                Key::Tdes(_) => Cipher::Tdes(TdesKey::new(bytes)?),
                Key::Aes(_) => Cipher::Aes(AesKey::new(bytes)?),
            })
        };
        Ok((make(&one(0)?)?, make(&one(1)?)?))
    }
}

/// The header and key of a TR-31 key block, after its MAC is checked.
pub fn tr31_unwrap(kbpk: &Key, block: &str) -> Result<(Tr31Header, Key)> {
    let (header, header_len) = Tr31Header::parse(block)?;
    let (kbek, kbmk) = Cipher::derive(kbpk, header.version)?;
    let n = kbek.block_len();
    let body = &block[header_len..];
    if body.len() < 2 * n * 2 || !body.len().is_multiple_of(2 * n) {
        return Err(bad(format!(
            "{} characters of key data and MAC",
            body.len()
        )));
    }
    let (enc_hex, mac_hex) = body.split_at(body.len() - 2 * n);
    let mac = from_hex(mac_hex).map_err(|_| bad("the MAC is not hexadecimal"))?;
    let mut clear =
        Zeroizing::new(from_hex(enc_hex).map_err(|_| bad("the key data is not hexadecimal"))?);
    kbek.cbc_decrypt(&mac, &mut clear)?;
    let mut mac_input = Zeroizing::new(block.as_bytes()[..header_len].to_vec());
    mac_input.extend_from_slice(&clear);
    if !same_mac(&kbmk.cmac(&mac_input)?, &mac) {
        return Err(bad(
            "the MAC does not match (wrong KBPK or a damaged block)",
        ));
    }
    let bits = usize::from(u16::from_be_bytes([clear[0], clear[1]]));
    let key_bytes = clear
        .get(2..2 + bits / 8)
        .filter(|_| bits % 8 == 0)
        .ok_or_else(|| bad(format!("a key length of {bits} bits")))?;
    let algorithm = match header.algorithm {
        'T' => Algorithm::Tdes,
        'A' => Algorithm::Aes,
        other => return Err(bad(format!("algorithm {other} at offset 7 (T or A)"))),
    };
    let key = Key::new(algorithm, key_bytes)?;
    Ok((header, key))
}

/// `key` in a TR-31 key block under `kbpk` (version B for a TDES KBPK, D for AES), padded
/// with bytes from `fill` to a whole number of blocks.
pub fn tr31_wrap(
    kbpk: &Key,
    header: &Tr31Header,
    key: &Key,
    fill: &mut dyn Fill,
) -> Result<String> {
    let (kbek, kbmk) = Cipher::derive(kbpk, header.version)?;
    let n = kbek.block_len();
    let mut clear = Zeroizing::new(Vec::with_capacity(48));
    clear.extend_from_slice(&((key.bytes().len() * 8) as u16).to_be_bytes());
    clear.extend_from_slice(key.bytes());
    while !clear.len().is_multiple_of(n) {
        clear.push((fill.nibble() & 0xF) << 4 | (fill.nibble() & 0xF));
    }
    let optional_len: usize = header.optional.iter().map(|(_, d)| d.len() + 4).sum();
    let total = 16 + optional_len + 2 * clear.len() + 2 * n;
    let text = header.text(total);
    let mut mac_input = Zeroizing::new(text.as_bytes().to_vec());
    mac_input.extend_from_slice(&clear);
    let mac = kbmk.cmac(&mac_input)?;
    let mut enc = clear.to_vec();
    kbek.cbc_encrypt(&mac, &mut enc)?;
    let out = format!("{text}{}{}", to_hex(&enc), to_hex(&mac));
    enc.zeroize();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(algorithm: Algorithm, hex: &str) -> Key {
        Key::new(algorithm, &from_hex(hex).unwrap()).unwrap()
    }

    /// TR-31:2018 annex A.7 examples (versions B and D) and one made by a payShield 10K.
    #[test]
    fn tr31_published_blocks_unwrap() {
        for (kbpk, block, expected, kcv) in [
            (
                key(Algorithm::Tdes, "DD7515F2BFC17F85CE48F3CA25CB21F6"),
                "B0080P0TE00E000094B420079CC80BA3461F86FE26EFC4A3B8E4FA4C5F5341176EED7B727B8A248E",
                "3F419E1CB7079442AA37474C2EFBF8B8",
                "57C409",
            ),
            (
                key(Algorithm::Tdes, "1D22BF32387C600AD97F9B97A51311AC"),
                "B0104B0TX12S0100KS1800604B120F9292800000BB68BE8680A400D9191AD4ECE45B6E6C0D21C4738A52190E248719E24B433627",
                "E8BC63E5479455E26577F715D587FE68",
                "9A4212",
            ),
            (
                key(Algorithm::Aes, "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6"),
                "D0112P0AE00E0000B82679114F470F540165EDFBF7E250FCEA43F810D215F8D207E2E417C07156A27E8E31DA05F7425509593D03A457DC34",
                "3F419E1CB7079442AA37474C2EFBF8B8",
                "08793E",
            ),
            (
                key(Algorithm::Aes, &"41".repeat(32)),
                "D0112B0TN00N000037DB9B046B7B0048785690759580ABC3B9842AB4BB7717B49E92528E575785D8123559376A2553B27BE94F054F4E971C",
                "1FA1F7CEC798D91545DA8AE0C7796BD9",
                "FF5087",
            ),
        ] {
            let (header, unwrapped) = tr31_unwrap(&kbpk, block).unwrap();
            assert_eq!(to_hex(unwrapped.bytes()), expected, "{block}");
            assert_eq!(to_hex(&unwrapped.check_value()), kcv, "{block}");
            // Wrapping it again under the same header unwraps to the same key.
            let again = tr31_wrap(&kbpk, &header, &unwrapped, &mut crate::pin::NoFill).unwrap();
            assert_eq!(again.len(), block.len());
            assert_eq!(tr31_unwrap(&kbpk, &again).unwrap().1.bytes(), unwrapped.bytes());
        }
        let (header, _) = tr31_unwrap(
            &key(Algorithm::Tdes, "1D22BF32387C600AD97F9B97A51311AC"),
            "B0104B0TX12S0100KS1800604B120F9292800000BB68BE8680A400D9191AD4ECE45B6E6C0D21C4738A52190E248719E24B433627",
        )
        .unwrap();
        assert_eq!(
            header.optional,
            vec![("KS".to_string(), "00604B120F9292800000".to_string())]
        );
    }

    #[test]
    fn damaged_blocks_and_wrong_keys_are_refused() {
        let kbpk = key(Algorithm::Tdes, "DD7515F2BFC17F85CE48F3CA25CB21F6");
        let block =
            "B0080P0TE00E000094B420079CC80BA3461F86FE26EFC4A3B8E4FA4C5F5341176EED7B727B8A248E";
        let flipped = block.replace("P0TE", "P0TD");
        let short = &block[..70];
        let wrong = key(Algorithm::Tdes, "DD7515F2BFC17F85CE48F3CA25CB21F4");
        for (kbpk, block) in [(&kbpk, flipped.as_str()), (&kbpk, short), (&wrong, block)] {
            let err = tr31_unwrap(kbpk, block).unwrap_err().to_string();
            assert!(err.starts_with("key block:"), "{err}");
            assert!(!err.contains("3F419E1C"), "{err}");
        }
        let aes = key(Algorithm::Aes, "88E1AB2A2E3DD38C1FA039A536500CC8");
        assert!(matches!(
            tr31_unwrap(&aes, block),
            Err(HsmError::WrongAlgorithm { .. })
        ));
    }

    #[test]
    fn x917_round_trip_checks_the_check_value() {
        let zmk = TdesKey::new(&from_hex("0123456789ABCDEFFEDCBA9876543210").unwrap()).unwrap();
        let zpk = key(Algorithm::Tdes, "89ABCDEF0123456776543210FEDCBA98");
        let wrapped = export_x917(&zmk, &zpk).unwrap();
        assert_ne!(wrapped, zpk.bytes());
        let kcv = zpk.check_value();
        let back = import_x917(&zmk, &wrapped, Algorithm::Tdes, Some(&kcv)).unwrap();
        assert_eq!(back.bytes(), zpk.bytes());
        let err = import_x917(&zmk, &wrapped, Algorithm::Tdes, Some(&[0, 0, 0])).unwrap_err();
        assert!(
            err.to_string().contains("check value 000000 expected"),
            "{err}"
        );
        assert!(import_x917(&zmk, &wrapped[..12], Algorithm::Tdes, None).is_err());
    }
}
