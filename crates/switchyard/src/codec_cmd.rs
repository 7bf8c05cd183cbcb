//! `decode`, `encode` and `specs`: the codec on the command line.
//!
//! Errors name the field and byte offset but never echo input values: JSON is parsed into
//! a generic value first so that serde's type errors (which quote the offending value)
//! cannot carry a PAN to the terminal.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use switchyard_iso8583::spec::{DataClass, LengthKind};
use switchyard_iso8583::{shipped, wire, MessageBuilder, MessageView, Mti, Spec};

/// A command failure with its exit code.
pub struct Failure {
    pub error: anyhow::Error,
    pub exit_code: u8,
}

/// sysexits: the command was used incorrectly.
pub const EX_USAGE: u8 = 64;
/// sysexits: the input data was incorrect.
pub const EX_DATAERR: u8 = 65;
/// sysexits: an input file did not exist or was not readable.
pub const EX_NOINPUT: u8 = 66;
/// sysexits: output could not be written.
pub const EX_IOERR: u8 = 74;
/// The service did not answer (sysexits `EX_UNAVAILABLE`).
pub const EX_UNAVAILABLE: u8 = 69;
/// sysexits: configuration (here: a spec file) is wrong.
pub const EX_CONFIG: u8 = 78;

pub fn fail(exit_code: u8) -> impl FnOnce(anyhow::Error) -> Failure {
    move |error| Failure { error, exit_code }
}

pub type CmdResult = Result<(), Failure>;

/// Resolve a shipped spec name or a spec file path. File specs live for the process.
pub fn resolve_spec(name_or_path: &str) -> anyhow::Result<&'static Spec> {
    if let Ok(spec) = shipped(name_or_path) {
        return Ok(spec);
    }
    let path = Path::new(name_or_path);
    if !path.exists() {
        return Err(anyhow!(
            "spec {name_or_path:?} is neither a shipped spec (see `switchyard specs`) nor a file"
        ));
    }
    let spec = Spec::from_file(path)?;
    Ok(Box::leak(Box::new(spec)))
}

fn read_input(input: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    match input {
        None => std::io::stdin()
            .read_to_end(&mut data)
            .context("reading standard input")?,
        Some(p) if p == Path::new("-") => std::io::stdin()
            .read_to_end(&mut data)
            .context("reading standard input")?,
        Some(p) => {
            data = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            data.len()
        }
    };
    Ok(data)
}

fn parse_hex_input(text: &[u8]) -> anyhow::Result<Vec<u8>> {
    let digits: Vec<(usize, u8)> = text
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, b)| !b.is_ascii_whitespace())
        .collect();
    if let Some((at, _)) = digits.iter().find(|(_, b)| wire::hex_val(*b) > 15) {
        return Err(anyhow!(
            "input: not hex at character {at} (use --raw for binary input)"
        ));
    }
    if !digits.len().is_multiple_of(2) {
        return Err(anyhow!(
            "input: odd number of hex digits ({})",
            digits.len()
        ));
    }
    Ok(digits
        .chunks_exact(2)
        .map(|p| wire::hex_val(p[0].1) << 4 | wire::hex_val(p[1].1))
        .collect())
}

fn write_out(bytes: &[u8]) -> CmdResult {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .context("writing standard output")
        .map_err(fail(EX_IOERR))
}

/// `switchyard decode`.
pub fn decode(
    spec: &str,
    reveal: bool,
    raw: bool,
    pretty: bool,
    names: bool,
    input: Option<&Path>,
) -> CmdResult {
    let spec = resolve_spec(spec).map_err(fail(EX_CONFIG))?;
    let data = read_input(input).map_err(fail(EX_NOINPUT))?;
    let frame = if raw {
        data
    } else {
        parse_hex_input(&data).map_err(fail(EX_DATAERR))?
    };
    let view = MessageView::decode(spec, Bytes::from(frame.clone()))
        .map_err(|e| fail(EX_DATAERR)(anyhow!("{e}{}", decode_hint(&frame))))?;
    let rendered = view.render(reveal);
    if names {
        // One line per field: number, the spec's name for it, value.
        return write_out(rendered.to_string().as_bytes());
    }
    let json = if pretty {
        serde_json::to_string_pretty(&rendered)
    } else {
        serde_json::to_string(&rendered)
    };
    let mut json = json.context("rendering JSON").map_err(fail(EX_IOERR))?;
    json.push('\n');
    write_out(json.as_bytes())
}

