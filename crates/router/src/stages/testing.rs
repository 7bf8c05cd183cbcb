//! What the stage tests share: a scripted issuer port, a switch over a real audit log and
//! store-and-forward journal in a temporary directory, and transactions made from test
//! requests. No sockets.

#![allow(clippy::unwrap_used)] // Test helpers: a failed unwrap is a failed test.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_audit::{AuditConfig, AuditKeys, AuditLog, RecordKind};
use switchyard_iso8583::{shipped, MessageBuilder, MessageView, Mti, Spec};

use super::Switch;
use crate::flow::IssuerPort;
use crate::integrity::Integrity;
use crate::metrics::RouterMetrics;
use crate::registry::{Registry, RuleState};
use crate::routes::{RouteRule, RouteTable, StandIn};
use crate::saf::{SafConfig, SafQueue};
use crate::transaction::{ChosenRoute, Transaction};

/// The terminals' dialect in these tests.
pub(crate) fn spec() -> &'static Spec {
    shipped("iso8583-1987-ascii").unwrap()
}

// The scripted issuer and counter reader the router's integration tests use too.
#[path = "../../tests/support/common.rs"]
mod common;
pub(crate) use common::Scripted;

/// How a fixture is made.
#[derive(Default)]
pub(crate) struct Options {
    /// The issuer's dialect (default: the terminals').
    pub issuer_spec: Option<&'static str>,
    /// Reversals, in-flight records and duplicate detection off.
    pub without_integrity: bool,
    /// The visa route's stand-in limits.
    pub stand_in: Option<StandIn>,
    /// A registry, as TOML.
    pub registry: Option<&'static str>,
    /// The audit log's fdatasync fails after this many succeed.
    pub audit_fails_after_syncs: Option<i64>,
    /// Pair records are not waited for.
    pub not_durable: bool,
    /// Card security.
    pub security: Option<Arc<crate::security::Security>>,
}

/// A switch for one stage test: the route `visa` (BINs starting with 4) to the link
/// `issuer`.
pub(crate) struct Fixture {
    /// Held so the directory lives as long as the fixture.
    _dir: tempfile::TempDir,
    pub switch: Switch<Scripted>,
    pub routes: RouteTable,
    pub registry: Option<Registry>,
    pub metrics: prometheus::Registry,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with(Options::default())
    }

    pub fn with(options: Options) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(AuditKeys::demo());
        let mut config = AuditConfig::new(dir.path().join("audit"));
        if let Some(syncs) = options.audit_fails_after_syncs {
            config.fault = Some(Arc::new(switchyard_audit::log::SyncFault(AtomicI64::new(
                syncs,
            ))));
        }
        let (audit, _) = AuditLog::open(config, keys.clone()).unwrap();
        let integrity = (!options.without_integrity).then(|| {
            let (journal, _) =
                AuditLog::open(AuditConfig::new(dir.path().join("saf")), keys.clone()).unwrap();
            let saf = SafQueue::new(Arc::new(journal), BTreeMap::new(), SafConfig::default());
            Arc::new(Integrity::new(Arc::new(saf), Duration::from_secs(600)))
        });
        let routes = RouteTable::new(
            &[RouteRule {
                name: "visa".into(),
                bins: vec!["4".into()],
                link: "issuer".into(),
                stand_in: options.stand_in,
                ..RouteRule::default()
            }],
            None,
        )
        .unwrap();
        let issuer = Scripted {
            spec: shipped(options.issuer_spec.unwrap_or("iso8583-1987-ascii")).unwrap(),
            seen: Mutex::new(Vec::new()),
        };
        let metrics = prometheus::Registry::new();
        let switch = Switch {
            links: HashMap::from([("issuer".to_string(), Arc::new(issuer))]),
            audit: Arc::new(audit),
            keys,
            durable: !options.not_durable,
            metrics: RouterMetrics::new(&metrics).unwrap(),
            integrity,
            rule_state: RuleState::default(),
            security: options.security.clone(),
            business_day: None,
            settlement_date: std::collections::HashSet::new(),
            batches: None,
            partial_amount: switchyard_audit::PartialAmount::Field4,
            shared: None,
        };
        Fixture {
            registry: options
                .registry
                .map(|text| Registry::parse("test", text).unwrap()),
            _dir: dir,
            switch,
            routes,
            metrics,
        }
    }

    /// A transaction for `request` on the listener `terminals`.
    pub fn transaction(&self, request: MessageView<'static>) -> Transaction<'_, Scripted> {
        Transaction::new(
            "terminals",
            None,
            request,
            &self.routes,
            self.registry.as_ref(),
            &self.switch.keys,
        )
    }

    /// A transaction for `request` already routed to the link `issuer` by the route `visa`,
    /// and translated (as the stages before forwarding leave it).
    pub fn routed(&self, request: MessageView<'static>) -> Transaction<'_, Scripted> {
        let mut tx = self.transaction(request);
        let (link_name, link) = self.switch.links.get_key_value("issuer").unwrap();
        tx.route = Some(ChosenRoute {
            name: "visa",
            link_name,
            link,
            stand_in: self.routes.route(tx.request()).and_then(|r| r.stand_in),
        });
        tx.outbound = Some(if tx.same_dialect() {
            tx.request().clone()
        } else {
            crate::flow::translate(tx.request(), link.spec()).unwrap()
        });
        tx
    }

    /// A transaction for `request` as the issuer link answered it: through the forwarding
    /// stage, not yet answered to the terminal.
    pub async fn forwarded(&self, request: MessageView<'static>) -> Transaction<'_, Scripted> {
        use super::Stage;
        let mut tx = self.routed(request);
        let step = super::forwarding::Forwarding
            .run(&self.switch, &mut tx)
            .await;
        assert!(step.is_continue());
        tx
    }

    /// The scripted issuer.
    pub fn issuer(&self) -> &Scripted {
        &self.switch.links["issuer"]
    }

    /// The integrity state.
    pub fn integrity(&self) -> &Integrity {
        self.switch.integrity.as_ref().unwrap()
    }

    /// Make the audit log fail (with [`Options::audit_fails_after_syncs`] at 0).
    pub async fn fail_audit(&self) {
        let failed = self
            .switch
            .audit
            .append(RecordKind::Pair, b"{}".to_vec())
            .await;
        assert!(failed.is_err() && self.switch.audit.is_failed());
    }

    /// The sum of a counter's series with these labels.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        common::counter(&self.metrics, name, labels)
    }
}

/// A request from terminal TERM0001 (merchant MERCHANT0000001), processing code 000000,
/// field 7 1124093000, currency 978.
pub(crate) fn request(mti: &str, pan: &str, amount: u64, stan: u32) -> MessageView<'static> {
    request_with(mti, pan, amount, stan, &[])
}

