//! Heap allocations per forwarded request in the switch's flow (`Router::handle`: decode
//! checks, routing, integrity indexes, the in-flight and pair audit records, answering),
//! with an in-memory issuer and a real durable audit log. Requests run one at a time; the
//! issuer's own allocations are counted apart and left out. Repeatable, unlike timings:
//! `cargo run --release -p switchyard-benches --example flow_allocs [-- REQUESTS] [--max N]`.
//! With `--max N` it fails when a request takes more than N allocations (CI runs it so, to
//! catch a regression).

#![allow(unsafe_code)] // The counting global allocator below.
#![allow(clippy::unwrap_used)] // A bench: a failed unwrap is a failed measurement.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_audit::{AuditConfig, AuditKeys, AuditLog};
use switchyard_iso8583::{shipped, MessageBuilder, MessageView, Mti, Spec};
use switchyard_mux::{BeforeSend, Forwarded};
use switchyard_router::{
    Integrity, IssuerPort, RouteRule, RouteTable, Router, SafConfig, SafQueue,
};

struct Counting;
static SWITCH: AtomicU64 = AtomicU64::new(0);
static ISSUER: AtomicU64 = AtomicU64::new(0);
thread_local! {
    static IN_ISSUER: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    let issuer = IN_ISSUER.try_with(Cell::get).unwrap_or(false);
    let counter = if issuer { &ISSUER } else { &SWITCH };
    counter.fetch_add(1, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Approves everything; its allocations are counted as the issuer's.
struct Issuer {
    spec: &'static Spec,
    builder: Mutex<MessageBuilder<'static>>,
}

impl Issuer {
    fn answer(&self, request: &MessageView<'static>) -> Forwarded {
        IN_ISSUER.with(|f| f.set(true));
        let mut b = self.builder.lock().unwrap();
        b.respond_to(request, b"00").unwrap();
        let answer = MessageView::decode(self.spec, b.encode()).unwrap();
        IN_ISSUER.with(|f| f.set(false));
        Forwarded {
            issuer_stan: Some(4242),
            result: Ok(answer),
        }
    }
}

impl IssuerPort for Issuer {
    fn spec(&self) -> &'static Spec {
        self.spec
    }

    async fn forward(&self, request: &MessageView<'static>) -> Forwarded {
        self.answer(request)
    }

    async fn forward_with(
        &self,
        request: &MessageView<'static>,
        before_send: impl BeforeSend,
    ) -> Forwarded {
        assert!(before_send.before_send(Some(4242)).await);
        self.answer(request)
    }
}

fn request(spec: &'static Spec, stan: u64) -> MessageView<'static> {
    let mut b = MessageBuilder::new(spec, Mti::parse("0200").unwrap());
    b.set(2, "4761730000000119").unwrap();
    b.set(3, "000000").unwrap().set_u64(4, 1000).unwrap();
    b.set(7, "1124093000").unwrap().set_u64(11, stan).unwrap();
    b.set(37, "532709000451").unwrap();
    b.set(41, "TERM0001").unwrap();
    b.set(42, "MERCHANT0000001")
        .unwrap()
        .set(49, "826")
        .unwrap();
    // As the terminal reader hands a frame over: a slice split off its read buffer (its
    // clones share that buffer; a `Bytes` made from a `Vec` would allocate at its first
    // clone, which the switch's frames never do).
    let mut read = bytes::BytesMut::from(&b.encode()[..]);
    MessageView::decode(spec, read.split().freeze()).unwrap()
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let requests: u64 = args.first().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let max: Option<f64> = args
        .iter()
        .position(|a| a == "--max")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok());
    let spec = shipped("iso8583-1987-ascii").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(AuditKeys::demo());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (per_request, issuer_per_request) = rt.block_on(async {
        let (log, _) =
            AuditLog::open(AuditConfig::new(dir.path().join("audit")), keys.clone()).unwrap();
        let (journal, _) =
            AuditLog::open(AuditConfig::new(dir.path().join("saf")), keys.clone()).unwrap();
        let saf = Arc::new(SafQueue::new(
            Arc::new(journal),
            BTreeMap::new(),
            SafConfig::default(),
        ));
        let rule = RouteRule {
            name: "visa".into(),
            bins: vec!["4".into()],
            link: "issuer".into(),
            ..RouteRule::default()
        };
        let routes = RouteTable::new(&[rule], None).unwrap();
        let issuer = Arc::new(Issuer {
            spec,
            builder: Mutex::new(MessageBuilder::new(spec, Mti::parse("0210").unwrap())),
        });
        let links = HashMap::from([("issuer".to_string(), issuer)]);
        let registry = prometheus::Registry::new();
        let integrity = Arc::new(Integrity::new(saf, Duration::from_secs(600)));
        let router = Router::new(routes, links, Arc::new(log), keys, true, &registry)
            .unwrap()
            .with_integrity(integrity);
        let mut stan = 0;
        let mut run = |n: u64| {
            let batch: Vec<_> = (0..n)
                .map(|_| {
                    stan += 1;
                    request(spec, stan % 1_000_000)
                })
                .collect();
            async {
                for req in batch {
                    assert!(router.handle("terminals", req).await.is_some());
                }
            }
        };
        // Warm up: buffers, maps and the segment reach their working size.
        run(requests / 4).await;
        let batch = run(requests);
        let (switch, issuer) = (
            SWITCH.load(Ordering::Relaxed),
            ISSUER.load(Ordering::Relaxed),
        );
        batch.await;
        (
            (SWITCH.load(Ordering::Relaxed) - switch) as f64 / requests as f64,
            (ISSUER.load(Ordering::Relaxed) - issuer) as f64 / requests as f64,
        )
    });
    println!(
        "heap allocations per forwarded 0200 (integrity on, durable audit, {requests} requests): \
         switch {per_request:.1}, issuer simulator {issuer_per_request:.1} (not counted)"
    );
    match max {
        Some(max) if per_request > max => {
            eprintln!("more than the budget of {max} allocations per request");
            std::process::ExitCode::FAILURE
        }
        _ => std::process::ExitCode::SUCCESS,
    }
}
