//! `switchyard sim hsm`: a payShield host-command simulator. It holds only its LMK (a
//! double-length TDES key from a file); every key arrives as a token under the LMK and is
//! opened for the one command, with this workspace's software cryptography. For tests and
//! labs: it is no more a certified device than the software module.
//!
//! Its tokens: `U` + the key encrypted (ECB) under the LMK with its first byte XORed with
//! a variant of the key type, so that a token of one type does not open as another.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchyard_hsm::module::{KeyUsage, MacAlgorithm};
use switchyard_hsm::pin::{self, Fill, Side};
use switchyard_hsm::software::RandomFill;
use switchyard_hsm::{dukpt, from_hex, to_hex, wrap, Key, TdesKey};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::wire::{read_message, write_message, Fields};
use crate::{format_of, PayShieldError};

/// The simulator's LMK.
#[derive(Debug)]
pub struct Lmk(TdesKey);

/// An error code and why (the why goes to the simulator's log only).
type Refusal = (&'static str, String);

fn refuse(code: &'static str) -> impl Fn(PayShieldError) -> Refusal {
    move |e| (code, e.to_string())
}

impl Lmk {
    /// An LMK from 32 hex digits.
    pub fn from_hex(text: &str) -> Result<Lmk, PayShieldError> {
        let bytes = Zeroizing::new(
            from_hex(text.trim()).map_err(|e| PayShieldError::Wire(format!("LMK: {e}")))?,
        );
        if bytes.len() != 16 {
            return Err(PayShieldError::Wire(
                "LMK: 32 hex digits (double-length TDES)".into(),
            ));
        }
        TdesKey::new(&bytes)
            .map(Lmk)
            .map_err(|e| PayShieldError::Wire(format!("LMK: {e}")))
    }

    fn variant(&self, key_type: &str) -> Result<TdesKey, Refusal> {
        let n: u8 = key_type
            .parse()
            .map_err(|_| ("15", format!("key type {key_type:?}")))?;
        let mut bytes = Zeroizing::new(self.0.bytes().to_vec());
        bytes[0] ^= 0xA6 ^ n.wrapping_mul(0x1F);
        TdesKey::new(&bytes).map_err(|e| ("13", e.to_string()))
    }

    /// The token of `key` (double-length TDES) as a `key_type` key.
    pub fn token(&self, key: &Key, key_type: &str) -> Result<String, Refusal> {
        let key = key.tdes("LMK token").map_err(|e| ("15", e.to_string()))?;
        if key.bytes().len() != 16 {
            return Err(("15", "tokens hold double-length keys".into()));
        }
        let lmk = self.variant(key_type)?;
        let mut out = Zeroizing::new(key.bytes().to_vec());
        for chunk in out.chunks_exact_mut(8) {
            let block: &mut [u8; 8] = chunk.try_into().map_err(|_| ("15", "block".to_string()))?;
            lmk.encrypt_block(block);
        }
        Ok(format!("U{}", to_hex(&out)))
    }

    /// The key in a token of `key_type`.
    fn open(&self, token: &str, key_type: &str) -> Result<Key, Refusal> {
        let hex = token
            .strip_prefix('U')
            .ok_or(("10", "a token is U and 32 hex digits".to_string()))?;
        let mut bytes =
            Zeroizing::new(from_hex(hex).map_err(|_| ("15", "token not hex".to_string()))?);
        if bytes.len() != 16 {
            return Err(("15", "a token of the wrong length".into()));
        }
        let lmk = self.variant(key_type)?;
        for chunk in bytes.chunks_exact_mut(8) {
            let block: &mut [u8; 8] = chunk.try_into().map_err(|_| ("15", "block".to_string()))?;
            lmk.decrypt_block(block);
        }
        TdesKey::new(&bytes)
            .map(Key::Tdes)
            .map_err(|e| ("10", e.to_string()))
    }
}

/// A running simulator.
#[derive(Debug)]
pub struct HsmSimulator {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for HsmSimulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl HsmSimulator {
    /// Listen on `addr` with `lmk`, messages with `header_len` header characters.
    pub async fn start(addr: &str, lmk: Lmk, header_len: usize) -> std::io::Result<HsmSimulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let lmk = Arc::new(lmk);
        let slots = Arc::new(tokio::sync::Semaphore::new(64));
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    continue;
                };
                let (lmk, stop) = (lmk.clone(), stop.clone());
                tokio::spawn(async move {
                    loop {
                        let message = tokio::select! {
                            _ = stop.cancelled() => break,
                            m = read_message(&mut stream) => m,
                        };
                        let Ok(Some(message)) = message else { break };
                        let answer = answer(&lmk, &message, header_len);
                        if write_message(&mut stream, &answer).await.is_err() {
                            break;
                        }
                    }
                    drop(permit);
                });
            }
        });
        Ok(HsmSimulator { addr, shutdown })
    }
}

