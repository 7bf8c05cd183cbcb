//! The software security module: working keys held in memory, stored encrypted under a
//! local master key, every operation done with the RustCrypto primitives of this crate.
//!
//! **This is not a PCI PIN certified device.** Clear keys live in this process's memory
//! (zeroised when dropped, never logged); an attacker who can read that memory can read
//! them. It is for tests, labs and small pilots; production runs the same operations in a
//! hardware security module (the `payshield` client).
//!
//! The store is a text file, one key a line: `key ID USAGE ALGORITHM KCV NONCE SEALED`,
//! the key sealed with AES-256-GCM under the master key with `ID USAGE ALGORITHM` as
//! associated data (a sealed key moved to another id or usage fails to open). It is
//! rewritten whole (temporary file, fsync, rename) on every change.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::dukpt;
use crate::dukpt_aes::{self, KeyType, Usage};
use crate::error::{HsmError, Result};
use crate::key::{Algorithm, Key};
use crate::mac::same_mac;
use crate::module::{
    KeyImport, KeyInfo, KeyUsage, MacAlgorithm, MacDirection, MacKey, ModuleFuture, PinSource,
    PinTranslation, SecurityModule, WrappedKey,
};
use crate::pin::{self, Fill, Format, Side};
use crate::wrap;
use crate::{from_hex, to_hex, AesKey};

/// Fill nibbles from the operating system's random source (`getrandom`), drawn 64 bytes at
/// a time: more than any PIN block or TR-31 padding takes.
#[derive(Debug)]
pub struct RandomFill {
    bytes: Zeroizing<[u8; 64]>,
    next: usize,
}

impl RandomFill {
    /// 64 fresh random bytes.
    pub fn new() -> Result<RandomFill> {
        let mut bytes = Zeroizing::new([0u8; 64]);
        getrandom::getrandom(&mut bytes[..])
            .map_err(|e| HsmError::Module(format!("no random numbers from the system: {e}")))?;
        Ok(RandomFill { bytes, next: 0 })
    }
}

impl Fill for RandomFill {
    fn nibble(&mut self) -> u8 {
        let byte = self.bytes[(self.next / 2) % 64];
        self.next += 1;
        if self.next % 2 == 1 {
            byte >> 4
        } else {
            byte & 0xF
        }
    }
}

/// The key that seals the store: AES-256, from a file or an environment variable (64 hex
/// digits), never from the config itself.
#[derive(Debug)]
pub struct MasterKey(AesKey);

impl MasterKey {
    /// A master key from 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str, origin: &str) -> Result<MasterKey> {
        let bytes = Zeroizing::new(
            from_hex(text.trim())
                .map_err(|e| HsmError::Store(format!("master key in {origin}: {e}")))?,
        );
        if bytes.len() != 32 {
            return Err(HsmError::Store(format!(
                "master key in {origin}: {} bytes, expected 32 (64 hex digits)",
                bytes.len()
            )));
        }
        Ok(MasterKey(AesKey::new(&bytes)?))
    }

    /// The master key in a file.
    pub fn from_file(path: &Path) -> Result<MasterKey> {
        let text =
            Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                HsmError::Store(format!("master key file {}: {e}", path.display()))
            })?);
        MasterKey::from_hex(&text, &path.display().to_string())
    }

    /// The master key in an environment variable.
    pub fn from_env(name: &str) -> Result<MasterKey> {
        let text = Zeroizing::new(std::env::var(name).map_err(|_| {
            HsmError::Store(format!(
                "master key: environment variable {name} is not set"
            ))
        })?);
        MasterKey::from_hex(&text, &format!("${name}"))
    }

    fn cipher(&self) -> Result<Aes256Gcm> {
        Aes256Gcm::new_from_slice(self.0.bytes())
            .map_err(|_| HsmError::Store("master key of the wrong length".into()))
    }
}

struct Stored {
    usage: KeyUsage,
    key: Key,
}

/// The software security module.
pub struct SoftwareModule {
    keys: RwLock<HashMap<String, Arc<Stored>>>,
    store: Option<(PathBuf, MasterKey)>,
}

impl std::fmt::Debug for SoftwareModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareModule")
            .field("keys", &self.read().len())
            .field("store", &self.store.as_ref().map(|(p, _)| p))
            .finish()
    }
}

