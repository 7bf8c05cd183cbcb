//! The issuer's answer for the terminal: its response, back in the terminal's dialect
//! (approved or declined by field 39), or the switch's own answer saying why there is none
//! (91 link down, busy, timed out, connection lost or an unusable answer; 94 a duplicate in
//! flight on the link; 96 not sent or an answer that does not fit the terminal's dialect).
//! An issuer's decline counts towards the terminal's decline-burst rule.

use switchyard_audit::Outcome;
use switchyard_mux::MuxError;

use super::{Stage, Switch};
use crate::flow::{translate, IssuerPort};
use crate::transaction::{Step, Transaction};

/// The last of the stages before the record: it always answers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IssuerAnswer;

impl<P: IssuerPort> Stage<P> for IssuerAnswer {
    async fn run<'a>(&self, switch: &'a Switch<P>, tx: &mut Transaction<'a, P>) -> Step {
        let (Some(route), Some(forwarded)) = (tx.route, tx.forwarded.take()) else {
            return tx.missing("issuer answer", "the issuer link's answer");
        };
        let response = match forwarded.result {
            Ok(response) => response,
            Err(MuxError::ResponseRefused { reason, .. }) => {
                let code = switch.security.as_ref().map_or(*b"63", |s| s.response_code);
                tracing::warn!(link = route.link_name, reason, "issuer answer refused");
                return tx.answer_code(&code, Outcome::SecurityError);
            }
            Err(error) => {
                let (code, outcome) = failure(&error);
                tracing::info!(link = route.link_name, %error, "no issuer answer");
                return tx.answer_code(code, outcome);
            }
        };
        let approved = Outcome::approves(&response);
        if let (false, Some(registry), Some(terminal)) = (approved, tx.registry, &tx.pair.terminal)
        {
            switch.rule_state.declined(&registry.rules, terminal);
        }
        let response = if tx.same_dialect() {
            response
        } else {
            match translate(&response, tx.request().spec()) {
                Ok(v) => v,
                Err(error) => {
                    tracing::error!(link = route.link_name, %error, "issuer response does not fit the terminal's dialect");
                    return tx.answer_code(b"96", Outcome::IssuerError);
                }
            }
        };
        let outcome = if Outcome::approves(&response) {
            Outcome::Approved
        } else {
            Outcome::Declined
        };
        tx.answer_with(Some(response), outcome)
    }
}

/// The response code and outcome of a request the issuer did not answer.
fn failure(error: &MuxError) -> (&'static [u8], Outcome) {
    match error {
        MuxError::LinkDown { .. } => (b"91", Outcome::LinkDown),
        MuxError::LinkBusy { .. } => (b"91", Outcome::LinkBusy),
        MuxError::Timeout { .. } => (b"91", Outcome::Timeout),
        MuxError::ConnectionLost { .. } => (b"91", Outcome::ConnectionLost),
        MuxError::MalformedResponse { .. } => (b"91", Outcome::IssuerError),
        MuxError::DuplicateInFlight { .. } => (b"94", Outcome::Duplicate),
        _ => (b"96", Outcome::SystemError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::testing::{request, Fixture, Options};

    #[tokio::test]
    async fn answers_each_issuer_result_with_its_code_and_outcome() {
        let f = Fixture::new();
        for (amount, code, outcome) in [
            (1000, "00", Outcome::Approved),
            (1001, "05", Outcome::Declined),
            (1, "91", Outcome::Timeout),
            (2, "91", Outcome::LinkDown),
            (3, "91", Outcome::LinkBusy),
            (4, "91", Outcome::ConnectionLost),
            (5, "94", Outcome::Duplicate),
        ] {
            let mut tx = f
                .forwarded(request("0200", "4761730000000119", amount, 9))
                .await;
            assert!(IssuerAnswer.run(&f.switch, &mut tx).await.is_break());
            assert_eq!(
                tx.answered(),
                Some((Some(code.into()), outcome)),
                "{amount}"
            );
            let response = tx.answer.as_ref().unwrap().response.as_ref().unwrap();
            assert_eq!(response.str(11), Some("000009"), "answers echo the STAN");
        }
    }

    #[tokio::test]
    async fn brings_the_answer_back_into_the_terminals_dialect() {
        let f = Fixture::with(Options {
            issuer_spec: Some("iso8583-1987-bcd"),
            ..Options::default()
        });
        let mut tx = f
            .forwarded(request("0200", "4761730000000119", 1000, 9))
            .await;
        assert!(IssuerAnswer.run(&f.switch, &mut tx).await.is_break());
        let response = tx.answer.as_ref().unwrap().response.as_ref().unwrap();
        assert_eq!(response.spec().name(), "iso8583-1987-ascii");
        assert_eq!(
            (response.str(39), response.str(38)),
            (Some("00"), Some("AUTH01"))
        );
    }
}
