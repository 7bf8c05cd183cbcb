//! The merchant and terminal registry, and the abnormal-activity rules.
//!
//! A TOML file (named by the configuration, reloaded on SIGHUP) lists merchants (id = field
//! 42, name, MCC, country, allowed transaction types and currencies, an optional
//! per-transaction amount limit, active or suspended) and terminals (id = field 41, their
//! merchant, optionally the SHA-256 fingerprint of the TLS client certificate bound to
//! them), and the rules.
//!
//! Checked for every request from a terminal: unknown or suspended terminal: 58; unknown or
//! suspended merchant, or a field 42 that is not the terminal's merchant: 03; field 18 (MCC)
//! that is not the merchant's registered MCC: 03, counted as an MCC mismatch (stops
//! merchant-category "code jumping"); a transaction type or currency the merchant may not
//! take: 12; a client certificate bound to another terminal (or none where one is bound):
//! refused with 58.
//!
//! Rules run in memory with bounded state: per-terminal and per-card (by PAN hash) velocity
//! over a sliding window (count and amount), bursts of declines per terminal, amounts above
//! the merchant's limit. Each rule flags (the audit record names it; a metric counts it) or
//! blocks (answer with the rule's response code).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use switchyard_iso8583::MessageView;

use crate::error::RouterError;

fn default_active() -> String {
    "active".into()
}

/// A merchant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Merchant {
    /// Field 42.
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// Registered merchant category code.
    pub mcc: String,
    #[serde(default)]
    pub country: Option<String>,
    /// Allowed transaction types: leading digits of field 3 (empty: all).
    #[serde(default)]
    pub transaction_types: Vec<String>,
    /// Allowed currencies, field 49 (empty: all).
    #[serde(default)]
    pub currencies: Vec<String>,
    /// `active` or `suspended`.
    #[serde(default = "default_active")]
    pub state: String,
    /// Largest amount of one transaction (minor units), for the `merchant-amount-limit` rule.
    #[serde(default)]
    pub max_amount: Option<u64>,
}

/// A terminal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalEntry {
    /// Field 41.
    pub id: String,
    /// Its merchant's id.
    pub merchant: String,
    /// SHA-256 of the DER client certificate it must present, hex.
    #[serde(default)]
    pub certificate_sha256: Option<String>,
    /// `active` or `suspended`.
    #[serde(default = "default_active")]
    pub state: String,
    /// The id of its terminal PIN key in the security module (PIN blocks under a fixed key).
    #[serde(default)]
    pub tpk: Option<String>,
    /// The id of its terminal MAC key.
    #[serde(default)]
    pub tak: Option<String>,
    /// The id of the DUKPT base derivation key its PIN pad was injected from (PIN blocks and
    /// MACs under DUKPT keys; the KSN comes with each request).
    #[serde(default)]
    pub bdk: Option<String>,
    /// The ISO 9564-1 format of its PIN blocks: 0, 1, 3 or 4.
    #[serde(default)]
    pub pin_format: u8,
    /// Its MAC algorithm: `x9.19` (default), `iso9797-1` or `aes-cmac`.
    #[serde(default)]
    pub mac_algorithm: Option<String>,
}

/// What a rule does when it fires.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    /// The sliding window, seconds.
    #[serde(default = "RuleSettings::default_window")]
    pub window_s: u64,
    /// Most requests in the window (velocity) or declines (burst).
    pub max_count: Option<u32>,
    /// Largest total amount in the window (velocity).
    pub max_amount: Option<u64>,
    /// `flag` or `block`.
    #[serde(default = "RuleSettings::default_action")]
    pub action: String,
    /// Response code of a block (61 amount, 65 count, 05 do not honour...).
    #[serde(default = "RuleSettings::default_code")]
    pub response_code: String,
}

impl RuleSettings {
    fn default_window() -> u64 {
        60
    }
    fn default_action() -> String {
        "flag".into()
    }
    fn default_code() -> String {
        "05".into()
    }
}

