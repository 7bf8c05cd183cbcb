//! Card security: the terminal's MAC verified and its PIN block translated to the issuer
//! link's zone PIN key before the request goes ([`SecureRequest`]); the issuer's MAC on its
//! answer verified ([`IssuerMac`]: a bad one on an approval leaves the outcome unknown, so
//! it is reversed); the answer to the terminal re-MACed with the terminal's key
//! ([`TerminalMac`]). A request the switch cannot secure (its terminal's key unknown, the
//! KSN missing, a MAC that does not verify, the module failing) is answered with the
//! security response code (63), audited as `security-error`, counted by reason, and never
//! forwarded. Keys stay in the security module; the flow names them.

use std::time::Instant;

use switchyard_audit::Outcome;
use switchyard_hsm::module::{MacAlgorithm, MacDirection, MacKey, PinSource, PinTranslation};
use switchyard_hsm::pin::Format;
use switchyard_iso8583::mac_input::{mac_field_for, mac_field_of, mac_input};
use switchyard_iso8583::{MessageBuilder, MessageView};
use switchyard_mux::MuxError;

use super::{Stage, Switch};
use crate::flow::IssuerPort;
use crate::registry::TerminalEntry;
use crate::security::Security;
use crate::transaction::{Step, Transaction};

/// The request's PIN block and MAC, before forwarding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SecureRequest;

/// The issuer's MAC on its answer, after forwarding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IssuerMac;

/// The terminal's MAC on its answer, before the record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TerminalMac;

fn refuse<P: IssuerPort>(
    security: &Security,
    tx: &mut Transaction<'_, P>,
    reason: &'static str,
    detail: &dyn std::fmt::Display,
) -> Step {
    security.refused(reason);
    tracing::warn!(reason, detail = %detail, "request refused by card security");
    let code = security.response_code;
    tx.answer_code(&code, Outcome::SecurityError)
}

fn terminal_of<'a, P>(tx: &Transaction<'a, P>) -> Option<&'a TerminalEntry> {
    let registry = tx.registry?;
    registry.terminal(tx.pair.terminal.as_deref()?)
}

fn mac_algorithm_of(entry: Option<&TerminalEntry>) -> MacAlgorithm {
    entry
        .and_then(|t| t.mac_algorithm.as_deref())
        .and_then(MacAlgorithm::from_name)
        .unwrap_or(MacAlgorithm::Iso9797Alg3)
}

/// The terminal's DUKPT key serial number (hex text in the KSN field), when it uses DUKPT.
fn ksn_of(view: &MessageView<'_>, field: u8) -> Option<Vec<u8>> {
    let text = view.field(field)?.text();
    switchyard_hsm::from_hex(text.trim()).ok()
}

fn terminal_mac_key<'k>(
    entry: Option<&'k TerminalEntry>,
    ksn: Option<&'k [u8]>,
    direction: MacDirection,
) -> Result<MacKey<'k>, &'static str> {
    let entry = entry.ok_or("no-terminal-key")?;
    if let Some(tak) = &entry.tak {
        return Ok(MacKey::Key(tak));
    }
    let bdk = entry.bdk.as_deref().ok_or("no-terminal-key")?;
    let ksn = ksn.ok_or("no-ksn")?;
    Ok(MacKey::Dukpt {
        bdk,
        ksn,
        direction,
    })
}

/// `builder`'s message with a MAC under `key` in its MAC field.
pub(crate) async fn with_mac(
    security: &Security,
    mut builder: MessageBuilder<'static>,
    key: MacKey<'_>,
    algorithm: MacAlgorithm,
) -> Result<MessageView<'static>, String> {
    let spec = builder.spec();
    let field = mac_field_for(&builder);
    builder.set(field, [0u8; 8]).map_err(|e| e.to_string())?;
    let draft = MessageView::decode(spec, builder.encode()).map_err(|e| e.to_string())?;
    let data = mac_input(&draft, field).ok_or("no MAC field in the draft")?;
    let started = Instant::now();
    let mac = security.module.generate_mac(key, algorithm, data).await;
    security.operation("generate_mac", mac.is_ok(), started.elapsed());
    builder
        .set(field, mac.map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    MessageView::decode(spec, builder.encode()).map_err(|e| e.to_string())
}

