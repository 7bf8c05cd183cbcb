//! `switchyard send`: one transaction to a switch, the answer printed decoded and masked
//! with each field's name. What a merchant's technician runs to test a terminal's setup
//! before it goes live.
//!
//! The PAN comes from standard input (`--pan-stdin`, kept out of shell history) or is a
//! test card; it is never printed, and neither is anything else the spec marks as card
//! data.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use bytes::BytesMut;
use clap::Args;
use switchyard_iso8583::datetime::Civil;
use switchyard_iso8583::{MessageBuilder, MessageView, Mti, Spec};
use switchyard_mux::{Frame, FrameCodec, Framing};
use tokio_util::codec::{Decoder, Encoder};

use crate::codec_cmd::{fail, CmdResult, EX_DATAERR, EX_IOERR, EX_UNAVAILABLE, EX_USAGE};
use crate::sim_cmd::Wire;

#[derive(Args, Debug)]
pub struct SendArgs {
    /// The switch, host:port.
    #[arg(long, default_value = "127.0.0.1:8583")]
    target: String,
    #[command(flatten)]
    wire: Wire,
    /// The request's MTI.
    #[arg(long, default_value = "0200")]
    mti: String,
    /// Read the PAN from standard input.
    #[arg(long, conflicts_with = "test_card")]
    pan_stdin: bool,
    /// Use test card N (0: Visa 400005..., 1: Mastercard 541333..., 2: Mastercard 222300...,
    /// 3: Discover 601100...); the default without --pan-stdin.
    #[arg(long, value_name = "N")]
    test_card: Option<usize>,
    /// Amount in minor units (field 4).
    #[arg(long, default_value_t = 1000)]
    amount: u64,
    /// Processing code (field 3).
    #[arg(long, default_value = "000000")]
    processing_code: String,
    /// Terminal id (field 41).
    #[arg(long, default_value = "T0000001")]
    terminal: String,
    /// Merchant id (field 42).
    #[arg(long, default_value = "MERCHANT0000001")]
    merchant: String,
    /// Currency (field 49).
    #[arg(long, default_value = "978")]
    currency: String,
    /// Any other field, as N=VALUE (repeatable; replaces a value set above).
    #[arg(long = "field", value_name = "N=VALUE")]
    fields: Vec<String>,
    /// Milliseconds to wait for the answer.
    #[arg(long, default_value_t = 15_000)]
    timeout_ms: u64,
}

pub fn send(args: SendArgs) -> CmdResult {
    let (spec, framing) = args.wire.resolve().map_err(fail(EX_USAGE))?;
    let pan = pan(&args)?;
    let request = request(&args, spec, &pan).map_err(fail(EX_USAGE))?;
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "request to {}\n{}", args.target, request.masked());
    let answer = exchange(&args, framing, spec, request.buffer())?;
    writeln!(out, "answer\n{}", answer.masked()).map_err(|e| fail(EX_IOERR)(e.into()))
}

fn pan(args: &SendArgs) -> Result<String, crate::codec_cmd::Failure> {
    if args.pan_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| fail(EX_USAGE)(e.into()))?;
        let pan = line.trim().to_string();
        if pan.is_empty() || pan.len() > 19 || !pan.bytes().all(|b| b.is_ascii_digit()) {
            return Err(fail(EX_USAGE)(anyhow!(
                "--pan-stdin: expected 1 to 19 digits"
            )));
        }
        return Ok(pan);
    }
    let n = args.test_card.unwrap_or(0);
    switchyard_sim::TEST_PANS
        .get(n)
        .map(|p| p.to_string())
        .ok_or_else(|| {
            fail(EX_USAGE)(anyhow!(
                "--test-card {n}: there are {} test cards (0 to {})",
                switchyard_sim::TEST_PANS.len(),
                switchyard_sim::TEST_PANS.len() - 1
            ))
        })
}

