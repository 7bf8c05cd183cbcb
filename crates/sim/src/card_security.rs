//! Card security for the simulators: a terminal's PIN pad (PIN blocks under a TPK or
//! DUKPT keys, advancing key serial numbers, MACs) and an issuer's zone keys (the ZPK it
//! decrypts translated PIN blocks with, the ZAK of its MACs). Keys come from files, never
//! the command line; nothing here prints or logs one.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::RwLock;

use switchyard_hsm::module::MacAlgorithm;
use switchyard_hsm::pin::{self, Fill, Format};
use switchyard_hsm::software::RandomFill;
use switchyard_hsm::{dukpt, dukpt_aes, AesKey, Key, TdesKey};
use switchyard_iso8583::mac_input::{mac_field_for, mac_field_of, mac_input};
use switchyard_iso8583::{MessageBuilder, MessageView};

use crate::SimError;

/// The keys of a PIN pad.
#[derive(Debug)]
pub enum PadKeys {
    /// A fixed terminal PIN key (and MAC key, if it MACs).
    Fixed {
        /// The TPK.
        tpk: Key,
        /// The TAK.
        tak: Option<Key>,
    },
    /// DUKPT: the device's initial key and its key serial number, the counter advancing
    /// by one each transaction.
    Dukpt {
        /// The initial key (IPEK; an AES initial key for AES DUKPT).
        initial: Key,
        /// The KSN with a counter of 0 (10 bytes TDES, 12 AES).
        ksn_base: Vec<u8>,
        /// Whether requests are MACed with the DUKPT MAC key.
        macs: bool,
    },
}

/// One transaction's keys: its KSN (DUKPT), PIN key and MAC key.
struct TransactionKeys {
    ksn: Option<Vec<u8>>,
    pin: Key,
    mac: Option<Key>,
}

/// What the simulated terminal does to each request.
#[derive(Debug)]
pub struct TerminalSecurity {
    /// Its keys.
    pub keys: PadKeys,
    /// The PIN entered (4-12 digits).
    pub pin: String,
    /// Its PIN block format.
    pub format: Format,
    /// The field the KSN goes in (DUKPT).
    pub ksn_field: u8,
    /// The MAC algorithm.
    pub mac_algorithm: MacAlgorithm,
    /// Send a MAC that does not verify (to test the switch's refusal).
    pub corrupt_mac: bool,
    counter: AtomicU32,
}

impl TerminalSecurity {
    /// A PIN pad.
    pub fn new(
        keys: PadKeys,
        pin: &str,
        format: Format,
        ksn_field: u8,
        mac_algorithm: MacAlgorithm,
    ) -> TerminalSecurity {
        TerminalSecurity {
            keys,
            pin: pin.to_string(),
            format,
            ksn_field,
            mac_algorithm,
            corrupt_mac: false,
            counter: AtomicU32::new(0),
        }
    }

    /// The next KSN and its transaction's PIN and MAC keys.
    fn next_keys(&self) -> Result<TransactionKeys, SimError> {
        let bad = |e: switchyard_hsm::HsmError| SimError::Config(format!("PIN pad: {e}"));
        match &self.keys {
            PadKeys::Fixed { tpk, tak } => Ok(TransactionKeys {
                ksn: None,
                pin: tpk.clone(),
                mac: tak.clone(),
            }),
            PadKeys::Dukpt {
                initial,
                ksn_base,
                macs,
            } => {
                let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
                let mut ksn = ksn_base.clone();
                match initial {
                    Key::Tdes(ipek) => {
                        // The 21-bit counter in the last 3 bytes (above it: the device id).
                        let tail = ksn.len() - 3;
                        let counter = (n & 0x1F_FFFF).to_be_bytes();
                        ksn[tail] = (ksn[tail] & 0xE0) | counter[1];
                        ksn[tail + 1] = counter[2];
                        ksn[tail + 2] = counter[3];
                        let tk = dukpt::transaction_key(ipek, &ksn).map_err(bad)?;
                        let pin_key = Key::Tdes(dukpt::pin_key(&tk).map_err(bad)?);
                        let mac_key = macs
                            .then(|| dukpt::mac_request_key(&tk).map(Key::Tdes))
                            .transpose()
                            .map_err(bad)?;
                        Ok(TransactionKeys {
                            ksn: Some(ksn),
                            pin: pin_key,
                            mac: mac_key,
                        })
                    }
                    Key::Aes(ik) => {
                        let at = ksn.len() - 4;
                        ksn[at..].copy_from_slice(&n.to_be_bytes());
                        let pin_type = if self.format == Format::Iso4 {
                            dukpt_aes::KeyType::Aes128
                        } else {
                            dukpt_aes::KeyType::Tdes2
                        };
                        let pin_key =
                            dukpt_aes::working_key(ik, &ksn, dukpt_aes::Usage::Pin, pin_type)
                                .map_err(bad)?;
                        let mac_type = if self.mac_algorithm == MacAlgorithm::AesCmac {
                            dukpt_aes::KeyType::Aes128
                        } else {
                            dukpt_aes::KeyType::Tdes2
                        };
                        let mac_key = macs
                            .then(|| {
                                dukpt_aes::working_key(
                                    ik,
                                    &ksn,
                                    dukpt_aes::Usage::MacGeneration,
                                    mac_type,
                                )
                            })
                            .transpose()
                            .map_err(bad)?;
                        Ok(TransactionKeys {
                            ksn: Some(ksn),
                            pin: pin_key,
                            mac: mac_key,
                        })
                    }
                }
            }
        }
    }