/// A builder holding `view`'s fields except those `skip` names.
pub(crate) fn rebuilt(
    view: &MessageView<'static>,
    skip: impl Fn(u8) -> bool,
) -> Result<MessageBuilder<'static>, String> {
    let mut builder = MessageBuilder::new(view.spec(), view.mti());
    for field in view.fields().filter(|f| !skip(f.number)) {
        builder
            .set(field.number, field.value())
            .map_err(|e| e.to_string())?;
    }
    Ok(builder)
}

impl<P: IssuerPort> Stage<P> for SecureRequest {
    async fn run<'a>(&self, switch: &'a Switch<P>, tx: &mut Transaction<'a, P>) -> Step {
        let Some(route) = tx.route else {
            return tx.missing("card security", "a route");
        };
        let link = switch
            .security
            .as_deref()
            .and_then(|s| s.links.get(route.link_name));
        let has_pin = tx.request().has(52);
        let mac_field = mac_field_of(&tx.received);
        let link_macs = link.is_some_and(|l| l.zak.is_some());
        if !has_pin && matches!(mac_field, Ok(None)) && !link_macs {
            return Step::Continue(());
        }
        let Some(security) = switch.security.as_deref() else {
            tracing::warn!("a PIN block or MAC, and no security module configured: refused");
            return tx.answer_code(b"63", Outcome::SecurityError);
        };
        let mac_field = match mac_field {
            Ok(field) => field,
            Err(why) => return refuse(security, tx, "bad-mac", &why),
        };
        let entry = terminal_of(tx);
        let received = tx.received.clone();
        let ksn = ksn_of(&received, security.ksn_field);
        let uses_dukpt = entry.is_some_and(|t| t.bdk.is_some());
        if uses_dukpt && (has_pin || mac_field.is_some()) && ksn.is_none() {
            return refuse(
                security,
                tx,
                "no-ksn",
                &format_args!("no KSN in field {}", security.ksn_field),
            );
        }
        if let Some(field) = mac_field {
            let verified = verify_terminal_mac(security, entry, &received, field, ksn.as_deref());
            if let Err((reason, detail)) = verified.await {
                return refuse(security, tx, reason, &detail);
            }
        }
        let pin_block = if has_pin {
            match translate_pin(security, link, entry, tx.request(), ksn.as_deref()).await {
                Ok(block) => Some(block),
                Err((reason, detail)) => return refuse(security, tx, reason, &detail),
            }
        } else {
            None
        };
        let Some(outbound) = tx.outbound.as_ref() else {
            return tx.missing("card security", "an outbound message");
        };
        let skip_ksn = uses_dukpt.then_some(security.ksn_field);
        match secured_outbound(security, link, outbound, pin_block.as_deref(), skip_ksn).await {
            Ok(view) => {
                tx.outbound = Some(view);
                Step::Continue(())
            }
            Err((reason, detail)) => refuse(security, tx, reason, &detail),
        }
    }
}

/// Whether the terminal's MAC in `field` verifies, or why not (reason label, detail).
async fn verify_terminal_mac(
    security: &Security,
    entry: Option<&TerminalEntry>,
    received: &MessageView<'static>,
    field: u8,
    ksn: Option<&[u8]>,
) -> Result<(), (&'static str, String)> {
    let key = terminal_mac_key(entry, ksn, MacDirection::Request)
        .map_err(|reason| (reason, "the terminal's MAC key".to_string()))?;
    let mac = received.field(field).map(|f| f.value().into_owned());
    let (Some(data), Some(mac)) = (mac_input(received, field), mac) else {
        return Err(("bad-mac", "no MAC input".to_string()));
    };
    let started = Instant::now();
    let verified = security
        .module
        .verify_mac(key, mac_algorithm_of(entry), data, &mac)
        .await;
    security.operation("verify_mac", verified.is_ok(), started.elapsed());
    match verified {
        Ok(true) => Ok(()),
        Ok(false) => Err(("bad-mac", "the terminal's MAC does not verify".to_string())),
        Err(e) => Err(("module", e.to_string())),
    }
}

