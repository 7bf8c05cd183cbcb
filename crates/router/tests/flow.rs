//! The transaction flow driven in memory: a scripted issuer port, a real audit log in a
//! temporary directory, no sockets.

#![allow(clippy::unwrap_used)] // Test helpers: a failed unwrap is a failed test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use switchyard_audit::{
    query, AuditConfig, AuditKeys, AuditLog, Filter, OnDamage, Outcome, PairRecord,
};
use switchyard_iso8583::{shipped, MessageBuilder, MessageView, Mti, Spec};
use switchyard_router::{RouteRule, RouteTable, Router};

mod support;
use support::common::Scripted;

struct Fixture {
    router: Router<Scripted>,
    dir: tempfile::TempDir,
    registry: prometheus::Registry,
    keys: Arc<AuditKeys>,
}

fn fixture(issuer_spec: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(AuditKeys::demo());
    let (log, _) = AuditLog::open(AuditConfig::new(dir.path()), keys.clone()).unwrap();
    let routes = RouteTable::new(
        &[RouteRule {
            name: "visa".into(),
            bins: vec!["4".into()],
            link: "issuer".into(),
            ..RouteRule::default()
        }],
        None,
    )
    .unwrap();
    let issuer = Arc::new(Scripted {
        spec: shipped(issuer_spec).unwrap(),
        seen: Mutex::new(Vec::new()),
    });
    let links = HashMap::from([("issuer".to_string(), issuer)]);
    let registry = prometheus::Registry::new();
    let router = Router::new(routes, links, Arc::new(log), keys.clone(), true, &registry).unwrap();
    Fixture {
        router,
        dir,
        registry,
        keys,
    }
}

fn spec() -> &'static Spec {
    shipped("iso8583-1987-ascii").unwrap()
}

fn request(mti: &str, pan: &str, amount: u64, stan: u32) -> MessageView<'static> {
    let mut b = MessageBuilder::new(spec(), Mti::parse(mti).unwrap());
    b.set(2, pan)
        .unwrap()
        .set(3, "000000")
        .unwrap()
        .set_u64(4, amount)
        .unwrap();
    b.set(7, "1124093000")
        .unwrap()
        .set_u64(11, u64::from(stan))
        .unwrap();
    b.set(41, "TERM0001").unwrap().set(49, "978").unwrap();
    MessageView::decode(spec(), b.encode()).unwrap()
}

