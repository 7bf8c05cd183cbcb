//! The codec commands of the real binary: `decode`, `encode`, `specs`.

use crate::support::{root, switchyard};

const PAN: &str = "4761739001010119";

fn golden_hex(dialect: &str, name: &str) -> String {
    std::fs::read_to_string(root().join(format!("crates/iso8583/testdata/{dialect}/{name}.hex")))
        .unwrap()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn specs_lists_every_shipped_dialect() {
    let out = switchyard(&["specs"], b"");
    assert!(out.status.success());
    for name in [
        "iso8583-1987-ascii",
        "iso8583-1987-binary-bitmap",
        "iso8583-1987-bcd",
        "iso8583-1993-ascii",
    ] {
        assert!(stdout(&out).contains(name), "{name} missing");
    }
}

#[test]
fn decode_masks_by_default_and_reveals_on_request() {
    let hex = golden_hex("iso8583-1987-ascii", "0200");
    let out = switchyard(&["decode", "--spec", "iso8583-1987-ascii"], hex.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["mti"], "0200");
    assert_eq!(json["fields"]["2"], "476173******0119");
    assert_eq!(json["fields"]["35"], "[REDACTED]");
    assert_eq!(json["fields"]["52"], "[REDACTED]");
    assert_eq!(json["fields"]["41"], "TERM0001");
    assert!(json["fields"].get("1").is_none(), "bitmaps are not fields");
    assert!(!stdout(&out).contains(PAN));

    let out = switchyard(
        &["decode", "--spec", "iso8583-1987-ascii", "--reveal"],
        hex.as_bytes(),
    );
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["fields"]["2"], PAN);
    assert_eq!(json["fields"]["52"], "3A5F0C1D2E4B6978");
}

#[test]
fn encode_of_revealed_decode_gives_the_same_bytes_in_every_dialect() {
    for dialect in [
        "iso8583-1987-ascii",
        "iso8583-1987-binary-bitmap",
        "iso8583-1987-bcd",
        "iso8583-1993-ascii",
    ] {
        let dir = root().join("crates/iso8583/testdata").join(dialect);
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "hex") {
                continue;
            }
            let hex = std::fs::read_to_string(&path).unwrap();
            let decoded = switchyard(&["decode", "--spec", dialect, "--reveal"], hex.as_bytes());
            assert!(
                decoded.status.success(),
                "{}: {}",
                path.display(),
                stderr(&decoded)
            );
            let encoded = switchyard(&["encode", "--spec", dialect], &decoded.stdout);
            assert!(
                encoded.status.success(),
                "{}: {}",
                path.display(),
                stderr(&encoded)
            );
            assert_eq!(stdout(&encoded).trim(), hex.trim(), "{}", path.display());
        }
    }
}

#[test]
fn raw_bytes_in_and_out_and_spec_files_by_path() {
    let json = r#"{"mti":"0800","fields":{"7":"1123093000","11":"000450","70":"301"}}"#;
    let spec_path = root().join("specs/iso8583-1987-binary-bitmap.toml");
    let spec_path = spec_path.to_str().unwrap();
    let raw = switchyard(&["encode", "--spec", spec_path, "--raw"], json.as_bytes());
    assert!(raw.status.success(), "{}", stderr(&raw));
    assert_eq!(&raw.stdout[..4], b"0800");
    let decoded = switchyard(
        &[
            "decode",
            "--spec",
            "iso8583-1987-binary-bitmap",
            "--raw",
            "-",
        ],
        &raw.stdout,
    );
    assert!(decoded.status.success(), "{}", stderr(&decoded));
    let back: serde_json::Value = serde_json::from_str(&stdout(&decoded)).unwrap();
    assert_eq!(
        back,
        serde_json::from_str::<serde_json::Value>(json).unwrap()
    );
}

#[test]
fn bad_input_gets_one_line_naming_field_and_offset() {
    let hex = golden_hex("iso8583-1987-ascii", "0200");
    // Truncate inside field 55.
    let cut = &hex.trim()[..hex.trim().len() - 40];
    let out = switchyard(&["decode", "--spec", "iso8583-1987-ascii"], cut.as_bytes());
    assert_eq!(out.status.code(), Some(65));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("field 55: truncated") && err.contains("byte offset"),
        "{err}"
    );
    assert!(!err.contains(PAN));

    let out = switchyard(&["decode", "--spec", "iso8583-1987-ascii"], b"0200 zz");
    assert_eq!(out.status.code(), Some(65));
    assert!(
        stderr(&out).contains("not hex at character 5"),
        "{}",
        stderr(&out)
    );

    let out = switchyard(&["decode", "--spec", "no-such-spec"], hex.as_bytes());
    assert_eq!(out.status.code(), Some(78));

    let out = switchyard(
        &["decode", "--spec", "iso8583-1987-ascii", "/no/such/file"],
        b"",
    );
    assert_eq!(out.status.code(), Some(66));
}