/// The outbound message as it goes: the translated PIN block, no terminal MAC (nor KSN,
/// `skip_ksn`), the link's MAC when it takes one.
async fn secured_outbound(
    security: &Security,
    link: Option<&crate::security::LinkSecurity>,
    outbound: &MessageView<'static>,
    pin_block: Option<&[u8]>,
    skip_ksn: Option<u8>,
) -> Result<MessageView<'static>, (&'static str, String)> {
    let module = |e: String| ("module", e);
    let mut builder = rebuilt(outbound, |n| {
        matches!(n, 52 | 64 | 128) || Some(n) == skip_ksn
    })
    .map_err(module)?;
    if let Some(block) = pin_block {
        builder
            .set(52, block)
            .map_err(|e| ("pin-translation", e.to_string()))?;
    }
    match link.and_then(|l| l.zak.as_deref().map(|zak| (zak, l.mac_algorithm))) {
        Some((zak, algorithm)) => with_mac(security, builder, MacKey::Key(zak), algorithm)
            .await
            .map_err(module),
        None => {
            MessageView::decode(builder.spec(), builder.encode()).map_err(|e| module(e.to_string()))
        }
    }
}

/// The request's PIN block under the link's ZPK, or why not (reason label, detail).
async fn translate_pin(
    security: &Security,
    link: Option<&crate::security::LinkSecurity>,
    entry: Option<&TerminalEntry>,
    request: &MessageView<'static>,
    ksn: Option<&[u8]>,
) -> Result<Vec<u8>, (&'static str, String)> {
    let link = link.ok_or((
        "no-link-key",
        "no security settings for the link".to_string(),
    ))?;
    let zpk = link
        .zpk
        .as_deref()
        .ok_or(("no-link-key", "the link has no ZPK".to_string()))?;
    let entry = entry.ok_or((
        "no-terminal-key",
        "the terminal is not in the registry".to_string(),
    ))?;
    let from = match (&entry.tpk, &entry.bdk, ksn) {
        (Some(tpk), _, _) => PinSource::Key(tpk),
        (None, Some(bdk), Some(ksn)) => PinSource::Dukpt { bdk, ksn },
        (None, Some(_), None) => return Err(("no-ksn", "no KSN".to_string())),
        (None, None, _) => {
            return Err((
                "no-terminal-key",
                "the terminal has no TPK or BDK".to_string(),
            ))
        }
    };
    let pan = request.field(2).map(|f| f.value().into_owned());
    let pan = pan.ok_or(("no-pan", "no PAN in field 2".to_string()))?;
    let block = request
        .field(52)
        .map(|f| f.value().into_owned())
        .unwrap_or_default();
    let started = Instant::now();
    let translated = security
        .module
        .translate_pin(PinTranslation {
            block: &block,
            pan: &pan,
            from,
            from_format: Format::from_code(entry.pin_format).unwrap_or(Format::Iso0),
            to: zpk,
            to_format: link.pin_format,
        })
        .await;
    security.operation("translate_pin", translated.is_ok(), started.elapsed());
    translated.map_err(|e| ("pin-translation", e.to_string()))
}

impl<P: IssuerPort> Stage<P> for IssuerMac {
    async fn run<'a>(&self, switch: &'a Switch<P>, tx: &mut Transaction<'a, P>) -> Step {
        let (Some(route), Some(security)) = (tx.route, switch.security.as_deref()) else {
            return Step::Continue(());
        };
        let Some(link) = security.links.get(route.link_name) else {
            return Step::Continue(());
        };
        let (Some(zak), Some(forwarded)) = (link.zak.as_deref(), tx.forwarded.as_mut()) else {
            return Step::Continue(());
        };
        let Ok(response) = &forwarded.result else {
            return Step::Continue(());
        };
        let refused = match verify_issuer_mac(security, zak, link.mac_algorithm, response).await {
            Ok(()) => return Step::Continue(()),
            Err(reason) => reason,
        };
        security.refused("bad-mac");
        tracing::warn!(
            link = route.link_name,
            reason = refused,
            "issuer answer refused: outcome unknown"
        );
        forwarded.result = Err(MuxError::ResponseRefused {
            link: route.link_name.into(),
            reason: refused,
        });
        Step::Continue(())
    }
}