async fn answer(f: &Fixture, req: MessageView<'static>) -> Option<MessageView<'static>> {
    f.router
        .handle("terminals", req)
        .await
        .map(|b| MessageView::decode(spec(), b).unwrap())
}

fn records(f: &Fixture) -> Vec<PairRecord> {
    let mut all = Vec::new();
    query(
        f.dir.path(),
        f.keys.chain(),
        OnDamage::Stop,
        &Filter::default(),
        |_, r| all.push(r),
    )
    .unwrap();
    all
}

fn counter(f: &Fixture, name: &str, labels: &[(&str, &str)]) -> f64 {
    support::common::counter(&f.registry, name, labels)
}

#[tokio::test]
async fn every_policy_code_is_answered_and_audited_once() {
    let f = fixture("iso8583-1987-ascii");
    let cases: Vec<(MessageView<'static>, Option<&str>, Outcome)> = vec![
        (
            request("0200", "4000056655665556", 1000, 1),
            Some("00"),
            Outcome::Approved,
        ),
        (
            request("0200", "4000056655665556", 1001, 2),
            Some("05"),
            Outcome::Declined,
        ),
        (
            request("0200", "4000056655665556", 1, 3),
            Some("91"),
            Outcome::Timeout,
        ),
        (
            request("0200", "4000056655665556", 2, 4),
            Some("91"),
            Outcome::LinkDown,
        ),
        (
            request("0200", "4000056655665556", 3, 5),
            Some("91"),
            Outcome::LinkBusy,
        ),
        (
            request("0200", "4000056655665556", 4, 6),
            Some("91"),
            Outcome::ConnectionLost,
        ),
        (
            request("0200", "4000056655665556", 5, 7),
            Some("94"),
            Outcome::Duplicate,
        ),
        (
            request("0200", "6011000990139424", 1000, 8),
            Some("15"),
            Outcome::NoRoute,
        ),
        (
            request("0300", "4000056655665556", 1000, 9),
            Some("12"),
            Outcome::InvalidTransaction,
        ),
        (
            request("0800", "4000056655665556", 1000, 10),
            Some("00"),
            Outcome::SwitchAnswered,
        ),
        (
            request("0210", "4000056655665556", 1000, 11),
            None,
            Outcome::InvalidTransaction,
        ),
    ];
    for (req, code, outcome) in &cases {
        let stan = req.str(11).unwrap().to_string();
        let got = answer(&f, req.clone()).await;
        assert_eq!(got.as_ref().and_then(|a| a.str(39)), *code, "{outcome:?}");
        if let Some(a) = got {
            assert_eq!(a.str(11), Some(stan.as_str()), "answers echo the STAN");
            assert_eq!(a.mti(), req.mti().response().unwrap());
        }
    }
    f.router.audit().flush().await.unwrap();
    let recorded = records(&f);
    assert_eq!(recorded.len(), cases.len(), "exactly one pair per request");
    for ((_, code, outcome), r) in cases.iter().zip(&recorded) {
        assert_eq!(r.outcome, Some(*outcome));
        assert_eq!(r.response_code.as_deref(), *code);
    }
    let approved = &recorded[0];
    assert_eq!(
        (approved.route.as_deref(), approved.issuer.as_deref()),
        (Some("visa"), Some("issuer"))
    );
    assert_eq!(approved.issuer_stan.as_deref(), Some("004242"));
    assert_eq!(
        approved.pan.as_ref().unwrap().hash,
        f.keys.pan_hash(b"4000056655665556")
    );
    assert!(approved.answered_us.unwrap() >= approved.received_us);
    assert_eq!(
        counter(
            &f,
            "switchyard_requests_total",
            &[("outcome", "approved"), ("route", "visa")]
        ),
        1.0
    );
    assert_eq!(
        counter(&f, "switchyard_responses_total", &[("response_code", "91")]),
        4.0
    );
    assert_eq!(
        counter(
            &f,
            "switchyard_requests_total",
            &[("outcome", "no-route"), ("route", "none")]
        ),
        1.0
    );
}

#[tokio::test]
async fn approvals_pass_through_unchanged() {
    let f = fixture("iso8583-1987-ascii");
    let req = request("0100", "4000056655665556", 2000, 77);
    let got = answer(&f, req.clone()).await.unwrap();
    assert_eq!(
        got.str(38),
        Some("AUTH01"),
        "issuer's fields reach the terminal"
    );
    let seen = f.router.links()["issuer"].seen.lock().unwrap()[0].clone();
    assert_eq!(seen.buffer(), req.buffer(), "forwarded byte for byte");
}

#[tokio::test]
async fn a_different_issuer_dialect_is_translated_both_ways() {
    let f = fixture("iso8583-1987-bcd");
    let got = answer(&f, request("0200", "4000056655665556", 2000, 12))
        .await
        .unwrap();
    assert_eq!(
        (got.str(39), got.str(38), got.str(11)),
        (Some("00"), Some("AUTH01"), Some("000012"))
    );
    let seen = f.router.links()["issuer"].seen.lock().unwrap()[0].clone();
    assert_eq!(seen.spec().name(), "iso8583-1987-bcd");
    assert_eq!(seen.field(2).unwrap().text(), "4000056655665556");
}

#[tokio::test]
async fn a_malformed_frame_gets_30_and_a_record_without_its_bytes() {
    let f = fixture("iso8583-1987-ascii");
    let good = request("0200", "4000056655665556", 2000, 55);
    let mut bad = good.buffer().to_vec();
    let at = good.range(4).unwrap().start;
    bad[at] = b'X';
    let frame = Bytes::from(bad);
    let error = MessageView::decode(spec(), frame.clone()).unwrap_err();
    let out = f
        .router
        .handle_malformed("terminals", spec(), frame, error)
        .await
        .unwrap();
    let out = MessageView::decode(spec(), out).unwrap();
    assert_eq!(
        (out.str(39), out.str(11), out.str(41)),
        (Some("30"), Some("000055"), Some("TERM0001"))
    );
    let r = &records(&f)[0];
    assert_eq!(r.outcome, Some(Outcome::FormatError));
    assert_eq!(
        (r.stan.as_deref(), r.terminal.as_deref()),
        (Some("000055"), Some("TERM0001"))
    );
    assert!(
        r.request.fields.is_empty() && r.pan.is_none(),
        "nothing of an undecodable frame is kept"
    );
    assert_eq!(
        counter(
            &f,
            "switchyard_decode_errors_total",
            &[("reason", "invalid_character")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_failed_audit_log_stops_approvals() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = AuditConfig::new(dir.path());
    config.fault = Some(Arc::new(switchyard_audit::log::SyncFault(
        std::sync::atomic::AtomicI64::new(0),
    )));
    let keys = Arc::new(AuditKeys::demo());
    let (log, _) = AuditLog::open(config, keys.clone()).unwrap();
    let routes = RouteTable::new(&[], Some("issuer")).unwrap();
    let issuer = Arc::new(Scripted {
        spec: spec(),
        seen: Mutex::new(Vec::new()),
    });
    let links = HashMap::from([("issuer".to_string(), issuer)]);
    let router = Router::new(
        routes,
        links,
        Arc::new(log),
        keys,
        true,
        &prometheus::Registry::new(),
    )
    .unwrap();
    // The approval cannot be recorded: the terminal is told 96, not 00.
    let first = router
        .handle("t", request("0200", "4000056655665556", 2000, 1))
        .await
        .unwrap();
    assert_eq!(
        MessageView::decode(spec(), first).unwrap().str(39),
        Some("96")
    );
    // From now on nothing is forwarded.
    let second = router
        .handle("t", request("0200", "4000056655665556", 2000, 2))
        .await
        .unwrap();
    assert_eq!(
        MessageView::decode(spec(), second).unwrap().str(39),
        Some("96")
    );
    assert_eq!(router.links()["issuer"].seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn routes_are_swapped_whole_and_checked_against_the_links() {
    let f = fixture("iso8583-1987-ascii");
    assert_eq!(
        answer(&f, request("0200", "5413330089020011", 2000, 1))
            .await
            .unwrap()
            .str(39),
        Some("15")
    );
    let mc = RouteTable::new(
        &[RouteRule {
            name: "mc".into(),
            bins: vec!["51-55".into()],
            link: "issuer".into(),
            ..RouteRule::default()
        }],
        None,
    )
    .unwrap();
    f.router.replace_routes(mc).unwrap();
    assert_eq!(
        answer(&f, request("0200", "5413330089020011", 2000, 2))
            .await
            .unwrap()
            .str(39),
        Some("00")
    );
    let unknown = RouteTable::new(&[], Some("nowhere")).unwrap();
    let err = f.router.replace_routes(unknown).unwrap_err().to_string();
    assert!(err.contains("nowhere"), "{err}");
    assert_eq!(
        answer(&f, request("0200", "5413330089020011", 2000, 3))
            .await
            .unwrap()
            .str(39),
        Some("00"),
        "old table kept"
    );
}
