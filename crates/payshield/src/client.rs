//! The payShield client: a [`SecurityModule`] whose keys are LMK tokens in the switch's
//! key table and whose operations are host commands, over a bounded pool of connections
//! (one command in flight on each), each command bounded in time. Errors come back as the
//! HSM's code and its meaning; latency and errors are counted by command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use switchyard_hsm::module::{
    KeyImport, KeyInfo, KeyUsage, MacAlgorithm, MacKey, ModuleFuture, PinSource, PinTranslation,
    SecurityModule, WrappedKey,
};
use switchyard_hsm::{from_hex, to_hex, Algorithm, HsmError};
use tokio::net::TcpStream;

use crate::tokens::{Token, TokenTable};
use crate::wire::{read_message, write_message};
use crate::{error_text, format_code, key_type, PayShieldError};

/// Where the HSM is and how to talk to it.
#[derive(Debug, Clone)]
pub struct PayShieldConfig {
    /// `host:port` of the HSM's host port.
    pub endpoint: String,
    /// Characters of message header (the HSM's configured header length).
    pub header_len: usize,
    /// Connections in the pool (commands in flight at once).
    pub connections: usize,
    /// Longest a command may take, connecting included.
    pub timeout: Duration,
    /// The key table file.
    pub key_table: PathBuf,
}

/// The payShield client.
pub struct PayShield {
    config: PayShieldConfig,
    table: TokenTable,
    pool: Vec<tokio::sync::Mutex<Option<TcpStream>>>,
    next: AtomicUsize,
    counter: AtomicU32,
    latency: HistogramVec,
    errors: IntCounterVec,
}

impl std::fmt::Debug for PayShield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayShield")
            .field("endpoint", &self.config.endpoint)
            .field("connections", &self.pool.len())
            .finish_non_exhaustive()
    }
}

fn module_error(e: impl std::fmt::Display) -> HsmError {
    HsmError::Module(e.to_string())
}

/// The 12 rightmost PAN digits before the check digit (the account number field).
fn account(pan: &[u8]) -> Result<String, HsmError> {
    if !(13..=19).contains(&pan.len()) || !pan.iter().all(u8::is_ascii_digit) {
        return Err(HsmError::Pan { len: pan.len() });
    }
    Ok(String::from_utf8_lossy(&pan[pan.len() - 13..pan.len() - 1]).into_owned())
}

