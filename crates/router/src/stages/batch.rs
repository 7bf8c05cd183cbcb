//! Terminal batch settlement in the flow: the terminal's 0500 (and its repeat 0501, the
//! advice 0520) answered by the switch from its own records ([`BatchSettlement`]: 00 in
//! balance, the batch closed, or 95), and every recorded approval added to its terminal's
//! open batch ([`BatchTotals`], after the record). See [`crate::batch`].
//!
//! A completion (0220) must name its standing pre-authorisation and a void (0200,
//! processing code 02) its original in the open batch, by RRN and authorisation id; one
//! that does not is answered 25 and never forwarded.
//!
//! After a 95 the terminal uploads its transactions (0320, answered 0330 00): each is
//! matched to the switch's by RRN (STAN without one); one the switch never approved, or
//! approved for another amount, is an audit event, never added. The terminal's final 0500
//! then closes the batch with the switch's own totals (00), the upload's counts (matched,
//! amount differs, unknown to the switch, the switch's not uploaded) in the close event.

use switchyard_audit::{Outcome, RecordKind};

use super::{Stage, Switch};
use crate::batch::{Original, Settlement, Totals, UnmatchedCompletions, UploadItem};
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
        let class = tx.received.mti().class();
        if class == 3 {
            return upload_item(switch, tx).await;
        }
        if class == 2 {
            return original_of(switch, tx);
        }
        if class != 5 {
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
        if let Some((upload, not_uploaded)) = book.upload_state(&terminal) {
            // The final 0500 after an upload: closed on the switch's own totals.
            let ours = book.open_totals(&terminal, currency.as_deref());
            let mut closed = event("batch-closed", &ours, &claimed);
            closed["after_upload"] = serde_json::json!({
                "matched": upload.matched,
                "amount_differs": upload.amount_differs,
                "unknown_to_switch": upload.unknown,
                "not_uploaded": not_uploaded,
            });
            if !recorded(switch, &closed).await {
                return tx.answer_code(b"96", Outcome::SystemError);
            }
            book.close(&terminal, &number, currency.as_deref(), ours);
            tracing::info!(terminal, batch = %number, unknown = upload.unknown, "batch closed after upload");
            return tx.answer_code(b"00", Outcome::SwitchAnswered);
        }
        match book.settle(&terminal, &number, currency.as_deref(), claimed) {
            Settlement::Repeat => tx.answer_code(b"00", Outcome::SwitchAnswered),
            Settlement::InBalance(ours) => {
                if !recorded(switch, &event("batch-closed", &ours, &claimed)).await {
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
                book.expect_upload(&terminal);
                tracing::warn!(terminal, batch = %number, "batch out of balance: 95, upload expected");
                tx.answer_code(b"95", Outcome::SwitchAnswered)
            }
        }
    }
}

/// Record a batch close before the terminal hears of it (a restart then rebuilds the batch
/// as the terminal knows it); `false` when it cannot be, and the batch stays open.
async fn recorded<P>(switch: &Switch<P>, event: &serde_json::Value) -> bool {
    match switch.audit.append_record(RecordKind::Event, event).await {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(error = %e, "batch close not recorded: the batch stays open");
            false
        }
    }
}

/// A completion (0220) needs its standing pre-authorisation, a void (0200, processing code
/// 02) its original in the open batch: the same RRN (37) and authorisation id (38). Without
/// one: 25, never forwarded (a completion is forwarded, flagged, when the policy says so).
fn original_of<P: IssuerPort>(switch: &Switch<P>, tx: &mut Transaction<'_, P>) -> Step {
    let (Some(book), Some(terminal)) = (&switch.batches, tx.pair.terminal.as_deref()) else {
        return Step::Continue(());
    };
    let mti = tx.pair.request_mti.as_str();
    let completion = matches!(mti, "0220" | "0221");
    let void = matches!(mti, "0200" | "0201")
        && tx
            .pair
            .processing_code
            .as_deref()
            .is_some_and(|p| p.starts_with("02"));
    if !completion && !void {
        return Step::Continue(());
    }
    let request = tx.request();
    let rrn = request.field(37).map(|f| f.text());
    let auth_id = request.field(38).map(|f| f.text());
    let found = match completion {
        true => book.authorisation_of(terminal, rrn.as_deref(), auth_id.as_deref(), now_us()),
        false => book.voided_original(terminal, rrn.as_deref(), auth_id.as_deref()),
    };
    if found == Original::Matched {
        return Step::Continue(());
    }
    let what = match (completion, found) {
        (true, Original::AuthIdDiffers) => "completion-authorisation-id-differs",
        (true, _) => "completion-without-authorisation",
        (false, Original::AuthIdDiffers) => "void-authorisation-id-differs",
        (false, _) => "void-without-original",
    };
    tracing::warn!(terminal, what, "no original for this transaction");
    tx.pair.rules.push(what.to_string());
    if completion && book.policy().unmatched_completions == UnmatchedCompletions::Forward {
        return Step::Continue(());
    }
    tx.answer_code(b"25", Outcome::NoOriginal)
}

/// One 0320: matched to the switch's open batch, answered 00 (12 without a 95 before).
async fn upload_item<P: IssuerPort>(switch: &Switch<P>, tx: &mut Transaction<'_, P>) -> Step {
    let (Some(book), Some(terminal)) = (
        &switch.batches,
        tx.pair.terminal.as_deref().map(str::to_string),
    ) else {
        return tx.answer_code(b"12", Outcome::InvalidTransaction);
    };
    let request = tx.request();
    let rrn = request.field(37).map(|f| f.text());
    let stan = request.field(11).map(|f| f.text());
    let amount = request.field(4).and_then(|f| f.as_u64()).unwrap_or(0);
    let item = book.upload(&terminal, rrn.as_deref(), stan.as_deref(), amount);
    let name = match item {
        UploadItem::Unexpected => return tx.answer_code(b"12", Outcome::InvalidTransaction),
        UploadItem::Matched => None,
        UploadItem::AmountDiffers(_) => Some("batch-upload-amount-differs"),
        UploadItem::Unknown => Some("batch-upload-unknown"),
    };
    if let Some(name) = name {
        let ours = match item {
            UploadItem::AmountDiffers(a) => Some(a),
            _ => None,
        };
        let event = serde_json::json!({
            "event": name,
            "terminal": terminal,
            "batch": request.field(BATCH_NUMBER_FIELD).map(|f| f.text()),
            "rrn": rrn,
            "stan": stan,
            "amount": amount,
            "switch_amount": ours,
            "at_us": now_us(),
        });
        tracing::warn!(
            terminal,
            event = name,
            "batch upload: a transaction the switch does not have as uploaded"
        );
        if let Err(e) = switch.audit.append_record(RecordKind::Event, &event).await {
            tracing::error!(error = %e, "batch upload difference not recorded");
            return tx.answer_code(b"96", Outcome::SystemError);
        }
    }
    tx.answer_code(b"00", Outcome::SwitchAnswered)
}

impl<P: IssuerPort> Stage<P> for BatchTotals {
    async fn run<'a>(&self, switch: &'a Switch<P>, tx: &mut Transaction<'a, P>) -> Step {
        if let (true, Some(book)) = (tx.recorded, &switch.batches) {
            book.add(&tx.pair);
        }
        Step::Continue(())
    }
}
