//! Routing: the issuer link a request goes to, by card BIN, MTI and processing code (15
//! when no route takes it). A terminal's reversal of a request the switch forwarded goes
//! where the original went, with field 90 quoting the STAN that issuer saw (30 when field
//! 90 cannot be read).

use switchyard_audit::{Outcome, ShortText};
use switchyard_iso8583::{MessageBuilder, MessageView, Spec};

use super::{Stage, Switch};
use crate::flow::IssuerPort;
use crate::transaction::{ChosenRoute, Step, Transaction};

/// The route and its link.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Routing;

impl<P: IssuerPort> Stage<P> for Routing {
    async fn run<'a>(&self, switch: &'a Switch<P>, tx: &mut Transaction<'a, P>) -> Step {
        let original = switch
            .integrity
            .as_ref()
            .and_then(|i| i.original_of(tx.request()));
        if let (None, Some(shared), Some(integrity), Some(_)) = (
            &original,
            &switch.shared,
            &switch.integrity,
            crate::integrity::Integrity::original_key(tx.request()),
        ) {
            // A reversal of a request neither this instance nor, as far as the audit stream
            // has told, another one forwarded: certain only while the stream is followed.
            let current = integrity.group_current();
            let metrics = &switch.metrics;
            metrics.shared("followed", current, std::time::Duration::ZERO);
            if !current {
                if shared.when_unreachable == crate::shared::WhenUnreachable::FailClosed {
                    tracing::debug!("the group's records not followed: a reversal not found, 91");
                    return tx.answer_code(b"91", Outcome::LinkDown);
                }
                tracing::debug!("the group's records not followed: a reversal routed by its card");
            }
        }
        let routes = tx.routes;
        let (name, link, stand_in) = match &original {
            Some((link, issuer_stan)) => {
                let Some(quoted) = quote_issuer_stan(tx.request(), issuer_stan) else {
                    return tx.answer_code(b"30", Outcome::FormatError);
                };
                tx.quote(quoted);
                ("original", link.as_str(), None)
            }
            None => match routes.route(tx.request()) {
                Some(route) => (route.name, route.link, route.stand_in),
                None => return tx.answer_code(b"15", Outcome::NoRoute),
            },
        };
        tx.pair.route = Some(ShortText::from(name));
        tx.pair.issuer = Some(ShortText::from(link));
        let Some((link_name, port)) = switch.links.get_key_value(link) else {
            return tx.answer_code(b"96", Outcome::SystemError);
        };
        tx.route = Some(ChosenRoute {
            name,
            link_name,
            link: port,
            stand_in,
        });
        Step::Continue(())
    }
}

/// A terminal's reversal with field 90's STAN replaced by the one the issuer saw.
fn quote_issuer_stan(
    request: &MessageView<'static>,
    issuer_stan: &str,
) -> Option<MessageView<'static>> {
    let spec: &'static Spec = request.spec();
    let original = request.field(90)?.text();
    // Field 90 starts with the original MTI and STAN: ASCII digits in every dialect.
    if original.len() < 10 || !original.is_char_boundary(10) {
        return None;
    }
    let mut quoted = original.clone();
    quoted.replace_range(4..10, issuer_stan.get(..6)?);
    let mut b = MessageBuilder::new(spec, request.mti());
    for field in request.fields() {
        if field.number == 90 {
            b.set(90, &quoted).ok()?;
        } else {
            b.set(field.number, field.value()).ok()?;
        }
    }
    MessageView::decode(spec, b.encode()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::WhenUnreachable;
    use crate::stages::testing::{request, request_with, shared, Fixture, MemoryShared};

    #[tokio::test]
    async fn routes_by_bin_and_refuses_an_unknown_card_15() {
        let f = Fixture::new();
        let mut visa = f.transaction(request("0200", "4761730000000119", 1000, 1));
        assert!(Routing.run(&f.switch, &mut visa).await.is_continue());
        let route = visa.route.expect("routed");
        assert_eq!((route.name, route.link_name), ("visa", "issuer"));
        assert_eq!(
            (visa.pair.route.as_deref(), visa.pair.issuer.as_deref()),
            (Some("visa"), Some("issuer"))
        );

        let mut other = f.transaction(request("0200", "6011000990139424", 1000, 2));
        assert!(Routing.run(&f.switch, &mut other).await.is_break());
        assert_eq!(
            other.answered(),
            Some((Some("15".into()), Outcome::NoRoute))
        );
        assert!(other.route.is_none() && other.pair.route.is_none());
    }

    #[tokio::test]
    async fn sends_a_terminal_reversal_where_its_original_went_quoting_the_issuer_stan() {
        let f = Fixture::new();
        // The original (STAN 000007) went to `issuer`, which saw STAN 004242.
        f.integrity()
            .forwarded("TERM0001", "000007", "1124093000", "issuer", "004242");
        let f90 = "020000000711240930000000000000000000000000";
        // A card no route takes: the original's link is used all the same.
        let reversal = request_with("0400", "6011000990139424", 1000, 8, &[(90, f90)]);
        let mut tx = f.transaction(reversal.clone());
        assert!(Routing.run(&f.switch, &mut tx).await.is_continue());
        assert_eq!(
            tx.route.map(|r| (r.name, r.link_name)),
            Some(("original", "issuer"))
        );
        let quoted = tx.request().field(90).unwrap().text();
        assert_eq!(&quoted[..10], "0200004242");
        assert_eq!(&quoted[10..], &f90[10..]);
        assert_eq!(
            tx.received.buffer(),
            reversal.buffer(),
            "the terminal's request is kept as received"
        );
    }

    /// In a group, a reversal whose original neither this instance nor the followed audit
    /// stream knows: while the stream is not followed to its end, fail closed answers 91
    /// and continue routes it by its card; once it is, by its card either way.
    #[tokio::test]
    async fn a_reversal_not_in_the_groups_records_waits_for_them_to_be_followed() {
        let f90 = "020000000711240930000000000000000000000000";
        let reversal = || request_with("0400", "4761730000000119", 1000, 8, &[(90, f90)]);
        for (when, behind) in [
            (WhenUnreachable::FailClosed, Some("91")),
            (WhenUnreachable::Continue, None),
        ] {
            let mut f = Fixture::new();
            shared(&mut f, std::sync::Arc::new(MemoryShared::default()), when);
            let mut tx = f.transaction(reversal());
            let step = Routing.run(&f.switch, &mut tx).await;
            assert_eq!(step.is_break(), behind.is_some(), "{when:?}");
            assert_eq!(tx.answered().and_then(|(code, _)| code).as_deref(), behind);
            f.integrity().set_group_current(true);
            let mut tx = f.transaction(reversal());
            assert!(Routing.run(&f.switch, &mut tx).await.is_continue());
            assert_eq!(tx.route.map(|r| r.name), Some("visa"), "by its card");
        }
    }
}