impl PayShield {
    /// A client of `config`'s HSM (connections are made when first used), metrics
    /// registered in `registry`.
    pub fn new(config: PayShieldConfig, registry: &Registry) -> Result<PayShield, PayShieldError> {
        let table = TokenTable::load(&config.key_table)?;
        let metric = |e: prometheus::Error| PayShieldError::Io(format!("metrics: {e}"));
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_payshield_command_seconds",
                "payShield host command round trips, by command",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["command"],
        )
        .map_err(metric)?;
        let errors = IntCounterVec::new(
            Opts::new("switchyard_payshield_errors_total", "payShield commands that failed, by command and error code (io, timeout or the HSM's)"),
            &["command", "code"],
        )
        .map_err(metric)?;
        registry
            .register(Box::new(latency.clone()))
            .map_err(metric)?;
        registry
            .register(Box::new(errors.clone()))
            .map_err(metric)?;
        let pool = (0..config.connections.max(1))
            .map(|_| tokio::sync::Mutex::new(None))
            .collect();
        Ok(PayShield {
            config,
            table,
            pool,
            next: AtomicUsize::new(0),
            counter: AtomicU32::new(0),
            latency,
            errors,
        })
    }

    /// The key table.
    pub fn table(&self) -> &TokenTable {
        &self.table
    }

    /// `NC`: the HSM's LMK check value and firmware, to see it answers.
    pub async fn diagnostics(&self) -> Result<String, HsmError> {
        self.call("NC", String::new()).await.and_then(ok)
    }

    /// One command: its error code and the fields after it.
    async fn call(
        &self,
        command: &'static str,
        fields: String,
    ) -> Result<(String, String), HsmError> {
        let started = Instant::now();
        let result =
            tokio::time::timeout(self.config.timeout, self.exchange(command, &fields)).await;
        self.latency
            .with_label_values(&[command])
            .observe(started.elapsed().as_secs_f64());
        let result = match result {
            Ok(r) => r,
            Err(_) => Err((
                "timeout",
                format!(
                    "{command}: no answer in {} ms",
                    self.config.timeout.as_millis()
                ),
            )),
        };
        match result {
            Ok((code, rest)) => {
                if code != "00" {
                    self.errors.with_label_values(&[command, &code]).inc();
                }
                Ok((code, rest))
            }
            Err((code, why)) => {
                self.errors.with_label_values(&[command, code]).inc();
                Err(HsmError::Module(why))
            }
        }
    }

    async fn exchange(
        &self,
        command: &'static str,
        fields: &str,
    ) -> Result<(String, String), (&'static str, String)> {
        // A free connection if there is one, else wait for the next in turn.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.pool.len();
        let mut guard = None;
        for i in 0..n {
            if let Ok(g) = self.pool[(start + i) % n].try_lock() {
                guard = Some(g);
                break;
            }
        }
        let mut conn = match guard {
            Some(g) => g,
            None => self.pool[start % n].lock().await,
        };
        if conn.is_none() {
            let addr: SocketAddr = tokio::net::lookup_host(&self.config.endpoint)
                .await
                .ok()
                .and_then(|mut a| a.next())
                .ok_or(("io", format!("cannot resolve {}", self.config.endpoint)))?;
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| ("io", format!("connecting to {addr}: {e}")))?;
            let _ = stream.set_nodelay(true);
            *conn = Some(stream);
        }
        let width = self.config.header_len;
        let header = if width == 0 {
            String::new()
        } else {
            let n = self.counter.fetch_add(1, Ordering::Relaxed)
                % 10u32.saturating_pow(width.min(9) as u32);
            format!("{n:0width$}")
        };
        let message = format!("{header}{command}{fields}");
        let stream = conn.as_mut().ok_or(("io", "no connection".to_string()))?;
        let answer = async {
            write_message(stream, message.as_bytes()).await?;
            read_message(stream).await
        }
        .await;
        let answer = match answer {
            Ok(Some(a)) => a,
            Ok(None) => {
                *conn = None;
                return Err(("io", format!("{command}: the HSM closed the connection")));
            }
            Err(e) => {
                *conn = None;
                return Err(("io", format!("{command}: {e}")));
            }
        };
        let text = String::from_utf8_lossy(&answer).into_owned();
        let expected = [
            command.as_bytes()[0],
            command.as_bytes()[1].saturating_add(1),
        ];
        let (Some(h), Some(code), Some(error)) = (
            text.get(..width),
            text.get(width..width + 2),
            text.get(width + 2..width + 4),
        ) else {
            *conn = None;
            return Err((
                "io",
                format!("{command}: an answer of {} bytes", answer.len()),
            ));
        };
        if h != header || code.as_bytes() != expected {
            // Not the answer to this command: the connection is out of step.
            *conn = None;
            return Err((
                "io",
                format!(
                    "{command}: answer {code} with header {h:?}, expected {:?}",
                    String::from_utf8_lossy(&expected)
                ),
            ));
        }
        Ok((
            error.to_string(),
            text.get(width + 4..).unwrap_or_default().to_string(),
        ))
    }

    fn token(&self, id: &str, needs: &[KeyUsage], what: &'static str) -> Result<Token, HsmError> {
        let token = self
            .table
            .get(id)
            .ok_or_else(|| HsmError::UnknownKey(id.to_string()))?;
        token.usage.require(id, needs, what)?;
        Ok(token)
    }

    async fn translate(&self, request: PinTranslation<'_>) -> Result<Vec<u8>, HsmError> {
        let zpk = self.token(request.to, &[KeyUsage::Zpk], "ZPK")?;
        let unsupported =
            |what: &str| module_error(format!("{what} is not carried by the payShield client"));
        let to_format =
            format_code(request.to_format).ok_or_else(|| unsupported("PIN block format 4"))?;
        let from_format =
            format_code(request.from_format).ok_or_else(|| unsupported("PIN block format 4"))?;
        let account = account(request.pan)?;
        let block = to_hex(request.block);
        let (command, fields) = match request.from {
            PinSource::Key(id) => {
                let source = self.token(id, &[KeyUsage::Tpk, KeyUsage::Zpk], "TPK or ZPK")?;
                let command = if source.usage == KeyUsage::Tpk {
                    "CA"
                } else {
                    "CC"
                };
                (
                    command,
                    format!(
                        "{}{}12{block}{from_format}{to_format}{account}",
                        source.token, zpk.token
                    ),
                )
            }
            PinSource::Dukpt { bdk, ksn } => {
                if ksn.len() != 10 {
                    return Err(unsupported("AES DUKPT"));
                }
                if from_format != "01" {
                    return Err(module_error("DUKPT PIN blocks through CI are format 0"));
                }
                let bdk = self.token(bdk, &[KeyUsage::Bdk], "BDK")?;
                (
                    "CI",
                    format!(
                        "{}{}605{}{block}{to_format}{account}",
                        bdk.token,
                        zpk.token,
                        to_hex(ksn)
                    ),
                )
            }
        };
        let fields = ok(self.call(command, fields).await?)?;
        // PIN length (2), the block (16H), its format (2).
        let block = fields
            .get(2..18)
            .and_then(|b| from_hex(b).ok())
            .ok_or_else(|| module_error(format!("{command}: an answer without its PIN block")))?;
        Ok(block)
    }

    fn mac_fields(
        &self,
        key: MacKey<'_>,
        algorithm: MacAlgorithm,
        data: &[u8],
    ) -> Result<String, HsmError> {
        let MacKey::Key(id) = key else {
            return Err(module_error(
                "DUKPT MAC keys are not carried by the payShield client",
            ));
        };
        let token = self.token(id, &[KeyUsage::Tak, KeyUsage::Zak], "TAK or ZAK")?;
        let code = match algorithm {
            MacAlgorithm::Iso9797Alg1 => "1",
            MacAlgorithm::Iso9797Alg3 => "3",
            MacAlgorithm::AesCmac => {
                return Err(module_error(
                    "AES-CMAC is not carried by the payShield client",
                ))
            }
        };
        if data.len() > 4096 {
            return Err(module_error(format!(
                "a MAC input of {} bytes (at most 4096)",
                data.len()
            )));
        }
        Ok(format!(
            "011{code}1{}{}{:04X}{}",
            key_type(token.usage),
            token.token,
            data.len(),
            to_hex(data)
        ))
    }

    async fn info(&self, id: &str) -> Result<KeyInfo, HsmError> {
        let token = self
            .table
            .get(id)
            .ok_or_else(|| HsmError::UnknownKey(id.to_string()))?;
        let fields = ok(self
            .call("BU", format!("{}1{}", key_type(token.usage), token.token))
            .await?)?;
        let kcv: [u8; 3] = fields
            .get(..6)
            .and_then(|k| from_hex(k).ok())
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| module_error("BU: an answer without a check value"))?;
        if !to_hex(&kcv).eq_ignore_ascii_case(&token.kcv) {
            return Err(HsmError::KeyBlock(format!(
                "key {id:?}: the HSM gives check value {}, the key table says {}",
                to_hex(&kcv),
                token.kcv
            )));
        }
        Ok(KeyInfo {
            id: id.to_string(),
            usage: token.usage,
            algorithm: Algorithm::Tdes,
            kcv,
        })
    }

    async fn import(&self, import: KeyImport<'_>) -> Result<KeyInfo, HsmError> {
        let zmk = self.token(import.zmk, &[KeyUsage::Zmk], "ZMK")?;
        let key = match import.wrapped {
            WrappedKey::X917 {
                key,
                algorithm: Algorithm::Tdes,
            } if key.len() == 16 => format!("X{}", to_hex(key)),
            WrappedKey::X917 { .. } => {
                return Err(module_error(
                    "the payShield client imports double-length TDES keys",
                ))
            }
            WrappedKey::Tr31(block) => format!("R{block}"),
        };
        let fields = ok(self
            .call(
                "A6",
                format!("{}{}U{key}", key_type(import.usage), zmk.token),
            )
            .await?)?;
        let (token, kcv) = (fields.get(..33), fields.get(33..39));
        let (Some(token), Some(kcv)) = (token, kcv) else {
            return Err(module_error(
                "A6: an answer without the key and its check value",
            ));
        };
        let kcv_bytes: [u8; 3] = from_hex(kcv)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| module_error("A6: a check value that is not 6 hex digits"))?;
        switchyard_hsm::wrap::check_value_matches(&kcv_bytes, import.kcv)?;
        self.table
            .insert(
                import.id,
                Token {
                    usage: import.usage,
                    token: token.to_string(),
                    kcv: kcv.to_string(),
                },
            )
            .map_err(|e| HsmError::Store(e.to_string()))?;
        Ok(KeyInfo {
            id: import.id.to_string(),
            usage: import.usage,
            algorithm: Algorithm::Tdes,
            kcv: kcv_bytes,
        })
    }
}

