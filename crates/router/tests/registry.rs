//! Registry checks, abnormal-activity rules, stand-in processing and terminal reversals,
//! driven in memory (no sockets) with a real audit log and journal in temporary directories.

#![allow(clippy::unwrap_used)] // Test helpers: a failed unwrap is a failed test.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_audit::{
    query, AuditConfig, AuditKeys, AuditLog, Filter, OnDamage, Outcome, PairRecord,
};
use switchyard_iso8583::{shipped, MessageBuilder, MessageView, Mti, Spec};
use switchyard_mux::{BeforeSend, Forwarded, MuxError};
use switchyard_router::{
    Integrity, IssuerPort, Registry, RouteRule, RouteTable, Router, SafConfig, SafQueue, StandIn,
};

mod support;

fn spec() -> &'static Spec {
    shipped("iso8583-1987-ascii").unwrap()
}

/// Approves everything with STAN 100000 + n; `down` makes it refuse as a down link.
#[derive(Default)]
struct Issuer {
    seen: Mutex<Vec<MessageView<'static>>>,
    down: AtomicBool,
}

impl IssuerPort for Issuer {
    fn spec(&self) -> &'static Spec {
        spec()
    }

    async fn forward(&self, request: &MessageView<'static>) -> Forwarded {
        if self.down.load(Ordering::SeqCst) {
            return Forwarded {
                issuer_stan: None,
                result: Err(MuxError::LinkDown {
                    link: "issuer".into(),
                }),
            };
        }
        let mut seen = self.seen.lock().unwrap();
        seen.push(request.clone());
        let mut b = MessageBuilder::new(spec(), request.mti());
        b.respond_to(request, b"00").unwrap();
        let result = Ok(MessageView::decode(spec(), b.encode()).unwrap());
        Forwarded {
            issuer_stan: Some(100_000 + seen.len() as u32),
            result,
        }
    }

    async fn forward_with(
        &self,
        request: &MessageView<'static>,
        before_send: impl BeforeSend,
    ) -> Forwarded {
        let next = 100_001 + self.seen.lock().unwrap().len() as u32;
        if !before_send.before_send(Some(next)).await {
            return Forwarded {
                issuer_stan: None,
                result: Err(MuxError::NotSent {
                    link: "issuer".into(),
                }),
            };
        }
        self.forward(request).await
    }
}

struct Fixture {
    router: Arc<Router<Issuer>>,
    dir: tempfile::TempDir,
    registry: prometheus::Registry,
}

const REGISTRY: &str = r#"
[[merchants]]
id = "MERCHANT0000001"
name = "Corner shop"
mcc = "5411"
currencies = ["978"]
transaction_types = ["00", "20"]
max_amount = 50000

[[merchants]]
id = "MERCHANT0000002"
mcc = "5812"
state = "suspended"

[[terminals]]
id = "TERM0001"
merchant = "MERCHANT0000001"

[[terminals]]
id = "TERM0002"
merchant = "MERCHANT0000002"

[[terminals]]
id = "TERM0003"
merchant = "MERCHANT0000001"
state = "suspended"

[[terminals]]
id = "TERMCERT"
merchant = "MERCHANT0000001"
certificate_sha256 = "aa00000000000000000000000000000000000000000000000000000000000000"

[rules]
terminal_velocity = { window_s = 60, max_count = 3, action = "block", response_code = "65" }
card_velocity = { window_s = 60, max_amount = 10000, action = "flag" }
merchant_amount_limit = { action = "block", response_code = "61" }
"#;

fn fixture(stand_in: Option<StandIn>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(AuditKeys::demo());
    let (log, _) =
        AuditLog::open(AuditConfig::new(dir.path().join("audit")), keys.clone()).unwrap();
    let (journal, _) =
        AuditLog::open(AuditConfig::new(dir.path().join("saf")), keys.clone()).unwrap();
    let saf = Arc::new(SafQueue::new(
        Arc::new(journal),
        BTreeMap::new(),
        SafConfig::default(),
    ));
    let routes = RouteTable::new(
        &[RouteRule {
            name: "visa".into(),
            bins: vec!["4".into()],
            link: "issuer".into(),
            stand_in,
            ..RouteRule::default()
        }],
        None,
    )
    .unwrap();
    let links = HashMap::from([("issuer".to_string(), Arc::new(Issuer::default()))]);
    let registry = prometheus::Registry::new();
    let router = Router::new(routes, links, Arc::new(log), keys, true, &registry)
        .unwrap()
        .with_integrity(Arc::new(Integrity::new(saf, Duration::from_secs(600))));
    router.replace_registry(Some(Registry::parse("test", REGISTRY).unwrap()));
    Fixture {
        router: Arc::new(router),
        dir,
        registry,
    }
}