fn check_id(id: &str) -> Result<()> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(HsmError::Store(format!(
            "key id {id:?}: 1 to 64 letters, digits, '.', '_' or '-'"
        )))
    }
}

impl SoftwareModule {
    /// A module whose keys live only in memory (tests).
    pub fn in_memory() -> SoftwareModule {
        SoftwareModule {
            keys: RwLock::new(HashMap::new()),
            store: None,
        }
    }

    /// The module of the store at `path` (created empty when it does not exist), sealed
    /// under `master`. Every line must open: a store that does not is refused whole.
    pub fn open(path: &Path, master: MasterKey) -> Result<SoftwareModule> {
        let keys = read_store(path, &master)?;
        Ok(SoftwareModule {
            keys: RwLock::new(keys),
            store: Some((path.to_path_buf(), master)),
        })
    }

    /// Read the store again (after `switchyard keys` changed it), swapping every key at
    /// once; operations already running finish with the keys they had. A store that does
    /// not open whole leaves the keys as they were. The number of keys held after.
    pub fn reload(&self) -> Result<usize> {
        let Some((path, master)) = &self.store else {
            return Ok(self.read().len());
        };
        let keys = read_store(path, master)?;
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        Ok(n)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Stored>>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &str, needs: &[KeyUsage], what: &'static str) -> Result<Arc<Stored>> {
        let stored = self
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| HsmError::UnknownKey(id.to_string()))?;
        stored.usage.require(id, needs, what)?;
        Ok(stored)
    }

    /// Store `key` as `id` (replacing one of that id) and save the store.
    pub fn add(&self, id: &str, usage: KeyUsage, key: Key) -> Result<KeyInfo> {
        check_id(id)?;
        let info = KeyInfo {
            id: id.to_string(),
            usage,
            algorithm: key.algorithm(),
            kcv: key.check_value(),
        };
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let previous = keys.insert(id.to_string(), Arc::new(Stored { usage, key }));
        if let Err(e) = self.save(&keys) {
            // Not saved: not held either, so memory and disk agree.
            match previous {
                Some(p) => keys.insert(id.to_string(), p),
                None => keys.remove(id),
            };
            return Err(e);
        }
        Ok(info)
    }

    /// Every key's id, usage, algorithm and check value, by id.
    pub fn list(&self) -> Vec<KeyInfo> {
        let mut all: Vec<KeyInfo> = self
            .read()
            .iter()
            .map(|(id, s)| KeyInfo {
                id: id.clone(),
                usage: s.usage,
                algorithm: s.key.algorithm(),
                kcv: s.key.check_value(),
            })
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    fn save(&self, keys: &HashMap<String, Arc<Stored>>) -> Result<()> {
        let Some((path, master)) = &self.store else {
            return Ok(());
        };
        let cipher = master.cipher()?;
        let mut text = String::from(
            "# switchyard software key store v1: keys sealed under the master key (AES-256-GCM)\n",
        );
        let mut ids: Vec<&String> = keys.keys().collect();
        ids.sort();
        for id in ids {
            let stored = &keys[id];
            let mut nonce = [0u8; 12];
            getrandom::getrandom(&mut nonce)
                .map_err(|e| HsmError::Store(format!("no random nonce: {e}")))?;
            let aad = aad(id, stored.usage, stored.key.algorithm());
            let sealed = cipher
                .encrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: stored.key.bytes(),
                        aad: aad.as_bytes(),
                    },
                )
                .map_err(|_| HsmError::Store("sealing a key failed".into()))?;
            text.push_str(&format!(
                "key {id} {} {} {} {} {}\n",
                stored.usage.name(),
                stored.key.algorithm().name(),
                to_hex(&stored.key.check_value()),
                to_hex(&nonce),
                to_hex(&sealed)
            ));
        }
        write_atomically(path, text.as_bytes())
            .map_err(|e| HsmError::Store(format!("{}: {e}", path.display())))
    }

    fn pin_source_key(&self, source: PinSource<'_>, format: Format) -> Result<Key> {
        match source {
            PinSource::Key(id) => Ok(self
                .get(id, &[KeyUsage::Tpk, KeyUsage::Zpk], "TPK or ZPK")?
                .key
                .clone()),
            PinSource::Dukpt { bdk, ksn } => {
                let stored = self.get(bdk, &[KeyUsage::Bdk], "BDK")?;
                match &stored.key {
                    Key::Tdes(bdk) => Ok(Key::Tdes(dukpt::pin_key_for(bdk, ksn)?)),
                    Key::Aes(bdk) => {
                        let key_type = if format == Format::Iso4 {
                            KeyType::Aes128
                        } else {
                            KeyType::Tdes2
                        };
                        dukpt_aes::working_key_for(bdk, ksn, Usage::Pin, key_type)
                    }
                }
            }
        }
    }

    fn mac_key(&self, key: MacKey<'_>, algorithm: MacAlgorithm) -> Result<Key> {
        match key {
            MacKey::Key(id) => Ok(self
                .get(id, &[KeyUsage::Tak, KeyUsage::Zak], "TAK or ZAK")?
                .key
                .clone()),
            MacKey::Dukpt {
                bdk,
                ksn,
                direction,
            } => {
                let stored = self.get(bdk, &[KeyUsage::Bdk], "BDK")?;
                match &stored.key {
                    Key::Tdes(bdk) => {
                        let tk = dukpt::transaction_key(&dukpt::initial_key(bdk, ksn)?, ksn)?;
                        Ok(Key::Tdes(match direction {
                            MacDirection::Request => dukpt::mac_request_key(&tk)?,
                            MacDirection::Response => dukpt::mac_response_key(&tk)?,
                        }))
                    }
                    Key::Aes(bdk) => {
                        let usage = match direction {
                            MacDirection::Request => Usage::MacGeneration,
                            MacDirection::Response => Usage::MacVerification,
                        };
                        let key_type = if algorithm == MacAlgorithm::AesCmac {
                            KeyType::Aes128
                        } else {
                            KeyType::Tdes2
                        };
                        dukpt_aes::working_key_for(bdk, ksn, usage, key_type)
                    }
                }
            }
        }
    }

    /// [`SecurityModule::translate_pin`], synchronously.
    pub fn translate_pin_now(&self, request: PinTranslation<'_>) -> Result<Vec<u8>> {
        let from_key = self.pin_source_key(request.from, request.from_format)?;
        let to = self.get(request.to, &[KeyUsage::Zpk], "ZPK")?;
        let mut fill = RandomFill::new()?;
        pin::translate(
            request.block,
            Side {
                key: &from_key,
                format: request.from_format,
                pan: Some(request.pan),
            },
            Side {
                key: &to.key,
                format: request.to_format,
                pan: Some(request.pan),
            },
            &mut fill,
        )
    }

    /// [`SecurityModule::generate_mac`], synchronously.
    pub fn mac_now(
        &self,
        key: MacKey<'_>,
        algorithm: MacAlgorithm,
        data: &[u8],
    ) -> Result<[u8; 8]> {
        algorithm.compute(&self.mac_key(key, algorithm)?, data)
    }

    /// [`SecurityModule::key_info`], synchronously.
    pub fn key_info_now(&self, id: &str) -> Result<KeyInfo> {
        let stored = self
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| HsmError::UnknownKey(id.to_string()))?;
        Ok(KeyInfo {
            id: id.to_string(),
            usage: stored.usage,
            algorithm: stored.key.algorithm(),
            kcv: stored.key.check_value(),
        })
    }

    /// [`SecurityModule::generate_key`], synchronously (double-length TDES keys).
    pub fn generate_now(&self, id: &str, usage: KeyUsage, zmk: &str) -> Result<(KeyInfo, Vec<u8>)> {
        let zmk = self.get(zmk, &[KeyUsage::Zmk], "ZMK")?;
        let mut fill = RandomFill::new()?;
        let bytes: Zeroizing<Vec<u8>> = Zeroizing::new(
            (0..16)
                .map(|_| fill.nibble() << 4 | fill.nibble())
                .collect(),
        );
        let key = Key::new(Algorithm::Tdes, &bytes)?;
        let wrapped = wrap::export_x917(zmk.key.tdes("X9.17 ZMK")?, &key)?;
        Ok((self.add(id, usage, key)?, wrapped))
    }

    /// [`SecurityModule::promote_key`], synchronously.
    pub fn promote_now(&self, from: &str, to: &str) -> Result<KeyInfo> {
        let stored = self
            .read()
            .get(from)
            .cloned()
            .ok_or_else(|| HsmError::UnknownKey(from.to_string()))?;
        let info = self.add(to, stored.usage, stored.key.clone())?;
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        keys.remove(from);
        self.save(&keys)?;
        Ok(info)
    }

    /// [`SecurityModule::import_key`], synchronously.
    pub fn import_now(&self, import: KeyImport<'_>) -> Result<KeyInfo> {
        if import.usage == KeyUsage::Zmk {
            return Err(HsmError::Usage {
                id: import.id.to_string(),
                usage: "zmk",
                needs: "working (a ZMK is loaded from components, not under another ZMK)",
            });
        }
        let zmk = self.get(import.zmk, &[KeyUsage::Zmk], "ZMK")?;
        let key = match import.wrapped {
            WrappedKey::X917 { key, algorithm } => {
                wrap::import_x917(zmk.key.tdes("X9.17 ZMK")?, key, algorithm, import.kcv)?
            }
            WrappedKey::Tr31(block) => {
                let (header, key) = wrap::tr31_unwrap(&zmk.key, block)?;
                check_tr31_usage(&header, import.usage)?;
                wrap::check(&key, import.kcv)?;
                key
            }
        };
        self.add(import.id, import.usage, key)
    }
}

