//! Duplicate detection: the same terminal id, STAN and transmission time as a request in
//! flight is answered 94; as a request answered within the window, with the same answer
//! again, and not forwarded. [`Reply`](super::Reply) completes the entry with the answer.

use switchyard_audit::Outcome;
use switchyard_iso8583::MessageView;

use super::{Stage, Switch};
use crate::flow::IssuerPort;
use crate::integrity::{Duplicate, DuplicateKey};
use crate::shared::{Claim, SharedConfig, WhenUnreachable};
use crate::transaction::{Step, Transaction};

/// Requests seen before.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DuplicateCheck;

impl<P: IssuerPort> Stage<P> for DuplicateCheck {
    async fn run<'a>(&self, switch: &'a Switch<P>, tx: &mut Transaction<'a, P>) -> Step {
        let Some(integrity) = &switch.integrity else {
            return Step::Continue(());
        };
        match integrity.begin(&tx.received) {
            Duplicate::NotChecked => Step::Continue(()),
            Duplicate::Fresh(key) => {
                tx.duplicate = Some(key);
                match &switch.shared {
                    Some(shared) => claim_in_group(switch, shared, tx, key).await,
                    None => Step::Continue(()),
                }
            }
            Duplicate::InFlight => tx.answer_code(b"94", Outcome::Duplicate),
            Duplicate::Answered(previous) => {
                let previous = MessageView::decode(tx.received.spec(), previous).ok();
                tx.answer_with(previous, Outcome::Duplicate)
            }
        }
    }
}