#[allow(clippy::too_many_arguments)]
fn request(
    mti: &str,
    tid: &str,
    mid: Option<&str>,
    mcc: Option<&str>,
    pc: &str,
    amount: u64,
    stan: u32,
    pan: &str,
) -> MessageView<'static> {
    let mut b = MessageBuilder::new(spec(), Mti::parse(mti).unwrap());
    b.set(2, pan)
        .unwrap()
        .set(3, pc)
        .unwrap()
        .set_u64(4, amount)
        .unwrap();
    b.set(7, "1124093000")
        .unwrap()
        .set_u64(11, u64::from(stan))
        .unwrap();
    if let Some(mcc) = mcc {
        b.set(18, mcc).unwrap();
    }
    b.set(41, tid).unwrap();
    if let Some(mid) = mid {
        b.set(42, mid).unwrap();
    }
    b.set(49, "978").unwrap();
    MessageView::decode(spec(), b.encode()).unwrap()
}

fn simple(tid: &str, amount: u64, stan: u32) -> MessageView<'static> {
    request(
        "0200",
        tid,
        Some("MERCHANT0000001"),
        Some("5411"),
        "000000",
        amount,
        stan,
        "4000056655665556",
    )
}

async fn code(f: &Fixture, req: MessageView<'static>) -> String {
    let answer = f.router.handle("terminals", req).await.unwrap();
    MessageView::decode(spec(), answer)
        .unwrap()
        .str(39)
        .unwrap()
        .to_string()
}

fn pairs(f: &Fixture) -> Vec<PairRecord> {
    let mut all = Vec::new();
    let keys = AuditKeys::demo();
    let (dir, filter) = (f.dir.path().join("audit"), Filter::default());
    query(&dir, keys.chain(), OnDamage::Stop, &filter, |_, r| {
        all.push(r)
    })
    .unwrap();
    all
}

fn counter(f: &Fixture, name: &str, label: (&str, &str)) -> f64 {
    support::common::counter(&f.registry, name, &[label])
}

#[tokio::test]
async fn the_registry_refuses_with_the_documented_codes_and_audits_why() {
    let f = fixture(None);
    let cases = [
        (simple("TERM0001", 100, 1), "00"),
        (simple("TERM9999", 100, 2), "58"), // unknown terminal
        (simple("TERM0003", 100, 3), "58"), // suspended terminal
        (
            request(
                "0200",
                "TERM0002",
                Some("MERCHANT0000002"),
                Some("5812"),
                "000000",
                1,
                4,
                "4000056655665556",
            ),
            "03",
        ), // suspended merchant
        (
            request(
                "0200",
                "TERM0001",
                Some("MERCHANT0000009"),
                Some("5411"),
                "000000",
                1,
                5,
                "4000056655665556",
            ),
            "03",
        ), // not its merchant
        (
            request(
                "0200",
                "TERM0001",
                Some("MERCHANT0000001"),
                Some("7995"),
                "000000",
                1,
                6,
                "4000056655665556",
            ),
            "03",
        ), // MCC jumping
        (
            request(
                "0200",
                "TERM0001",
                Some("MERCHANT0000001"),
                Some("5411"),
                "010000",
                1,
                7,
                "4000056655665556",
            ),
            "12",
        ), // cash not allowed
        (simple("TERMCERT", 100, 8), "58"), // bound certificate missing
    ];
    for (req, expected) in cases {
        assert_eq!(code(&f, req).await, expected);
    }
    let recorded = pairs(&f);
    assert_eq!(recorded.len(), 8);
    assert_eq!(recorded[5].outcome, Some(Outcome::Refused));
    assert_eq!(recorded[5].rules, ["registry:mcc_mismatch"]);
    assert_eq!(
        counter(
            &f,
            "switchyard_registry_refusals_total",
            ("reason", "mcc_mismatch")
        ),
        1.0
    );
    assert_eq!(
        f.router.links()["issuer"].seen.lock().unwrap().len(),
        1,
        "only the good one was forwarded"
    );

    // A certificate bound to another terminal is refused; the bound one is accepted.
    let bound = "aa00000000000000000000000000000000000000000000000000000000000000".to_string();
    let answer = f
        .router
        .handle_from("t", simple("TERM0001", 100, 9), Some(bound.clone()))
        .await
        .unwrap();
    assert_eq!(
        MessageView::decode(spec(), answer).unwrap().str(39),
        Some("58")
    );
    let answer = f
        .router
        .handle_from("t", simple("TERMCERT", 100, 10), Some(bound))
        .await
        .unwrap();
    assert_eq!(
        MessageView::decode(spec(), answer).unwrap().str(39),
        Some("00")
    );
}