/// TR-31 key usage codes a key of `usage` may arrive with.
fn check_tr31_usage(header: &wrap::Tr31Header, usage: KeyUsage) -> Result<()> {
    let allowed: &[&str] = match usage {
        KeyUsage::Tpk | KeyUsage::Zpk => &["P0"],
        KeyUsage::Tak | KeyUsage::Zak => &["M0", "M1", "M3", "M6"],
        KeyUsage::Bdk => &["B0"],
        KeyUsage::Zmk => &["K0"],
    };
    if allowed.contains(&header.usage.as_str()) {
        Ok(())
    } else {
        Err(HsmError::KeyBlock(format!(
            "usage {} in the block, a {} key needs {}",
            header.usage,
            usage.name(),
            allowed.join(" or ")
        )))
    }
}

/// Every key of the store at `path` (none when it does not exist yet).
fn read_store(path: &Path, master: &MasterKey) -> Result<HashMap<String, Arc<Stored>>> {
    let mut keys = HashMap::new();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
        Err(e) => return Err(HsmError::Store(format!("{}: {e}", path.display()))),
    };
    let cipher = master.cipher()?;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (id, stored) = open_line(&cipher, line)
            .map_err(|why| HsmError::Store(format!("{} line {}: {why}", path.display(), n + 1)))?;
        keys.insert(id, Arc::new(stored));
    }
    Ok(keys)
}