/// The rules.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    pub terminal_velocity: Option<RuleSettings>,
    pub card_velocity: Option<RuleSettings>,
    pub decline_burst: Option<RuleSettings>,
    pub merchant_amount_limit: Option<RuleSettings>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    merchants: Vec<Merchant>,
    #[serde(default)]
    terminals: Vec<TerminalEntry>,
    #[serde(default)]
    rules: Rules,
}

/// Why the registry refused a request (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnknownTerminal,
    SuspendedTerminal,
    UnknownMerchant,
    SuspendedMerchant,
    MerchantMismatch,
    MccMismatch,
    TransactionType,
    Currency,
    Certificate,
}

impl Refusal {
    /// Every refusal.
    pub const ALL: [Refusal; 9] = [
        Refusal::UnknownTerminal,
        Refusal::SuspendedTerminal,
        Refusal::UnknownMerchant,
        Refusal::SuspendedMerchant,
        Refusal::MerchantMismatch,
        Refusal::MccMismatch,
        Refusal::TransactionType,
        Refusal::Currency,
        Refusal::Certificate,
    ];

    /// Label value.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::UnknownTerminal => "unknown_terminal",
            Refusal::SuspendedTerminal => "suspended_terminal",
            Refusal::UnknownMerchant => "unknown_merchant",
            Refusal::SuspendedMerchant => "suspended_merchant",
            Refusal::MerchantMismatch => "merchant_mismatch",
            Refusal::MccMismatch => "mcc_mismatch",
            Refusal::TransactionType => "transaction_type",
            Refusal::Currency => "currency",
            Refusal::Certificate => "certificate",
        }
    }

    /// The response code.
    pub fn response_code(self) -> &'static [u8] {
        match self {
            Refusal::UnknownTerminal | Refusal::SuspendedTerminal | Refusal::Certificate => b"58",
            Refusal::UnknownMerchant
            | Refusal::SuspendedMerchant
            | Refusal::MerchantMismatch
            | Refusal::MccMismatch => b"03",
            Refusal::TransactionType | Refusal::Currency => b"12",
        }
    }
}

/// A loaded registry.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    merchants: HashMap<String, Merchant>,
    terminals: HashMap<String, TerminalEntry>,
    /// Fingerprint to terminal id.
    certificates: HashMap<String, String>,
    /// The rules.
    pub rules: Rules,
}

fn trimmed(s: &str) -> String {
    s.trim_end().to_string()
}

impl Registry {
    /// Parse and check a registry; every problem is listed.
    pub fn parse(origin: &str, text: &str) -> Result<Registry, RouterError> {
        let file: RegistryFile = toml::from_str(text).map_err(|e| {
            RouterError::Registry(vec![format!("{origin}: {}", e.to_string().trim_end())])
        })?;
        let mut problems = Vec::new();
        let mut registry = Registry {
            rules: file.rules,
            ..Registry::default()
        };
        registry.add_merchants(file.merchants, &mut problems);
        registry.add_terminals(file.terminals, &mut problems);
        registry.check_rules(&mut problems);
        if problems.is_empty() {
            Ok(registry)
        } else {
            Err(RouterError::Registry(
                problems
                    .into_iter()
                    .map(|p| format!("{origin}: {p}"))
                    .collect(),
            ))
        }
    }

    /// Index the merchants, noting bad states, MCCs and repeats.
    fn add_merchants(&mut self, merchants: Vec<Merchant>, problems: &mut Vec<String>) {
        let registry = self;
        for m in merchants {
            if !matches!(m.state.as_str(), "active" | "suspended") {
                problems.push(format!(
                    "merchant {:?}: state {:?} is not active or suspended",
                    m.id, m.state
                ));
            }
            if m.mcc.len() != 4 || !m.mcc.bytes().all(|b| b.is_ascii_digit()) {
                problems.push(format!(
                    "merchant {:?}: mcc {:?} is not 4 digits",
                    m.id, m.mcc
                ));
            }
            if registry
                .merchants
                .insert(trimmed(&m.id), m.clone())
                .is_some()
            {
                problems.push(format!("merchant {:?}: listed twice", m.id));
            }
        }
    }

