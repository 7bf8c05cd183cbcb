//! Duplicate detection: the same terminal id, STAN and transmission time as a request in
//! flight is answered 94; as a request answered within the window, with the same answer
//! again, and not forwarded. [`Reply`](super::Reply) completes the entry with the answer.

use switchyard_audit::Outcome;
use switchyard_iso8583::MessageView;

use super::{Stage, Switch};
use crate::flow::IssuerPort;
use crate::integrity::{Duplicate, DuplicateKey};
use crate::shared::{Claim, SharedAnswer, SharedConfig, WhenUnreachable, CLAIM_BEHIND_HOLD};
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
    let terminal = tx.received.field(41).map(|f| f.value()).unwrap_or_default();
    if shared.claims_behind(&terminal) {
        tx.shared_claim = true;
        tx.settle_behind = Some(claim_behind(switch, shared, key));
        return Step::Continue(());
    }
    let started = std::time::Instant::now();
    let claimed = shared.within(shared.state.claim(key.as_bytes())).await;
    switch
        .metrics
        .shared("claim", claimed.is_ok(), started.elapsed());
    if claimed == Ok(Claim::Ours)
        && shared.when_unreachable == WhenUnreachable::Continue
        && !shared.state.at_home(&terminal)
    {
        // A fresh request of it arrived here: its requests arrive here now, and the next
        // ones are claimed behind once the group has it so. (A retransmission of a request
        // another instance has does not move it: the terminal's other requests outstanding
        // there may follow.)
        let (shared, metrics) = (shared.clone(), switch.metrics.clone());
        let terminal = terminal.to_vec();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            match shared.within(shared.state.come_home(&terminal)).await {
                Ok(false) => {} // already named, or being named: nothing asked
                moved => metrics.shared("come-home", moved.is_ok(), started.elapsed()),
            }
        });
    }
    let forget = |tx: &mut Transaction<'_, P>| {
        if let (Some(i), Some(k)) = (&switch.integrity, tx.duplicate.take()) {
            i.finish(k, None);
        }
    };
    match claimed {
        Ok(Claim::Ours) => {
            tx.shared_claim = true;
            // Not in the group's claims, nor in this window, which holds what the other
            // instances answered as far as their followed records tell: all of it only when
            // those are followed up to the stream's end (otherwise a retransmission of one
            // answered elsewhere goes forward again: counted, the continue policy). Fail
            // closed claims and settles every request, so the claims hold all of it.
            if let (Some(integrity), WhenUnreachable::Continue) =
                (&switch.integrity, shared.when_unreachable)
            {
                let current = integrity.group_current();
                let took = std::time::Duration::ZERO;
                switch.metrics.shared("followed", current, took);
            }
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
                tracing::debug!(reason = %why.0, "shared duplicate window unreachable: this instance's view only");
                Step::Continue(())
            }
            WhenUnreachable::FailClosed => {
                tracing::debug!(reason = %why.0, "shared duplicate window unreachable: 91");
                forget(tx);
                tx.answer_code(b"91", Outcome::LinkDown)
            }
        },
    }
}

