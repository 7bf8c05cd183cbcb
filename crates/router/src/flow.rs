//! The router: one per switch, shared by every listener. It takes a snapshot of the route
//! table and the registry for each request, makes its [`Transaction`], and runs the stages
//! ([`crate::stages::run`]) over it; the stages decide.
//!
//! When the switch answers itself the response code says why: 30 format error, 12 invalid
//! transaction (unsupported MTI), 15 no route for the card, 91 issuer link down, busy or
//! timed out, 94 duplicate in flight, 96 audit log failed or internal error. Every request
//! and every such answer is audited with its outcome, exactly once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use switchyard_audit::{AuditKeys, AuditLog, Outcome, PairRecord, ProtectedMessage, ShortText};
use switchyard_iso8583::{MessageBuilder, MessageView, Mti, Spec};
use switchyard_mux::{
    format_error_response, BeforeSend, ConnectionInfo, Forwarded, Handler, IssuerLink,
};

use crate::error::RouterError;
use crate::integrity::Integrity;
use crate::metrics::RouterMetrics;
use crate::registry::{Registry, RuleState};
use crate::routes::RouteTable;
use crate::security::Security;
use crate::stages::{self, record::append_pair, Switch};
use crate::transaction::{own_answer_for_response, Transaction};

/// An issuer link as the router uses it (the mux's `IssuerLink`, or a fake in tests).
pub trait IssuerPort: Send + Sync + 'static {
    /// The dialect the issuer speaks.
    fn spec(&self) -> &'static Spec;
    /// Forward a request (in the issuer's dialect) and wait for the answer.
    fn forward(&self, request: &MessageView<'static>) -> impl Future<Output = Forwarded> + Send;
    /// [`forward`](Self::forward), running `before_send` (with the STAN the issuer will see)
    /// before anything is written; `false` from it stops the request.
    fn forward_with(
        &self,
        request: &MessageView<'static>,
        before_send: impl BeforeSend,
    ) -> impl Future<Output = Forwarded> + Send;
}

impl IssuerPort for IssuerLink {
    fn spec(&self) -> &'static Spec {
        IssuerLink::spec(self)
    }

    fn forward(&self, request: &MessageView<'static>) -> impl Future<Output = Forwarded> + Send {
        IssuerLink::forward(self, request)
    }

    fn forward_with(
        &self,
        request: &MessageView<'static>,
        before_send: impl BeforeSend,
    ) -> impl Future<Output = Forwarded> + Send {
        IssuerLink::forward_with(self, request, before_send)
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The router: one per switch, shared by every listener.
pub struct Router<P> {
    routes: RwLock<Arc<RouteTable>>,
    registry: RwLock<Option<Arc<Registry>>>,
    switch: Switch<P>,
}

impl<P> std::fmt::Debug for Router<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("switch", &self.switch)
            .finish_non_exhaustive()
    }
}

/// Re-encode `view` in another dialect, field by field (values, not bytes).
pub fn translate(
    view: &MessageView<'_>,
    to: &'static Spec,
) -> Result<MessageView<'static>, switchyard_iso8583::Error> {
    let mut builder = MessageBuilder::new(to, view.mti());
    for field in view.fields() {
        builder.set(field.number, field.value())?;
    }
    MessageView::decode(to, builder.encode())
}

impl<P: IssuerPort> Router<P> {
    /// A router over `links`, auditing to `audit`; `durable`: the terminal is answered only
    /// after its pair record is on disk.
    pub fn new(
        routes: RouteTable,
        links: HashMap<String, Arc<P>>,
        audit: Arc<AuditLog>,
        keys: Arc<AuditKeys>,
        durable: bool,
        registry: &prometheus::Registry,
    ) -> Result<Router<P>, RouterError> {
        Self::check_links(&routes, &links)?;
        Ok(Router {
            routes: RwLock::new(Arc::new(routes)),
            registry: RwLock::new(None),
            switch: Switch {
                links,
                audit,
                keys,
                durable,
                metrics: RouterMetrics::new(registry)?,
                integrity: None,
                rule_state: RuleState::default(),
                security: None,
                business_day: None,
                settlement_date: std::collections::HashSet::new(),
                batches: None,
                partial_amount: switchyard_audit::PartialAmount::Field4,
                shared: None,
            },
        })
    }

