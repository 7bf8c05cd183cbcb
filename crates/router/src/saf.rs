//! Reversals and the store-and-forward queue.
//!
//! When the outcome of a forwarded request is unknown (no answer by the deadline, the
//! connection lost with the request on it, an unusable answer, the terminal gone before its
//! approval reached it, the switch crashed in between), the issuer may hold an approval the
//! terminal never saw. The switch then queues a reversal: a 0400 (or 0420) carrying field 90
//! (original MTI, the STAN the issuer saw, the original transmission date and time, acquirer
//! and forwarding institution ids) and the amount.
//!
//! The queue is a journal of events (enqueue, attempt, done, dead, operator retry or drop)
//! kept with the audit log's machinery in its own directory: durable before anything acts on
//! it, CRC-checked, HMAC-chained, replayed on start. Entries hold no card secrets: no PAN,
//! no tracks, no PIN block, no CVV, only the fields a reversal quotes. A worker per issuer
//! link sends its entries in order once the link is ready, as 0400 first and 0401 for each
//! repeat, with capped exponential backoff, until an answer with a final response code
//! arrives; past the attempt limit an entry moves to the dead-letter list, which is counted
//! and listed and never dropped silently. One link's stuck entry holds up only that link.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_audit::{
    AuditLog, ChainKey, FieldTexts, OnDamage, RecordKind, RecordRef, ShortText,
};
use switchyard_iso8583::{MessageBuilder, MessageView, Mti, Spec};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::flow::{now_us, IssuerPort};

/// Fields copied from the original request into its reversal (never 2, 14, 35, 36, 45, 52,
/// 55: the queue holds no card data).
pub const REVERSAL_FIELDS: &[u8] = &[3, 4, 7, 11, 12, 13, 22, 25, 32, 33, 37, 41, 42, 49];

/// What a reversal is built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReversalBasis {
    /// The original request's MTI.
    pub original_mti: ShortText,
    /// The STAN the issuer saw (the link's, when remapped).
    pub issuer_stan: ShortText,
    /// Field number to value, from [`REVERSAL_FIELDS`].
    pub fields: FieldTexts,
}

impl ReversalBasis {
    /// The basis of a request as it was sent to the issuer.
    pub fn of(request: &MessageView<'_>, issuer_stan: Option<u32>) -> ReversalBasis {
        // These fields take about 110 characters at their usual lengths.
        let mut fields = FieldTexts::with_capacity(REVERSAL_FIELDS.len(), 160);
        for field in REVERSAL_FIELDS.iter().filter_map(|&n| request.field(n)) {
            fields.push_with(field.number, |out| field.push_text(out));
        }
        let issuer_stan = match issuer_stan {
            Some(s) => ShortText::digits(u64::from(s), 6),
            None => ShortText::from(fields.get(11).unwrap_or("000000")),
        };
        ReversalBasis {
            original_mti: ShortText::from(request.mti().as_str()),
            issuer_stan,
            fields,
        }
    }

    /// Field 90 (n42): original MTI, STAN, transmission date and time, acquiring and
    /// forwarding institution ids (each right-justified in 11 digits).
    pub fn original_data_elements(&self) -> String {
        let id = |n| {
            let v = self.fields.get(n).unwrap_or("");
            // The last 11 characters (the journal is read back from disk: no byte slicing).
            let skip = v.chars().count().saturating_sub(11);
            format!("{:0>11}", v.chars().skip(skip).collect::<String>())
        };
        let dt = self.fields.get(7).unwrap_or("0000000000");
        format!(
            "{}{}{}{}{}",
            self.original_mti,
            self.issuer_stan,
            dt,
            id(32),
            id(33)
        )
    }

    /// The reversal message in `spec` with `mti` (0400, 0401, 0420, 0421).
    pub fn message(
        &self,
        spec: &'static Spec,
        mti: Mti,
    ) -> Result<MessageView<'static>, switchyard_iso8583::Error> {
        let mut b = MessageBuilder::new(spec, mti);
        for (n, v) in self.fields.iter() {
            if spec.field(n).is_some() {
                b.set(n, v)?;
            }
        }
        if spec.field(90).is_some() && mti.class() == 4 {
            b.set(90, self.original_data_elements())?;
        }
        MessageView::decode(spec, b.encode())
    }
}