/// Claim `key` in the group without the request waiting for it. Answered (the answer sent
/// on the channel returned) within [`CLAIM_BEHIND_HOLD`]: no write, the transaction's audit
/// record claims it (the other instances follow the audit stream into their duplicate
/// windows: [`crate::integrity::Integrity::follow_pair`]), counted as `claim-behind`
/// `recorded`. Still in flight then: claimed in flight, settled with the answer later.
/// Answered nothing: nothing to claim (its repeat is handled afresh). The transaction gone
/// without an answer: claimed in flight (it may have been forwarded), left to go stale. A
/// claim another instance made first means both forwarded the request: counted as
/// `claim-behind` `lost` and logged, and that instance's entry is left as it is.
fn claim_behind<P: IssuerPort>(
    switch: &Switch<P>,
    shared: &SharedConfig,
    key: DuplicateKey,
) -> tokio::sync::oneshot::Sender<Option<SharedAnswer>> {
    let (settle, mut answer) = tokio::sync::oneshot::channel();
    let (shared, metrics) = (shared.clone(), switch.metrics.clone());
    tokio::spawn(async move {
        let due = crate::shared::write_behind_at(CLAIM_BEHIND_HOLD);
        let early = tokio::time::timeout_at(due, &mut answer).await;
        let started = std::time::Instant::now();
        let claimed = match early {
            Ok(Ok(None)) => return,
            Ok(Ok(Some(_))) => {
                metrics.shared_result("claim-behind", "recorded", std::time::Duration::ZERO);
                return;
            }
            Ok(Err(_)) | Err(_) => shared.within(shared.state.claim(key.as_bytes())).await,
        };
        let result = match &claimed {
            Ok(Claim::Ours) => "ok",
            Ok(_) => "lost",
            Err(_) => "unreachable",
        };
        metrics.shared_result("claim-behind", result, started.elapsed());
        if result == "lost" {
            tracing::warn!(
                "a request claimed behind was another instance's already: both forwarded it"
            );
        }
        // Claimed while still in flight: its answer settles it.
        let Ok(Claim::Ours) = claimed else {
            return;
        };
        let Ok(kept) = answer.await else {
            return;
        };
        let started = std::time::Instant::now();
        let settled = shared
            .within(shared.state.settle(key.as_bytes(), kept))
            .await;
        metrics.shared("settle", settled.is_ok(), started.elapsed());
    });
    settle
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::testing::{request, shared, Fixture};

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

    /// Another instance's audit record of a request it answered (from the audit stream): a
    /// retransmission here gets that answer from this instance's window and is not
    /// forwarded; a record of a request this instance took itself says the group forwarded
    /// it twice.
    #[tokio::test]
    async fn another_instances_record_answers_a_retransmission_here() {
        let f = Fixture::new();
        let keys = switchyard_audit::AuditKeys::demo();
        let specs = std::collections::HashMap::from([(
            "terminals".to_string(),
            crate::stages::testing::spec(),
        )]);
        let answered_elsewhere = |stan| {
            let request = request("0200", "4761730000000119", 1000, stan);
            let mut b = switchyard_iso8583::MessageBuilder::new(request.spec(), request.mti());
            b.respond_to(&request, b"00").unwrap();
            b.set(38, "A1B2C3").unwrap();
            let response = MessageView::decode(request.spec(), b.encode()).unwrap();
            let now = crate::flow::now_us();
            let mut pair =
                switchyard_audit::PairRecord::from_request("terminals", &request, &keys, now);
            pair.set_response(&response);
            pair.forwarded_us = Some(now);
            pair
        };
        assert!(!f.integrity().follow_pair(&answered_elsewhere(7), &specs));
        let mut again = f.transaction(request("0200", "4761730000000119", 1000, 7));
        assert!(DuplicateCheck.run(&f.switch, &mut again).await.is_break());
        assert_eq!(again.answered().map(|(_, o)| o), Some(Outcome::Duplicate));
        let response = again.answer.as_ref().and_then(|a| a.response.as_ref());
        let field = |n| response.and_then(|r| r.field(n)).map(|f| f.text());
        assert_eq!(
            (field(39), field(38)),
            (Some("00".into()), Some("A1B2C3".into()))
        );
        assert_eq!(field(2), None, "no card number kept");

        // Taken here before the other instance's record came: forwarded twice, and this
        // instance's entry kept.
        let mut here = f.transaction(request("0200", "4761730000000119", 1000, 8));
        assert!(DuplicateCheck.run(&f.switch, &mut here).await.is_continue());
        assert!(f.integrity().follow_pair(&answered_elsewhere(8), &specs));
        let mut repeat = f.transaction(request("0200", "4761730000000119", 1000, 8));
        assert!(DuplicateCheck.run(&f.switch, &mut repeat).await.is_break());
        assert_eq!(
            repeat.answered(),
            Some((Some("94".into()), Outcome::Duplicate))
        );
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

    /// What the group keeps of an approval of `req`.
    fn approved(req: &MessageView<'_>) -> Option<crate::shared::SharedAnswer> {
        let mut b = switchyard_iso8583::MessageBuilder::new(req.spec(), req.mti());
        b.respond_to(req, b"00").unwrap();
        let answer = MessageView::decode(req.spec(), b.encode()).unwrap();
        crate::shared::SharedAnswer::of(req, &answer)
    }

    /// Wait (bounded) for what a spawned task does to the group.
    async fn until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..1000 {
            if done() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        panic!("not seen: {what}");
    }

    /// A terminal's first request on an instance is claimed synchronously and makes that
    /// instance its home; the next ones there are claimed behind (not waited for) and
    /// settled once the claim has landed. Its retransmission on the other instance, where
    /// it is not at home, is claimed synchronously and finds the claim written behind (94)
    /// without moving it; a fresh request there takes its home, so the first instance
    /// claims synchronously again.
    #[tokio::test]
    async fn a_terminal_at_home_has_its_requests_claimed_behind() {
        use crate::stages::testing::{Member, MemoryShared};
        let group = std::sync::Arc::new(MemoryShared::default());
        let member = |name| {
            std::sync::Arc::new(Member {
                group: group.clone(),
                name,
            })
        };
        let (mut one, mut two) = (Fixture::new(), Fixture::new());
        shared(&mut one, member("a"), WhenUnreachable::Continue);
        shared(&mut two, member("b"), WhenUnreachable::Continue);
        let home = || group.home();
        let pan = "4761730000000119";

        let mut first = one.transaction(request("0200", pan, 1000, 1));
        assert!(DuplicateCheck
            .run(&one.switch, &mut first)
            .await
            .is_continue());
        assert!(
            first.shared_claim && first.settle_behind.is_none(),
            "claimed synchronously"
        );
        until("home at a", || home() == Some("a")).await;

        let req = request("0200", pan, 1000, 2);
        let mut second = one.transaction(req.clone());
        assert!(DuplicateCheck
            .run(&one.switch, &mut second)
            .await
            .is_continue());
        assert!(
            second.shared_claim && second.settle_behind.is_some(),
            "claimed behind"
        );
        let key = second.duplicate.unwrap().as_bytes().to_vec();
        until("the claim behind landed", || {
            group.claims.lock().unwrap().get(&key) == Some(&None)
        })
        .await;

        let mut elsewhere = two.transaction(req.clone());
        assert!(DuplicateCheck
            .run(&two.switch, &mut elsewhere)
            .await
            .is_break());
        assert_eq!(
            elsewhere.answered(),
            Some((Some("94".into()), Outcome::Duplicate))
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(home(), Some("a"), "a retransmission does not move it");
        // A fresh request on the other instance does.
        let mut moved = two.transaction(request("0200", pan, 1000, 6));
        assert!(DuplicateCheck
            .run(&two.switch, &mut moved)
            .await
            .is_continue());
        assert!(moved.settle_behind.is_none(), "claimed synchronously");
        until("home at b", || home() == Some("b")).await;
        let mut third = one.transaction(request("0200", pan, 1000, 3));
        assert!(DuplicateCheck
            .run(&one.switch, &mut third)
            .await
            .is_continue());
        assert!(
            third.settle_behind.is_none(),
            "no longer at home: claimed synchronously"
        );

        let kept = approved(&req);
        second
            .settle_behind
            .take()
            .unwrap()
            .send(kept.clone())
            .unwrap();
        until("settled behind", || {
            group.claims.lock().unwrap().get(&key) == Some(&kept)
        })
        .await;
    }

    /// At home: a request answered within the hold is claimed by its audit record alone
    /// (nothing written to the group, counted as recorded); a request answered nothing
    /// leaves nothing in the group either.
    #[tokio::test]
    async fn an_answer_within_the_hold_writes_no_claim() {
        use crate::stages::testing::{Member, MemoryShared};
        let group = std::sync::Arc::new(MemoryShared::default());
        let mut one = Fixture::new();
        let member = Member {
            group: group.clone(),
            name: "a",
        };
        shared(
            &mut one,
            std::sync::Arc::new(member),
            WhenUnreachable::Continue,
        );
        let pan = "4761730000000119";
        let home = || group.home();
        let mut first = one.transaction(request("0200", pan, 1000, 1));
        assert!(DuplicateCheck
            .run(&one.switch, &mut first)
            .await
            .is_continue());
        until("home at a", || home() == Some("a")).await;
        let req = request("0200", pan, 1000, 4);
        let kept = approved(&req);

        let mut fourth = one.transaction(request("0200", pan, 1000, 4));
        assert!(DuplicateCheck
            .run(&one.switch, &mut fourth)
            .await
            .is_continue());
        let key = fourth.duplicate.unwrap().as_bytes().to_vec();
        let behind = fourth.settle_behind.take().expect("at home on a");
        behind.send(kept).unwrap();
        let recorded = [("op", "claim-behind"), ("result", "recorded")];
        until("claimed by its record", || {
            one.counter("switchyard_shared_state_total", &recorded) == 1.0
        })
        .await;
        tokio::time::sleep(CLAIM_BEHIND_HOLD * 3).await;
        assert!(
            !group.claims.lock().unwrap().contains_key(&key),
            "nothing written"
        );
        let mut fifth = one.transaction(request("0200", pan, 1000, 5));
        assert!(DuplicateCheck
            .run(&one.switch, &mut fifth)
            .await
            .is_continue());
        let key = fifth.duplicate.unwrap().as_bytes().to_vec();
        fifth
            .settle_behind
            .take()
            .expect("at home on a")
            .send(None)
            .unwrap();
        tokio::time::sleep(CLAIM_BEHIND_HOLD * 3).await;
        assert!(
            !group.claims.lock().unwrap().contains_key(&key),
            "nothing claimed"
        );
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