fn aad(id: &str, usage: KeyUsage, algorithm: Algorithm) -> String {
    format!(
        "switchyard-key-store v1 {id} {} {}",
        usage.name(),
        algorithm.name()
    )
}

fn open_line(cipher: &Aes256Gcm, line: &str) -> std::result::Result<(String, Stored), String> {
    let parts: Vec<&str> = line.split(' ').collect();
    let [tag, id, usage, algorithm, kcv, nonce, sealed] = parts[..] else {
        return Err(format!("{} fields, expected 7", parts.len()));
    };
    if tag != "key" {
        return Err(format!("starts with {tag:?}, expected \"key\""));
    }
    let usage = KeyUsage::from_name(usage).ok_or_else(|| format!("usage {usage:?}"))?;
    let algorithm =
        Algorithm::from_name(algorithm).ok_or_else(|| format!("algorithm {algorithm:?}"))?;
    let nonce = from_hex(nonce)
        .ok()
        .filter(|n| n.len() == 12)
        .ok_or("a nonce that is not 24 hex digits")?;
    let sealed = from_hex(sealed).map_err(|e| format!("sealed key: {e}"))?;
    let clear = Zeroizing::new(
        cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &sealed,
                    aad: aad(id, usage, algorithm).as_bytes(),
                },
            )
            .map_err(|_| format!("key {id:?} does not open under this master key (wrong master key, or the line was changed)"))?,
    );
    let key = Key::new(algorithm, &clear).map_err(|e| e.to_string())?;
    if to_hex(&key.check_value()) != kcv {
        return Err(format!(
            "key {id:?}: check value {kcv} recorded, the key has another"
        ));
    }
    Ok((id.to_string(), Stored { usage, key }))
}