/// One journal event. Externally tagged (`{"enqueue":{...}}`): serde's internally tagged
/// enums cannot read maps with numeric keys back, and the basis has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SafEvent {
    /// A reversal to deliver.
    Enqueue {
        id: u64,
        link: String,
        reason: String,
        created_us: i64,
        /// Boxed: a basis keeps its fields' ends inline, several times the other events' size.
        basis: Box<ReversalBasis>,
        /// The audit record of the request in flight this reverses, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inflight_seq: Option<u64>,
        /// The MTI to send instead of the link's reversal MTI (advices: 0120, 0220).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        first_mti: Option<String>,
    },
    /// A delivery attempt that did not settle the entry.
    Attempt {
        id: u64,
        attempt: u32,
        result: String,
    },
    /// Acknowledged by the issuer.
    Done { id: u64, response_code: String },
    /// Moved to the dead-letter list.
    Dead { id: u64, reason: String },
    /// An operator put a dead letter back in the queue.
    Retry { id: u64, operator: String },
    /// An operator removed an entry.
    Drop { id: u64, operator: String },
}

/// Where an entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryState {
    /// Waiting to be delivered.
    Pending,
    /// Out of attempts.
    Dead,
    /// Acknowledged by the issuer (kept only by [`history`]).
    Delivered,
    /// Removed by an operator (kept only by [`history`]).
    Dropped,
}

impl EntryState {
    /// The state as `saf list` and the audit tools show it.
    pub fn name(self) -> &'static str {
        match self {
            EntryState::Pending => "pending",
            EntryState::Dead => "dead",
            EntryState::Delivered => "delivered",
            EntryState::Dropped => "dropped",
        }
    }
}

/// One queued reversal.
#[derive(Debug, Clone, Serialize)]
pub struct SafEntry {
    pub id: u64,
    pub link: String,
    pub reason: String,
    pub created_us: i64,
    pub attempts: u32,
    pub state: EntryState,
    pub last_result: Option<String>,
    pub basis: ReversalBasis,
    pub inflight_seq: Option<u64>,
    /// The MTI to send (advices), instead of the link's reversal MTI.
    pub first_mti: Option<String>,
}

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct SafConfig {
    /// Attempts before an entry goes to the dead-letter list.
    pub max_attempts: u32,
    /// First retry delay.
    pub backoff_min: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
    /// Response codes that mean "try again later" (anything else settles the entry).
    pub retryable_codes: Vec<String>,
}

impl Default for SafConfig {
    fn default() -> Self {
        SafConfig {
            max_attempts: 20,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            retryable_codes: vec!["91".into(), "96".into()],
        }
    }
}

/// Replay a journal into its entries (pending and dead); done and dropped ones are gone.
pub fn replay(dir: &Path) -> switchyard_audit::Result<BTreeMap<u64, SafEntry>> {
    replay_events(dir, None, false)
}

/// Every entry a journal ever held, settled ones too (delivered, dropped): each reversal's
/// and advice's fate, for operators and the audit tools. With `chain`, every journal record
/// is verified as it is read and damage stops the read.
pub fn history(
    dir: &Path,
    chain: Option<&ChainKey>,
) -> switchyard_audit::Result<BTreeMap<u64, SafEntry>> {
    replay_events(dir, chain, true)
}

fn replay_events(
    dir: &Path,
    chain: Option<&ChainKey>,
    keep_settled: bool,
) -> switchyard_audit::Result<BTreeMap<u64, SafEntry>> {
    let mut entries = BTreeMap::new();
    if !dir.exists() {
        return Ok(entries);
    }
    let each = |r: RecordRef<'_>| {
        if r.kind != Some(RecordKind::Saf) {
            return Ok(());
        }
        let event: SafEvent = switchyard_audit::payload::decode(r.seq, r.payload)?;
        apply(&mut entries, event, keep_settled);
        Ok(())
    };
    match chain {
        Some(key) => switchyard_audit::read_checked(dir, key, OnDamage::Stop, each).map(drop)?,
        None => switchyard_audit::for_each(dir, each).map(drop)?,
    }
    Ok(entries)
}

