//! Abnormal-activity rules on authorisations and financials (01xx, 02xx): per-terminal and
//! per-card velocity, decline bursts, per-merchant amount limits. A rule that fires is named
//! in the pair record and counted; a blocking one answers with its configured code. The
//! issuer's declines are counted for the decline-burst rule by
//! [`IssuerAnswer`](super::IssuerAnswer).

use switchyard_audit::Outcome;

use super::{Stage, Switch};
use crate::flow::IssuerPort;
use crate::registry::{GroupCounts, Rules};
use crate::shared::{SharedConfig, Unreachable, WhenUnreachable};
use crate::transaction::{Step, Transaction};

/// The registry's rules.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ActivityRules;

impl<P: IssuerPort> Stage<P> for ActivityRules {
    async fn run<'a>(&self, switch: &'a Switch<P>, tx: &mut Transaction<'a, P>) -> Step {
        let Some(registry) = tx.registry else {
            return Step::Continue(());
        };
        if !matches!(tx.received.mti().class(), 1 | 2) {
            return Step::Continue(());
        }
        let terminal = tx.pair.terminal.as_deref().unwrap_or_default();
        let card = tx.pair.pan.as_ref().map(|p| p.hash.as_str());
        let amount = tx.pair.amount.unwrap_or(0);
        let group = match &switch.shared {
            Some(shared) => {
                let started = std::time::Instant::now();
                let counted = group_counts(shared, &registry.rules, terminal, card, amount).await;
                switch
                    .metrics
                    .shared("count", counted.is_ok(), started.elapsed());
                match counted {
                    Ok(counts) => counts,
                    Err(why) if shared.when_unreachable == WhenUnreachable::FailClosed => {
                        tracing::debug!(reason = %why.0, "shared velocity counters unreachable: 91");
                        return tx.answer_code(b"91", Outcome::LinkDown);
                    }
                    Err(why) => {
                        tracing::debug!(reason = %why.0, "shared velocity counters unreachable: this instance's counts");
                        GroupCounts::default()
                    }
                }
            }
            None => GroupCounts::default(),
        };
        let verdict = switch.rule_state.evaluate_with(
            &registry.rules,
            registry.merchant_of(terminal),
            terminal,
            card,
            amount,
            group,
        );
        for (name, block) in &verdict.hits {
            switch.metrics.rule_hit(name, *block);
            tx.pair.rules.push((*name).to_string());
        }
        match verdict.block {
            Some(code) => tx.answer_code(code.as_bytes(), Outcome::Blocked),
            None => Step::Continue(()),
        }
    }
}

/// The group's velocity counts for this request (counted in), for the rules that are on.
async fn group_counts(
    shared: &SharedConfig,
    rules: &Rules,
    terminal: &str,
    card: Option<&str>,
    amount: u64,
) -> Result<GroupCounts, Unreachable> {
    let mut counts = GroupCounts::default();
    if let Some(rule) = &rules.terminal_velocity {
        let key = format!("t\u{1f}{terminal}");
        let op = shared.state.count(key.as_bytes(), rule.window_s, amount);
        counts.terminal = Some(shared.within(op).await?);
    }
    if let (Some(rule), Some(card)) = (&rules.card_velocity, card) {
        // The card by its keyed hash: never the PAN.
        let key = format!("c\u{1f}{card}");
        let op = shared.state.count(key.as_bytes(), rule.window_s, amount);
        counts.card = Some(shared.within(op).await?);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::testing::{request, Fixture, Options};

    const REGISTRY: &str = r#"
[[merchants]]
id = "MERCHANT0000001"
mcc = "5411"
max_amount = 5000

[[terminals]]
id = "TERM0001"
merchant = "MERCHANT0000001"

[rules]
terminal_velocity = { window_s = 60, max_count = 2, action = "block", response_code = "65" }
merchant_amount_limit = { action = "flag" }
"#;

    #[tokio::test]
    async fn flags_and_blocks_by_rule_name() {
        let f = Fixture::with(Options {
            registry: Some(REGISTRY),
            ..Options::default()
        });
        let pan = "4761730000000119";
        let mut first = f.transaction(request("0200", pan, 1000, 1));
        assert!(ActivityRules.run(&f.switch, &mut first).await.is_continue());
        assert!(first.pair.rules.is_empty());

        // Over the merchant's limit: flagged, passed on.
        let mut large = f.transaction(request("0200", pan, 9000, 2));
        assert!(ActivityRules.run(&f.switch, &mut large).await.is_continue());
        assert_eq!(large.pair.rules, ["merchant-amount-limit"]);

        // The third request in the window: blocked with the rule's code.
        let mut third = f.transaction(request("0100", pan, 1000, 3));
        assert!(ActivityRules.run(&f.switch, &mut third).await.is_break());
        assert_eq!(
            third.answered(),
            Some((Some("65".into()), Outcome::Blocked))
        );
        assert_eq!(third.pair.rules, ["terminal-velocity"]);
        assert_eq!(
            f.counter(
                "switchyard_rule_hits_total",
                &[("rule", "terminal-velocity"), ("action", "block")]
            ),
            1.0
        );
    }

    #[tokio::test]
    async fn leaves_reversals_and_unregistered_switches_alone() {
        let f = Fixture::with(Options {
            registry: Some(REGISTRY),
            ..Options::default()
        });
        for stan in 1..=5 {
            let mut tx = f.transaction(request("0400", "4761730000000119", 9000, stan));
            assert!(ActivityRules.run(&f.switch, &mut tx).await.is_continue());
            assert!(tx.pair.rules.is_empty());
        }
        let bare = Fixture::new();
        let mut tx = bare.transaction(request("0200", "4761730000000119", 9000, 1));
        assert!(ActivityRules.run(&bare.switch, &mut tx).await.is_continue());
    }
}
