//! The security-module interface the switch uses: PIN translation, MACs, check values and
//! key import, by key id. It is async at the edge (a hardware module is a network peer)
//! and object-safe, so the switch picks the software module or the payShield client from
//! its config. Keys never cross it: callers name them.

use std::future::Future;
use std::pin::Pin;

use crate::error::Result;
use crate::key::{Algorithm, Key};
use crate::pin::Format;

/// What a module's operations return.
pub type ModuleFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// What a stored key may be used for (key separation: a PIN key never makes a MAC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyUsage {
    /// Zone master key (key-encryption key; also the KBPK of TR-31 blocks).
    Zmk,
    /// Terminal PIN key.
    Tpk,
    /// Terminal MAC key.
    Tak,
    /// Zone PIN key (shared with an issuer or network).
    Zpk,
    /// Zone MAC key.
    Zak,
    /// DUKPT base derivation key (TDES or AES).
    Bdk,
}

impl KeyUsage {
    /// Its name in the key store, configs and the `keys` command.
    pub fn name(self) -> &'static str {
        match self {
            KeyUsage::Zmk => "zmk",
            KeyUsage::Tpk => "tpk",
            KeyUsage::Tak => "tak",
            KeyUsage::Zpk => "zpk",
            KeyUsage::Zak => "zak",
            KeyUsage::Bdk => "bdk",
        }
    }

    /// Key separation: `Ok` when this usage is one of `needs` (`what` names them in the
    /// error), for the key `id`.
    pub fn require(self, id: &str, needs: &[KeyUsage], what: &'static str) -> Result<()> {
        if needs.contains(&self) {
            Ok(())
        } else {
            Err(crate::HsmError::Usage {
                id: id.to_string(),
                usage: self.name(),
                needs: what,
            })
        }
    }

    /// The usage of a name from [`KeyUsage::name`].
    pub fn from_name(name: &str) -> Option<KeyUsage> {
        [
            KeyUsage::Zmk,
            KeyUsage::Tpk,
            KeyUsage::Tak,
            KeyUsage::Zpk,
            KeyUsage::Zak,
            KeyUsage::Bdk,
        ]
        .into_iter()
        .find(|u| u.name() == name)
    }
}

/// A stored key as the module describes it: never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Its id.
    pub id: String,
    /// What it is for.
    pub usage: KeyUsage,
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// Its check value.
    pub kcv: [u8; 3],
}

/// The key a PIN block arrives under.
#[derive(Debug, Clone, Copy)]
pub enum PinSource<'a> {
    /// A stored TPK (or ZPK, for zone-to-zone translation), by id.
    Key(&'a str),
    /// DUKPT: the base derivation key's id and the transaction's key serial number (10
    /// bytes for TDES DUKPT, 12 for AES).
    Dukpt {
        /// The BDK's id.
        bdk: &'a str,
        /// The KSN.
        ksn: &'a [u8],
    },
}

/// A PIN translation request.
#[derive(Debug, Clone, Copy)]
pub struct PinTranslation<'a> {
    /// The encrypted block.
    pub block: &'a [u8],
    /// The card's PAN (for PAN-bound formats).
    pub pan: &'a [u8],
    /// The key it is under.
    pub from: PinSource<'a>,
    /// Its format.
    pub from_format: Format,
    /// The ZPK's id.
    pub to: &'a str,
    /// The format to make.
    pub to_format: Format,
}

/// Which way a DUKPT MAC goes (the device's request, or the host's response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacDirection {
    /// The device's request: it generates, the host verifies.
    Request,
    /// The host's response: the host generates, the device verifies.
    Response,
}

/// The key of a MAC.
#[derive(Debug, Clone, Copy)]
pub enum MacKey<'a> {
    /// A stored TAK or ZAK, by id.
    Key(&'a str),
    /// DUKPT: the BDK's id, the KSN and the direction.
    Dukpt {
        /// The BDK's id.
        bdk: &'a str,
        /// The KSN.
        ksn: &'a [u8],
        /// Request or response.
        direction: MacDirection,
    },
}

/// A MAC algorithm (8-byte MACs, as fields 64 and 128 carry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacAlgorithm {
    /// ISO 9797-1 algorithm 1 (CBC-MAC) with a TDES key, padding method 1.
    Iso9797Alg1,
    /// ISO 9797-1 algorithm 3 (the ANSI X9.19 retail MAC), padding method 1.
    Iso9797Alg3,
    /// AES-CMAC, its first 8 bytes.
    AesCmac,
}