/// Whether the issuer's MAC on `response` verifies under the link's ZAK. (A link with a
/// ZAK does not remap STANs, so the response is as the issuer sent it.)
pub(crate) async fn verify_issuer_mac(
    security: &Security,
    zak: &str,
    algorithm: MacAlgorithm,
    response: &MessageView<'static>,
) -> Result<(), &'static str> {
    let field = match mac_field_of(response) {
        Ok(Some(field)) => field,
        Ok(None) => return Err("the answer carries no MAC"),
        Err(why) => return Err(why),
    };
    let mac = response
        .field(field)
        .map(|f| f.value().into_owned())
        .unwrap_or_default();
    let data = mac_input(response, field).ok_or("no MAC input")?;
    let started = Instant::now();
    let verified = security
        .module
        .verify_mac(MacKey::Key(zak), algorithm, data, &mac)
        .await;
    security.operation("verify_mac", verified.is_ok(), started.elapsed());
    match verified {
        Ok(true) => Ok(()),
        Ok(false) => Err("the issuer's MAC does not verify"),
        Err(_) => Err("the security module could not verify the issuer's MAC"),
    }
}

impl<P: IssuerPort> Stage<P> for TerminalMac {
    async fn run<'a>(&self, switch: &'a Switch<P>, tx: &mut Transaction<'a, P>) -> Step {
        let Some(security) = switch.security.as_deref() else {
            return Step::Continue(());
        };
        let Some(answer) = tx.answer.as_ref() else {
            return Step::Continue(());
        };
        let Some(response) = answer.response.as_ref() else {
            return Step::Continue(());
        };
        let terminal_macs = matches!(mac_field_of(&tx.received), Ok(Some(_)));
        let carries_mac = !matches!(mac_field_of(response), Ok(None));
        if !terminal_macs && !carries_mac {
            return Step::Continue(());
        }
        // The issuer's MAC is under the zone key: never passed to the terminal.
        let builder = match rebuilt(response, |n| matches!(n, 64 | 128)) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "answer could not be rebuilt without its MAC");
                return Step::Continue(());
            }
        };
        let entry = terminal_of(tx);
        let ksn = ksn_of(&tx.received, security.ksn_field);
        let secured = match (terminal_macs && answer.outcome != Outcome::SecurityError)
            .then(|| terminal_mac_key(entry, ksn.as_deref(), MacDirection::Response))
        {
            Some(Ok(key)) => with_mac(security, builder, key, mac_algorithm_of(entry)).await,
            _ => MessageView::decode(builder.spec(), builder.encode()).map_err(|e| e.to_string()),
        };
        match secured {
            Ok(view) => {
                if let Some(answer) = tx.answer.as_mut() {
                    answer.response = Some(view);
                }
            }
            Err(e) => {
                security.refused("module");
                tracing::error!(error = %e, "the answer to the terminal could not be MACed");
            }
        }
        Step::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use switchyard_hsm::mac::{iso9797_alg3, Padding};
    use switchyard_hsm::module::KeyUsage;
    use switchyard_hsm::pin::{self as pinblock, NoFill};
    use switchyard_hsm::software::SoftwareModule;
    use switchyard_hsm::{from_hex, Key, TdesKey};
    use switchyard_iso8583::Mti;

    use super::*;
    use crate::security::LinkSecurity;
    use crate::stages::testing::{request, spec, Fixture, Options};
    use crate::stages::{Forwarding, Reversals};

    const TPK: &str = "0123456789ABCDEFFEDCBA9876543210";
    const TAK: &str = "FEDCBA98765432100123456789ABCDEF";
    const ZPK: &str = "89ABCDEF0123456776543210FEDCBA98";
    const ZAK: &str = "1032547698BADCFEEFCDAB8967452301";
    const PAN: &str = "4761730000000119";
    const REGISTRY: &str = r#"
        [[merchants]]
        id = "MERCHANT0000001"
        name = "Shop"
        mcc = "5411"
        [[terminals]]
        id = "TERM0001"
        merchant = "MERCHANT0000001"
        tpk = "tpk.TERM0001"
        tak = "tak.TERM0001"
    "#;

    fn key(hex: &str) -> Key {
        Key::Tdes(TdesKey::new(&from_hex(hex).unwrap()).unwrap())
    }

    fn fixture(zak: bool) -> Fixture {
        let module = SoftwareModule::in_memory();
        module.add("tpk.TERM0001", KeyUsage::Tpk, key(TPK)).unwrap();
        module.add("tak.TERM0001", KeyUsage::Tak, key(TAK)).unwrap();
        module.add("zpk.issuer", KeyUsage::Zpk, key(ZPK)).unwrap();
        module.add("zak.issuer", KeyUsage::Zak, key(ZAK)).unwrap();
        let links = HashMap::from([(
            "issuer".to_string(),
            LinkSecurity {
                zpk: Some("zpk.issuer".into()),
                pin_format: Format::Iso3,
                zak: zak.then(|| "zak.issuer".to_string()),
                mac_algorithm: MacAlgorithm::Iso9797Alg3,
                key_exchange: None,
            },
        )]);
        let registry = prometheus::Registry::new();
        let security = Security::new(Arc::new(module), 53, *b"63", links, &registry).unwrap();
        Fixture::with(Options {
            registry: Some(REGISTRY),
            security: Some(Arc::new(security)),
            ..Options::default()
        })
    }

    /// A 0200 with PIN `pin` under the TPK, MACed with `mac_key` (none: no MAC).
    fn pin_request(pin: &[u8], mac_key: Option<&str>) -> MessageView<'static> {
        let plain = request("0200", PAN, 1000, 7);
        let mut b = MessageBuilder::new(spec(), Mti::parse("0200").unwrap());
        for f in plain.fields() {
            b.set(f.number, f.value()).unwrap();
        }
        let block = pinblock::encrypt(
            Format::Iso0,
            &key(TPK),
            pin,
            Some(PAN.as_bytes()),
            &mut NoFill,
        )
        .unwrap();
        b.set(52, &block).unwrap();
        if let Some(mac_key) = mac_key {
            b.set(64, [0u8; 8]).unwrap();
            let draft = MessageView::decode(spec(), b.encode()).unwrap();
            let data = mac_input(&draft, 64).unwrap();
            let mac = iso9797_alg3(&from_hex(mac_key).unwrap(), data, Padding::Zeros).unwrap();
            b.set(64, mac).unwrap();
        }
        MessageView::decode(spec(), b.encode()).unwrap()
    }

    #[tokio::test]
    async fn a_pin_block_goes_out_under_the_zone_key_and_the_terminal_mac_is_checked() {
        let f = fixture(true);
        let mut tx = f.routed(pin_request(b"1234", Some(TAK)));
        assert!(SecureRequest.run(&f.switch, &mut tx).await.is_continue());
        let outbound = tx.outbound.clone().unwrap();
        let block = outbound.field(52).unwrap().value().into_owned();
        let pin = pinblock::decrypt(Format::Iso3, &key(ZPK), &block, Some(PAN.as_bytes())).unwrap();
        assert_eq!(&pin[..], b"1234");
        // The link's MAC, under the ZAK, over the outbound message.
        let mac = outbound.field(64).unwrap().value().into_owned();
        let expected = iso9797_alg3(
            &from_hex(ZAK).unwrap(),
            mac_input(&outbound, 64).unwrap(),
            Padding::Zeros,
        )
        .unwrap();
        assert_eq!(mac, expected);
    }

    /// An AES DUKPT PIN pad (X9.24-3 BDK of the test vectors; a 12-byte KSN in field 62)
    /// with format 0 blocks under its derived double-length TDES PIN keys.
    #[tokio::test]
    async fn aes_dukpt_pin_blocks_are_translated_with_the_ksn_they_came_with() {
        use switchyard_hsm::dukpt_aes::{working_key_for, KeyType, Usage};
        use switchyard_hsm::AesKey;
        let bdk = AesKey::new(&from_hex("FEDCBA9876543210F1F1F1F1F1F1F1F1").unwrap()).unwrap();
        let module = SoftwareModule::in_memory();
        module
            .add("bdk.aes", KeyUsage::Bdk, Key::Aes(bdk.clone()))
            .unwrap();
        module.add("zpk.issuer", KeyUsage::Zpk, key(ZPK)).unwrap();
        let links = HashMap::from([(
            "issuer".to_string(),
            LinkSecurity {
                zpk: Some("zpk.issuer".into()),
                pin_format: Format::Iso0,
                zak: None,
                mac_algorithm: MacAlgorithm::Iso9797Alg3,
                key_exchange: None,
            },
        )]);
        let security = Security::new(
            Arc::new(module),
            62,
            *b"63",
            links,
            &prometheus::Registry::new(),
        )
        .unwrap();
        let f = Fixture::with(Options {
            registry: Some(
                "[[merchants]]\nid = \"MERCHANT0000001\"\nmcc = \"5411\"\n\
                 [[terminals]]\nid = \"TERM0001\"\nmerchant = \"MERCHANT0000001\"\nbdk = \"bdk.aes\"\n",
            ),
            security: Some(Arc::new(security)),
            ..Options::default()
        });
        for counter in ["00000001", "00000002", "00000010"] {
            let ksn = format!("1234567890123456{counter}");
            let pin_key =
                working_key_for(&bdk, &from_hex(&ksn).unwrap(), Usage::Pin, KeyType::Tdes2)
                    .unwrap();
            let block = pinblock::encrypt(
                Format::Iso0,
                &pin_key,
                b"2468",
                Some(PAN.as_bytes()),
                &mut NoFill,
            )
            .unwrap();
            let plain = request("0200", PAN, 1000, 9);
            let mut b = MessageBuilder::new(spec(), plain.mti());
            for f in plain.fields() {
                b.set(f.number, f.value()).unwrap();
            }
            b.set(52, &block).unwrap().set(62, &ksn).unwrap();
            let mut tx = f.routed(MessageView::decode(spec(), b.encode()).unwrap());
            assert!(
                SecureRequest.run(&f.switch, &mut tx).await.is_continue(),
                "{counter}"
            );
            let outbound = tx.outbound.clone().unwrap();
            assert!(
                !outbound.has(62),
                "the terminal's KSN stays with the switch"
            );
            let block = outbound.field(52).unwrap().value().into_owned();
            let pin =
                pinblock::decrypt(Format::Iso0, &key(ZPK), &block, Some(PAN.as_bytes())).unwrap();
            assert_eq!(&pin[..], b"2468");
        }
    }

    #[tokio::test]
    async fn what_cannot_be_secured_is_answered_63_and_never_forwarded() {
        let f = fixture(false);
        // A MAC under another key.
        let mut tx = f.routed(pin_request(b"1234", Some(ZAK)));
        assert!(SecureRequest.run(&f.switch, &mut tx).await.is_break());
        let answer = tx.answer.as_ref().unwrap();
        assert_eq!(answer.outcome, Outcome::SecurityError);
        assert_eq!(answer.response.as_ref().unwrap().str(39), Some("63"));
        // An unknown terminal.
        let plain = pin_request(b"1234", None);
        let mut b = MessageBuilder::new(spec(), plain.mti());
        for field in plain.fields() {
            b.set(field.number, field.value()).unwrap();
        }
        b.set(41, "TERM0009").unwrap();
        let mut tx = f.routed(MessageView::decode(spec(), b.encode()).unwrap());
        assert!(SecureRequest.run(&f.switch, &mut tx).await.is_break());
        assert_eq!(f.issuer().seen.lock().unwrap().len(), 0);
        let counted = |reason| {
            let registry = &f.switch.security.as_ref().unwrap();
            registry.errors.with_label_values(&[reason]).get()
        };
        assert_eq!((counted("bad-mac"), counted("no-terminal-key")), (1, 1));
        // No security module at all: a PIN block is refused, not passed through.
        let bare = Fixture::new();
        let mut tx = bare.routed(pin_request(b"1234", None));
        assert!(SecureRequest.run(&bare.switch, &mut tx).await.is_break());
        assert_eq!(tx.answer.unwrap().outcome, Outcome::SecurityError);
    }

    #[tokio::test]
    async fn an_answer_without_the_issuer_mac_is_an_unknown_outcome_and_reversed() {
        let f = fixture(true);
        let mut tx = f.routed(pin_request(b"1234", None));
        assert!(SecureRequest.run(&f.switch, &mut tx).await.is_continue());
        assert!(Forwarding.run(&f.switch, &mut tx).await.is_continue());
        // The scripted issuer approves without a MAC.
        assert!(IssuerMac.run(&f.switch, &mut tx).await.is_continue());
        let refused = tx.forwarded.as_ref().unwrap().result.as_ref().unwrap_err();
        assert!(refused.outcome_unknown(), "{refused}");
        assert!(Reversals.run(&f.switch, &mut tx).await.is_continue());
        assert!(tx.pair.reversal_id.is_some(), "a reversal is queued");
    }
}