/// The response to one command message.
pub fn answer(lmk: &Lmk, message: &[u8], header_len: usize) -> Vec<u8> {
    let header = message
        .get(..header_len.min(message.len()))
        .unwrap_or_default();
    let command = message.get(header_len..header_len + 2).unwrap_or(b"??");
    let response_code = [command[0], command[1].saturating_add(1)];
    let result = Fields::new(message, header_len + 2)
        .map_err(refuse("15"))
        .and_then(|mut f| run(lmk, command, &mut f));
    let mut out = header.to_vec();
    out.extend_from_slice(&response_code);
    match result {
        Ok(fields) => {
            out.extend_from_slice(b"00");
            out.extend_from_slice(fields.as_bytes());
        }
        Err((code, why)) => {
            tracing::info!(command = %String::from_utf8_lossy(command), code, %why, "sim hsm: command refused");
            out.extend_from_slice(code.as_bytes());
        }
    }
    out
}

/// A pseudo PAN whose format 0/3 PAN field is the 12-digit account number.
fn pan_of(account: &str) -> String {
    format!("0{account}0")
}

fn run(lmk: &Lmk, command: &[u8], f: &mut Fields<'_>) -> Result<String, Refusal> {
    let wire = refuse("15");
    match command {
        b"NC" => Ok(format!(
            "{}0007-E000",
            to_hex(&{
                let mut block = [0u8; 8];
                lmk.0.encrypt_block(&mut block);
                block
            })
        )),
        b"CA" | b"CC" => {
            let source_type = if command == b"CA" { "002" } else { "001" };
            let source = lmk.open(f.take(33, "source key").map_err(&wire)?, source_type)?;
            let zpk = lmk.open(f.take(33, "ZPK").map_err(&wire)?, "001")?;
            f.take(2, "maximum PIN length").map_err(&wire)?;
            translate(f, &source, &zpk)
        }
        b"CI" => {
            let bdk = lmk.open(f.take(33, "BDK").map_err(&wire)?, "009")?;
            let zpk = lmk.open(f.take(33, "ZPK").map_err(&wire)?, "001")?;
            f.take(3, "KSN descriptor").map_err(&wire)?;
            let ksn = f.hex(20, "KSN").map_err(&wire)?;
            let block = f.hex(16, "PIN block").map_err(&wire)?;
            let to = format_of(f.take(2, "destination format").map_err(&wire)?)
                .ok_or(("23", "format".to_string()))?;
            let pan = pan_of(f.take(12, "account").map_err(&wire)?);
            let bdk = bdk.tdes("BDK").map_err(|e| ("10", e.to_string()))?;
            let pin_key =
                Key::Tdes(dukpt::pin_key_for(bdk, &ksn).map_err(|e| ("15", e.to_string()))?);
            let mut fill = RandomFill::new().map_err(|e| ("12", e.to_string()))?;
            let out = pin::translate(
                &block,
                Side {
                    key: &pin_key,
                    format: pin::Format::Iso0,
                    pan: Some(pan.as_bytes()),
                },
                Side {
                    key: &zpk,
                    format: to,
                    pan: Some(pan.as_bytes()),
                },
                &mut fill,
            )
            .map_err(|e| ("20", e.to_string()))?;
            Ok(format!("04{}{}", to_hex(&out), f_code(to)))
        }
        b"M6" | b"M8" => {
            let _mode = f.take(1, "mode").map_err(&wire)?;
            let _input = f.take(1, "input format").map_err(&wire)?;
            let _size = f.take(1, "MAC size").map_err(&wire)?;
            let algorithm = match f.take(1, "algorithm").map_err(&wire)? {
                "1" => MacAlgorithm::Iso9797Alg1,
                "3" => MacAlgorithm::Iso9797Alg3,
                other => return Err(("15", format!("MAC algorithm {other}"))),
            };
            let _padding = f.take(1, "padding").map_err(&wire)?;
            let key_type = f.take(3, "key type").map_err(&wire)?;
            if !matches!(key_type, "003" | "008") {
                return Err(("15", format!("key type {key_type} is not a MAC key")));
            }
            let key = lmk.open(f.take(33, "key").map_err(&wire)?, key_type)?;
            let len = usize::from_str_radix(f.take(4, "length").map_err(&wire)?, 16)
                .map_err(|_| ("15", "length".to_string()))?;
            let data = f.hex(2 * len, "message").map_err(&wire)?;
            let mac = algorithm
                .compute(&key, &data)
                .map_err(|e| ("15", e.to_string()))?;
            if command == b"M6" {
                return Ok(to_hex(&mac));
            }
            let given = f.hex(16, "MAC").map_err(&wire)?;
            if switchyard_hsm::mac::same_mac(&mac, &given) {
                Ok(String::new())
            } else {
                Err(("01", "MAC does not verify".into()))
            }
        }
        b"BU" => {
            let key_type = f.take(3, "key type").map_err(&wire)?;
            f.take(1, "length flag").map_err(&wire)?;
            let key = lmk.open(f.take(33, "key").map_err(&wire)?, key_type)?;
            let mut block = [0u8; 8];
            key.tdes("key")
                .map_err(|e| ("15", e.to_string()))?
                .encrypt_block(&mut block);
            Ok(to_hex(&block))
        }
        b"A6" => import(lmk, f),
        b"A0" => {
            if f.take(1, "mode").map_err(&wire)? != "1" {
                return Err(("15", "mode 1 (generate and export) only".into()));
            }
            let key_type = f.take(3, "key type").map_err(&wire)?;
            f.take(1, "LMK scheme").map_err(&wire)?;
            let zmk = lmk.open(f.take(33, "ZMK").map_err(&wire)?, "000")?;
            f.take(1, "ZMK scheme").map_err(&wire)?;
            let mut fill = RandomFill::new().map_err(|e| ("12", e.to_string()))?;
            let bytes: Zeroizing<Vec<u8>> = Zeroizing::new(
                (0..16)
                    .map(|_| fill.nibble() << 4 | fill.nibble())
                    .collect(),
            );
            let key = Key::Tdes(TdesKey::new(&bytes).map_err(|e| ("15", e.to_string()))?);
            let zmk = zmk.tdes("ZMK").map_err(|e| ("10", e.to_string()))?;
            let wrapped = wrap::export_x917(zmk, &key).map_err(|e| ("15", e.to_string()))?;
            Ok(format!(
                "{}X{}{}",
                lmk.token(&key, key_type)?,
                to_hex(&wrapped),
                to_hex(&key.check_value())
            ))
        }
        _ => Err((
            "68",
            format!("command {}", String::from_utf8_lossy(command)),
        )),
    }
}

