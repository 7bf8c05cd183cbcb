//! Admission: which messages the switch takes at all.
//!
//! A response sent by a terminal answers nothing of ours and gets no answer; while the
//! audit log has failed nothing is approved (96); network management (08xx) is answered by
//! the switch itself; authorisations, financials and reversals (01xx, 02xx, 04xx) go on;
//! anything else is an invalid transaction (12).

use switchyard_audit::Outcome;

use super::{Stage, Switch};
use crate::flow::IssuerPort;
use crate::transaction::{Step, Transaction};

/// MTI policy and audit health.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admission;

impl<P: IssuerPort> Stage<P> for Admission {
    async fn run<'a>(&self, switch: &'a Switch<P>, tx: &mut Transaction<'a, P>) -> Step {
        let mti = tx.received.mti();
        if !mti.is_request() {
            return tx.answer_with(None, Outcome::InvalidTransaction);
        }
        if switch.audit.is_failed() {
            // No record can be kept: stop approving.
            return tx.answer_code(b"96", Outcome::SystemError);
        }
        match mti.class() {
            8 => tx.answer_code(b"00", Outcome::SwitchAnswered),
            1 | 2 | 4 => Step::Continue(()),
            3 | 5 if switch.batches.is_some() => Step::Continue(()),
            _ => tx.answer_code(b"12", Outcome::InvalidTransaction),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::testing::{request, Fixture, Options};

    #[tokio::test]
    async fn passes_requests_and_answers_the_rest() {
        let f = Fixture::new();
        for (mti, expected) in [
            ("0100", None),
            ("0200", None),
            ("0400", None),
            ("0800", Some((Some("00"), Outcome::SwitchAnswered))),
            ("0600", Some((Some("12"), Outcome::InvalidTransaction))),
            ("0110", Some((None, Outcome::InvalidTransaction))),
        ] {
            let mut tx = f.transaction(request(mti, "4761730000000119", 1000, 1));
            let step = Admission.run(&f.switch, &mut tx).await;
            assert_eq!(step.is_break(), expected.is_some(), "{mti}");
            assert_eq!(
                tx.answered().as_ref().map(|(c, o)| (c.as_deref(), *o)),
                expected,
                "{mti}"
            );
        }
    }

    #[tokio::test]
    async fn refuses_to_approve_without_an_audit_log() {
        let f = Fixture::with(Options {
            audit_fails_after_syncs: Some(0),
            ..Options::default()
        });
        f.fail_audit().await;
        let mut tx = f.transaction(request("0200", "4761730000000119", 1000, 1));
        assert!(Admission.run(&f.switch, &mut tx).await.is_break());
        assert_eq!(
            tx.answered(),
            Some((Some("96".into()), Outcome::SystemError))
        );
    }
}
