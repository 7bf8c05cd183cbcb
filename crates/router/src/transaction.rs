//! The transaction context: one request's way through the switch, filled in stage by stage.
//!
//! A [`Transaction`] carries the request as the terminal sent it and the facts of its
//! connection; the stages add the route and link, the message the issuer gets, the issuer's
//! answer, the pair record being filled, and finally the [`Answer`]: what the terminal is
//! told and how the transaction ended.

use std::ops::ControlFlow;
use std::time::Instant;

use switchyard_audit::{AuditKeys, Outcome, PairRecord};
use switchyard_iso8583::{MessageBuilder, MessageView, Spec};
use switchyard_mux::Forwarded;

use crate::flow::{now_us, IssuerPort};
use crate::integrity::DuplicateKey;
use crate::registry::Registry;
use crate::routes::{RouteTable, StandIn};
use crate::saf::ReversalBasis;

/// What a stage does with a transaction: pass it on (`Continue`) or answer it (`Break`).
/// Only [`Transaction::answer_code`] and [`Transaction::answer_with`] make an [`Answered`],
/// so a stage that ends the flow has always set the answer.
pub type Step = ControlFlow<Answered>;

/// Proof that the transaction has its answer.
#[derive(Debug)]
pub struct Answered(());

/// What the terminal is told, and how the transaction ended.
#[derive(Debug)]
pub struct Answer {
    /// The response (`None`: nothing can be answered, as for a response sent by a terminal).
    pub response: Option<MessageView<'static>>,
    /// The outcome the pair record and the metrics carry.
    pub outcome: Outcome,
}

/// The route a request takes, and the issuer link behind it.
pub struct ChosenRoute<'a, P> {
    /// The rule's name (`"original"` for a terminal's reversal of a request).
    pub name: &'a str,
    /// The issuer link's name.
    pub link_name: &'a str,
    /// The issuer link.
    pub link: &'a P,
    /// Stand-in processing, if the route has it.
    pub stand_in: Option<&'a StandIn>,
}

impl<P> Clone for ChosenRoute<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P> Copy for ChosenRoute<'_, P> {}

impl<P> std::fmt::Debug for ChosenRoute<'_, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChosenRoute")
            .field("name", &self.name)
            .field("link", &self.link_name)
            .finish_non_exhaustive()
    }
}

/// One request on its way through the switch.
pub struct Transaction<'a, P> {
    /// The listener it came in on.
    pub listener: &'a str,
    /// The SHA-256 fingerprint (lower-case hex) of the client certificate the connection
    /// presented.
    pub certificate: Option<&'a str>,
    /// When the switch read it.
    pub started: Instant,
    /// The request as the terminal sent it.
    pub received: MessageView<'static>,
    /// The request with field 90 quoting the STAN the issuer saw (a terminal's reversal).
    quoted: Option<MessageView<'static>>,
    /// The pair record, filled as the transaction goes.
    pub pair: PairRecord,
    /// The route table in force when the request arrived.
    pub routes: &'a RouteTable,
    /// The merchant and terminal registry in force when the request arrived, if any.
    pub registry: Option<&'a Registry>,
    /// The duplicate-detection entry to complete with the answer.
    pub duplicate: Option<DuplicateKey>,
    /// The group's duplicate window has this request as this instance's (settle it).
    pub shared_claim: bool,
    /// Claimed behind: where its answer goes to settle the claim once it has landed.
    pub settle_behind: Option<tokio::sync::oneshot::Sender<Option<crate::shared::SharedAnswer>>>,
    /// Where it goes.
    pub route: Option<ChosenRoute<'a, P>>,
    /// The request in the issuer's dialect.
    pub outbound: Option<MessageView<'static>>,
    /// What the issuer link said.
    pub forwarded: Option<Forwarded>,
    /// The reversal basis the in-flight record was written with (built once per request).
    pub inflight_basis: Option<ReversalBasis>,
    /// The answer, once a stage has given it.
    pub answer: Option<Answer>,
    /// Whether the pair record is kept.
    pub recorded: bool,
}

impl<P> std::fmt::Debug for Transaction<'_, P> {
    /// Listener, MTI, route and outcome: never card data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("listener", &self.listener)
            .field("mti", &self.received.mti())
            .field("route", &self.route)
            .field("outcome", &self.answer.as_ref().map(|a| a.outcome))
            .finish_non_exhaustive()
    }
}

impl<'a, P: IssuerPort> Transaction<'a, P> {
    /// A transaction for `request`, read now on `listener`.
    pub fn new(
        listener: &'a str,
        certificate: Option<&'a str>,
        request: MessageView<'static>,
        routes: &'a RouteTable,
        registry: Option<&'a Registry>,
        keys: &AuditKeys,
    ) -> Self {
        let started = Instant::now();
        Transaction {
            pair: PairRecord::from_request(listener, &request, keys, now_us()),
            listener,
            certificate,
            started,
            received: request,
            quoted: None,
            routes,
            registry,
            duplicate: None,
            shared_claim: false,
            settle_behind: None,
            route: None,
            outbound: None,
            forwarded: None,
            inflight_basis: None,
            answer: None,
            recorded: false,
        }
    }

    /// The request the stages work on: the terminal's, or its quoted form once routing has
    /// made one.
    pub fn request(&self) -> &MessageView<'static> {
        self.quoted.as_ref().unwrap_or(&self.received)
    }

    /// Work on `quoted` from now on (the terminal's request is kept as it was received).
    pub fn quote(&mut self, quoted: MessageView<'static>) {
        self.quoted = Some(quoted);
    }

    /// Whether the issuer link speaks the terminal's dialect (no translation either way).
    pub fn same_dialect(&self) -> bool {
        self.route
            .is_none_or(|r| std::ptr::eq(r.link.spec(), self.request().spec()))
    }

    /// Answer with the switch's own response carrying `code`.
    pub fn answer_code(&mut self, code: &[u8], outcome: Outcome) -> Step {
        let response = own_answer(self.request(), code);
        self.answer_with(response, outcome)
    }

    /// Answer with `response` (the issuer's, a stand-in approval, an earlier answer).
    pub fn answer_with(
        &mut self,
        response: Option<MessageView<'static>>,
        outcome: Outcome,
    ) -> Step {
        self.answer = Some(Answer { response, outcome });
        ControlFlow::Break(Answered(()))
    }

    /// A stage found what an earlier stage should have left missing: answer 96 and say so
    /// (the stage list is out of order; never a panic on a live request).
    pub fn missing(&mut self, stage: &str, what: &str) -> Step {
        tracing::error!(
            stage,
            what,
            "stage ran without what an earlier stage provides"
        );
        self.answer_code(b"96", Outcome::SystemError)
    }

    /// The response code of the answer, for tests and logs.
    #[cfg(test)]
    pub fn answered(&self) -> Option<(Option<String>, Outcome)> {
        let answer = self.answer.as_ref()?;
        let code = answer
            .response
            .as_ref()
            .and_then(|r| r.field(39))
            .map(|f| f.text());
        Some((code, answer.outcome))
    }
}

/// A response the switch makes itself, and its decoded form for the audit record.
pub(crate) fn own_answer(
    request: &MessageView<'static>,
    code: &[u8],
) -> Option<MessageView<'static>> {
    let spec: &'static Spec = request.spec();
    let mut builder = MessageBuilder::new(spec, request.mti());
    builder.respond_to(request, code).ok()?;
    MessageView::decode(spec, builder.encode()).ok()
}

/// Replace the code of an answer the switch or issuer made with `code` (for 96 after an
/// audit failure): the same echo fields, the switch's own response.
pub(crate) fn own_answer_for_response(
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