#[tokio::test]
async fn velocity_and_amount_rules_flag_and_block() {
    let f = fixture(None);
    // Card velocity (flag) over 10000 in the window; terminal velocity (block, 65) past 3.
    assert_eq!(code(&f, simple("TERM0001", 6000, 1)).await, "00");
    assert_eq!(
        code(&f, simple("TERM0001", 6000, 2)).await,
        "00",
        "flagged, not blocked"
    );
    assert_eq!(code(&f, simple("TERM0001", 100, 3)).await, "00");
    assert_eq!(
        code(&f, simple("TERM0001", 100, 4)).await,
        "65",
        "fourth in the window: blocked"
    );
    assert_eq!(code(&f, simple("TERMCERT", 60000, 5)).await, "58");
    let recorded = pairs(&f);
    assert!(
        recorded[1].rules.contains(&"card-velocity".to_string()),
        "{:?}",
        recorded[1].rules
    );
    assert_eq!(recorded[3].outcome, Some(Outcome::Blocked));
    assert!(recorded[3].rules.contains(&"terminal-velocity".to_string()));
    assert_eq!(
        counter(
            &f,
            "switchyard_rule_hits_total",
            ("rule", "terminal-velocity")
        ),
        1.0
    );
    assert!(counter(&f, "switchyard_rule_hits_total", ("action", "flag")) >= 2.0);

    let g = fixture(None);
    assert_eq!(
        code(&g, simple("TERM0001", 60_000, 1)).await,
        "61",
        "above the merchant's limit"
    );
}

#[tokio::test]
async fn stand_in_approves_small_amounts_while_the_issuer_is_down_and_queues_an_advice() {
    let f = fixture(Some(StandIn {
        floor_limit: 2000,
        mccs: vec!["5411".into()],
        processing_codes: vec!["00".into()],
    }));
    f.router.links()["issuer"]
        .down
        .store(true, Ordering::SeqCst);
    let answer = f
        .router
        .handle("t", simple("TERM0001", 1500, 1))
        .await
        .unwrap();
    let answer = MessageView::decode(spec(), answer).unwrap();
    assert_eq!(answer.str(39), Some("00"));
    assert!(
        answer.str(38).unwrap().starts_with('S'),
        "the switch's own authorisation id"
    );
    assert_eq!(
        code(&f, simple("TERM0001", 2500, 2)).await,
        "91",
        "above the floor limit"
    );
    let entries = f.router.integrity().unwrap().saf.list();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].first_mti.as_deref(), Some("0220"));
    assert_eq!(entries[0].basis.fields.get(38), answer.str(38));
    assert_eq!(pairs(&f)[0].outcome, Some(Outcome::StandInApproved));
}

#[tokio::test]
async fn a_terminal_reversal_goes_to_the_original_issuer_quoting_its_stan() {
    let f = fixture(None);
    assert_eq!(code(&f, simple("TERM0001", 700, 42)).await, "00");
    // The terminal reverses it: field 90 quotes its own STAN 000042.
    let mut b = MessageBuilder::new(spec(), Mti::parse("0400").unwrap());
    b.set(2, "4000056655665556")
        .unwrap()
        .set(3, "000000")
        .unwrap()
        .set(4, "000000000700")
        .unwrap();
    b.set(7, "1124093100")
        .unwrap()
        .set(11, "000043")
        .unwrap()
        .set(41, "TERM0001")
        .unwrap();
    b.set(42, "MERCHANT0000001")
        .unwrap()
        .set(49, "978")
        .unwrap();
    b.set(90, "020000004211240930000000000000000000000000")
        .unwrap();
    let reversal = MessageView::decode(spec(), b.encode()).unwrap();
    assert_eq!(code(&f, reversal).await, "00");
    let seen = f.router.links()["issuer"].seen.lock().unwrap();
    let sent = &seen[1];
    assert_eq!(sent.mti().as_str(), "0400");
    assert_eq!(
        &sent.str(90).unwrap()[..10],
        "0200100001",
        "the STAN the issuer saw"
    );
    assert_eq!(pairs(&f)[1].route.as_deref(), Some("original"));
}
