//! Interop with a real peer: pyiso8583 encodes, we decode (and re-encode to the same bytes);
//! we encode, pyiso8583 decodes (and re-encodes to the same bytes). Several hundred random
//! messages per dialect and direction.

use std::collections::BTreeMap;
use std::process::Command;

use bytes::Bytes;
use switchyard_iso8583::testgen::{random_message, value_text, Rng};
use switchyard_iso8583::{shipped, wire, MessageBuilder, MessageView, Spec};

use crate::support::{python, root};

/// (our spec, pyiso8583 spec): pyiso8583's own `default_ascii` and `default`, and a
/// pyiso8583 spec the script derives from our BCD dialect.
const PAIRS: [(&str, &str); 3] = [
    ("iso8583-1987-ascii", "default_ascii"),
    ("iso8583-1987-binary-bitmap", "default"),
    ("iso8583-1987-bcd", "bcd"),
];
const MESSAGES: usize = 400;
/// pyiso8583 does not carry field 65 (it takes it for a bitmap indicator).
const NOT_CARRIED: u8 = 65;

fn script() -> String {
    root()
        .join("tests/interop/pyiso_interop.py")
        .display()
        .to_string()
}

fn spec_file(name: &str) -> String {
    root()
        .join("specs")
        .join(format!("{name}.toml"))
        .display()
        .to_string()
}

fn set_text(builder: &mut MessageBuilder<'_>, spec: &Spec, n: u8, text: &str) {
    let result = if spec.field(n).unwrap().class.is_binary() {
        builder.set(n, wire::from_hex(text.as_bytes()).unwrap())
    } else {
        builder.set(n, text)
    };
    result.unwrap_or_else(|e| panic!("{}: {e}", spec.name()));
}

#[test]
fn pyiso8583_encodes_switchyard_decodes() {
    for (ours, theirs) in PAIRS {
        let spec = shipped(ours).unwrap();
        let out = std::env::temp_dir().join(format!(
            "switchyard-interop-{}-{ours}.jsonl",
            std::process::id()
        ));
        let status = Command::new(python())
            .arg(script())
            .args([
                "gen",
                &spec_file(ours),
                theirs,
                &MESSAGES.to_string(),
                "8583",
            ])
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success(), "pyiso8583 generator failed for {theirs}");
        let lines = std::fs::read_to_string(&out).unwrap();
        let _ = std::fs::remove_file(&out);
        let mut checked = 0;
        for (line_no, line) in lines.lines().enumerate() {
            let msg: serde_json::Value = serde_json::from_str(line).unwrap();
            let frame = wire::from_hex(msg["hex"].as_str().unwrap().as_bytes()).unwrap();
            let view = MessageView::decode(spec, Bytes::from(frame.clone()))
                .unwrap_or_else(|e| panic!("{ours} line {}: {e}", line_no + 1));
            let expected: BTreeMap<u8, String> = msg["fields"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.parse().unwrap(), v.as_str().unwrap().to_string()))
                .collect();
            let got: BTreeMap<u8, String> = view.fields().map(|f| (f.number, f.text())).collect();
            assert_eq!(view.mti().as_str(), msg["mti"].as_str().unwrap());
            assert_eq!(got, expected, "{ours} line {}", line_no + 1);
            let mut builder = MessageBuilder::new(spec, view.mti());
            for (&n, text) in &expected {
                set_text(&mut builder, spec, n, text);
            }
            assert_eq!(
                &builder.encode()[..],
                &frame[..],
                "{ours} line {}: bytes differ",
                line_no + 1
            );
            checked += 1;
        }
        assert_eq!(checked, MESSAGES, "{ours}");
    }
}

#[test]
fn switchyard_encodes_pyiso8583_decodes() {
    for (ours, theirs) in PAIRS {
        let spec = shipped(ours).unwrap();
        let mut rng = Rng::new(0x0051_17C4_8583);
        let mut lines = String::new();
        for _ in 0..MESSAGES {
            let (mti, fields) = random_message(spec, &mut rng);
            let fields: Vec<_> = fields
                .into_iter()
                .filter(|(n, _)| *n != NOT_CARRIED)
                .collect();
            let mut builder = MessageBuilder::new(spec, mti);
            let mut texts = serde_json::Map::new();
            for (n, value) in &fields {
                builder.set(*n, value).unwrap();
                texts.insert(n.to_string(), value_text(spec, *n, value).into());
            }
            let line = serde_json::json!({
                "mti": mti.as_str(),
                "fields": texts,
                "hex": wire::to_hex(&builder.encode()),
            });
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        let input = std::env::temp_dir().join(format!(
            "switchyard-interop-out-{}-{ours}.jsonl",
            std::process::id()
        ));
        std::fs::write(&input, lines).unwrap();
        let output = Command::new(python())
            .arg(script())
            .args(["check", theirs])
            .arg(&input)
            .arg(spec_file(ours))
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&input);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains(&format!("{MESSAGES} passed, 0 failed")),
            "{ours} vs pyiso8583 {theirs}:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
