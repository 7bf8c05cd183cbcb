//! The security module of a configuration, and the card security the router gets from it.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use switchyard_hsm::module::{MacAlgorithm, SecurityModule};
use switchyard_hsm::pin::Format;
use switchyard_hsm::software::{MasterKey, SoftwareModule};
use switchyard_payshield::{PayShield, PayShieldConfig};
use switchyard_router::key_exchange::KeyExchangeSettings;
use switchyard_router::{LinkSecurity, Registry, Security};

use crate::config::{LinkSection, SecuritySection};

/// Said at every start with the software module.
pub const SOFTWARE_WARNING: &str = "the software security module is not a PCI PIN certified device: keys are in this process's memory; for tests, labs and small pilots only";

/// The software module of `[security]`: its store opened under its master key.
pub fn open_software(sec: &SecuritySection) -> anyhow::Result<SoftwareModule> {
    let store = sec
        .key_store
        .as_deref()
        .ok_or_else(|| anyhow!("security.key_store is not set"))?;
    let master = match (&sec.master_key_file, &sec.master_key_env) {
        (Some(file), None) => MasterKey::from_file(file)?,
        (None, Some(env)) => MasterKey::from_env(env)?,
        _ => return Err(anyhow!("security: give master_key_file or master_key_env")),
    };
    Ok(SoftwareModule::open(store, master)?)
}

/// The payShield client of `[security.payshield]`.
pub fn open_payshield(
    sec: &SecuritySection,
    metrics: &prometheus::Registry,
) -> anyhow::Result<PayShield> {
    let p = sec
        .payshield
        .as_ref()
        .ok_or_else(|| anyhow!("security.payshield is not set"))?;
    Ok(PayShield::new(
        PayShieldConfig {
            endpoint: p.endpoint.clone(),
            header_len: p.header_len,
            connections: p.connections,
            timeout: std::time::Duration::from_millis(p.timeout_ms),
            key_table: p.key_table.clone(),
        },
        metrics,
    )?)
}

/// Card security for the router: the module, each link's keys, checked to be in the
/// module (and every key the registry's terminals name), so that a missing key stops the
/// start rather than refusing transactions later.
pub async fn build(
    sec: &SecuritySection,
    links: &[LinkSection],
    registry: Option<&Registry>,
    metrics: &prometheus::Registry,
) -> anyhow::Result<Security> {
    let module: Arc<dyn SecurityModule> = match sec.module.as_str() {
        "payshield" => {
            let hsm = open_payshield(sec, metrics)?;
            let diagnostics = hsm
                .diagnostics()
                .await
                .context("the payShield does not answer NC")?;
            tracing::info!(lmk_check = %diagnostics.get(..16).unwrap_or(""), "payShield answers");
            Arc::new(hsm)
        }
        _ => {
            tracing::warn!("{SOFTWARE_WARNING}");
            Arc::new(open_software(sec)?)
        }
    };
    let mut link_keys = HashMap::new();
    let mut named: Vec<String> = Vec::new();
    for link in links {
        let Some(ls) = &link.security else { continue };
        named.extend(ls.zpk.iter().chain(&ls.zak).cloned());
        named.extend(ls.key_exchange.iter().map(|k| k.zmk.clone()));
        link_keys.insert(
            link.name.clone(),
            LinkSecurity {
                zpk: ls.zpk.clone(),
                pin_format: Format::from_code(ls.pin_format).unwrap_or(Format::Iso0),
                zak: ls.zak.clone(),
                mac_algorithm: ls
                    .mac_algorithm
                    .as_deref()
                    .and_then(MacAlgorithm::from_name)
                    .unwrap_or(MacAlgorithm::Iso9797Alg3),
                key_exchange: ls.key_exchange.as_ref().map(|k| KeyExchangeSettings {
                    zmk: k.zmk.clone(),
                    zpk_code: k.zpk_code.clone(),
                    zak_code: k.zak_code.clone(),
                    key_field: k.key_field,
                    interval: k.interval_s.map(std::time::Duration::from_secs),
                }),
            },
        );
    }
    if let Some(registry) = registry {
        named.extend(registry.key_ids());
    }
    let mut missing = Vec::new();
    for id in &named {
        if module.key_info(id).await.is_err() {
            missing.push(id.clone());
        }
    }
    if !missing.is_empty() {
        missing.sort();
        missing.dedup();
        return Err(anyhow!(
            "keys named in the configuration or registry are not in the security module: {} (load them with `switchyard keys import`)",
            missing.join(", ")
        ));
    }
    let code = sec.response_code.as_bytes();
    let response_code = [
        code.first().copied().unwrap_or(b'6'),
        code.get(1).copied().unwrap_or(b'3'),
    ];
    Security::new(module, sec.ksn_field, response_code, link_keys, metrics)
        .context("security metrics")
}