    /// Index the terminals and their certificates, noting unknown merchants, bad states,
    /// fingerprints and repeats.
    fn add_terminals(&mut self, terminals: Vec<TerminalEntry>, problems: &mut Vec<String>) {
        let registry = self;
        for t in terminals {
            if !registry.merchants.contains_key(&trimmed(&t.merchant)) {
                problems.push(format!(
                    "terminal {:?}: merchant {:?} is not listed",
                    t.id, t.merchant
                ));
            }
            if !matches!(t.state.as_str(), "active" | "suspended") {
                problems.push(format!(
                    "terminal {:?}: state {:?} is not active or suspended",
                    t.id, t.state
                ));
            }
            if switchyard_hsm::pin::Format::from_code(t.pin_format).is_none() {
                problems.push(format!(
                    "terminal {:?}: pin_format {} is not 0, 1, 3 or 4",
                    t.id, t.pin_format
                ));
            }
            if t.tpk.is_some() && t.bdk.is_some() {
                problems.push(format!(
                    "terminal {:?}: tpk and bdk both given (its PIN blocks are under one or the other)",
                    t.id
                ));
            }
            if let Some(name) = &t.mac_algorithm {
                if switchyard_hsm::module::MacAlgorithm::from_name(name).is_none() {
                    problems.push(format!(
                        "terminal {:?}: mac_algorithm {name:?} is not x9.19, iso9797-1 or aes-cmac",
                        t.id
                    ));
                }
            }
            if let Some(fp) = &t.certificate_sha256 {
                let fp = fp.to_ascii_lowercase().replace(':', "");
                if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
                    problems.push(format!(
                        "terminal {:?}: certificate_sha256 is not 64 hex digits",
                        t.id
                    ));
                }
                registry.certificates.insert(fp, trimmed(&t.id));
            }
            if registry
                .terminals
                .insert(trimmed(&t.id), t.clone())
                .is_some()
            {
                problems.push(format!("terminal {:?}: listed twice", t.id));
            }
        }
    }

    /// Note rules whose action, window or response code is unusable.
    fn check_rules(&self, problems: &mut Vec<String>) {
        let rules = &self.rules;
        for (name, rule) in [
            ("terminal_velocity", &rules.terminal_velocity),
            ("card_velocity", &rules.card_velocity),
            ("decline_burst", &rules.decline_burst),
            ("merchant_amount_limit", &rules.merchant_amount_limit),
        ] {
            if let Some(r) = rule {
                if r.action != "flag" && r.action != "block" {
                    problems.push(format!(
                        "rules.{name}.action: {:?} is not flag or block",
                        r.action
                    ));
                }
                if r.window_s == 0 {
                    problems.push(format!("rules.{name}.window_s: must be at least 1"));
                }
                if r.response_code.len() != 2 {
                    problems.push(format!("rules.{name}.response_code: two characters"));
                }
            }
        }
    }

    /// Every key id the terminals name (TPKs, TAKs, BDKs), each once.
    pub fn key_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .terminals
            .values()
            .flat_map(|t| t.tpk.iter().chain(&t.tak).chain(&t.bdk).cloned())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The terminal of this id (field 41, trailing spaces ignored).
    pub fn terminal(&self, id: &str) -> Option<&TerminalEntry> {
        self.terminals.get(id.trim_end())
    }

    /// Read a registry file.
    pub fn load(path: &std::path::Path) -> Result<Registry, RouterError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RouterError::Registry(vec![format!("{}: {e}", path.display())]))?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// The merchant of a terminal.
    pub fn merchant_of(&self, terminal: &str) -> Option<&Merchant> {
        self.terminals
            .get(terminal)
            .and_then(|t| self.merchants.get(&trimmed(&t.merchant)))
    }

    /// Check a request against the registry; `certificate` is the SHA-256 of the client
    /// certificate the connection presented.
    pub fn check(
        &self,
        request: &MessageView<'_>,
        certificate: Option<&str>,
    ) -> Result<(), Refusal> {
        let text = |n| request.field(n).map(|f| f.text());
        let Some(tid) = text(41).map(|t| trimmed(&t)) else {
            return Err(Refusal::UnknownTerminal);
        };
        if let Some(fp) = certificate {
            if self.certificates.get(fp).is_some_and(|bound| *bound != tid) {
                return Err(Refusal::Certificate);
            }
        }
        let terminal = self.terminals.get(&tid).ok_or(Refusal::UnknownTerminal)?;
        if terminal.state != "active" {
            return Err(Refusal::SuspendedTerminal);
        }
        if let Some(bound) = &terminal.certificate_sha256 {
            if certificate != Some(bound.to_ascii_lowercase().replace(':', "").as_str()) {
                return Err(Refusal::Certificate);
            }
        }
        let merchant = self
            .merchants
            .get(&trimmed(&terminal.merchant))
            .ok_or(Refusal::UnknownMerchant)?;
        if merchant.state != "active" {
            return Err(Refusal::SuspendedMerchant);
        }
        if text(42).is_some_and(|m| trimmed(&m) != trimmed(&merchant.id)) {
            return Err(Refusal::MerchantMismatch);
        }
        if text(18).is_some_and(|mcc| mcc != merchant.mcc) {
            return Err(Refusal::MccMismatch);
        }
        if !merchant.transaction_types.is_empty() {
            let pc = text(3).unwrap_or_default();
            if !merchant
                .transaction_types
                .iter()
                .any(|t| pc.starts_with(t.as_str()))
            {
                return Err(Refusal::TransactionType);
            }
        }
        if !merchant.currencies.is_empty()
            && text(49).is_some_and(|c| !merchant.currencies.contains(&c))
        {
            return Err(Refusal::Currency);
        }
        Ok(())
    }
}

