//! Answering: the answer that goes to the terminal is remembered for its duplicates (a
//! request answered nothing is forgotten, so that its repeat is handled afresh), and the
//! transaction is counted by listener, route, MTI, outcome and response code.

use super::{Stage, Switch};
use crate::flow::IssuerPort;
use crate::shared::SharedAnswer;
use crate::transaction::{Step, Transaction};

/// The duplicate window and the metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reply;

impl<P: IssuerPort> Stage<P> for Reply {
    async fn run<'a>(&self, switch: &'a Switch<P>, tx: &mut Transaction<'a, P>) -> Step {
        let Some(answer) = &tx.answer else {
            return Step::Continue(());
        };
        if let (Some(integrity), Some(key)) = (&switch.integrity, tx.duplicate.take()) {
            integrity.finish(key, answer.response.as_ref().map(|a| a.buffer()));
            if let (true, Some(shared)) = (tx.shared_claim, &switch.shared) {
                // The group learns the answer without the terminal waiting for it: a
                // retransmission elsewhere meanwhile is told 94, then this answer.
                let kept = answer
                    .response
                    .as_ref()
                    .and_then(|a| SharedAnswer::of(&tx.received, a));
                if let Some(behind) = tx.settle_behind.take() {
                    // Claimed behind: its claim's writer settles it once the claim has landed
                    // (gone already if the claim failed).
                    let _ = behind.send(kept);
                } else {
                    let (shared, metrics) = (shared.clone(), switch.metrics.clone());
                    tokio::spawn(async move {
                        let started = std::time::Instant::now();
                        let settled = shared
                            .within(shared.state.settle(key.as_bytes(), kept))
                            .await;
                        metrics.shared("settle", settled.is_ok(), started.elapsed());
                    });
                }
            }
        }
        switch.metrics.observe(
            tx.listener,
            tx.pair.route.as_deref().unwrap_or("none"),
            tx.received.mti(),
            answer.outcome,
            answer.response.as_ref(),
            tx.started.elapsed(),
        );
        Step::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::Duplicate;
    use crate::stages::testing::{request, Fixture};
    use crate::stages::DuplicateCheck;
    use switchyard_audit::Outcome;

    #[tokio::test]
    async fn remembers_the_answer_for_duplicates_and_counts_it() {
        let f = Fixture::new();
        let req = request("0200", "4761730000000119", 1000, 4);
        let mut tx = f.transaction(req.clone());
        assert!(DuplicateCheck.run(&f.switch, &mut tx).await.is_continue());
        let _ = tx.answer_code(b"05", Outcome::Declined);
        let _ = Reply.run(&f.switch, &mut tx).await;
        assert!(tx.duplicate.is_none(), "the entry is completed once");
        let sent = tx
            .answer
            .as_ref()
            .unwrap()
            .response
            .as_ref()
            .unwrap()
            .buffer()
            .clone();
        match f.integrity().begin(&req) {
            Duplicate::Answered(previous) => assert_eq!(previous, sent),
            other => panic!("expected the remembered answer, got {other:?}"),
        }
        assert_eq!(
            f.counter(
                "switchyard_requests_total",
                &[
                    ("listener", "terminals"),
                    ("route", "none"),
                    ("outcome", "declined")
                ]
            ),
            1.0
        );
        assert_eq!(
            f.counter("switchyard_responses_total", &[("response_code", "05")]),
            1.0
        );
    }

    #[tokio::test]
    async fn forgets_a_request_that_got_no_answer() {
        let f = Fixture::new();
        let req = request("0200", "4761730000000119", 1000, 4);
        let mut tx = f.transaction(req.clone());
        let _ = DuplicateCheck.run(&f.switch, &mut tx).await;
        let _ = tx.answer_with(None, Outcome::SystemError);
        let _ = Reply.run(&f.switch, &mut tx).await;
        assert!(matches!(f.integrity().begin(&req), Duplicate::Fresh(_)));
    }
}
