//! The outcome policy's stand-in side: while a route's issuer link is down or busy, approve
//! in its place within the route's limits (floor limit, merchant categories, processing
//! codes) with the switch's own authorisation id, and queue a 0120/0220 advice that tells
//! the issuer later. Outside the limits, or without a queue for the advice, the request
//! goes on to be answered 91.

use switchyard_audit::Outcome;
use switchyard_iso8583::{MessageBuilder, MessageView, Spec};
use switchyard_mux::MuxError;

use super::{Stage, Switch};
use crate::flow::{now_us, IssuerPort};
use crate::integrity::Integrity;
use crate::routes::StandIn;
use crate::saf::ReversalBasis;
use crate::transaction::{Step, Transaction};

/// Stand-in processing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StandInPolicy;

impl<P: IssuerPort> Stage<P> for StandInPolicy {
    async fn run<'a>(&self, switch: &'a Switch<P>, tx: &mut Transaction<'a, P>) -> Step {
        let (Some(route), Some(forwarded)) = (tx.route, tx.forwarded.as_ref()) else {
            return tx.missing("stand-in", "the issuer link's answer");
        };
        let unreachable = matches!(
            forwarded.result,
            Err(MuxError::LinkDown { .. } | MuxError::LinkBusy { .. })
        );
        let (true, Some(limits), Some(integrity)) =
            (unreachable, route.stand_in, switch.integrity.as_ref())
        else {
            return Step::Continue(());
        };
        if !within(limits, tx) {
            return Step::Continue(());
        }
        let Some((answer, auth_id)) = approval(tx.request()) else {
            return Step::Continue(());
        };
        match advise(integrity, tx, route.link_name, &auth_id).await {
            Some(id) => {
                tx.pair.reversal_id = Some(id);
                tx.answer_with(Some(answer), Outcome::StandInApproved)
            }
            None => Step::Continue(()),
        }
    }
}

/// Whether the request is within the route's stand-in limits; the MCC is field 18 or the
/// terminal's merchant's registered one.
fn within<P: IssuerPort>(limits: &StandIn, tx: &Transaction<'_, P>) -> bool {
    let request = tx.request();
    let Some(amount) = request.field(4).and_then(|f| f.as_u64()) else {
        return false;
    };
    let mcc = request.field(18).map(|f| f.text()).or_else(|| {
        let terminal = tx.pair.terminal.as_deref()?;
        tx.registry?.merchant_of(terminal).map(|m| m.mcc.clone())
    });
    let processing = request.field(3).map(|f| f.text()).unwrap_or_default();
    amount <= limits.floor_limit
        && (limits.mccs.is_empty() || mcc.is_some_and(|m| limits.mccs.contains(&m)))
        && (limits.processing_codes.is_empty()
            || limits
                .processing_codes
                .iter()
                .any(|p| processing.starts_with(p.as_str())))
}

/// The switch's approval of `request`, with its own authorisation id (field 38).
fn approval(request: &MessageView<'static>) -> Option<(MessageView<'static>, String)> {
    let auth_id = format!("S{:05}", now_us().rem_euclid(100_000));
    let spec: &'static Spec = request.spec();
    let mut b = MessageBuilder::new(spec, request.mti());
    b.respond_to(request, b"00").ok()?;
    if spec.field(38).is_some() {
        b.set(38, &auth_id).ok()?;
    }
    let answer = MessageView::decode(spec, b.encode()).ok()?;
    Some((answer, auth_id))
}

/// Queue the advice (0120 for an authorisation, 0220 for a financial) that tells the
/// issuer of the approval; its queue id.
async fn advise<P: IssuerPort>(
    integrity: &Integrity,
    tx: &Transaction<'_, P>,
    link: &str,
    auth_id: &str,
) -> Option<u64> {
    let outbound = tx.outbound.as_ref()?;
    let mut basis = ReversalBasis::of(outbound, None);
    basis.fields.insert(38, auth_id);
    basis.fields.insert(39, "00");
    let advice = if tx.request().mti().class() == 1 {
        "0120"
    } else {
        "0220"
    };
    match integrity
        .saf
        .enqueue_as(link, "stand-in advice", basis, None, Some(advice.into()))
        .await
    {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::error!(error = %e, "stand-in advice not queued: declining");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::testing::{request, request_with, Fixture, Options};

    fn limits() -> Options {
        Options {
            stand_in: Some(StandIn {
                floor_limit: 5000,
                mccs: vec!["5411".into()],
                processing_codes: vec!["00".into()],
            }),
            ..Options::default()
        }
    }

    #[tokio::test]
    async fn approves_within_the_limits_while_the_link_is_down_and_queues_the_advice() {
        let f = Fixture::with(limits());
        // Amount 2: the scripted link is down. Field 18 5411: an allowed category.
        let req = request_with("0100", "4761730000000119", 2, 1, &[(18, "5411")]);
        let mut tx = f.forwarded(req).await;
        assert!(StandInPolicy.run(&f.switch, &mut tx).await.is_break());
        assert_eq!(
            tx.answered(),
            Some((Some("00".into()), Outcome::StandInApproved))
        );
        let answer = tx.answer.as_ref().unwrap().response.as_ref().unwrap();
        assert!(answer
            .str(38)
            .is_some_and(|a| a.starts_with('S') && a.len() == 6));
        let entries = f.integrity().saf.list();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].first_mti.as_deref(), Some("0120"));
        assert_eq!(entries[0].basis.fields.get(38), answer.str(38));
        assert_eq!(tx.pair.reversal_id, Some(entries[0].id));
    }

    #[tokio::test]
    async fn passes_on_outside_the_limits_or_when_the_issuer_answered() {
        let f = Fixture::with(limits());
        for (req, why) in [
            (
                request_with("0200", "4761730000000119", 2, 1, &[(18, "5812")]),
                "category",
            ),
            (
                request_with(
                    "0200",
                    "4761730000000119",
                    2,
                    2,
                    &[(3, "200000"), (18, "5411")],
                ),
                "processing code",
            ),
            (
                request_with("0200", "4761730000000119", 1000, 3, &[(18, "5411")]),
                "issuer answered",
            ),
            (
                request("0200", "4761730000000119", 1, 4),
                "timed out: outcome unknown",
            ),
        ] {
            let mut tx = f.forwarded(req).await;
            assert!(
                StandInPolicy.run(&f.switch, &mut tx).await.is_continue(),
                "{why}"
            );
            assert!(tx.answer.is_none(), "{why}");
        }
        assert!(f.integrity().saf.list().is_empty());
    }
}