/// What the rules decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleVerdict {
    /// Rules that fired (flagged or blocked), by name.
    pub hits: Vec<(&'static str, bool)>,
    /// The response code of the first blocking rule.
    pub block: Option<String>,
}

/// Most terminals and cards tracked; past that the oldest go first.
const MAX_TRACKED: usize = 100_000;

#[derive(Default)]
struct Window {
    events: VecDeque<(Instant, u64)>,
}

impl Window {
    fn add(&mut self, now: Instant, span: Duration, amount: u64, cap: usize) -> (u32, u64) {
        while self
            .events
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > span)
        {
            self.events.pop_front();
        }
        self.events.push_back((now, amount));
        while self.events.len() > cap {
            self.events.pop_front();
        }
        (
            self.events.len() as u32,
            self.events.iter().map(|(_, a)| a).sum(),
        )
    }

    fn count(&mut self, now: Instant, span: Duration) -> u32 {
        while self
            .events
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > span)
        {
            self.events.pop_front();
        }
        self.events.len() as u32
    }
}

/// The rules' memory.
#[derive(Default)]
pub struct RuleState {
    terminals: Mutex<HashMap<String, Window>>,
    cards: Mutex<HashMap<String, Window>>,
    declines: Mutex<HashMap<String, Window>>,
}

impl std::fmt::Debug for RuleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RuleState")
    }
}

fn bounded(map: &mut HashMap<String, Window>, now: Instant, span: Duration) {
    if map.len() >= MAX_TRACKED {
        map.retain(|_, w| {
            w.events
                .back()
                .is_some_and(|(t, _)| now.duration_since(*t) <= span)
        });
        if map.len() >= MAX_TRACKED {
            map.clear();
        }
    }
}

