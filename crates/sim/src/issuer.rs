//! A simulated issuer host: answers 0100/0200 (approve or decline at a configured rate,
//! after a random delay, so answers leave out of order), 0400/0420 (acknowledged, the
//! original taken off the ledger), 0800 (echo, sign-on), and can stay silent or drop
//! connections on purpose. It keeps a ledger of what it approved and what was reversed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use switchyard_iso8583::{MessageBuilder, MessageView, Spec};
use switchyard_mux::{Frame, FrameCodec, Framing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

use crate::rng::Rng;

/// How the simulated issuer behaves.
#[derive(Debug, Clone)]
pub struct IssuerSimConfig {
    /// The dialect.
    pub spec: &'static Spec,
    /// The framing.
    pub framing: Framing,
    /// Share of financial and authorisation requests approved (0.0..=1.0).
    pub approval_rate: f64,
    /// Response code of a decline.
    pub decline_code: String,
    /// Shortest answer delay.
    pub delay_min: Duration,
    /// Longest answer delay (uniform between the two; unequal delays answer out of order).
    pub delay_max: Duration,
    /// Share of requests never answered.
    pub silence_rate: f64,
    /// Close a connection after this many requests on it.
    pub disconnect_after: Option<u64>,
    /// Connections served at once.
    pub max_connections: usize,
    /// Serve TLS with this certificate (the issuer side of a TLS link).
    pub tls: Option<Arc<switchyard_mux::ServerTls>>,
    /// Approve a sale or pre-authorisation above this amount in part: response code 10,
    /// field 4 of the answer this amount.
    pub partial_over: Option<u64>,
    /// Never answer an authorisation or financial request of exactly this amount (its
    /// reversal is answered): a deterministic timeout.
    pub silent_amount: Option<u64>,
    /// Zone keys: PIN blocks checked (the expected PIN approves, others get 55), MACs
    /// checked on requests (63 when wrong) and made on answers.
    pub keys: Option<Arc<crate::card_security::IssuerKeys>>,
}

impl IssuerSimConfig {
    /// An issuer that approves everything at once.
    pub fn approving(spec: &'static Spec) -> IssuerSimConfig {
        IssuerSimConfig {
            spec,
            framing: Framing::default(),
            approval_rate: 1.0,
            decline_code: "05".into(),
            delay_min: Duration::ZERO,
            delay_max: Duration::ZERO,
            silence_rate: 0.0,
            partial_over: None,
            silent_amount: None,
            disconnect_after: None,
            max_connections: 64,
            tls: None,
            keys: None,
        }
    }
}

/// One approval the issuer holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Approval {
    /// Field 4.
    pub amount: u64,
    /// Field 38 given.
    pub auth_id: String,
    /// Field 37.
    pub rrn: String,
    /// Field 42.
    pub merchant: String,
    /// Field 49.
    pub currency: String,
    /// The business date: field 15 (MMDD) in the current year when the request had it,
    /// else the UTC date it arrived (`YYYYMMDD`).
    pub business_date: String,
    /// The response code given (00, or 10 for a partial approval).
    pub code: String,
    /// A pre-authorisation waiting for its completion (not settled: not in the file).
    pub hold: bool,
}

/// What the issuer approved and what was reversed. Keyed by terminal id (41), the STAN the
/// issuer saw (11) and the transmission date and time (7).
#[derive(Debug, Default)]
pub struct Ledger {
    approvals: Mutex<HashMap<(String, String, String), Approval>>,
    /// Requests answered with approval.
    pub approved: AtomicU64,
    /// Requests declined.
    pub declined: AtomicU64,
    /// Reversals acknowledged (whether or not the original was found).
    pub reversals: AtomicU64,
    /// Reversals that took an approval off the ledger.
    pub reversed: AtomicU64,
    /// Requests received.
    pub requests: AtomicU64,
    /// Network management requests answered.
    pub network: AtomicU64,
    /// Requests whose PIN was the expected one.
    pub pin_right: AtomicU64,
    /// Requests declined 55 for their PIN.
    pub pin_wrong: AtomicU64,
    /// Requests whose MAC did not verify (answered 63).
    pub mac_failures: AtomicU64,
    /// Key exchanges the switch answered 00.
    pub key_exchanges: AtomicU64,
    /// The original STANs (field 90) of the reversals received, in arrival order.
    pub reversal_order: Mutex<Vec<String>>,
    /// The share of requests left unanswered now (f64 bits), changeable while running.
    silence: AtomicU64,
}

