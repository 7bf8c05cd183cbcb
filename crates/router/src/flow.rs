//! The transaction flow: validate, route, forward, answer, audit.
//!
//! ```text
//! decoded request -> MTI policy -> route (BIN, MTI, processing code) -> issuer link
//!   -> response or failure -> response-code policy -> audit pair (durable first) -> answer
//! ```
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
use switchyard_audit::{
    AuditKeys, AuditLog, Outcome, PairRecord, ProtectedMessage, RecordKind, ShortText,
};
use switchyard_iso8583::{MessageBuilder, MessageView, Mti, Spec};
use switchyard_mux::{
    format_error_response, BeforeSend, ConnectionInfo, Forwarded, Handler, IssuerLink, MuxError,
};

use crate::integrity::{Duplicate, InFlightRecordRef, Integrity};
use crate::registry::{Registry, RuleState};
use crate::routes::StandIn;
use crate::saf::ReversalBasis;

use crate::error::RouterError;
use crate::metrics::RouterMetrics;
use crate::routes::RouteTable;

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
    links: HashMap<String, Arc<P>>,
    audit: Arc<AuditLog>,
    keys: Arc<AuditKeys>,
    durable: bool,
    metrics: RouterMetrics,
    integrity: Option<Arc<Integrity>>,
    registry: RwLock<Option<Arc<Registry>>>,
    rule_state: RuleState,
}

impl<P> std::fmt::Debug for Router<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("links", &self.links.keys().collect::<Vec<_>>())
            .field("durable", &self.durable)
            .finish_non_exhaustive()
    }
}