/// [`request`] with more fields (or other values).
pub(crate) fn request_with(
    mti: &str,
    pan: &str,
    amount: u64,
    stan: u32,
    extra: &[(u8, &str)],
) -> MessageView<'static> {
    let mut b = MessageBuilder::new(spec(), Mti::parse(mti).unwrap());
    b.set(2, pan).unwrap().set(3, "000000").unwrap();
    b.set_u64(4, amount).unwrap().set(7, "1124093000").unwrap();
    b.set_u64(11, u64::from(stan)).unwrap();
    b.set(41, "TERM0001").unwrap();
    b.set(42, "MERCHANT0000001")
        .unwrap()
        .set(49, "978")
        .unwrap();
    for (n, v) in extra {
        b.set(*n, *v).unwrap();
    }
    MessageView::decode(spec(), b.encode()).unwrap()
}

/// A group's shared state in memory (what `switchyard-cluster` keeps on JetStream), or
/// one that cannot be reached.
#[derive(Debug, Default)]
pub struct MemoryShared {
    pub down: bool,
    pub claims: Mutex<std::collections::HashMap<Vec<u8>, Option<crate::shared::SharedAnswer>>>,
    /// Each terminal's home instance.
    pub homes: Mutex<std::collections::HashMap<Vec<u8>, &'static str>>,
}

impl MemoryShared {
    /// Terminal TERM0001's home.
    pub fn home(&self) -> Option<&'static str> {
        self.homes
            .lock()
            .unwrap()
            .get(b"TERM0001".as_slice())
            .copied()
    }
}

/// One instance of a group whose shared state is a [`MemoryShared`].
#[derive(Debug)]
pub struct Member {
    pub group: std::sync::Arc<MemoryShared>,
    pub name: &'static str,
}

impl crate::shared::SharedState for Member {
    fn claim<'a>(&'a self, key: &'a [u8]) -> crate::shared::SharedFuture<'a, crate::shared::Claim> {
        self.group.claim(key)
    }

    fn settle<'a>(
        &'a self,
        key: &'a [u8],
        answer: Option<crate::shared::SharedAnswer>,
    ) -> crate::shared::SharedFuture<'a, ()> {
        self.group.settle(key, answer)
    }

    fn count<'a>(
        &'a self,
        key: &'a [u8],
        window_s: u64,
        amount: u64,
    ) -> crate::shared::SharedFuture<'a, (u32, u64)> {
        self.group.count(key, window_s, amount)
    }

    fn at_home(&self, terminal: &[u8]) -> bool {
        self.group.homes.lock().unwrap().get(terminal) == Some(&self.name)
    }

    fn come_home<'a>(&'a self, terminal: &'a [u8]) -> crate::shared::SharedFuture<'a, bool> {
        let before = self
            .group
            .homes
            .lock()
            .unwrap()
            .insert(terminal.to_vec(), self.name);
        Box::pin(std::future::ready(Ok(before != Some(self.name))))
    }
}

impl crate::shared::SharedState for MemoryShared {
    fn claim<'a>(&'a self, key: &'a [u8]) -> crate::shared::SharedFuture<'a, crate::shared::Claim> {
        use crate::shared::Claim;
        let result = match self.down {
            true => Err(crate::shared::Unreachable("down".into())),
            false => {
                let mut claims = self.claims.lock().unwrap();
                Ok(match claims.get(key) {
                    None => {
                        claims.insert(key.to_vec(), None);
                        Claim::Ours
                    }
                    Some(None) => Claim::InFlight,
                    Some(Some(a)) => Claim::Answered(a.clone()),
                })
            }
        };
        Box::pin(std::future::ready(result))
    }

    fn settle<'a>(
        &'a self,
        key: &'a [u8],
        answer: Option<crate::shared::SharedAnswer>,
    ) -> crate::shared::SharedFuture<'a, ()> {
        let mut claims = self.claims.lock().unwrap();
        match answer {
            Some(a) => {
                claims.insert(key.to_vec(), Some(a));
            }
            None => {
                claims.remove(key);
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn count<'a>(
        &'a self,
        _: &'a [u8],
        _: u64,
        _: u64,
    ) -> crate::shared::SharedFuture<'a, (u32, u64)> {
        Box::pin(std::future::ready(Err(crate::shared::Unreachable(
            "not kept".into(),
        ))))
    }
}

/// `f` joined to a group on `state`, its policy `when`.
pub(crate) fn shared(
    f: &mut Fixture,
    state: Arc<dyn crate::shared::SharedState>,
    when: crate::shared::WhenUnreachable,
) {
    let timeout = Duration::from_millis(100);
    f.switch.shared = Some(crate::shared::SharedConfig::new(state, timeout, when));
}