/// Replace the file at `path` with `bytes`: a temporary file (mode 0600), fsync, rename,
/// fsync of the directory; a crash leaves the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn ready<'a, T: Send + 'a>(result: Result<T>) -> ModuleFuture<'a, T> {
    Box::pin(std::future::ready(result))
}

impl SecurityModule for SoftwareModule {
    fn kind(&self) -> &'static str {
        "software"
    }

    fn translate_pin<'a>(&'a self, request: PinTranslation<'a>) -> ModuleFuture<'a, Vec<u8>> {
        ready(self.translate_pin_now(request))
    }

    fn generate_mac<'a>(
        &'a self,
        key: MacKey<'a>,
        algorithm: MacAlgorithm,
        data: &'a [u8],
    ) -> ModuleFuture<'a, [u8; 8]> {
        ready(self.mac_now(key, algorithm, data))
    }

    fn verify_mac<'a>(
        &'a self,
        key: MacKey<'a>,
        algorithm: MacAlgorithm,
        data: &'a [u8],
        mac: &'a [u8],
    ) -> ModuleFuture<'a, bool> {
        ready(
            self.mac_now(key, algorithm, data)
                .map(|m| same_mac(&m, mac)),
        )
    }

    fn key_info<'a>(&'a self, id: &'a str) -> ModuleFuture<'a, KeyInfo> {
        ready(self.key_info_now(id))
    }

    fn import_key<'a>(&'a self, import: KeyImport<'a>) -> ModuleFuture<'a, KeyInfo> {
        ready(self.import_now(import))
    }

    fn generate_key<'a>(
        &'a self,
        id: &'a str,
        usage: KeyUsage,
        zmk: &'a str,
    ) -> ModuleFuture<'a, (KeyInfo, Vec<u8>)> {
        ready(self.generate_now(id, usage, zmk))
    }

    fn promote_key<'a>(&'a self, from: &'a str, to: &'a str) -> ModuleFuture<'a, KeyInfo> {
        ready(self.promote_now(from, to))
    }

    fn reload_keys(&self) -> Result<Option<usize>> {
        self.reload().map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mac::{iso9797_alg3, Padding};
    use crate::TdesKey;

    const MASTER: &str = "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F";

    fn tdes(hex: &str) -> Key {
        Key::Tdes(TdesKey::new(&from_hex(hex).unwrap()).unwrap())
    }

    #[test]
    fn keys_survive_a_reopen_sealed_and_a_wrong_master_key_opens_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.store");
        let module =
            SoftwareModule::open(&path, MasterKey::from_hex(MASTER, "test").unwrap()).unwrap();
        let zpk = "89ABCDEF0123456776543210FEDCBA98";
        module.add("zpk.issuer", KeyUsage::Zpk, tdes(zpk)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(zpk), "{text}");
        assert!(text.contains("key zpk.issuer zpk tdes "), "{text}");
        let again =
            SoftwareModule::open(&path, MasterKey::from_hex(MASTER, "test").unwrap()).unwrap();
        assert_eq!(again.list(), module.list());
        let wrong = MASTER.replace("1F", "1E");
        let err =
            SoftwareModule::open(&path, MasterKey::from_hex(&wrong, "test").unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .contains("does not open under this master key"),
            "{err}"
        );
        // A line moved to another usage does not open either.
        std::fs::write(&path, text.replace(" zpk tdes ", " zak tdes ")).unwrap();
        assert!(SoftwareModule::open(&path, MasterKey::from_hex(MASTER, "test").unwrap()).is_err());
    }

    #[test]
    fn pins_translate_from_a_tpk_and_from_dukpt_and_usage_is_enforced() {
        let module = SoftwareModule::in_memory();
        module
            .add(
                "tpk.t1",
                KeyUsage::Tpk,
                tdes("0123456789ABCDEFFEDCBA9876543210"),
            )
            .unwrap();
        module
            .add(
                "bdk.1",
                KeyUsage::Bdk,
                tdes("0123456789ABCDEFFEDCBA9876543210"),
            )
            .unwrap();
        module
            .add(
                "zpk.i",
                KeyUsage::Zpk,
                tdes("89ABCDEF0123456776543210FEDCBA98"),
            )
            .unwrap();
        let zpk = tdes("89ABCDEF0123456776543210FEDCBA98");
        let pan = b"4012345678909";
        // The X9.24-1 annex's block for counter 1 (PIN 1234).
        let ksn = from_hex("FFFF9876543210E00001").unwrap();
        let block = from_hex("1B9C1845EB993A7A").unwrap();
        let out = module
            .translate_pin_now(PinTranslation {
                block: &block,
                pan,
                from: PinSource::Dukpt {
                    bdk: "bdk.1",
                    ksn: &ksn,
                },
                from_format: Format::Iso0,
                to: "zpk.i",
                to_format: Format::Iso3,
            })
            .unwrap();
        assert_eq!(
            &pin::decrypt(Format::Iso3, &zpk, &out, Some(pan)).unwrap()[..],
            b"1234"
        );
        let tpk = tdes("0123456789ABCDEFFEDCBA9876543210");
        let block = pin::encrypt(Format::Iso0, &tpk, b"9876", Some(pan), &mut pin::NoFill).unwrap();
        let request = PinTranslation {
            block: &block,
            pan,
            from: PinSource::Key("tpk.t1"),
            from_format: Format::Iso0,
            to: "zpk.i",
            to_format: Format::Iso0,
        };
        let out = module.translate_pin_now(request).unwrap();
        assert_eq!(
            &pin::decrypt(Format::Iso0, &zpk, &out, Some(pan)).unwrap()[..],
            b"9876"
        );
        // Key separation: a TPK is no ZPK, an unknown key is named.
        let err = module
            .translate_pin_now(PinTranslation {
                to: "tpk.t1",
                ..request
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "key \"tpk.t1\" is a tpk key; this operation needs a ZPK key"
        );
        let err = module.translate_pin_now(PinTranslation {
            from: PinSource::Key("nope"),
            ..request
        });
        assert_eq!(err.unwrap_err(), HsmError::UnknownKey("nope".into()));
    }

    #[test]
    fn macs_and_imports() {
        let module = SoftwareModule::in_memory();
        let zmk = tdes("0123456789ABCDEFFEDCBA9876543210");
        module.add("zmk.i", KeyUsage::Zmk, zmk.clone()).unwrap();
        let zak = tdes("89ABCDEF0123456776543210FEDCBA98");
        let wrapped = wrap::export_x917(zmk.tdes("zmk").unwrap(), &zak).unwrap();
        let info = module
            .import_now(KeyImport {
                id: "zak.i",
                usage: KeyUsage::Zak,
                zmk: "zmk.i",
                wrapped: WrappedKey::X917 {
                    key: &wrapped,
                    algorithm: Algorithm::Tdes,
                },
                kcv: Some(&zak.check_value()),
            })
            .unwrap();
        assert_eq!(info.kcv, zak.check_value());
        let data = b"0200 message up to the MAC";
        let mac = module
            .mac_now(MacKey::Key("zak.i"), MacAlgorithm::Iso9797Alg3, data)
            .unwrap();
        assert_eq!(
            mac,
            iso9797_alg3(zak.bytes(), data, Padding::Zeros).unwrap()
        );
        // A TR-31 block with a PIN key's usage does not become a MAC key.
        let header = wrap::Tr31Header::new('B', "P0", 'T', 'E');
        let block = wrap::tr31_wrap(&zmk, &header, &zak, &mut RandomFill::new().unwrap()).unwrap();
        let import = KeyImport {
            id: "zak.i",
            usage: KeyUsage::Zak,
            zmk: "zmk.i",
            wrapped: WrappedKey::Tr31(&block),
            kcv: None,
        };
        assert!(matches!(
            module.import_now(import),
            Err(HsmError::KeyBlock(_))
        ));
        let zpk = module
            .import_now(KeyImport {
                id: "zpk.i",
                usage: KeyUsage::Zpk,
                ..import
            })
            .unwrap();
        assert_eq!(zpk.kcv, zak.check_value());
    }
}