    /// Use (or stop using, with `None`) a merchant and terminal registry; swapped whole.
    pub fn replace_registry(&self, registry: Option<Registry>) {
        *self.registry.write().unwrap_or_else(|p| p.into_inner()) = registry.map(Arc::new);
    }

    /// Date every pair record by `day`.
    pub fn with_business_day(mut self, day: Arc<crate::business_day::BusinessDay>) -> Self {
        self.switch.business_day = Some(day);
        self
    }

    /// Set field 15 (settlement date) on requests to these links.
    pub fn with_settlement_date(mut self, links: impl IntoIterator<Item = String>) -> Self {
        self.switch.settlement_date = links.into_iter().collect();
        self
    }

    /// Share the duplicate window and the reversal index with the group.
    pub fn with_shared_state(mut self, shared: crate::shared::SharedConfig) -> Self {
        self.switch.shared = Some(shared);
        self
    }

    /// Take a partial approval's amount from where the terminals' dialect carries it.
    pub fn with_partial_amount(mut self, partial: switchyard_audit::PartialAmount) -> Self {
        self.switch.partial_amount = partial;
        self
    }

    /// Keep the terminals' batches in `book` and answer their 0500s.
    pub fn with_batches(mut self, book: Arc<crate::batch::BatchBook>) -> Self {
        self.switch.batches = Some(book);
        self
    }

    /// The business day, if kept.
    pub fn business_day(&self) -> Option<&Arc<crate::business_day::BusinessDay>> {
        self.switch.business_day.as_ref()
    }

    /// Turn on card security: PIN translation and MACs through its security module.
    pub fn with_security(mut self, security: Arc<Security>) -> Self {
        self.switch.security = Some(security);
        self
    }

    /// The card security in use, if any.
    pub fn security(&self) -> Option<&Arc<Security>> {
        self.switch.security.as_ref()
    }

    /// Turn on reversals, in-flight records and duplicate detection.
    pub fn with_integrity(mut self, integrity: Arc<Integrity>) -> Self {
        self.switch.integrity = Some(integrity);
        self
    }

    /// The integrity state, when on.
    pub fn integrity(&self) -> Option<&Arc<Integrity>> {
        self.switch.integrity.as_ref()
    }