    /// Add the PIN block (for `pan`), the KSN and the MAC to a request being built.
    pub fn secure(&self, builder: &mut MessageBuilder<'static>, pan: &str) -> Result<(), SimError> {
        let TransactionKeys {
            ksn,
            pin: pin_key,
            mac: mac_key,
        } = self.next_keys()?;
        let mut fill = RandomFill::new().map_err(|e| SimError::Config(e.to_string()))?;
        let block = pin::encrypt(
            self.format,
            &pin_key,
            self.pin.as_bytes(),
            Some(pan.as_bytes()),
            &mut fill,
        )
        .map_err(|e| SimError::Config(format!("PIN block: {e}")))?;
        let codec = |e: switchyard_iso8583::Error| SimError::Config(e.to_string());
        builder.set(52, &block).map_err(codec)?;
        if let Some(ksn) = &ksn {
            builder
                .set(self.ksn_field, switchyard_hsm::to_hex(ksn))
                .map_err(codec)?;
        }
        if let Some(key) = mac_key {
            let mut mac = mac_of(builder, &key, self.mac_algorithm)?;
            if self.corrupt_mac {
                mac[0] ^= 0x01;
            }
            builder.set(mac_field_for(builder), mac).map_err(codec)?;
        }
        Ok(())
    }
}

/// The MAC `builder`'s message gets in its MAC field under `key`.
pub fn mac_of(
    builder: &mut MessageBuilder<'static>,
    key: &Key,
    algorithm: MacAlgorithm,
) -> Result<[u8; 8], SimError> {
    let codec = |e: switchyard_iso8583::Error| SimError::Config(e.to_string());
    let field = mac_field_for(builder);
    builder.set(field, [0u8; 8]).map_err(codec)?;
    let draft = MessageView::decode(builder.spec(), builder.encode()).map_err(codec)?;
    let data = mac_input(&draft, field).ok_or_else(|| SimError::Config("no MAC field".into()))?;
    algorithm
        .compute(key, data)
        .map_err(|e| SimError::Config(format!("MAC: {e}")))
}

/// Whether `view`'s MAC verifies under `key` (`false` when it has none).
pub fn mac_verifies(view: &MessageView<'_>, key: &Key, algorithm: MacAlgorithm) -> bool {
    let Ok(Some(field)) = mac_field_of(view) else {
        return false;
    };
    let (Some(data), Some(mac)) = (mac_input(view, field), view.field(field)) else {
        return false;
    };
    algorithm
        .compute(key, data)
        .is_ok_and(|m| switchyard_hsm::mac::same_mac(&m, &mac.value()))
}

/// The issuer's zone keys.
#[derive(Debug)]
pub struct IssuerKeys {
    /// ZPKs accepted, newest first (the one before a key exchange is kept a while).
    zpks: RwLock<Vec<Key>>,
    /// The PIN block format the switch translates to.
    pub format: Format,
    /// The PIN it approves (others: 55).
    pub expected_pin: String,
    /// The ZAK: requests must carry its MAC, answers get one.
    pub zak: Option<Key>,
    /// The MAC algorithm.
    pub mac_algorithm: MacAlgorithm,
    /// Send the switch a new ZPK (under this ZMK) once, this long after start.
    pub exchange_after: Option<std::time::Duration>,
    /// The zone master key new ZPKs travel under (both directions).
    pub zmk: Option<Key>,
    /// Field 70 of the exchange.
    pub exchange_code: String,
    /// The field that carries the key.
    pub key_field: u8,
    exchanged: std::sync::atomic::AtomicBool,
}

/// What the issuer made of a request's PIN block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinCheck {
    /// No PIN block.
    Absent,
    /// The expected PIN.
    Right,
    /// Another PIN, or a block that does not decrypt under its ZPKs.
    Wrong,
}

