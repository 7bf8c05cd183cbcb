//! Key exchange with issuers, both ways.
//!
//! Issuer-initiated: an 0800 on the issuer link whose field 70 carries the
//! link's ZPK or ZAK exchange code (configurable: 161, 162, ...) brings a new zone key
//! under the ZMK in the key field (a TR-31 block, or X9.17 hex followed by its 6-digit
//! check value). The switch imports it through its security module, which checks the
//! check value; from then on new requests use it (requests already translated finish on
//! the old one), and the 0810 answers 00. A key that does not import is answered 30 (format)
//! or 63 (security) and the old key stays. Every exchange is an audit event with the key's
//! id and check value, never the key.
//!
//! Switch-initiated ([`schedule`]), every `interval`: the module generates a new ZPK,
//! staged under `ID.next`, and the switch sends it in an 0800 (the ZPK code and key field:
//! X9.17 under the ZMK and its check value). (ZAKs change only when the issuer sends one:
//! a MAC key changed by the switch would leave the answers in flight under the old one.) On the issuer's
//! 0810 00 the staged key takes the ZPK's id and new requests use it; on anything else
//! (another code, no answer) it is dropped and the old key stays until the next interval.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use switchyard_audit::{AuditLog, RecordKind};
use switchyard_hsm::module::{KeyImport, KeyUsage, WrappedKey};
use switchyard_hsm::{from_hex, to_hex, Algorithm};
use switchyard_iso8583::{MessageBuilder, MessageView};
use switchyard_mux::IssuerRequestHandler;

use crate::flow::IssuerPort;
use crate::security::Security;

/// A link's key exchange settings.
#[derive(Debug, Clone)]
pub struct KeyExchangeSettings {
    /// The ZMK the new keys come under.
    pub zmk: String,
    /// Field 70 of a ZPK exchange.
    pub zpk_code: String,
    /// Field 70 of a ZAK exchange.
    pub zak_code: String,
    /// The field carrying the key.
    pub key_field: u8,
    /// Send the issuer new keys this often (none: only take the issuer's).
    pub interval: Option<std::time::Duration>,
}

/// The handler of the issuers' key exchange requests.
#[derive(Debug)]
pub struct KeyExchange {
    security: Arc<Security>,
    audit: Arc<AuditLog>,
}

impl KeyExchange {
    /// Key exchange through `security`'s module, audited to `audit`.
    pub fn new(security: Arc<Security>, audit: Arc<AuditLog>) -> KeyExchange {
        KeyExchange { security, audit }
    }
}

/// A key as the key field delivers it.
enum Delivered {
    /// A TR-31 key block (it carries its own MAC).
    Tr31(String),
    /// X9.17 under the ZMK, and the check value it must have.
    X917 { key: Vec<u8>, kcv: Vec<u8> },
}

/// The key in the key field's text.
fn parse_key_field(text: &str) -> Result<Delivered, &'static str> {
    let text = text.trim();
    let length = text
        .get(1..5)
        .filter(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if text.starts_with(['B', 'D']) && length.is_some() {
        return Ok(Delivered::Tr31(text.to_string()));
    }
    if !matches!(text.len(), 38 | 54) {
        return Err("expected a TR-31 block, or 32 or 48 hex digits of key and 6 of check value");
    }
    // Checked: the field's text comes from the issuer and need not be ASCII.
    let (key, kcv) = text
        .split_at_checked(text.len() - 6)
        .ok_or("the key field is not hex")?;
    Ok(Delivered::X917 {
        key: from_hex(key).map_err(|_| "the key is not hex")?,
        kcv: from_hex(kcv).map_err(|_| "the check value is not hex")?,
    })
}

impl IssuerRequestHandler for KeyExchange {
    fn network_request(
        &self,
        link: &Arc<str>,
        request: &MessageView<'static>,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = Option<Bytes>> + Send>>> {
        let keys = self.security.links.get(&**link)?;
        let settings = keys.key_exchange.clone()?;
        let code = request.field(70)?.text();
        let (usage, id) = if code == settings.zpk_code {
            (KeyUsage::Zpk, keys.zpk.clone()?)
        } else if code == settings.zak_code {
            (KeyUsage::Zak, keys.zak.clone()?)
        } else {
            return None;
        };
        let (security, audit, link, request) = (
            self.security.clone(),
            self.audit.clone(),
            link.clone(),
            request.clone(),
        );
        Some(Box::pin(async move {
            let field = request
                .field(settings.key_field)
                .map(|f| f.text())
                .unwrap_or_default();
            let started = Instant::now();
            let imported = match parse_key_field(&field) {
                Err(why) => Err(("30", why.to_string())),
                Ok(Delivered::Tr31(block)) => {
                    let wrapped = WrappedKey::Tr31(&block);
                    import(&security, &id, usage, &settings.zmk, wrapped, None).await
                }
                Ok(Delivered::X917 { key, kcv }) => {
                    let wrapped = WrappedKey::X917 {
                        key: &key,
                        algorithm: Algorithm::Tdes,
                    };
                    import(&security, &id, usage, &settings.zmk, wrapped, Some(&kcv)).await
                }
            };
            security.operation("import_key", imported.is_ok(), started.elapsed());
            let code = match &imported {
                Ok(_) => "00",
                Err((code, _)) => *code,
            };
            let result = imported.map_err(|(_, reason)| reason);
            audit_exchange(&audit, "issuer", &link, &id, usage, &result).await;
            let mut builder = MessageBuilder::new(request.spec(), request.mti());
            builder.respond_to(&request, code.as_bytes()).ok()?;
            // The 0810 names the exchange it answers.
            builder.copy_from(&request, 70).ok()?;
            Some(builder.encode())
        }))
    }
}