impl MacAlgorithm {
    /// The algorithm of a config name (`iso9797-1`, `x9.19`, `aes-cmac`).
    pub fn from_name(name: &str) -> Option<MacAlgorithm> {
        match name {
            "iso9797-1" | "alg1" => Some(MacAlgorithm::Iso9797Alg1),
            "x9.19" | "iso9797-3" | "alg3" => Some(MacAlgorithm::Iso9797Alg3),
            "aes-cmac" => Some(MacAlgorithm::AesCmac),
            _ => None,
        }
    }

    /// The 8-byte MAC of `data` under `key` (a TDES key for the ISO 9797-1 algorithms, an
    /// AES key for CMAC), padding method 1.
    pub fn compute(self, key: &Key, data: &[u8]) -> Result<[u8; 8]> {
        use crate::mac::{aes_cmac, iso9797_alg1, iso9797_alg3, Padding};
        match self {
            MacAlgorithm::Iso9797Alg1 => iso9797_alg1(
                key.tdes("ISO 9797-1 MAC key")?.bytes(),
                data,
                Padding::Zeros,
            ),
            MacAlgorithm::Iso9797Alg3 => {
                iso9797_alg3(key.tdes("X9.19 MAC key")?.bytes(), data, Padding::Zeros)
            }
            MacAlgorithm::AesCmac => {
                let tag = aes_cmac(key.aes("AES-CMAC key")?.bytes(), data)?;
                let mut mac = [0u8; 8];
                mac.copy_from_slice(&tag[..8]);
                Ok(mac)
            }
        }
    }
}

/// A working key delivered under a ZMK (or KBPK).
#[derive(Debug, Clone, Copy)]
pub enum WrappedKey<'a> {
    /// X9.17 (ECB under the ZMK), with its algorithm.
    X917 {
        /// The encrypted key.
        key: &'a [u8],
        /// Its algorithm.
        algorithm: Algorithm,
    },
    /// A TR-31 key block (version B or D).
    Tr31(&'a str),
}

/// A key import: store `wrapped`, unwrapped by the ZMK `zmk`, as `id` for `usage`,
/// replacing a key of that id (rotation). `kcv`, when given, must match.
#[derive(Debug, Clone, Copy)]
pub struct KeyImport<'a> {
    /// The new key's id.
    pub id: &'a str,
    /// What it is for.
    pub usage: KeyUsage,
    /// The ZMK's id.
    pub zmk: &'a str,
    /// The key as delivered.
    pub wrapped: WrappedKey<'a>,
    /// Its check value as delivered.
    pub kcv: Option<&'a [u8]>,
}

/// A security module: the software one here, or a hardware module's client.
pub trait SecurityModule: Send + Sync + std::fmt::Debug {
    /// What it is (`software`, `payshield`), for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Re-encrypt a PIN block under a ZPK.
    fn translate_pin<'a>(&'a self, request: PinTranslation<'a>) -> ModuleFuture<'a, Vec<u8>>;

    /// The MAC of `data`.
    fn generate_mac<'a>(
        &'a self,
        key: MacKey<'a>,
        algorithm: MacAlgorithm,
        data: &'a [u8],
    ) -> ModuleFuture<'a, [u8; 8]>;

    /// Whether `mac` is the MAC of `data` (compared in constant time).
    fn verify_mac<'a>(
        &'a self,
        key: MacKey<'a>,
        algorithm: MacAlgorithm,
        data: &'a [u8],
        mac: &'a [u8],
    ) -> ModuleFuture<'a, bool>;

    /// What the module holds under `id`.
    fn key_info<'a>(&'a self, id: &'a str) -> ModuleFuture<'a, KeyInfo>;

    /// Import (or rotate) a working key.
    fn import_key<'a>(&'a self, import: KeyImport<'a>) -> ModuleFuture<'a, KeyInfo>;

    /// A new random key for `usage`, held as `id` (replacing one of that id) and given back
    /// under the ZMK `zmk` (X9.17) for the peer, with its check value. The first half of a
    /// switch-initiated key exchange: the key is staged under its own id, and
    /// [`promote_key`](SecurityModule::promote_key) puts it in use once the peer has it.
    fn generate_key<'a>(
        &'a self,
        id: &'a str,
        usage: KeyUsage,
        zmk: &'a str,
    ) -> ModuleFuture<'a, (KeyInfo, Vec<u8>)>;

    /// Hold the key of `from` as `to` (replacing it) and forget `from`.
    fn promote_key<'a>(&'a self, from: &'a str, to: &'a str) -> ModuleFuture<'a, KeyInfo>;

    /// Read the keys again from where they are kept (the software module's store, after
    /// `switchyard keys` changed it): the number held. A hardware module keeps its own
    /// keys, so by default there is nothing to read.
    fn reload_keys(&self) -> Result<Option<usize>> {
        Ok(None)
    }
}