    fn check_links(
        routes: &RouteTable,
        links: &HashMap<String, Arc<P>>,
    ) -> Result<(), RouterError> {
        let mut unknown: Vec<String> = routes
            .links()
            .filter(|l| !links.contains_key(*l))
            .map(str::to_string)
            .collect();
        unknown.sort();
        unknown.dedup();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(RouterError::UnknownLinks(unknown))
        }
    }

    /// Swap in a new route table (requests in progress finish on the old one).
    pub fn replace_routes(&self, routes: RouteTable) -> Result<(), RouterError> {
        Self::check_links(&routes, &self.switch.links)?;
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes);
        Ok(())
    }

    /// The router's metrics.
    pub fn metrics(&self) -> &RouterMetrics {
        &self.switch.metrics
    }

    /// The issuer links.
    pub fn links(&self) -> &HashMap<String, Arc<P>> {
        &self.switch.links
    }

    /// The audit log.
    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.switch.audit
    }

    /// Handle one decoded request from `listener`; the answer for the terminal.
    pub async fn handle(&self, listener: &str, request: MessageView<'static>) -> Option<Bytes> {
        self.handle_from(listener, request, None).await
    }

    /// [`handle`](Self::handle) for a connection that presented a client certificate with
    /// this SHA-256 fingerprint (lower-case hex).
    pub async fn handle_from(
        &self,
        listener: &str,
        request: MessageView<'static>,
        certificate: Option<String>,
    ) -> Option<Bytes> {
        // Requests in progress finish on the table and registry they started with.
        let routes = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let registry = self
            .registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut tx = Transaction::new(
            listener,
            certificate.as_deref(),
            request,
            &routes,
            registry.as_deref(),
            &self.switch.keys,
        );
        stages::run(&self.switch, &mut tx).await;
        tx.answer
            .and_then(|a| a.response)
            .map(MessageView::into_bytes)
    }

    /// An answer could not be delivered to its terminal.
    pub async fn undelivered(&self, spec: &'static Spec, answer: Bytes) {
        if let (Some(i), Ok(view)) = (&self.switch.integrity, MessageView::decode(spec, answer)) {
            i.undelivered(&view).await;
        }
    }

    /// Handle a frame that did not decode: 30 when a response can be formed, and an audit
    /// record that holds only what was safely readable (MTI, STAN, terminal id), never the
    /// frame's bytes.
    pub async fn handle_malformed(
        &self,
        listener: &str,
        spec: &'static Spec,
        frame: Bytes,
        error: switchyard_iso8583::Error,
    ) -> Option<Bytes> {
        let started = Instant::now();
        self.switch.metrics.decode_error(listener, &error);
        let salvage = error.salvage();
        let text = |b: Option<&[u8]>| {
            b.filter(|v| v.iter().all(|c| c.is_ascii_alphanumeric() || *c == b' '))
                .map(|v| ShortText::from(String::from_utf8_lossy(v).trim_end()))
        };
        let mti = salvage.mti.and_then(Mti::new);
        let mti_text = ShortText::from(mti.as_ref().map_or("????", Mti::as_str));
        let pair = PairRecord {
            received_us: now_us(),
            listener: ShortText::from(listener),
            terminal: text(salvage.terminal_id(&frame)),
            request_mti: mti_text.clone(),
            stan: text(salvage.stan(&frame)),
            request: ProtectedMessage {
                mti: mti_text,
                ..ProtectedMessage::default()
            },
            ..PairRecord::default()
        };
        let answer = format_error_response(spec, &frame, &error)
            .and_then(|b| MessageView::decode(spec, b).ok());
        let mut pair = pair;
        if let Some(a) = &answer {
            pair.set_response(a);
        }
        let recorded = append_pair(&self.switch, &mut pair, Outcome::FormatError, started).await;
        let answer = match recorded {
            true => answer,
            false => answer.and_then(|a| own_answer_for_response(&a, b"96")),
        };
        let mti = mti.unwrap_or_else(|| Mti::new(*b"0000").unwrap_or_else(|| unreachable!()));
        self.switch.metrics.observe(
            listener,
            "none",
            mti,
            Outcome::FormatError,
            answer.as_ref(),
            started.elapsed(),
        );
        answer.map(MessageView::into_bytes)
    }
}

/// The acceptor's handler for one listener.
pub struct TerminalHandler<P> {
    /// The router.
    pub router: Arc<Router<P>>,
    /// The listener's name.
    pub listener: Arc<str>,
    /// The listener's dialect.
    pub spec: &'static Spec,
}

impl<P> std::fmt::Debug for TerminalHandler<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalHandler")
            .field("listener", &self.listener)
            .finish()
    }
}

impl<P: IssuerPort> Handler for TerminalHandler<P> {
    fn request(
        &self,
        conn: &Arc<ConnectionInfo>,
        request: MessageView<'static>,
    ) -> impl Future<Output = Option<Bytes>> + Send {
        let certificate = conn.client_certificate.as_ref().map(|c| {
            let digest = ring::digest::digest(&ring::digest::SHA256, c.as_ref());
            digest
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        });
        self.router
            .handle_from(&self.listener, request, certificate)
    }

    fn malformed(
        &self,
        _conn: &Arc<ConnectionInfo>,
        spec: &'static Spec,
        frame: Bytes,
        error: switchyard_iso8583::Error,
    ) -> impl Future<Output = Option<Bytes>> + Send {
        self.router
            .handle_malformed(&self.listener, spec, frame, error)
    }

    fn undelivered(&self, conn: &Arc<ConnectionInfo>, response: Bytes) {
        self.router.switch.metrics.undelivered(&self.listener);
        tracing::warn!(listener = %self.listener, peer = %conn.peer, "terminal gone before its answer");
        let (router, spec) = (self.router.clone(), self.spec);
        tokio::spawn(async move { router.undelivered(spec, response).await });
    }
}