fn apply(entries: &mut BTreeMap<u64, SafEntry>, event: SafEvent, keep_settled: bool) {
    match event {
        SafEvent::Enqueue {
            id,
            link,
            reason,
            created_us,
            basis,
            inflight_seq,
            first_mti,
        } => {
            entries.insert(
                id,
                SafEntry {
                    id,
                    link,
                    reason,
                    created_us,
                    attempts: 0,
                    state: EntryState::Pending,
                    last_result: None,
                    basis: *basis,
                    inflight_seq,
                    first_mti,
                },
            );
        }
        SafEvent::Attempt {
            id,
            attempt,
            result,
        } => {
            if let Some(e) = entries.get_mut(&id) {
                e.attempts = attempt;
                e.last_result = Some(result);
            }
        }
        SafEvent::Done { id, response_code } if keep_settled => {
            if let Some(e) = entries.get_mut(&id) {
                e.state = EntryState::Delivered;
                e.last_result = Some(response_code);
            }
        }
        SafEvent::Drop { id, operator } if keep_settled => {
            if let Some(e) = entries.get_mut(&id) {
                e.state = EntryState::Dropped;
                e.last_result = Some(format!("dropped by {operator}"));
            }
        }
        SafEvent::Done { id, .. } | SafEvent::Drop { id, .. } => {
            entries.remove(&id);
        }
        SafEvent::Dead { id, reason } => {
            if let Some(e) = entries.get_mut(&id) {
                e.state = EntryState::Dead;
                e.last_result = Some(reason);
            }
        }
        SafEvent::Retry { id, .. } => {
            if let Some(e) = entries.get_mut(&id) {
                e.state = EntryState::Pending;
                e.attempts = 0;
            }
        }
    }
}

/// The store-and-forward queue of one switch.
pub struct SafQueue {
    journal: Arc<AuditLog>,
    entries: Mutex<BTreeMap<u64, SafEntry>>,
    next_id: AtomicU64,
    wake: Notify,
    config: SafConfig,
    /// Entries settled by the issuer.
    pub delivered: AtomicU64,
    /// Delivery attempts.
    pub attempts: AtomicU64,
}

impl std::fmt::Debug for SafQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafQueue")
            .field("backlog", &self.backlog())
            .finish_non_exhaustive()
    }
}