/// Log and audit one exchange: the key's id and its new check value, or why not.
async fn audit_exchange(
    audit: &AuditLog,
    initiator: &str,
    link: &str,
    id: &str,
    usage: KeyUsage,
    result: &Result<String, String>,
) {
    match result {
        Ok(kcv) => {
            tracing::info!(link, key = id, kcv = %kcv, initiator, "key exchange: new key in use")
        }
        Err(reason) => {
            tracing::warn!(link, key = id, %reason, initiator, "key exchange not done: the old key stays")
        }
    }
    let event = serde_json::json!({
        "event": "key-exchange",
        "initiator": initiator,
        "link": link,
        "key": id,
        "usage": usage.name(),
        "kcv": result.as_ref().ok(),
        "result": if result.is_ok() { "ok" } else { "refused" },
        "reason": result.as_ref().err(),
        "at_us": crate::flow::now_us(),
    });
    if let Err(e) = audit.append_record(RecordKind::Event, &event).await {
        tracing::error!(error = %e, "key exchange not audited");
    }
}

/// Import the new key: its check value, or the response code and why not.
async fn import(
    security: &Security,
    id: &str,
    usage: KeyUsage,
    zmk: &str,
    wrapped: WrappedKey<'_>,
    kcv: Option<&[u8]>,
) -> Result<String, (&'static str, String)> {
    security
        .module
        .import_key(KeyImport {
            id,
            usage,
            zmk,
            wrapped,
            kcv,
        })
        .await
        .map(|info| to_hex(&info.kcv))
        .map_err(|e| ("63", e.to_string()))
}

/// Switch-initiated key exchange on `link` every `settings.interval`, until `shutdown`.
pub async fn schedule<P: IssuerPort>(
    security: Arc<Security>,
    audit: Arc<AuditLog>,
    link_name: String,
    link: Arc<P>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let Some(keys) = security.links.get(&link_name).cloned() else {
        return;
    };
    let Some(settings) = keys.key_exchange.clone() else {
        return;
    };
    let Some(interval) = settings.interval else {
        return;
    };
    let mut stan = 900_000u32;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let exchanges = [(
            keys.zpk.as_deref(),
            KeyUsage::Zpk,
            settings.zpk_code.as_str(),
        )];
        for (id, usage, code) in exchanges {
            let Some(id) = id else { continue };
            stan = stan % 99_999 + 900_001;
            let result = send_key(&security, &*link, &settings, id, usage, code, stan).await;
            audit_exchange(&audit, "switch", &link_name, id, usage, &result).await;
        }
    }
}

/// One exchange: a new key staged, sent, and put in use once the issuer answers 00. Its
/// check value, or why not.
async fn send_key<P: IssuerPort>(
    security: &Security,
    link: &P,
    settings: &KeyExchangeSettings,
    id: &str,
    usage: KeyUsage,
    code: &str,
    stan: u32,
) -> Result<String, String> {
    let staged = format!("{id}.next");
    let started = Instant::now();
    let generated = security
        .module
        .generate_key(&staged, usage, &settings.zmk)
        .await;
    security.operation("generate_key", generated.is_ok(), started.elapsed());
    let (info, wrapped) = generated.map_err(|e| e.to_string())?;
    let spec = link.spec();
    let mti = switchyard_iso8583::Mti::parse("0800").ok_or("MTI")?;
    let mut builder = MessageBuilder::new(spec, mti);
    let now = u64::try_from(crate::flow::now_us() / 1_000_000).unwrap_or(0);
    let civil = switchyard_iso8583::datetime::Civil::from_unix(i64::try_from(now).unwrap_or(0));
    let encode = |e: switchyard_iso8583::Error| e.to_string();
    builder.set(7, civil.mmddhhmmss()).map_err(encode)?;
    builder.set(11, format!("{stan:06}")).map_err(encode)?;
    builder
        .set(
            settings.key_field,
            format!("{}{}", to_hex(&wrapped), to_hex(&info.kcv)),
        )
        .map_err(encode)?;
    builder.set(70, code).map_err(encode)?;
    let request = MessageView::decode(spec, builder.encode()).map_err(encode)?;
    let answer = link
        .forward(&request)
        .await
        .result
        .map_err(|e| e.to_string())?;
    if answer.field(39).map(|f| f.text()).as_deref() != Some("00") {
        return Err(format!(
            "the issuer answered {}",
            answer
                .field(39)
                .map(|f| f.text())
                .unwrap_or_else(|| "without field 39".into())
        ));
    }
    let started = Instant::now();
    let promoted = security.module.promote_key(&staged, id).await;
    security.operation("promote_key", promoted.is_ok(), started.elapsed());
    promoted
        .map(|info| to_hex(&info.kcv))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_field_is_read_without_trusting_it() {
        let x917 = format!("{}{}", "0123456789ABCDEF".repeat(2), "08D7B4");
        assert!(matches!(parse_key_field(&x917), Ok(Delivered::X917 { .. })));
        assert!(matches!(
            parse_key_field("B0080P0TE00E0000AB"),
            Ok(Delivered::Tr31(_))
        ));
        // 38 bytes, a multibyte character across the key / check value boundary.
        let bad = format!("{}é{}", "A".repeat(31), "12345");
        assert_eq!(bad.len(), 38);
        assert!(parse_key_field(&bad).is_err());
        assert!(parse_key_field("too short").is_err());
    }
}
