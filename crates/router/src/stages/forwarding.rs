//! Forwarding: the request goes to its issuer link, and the link's answer (or why there is
//! none) is kept for the stages after. With integrity on, an in-flight record (the request
//! in protected form and what its reversal needs) is durable in the audit log before a byte
//! is written to the issuer; when it cannot be written the request is not sent.

use std::sync::Mutex;
use std::time::Instant;

use switchyard_audit::{AuditLog, PairRecord, RecordKind, ShortText};
use switchyard_iso8583::MessageView;
use switchyard_mux::Forwarded;

use super::{Stage, Switch};
use crate::flow::{now_us, IssuerPort};
use crate::integrity::InFlightRecordRef;
use crate::saf::ReversalBasis;
use crate::transaction::{Step, Transaction};

/// The issuer link's round trip.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forwarding;

impl<P: IssuerPort> Stage<P> for Forwarding {
    async fn run<'a>(&self, switch: &'a Switch<P>, tx: &mut Transaction<'a, P>) -> Step {
        let (Some(route), Some(outbound)) = (tx.route, tx.outbound.as_ref()) else {
            return tx.missing("forwarding", "a route and an outbound message");
        };
        tx.pair.forwarded_us = Some(now_us());
        let sent = Instant::now();
        let forwarded = match &switch.integrity {
            None => route.link.forward(outbound).await,
            Some(_) => {
                let (forwarded, recorded) = forward_recorded(
                    &switch.audit,
                    route.link,
                    route.link_name,
                    outbound,
                    &tx.pair,
                )
                .await;
                if let Some((seq, basis)) = recorded {
                    tx.pair.inflight_seq = Some(seq);
                    tx.inflight_basis = Some(basis);
                }
                forwarded
            }
        };
        switch
            .metrics
            .issuer_latency(route.link_name, sent.elapsed());
        tx.pair.issuer_stan = forwarded
            .issuer_stan
            .map(|s| ShortText::digits(u64::from(s), 6));
        tx.forwarded = Some(forwarded);
        Step::Continue(())
    }
}

/// Forward `outbound`, writing its in-flight record (with the STAN the issuer will see)
/// before it goes; the record's sequence number and the reversal basis it holds, when it
/// was written.
async fn forward_recorded<P: IssuerPort>(
    audit: &AuditLog,
    link: &P,
    link_name: &str,
    outbound: &MessageView<'static>,
    pair: &PairRecord,
) -> (Forwarded, Option<(u64, ReversalBasis)>) {
    let recorded = Mutex::new(None);
    let recorded_ref = &recorded;
    let note = move |stan: Option<u32>| {
        let basis = ReversalBasis::of(outbound, stan);
        async move {
            let record = InFlightRecordRef {
                link: link_name,
                basis: &basis,
                pair,
            };
            match audit.append_record(RecordKind::InFlight, &record).await {
                Ok(seq) => {
                    *recorded_ref.lock().unwrap_or_else(|p| p.into_inner()) = Some((seq, basis));
                    true
                }
                Err(error) => {
                    tracing::error!(%error, "in-flight record failed: not forwarding");
                    false
                }
            }
        }
    };
    let forwarded = link.forward_with(outbound, note).await;
    let recorded = recorded.into_inner().unwrap_or_else(|p| p.into_inner());
    (forwarded, recorded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::InFlightRecord;
    use crate::stages::testing::{request, Fixture, Options};
    use switchyard_mux::MuxError;

    #[tokio::test]
    async fn writes_the_in_flight_record_before_the_request_goes() {
        let f = Fixture::new();
        let mut tx = f.routed(request("0200", "4761730000000119", 1000, 1));
        assert!(Forwarding.run(&f.switch, &mut tx).await.is_continue());
        assert!(tx.answer.is_none(), "forwarding answers nothing itself");
        let forwarded = tx.forwarded.as_ref().expect("the link's answer is kept");
        assert!(forwarded
            .result
            .as_ref()
            .is_ok_and(|r| r.str(39) == Some("00")));
        assert_eq!(tx.pair.issuer_stan.as_deref(), Some("004242"));
        assert!(tx.pair.forwarded_us.is_some());
        assert_eq!(f.issuer().seen.lock().unwrap().len(), 1);

        let seq = tx
            .pair
            .inflight_seq
            .expect("the in-flight record's sequence number");
        let basis = tx.inflight_basis.clone().expect("its reversal basis");
        assert_eq!(basis.issuer_stan.as_str(), "004242");
        f.switch.audit.flush().await.unwrap();
        let mut found = None;
        switchyard_audit::for_each_recent(f.switch.audit.dir(), 1, |r| {
            if r.seq == seq {
                found = switchyard_audit::payload::decode::<InFlightRecord>(r.seq, r.payload).ok();
            }
            Ok(())
        })
        .unwrap();
        let record = found.expect("the in-flight record is in the audit log");
        assert_eq!((record.link.as_str(), record.basis), ("issuer", basis));
    }

    #[tokio::test]
    async fn does_not_send_what_it_could_not_record() {
        let f = Fixture::with(Options {
            audit_fails_after_syncs: Some(0),
            ..Options::default()
        });
        let mut tx = f.routed(request("0200", "4761730000000119", 1000, 1));
        assert!(Forwarding.run(&f.switch, &mut tx).await.is_continue());
        let result = &tx.forwarded.as_ref().unwrap().result;
        assert!(
            matches!(result, Err(MuxError::NotSent { .. })),
            "{result:?}"
        );
        assert!(
            f.issuer().seen.lock().unwrap().is_empty(),
            "nothing reached the issuer"
        );
        assert!(tx.pair.inflight_seq.is_none() && tx.inflight_basis.is_none());
    }

    #[tokio::test]
    async fn without_integrity_it_forwards_without_a_record() {
        let f = Fixture::with(Options {
            without_integrity: true,
            ..Options::default()
        });
        let mut tx = f.routed(request("0200", "4761730000000119", 1000, 1));
        assert!(Forwarding.run(&f.switch, &mut tx).await.is_continue());
        assert!(tx.forwarded.as_ref().unwrap().result.is_ok());
        assert!(tx.pair.inflight_seq.is_none());
    }
}