impl SafQueue {
    /// A queue over `journal` (an audit log of its own, already open), with the entries
    /// replayed from its directory.
    pub fn new(
        journal: Arc<AuditLog>,
        entries: BTreeMap<u64, SafEntry>,
        config: SafConfig,
    ) -> SafQueue {
        let next = entries.keys().next_back().map_or(1, |k| k + 1);
        SafQueue {
            journal,
            next_id: AtomicU64::new(next.max(now_us().max(1) as u64)),
            entries: Mutex::new(entries),
            wake: Notify::new(),
            config,
            delivered: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, SafEntry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn record(&self, event: &SafEvent) -> switchyard_audit::Result<()> {
        self.journal
            .append_record(RecordKind::Saf, event)
            .await
            .map(|_| ())
    }

    /// Queue a reversal durably; its id.
    pub async fn enqueue(
        &self,
        link: &str,
        reason: &str,
        basis: ReversalBasis,
        inflight_seq: Option<u64>,
    ) -> switchyard_audit::Result<u64> {
        self.enqueue_as(link, reason, basis, inflight_seq, None)
            .await
    }

    /// Queue a message durably with its own MTI (a stand-in advice, 0120 or 0220); its id.
    pub async fn enqueue_as(
        &self,
        link: &str,
        reason: &str,
        basis: ReversalBasis,
        inflight_seq: Option<u64>,
        first_mti: Option<String>,
    ) -> switchyard_audit::Result<u64> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let event = SafEvent::Enqueue {
            id,
            link: link.to_string(),
            reason: reason.to_string(),
            created_us: now_us(),
            basis: Box::new(basis),
            inflight_seq,
            first_mti,
        };
        self.record(&event).await?;
        apply(&mut self.lock(), event, false);
        self.wake.notify_waiters();
        tracing::info!(id, link, reason, "reversal queued");
        Ok(id)
    }

    /// Every entry, oldest first.
    pub fn list(&self) -> Vec<SafEntry> {
        self.lock().values().cloned().collect()
    }

    /// Pending entries.
    pub fn backlog(&self) -> usize {
        self.lock()
            .values()
            .filter(|e| e.state == EntryState::Pending)
            .count()
    }

    /// Dead letters.
    pub fn dead_letters(&self) -> usize {
        self.lock()
            .values()
            .filter(|e| e.state == EntryState::Dead)
            .count()
    }

    /// Whether an in-flight record already has its reversal queued.
    pub fn covers_inflight(&self, seq: u64) -> bool {
        self.lock().values().any(|e| e.inflight_seq == Some(seq))
    }

    /// An operator puts a dead letter back (or drops an entry). Audited in the journal; the
    /// caller records the operator action in the audit log too.
    pub async fn operator(&self, id: u64, operator: &str, drop: bool) -> Result<(), String> {
        let state = self.lock().get(&id).map(|e| e.state);
        let event = match (state, drop) {
            (None, _) => return Err(format!("no entry {id}")),
            (Some(_), true) => SafEvent::Drop {
                id,
                operator: operator.into(),
            },
            (Some(EntryState::Dead), false) => SafEvent::Retry {
                id,
                operator: operator.into(),
            },
            // The live queue holds pending and dead entries only.
            (Some(_), false) => return Err(format!("entry {id} is not a dead letter")),
        };
        self.record(&event).await.map_err(|e| e.to_string())?;
        apply(&mut self.lock(), event, false);
        self.wake.notify_waiters();
        Ok(())
    }

    fn next_for(&self, link: &str) -> Option<SafEntry> {
        self.lock()
            .values()
            .find(|e| e.link == link && e.state == EntryState::Pending)
            .cloned()
    }

    fn delay(&self, attempt: u32) -> Duration {
        self.config
            .backoff_min
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.config.backoff_max)
    }