/// Velocity counts the group keeps (count and amount in the window, this request
/// included), used in place of this instance's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCounts {
    /// The terminal's.
    pub terminal: Option<(u32, u64)>,
    /// The card's.
    pub card: Option<(u32, u64)>,
}

impl RuleState {
    /// Run the rules for a request from `terminal` with `amount`, card hash `card`.
    pub fn evaluate(
        &self,
        rules: &Rules,
        merchant: Option<&Merchant>,
        terminal: &str,
        card: Option<&str>,
        amount: u64,
    ) -> RuleVerdict {
        self.evaluate_with(
            rules,
            merchant,
            terminal,
            card,
            amount,
            GroupCounts::default(),
        )
    }

    /// [`evaluate`](Self::evaluate), the velocity rules on the group's counts where given.
    pub fn evaluate_with(
        &self,
        rules: &Rules,
        merchant: Option<&Merchant>,
        terminal: &str,
        card: Option<&str>,
        amount: u64,
        group: GroupCounts,
    ) -> RuleVerdict {
        let now = Instant::now();
        let mut verdict = RuleVerdict::default();
        let mut fire = |name: &'static str, rule: &RuleSettings| {
            let block = rule.action == "block";
            verdict.hits.push((name, block));
            if block && verdict.block.is_none() {
                verdict.block = Some(rule.response_code.clone());
            }
        };
        let over = |rule: &RuleSettings, (count, total): (u32, u64)| {
            rule.max_count.is_some_and(|m| count > m) || rule.max_amount.is_some_and(|m| total > m)
        };
        if let Some(rule) = &rules.terminal_velocity {
            let span = Duration::from_secs(rule.window_s);
            let mut map = self.terminals.lock().unwrap_or_else(|p| p.into_inner());
            bounded(&mut map, now, span);
            let cap = rule.max_count.map_or(10_000, |m| m as usize + 1);
            let ours = map
                .entry(terminal.to_string())
                .or_default()
                .add(now, span, amount, cap);
            if over(rule, group.terminal.unwrap_or(ours)) {
                fire("terminal-velocity", rule);
            }
        }
        if let (Some(rule), Some(card)) = (&rules.card_velocity, card) {
            let span = Duration::from_secs(rule.window_s);
            let mut map = self.cards.lock().unwrap_or_else(|p| p.into_inner());
            bounded(&mut map, now, span);
            let cap = rule.max_count.map_or(10_000, |m| m as usize + 1);
            let ours = map
                .entry(card.to_string())
                .or_default()
                .add(now, span, amount, cap);
            if over(rule, group.card.unwrap_or(ours)) {
                fire("card-velocity", rule);
            }
        }
        if let Some(rule) = &rules.decline_burst {
            let span = Duration::from_secs(rule.window_s);
            let mut map = self.declines.lock().unwrap_or_else(|p| p.into_inner());
            let declines = map.get_mut(terminal).map_or(0, |w| w.count(now, span));
            if rule.max_count.is_some_and(|m| declines >= m) {
                fire("decline-burst", rule);
            }
        }
        if let (Some(rule), Some(limit)) = (
            &rules.merchant_amount_limit,
            merchant.and_then(|m| m.max_amount),
        ) {
            if amount > limit {
                fire("merchant-amount-limit", rule);
            }
        }
        verdict
    }

    /// Note a decline for the decline-burst rule.
    pub fn declined(&self, rules: &Rules, terminal: &str) {
        if let Some(rule) = &rules.decline_burst {
            let (now, span) = (Instant::now(), Duration::from_secs(rule.window_s));
            let mut map = self.declines.lock().unwrap_or_else(|p| p.into_inner());
            bounded(&mut map, now, span);
            let cap = rule.max_count.map_or(1_000, |m| m as usize + 1);
            map.entry(terminal.to_string())
                .or_default()
                .add(now, span, 0, cap);
        }
    }
}