#[test]
fn encode_errors_never_echo_values() {
    let cases = [
        (
            r#"{"mti":"0200","fields":{"2":4761739001010119}}"#,
            "field 2: value must be a JSON string",
        ),
        (
            r#"{"mti":"0200","fields":{"2":"4761739001010119X"}}"#,
            "field 2: character not allowed in class n",
        ),
        (
            r#"{"mti":"0200","fields":{"52":"476173900101011900"}}"#,
            "field 52: length 9, the field is fixed at 8",
        ),
        (
            r#"{"mti":"0200","fields":{"35":"4761739001010119=2512^"}}"#,
            "field 35: character not allowed in class z",
        ),
        (
            r#"{"mti":"02x0","fields":{}}"#,
            "MTI: expected a string of 4 digits",
        ),
        (
            r#"{"mti":"0200","fields":{"2":"4761739001010119"},"extra":1}"#,
            "unknown key \"extra\"",
        ),
        (
            r#"{"mti":"0200","fields":{"2":"4761739001010119""#,
            "not JSON",
        ),
    ];
    for (json, message) in cases {
        let out = switchyard(
            &["encode", "--spec", "iso8583-1987-binary-bitmap"],
            json.as_bytes(),
        );
        assert_eq!(out.status.code(), Some(65), "{json}");
        let err = stderr(&out);
        assert!(err.contains(message), "{json}: {err}");
        assert!(!err.contains(PAN), "{err}");
    }
}

#[test]
fn sim_terminal_fails_with_the_reason_against_a_closed_port() {
    // A port nothing listens on: bound, read and released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("127.0.0.1:{port}");
    let out = switchyard(
        &[
            "sim",
            "terminal",
            "--target",
            &target,
            "--count",
            "2",
            "--connections",
            "2",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("failures: connection refused: 2"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("2 connections failed: connection refused: 2"),
        "{}",
        stderr(&out)
    );
    let bad = switchyard(
        &[
            "sim", "terminal", "--target", &target, "--count", "1", "--mti", "0400",
        ],
        b"",
    );
    assert_eq!(bad.status.code(), Some(64));
    assert!(stderr(&bad).contains("the simulator sends 0100 or 0200"));
}

#[test]
fn decode_names_fields_and_says_why_a_decode_or_encode_failed() {
    let spec = "iso8583-1987-ascii";
    let hex = golden_hex(spec, "0200");
    let out = switchyard(&["decode", "--spec", spec, "--names"], hex.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.lines()
            .any(|l| l.contains("Primary account number (PAN)") && l.contains("476173******0119")),
        "{text}"
    );
    assert!(!text.contains(PAN));
    // Field 55 broken into its EMV tags, one a line.
    assert!(text.contains("       9F26     C2C12B098F3DA6E3"), "{text}");

    // The same message with its 2-byte length prefix still on.
    let bytes = hex.trim().len() / 2;
    let framed = format!("{bytes:04X}{}", hex.trim());
    let out = switchyard(&["decode", "--spec", spec], framed.as_bytes());
    assert_eq!(out.status.code(), Some(65));
    assert!(
        stderr(&out).contains("this looks like a length prefix"),
        "{}",
        stderr(&out)
    );

    // Masked output fed back to encode.
    let masked = r#"{"mti":"0200","fields":{"2":"476173******0119","3":"000000"}}"#;
    let out = switchyard(&["encode", "--spec", spec], masked.as_bytes());
    assert_eq!(out.status.code(), Some(65));
    assert!(
        stderr(&out).contains("this looks like masked output"),
        "{}",
        stderr(&out)
    );

    // --pad: numeric fixed fields left-padded with zeros.
    let short = r#"{"mti":"0200","fields":{"3":"0","4":"1000","11":"42"}}"#;
    let out = switchyard(&["encode", "--spec", spec], short.as_bytes());
    assert_eq!(out.status.code(), Some(65), "too short without --pad");
    let out = switchyard(&["encode", "--spec", spec, "--pad"], short.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    let back = switchyard(&["decode", "--spec", spec], stdout(&out).as_bytes());
    let json: serde_json::Value = serde_json::from_str(&stdout(&back)).unwrap();
    assert_eq!(json["fields"]["4"], "000000001000");
    assert_eq!(json["fields"]["11"], "000042");
}