impl IssuerKeys {
    /// Zone keys with one ZPK.
    pub fn new(
        zpk: Option<Key>,
        format: Format,
        expected_pin: &str,
        zak: Option<Key>,
        mac_algorithm: MacAlgorithm,
    ) -> IssuerKeys {
        IssuerKeys {
            zpks: RwLock::new(zpk.into_iter().collect()),
            format,
            expected_pin: expected_pin.to_string(),
            zak,
            mac_algorithm,
            exchange_after: None,
            zmk: None,
            exchange_code: "161".into(),
            key_field: 48,
            exchanged: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The key exchange 0800, the first time it is asked for (`None` after, or without a
    /// ZMK): a new random ZPK under the ZMK (X9.17) and its check value in the key field.
    /// The new key is accepted from now on, the old one kept for what is in flight.
    pub fn exchange_request(
        &self,
        spec: &'static switchyard_iso8583::Spec,
    ) -> Option<bytes::Bytes> {
        let zmk = self
            .zmk
            .as_ref()
            .filter(|_| self.exchange_after.is_some())?;
        if self.exchanged.swap(true, Ordering::AcqRel) {
            return None;
        }
        let mut fill = RandomFill::new().ok()?;
        let bytes: zeroize::Zeroizing<Vec<u8>> = zeroize::Zeroizing::new(
            (0..16)
                .map(|_| fill.nibble() << 4 | fill.nibble())
                .collect(),
        );
        let zpk = Key::Tdes(TdesKey::new(&bytes).ok()?);
        let wrapped = switchyard_hsm::wrap::export_x917(zmk.tdes("ZMK").ok()?, &zpk).ok()?;
        let field = format!(
            "{}{}",
            switchyard_hsm::to_hex(&wrapped),
            switchyard_hsm::to_hex(&zpk.check_value())
        );
        let mut b = MessageBuilder::new(spec, switchyard_iso8583::Mti::parse("0800")?);
        b.set(7, "1203000000").ok()?.set(11, "990001").ok()?;
        b.set(self.key_field, field).ok()?;
        b.set(70, &self.exchange_code).ok()?;
        self.rotate_zpk(zpk);
        Some(b.encode())
    }

    /// A new ZPK in front; the previous one stays (for requests already translated).
    pub fn rotate_zpk(&self, zpk: Key) {
        let mut zpks = self.zpks.write().unwrap_or_else(|p| p.into_inner());
        zpks.insert(0, zpk);
        zpks.truncate(2);
    }

    /// The switch's key exchange 0800: the new ZPK in the key field (X9.17 under the ZMK
    /// and its check value), taken in front of the old one. `true` when it imported.
    pub fn accept_exchange(&self, request: &MessageView<'_>) -> bool {
        let (Some(zmk), Some(field)) = (self.zmk.as_ref(), request.field(self.key_field)) else {
            return false;
        };
        let text = field.text();
        let Some((key, kcv)) = text
            .len()
            .checked_sub(6)
            .and_then(|at| text.split_at_checked(at))
        else {
            return false;
        };
        let (Ok(key), Ok(kcv), Ok(zmk)) = (
            switchyard_hsm::from_hex(key),
            switchyard_hsm::from_hex(kcv),
            zmk.tdes("ZMK"),
        ) else {
            return false;
        };
        match switchyard_hsm::wrap::import_x917(
            zmk,
            &key,
            switchyard_hsm::Algorithm::Tdes,
            Some(&kcv),
        ) {
            Ok(zpk) => {
                self.rotate_zpk(zpk);
                true
            }
            Err(_) => false,
        }
    }

    /// The current ZPK.
    pub fn current_zpk(&self) -> Option<Key> {
        self.zpks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .first()
            .cloned()
    }

    /// Decrypt `request`'s PIN block under the ZPKs and compare it with the expected PIN.
    pub fn check_pin(&self, request: &MessageView<'_>) -> PinCheck {
        let Some(block) = request.field(52).map(|f| f.value().into_owned()) else {
            return PinCheck::Absent;
        };
        let pan = request
            .field(2)
            .map(|f| f.value().into_owned())
            .unwrap_or_default();
        let zpks = self.zpks.read().unwrap_or_else(|p| p.into_inner());
        let right = zpks.iter().any(|zpk| {
            pin::decrypt(self.format, zpk, &block, Some(&pan))
                .is_ok_and(|pin| switchyard_hsm::mac::same_mac(&pin, self.expected_pin.as_bytes()))
        });
        if right {
            PinCheck::Right
        } else {
            PinCheck::Wrong
        }
    }
}

/// A TDES or AES key from a file of hex digits (`aes:` before the digits for AES).
pub fn key_from_file(path: &std::path::Path) -> Result<Key, SimError> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| SimError::Config(format!("{}: {e}", path.display())))?,
    );
    let text = text.trim();
    let (aes, hex) = match text.strip_prefix("aes:") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let bytes = zeroize::Zeroizing::new(
        switchyard_hsm::from_hex(hex)
            .map_err(|e| SimError::Config(format!("{}: {e}", path.display())))?,
    );
    let key = if aes {
        AesKey::new(&bytes).map(Key::Aes)
    } else {
        TdesKey::new(&bytes).map(Key::Tdes)
    };
    key.map_err(|e| SimError::Config(format!("{}: {e}", path.display())))
}
