//! The registry check: the terminal and its merchant are known, active and allowed this
//! transaction (58 for the terminal or its certificate, 03 for the merchant, 12 for a
//! transaction type or currency the merchant may not take). Each refusal is counted and
//! named in the pair record.

use switchyard_audit::Outcome;

use super::{Stage, Switch};
use crate::flow::IssuerPort;
use crate::transaction::{Step, Transaction};

/// Merchants and terminals.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RegistryCheck;

impl<P: IssuerPort> Stage<P> for RegistryCheck {
    async fn run<'a>(&self, switch: &'a Switch<P>, tx: &mut Transaction<'a, P>) -> Step {
        let Some(registry) = tx.registry else {
            return Step::Continue(());
        };
        match registry.check(tx.request(), tx.certificate) {
            Ok(()) => Step::Continue(()),
            Err(refusal) => {
                switch.metrics.refused(refusal.name());
                tx.pair.rules.push(format!("registry:{}", refusal.name()));
                tx.answer_code(refusal.response_code(), Outcome::Refused)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::testing::{request_with, Fixture, Options};

    const REGISTRY: &str = r#"
[[merchants]]
id = "MERCHANT0000001"
mcc = "5411"
currencies = ["978"]
transaction_types = ["00"]

[[terminals]]
id = "TERM0001"
merchant = "MERCHANT0000001"
"#;

    #[tokio::test]
    async fn passes_a_known_terminal_and_refuses_the_rest_by_name() {
        let f = Fixture::with(Options {
            registry: Some(REGISTRY),
            ..Options::default()
        });
        let pan = "4761730000000119";
        let mut known = f.transaction(request_with("0200", pan, 1000, 1, &[]));
        assert!(RegistryCheck.run(&f.switch, &mut known).await.is_continue());
        assert!(known.answer.is_none() && known.pair.rules.is_empty());

        for (extra, code, name) in [
            (&[(41, "TERM9999")][..], "58", "unknown_terminal"),
            (&[(42, "MERCHANT0000009")][..], "03", "merchant_mismatch"),
            (&[(49, "840")][..], "12", "currency"),
        ] {
            let mut tx = f.transaction(request_with("0200", pan, 1000, 2, extra));
            assert!(
                RegistryCheck.run(&f.switch, &mut tx).await.is_break(),
                "{name}"
            );
            assert_eq!(
                tx.answered(),
                Some((Some(code.into()), Outcome::Refused)),
                "{name}"
            );
            assert_eq!(tx.pair.rules, [format!("registry:{name}")]);
            assert_eq!(
                f.counter("switchyard_registry_refusals_total", &[("reason", name)]),
                1.0
            );
        }
    }

    #[tokio::test]
    async fn passes_everything_without_a_registry() {
        let f = Fixture::new();
        let mut tx = f.transaction(request_with(
            "0200",
            "4761730000000119",
            1,
            1,
            &[(41, "UNKNOWN1")],
        ));
        assert!(RegistryCheck.run(&f.switch, &mut tx).await.is_continue());
    }
}