/// The request: the given values, the times of now, a STAN and RRN from the clock, and the
/// extra fields last. A value the spec refuses is an error naming the field.
fn request(
    args: &SendArgs,
    spec: &'static Spec,
    pan: &str,
) -> anyhow::Result<MessageView<'static>> {
    let mti = Mti::parse(&args.mti)
        .filter(|m| m.is_request())
        .ok_or_else(|| anyhow!("--mti {:?}: expected a request MTI such as 0200", args.mti))?;
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let now = since_epoch.as_secs();
    let f7 = Civil::from_unix(i64::try_from(now).unwrap_or(0)).mmddhhmmss();
    let f7 = String::from_utf8_lossy(&f7).into_owned();
    // From the microseconds, so that two sends within a second are not duplicates.
    let stan = format!("{:06}", since_epoch.as_micros() % 999_999 + 1);
    let mut values: Vec<(u8, String)> = vec![
        (2, pan.to_string()),
        (3, args.processing_code.clone()),
        (4, format!("{:012}", args.amount)),
        (7, f7.clone()),
        (11, stan.clone()),
        (12, f7[4..10].to_string()),
        (13, f7[0..4].to_string()),
        (22, "051".into()),
        (25, "00".into()),
        (37, format!("{:06}{stan}", now / 1_000_000 % 1_000_000)),
        (41, args.terminal.clone()),
        (42, args.merchant.clone()),
        (49, args.currency.clone()),
    ];
    for extra in &args.fields {
        let (n, v) = extra
            .split_once('=')
            .and_then(|(n, v)| Some((n.trim().parse::<u8>().ok()?, v)))
            .ok_or_else(|| anyhow!("--field {extra:?}: expected N=VALUE, N a field number"))?;
        if spec.field(n).is_none() {
            return Err(anyhow!(
                "--field {n}: {} does not define field {n}",
                spec.name()
            ));
        }
        values.retain(|(m, _)| *m != n);
        values.push((n, v.to_string()));
    }
    let mut b = MessageBuilder::new(spec, mti);
    for (n, v) in &values {
        if spec.field(*n).is_some() {
            // The error names the field and why, never the value (it may be the PAN).
            b.set(*n, v).map_err(|e| anyhow!("field {n}: {e}"))?;
        }
    }
    Ok(MessageView::decode(spec, b.encode())?)
}

/// Send `request` framed and read the answer to it, within the timeout.
fn exchange(
    args: &SendArgs,
    framing: Framing,
    spec: &'static Spec,
    request: &bytes::Bytes,
) -> Result<MessageView<'static>, crate::codec_cmd::Failure> {
    let unavailable = |what: String| fail(EX_UNAVAILABLE)(anyhow!("{}: {what}", args.target));
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&args.target)
        .map_err(|e| fail(EX_USAGE)(anyhow!("--target {}: {e}", args.target)))?
        .next()
        .ok_or_else(|| fail(EX_USAGE)(anyhow!("--target {}: no address", args.target)))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| unavailable(format!("connect: {e}")))?;
    let mut codec = FrameCodec::new(framing);
    let mut out = BytesMut::new();
    codec
        .encode(Frame::new(request.clone()), &mut out)
        .map_err(|e| fail(EX_DATAERR)(anyhow!("framing the request: {e}")))?;
    stream
        .write_all(&out)
        .map_err(|e| unavailable(format!("sending: {e}")))?;
    let deadline = Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                return MessageView::decode(spec, frame.message).map_err(|e| {
                    fail(EX_DATAERR)(anyhow!(
                        "the answer does not decode as {}: {e}",
                        spec.name()
                    ))
                })
            }
            Ok(None) => {}
            Err(e) => return Err(fail(EX_DATAERR)(anyhow!("the answer is not framed: {e}"))),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(unavailable(format!(
                "no answer within {} ms",
                args.timeout_ms
            )));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| fail(EX_IOERR)(e.into()))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err(unavailable("closed by the switch without an answer".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(unavailable(format!(
                    "no answer within {} ms",
                    args.timeout_ms
                )))
            }
            Err(e) => return Err(unavailable(format!("reading: {e}"))),
        }
    }
}