/// The fields of a successful answer, or the HSM's error.
fn ok((code, fields): (String, String)) -> Result<String, HsmError> {
    if code == "00" {
        Ok(fields)
    } else {
        Err(module_error(format!(
            "HSM error {code}: {}",
            error_text(&code)
        )))
    }
}

impl SecurityModule for PayShield {
    fn kind(&self) -> &'static str {
        "payshield"
    }

    fn translate_pin<'a>(&'a self, request: PinTranslation<'a>) -> ModuleFuture<'a, Vec<u8>> {
        Box::pin(self.translate(request))
    }

    fn generate_mac<'a>(
        &'a self,
        key: MacKey<'a>,
        algorithm: MacAlgorithm,
        data: &'a [u8],
    ) -> ModuleFuture<'a, [u8; 8]> {
        Box::pin(async move {
            let fields = self.mac_fields(key, algorithm, data)?;
            let mac = ok(self.call("M6", fields).await?)?;
            mac.get(..16)
                .and_then(|m| from_hex(m).ok())
                .and_then(|m| m.try_into().ok())
                .ok_or_else(|| module_error("M6: an answer without a MAC"))
        })
    }

    fn verify_mac<'a>(
        &'a self,
        key: MacKey<'a>,
        algorithm: MacAlgorithm,
        data: &'a [u8],
        mac: &'a [u8],
    ) -> ModuleFuture<'a, bool> {
        Box::pin(async move {
            let fields = format!("{}{}", self.mac_fields(key, algorithm, data)?, to_hex(mac));
            match self.call("M8", fields).await? {
                (code, _) if code == "00" => Ok(true),
                (code, _) if code == "01" => Ok(false),
                answer => ok(answer).map(|_| false),
            }
        })
    }

    fn key_info<'a>(&'a self, id: &'a str) -> ModuleFuture<'a, KeyInfo> {
        Box::pin(self.info(id))
    }

    fn import_key<'a>(&'a self, import: KeyImport<'a>) -> ModuleFuture<'a, KeyInfo> {
        Box::pin(self.import(import))
    }

    fn generate_key<'a>(
        &'a self,
        id: &'a str,
        usage: KeyUsage,
        zmk: &'a str,
    ) -> ModuleFuture<'a, (KeyInfo, Vec<u8>)> {
        Box::pin(async move {
            let zmk = self.token(zmk, &[KeyUsage::Zmk], "ZMK")?;
            // A0 mode 1: generate, and export under the ZMK (X9.17).
            let fields = ok(self
                .call("A0", format!("1{}U{}X", key_type(usage), zmk.token))
                .await?)?;
            let (token, wrapped, kcv) = (fields.get(..33), fields.get(34..66), fields.get(66..72));
            let (Some(token), Some(wrapped), Some(kcv)) = (token, wrapped, kcv) else {
                return Err(module_error(
                    "A0: an answer without the key, its export and its check value",
                ));
            };
            let wrapped =
                from_hex(wrapped).map_err(|_| module_error("A0: the exported key is not hex"))?;
            let kcv_bytes: [u8; 3] = from_hex(kcv)
                .ok()
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| module_error("A0: a check value that is not 6 hex digits"))?;
            self.table
                .insert(
                    id,
                    Token {
                        usage,
                        token: token.to_string(),
                        kcv: kcv.to_string(),
                    },
                )
                .map_err(|e| HsmError::Store(e.to_string()))?;
            let info = KeyInfo {
                id: id.to_string(),
                usage,
                algorithm: Algorithm::Tdes,
                kcv: kcv_bytes,
            };
            Ok((info, wrapped))
        })
    }

    fn promote_key<'a>(&'a self, from: &'a str, to: &'a str) -> ModuleFuture<'a, KeyInfo> {
        Box::pin(async move {
            let token = self
                .table
                .get(from)
                .ok_or_else(|| HsmError::UnknownKey(from.to_string()))?;
            self.table
                .insert(to, token.clone())
                .map_err(|e| HsmError::Store(e.to_string()))?;
            self.table
                .remove(from)
                .map_err(|e| HsmError::Store(e.to_string()))?;
            self.info(to).await
        })
    }

    fn reload_keys(&self) -> switchyard_hsm::Result<Option<usize>> {
        self.table
            .reload()
            .map(Some)
            .map_err(|e| HsmError::Store(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::{form_key, HsmSimulator, Lmk};
    use switchyard_hsm::mac::{iso9797_alg3, Padding};
    use switchyard_hsm::pin::{self, Format};
    use switchyard_hsm::wrap::{export_x917, tr31_wrap, Tr31Header};
    use switchyard_hsm::{Key, TdesKey};

    const LMK: &str = "0123456789ABCDEFFEDCBA9876543210";
    const ZMK: &str = "A1B2C3D4E5F60718293A4B5C6D7E8F90";

    fn tdes(hex: &str) -> Key {
        Key::Tdes(TdesKey::new(&from_hex(hex).unwrap()).unwrap())
    }

    #[tokio::test]
    async fn commands_round_trip_through_the_simulator() {
        let sim = HsmSimulator::start("127.0.0.1:0", Lmk::from_hex(LMK).unwrap(), 4)
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let client = PayShield::new(
            PayShieldConfig {
                endpoint: sim.addr.to_string(),
                header_len: 4,
                connections: 2,
                timeout: Duration::from_secs(5),
                key_table: dir.path().join("keys.payshield"),
            },
            &Registry::new(),
        )
        .unwrap();
        assert!(client.diagnostics().await.unwrap().ends_with("0007-E000"));
        // The ZMK is formed at the HSM from components; its token goes in the table.
        let lmk = Lmk::from_hex(LMK).unwrap();
        let (token, kcv) =
            form_key(&lmk, KeyUsage::Zmk, &[from_hex(ZMK).unwrap(), vec![0; 16]]).unwrap();
        client
            .table()
            .insert(
                "zmk",
                Token {
                    usage: KeyUsage::Zmk,
                    token,
                    kcv,
                },
            )
            .unwrap();
        let zmk = tdes(ZMK);
        let zpk = tdes("89ABCDEF0123456776543210FEDCBA98");
        let zak = tdes("1032547698BADCFEEFCDAB8967452301");
        let bdk = tdes("0123456789ABCDEFFEDCBA9876543210");
        let wrapped = export_x917(zmk.tdes("zmk").unwrap(), &zpk).unwrap();
        let import = |id, usage, wrapped| KeyImport {
            id,
            usage,
            zmk: "zmk",
            wrapped,
            kcv: None,
        };
        let info = client
            .import_key(KeyImport {
                kcv: Some(&zpk.check_value()),
                ..import(
                    "zpk",
                    KeyUsage::Zpk,
                    WrappedKey::X917 {
                        key: &wrapped,
                        algorithm: Algorithm::Tdes,
                    },
                )
            })
            .await
            .unwrap();
        assert_eq!(info.kcv, zpk.check_value());
        // A wrong check value: refused, nothing stored.
        let refused = client
            .import_key(KeyImport {
                kcv: Some(&[0, 0, 0]),
                ..import(
                    "zpk2",
                    KeyUsage::Zpk,
                    WrappedKey::X917 {
                        key: &wrapped,
                        algorithm: Algorithm::Tdes,
                    },
                )
            })
            .await;
        assert!(refused.is_err() && client.table().get("zpk2").is_none());
        for (id, usage, key, tr31) in [
            ("zak", KeyUsage::Zak, &zak, "M3"),
            ("bdk", KeyUsage::Bdk, &bdk, "B0"),
        ] {
            let block = tr31_wrap(
                &zmk,
                &Tr31Header::new('B', tr31, 'T', 'N'),
                key,
                &mut pin::NoFill,
            )
            .unwrap();
            let wrapped = WrappedKey::Tr31(&block);
            client
                .import_key(KeyImport {
                    id,
                    usage,
                    zmk: "zmk",
                    wrapped,
                    kcv: None,
                })
                .await
                .unwrap();
        }
        assert_eq!(client.key_info("zak").await.unwrap().kcv, zak.check_value());
        // DUKPT to ZPK: the X9.24-1 annex block for counter 1 (PIN 1234).
        let pan = b"4012345678909";
        let ksn = from_hex("FFFF9876543210E00001").unwrap();
        let block = from_hex("1B9C1845EB993A7A").unwrap();
        let out = client
            .translate_pin(PinTranslation {
                block: &block,
                pan,
                from: PinSource::Dukpt {
                    bdk: "bdk",
                    ksn: &ksn,
                },
                from_format: Format::Iso0,
                to: "zpk",
                to_format: Format::Iso3,
            })
            .await
            .unwrap();
        assert_eq!(
            &pin::decrypt(Format::Iso3, &zpk, &out, Some(pan)).unwrap()[..],
            b"1234"
        );
        // Under the wrong key: the HSM's error 20, named.
        let err = client
            .translate_pin(PinTranslation {
                block: &block,
                pan,
                from: PinSource::Key("zpk"),
                from_format: Format::Iso0,
                to: "zpk",
                to_format: Format::Iso0,
            })
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("HSM error 20: PIN block does not contain valid values"),
            "{err}"
        );
        // MACs: generated as X9.19 would, verified, a wrong one refused.
        let data = b"0200 up to the MAC";
        let mac = client
            .generate_mac(MacKey::Key("zak"), MacAlgorithm::Iso9797Alg3, data)
            .await
            .unwrap();
        assert_eq!(
            mac,
            iso9797_alg3(zak.bytes(), data, Padding::Zeros).unwrap()
        );
        assert!(client
            .verify_mac(MacKey::Key("zak"), MacAlgorithm::Iso9797Alg3, data, &mac)
            .await
            .unwrap());
        let mut bad = mac;
        bad[0] ^= 1;
        assert!(!client
            .verify_mac(MacKey::Key("zak"), MacAlgorithm::Iso9797Alg3, data, &bad)
            .await
            .unwrap());
        // The table holds tokens and check values only.
        let table = std::fs::read_to_string(dir.path().join("keys.payshield")).unwrap();
        for clear in [
            "89ABCDEF0123456776543210FEDCBA98",
            "1032547698BADCFEEFCDAB8967452301",
            ZMK,
        ] {
            assert!(!table.contains(clear), "{table}");
        }
        assert_eq!(client.errors.with_label_values(&["CC", "20"]).get(), 1);
        assert_eq!(client.errors.with_label_values(&["M8", "01"]).get(), 1);
    }
}
