//! Recording the pair: the request and its answer in one audit record, durable before the
//! terminal is answered (unless configured otherwise). When the record cannot be kept the
//! terminal is told 96 instead, and an approval it would have had is reversed.

use std::time::Instant;

use switchyard_audit::{Outcome, PairRecord, RecordKind};

use super::{Stage, Switch};
use crate::flow::{now_us, IssuerPort};
use crate::saf::ReversalBasis;
use crate::transaction::{own_answer_for_response, Step, Transaction};

/// The audit pair.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordPair;

impl<P: IssuerPort> Stage<P> for RecordPair {
    async fn run<'a>(&self, switch: &'a Switch<P>, tx: &mut Transaction<'a, P>) -> Step {
        let Some(answer) = tx.answer.as_mut() else {
            return Step::Continue(());
        };
        if let Some(response) = &answer.response {
            tx.pair.set_response_with(response, switch.partial_amount);
        }
        tx.recorded = append_pair(switch, &mut tx.pair, answer.outcome, tx.started).await;
        if tx.recorded {
            return Step::Continue(());
        }
        answer.response = answer
            .response
            .take()
            .and_then(|a| own_answer_for_response(&a, b"96"));
        let unreversed = tx.pair.reversal_id.is_none();
        if let (Outcome::Approved, true, Some(integrity), Some(link)) = (
            answer.outcome,
            unreversed,
            &switch.integrity,
            &tx.pair.issuer,
        ) {
            // The approval could not be recorded and the terminal is told 96: take it back.
            let basis = ReversalBasis::of(&tx.received, None);
            let queued = integrity
                .saf
                .enqueue(link, "approval not recorded", basis, tx.pair.inflight_seq)
                .await;
            if let Err(e) = queued {
                tracing::error!(error = %e, "could not queue the reversal of an unrecorded approval");
            }
        }
        Step::Continue(())
    }
}

/// Append `pair` as it ended (`outcome`, answered now, `started` when read), waiting for it
/// to be durable when the switch is configured so; whether it is kept.
pub(crate) async fn append_pair<P>(
    switch: &Switch<P>,
    pair: &mut PairRecord,
    outcome: Outcome,
    started: Instant,
) -> bool {
    pair.answered_us = Some(now_us());
    pair.latency_us = Some(started.elapsed().as_micros() as u64);
    pair.outcome = Some(outcome);
    if let (None, Some(day)) = (&pair.business_date, &switch.business_day) {
        let number = crate::business_day::date_number(day.day_at(pair.received_us));
        pair.business_date = Some(switchyard_audit::ShortText::digits(number, 8));
    }
    let payload = match switch.audit.encode(pair) {
        Ok(p) => p,
        Err(error) => {
            tracing::error!(%error, "audit record does not serialise");
            return false;
        }
    };
    let appended = Instant::now();
    let result = if switch.durable {
        switch
            .audit
            .append(RecordKind::Pair, payload)
            .await
            .map(|_| ())
    } else {
        switch.audit.append_nowait(RecordKind::Pair, payload)
    };
    switch.metrics.audit_latency(appended.elapsed());
    match result {
        Ok(()) => true,
        Err(error) => {
            switch.metrics.audit_failure();
            tracing::error!(%error, "audit append failed: answering 96");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::testing::{request, Fixture, Options};
    use crate::stages::IssuerAnswer;
    use switchyard_audit::{query, Filter, OnDamage};

    #[tokio::test]
    async fn records_the_pair_with_its_answer_and_outcome() {
        let f = Fixture::new();
        let mut tx = f
            .forwarded(request("0200", "4761730000000119", 1000, 3))
            .await;
        let _ = IssuerAnswer.run(&f.switch, &mut tx).await;
        let _ = RecordPair.run(&f.switch, &mut tx).await;
        assert!(tx.recorded);
        let mut found = Vec::new();
        let (dir, chain, filter) = (
            f.switch.audit.dir(),
            f.switch.keys.chain(),
            Filter::default(),
        );
        query(dir, chain, OnDamage::Stop, &filter, |_, r| found.push(r)).unwrap();
        assert_eq!(found.len(), 1, "durable before the answer");
        let r = &found[0];
        assert_eq!(r.outcome, Some(Outcome::Approved));
        assert_eq!(r.response_code.as_deref(), Some("00"));
        assert_eq!(r.stan.as_deref(), Some("000003"));
        assert!(r.answered_us.is_some() && r.latency_us.is_some());
        assert_eq!(tx.answered(), Some((Some("00".into()), Outcome::Approved)));
    }

    #[tokio::test]
    async fn an_approval_that_cannot_be_recorded_becomes_96_and_is_reversed() {
        let f = Fixture::with(Options {
            // The in-flight record is kept; the pair is not.
            audit_fails_after_syncs: Some(1),
            ..Options::default()
        });
        let mut tx = f
            .forwarded(request("0200", "4761730000000119", 1000, 3))
            .await;
        assert!(tx.pair.inflight_seq.is_some());
        tx.pair.issuer = Some("issuer".into());
        let _ = IssuerAnswer.run(&f.switch, &mut tx).await;
        let _ = RecordPair.run(&f.switch, &mut tx).await;
        assert!(!tx.recorded);
        assert_eq!(tx.answered(), Some((Some("96".into()), Outcome::Approved)));
        let entries = f.integrity().saf.list();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].reason, "approval not recorded");
        assert_eq!(
            f.counter("switchyard_audit_append_failures_total", &[]),
            1.0
        );
    }
}