/// A response the switch makes itself, and its decoded form for the audit record.
fn own_answer(request: &MessageView<'static>, code: &[u8]) -> Option<MessageView<'static>> {
    let spec: &'static Spec = request.spec();
    let mut builder = MessageBuilder::new(spec, request.mti());
    builder.respond_to(request, code).ok()?;
    MessageView::decode(spec, builder.encode()).ok()
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
            links,
            audit,
            keys,
            durable,
            metrics: RouterMetrics::new(registry)?,
            integrity: None,
            registry: RwLock::new(None),
            rule_state: RuleState::default(),
        })
    }

    /// Use (or stop using, with `None`) a merchant and terminal registry; swapped whole.
    pub fn replace_registry(&self, registry: Option<Registry>) {
        *self.registry.write().unwrap_or_else(|p| p.into_inner()) = registry.map(Arc::new);
    }

    /// Turn on reversals, in-flight records and duplicate detection.
    pub fn with_integrity(mut self, integrity: Arc<Integrity>) -> Self {
        self.integrity = Some(integrity);
        self
    }

    /// The integrity state, when on.
    pub fn integrity(&self) -> Option<&Arc<Integrity>> {
        self.integrity.as_ref()
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
        Self::check_links(&routes, &self.links)?;
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes);
        Ok(())
    }

    /// The issuer links.
    pub fn links(&self) -> &HashMap<String, Arc<P>> {
        &self.links
    }

    /// The audit log.
    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.audit
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
        let started = Instant::now();
        let mut pair = PairRecord::from_request(listener, &request, &self.keys, now_us());
        let mti = request.mti();
        let duplicate = match &self.integrity {
            Some(i) => i.begin(&request),
            None => Duplicate::NotChecked,
        };
        let mut pending = None;
        let (answer, outcome) = match duplicate {
            Duplicate::InFlight => (own_answer(&request, b"94"), Outcome::Duplicate),
            Duplicate::Answered(previous) => (
                MessageView::decode(request.spec(), previous).ok(),
                Outcome::Duplicate,
            ),
            Duplicate::Fresh(key) => {
                pending = Some(key);
                self.decide(&request, &mut pair, certificate.as_deref())
                    .await
            }
            Duplicate::NotChecked => {
                self.decide(&request, &mut pair, certificate.as_deref())
                    .await
            }
        };
        if let Some(answer) = &answer {
            pair.set_response(answer, &self.keys);
        }
        let route = pair.route.clone();
        let unreversed = pair
            .reversal_id
            .is_none()
            .then(|| (pair.issuer.clone(), pair.inflight_seq));
        let (answer, recorded) = self.audit_pair(pair, answer, outcome, started).await;
        if !recorded && outcome == Outcome::Approved {
            // The approval could not be recorded and the terminal is told 96: take it back.
            if let (Some(i), Some((Some(link), seq))) = (&self.integrity, unreversed) {
                let basis = ReversalBasis::of(&request, None);
                if let Err(e) = i
                    .saf
                    .enqueue(&link, "approval not recorded", basis, seq)
                    .await
                {
                    tracing::error!(error = %e, "could not queue the reversal of an unrecorded approval");
                }
            }
        }
        if let (Some(i), Some(key)) = (&self.integrity, pending) {
            i.finish(key, answer.as_ref().map(|a| a.buffer()));
        }
        let route = route.as_deref().unwrap_or("none");
        self.metrics.observe(
            listener,
            route,
            mti,
            outcome,
            answer.as_ref(),
            started.elapsed(),
        );
        answer.map(MessageView::into_bytes)
    }

    /// An answer could not be delivered to its terminal.
    pub async fn undelivered(&self, spec: &'static Spec, answer: Bytes) {
        if let (Some(i), Ok(view)) = (&self.integrity, MessageView::decode(spec, answer)) {
            i.undelivered(&view).await;
        }
    }

    /// What to answer, and how the transaction ended.
    async fn decide(
        &self,
        request: &MessageView<'static>,
        pair: &mut PairRecord,
        certificate: Option<&str>,
    ) -> (Option<MessageView<'static>>, Outcome) {
        let mti = request.mti();
        if !mti.is_request() {
            // A response from a terminal answers nothing of ours; it cannot be answered.
            return (None, Outcome::InvalidTransaction);
        }
        if self.audit.is_failed() {
            // No record can be kept: stop approving.
            return (own_answer(request, b"96"), Outcome::SystemError);
        }
        match mti.class() {
            8 => return (own_answer(request, b"00"), Outcome::SwitchAnswered),
            1 | 2 | 4 => {}
            _ => return (own_answer(request, b"12"), Outcome::InvalidTransaction),
        }
        let registry = self
            .registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(registry) = &registry {
            if let Err(refusal) = registry.check(request, certificate) {
                self.metrics.refused(refusal.name());
                pair.rules.push(format!("registry:{}", refusal.name()));
                return (
                    own_answer(request, refusal.response_code()),
                    Outcome::Refused,
                );
            }
            if matches!(mti.class(), 1 | 2) {
                let terminal = pair.terminal.clone().unwrap_or_default();
                let card = pair.pan.as_ref().map(|p| p.hash.as_str());
                let merchant = registry.merchant_of(&terminal);
                let verdict = self.rule_state.evaluate(
                    &registry.rules,
                    merchant,
                    &terminal,
                    card,
                    pair.amount.unwrap_or(0),
                );
                for (name, block) in &verdict.hits {
                    self.metrics.rule_hit(name, *block);
                    pair.rules.push((*name).to_string());
                }
                if let Some(code) = verdict.block {
                    return (own_answer(request, code.as_bytes()), Outcome::Blocked);
                }
            }
        }
        let table = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // A terminal's reversal goes where its original went, quoting the STAN the issuer saw.
        let original = self.integrity.as_ref().and_then(|i| i.original_of(request));
        let route = match &original {
            Some((link, _)) => crate::routes::Route {
                name: "original",
                link,
                stand_in: None,
            },
            None => match table.route(request) {
                Some(route) => route,
                None => return (own_answer(request, b"15"), Outcome::NoRoute),
            },
        };
        let rewritten;
        let request = match &original {
            Some((_, issuer_stan)) => match quote_issuer_stan(request, issuer_stan) {
                Some(r) => {
                    rewritten = r;
                    &rewritten
                }
                None => return (own_answer(request, b"30"), Outcome::FormatError),
            },
            None => request,
        };
        pair.route = Some(ShortText::from(route.name));
        pair.issuer = Some(ShortText::from(route.link));
        let Some(link) = self.links.get(route.link) else {
            return (own_answer(request, b"96"), Outcome::SystemError);
        };
        let same_dialect = std::ptr::eq(link.spec(), request.spec());
        let outbound = if same_dialect {
            request.clone()
        } else {
            match translate(request, link.spec()) {
                Ok(v) => v,
                Err(error) => {
                    tracing::warn!(link = route.link, %error, "request does not fit the issuer's dialect");
                    return (own_answer(request, b"96"), Outcome::SystemError);
                }
            }
        };
        pair.forwarded_us = Some(now_us());
        let sent = Instant::now();
        // The reversal basis the in-flight record was written with, for an approval's or an
        // unknown outcome's reversal (built once per request, not twice).
        let mut inflight_basis = None;
        let forwarded = match &self.integrity {
            None => link.forward(&outbound).await,
            Some(_) => {
                // The request is on disk before it is on the wire.
                let recorded = std::sync::Mutex::new(None);
                let before = &pair;
                let audit = &self.audit;
                let outbound_ref = &outbound;
                let recorded_ref = &recorded;
                let note = move |stan: Option<u32>| {
                    let basis = ReversalBasis::of(outbound_ref, stan);
                    async move {
                        let record = InFlightRecordRef {
                            link: route.link,
                            basis: &basis,
                            pair: before,
                        };
                        match audit.append_json(RecordKind::InFlight, &record).await {
                            Ok(seq) => {
                                *recorded_ref.lock().unwrap_or_else(|p| p.into_inner()) =
                                    Some((seq, basis));
                                true
                            }
                            Err(error) => {
                                tracing::error!(%error, "in-flight record failed: not forwarding");
                                false
                            }
                        }
                    }
                };
                let forwarded = link.forward_with(&outbound, note).await;
                if let Some((seq, basis)) =
                    recorded.lock().unwrap_or_else(|p| p.into_inner()).take()
                {
                    pair.inflight_seq = Some(seq);
                    inflight_basis = Some(basis);
                }
                forwarded
            }
        };
        self.metrics.issuer_latency(route.link, sent.elapsed());
        pair.issuer_stan = forwarded
            .issuer_stan
            .map(|s| ShortText::digits(u64::from(s), 6));
        let approved = forwarded.result.as_ref().is_ok_and(Outcome::approves);
        if let (Ok(_), false, Some(registry), Some(t)) =
            (&forwarded.result, approved, &registry, &pair.terminal)
        {
            self.rule_state.declined(&registry.rules, t);
        }
        if let Some(i) = &self.integrity {
            if matches!(mti.class(), 1 | 2) {
                if let (Some(t), Some(s)) = (&pair.terminal, &pair.stan) {
                    let f7 = request
                        .field(7)
                        .map(|f| ShortText::of_field(&f, false))
                        .unwrap_or_default();
                    let issuer_stan = pair.issuer_stan.as_ref().unwrap_or(s);
                    i.forwarded(t, s, &f7, route.link, issuer_stan);
                }
            }
            match &forwarded.result {
                Err(error) if error.outcome_unknown() => {
                    let basis = inflight_basis
                        .unwrap_or_else(|| ReversalBasis::of(&outbound, forwarded.issuer_stan));
                    match i
                        .saf
                        .enqueue(route.link, &error.to_string(), basis, pair.inflight_seq)
                        .await
                    {
                        Ok(id) => pair.reversal_id = Some(id),
                        Err(e) => tracing::error!(error = %e, "could not queue a reversal"),
                    }
                }
                Ok(_) if approved => {
                    if let (Some(t), Some(s)) = (&pair.terminal, &pair.stan) {
                        let basis = inflight_basis
                            .unwrap_or_else(|| ReversalBasis::of(&outbound, forwarded.issuer_stan));
                        i.approved(t, s, route.link, basis, pair.inflight_seq);
                    }
                }
                _ => {}
            }
        }
        if let (Err(MuxError::LinkDown { .. } | MuxError::LinkBusy { .. }), Some(stand_in)) =
            (&forwarded.result, route.stand_in)
        {
            if let Some(answer) = self
                .stand_in(
                    request,
                    &outbound,
                    stand_in,
                    registry.as_deref(),
                    route.link,
                    pair,
                )
                .await
            {
                return (Some(answer), Outcome::StandInApproved);
            }
        }
        match forwarded.result {
            Ok(response) => {
                let response = if same_dialect {
                    response
                } else {
                    match translate(&response, request.spec()) {
                        Ok(v) => v,
                        Err(error) => {
                            tracing::error!(link = route.link, %error, "issuer response does not fit the terminal's dialect");
                            return (own_answer(request, b"96"), Outcome::IssuerError);
                        }
                    }
                };
                let approved = Outcome::approves(&response);
                let outcome = if approved {
                    Outcome::Approved
                } else {
                    Outcome::Declined
                };
                (Some(response), outcome)
            }
            Err(error) => {
                let (code, outcome): (&[u8], Outcome) = match &error {
                    MuxError::LinkDown { .. } => (b"91", Outcome::LinkDown),
                    MuxError::LinkBusy { .. } => (b"91", Outcome::LinkBusy),
                    MuxError::Timeout { .. } => (b"91", Outcome::Timeout),
                    MuxError::ConnectionLost { .. } => (b"91", Outcome::ConnectionLost),
                    MuxError::MalformedResponse { .. } => (b"91", Outcome::IssuerError),
                    MuxError::DuplicateInFlight { .. } => (b"94", Outcome::Duplicate),
                    MuxError::NotSent { .. } => (b"96", Outcome::SystemError),
                    _ => (b"96", Outcome::SystemError),
                };
                tracing::info!(link = route.link, %error, "no issuer answer");
                (own_answer(request, code), outcome)
            }
        }
    }

    /// Approve in place of an issuer that cannot be reached, within the route's stand-in
    /// limits, and queue the advice that tells the issuer later.
    async fn stand_in(
        &self,
        request: &MessageView<'static>,
        outbound: &MessageView<'static>,
        limits: &StandIn,
        registry: Option<&Registry>,
        link: &str,
        pair: &mut PairRecord,
    ) -> Option<MessageView<'static>> {
        let integrity = self.integrity.as_ref()?;
        let amount = request.field(4).and_then(|f| f.as_u64())?;
        let mcc = request.field(18).map(|f| f.text()).or_else(|| {
            let terminal = pair.terminal.as_deref()?;
            registry?.merchant_of(terminal).map(|m| m.mcc.clone())
        });
        let processing = request.field(3).map(|f| f.text()).unwrap_or_default();
        let allowed = amount <= limits.floor_limit
            && (limits.mccs.is_empty() || mcc.is_some_and(|m| limits.mccs.contains(&m)))
            && (limits.processing_codes.is_empty()
                || limits
                    .processing_codes
                    .iter()
                    .any(|p| processing.starts_with(p.as_str())));
        if !allowed {
            return None;
        }
        let auth_id = format!("S{:05}", now_us().rem_euclid(100_000));
        let spec: &'static Spec = request.spec();
        let mut b = MessageBuilder::new(spec, request.mti());
        b.respond_to(request, b"00").ok()?;
        if spec.field(38).is_some() {
            b.set(38, &auth_id).ok()?;
        }
        let answer = MessageView::decode(spec, b.encode()).ok()?;
        let mut basis = ReversalBasis::of(outbound, None);
        basis.fields.insert(38, &auth_id);
        basis.fields.insert(39, "00");
        let advice = if request.mti().class() == 1 {
            "0120"
        } else {
            "0220"
        };
        match integrity
            .saf
            .enqueue_as(link, "stand-in advice", basis, None, Some(advice.into()))
            .await
        {
            Ok(id) => pair.reversal_id = Some(id),
            Err(e) => {
                tracing::error!(error = %e, "stand-in advice not queued: declining");
                return None;
            }
        }
        Some(answer)
    }

    /// Write the pair record (waiting for it to be durable unless configured otherwise); the
    /// answer to give, which becomes 96 when the record could not be kept.
    async fn audit_pair(
        &self,
        mut pair: PairRecord,
        answer: Option<MessageView<'static>>,
        outcome: Outcome,
        started: Instant,
    ) -> (Option<MessageView<'static>>, bool) {
        let answered = now_us();
        pair.answered_us = Some(answered);
        pair.latency_us = Some(started.elapsed().as_micros() as u64);
        pair.outcome = Some(outcome);
        let payload = match switchyard_audit::log::to_json(&pair) {
            Ok(p) => p,
            Err(error) => {
                tracing::error!(%error, "audit record does not serialise");
                return (
                    answer.and_then(|a| own_answer_for_response(&a, b"96")),
                    false,
                );
            }
        };
        let appended = Instant::now();
        let result = if self.durable {
            self.audit
                .append(RecordKind::Pair, payload)
                .await
                .map(|_| ())
        } else {
            self.audit.append_nowait(RecordKind::Pair, payload)
        };
        self.metrics.audit_latency(appended.elapsed());
        match result {
            Ok(()) => (answer, true),
            Err(error) => {
                self.metrics.audit_failure();
                tracing::error!(%error, "audit append failed: answering 96");
                (
                    answer.and_then(|a| own_answer_for_response(&a, b"96")),
                    false,
                )
            }
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
        self.metrics.decode_error(listener, &error);
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
            pair.set_response(a, &self.keys);
        }
        let (answer, _) = self
            .audit_pair(pair, answer, Outcome::FormatError, started)
            .await;
        let mti = mti.unwrap_or_else(|| Mti::new(*b"0000").unwrap_or_else(|| unreachable!()));
        self.metrics.observe(
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

/// A terminal's reversal with field 90's STAN replaced by the one the issuer saw.
fn quote_issuer_stan(
    request: &MessageView<'static>,
    issuer_stan: &str,
) -> Option<MessageView<'static>> {
    let spec: &'static Spec = request.spec();
    let original = request.field(90)?.text();
    // Field 90 starts with the original MTI and STAN: ASCII digits in every dialect.
    if original.len() < 10 || !original.is_char_boundary(10) {
        return None;
    }
    let mut quoted = original.clone();
    quoted.replace_range(4..10, issuer_stan.get(..6)?);
    let mut b = MessageBuilder::new(spec, request.mti());
    for field in request.fields() {
        if field.number == 90 {
            b.set(90, &quoted).ok()?;
        } else {
            b.set(field.number, field.value()).ok()?;
        }
    }
    MessageView::decode(spec, b.encode()).ok()
}

/// Replace the code of an answer the switch or issuer made with `code` (for 96 after an
/// audit failure): the same echo fields, the switch's own response.
fn own_answer_for_response(
    answer: &MessageView<'static>,
    code: &[u8],
) -> Option<MessageView<'static>> {
    let spec: &'static Spec = answer.spec();
    let mut builder = MessageBuilder::new(spec, answer.mti());
    for field in answer.fields().filter(|f| f.number != 39) {
        builder.set(field.number, field.value()).ok()?;
    }
    builder.set(39, code).ok()?;
    MessageView::decode(spec, builder.encode()).ok()
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
        self.router.metrics.undelivered(&self.listener);
        tracing::warn!(listener = %self.listener, peer = %conn.peer, "terminal gone before its answer");
        let (router, spec) = (self.router.clone(), self.spec);
        tokio::spawn(async move { router.undelivered(spec, response).await });
    }
}