impl Ledger {
    /// Approvals still standing (not reversed or voided, pre-authorisations completed).
    pub fn standing(&self) -> Vec<((String, String, String), Approval)> {
        let map = self.approvals.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = map
            .iter()
            .filter(|(_, v)| !v.hold)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The standing approvals as a settlement file (the schema `switchyard audit reconcile`
    /// reads: business_date, rrn, terminal, merchant, stan, amount, currency,
    /// response_code, auth_id).
    pub fn settlement_csv(&self) -> String {
        let mut out = String::from(
            "business_date,rrn,terminal,merchant,stan,amount,currency,response_code,auth_id\n",
        );
        for ((terminal, stan, _), a) in self.standing() {
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{}\n",
                a.business_date,
                a.rrn,
                terminal.trim(),
                a.merchant.trim(),
                stan,
                a.amount,
                a.currency,
                a.code,
                a.auth_id
            ));
        }
        out
    }

    /// Sum of the amounts standing.
    pub fn standing_amount(&self) -> u64 {
        self.standing().iter().map(|(_, a)| a.amount).sum()
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "requests {} approved {} declined {} reversals {} (matched {}) network {} standing {} amount {} pin-right {} pin-wrong {} mac-failures {} key-exchanges {}",
            self.requests.load(Ordering::Relaxed),
            self.approved.load(Ordering::Relaxed),
            self.declined.load(Ordering::Relaxed),
            self.reversals.load(Ordering::Relaxed),
            self.reversed.load(Ordering::Relaxed),
            self.network.load(Ordering::Relaxed),
            self.standing().len(),
            self.standing_amount(),
            self.pin_right.load(Ordering::Relaxed),
            self.pin_wrong.load(Ordering::Relaxed),
            self.mac_failures.load(Ordering::Relaxed),
            self.key_exchanges.load(Ordering::Relaxed)
        )
    }
}

/// A running simulated issuer.
#[derive(Debug)]
pub struct IssuerSim {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its ledger.
    pub ledger: Arc<Ledger>,
    shutdown: CancellationToken,
}

