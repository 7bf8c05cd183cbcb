//! Card security as the flow uses it: which security module, which keys each issuer link
//! has (its ZPK, ZAK and PIN block format), where a terminal's DUKPT key serial number
//! arrives, and what a security failure is answered. A terminal's own keys are in the
//! registry ([`crate::registry::TerminalEntry`]).
//!
//! The MAC input is [`switchyard_iso8583::mac_input`]'s. A link with a ZAK keeps the
//! terminals' STANs (the MAC covers field 11; the configuration refuses `remap_stan` there).

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use switchyard_hsm::module::{MacAlgorithm, MacKey, SecurityModule};
use switchyard_hsm::pin::Format;
use switchyard_iso8583::MessageView;

use crate::error::RouterError;

/// An issuer link's keys.
#[derive(Debug, Clone)]
pub struct LinkSecurity {
    /// The zone PIN key PIN blocks are translated to.
    pub zpk: Option<String>,
    /// The PIN block format the issuer takes.
    pub pin_format: Format,
    /// The zone MAC key: when set, every request gets a MAC and every answer must carry one.
    pub zak: Option<String>,
    /// The MAC algorithm of the link.
    pub mac_algorithm: MacAlgorithm,
    /// Issuer-initiated key exchange (0800), when the link does it.
    pub key_exchange: Option<crate::key_exchange::KeyExchangeSettings>,
}

/// Reasons of security failures, as metric labels (never a terminal, card or key id).
pub const REASONS: [&str; 8] = [
    "no-security-module",
    "no-terminal-key",
    "no-link-key",
    "no-ksn",
    "no-pan",
    "bad-mac",
    "pin-translation",
    "module",
];

/// The switch's card security.
pub struct Security {
    /// The module that holds the keys.
    pub module: Arc<dyn SecurityModule>,
    /// The field a terminal's DUKPT key serial number arrives in (hex text).
    pub ksn_field: u8,
    /// The response code of a security failure (63 by default).
    pub response_code: [u8; 2],
    /// Each link's keys, by link name.
    pub links: HashMap<String, LinkSecurity>,
    pub(crate) errors: IntCounterVec,
    operations: IntCounterVec,
    latency: HistogramVec,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("module", &self.module.kind())
            .field("ksn_field", &self.ksn_field)
            .field("links", &self.links)
            .finish_non_exhaustive()
    }
}

impl Security {
    /// Card security through `module`, its metrics registered in `registry`.
    pub fn new(
        module: Arc<dyn SecurityModule>,
        ksn_field: u8,
        response_code: [u8; 2],
        links: HashMap<String, LinkSecurity>,
        registry: &Registry,
    ) -> Result<Security, RouterError> {
        let errors = IntCounterVec::new(
            Opts::new(
                "switchyard_security_errors_total",
                "Requests and answers refused by card security, by reason",
            ),
            &["reason"],
        )?;
        let operations = IntCounterVec::new(
            Opts::new(
                "switchyard_security_operations_total",
                "Security module operations, by operation and result",
            ),
            &["operation", "result"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_security_module_seconds",
                "Time of security module operations as the flow sees it",
            )
            .buckets(crate::metrics::LATENCY_BUCKETS.to_vec()),
            &["operation"],
        )?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(operations.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        for reason in REASONS {
            errors.with_label_values(&[reason]);
        }
        Ok(Security {
            module,
            ksn_field,
            response_code,
            links,
            errors,
            operations,
            latency,
        })
    }

    pub(crate) fn refused(&self, reason: &'static str) {
        self.errors.with_label_values(&[reason]).inc();
    }

    pub(crate) fn operation(&self, operation: &str, ok: bool, elapsed: std::time::Duration) {
        let result = if ok { "ok" } else { "error" };
        self.operations
            .with_label_values(&[operation, result])
            .inc();
        self.latency
            .with_label_values(&[operation])
            .observe(elapsed.as_secs_f64());
    }
}

impl Security {
    /// `message` as it goes on `link`: with the link's MAC (under its ZAK) when it takes
    /// one. For the messages the switch makes itself (store-and-forward reversals).
    pub async fn seal(
        &self,
        link: &str,
        message: MessageView<'static>,
    ) -> Result<MessageView<'static>, String> {
        let Some((zak, algorithm)) = self
            .links
            .get(link)
            .and_then(|l| l.zak.as_deref().map(|z| (z, l.mac_algorithm)))
        else {
            return Ok(message);
        };
        let builder = crate::stages::security::rebuilt(&message, |n| matches!(n, 64 | 128))?;
        crate::stages::security::with_mac(self, builder, MacKey::Key(zak), algorithm).await
    }

    /// Whether the issuer's answer on `link` carries its MAC, when the link takes MACs.
    pub async fn check_answer(
        &self,
        link: &str,
        response: &MessageView<'static>,
    ) -> Result<(), &'static str> {
        match self
            .links
            .get(link)
            .and_then(|l| l.zak.as_deref().map(|z| (z, l.mac_algorithm)))
        {
            None => Ok(()),
            Some((zak, algorithm)) => {
                crate::stages::security::verify_issuer_mac(self, zak, algorithm, response).await
            }
        }
    }
}