fn f_code(format: pin::Format) -> &'static str {
    crate::format_code(format).unwrap_or("01")
}

/// `CA`/`CC` after the keys: block, formats, account.
fn translate(f: &mut Fields<'_>, from: &Key, to: &Key) -> Result<String, Refusal> {
    let wire = refuse("15");
    let block = f.hex(16, "PIN block").map_err(&wire)?;
    let from_format = format_of(f.take(2, "source format").map_err(&wire)?)
        .ok_or(("23", "format".to_string()))?;
    let to_format = format_of(f.take(2, "destination format").map_err(&wire)?)
        .ok_or(("23", "format".to_string()))?;
    let pan = pan_of(f.take(12, "account").map_err(&wire)?);
    let mut fill = RandomFill::new().map_err(|e| ("12", e.to_string()))?;
    let out = pin::translate(
        &block,
        Side {
            key: from,
            format: from_format,
            pan: Some(pan.as_bytes()),
        },
        Side {
            key: to,
            format: to_format,
            pan: Some(pan.as_bytes()),
        },
        &mut fill,
    )
    .map_err(|e| match e {
        switchyard_hsm::HsmError::Pin { .. } => ("24", e.to_string()),
        _ => ("20", e.to_string()),
    })?;
    Ok(format!("04{}{}", to_hex(&out), f_code(to_format)))
}

/// `A6`: a key under a ZMK to a token under the LMK, with its check value.
fn import(lmk: &Lmk, f: &mut Fields<'_>) -> Result<String, Refusal> {
    let wire = refuse("15");
    let key_type = f.take(3, "key type").map_err(&wire)?;
    let zmk = lmk.open(f.take(33, "ZMK").map_err(&wire)?, "000")?;
    f.take(1, "LMK scheme").map_err(&wire)?;
    let key = match f.take(1, "key scheme").map_err(&wire)? {
        "X" => {
            let wrapped = f.hex(32, "key under the ZMK").map_err(&wire)?;
            let zmk = zmk.tdes("ZMK").map_err(|e| ("10", e.to_string()))?;
            wrap::import_x917(zmk, &wrapped, switchyard_hsm::Algorithm::Tdes, None)
                .map_err(|e| ("15", e.to_string()))?
        }
        "R" => {
            let (header, key) =
                wrap::tr31_unwrap(&zmk, f.rest()).map_err(|e| ("15", e.to_string()))?;
            let allowed = match key_type {
                "001" | "002" => header.usage == "P0",
                "003" | "008" => header.usage.starts_with('M'),
                "009" => header.usage == "B0",
                _ => false,
            };
            if !allowed {
                return Err((
                    "15",
                    format!("a {} block for key type {key_type}", header.usage),
                ));
            }
            key
        }
        other => return Err(("15", format!("key scheme {other}"))),
    };
    let token = lmk.token(&key, key_type)?;
    Ok(format!("{token}{}", to_hex(&key.check_value())))
}

/// Form a key from clear components (as custodians do at the HSM's console): its token
/// for `usage` and its check value. For `switchyard sim hsm --form-key`.
pub fn form_key(
    lmk: &Lmk,
    usage: KeyUsage,
    components: &[Vec<u8>],
) -> Result<(String, String), PayShieldError> {
    let mut bytes = Zeroizing::new(vec![0u8; 16]);
    for c in components {
        if c.len() != 16 {
            return Err(PayShieldError::Wire("components are 32 hex digits".into()));
        }
        bytes.iter_mut().zip(c).for_each(|(b, c)| *b ^= c);
    }
    let key = Key::Tdes(TdesKey::new(&bytes).map_err(|e| PayShieldError::Wire(e.to_string()))?);
    let token = lmk
        .token(&key, crate::key_type(usage))
        .map_err(|(_, why)| PayShieldError::Wire(why))?;
    Ok((token, to_hex(&key.check_value())))
}