impl Drop for IssuerSim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl IssuerSim {
    /// Listen on `addr` and serve until dropped (or `stop`).
    pub async fn start(addr: &str, config: IssuerSimConfig) -> std::io::Result<IssuerSim> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let ledger = Arc::new(Ledger::default());
        ledger
            .silence
            .store(config.silence_rate.to_bits(), Ordering::Relaxed);
        let shutdown = CancellationToken::new();
        let config = Arc::new(config);
        let (l, s) = (ledger.clone(), shutdown.clone());
        tokio::spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
            let mut seed = 0x5EED_0000_0000_0001u64;
            loop {
                let accepted = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    continue;
                };
                seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let (config, ledger, s) = (config.clone(), l.clone(), s.clone());
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    match &config.tls {
                        None => serve(stream, config.clone(), ledger, s, Rng::new(seed)).await,
                        Some(tls) => {
                            let accepted = tokio::time::timeout(
                                Duration::from_secs(10),
                                tls.acceptor().accept(stream),
                            )
                            .await;
                            if let Ok(Ok(stream)) = accepted {
                                serve(stream, config.clone(), ledger, s, Rng::new(seed)).await;
                            }
                        }
                    }
                    drop(permit);
                });
            }
        });
        Ok(IssuerSim {
            addr,
            ledger,
            shutdown,
        })
    }

    /// Change the share of requests left unanswered (an issuer going quiet and coming back).
    pub fn set_silence_rate(&self, rate: f64) {
        self.ledger
            .silence
            .store(rate.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    /// Stop listening and close every connection.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

async fn serve<S>(
    stream: S,
    config: Arc<IssuerSimConfig>,
    ledger: Arc<Ledger>,
    shutdown: CancellationToken,
    mut rng: Rng,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut input, mut output) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Frame>(4096);
    let framing = config.framing;
    let conn_done = CancellationToken::new();
    let writer_done = conn_done.clone();
    let writer = tokio::spawn(async move {
        let mut codec = FrameCodec::new(framing);
        let mut out = BytesMut::new();
        while let Some(frame) = rx.recv().await {
            out.clear();
            if codec.encode(frame, &mut out).is_err() {
                continue;
            }
            while let Ok(frame) = rx.try_recv() {
                let _ = codec.encode(frame, &mut out);
            }
            if output.write_all(&out).await.is_err() {
                break;
            }
        }
        writer_done.cancel();
    });
    let mut codec = FrameCodec::new(framing);
    let mut buf = BytesMut::with_capacity(8192);
    let mut on_this_connection = 0u64;
    let exchange_after = config
        .keys
        .as_ref()
        .and_then(|k| k.exchange_after.filter(|_| k.zmk.is_some()));
    let mut exchange_due = exchange_after.is_some();
    let exchange_timer = tokio::time::sleep(exchange_after.unwrap_or_default());
    tokio::pin!(exchange_timer);
    'read: loop {
        loop {
            let frame = match codec.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => break 'read,
            };
            let Ok(request) = MessageView::decode(config.spec, frame.message.clone()) else {
                continue;
            };
            if !request.mti().is_request() {
                // The switch's 0810 to a key exchange of ours.
                if request.mti().class() == 8 && request.field(39).is_some_and(|f| f.text() == "00")
                {
                    if let Some(keys) = &config.keys {
                        if request
                            .field(70)
                            .is_some_and(|f| f.text() == keys.exchange_code)
                        {
                            ledger.key_exchanges.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                continue;
            }
            ledger.requests.fetch_add(1, Ordering::Relaxed);
            on_this_connection += 1;
            if config
                .disconnect_after
                .is_some_and(|n| on_this_connection > n)
            {
                break 'read;
            }
            let header = framing.header.reply_to(&frame.header);
            let Some((response, delay)) = answer(&config, &ledger, &request, &mut rng) else {
                continue;
            };
            let frame = Frame::with_header(header, response);
            if delay.is_zero() {
                if tx.send(frame).await.is_err() {
                    break 'read;
                }
            } else {
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.send(frame).await;
                });
            }
        }
        let read = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = conn_done.cancelled() => break,
            _ = &mut exchange_timer, if exchange_due => {
                exchange_due = false;
                if let Some(message) = config.keys.as_ref().and_then(|k| k.exchange_request(config.spec)) {
                    if tx.send(Frame::new(message)).await.is_err() {
                        break;
                    }
                }
                continue;
            }
            r = input.read_buf(&mut buf) => r,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    drop(tx);
    writer.abort();
}

/// The answer to one request and when to send it; `None` for silence.
fn answer(
    config: &IssuerSimConfig,
    ledger: &Ledger,
    request: &MessageView<'static>,
    rng: &mut Rng,
) -> Option<(Bytes, Duration)> {
    let mti = request.mti();
    let mut builder = MessageBuilder::new(config.spec, mti);
    let text = |n| request.field(n).map(|f| f.text()).unwrap_or_default();
    if mti.class() == 8 {
        ledger.network.fetch_add(1, Ordering::Relaxed);
        // The switch's key exchange: a new ZPK under the ZMK.
        let exchange = config.keys.as_ref().filter(|k| {
            request
                .field(70)
                .is_some_and(|f| f.text() == k.exchange_code)
        });
        let code: &[u8] = match exchange {
            Some(keys) if keys.accept_exchange(request) => {
                ledger.key_exchanges.fetch_add(1, Ordering::Relaxed);
                b"00"
            }
            Some(_) => b"63",
            None => b"00",
        };
        builder.respond_to(request, code).ok()?;
        if exchange.is_some() {
            builder.copy_from(request, 70).ok()?;
        }
        return Some((builder.encode(), Duration::ZERO));
    }
    if rng.chance(f64::from_bits(ledger.silence.load(Ordering::Relaxed))) {
        return None;
    }
    let amount = request.field(4).and_then(|f| f.as_u64()).unwrap_or(0);
    if matches!(mti.class(), 1 | 2) && config.silent_amount == Some(amount) {
        return None;
    }
    let processing = text(3);
    let delay = rng.between(config.delay_min, config.delay_max);
    match mti.class() {
        4 if !mac_verifies_if_keyed(config, ledger, request) => {
            builder.respond_to(request, b"63").ok()?;
        }
        4 => {
            ledger.reversals.fetch_add(1, Ordering::Relaxed);
            // Field 90: original MTI (4), STAN (6), transmission date and time (10), ...
            let original = text(90);
            let key = (
                text(41),
                original.get(4..10).unwrap_or_default().to_string(),
                original.get(10..20).unwrap_or_default().to_string(),
            );
            ledger
                .reversal_order
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(key.1.clone());
            // A partial reversal (field 95's replacement amount) leaves the rest standing.
            let replacement = text(95)
                .get(..12)
                .and_then(|a| a.parse::<u64>().ok())
                .filter(|a| *a > 0);
            let mut approvals = ledger.approvals.lock().unwrap_or_else(|p| p.into_inner());
            let removed = match (replacement, approvals.get_mut(&key)) {
                (Some(rest), Some(a)) => {
                    a.amount = rest.min(a.amount);
                    Some(())
                }
                _ => approvals.remove(&key).map(|_| ()),
            };
            drop(approvals);
            if removed.is_some() {
                ledger.reversed.fetch_add(1, Ordering::Relaxed);
            }
            builder.respond_to(request, b"00").ok()?;
        }
        // A completion names its pre-authorisation, a void its original (RRN + auth id).
        2 if mti.function() == 2 || processing.starts_with("02") => {
            let completion = mti.function() == 2;
            let mut approvals = ledger.approvals.lock().unwrap_or_else(|p| p.into_inner());
            let original = approvals
                .iter()
                .find(|(k, a)| {
                    k.0 == text(41)
                        && a.rrn == text(37)
                        && a.auth_id == text(38).trim()
                        && a.hold == completion
                })
                .map(|(k, _)| k.clone());
            let code: &[u8] = match (original, completion) {
                (Some(k), true) => {
                    let hold = approvals.remove(&k).unwrap_or_default();
                    let completed = Approval {
                        amount,
                        hold: false,
                        code: "00".into(),
                        ..hold
                    };
                    approvals.insert((text(41), text(11), text(7)), completed);
                    b"00"
                }
                (Some(k), false) => {
                    approvals.remove(&k);
                    ledger.reversed.fetch_add(1, Ordering::Relaxed);
                    b"00"
                }
                (None, _) => b"25",
            };
            drop(approvals);
            builder.respond_to(request, code).ok()?;
            if code == b"00" {
                ledger.approved.fetch_add(1, Ordering::Relaxed);
                builder.copy_from(request, 38).ok()?;
            } else {
                ledger.declined.fetch_add(1, Ordering::Relaxed);
            }
        }
        // A balance inquiry: approved, no money moves.
        2 if processing.starts_with("31") => {
            builder.respond_to(request, b"00").ok()?;
            ledger.approved.fetch_add(1, Ordering::Relaxed);
        }
        1 | 2 if mti.function() == 0 => {
            if let Some(code) = refused_by_keys(config, ledger, request) {
                builder.respond_to(request, code.as_bytes()).ok()?;
                ledger.declined.fetch_add(1, Ordering::Relaxed);
            } else if rng.chance(config.approval_rate) {
                let auth_id = format!("{:06}", rng.next() % 1_000_000);
                let partial = config
                    .partial_over
                    .filter(|limit| amount > *limit && !processing.starts_with("20"));
                let code = if partial.is_some() { "10" } else { "00" };
                builder.respond_to(request, code.as_bytes()).ok()?;
                if let Some(limit) = partial {
                    builder.set_u64(4, limit).ok()?;
                }
                if config.spec.field(38).is_some() {
                    builder.set(38, &auth_id).ok()?;
                }
                let approval = Approval {
                    amount: partial.unwrap_or(amount),
                    auth_id,
                    rrn: text(37),
                    merchant: text(42),
                    currency: text(49),
                    business_date: business_date(request.field(15).map(|f| f.text())),
                    code: code.into(),
                    hold: mti.class() == 1,
                };
                ledger
                    .approvals
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((text(41), text(11), text(7)), approval);
                ledger.approved.fetch_add(1, Ordering::Relaxed);
            } else {
                builder
                    .respond_to(request, config.decline_code.as_bytes())
                    .ok()?;
                ledger.declined.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Advices (0120, 0220) and anything else: acknowledged.
        _ => {
            builder.respond_to(request, b"00").ok()?;
        }
    }
    if let Some(zak) = config
        .keys
        .as_ref()
        .and_then(|k| k.zak.as_ref().map(|z| (z, k.mac_algorithm)))
    {
        let mac = crate::card_security::mac_of(&mut builder, zak.0, zak.1).ok()?;
        let field = switchyard_iso8583::mac_input::mac_field_for(&builder);
        builder.set(field, mac).ok()?;
    }
    Some((builder.encode(), delay))
}

/// Whether `request` carries a good MAC under the ZAK (true without one configured);
/// a bad one is counted.
fn mac_verifies_if_keyed(
    config: &IssuerSimConfig,
    ledger: &Ledger,
    request: &MessageView<'static>,
) -> bool {
    let Some((zak, algorithm)) = config
        .keys
        .as_ref()
        .and_then(|k| k.zak.as_ref().map(|z| (z, k.mac_algorithm)))
    else {
        return true;
    };
    let ok = crate::card_security::mac_verifies(request, zak, algorithm);
    if !ok {
        ledger.mac_failures.fetch_add(1, Ordering::Relaxed);
    }
    ok
}

/// The business date of a request: field 15 (MMDD) in the current year, else today (UTC).
fn business_date(field15: Option<String>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let today = switchyard_iso8583::datetime::Civil::from_unix(i64::try_from(now).unwrap_or(0));
    match field15.filter(|f| f.len() == 4 && f.bytes().all(|b| b.is_ascii_digit())) {
        Some(mmdd) => format!("{}{mmdd}", today.year),
        None => format!("{}{:02}{:02}", today.year, today.month, today.day),
    }
}

/// The decline code the zone keys give `request` (63 a bad MAC, 55 a wrong PIN), counted
/// once; `None` when they pass it (or there are none).
fn refused_by_keys(
    config: &IssuerSimConfig,
    ledger: &Ledger,
    request: &MessageView<'static>,
) -> Option<&'static str> {
    use crate::card_security::PinCheck;
    let keys = config.keys.as_ref()?;
    if !mac_verifies_if_keyed(config, ledger, request) {
        return Some("63");
    }
    match keys.check_pin(request) {
        PinCheck::Absent => None,
        PinCheck::Right => {
            ledger.pin_right.fetch_add(1, Ordering::Relaxed);
            None
        }
        PinCheck::Wrong => {
            ledger.pin_wrong.fetch_add(1, Ordering::Relaxed);
            Some("55")
        }
    }
}