    /// Deliver `link`'s entries until `shutdown`: in order, 0400 then 0401 repeats (0420
    /// and 0421 when `advice`), with backoff, dead letters past the attempt limit.
    pub async fn deliver<P: IssuerPort>(
        self: Arc<Self>,
        link_name: String,
        link: Arc<P>,
        advice: bool,
        security: Option<Arc<crate::security::Security>>,
        shutdown: CancellationToken,
    ) {
        loop {
            let Some(entry) = self.next_for(&link_name) else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.wake.notified() => continue,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            };
            let message = match Self::message_for(&entry, link.spec(), advice) {
                Ok(m) => m,
                Err(e) => {
                    let reason = format!("cannot build the reversal: {e}");
                    let _ = self
                        .settle(
                            entry.id,
                            SafEvent::Dead {
                                id: entry.id,
                                reason,
                            },
                        )
                        .await;
                    continue;
                }
            };
            // A link that takes MACs gets one on the reversal, and must MAC its answer.
            let message = match &security {
                None => message,
                Some(security) => match security.seal(&link_name, message).await {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(id = entry.id, error = %e, "reversal not MACed: tried again later");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(self.delay(entry.attempts)) => continue,
                        }
                    }
                },
            };
            self.attempts.fetch_add(1, Ordering::Relaxed);
            let mut outcome = link.forward(&message).await.result;
            if let (Some(security), Ok(answer)) = (&security, &outcome) {
                if let Err(reason) = security.check_answer(&link_name, answer).await {
                    outcome = Err(switchyard_mux::MuxError::ResponseRefused {
                        link: link_name.as_str().into(),
                        reason,
                    });
                }
            }
            let Ok(retry) = self.settle_attempt(&entry, &link_name, outcome).await else {
                return;
            };
            if let Some(attempt) = retry {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(self.delay(attempt)) => {}
                }
            }
        }
    }

    /// The message that delivers `entry`: an advice's own MTI (0220, then 0221 for
    /// repeats), otherwise 0400/0401 (0420/0421 when `advice`).
    fn message_for(
        entry: &SafEntry,
        spec: &'static Spec,
        advice: bool,
    ) -> Result<MessageView<'static>, switchyard_iso8583::Error> {
        let (first, repeat) = match entry.first_mti.as_deref().and_then(Mti::parse) {
            Some(m) => {
                let mut r = m.digits();
                r[3] = b'1';
                (m.digits(), r)
            }
            None if advice => (*b"0420", *b"0421"),
            None => (*b"0400", *b"0401"),
        };
        let mti = Mti::new(if entry.attempts == 0 { first } else { repeat })
            .unwrap_or_else(|| unreachable!());
        entry.basis.message(spec, mti)
    }

    /// Journal what one delivery attempt of `entry` came to: done, another attempt (its
    /// number, to back off by), or a dead letter past the limit. An error when the journal
    /// cannot be written (delivery stops).
    async fn settle_attempt(
        &self,
        entry: &SafEntry,
        link_name: &str,
        outcome: Result<MessageView<'static>, switchyard_mux::MuxError>,
    ) -> switchyard_audit::Result<Option<u32>> {
        let result = match &outcome {
            Ok(answer) => answer
                .field(39)
                .map(|f| f.text())
                .unwrap_or_else(|| "--".into()),
            Err(e) => e.to_string(),
        };
        if outcome.is_ok() && !self.config.retryable_codes.contains(&result) {
            self.delivered.fetch_add(1, Ordering::Relaxed);
            tracing::info!(id = entry.id, link = %link_name, response_code = %result, "reversal acknowledged");
            let done = SafEvent::Done {
                id: entry.id,
                response_code: result,
            };
            return self.settle(entry.id, done).await.map(|()| None);
        }
        let attempt = entry.attempts + 1;
        let event = if attempt >= self.config.max_attempts {
            tracing::error!(id = entry.id, link = %link_name, attempts = attempt, "reversal out of attempts: dead letter");
            SafEvent::Dead {
                id: entry.id,
                reason: format!("{attempt} attempts, last: {result}"),
            }
        } else {
            SafEvent::Attempt {
                id: entry.id,
                attempt,
                result,
            }
        };
        self.settle(entry.id, event).await.map(|()| Some(attempt))
    }

    async fn settle(&self, id: u64, event: SafEvent) -> switchyard_audit::Result<()> {
        let recorded = self.record(&event).await;
        if let Err(e) = &recorded {
            tracing::error!(id, error = %e, "store-and-forward journal failed: delivery stops");
            return recorded;
        }
        apply(&mut self.lock(), event, false);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_state_names_are_their_json_names() {
        for state in [
            EntryState::Pending,
            EntryState::Dead,
            EntryState::Delivered,
            EntryState::Dropped,
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.name());
        }
    }

    #[test]
    fn journal_events_read_back_and_reversals_quote_the_original() {
        let spec = switchyard_iso8583::shipped("iso8583-1987-ascii").unwrap();
        let mut b = MessageBuilder::new(spec, Mti::parse("0200").unwrap());
        b.set(2, "4000056655665556")
            .unwrap()
            .set(4, "000000001234")
            .unwrap();
        b.set(7, "1124093000").unwrap().set(11, "000042").unwrap();
        b.set(32, "123456")
            .unwrap()
            .set(35, "4000056655665556=2912")
            .unwrap()
            .set(41, "TERM0001")
            .unwrap();
        let request = MessageView::decode(spec, b.encode()).unwrap();
        let basis = ReversalBasis::of(&request, Some(777));
        assert!(
            !basis.fields.contains(2) && !basis.fields.contains(35),
            "no card data"
        );
        let event = SafEvent::Enqueue {
            id: 9,
            link: "issuer".into(),
            reason: "timeout".into(),
            created_us: 1,
            basis: Box::new(basis.clone()),
            inflight_seq: Some(3),
            first_mti: None,
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(!json.contains("4000056655665556"));
        assert_eq!(serde_json::from_str::<SafEvent>(&json).unwrap(), event);
        let reversal = basis.message(spec, Mti::parse("0400").unwrap()).unwrap();
        assert_eq!(
            reversal.str(90),
            Some("020000077711240930000000012345600000000000")
        );
        assert_eq!(
            (reversal.str(4), reversal.str(11), reversal.str(41)),
            (Some("000000001234"), Some("000042"), Some("TERM0001"))
        );
        assert!(!reversal.has(2) && !reversal.has(35));
    }
}