/// What a failed decode's input looks like, when that is likely why it failed.
fn decode_hint(frame: &[u8]) -> String {
    let len = frame.len();
    let binary2 = frame
        .get(..2)
        .map(|p| usize::from(u16::from_be_bytes([p[0], p[1]])));
    let ascii4 = frame
        .get(..4)
        .filter(|p| p.iter().all(u8::is_ascii_digit))
        .and_then(|p| std::str::from_utf8(p).ok()?.parse::<usize>().ok());
    if binary2 == Some(len.wrapping_sub(2)) || ascii4 == Some(len.wrapping_sub(4)) {
        "; this looks like a length prefix: decode the message without it".into()
    } else if frame.contains(&b'*') {
        "; this looks like masked output (a masked PAN does not decode): decode the original bytes"
            .into()
    } else {
        String::new()
    }
}

/// `switchyard encode`.
pub fn encode(spec: &str, raw: bool, pad: bool, input: Option<&Path>) -> CmdResult {
    let spec = resolve_spec(spec).map_err(fail(EX_CONFIG))?;
    let data = read_input(input).map_err(fail(EX_NOINPUT))?;
    let builder = build_from_json(spec, &data, pad).map_err(|e| {
        let masked = data.contains(&b'*');
        let hint = if masked {
            "; this looks like masked output (decode with --reveal for input to encode)"
        } else {
            ""
        };
        fail(EX_DATAERR)(anyhow!("{e:#}{hint}"))
    })?;
    let encoded = builder.encode();
    if raw {
        write_out(&encoded)
    } else {
        let mut hex = wire::to_hex(&encoded);
        hex.push('\n');
        write_out(hex.as_bytes())
    }
}

/// Build a message from the JSON form `decode` prints; with `pad`, numeric fixed-length
/// fields shorter than their length are left-padded with zeros.
pub(crate) fn build_from_json<'s>(
    spec: &'s Spec,
    json: &[u8],
    pad: bool,
) -> anyhow::Result<MessageBuilder<'s>> {
    // Parse generically first: serde's typed errors would quote values.
    let value: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| anyhow!("input: not JSON (line {}, column {})", e.line(), e.column()))?;
    let object = value
        .as_object()
        .ok_or_else(|| anyhow!("input: expected a JSON object"))?;
    if let Some(key) = object.keys().find(|k| *k != "mti" && *k != "fields") {
        return Err(anyhow!(
            "input: unknown key {key:?} (expected \"mti\" and \"fields\")"
        ));
    }
    let mti = object
        .get("mti")
        .and_then(|m| m.as_str())
        .and_then(Mti::parse)
        .ok_or_else(|| anyhow!("MTI: expected a string of 4 digits"))?;
    let fields = object
        .get("fields")
        .and_then(|f| f.as_object())
        .ok_or_else(|| anyhow!("input: \"fields\" must be an object"))?;
    let mut builder = MessageBuilder::new(spec, mti);
    for (key, value) in fields {
        let n: u8 = key
            .parse()
            .map_err(|_| anyhow!("fields: key {key:?} is not a field number"))?;
        let text = value
            .as_str()
            .ok_or_else(|| anyhow!("field {n}: value must be a JSON string"))?;
        let definition = spec
            .field(n)
            .ok_or_else(|| anyhow!("field {n}: not defined by spec {}", spec.name()))?;
        if definition.class.is_binary() {
            let bytes = wire::from_hex(text.as_bytes())
                .map_err(|at| anyhow!("field {n}: not valid hex at character {at}"))?;
            builder.set(n, bytes)?;
        } else if pad
            && definition.class == DataClass::N
            && definition.length == LengthKind::Fixed
            && text.len() < usize::from(definition.max)
        {
            let padded = format!("{text:0>width$}", width = usize::from(definition.max));
            builder.set(n, padded.as_str())?;
        } else {
            builder.set(n, text)?;
        }
    }
    Ok(builder)
}

/// `switchyard specs`.
pub fn specs() -> CmdResult {
    let mut out = String::new();
    for (name, _) in switchyard_iso8583::shipped::SHIPPED {
        let spec = shipped(name).map_err(|e| fail(EX_CONFIG)(e.into()))?;
        out.push_str(&format!("{:<28} {}\n", spec.name(), spec.description()));
    }
    write_out(out.as_bytes())
}