/// A request fresh here, claimed in the group: the first instance to claim it forwards it;
/// another has it in flight (94) or answered it (the same answer). Unreachable: the policy.
async fn claim_in_group<P: IssuerPort>(
    switch: &Switch<P>,
    shared: &SharedConfig,
    tx: &mut Transaction<'_, P>,
    key: DuplicateKey,
) -> Step {
    let started = std::time::Instant::now();
    let claimed = shared.within(shared.state.claim(key.as_bytes())).await;
    switch
        .metrics
        .shared("claim", claimed.is_ok(), started.elapsed());
    let forget = |tx: &mut Transaction<'_, P>| {
        if let (Some(i), Some(k)) = (&switch.integrity, tx.duplicate.take()) {
            i.finish(k, None);
        }
    };
    match claimed {
        Ok(Claim::Ours) => {
            tx.shared_claim = true;
            Step::Continue(())
        }
        Ok(Claim::InFlight) => {
            forget(tx);
            tx.answer_code(b"94", Outcome::Duplicate)
        }
        Ok(Claim::Answered(answer)) => {
            forget(tx);
            let again = answer
                .answer_to(&tx.received)
                .and_then(|b| MessageView::decode(tx.received.spec(), b).ok());
            tx.answer_with(again, Outcome::Duplicate)
        }
        Err(why) => match shared.when_unreachable {
            WhenUnreachable::Continue => {
                tracing::warn!(reason = %why.0, "shared duplicate window unreachable: this instance's view only");
                Step::Continue(())
            }
            WhenUnreachable::FailClosed => {
                tracing::warn!(reason = %why.0, "shared duplicate window unreachable: 91");
                forget(tx);
                tx.answer_code(b"91", Outcome::LinkDown)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::testing::{request, Fixture};

    #[tokio::test]
    async fn answers_a_request_in_flight_94_and_an_answered_one_as_before() {
        let f = Fixture::new();
        let first = request("0200", "4761730000000119", 1000, 7);
        let mut tx = f.transaction(first.clone());
        assert!(DuplicateCheck.run(&f.switch, &mut tx).await.is_continue());
        let key = tx.duplicate.expect("a fresh request keeps its key");

        let mut again = f.transaction(first.clone());
        assert!(DuplicateCheck.run(&f.switch, &mut again).await.is_break());
        assert_eq!(
            again.answered(),
            Some((Some("94".into()), Outcome::Duplicate))
        );

        // Answered: the same answer, byte for byte.
        let mut b = switchyard_iso8583::MessageBuilder::new(first.spec(), first.mti());
        b.respond_to(&first, b"05").unwrap();
        let answer = b.encode();
        f.integrity().finish(key, Some(&answer));
        let mut third = f.transaction(first);
        assert!(DuplicateCheck.run(&f.switch, &mut third).await.is_break());
        let response = third.answer.as_ref().and_then(|a| a.response.as_ref());
        assert_eq!(response.map(|r| r.buffer().clone()), Some(answer));
        assert_eq!(third.answered().map(|(_, o)| o), Some(Outcome::Duplicate));
    }

    #[tokio::test]
    async fn passes_what_it_does_not_check() {
        let f = Fixture::new();
        // Reversals are not subject to duplicate detection; other STANs are other requests.
        for req in [
            request("0400", "4761730000000119", 1000, 7),
            request("0400", "4761730000000119", 1000, 7),
            request("0200", "4761730000000119", 1000, 8),
        ] {
            let mut tx = f.transaction(req);
            assert!(DuplicateCheck.run(&f.switch, &mut tx).await.is_continue());
            assert!(tx.answer.is_none());
        }
    }

    fn shared(
        f: &mut Fixture,
        state: std::sync::Arc<crate::stages::testing::MemoryShared>,
        when: WhenUnreachable,
    ) {
        let timeout = std::time::Duration::from_millis(100);
        f.switch.shared = Some(SharedConfig::new(state, timeout, when));
    }

    /// Two instances on one shared window: the second sees the first's request in flight
    /// (94), then its answer (the same code and authorisation id, built for the request).
    #[tokio::test]
    async fn a_request_another_instance_has_is_answered_from_the_group() {
        let state = std::sync::Arc::new(crate::stages::testing::MemoryShared::default());
        let (mut one, mut two) = (Fixture::new(), Fixture::new());
        shared(&mut one, state.clone(), WhenUnreachable::Continue);
        shared(&mut two, state.clone(), WhenUnreachable::Continue);
        let req = request("0200", "4761730000000119", 1000, 7);
        let mut first = one.transaction(req.clone());
        assert!(DuplicateCheck
            .run(&one.switch, &mut first)
            .await
            .is_continue());
        assert!(first.shared_claim);
        let mut elsewhere = two.transaction(req.clone());
        assert!(DuplicateCheck
            .run(&two.switch, &mut elsewhere)
            .await
            .is_break());
        assert_eq!(
            elsewhere.answered(),
            Some((Some("94".into()), Outcome::Duplicate))
        );
        let mut b = switchyard_iso8583::MessageBuilder::new(req.spec(), req.mti());
        b.respond_to(&req, b"00")
            .unwrap()
            .set(38, "A1B2C3")
            .unwrap();
        let answer = MessageView::decode(req.spec(), b.encode()).unwrap();
        let kept = crate::shared::SharedAnswer::of(&req, &answer).unwrap();
        use crate::shared::SharedState;
        let key = first.duplicate.unwrap();
        state.settle(key.as_bytes(), Some(kept)).await.unwrap();
        let mut later = two.transaction(req);
        assert!(DuplicateCheck.run(&two.switch, &mut later).await.is_break());
        assert_eq!(
            later.answered(),
            Some((Some("00".into()), Outcome::Duplicate))
        );
        let again = later
            .answer
            .as_ref()
            .and_then(|a| a.response.as_ref())
            .unwrap();
        assert_eq!(again.field(38).map(|f| f.text()).as_deref(), Some("A1B2C3"));
        assert_eq!(again.field(11).map(|f| f.text()).as_deref(), Some("000007"));
    }

    /// The broker down: fail closed answers 91 and forgets the request here (its repeat is
    /// handled afresh); continue forwards on this instance's own view.
    #[tokio::test]
    async fn an_unreachable_group_fails_closed_or_continues_as_configured() {
        let down = std::sync::Arc::new(crate::stages::testing::MemoryShared {
            down: true,
            ..Default::default()
        });
        let mut closed = Fixture::new();
        shared(&mut closed, down.clone(), WhenUnreachable::FailClosed);
        let req = request("0200", "4761730000000119", 1000, 9);
        let mut tx = closed.transaction(req.clone());
        assert!(DuplicateCheck.run(&closed.switch, &mut tx).await.is_break());
        assert_eq!(tx.answered(), Some((Some("91".into()), Outcome::LinkDown)));
        assert!(
            matches!(closed.integrity().begin(&req), Duplicate::Fresh(_)),
            "forgotten"
        );
        let mut open = Fixture::new();
        shared(&mut open, down, WhenUnreachable::Continue);
        let mut tx = open.transaction(req);
        assert!(DuplicateCheck
            .run(&open.switch, &mut tx)
            .await
            .is_continue());
        assert!(!tx.shared_claim);
    }
}
