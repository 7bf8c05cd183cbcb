//! Dialect translation: the request re-encoded, field by field, in the dialect of the
//! issuer link (as it is when both speak the same one). A request that does not fit the
//! issuer's dialect is answered 96.

use switchyard_audit::Outcome;

use super::{Stage, Switch};
use crate::flow::{translate, IssuerPort};
use crate::transaction::{Step, Transaction};

/// The outbound message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Translation;

impl<P: IssuerPort> Stage<P> for Translation {
    async fn run<'a>(&self, switch: &'a Switch<P>, tx: &mut Transaction<'a, P>) -> Step {
        let Some(route) = tx.route else {
            return tx.missing("translation", "a route");
        };
        let outbound = if tx.same_dialect() {
            Ok(tx.request().clone())
        } else {
            translate(tx.request(), route.link.spec())
        };
        // Field 15 (settlement date, MMDD of the business date) where the link takes it.
        // The set is looked at only when a business day is kept (not on every request).
        let dated_by = switch
            .business_day
            .as_ref()
            .filter(|_| switch.settlement_date.contains(route.link_name));
        let dated = match dated_by {
            Some(day) => outbound.and_then(|view| {
                let date = crate::business_day::date_number(day.day_at(tx.pair.received_us));
                with_settlement_date(&view, date % 10_000)
            }),
            _ => outbound,
        };
        match dated {
            Ok(outbound) => {
                tx.outbound = Some(outbound);
                Step::Continue(())
            }
            Err(error) => {
                tracing::warn!(link = route.link_name, %error, "request does not fit the issuer's dialect");
                tx.answer_code(b"96", Outcome::SystemError)
            }
        }
    }
}

/// `view` with field 15 set to `mmdd` (when its dialect has the field).
fn with_settlement_date(
    view: &switchyard_iso8583::MessageView<'static>,
    mmdd: u64,
) -> Result<switchyard_iso8583::MessageView<'static>, switchyard_iso8583::Error> {
    if view.spec().field(15).is_none() {
        return Ok(view.clone());
    }
    let mut builder = switchyard_iso8583::MessageBuilder::new(view.spec(), view.mti());
    for field in view.fields().filter(|f| f.number != 15) {
        builder.set(field.number, field.value())?;
    }
    builder.set(15, format!("{mmdd:04}"))?;
    switchyard_iso8583::MessageView::decode(view.spec(), builder.encode())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::testing::{request, request_with, Fixture, Options};
    use crate::stages::Routing;
    use crate::stages::Stage;

    async fn routed<'f>(
        f: &'f Fixture,
        req: switchyard_iso8583::MessageView<'static>,
    ) -> Transaction<'f, crate::stages::testing::Scripted> {
        let mut tx = f.transaction(req);
        assert!(Routing.run(&f.switch, &mut tx).await.is_continue());
        tx
    }

    #[tokio::test]
    async fn links_that_take_it_get_the_business_date_in_field_15() {
        use crate::business_day::{BusinessDay, CutoverSchedule};
        let mut f = Fixture::new();
        f.switch.business_day = Some(std::sync::Arc::new(BusinessDay::new(
            CutoverSchedule::parse("23:00", "UTC").unwrap(),
        )));
        f.switch.settlement_date.insert("issuer".to_string());
        let mut tx = routed(&f, request("0200", "4761730000000119", 1000, 1)).await;
        let expected = format!(
            "{:04}",
            crate::business_day::date_number(
                f.switch
                    .business_day
                    .as_ref()
                    .unwrap()
                    .day_at(tx.pair.received_us)
            ) % 10_000
        );
        assert!(Translation.run(&f.switch, &mut tx).await.is_continue());
        let outbound = tx.outbound.as_ref().unwrap();
        assert_eq!(outbound.field(15).unwrap().text(), expected);
        assert_eq!(outbound.field(4).unwrap().text(), "000000001000");
        f.switch.settlement_date.clear();
        let mut tx = routed(&f, request("0200", "4761730000000119", 1000, 2)).await;
        assert!(Translation.run(&f.switch, &mut tx).await.is_continue());
        assert!(!tx.outbound.as_ref().unwrap().has(15));
    }

    #[tokio::test]
    async fn passes_the_same_dialect_byte_for_byte() {
        let f = Fixture::new();
        let req = request("0200", "4761730000000119", 1000, 1);
        let mut tx = routed(&f, req.clone()).await;
        assert!(Translation.run(&f.switch, &mut tx).await.is_continue());
        assert_eq!(tx.outbound.as_ref().map(|o| o.buffer()), Some(req.buffer()));
    }

    #[tokio::test]
    async fn re_encodes_for_another_dialect_and_refuses_what_does_not_fit() {
        let f = Fixture::with(Options {
            issuer_spec: Some("iso8583-1987-bcd"),
            ..Options::default()
        });
        let mut tx = routed(&f, request("0200", "4761730000000119", 1000, 1)).await;
        assert!(Translation.run(&f.switch, &mut tx).await.is_continue());
        let outbound = tx.outbound.as_ref().unwrap();
        assert_eq!(outbound.spec().name(), "iso8583-1987-bcd");
        assert_eq!(outbound.field(2).unwrap().text(), "4761730000000119");
        assert_eq!(outbound.field(11).unwrap().text(), "000001");

        // Field 12 is n6 (hhmmss) in 1987 and n12 in 1993: the time alone does not fit.
        let f93 = Fixture::with(Options {
            issuer_spec: Some("iso8583-1993-ascii"),
            ..Options::default()
        });
        let bad = request_with("0200", "4761730000000119", 1000, 2, &[(12, "093000")]);
        let mut tx = routed(&f93, bad).await;
        assert!(Translation.run(&f93.switch, &mut tx).await.is_break());
        assert_eq!(
            tx.answered(),
            Some((Some("96".into()), Outcome::SystemError))
        );
        assert!(tx.outbound.is_none());
    }

    #[tokio::test]
    async fn without_a_route_it_answers_96() {
        let f = Fixture::new();
        let mut tx = f.transaction(request("0200", "4761730000000119", 1000, 1));
        assert!(Translation.run(&f.switch, &mut tx).await.is_break());
        assert_eq!(
            tx.answered(),
            Some((Some("96".into()), Outcome::SystemError))
        );
    }
}
