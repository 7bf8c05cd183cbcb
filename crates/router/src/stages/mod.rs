//! The stages of the transaction flow, and their order.
//!
//! A stage has one job and lives in a file of its own. It works on a [`Transaction`] with
//! the parts of the switch it needs ([`Switch`]) and either passes the transaction on or
//! answers it (a response and an [`Outcome`](switchyard_audit::Outcome)). [`run`] holds the
//! order, and is the only place that does: a new capability is a new file here and a line
//! in that list.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use switchyard_audit::{AuditKeys, AuditLog};

use crate::flow::IssuerPort;
use crate::integrity::Integrity;
use crate::metrics::RouterMetrics;
use crate::registry::RuleState;
use crate::security::Security;
use crate::transaction::{Step, Transaction};

mod admission;
mod batch;
mod duplicates;
mod forwarding;
mod issuer_answer;
pub(crate) mod record;
mod registry;
mod reply;
mod reversals;
mod routing;
mod rules;
pub(crate) mod security;
mod stand_in;
#[cfg(test)]
pub(crate) mod testing;
mod translation;

pub(crate) use admission::Admission;
pub(crate) use batch::{BatchSettlement, BatchTotals};
pub(crate) use duplicates::DuplicateCheck;
pub(crate) use forwarding::Forwarding;
pub(crate) use issuer_answer::IssuerAnswer;
pub(crate) use record::RecordPair;
pub(crate) use registry::RegistryCheck;
pub(crate) use reply::Reply;
pub(crate) use reversals::Reversals;
pub(crate) use routing::Routing;
pub(crate) use rules::ActivityRules;
pub(crate) use security::{IssuerMac, SecureRequest, TerminalMac};
pub(crate) use stand_in::StandInPolicy;
pub(crate) use translation::Translation;

/// The parts of the switch the stages share: issuer links, the audit log and its keys,
/// metrics, the integrity state and the rules' counters.
pub struct Switch<P> {
    pub(crate) links: HashMap<String, Arc<P>>,
    pub(crate) audit: Arc<AuditLog>,
    pub(crate) keys: Arc<AuditKeys>,
    /// The terminal is answered only after its pair record is on disk.
    pub(crate) durable: bool,
    pub(crate) metrics: RouterMetrics,
    pub(crate) integrity: Option<Arc<Integrity>>,
    pub(crate) rule_state: RuleState,
    /// Card security (PIN translation, MACs); none: requests with a PIN block or MAC are
    /// refused.
    pub(crate) security: Option<Arc<Security>>,
    /// The business day pair records are dated by (none: undated).
    pub(crate) business_day: Option<Arc<crate::business_day::BusinessDay>>,
    /// Links whose requests carry the business date in field 15.
    pub(crate) settlement_date: std::collections::HashSet<String>,
    /// The terminals' open batches (none: 0500s are invalid transactions).
    pub(crate) batches: Option<Arc<crate::batch::BatchBook>>,
    /// Where the terminals' dialect carries a partial approval's amount.
    pub(crate) partial_amount: switchyard_audit::PartialAmount,
    /// The group's shared state (none: a single instance).
    pub(crate) shared: Option<crate::shared::SharedConfig>,
}

impl<P> std::fmt::Debug for Switch<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switch")
            .field("links", &self.links.keys().collect::<Vec<_>>())
            .field("durable", &self.durable)
            .finish_non_exhaustive()
    }
}

/// One step of the flow.
pub(crate) trait Stage<P: IssuerPort>: Send + Sync {
    /// Pass `tx` on ([`Step::Continue`]) or answer it (through
    /// [`Transaction::answer_code`] or [`Transaction::answer_with`]).
    fn run<'a>(
        &self,
        switch: &'a Switch<P>,
        tx: &mut Transaction<'a, P>,
    ) -> impl Future<Output = Step> + Send;
}

/// The flow of one request, in order. The stages up to the issuer's answer run until one
/// of them answers; the closing stages run on every transaction, however it was answered.
pub(crate) async fn run<'a, P: IssuerPort>(switch: &'a Switch<P>, tx: &mut Transaction<'a, P>) {
    let _answered: Step = async {
        Admission.run(switch, tx).await?; // MTI policy, audit health, network management
        DuplicateCheck.run(switch, tx).await?; // in flight: 94; answered: the same answer
        RegistryCheck.run(switch, tx).await?; // merchant and terminal: 58, 03, 12
        BatchSettlement.run(switch, tx).await?; // 0500: 00 in balance (closed) or 95
        ActivityRules.run(switch, tx).await?; // velocity, amount limits: flag or block
        Routing.run(switch, tx).await?; // BIN, MTI, processing code; a reversal's original
        Translation.run(switch, tx).await?; // into the issuer's dialect
        SecureRequest.run(switch, tx).await?; // MAC verified, PIN block to the zone key: 63
        Forwarding.run(switch, tx).await?; // in-flight record, then the issuer link
        IssuerMac.run(switch, tx).await?; // the issuer's MAC: a bad one, outcome unknown
        Reversals.run(switch, tx).await?; // unknown outcomes reversed, approvals remembered
        StandInPolicy.run(switch, tx).await?; // approve in the issuer's place, advise later
        IssuerAnswer.run(switch, tx).await // the issuer's answer, or why there is none
    }
    .await;
    if tx.answer.is_none() {
        // Every path above answers; a stage list that does not is a bug, answered 96.
        let _ = tx.missing("flow", "an answer");
    }
    let _ = TerminalMac.run(switch, tx).await; // the answer MACed with the terminal's key
    let _ = RecordPair.run(switch, tx).await; // the pair record, durable first
    let _ = BatchTotals.run(switch, tx).await; // a recorded approval into its open batch
    let _ = Reply.run(switch, tx).await; // duplicate window, metrics
}
