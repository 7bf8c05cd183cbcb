//! The two audit keys: the chain key (HMAC-SHA256 over each record and the previous chain
//! value: tamper evidence) and the PAN key (HMAC-SHA256 of each PAN: search without storing
//! the PAN). They are separate so that whoever may search by PAN cannot forge the chain.
//!
//! Keys come from files or environment variables; a missing key is an error. Demo keys
//! exist for the embedded default configuration and say so wherever they are used.

use std::fmt;
use std::path::PathBuf;

use ring::hmac;

use crate::error::{AuditError, Result};

/// Where a key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file holding the key as 64+ hex characters or 32+ raw bytes.
    File(PathBuf),
    /// An environment variable holding the key as hex.
    Env(String),
    /// The built-in demo key (for the embedded default config and tests only).
    Demo,
}

/// The warning printed wherever demo keys are in use.
pub const DEMO_WARNING: &str =
    "DEMO AUDIT KEYS IN USE: the audit chain and PAN hashes are keyed with public demo keys; \
     never run a real card through this configuration";

const DEMO_CHAIN: &[u8] = b"switchyard demo audit chain key -- public, not for production";
const DEMO_PAN: &[u8] = b"switchyard demo audit PAN key ---- public, not for production";

fn parse_material(name: &'static str, raw: &[u8]) -> Result<Vec<u8>> {
    let trimmed = raw.trim_ascii();
    let is_hex = trimmed.len().is_multiple_of(2) && trimmed.iter().all(u8::is_ascii_hexdigit);
    let key = if is_hex {
        trimmed
            .chunks(2)
            .map(|p| {
                let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
                hex(p[0]) << 4 | hex(p[1])
            })
            .collect()
    } else {
        raw.to_vec()
    };
    if key.len() < 32 {
        return Err(AuditError::Key {
            name,
            reason: format!(
                "{} bytes of key material; at least 32 are required",
                key.len()
            ),
        });
    }
    Ok(key)
}

fn load(name: &'static str, source: &KeySource) -> Result<(Vec<u8>, bool)> {
    match source {
        KeySource::Demo => Ok((
            if name == "chain" {
                DEMO_CHAIN
            } else {
                DEMO_PAN
            }
            .to_vec(),
            true,
        )),
        KeySource::File(path) => {
            let raw = std::fs::read(path).map_err(|e| AuditError::Key {
                name,
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
            Ok((parse_material(name, &raw)?, false))
        }
        KeySource::Env(var) => {
            let raw = std::env::var(var).map_err(|_| AuditError::Key {
                name,
                reason: format!("environment variable {var} is not set"),
            })?;
            Ok((parse_material(name, raw.as_bytes())?, false))
        }
    }
}

/// The chain key: HMAC-SHA256 over every record and the chain value before it.
pub struct ChainKey(hmac::Key);

/// The PAN key: HMAC-SHA256 of PANs, so that records can be found by card.
pub struct PanKey(hmac::Key);

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChainKey(..)")
    }
}

impl fmt::Debug for PanKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PanKey(..)")
    }
}

impl ChainKey {
    /// Load the chain key alone (what `audit verify` needs).
    pub fn load(source: &KeySource) -> Result<ChainKey> {
        let (key, demo) = load("chain", source)?;
        if demo {
            tracing::warn!("{DEMO_WARNING}");
        }
        Ok(ChainKey(hmac::Key::new(hmac::HMAC_SHA256, &key)))
    }

    pub(crate) fn hmac(&self) -> &hmac::Key {
        &self.0
    }
}

impl PanKey {
    /// Load the PAN key alone (what `audit query --pan` needs).
    pub fn load(source: &KeySource) -> Result<PanKey> {
        let (key, demo) = load("pan", source)?;
        if demo {
            tracing::warn!("{DEMO_WARNING}");
        }
        Ok(PanKey(hmac::Key::new(hmac::HMAC_SHA256, &key)))
    }

    /// The keyed hash of a PAN.
    pub fn hash(&self, pan: &[u8]) -> PanHash {
        PanHash::of(hmac::sign(&self.0, pan).as_ref())
    }
}

/// A PAN's keyed hash (HMAC-SHA256 under the PAN key) as 64 lower-case hex characters,
/// inline: every pair record with a card has one, and as a `String` it was an allocation per
/// transaction. Written and read as a string.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PanHash([u8; 64]);

impl PanHash {
    fn of(digest: &[u8]) -> PanHash {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = [b'0'; 64];
        for (pair, &b) in text.chunks_exact_mut(2).zip(digest) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 15)];
        }
        PanHash(text)
    }

    /// A hash from its text: 64 hex digits (either case, kept lower-case).
    pub fn parse(text: &str) -> Option<PanHash> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let mut hash = [0u8; 64];
        hash.copy_from_slice(bytes);
        hash.make_ascii_lowercase();
        Some(PanHash(hash))
    }

    /// The 64 hex digits.
    pub fn as_str(&self) -> &str {
        // Hex digits only, by construction.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::ops::Deref for PanHash {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for PanHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for PanHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PanHash({})", self.as_str())
    }
}

