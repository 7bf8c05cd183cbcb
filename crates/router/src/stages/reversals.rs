//! The outcome policy's reversal side: what the issuer link's answer obliges the switch to
//! remember or undo. Where a forwarded authorisation or financial went is remembered (a
//! terminal's reversal of it goes there too); an unknown outcome (timeout, connection lost,
//! unusable answer) queues a reversal in the store-and-forward queue; an approval is kept
//! until its answer has surely left (an undelivered one is reversed).

use switchyard_audit::{Outcome, ShortText};

use super::{Stage, Switch};
use crate::flow::IssuerPort;
use crate::saf::ReversalBasis;
use crate::transaction::{Step, Transaction};

/// Reversals and the indexes they need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reversals;

impl<P: IssuerPort> Stage<P> for Reversals {
    async fn run<'a>(&self, switch: &'a Switch<P>, tx: &mut Transaction<'a, P>) -> Step {
        let Some(integrity) = &switch.integrity else {
            return Step::Continue(());
        };
        let (Some(route), Some(forwarded), Some(outbound)) =
            (tx.route, tx.forwarded.as_ref(), tx.outbound.as_ref())
        else {
            return tx.missing("reversals", "the issuer link's answer");
        };
        let pair = &tx.pair;
        if matches!(tx.received.mti().class(), 1 | 2) {
            if let (Some(t), Some(s)) = (&pair.terminal, &pair.stan) {
                let f7 = tx
                    .request()
                    .field(7)
                    .map(|f| ShortText::of_field(&f, false))
                    .unwrap_or_default();
                let issuer_stan = pair.issuer_stan.as_ref().unwrap_or(s);
                // The other instances learn it from this transaction's audit record.
                integrity.forwarded(t, s, &f7, route.link_name, issuer_stan);
            }
        }
        let basis = |kept: Option<ReversalBasis>| {
            kept.unwrap_or_else(|| ReversalBasis::of(outbound, forwarded.issuer_stan))
        };
        match &forwarded.result {
            Err(error) if error.outcome_unknown() => {
                let basis = basis(tx.inflight_basis.take());
                let reason = error.to_string();
                match integrity
                    .saf
                    .enqueue(route.link_name, &reason, basis, tx.pair.inflight_seq)
                    .await
                {
                    Ok(id) => tx.pair.reversal_id = Some(id),
                    Err(e) => tracing::error!(error = %e, "could not queue a reversal"),
                }
            }
            Ok(response) if Outcome::approves(response) => {
                if let (Some(t), Some(s)) = (&pair.terminal, &pair.stan) {
                    let basis = basis(tx.inflight_basis.take());
                    integrity.approved(t, s, route.link_name, basis, pair.inflight_seq);
                }
            }
            _ => {}
        }
        Step::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::testing::{request, request_with, Fixture};

    #[tokio::test]
    async fn an_unknown_outcome_queues_its_reversal() {
        let f = Fixture::new();
        // Amount 1: the scripted issuer times out.
        let mut tx = f.forwarded(request("0200", "4761730000000119", 1, 5)).await;
        assert!(Reversals.run(&f.switch, &mut tx).await.is_continue());
        assert!(tx.answer.is_none());
        let id = tx.pair.reversal_id.expect("a reversal is queued");
        let entries = f.integrity().saf.list();
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].id, entries[0].link.as_str()), (id, "issuer"));
        assert_eq!(entries[0].basis.original_mti.as_str(), "0200");
        assert_eq!(entries[0].basis.issuer_stan.as_str(), "004242");
    }

    #[tokio::test]
    async fn a_decline_or_a_down_link_queues_nothing() {
        let f = Fixture::new();
        // 1001: declined; 2: link down (never sent, nothing to undo).
        for amount in [1001, 2] {
            let mut tx = f
                .forwarded(request("0200", "4761730000000119", amount, 5))
                .await;
            assert!(Reversals.run(&f.switch, &mut tx).await.is_continue());
            assert!(tx.pair.reversal_id.is_none(), "{amount}");
        }
        assert!(f.integrity().saf.list().is_empty());
    }

    #[tokio::test]
    async fn remembers_where_a_request_went_and_an_approval_until_delivered() {
        let f = Fixture::new();
        let mut tx = f
            .forwarded(request("0200", "4761730000000119", 1000, 5))
            .await;
        assert!(Reversals.run(&f.switch, &mut tx).await.is_continue());
        assert!(
            f.integrity().saf.list().is_empty(),
            "an approval is not reversed"
        );

        // The terminal's reversal of it finds the link and the issuer's STAN.
        let f90 = "020000000511240930000000000000000000000000";
        let reversal = request_with("0400", "4761730000000119", 1000, 6, &[(90, f90)]);
        let (link, issuer_stan) = f.integrity().original_of(&reversal).expect("remembered");
        assert_eq!((link.as_str(), issuer_stan.as_str()), ("issuer", "004242"));

        // The approval never reached the terminal: it is reversed.
        let answer = tx.forwarded.take().unwrap().result.unwrap();
        f.integrity().undelivered(&answer).await;
        let entries = f.integrity().saf.list();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].reason, "terminal gone before its approval");
    }

    #[test]
    fn another_instances_record_says_where_its_request_went() {
        let f = Fixture::new();
        let keys = switchyard_audit::AuditKeys::demo();
        let forwarded_elsewhere = |mti: &str, at: Option<i64>| {
            let request = request("0200", "4761730000000119", 1000, 7);
            let mut pair = switchyard_audit::PairRecord::from_request("t", &request, &keys, 1);
            pair.request_mti = mti.into();
            pair.forwarded_us = at;
            pair.issuer = Some("issuer".into());
            pair.issuer_stan = Some("314159".into());
            pair
        };
        let f90 = "020000000711240930000000000000000000000000";
        let reversal = request_with("0400", "4761730000000119", 1000, 8, &[(90, f90)]);
        let specs = std::collections::HashMap::new();
        // Not forwarded (answered by the switch), or a network message: nothing to reverse.
        f.integrity()
            .follow_pair(&forwarded_elsewhere("0200", None), &specs);
        f.integrity()
            .follow_pair(&forwarded_elsewhere("0800", Some(1)), &specs);
        assert!(f.integrity().original_of(&reversal).is_none());
        f.integrity()
            .follow_pair(&forwarded_elsewhere("0200", Some(1)), &specs);
        let (link, issuer_stan) = f.integrity().original_of(&reversal).expect("followed");
        assert_eq!((link.as_str(), issuer_stan.as_str()), ("issuer", "314159"));
    }
}
