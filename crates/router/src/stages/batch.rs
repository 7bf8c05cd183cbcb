//! Terminal batch settlement in the flow: the terminal's 0500 (and its repeat 0501, the
//! advice 0520) answered by the switch from its own records ([`BatchSettlement`]: 00 in
//! balance, the batch closed, or 95), and every recorded approval added to its terminal's
//! open batch ([`BatchTotals`], after the record). See [`crate::batch`].

use switchyard_audit::{Outcome, RecordKind};

use super::{Stage, Switch};
use crate::batch::{Settlement, Totals};
use crate::flow::{now_us, IssuerPort};
use crate::transaction::{Step, Transaction};

/// The field of the terminal's batch number.
const BATCH_NUMBER_FIELD: u8 = 60;

/// The 0500 dialogue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchSettlement;

/// The open batches' totals.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchTotals;

impl<P: IssuerPort> Stage<P> for BatchSettlement {
    async fn run<'a>(&self, switch: &'a Switch<P>, tx: &mut Transaction<'a, P>) -> Step {
        if tx.received.mti().class() != 5 {
            return Step::Continue(());
        }
        let Some(book) = &switch.batches else {
            return tx.answer_code(b"12", Outcome::InvalidTransaction);
        };
        let Some(terminal) = tx.pair.terminal.as_deref().map(str::to_string) else {
            return tx.answer_code(b"30", Outcome::FormatError);
        };
        let request = tx.request();
        let number = request
            .field(BATCH_NUMBER_FIELD)
            .map(|f| f.text())
            .unwrap_or_default();
        let currency = request.field(49).map(|f| f.text());
        let claimed = Totals::of_request(request);
        let event = |name: &str, ours: &Totals, theirs: &Totals| {
            serde_json::json!({
                "event": name,
                "terminal": terminal,
                "batch": number,
                "currency": currency,
                "totals": ours,
                "claimed": theirs,
                "at_us": now_us(),
            })
        };
        match book.settle(&terminal, &number, currency.as_deref(), claimed) {
            Settlement::Repeat => tx.answer_code(b"00", Outcome::SwitchAnswered),
            Settlement::InBalance(ours) => {
                // The close is on disk before the terminal hears of it: a restart rebuilds
                // the batch as the terminal knows it.
                let appended = switch
                    .audit
                    .append_record(RecordKind::Event, &event("batch-closed", &ours, &claimed))
                    .await;
                if let Err(e) = appended {
                    tracing::error!(error = %e, "batch close not recorded: the batch stays open");
                    return tx.answer_code(b"96", Outcome::SystemError);
                }
                book.close(&terminal, &number, currency.as_deref(), ours);
                tracing::info!(terminal, batch = %number, "batch closed in balance");
                tx.answer_code(b"00", Outcome::SwitchAnswered)
            }
            Settlement::OutOfBalance(ours, theirs) => {
                let appended = switch
                    .audit
                    .append_record(
                        RecordKind::Event,
                        &event("batch-out-of-balance", &ours, &theirs),
                    )
                    .await;
                if let Err(e) = appended {
                    tracing::error!(error = %e, "batch difference not recorded");
                }
                tracing::warn!(terminal, batch = %number, "batch out of balance: 95");
                tx.answer_code(b"95", Outcome::SwitchAnswered)
            }
        }
    }
}

impl<P: IssuerPort> Stage<P> for BatchTotals {
    async fn run<'a>(&self, switch: &'a Switch<P>, tx: &mut Transaction<'a, P>) -> Step {
        if let (true, Some(book)) = (tx.recorded, &switch.batches) {
            book.add(&tx.pair);
        }
        Step::Continue(())
    }
}