impl serde::Serialize for PanHash {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for PanHash {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        PanHash::parse(&text).ok_or_else(|| serde::de::Error::custom("a PAN hash is 64 hex digits"))
    }
}

/// Both audit keys, as the writer needs them.
#[derive(Debug)]
pub struct AuditKeys {
    chain: ChainKey,
    pan: PanKey,
    demo: bool,
}

impl AuditKeys {
    /// Load both keys. They must differ.
    pub fn load(chain: &KeySource, pan: &KeySource) -> Result<AuditKeys> {
        let (chain_key, chain_demo) = load("chain", chain)?;
        let (pan_key, pan_demo) = load("pan", pan)?;
        if chain_key == pan_key {
            return Err(AuditError::Key {
                name: "pan",
                reason: "the PAN key must differ from the chain key".into(),
            });
        }
        let demo = chain_demo || pan_demo;
        if demo {
            tracing::warn!("{DEMO_WARNING}");
        }
        Ok(AuditKeys {
            chain: ChainKey(hmac::Key::new(hmac::HMAC_SHA256, &chain_key)),
            pan: PanKey(hmac::Key::new(hmac::HMAC_SHA256, &pan_key)),
            demo,
        })
    }

    /// The demo keys.
    pub fn demo() -> AuditKeys {
        Self::load(&KeySource::Demo, &KeySource::Demo).unwrap_or_else(|_| unreachable!())
    }

    /// Whether any key is a demo key.
    pub fn is_demo(&self) -> bool {
        self.demo
    }

    /// The keyed hash of a PAN.
    pub fn pan_hash(&self, pan: &[u8]) -> PanHash {
        self.pan.hash(pan)
    }

    /// The chain key.
    pub fn chain(&self) -> &ChainKey {
        &self.chain
    }

    /// The PAN key.
    pub fn pan(&self) -> &PanKey {
        &self.pan
    }
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_files_and_environment_and_their_errors() {
        let dir = tempfile::tempdir().unwrap();
        let chain = dir.path().join("chain.key");
        std::fs::write(&chain, format!("{}\n", "ab".repeat(32))).unwrap();
        let raw = dir.path().join("pan.key");
        std::fs::write(&raw, [7u8; 40]).unwrap();
        let keys = AuditKeys::load(&KeySource::File(chain.clone()), &KeySource::File(raw)).unwrap();
        assert!(!keys.is_demo());
        assert_eq!(keys.pan_hash(b"4761739001010119").len(), 64);
        assert!(!format!("{keys:?}").contains("ab"));

        let short = dir.path().join("short.key");
        std::fs::write(&short, "abcd").unwrap();
        let err = AuditKeys::load(&KeySource::File(short), &KeySource::Demo)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 32"), "{err}");
        assert!(!err.contains("abcd"));
        let err = AuditKeys::load(
            &KeySource::Env("SWITCHYARD_TEST_UNSET_KEY".into()),
            &KeySource::Demo,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("SWITCHYARD_TEST_UNSET_KEY is not set"),
            "{err}"
        );
        let same = AuditKeys::load(&KeySource::File(chain.clone()), &KeySource::File(chain));
        assert!(same.is_err(), "chain and PAN keys must differ");
        assert!(AuditKeys::demo().is_demo());
    }

    #[test]
    fn pan_hashes_are_64_hex_digits_written_and_read_as_text() {
        let hash = AuditKeys::demo().pan_hash(b"4761739001010119");
        assert_eq!(hash.len(), 64);
        assert!(hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(PanHash::parse(&hash.to_ascii_uppercase()), Some(hash));
        assert_eq!(PanHash::parse(&hash[..63]), None);
        let json = serde_json::to_string(&hash).unwrap();
        assert_eq!(json, format!("\"{hash}\""));
        assert_eq!(serde_json::from_str::<PanHash>(&json).unwrap(), hash);
        assert!(serde_json::from_str::<PanHash>("\"not a hash\"").is_err());
    }

    #[test]
    fn pan_hashes_are_keyed() {
        let demo = AuditKeys::demo();
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "11".repeat(32)).unwrap();
        std::fs::write(&b, "22".repeat(32)).unwrap();
        let other = AuditKeys::load(&KeySource::File(a), &KeySource::File(b)).unwrap();
        let pan = b"4761739001010119";
        assert_eq!(demo.pan_hash(pan), demo.pan_hash(pan));
        assert_ne!(demo.pan_hash(pan), other.pan_hash(pan));
    }
}
