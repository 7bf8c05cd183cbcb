//! Card security end to end: the real switch with its software security module, keys
//! loaded with `switchyard keys`, simulated terminals sending PIN transactions (under a TPK,
//! and under DUKPT with advancing KSNs) and MACs, and a simulated issuer process holding the
//! ZPK and ZAK that decrypts the translated PIN blocks (its PIN approves, others get 55).
//! Canary keys, PIN and PIN block are grepped for in every file the switch wrote and every
//! output.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use switchyard_audit::Outcome;
use switchyard_hsm::pin::{self, Format, NoFill};
use switchyard_hsm::wrap::{export_x917, tr31_wrap, Tr31Header};
use switchyard_hsm::{dukpt, from_hex, to_hex, Key, TdesKey};

use crate::switch::{free_port, link, records, route, Switch};

// Canary keys: none of them may appear anywhere the switch writes or prints.
const ZMK_1: &str = "A1B2C3D4E5F60718293A4B5C6D7E8F90";
const ZMK_2: &str = "0F1E2D3C4B5A69788796A5B4C3D2E1F0";
const TPK: &str = "3C6B1F0A9E8D7C6B5A49382716051423";
const TAK: &str = "5E4D3C2B1A0F9E8D7C6B5A4938271605";
const ZPK: &str = "7A6B5C4D3E2F10011F2E3D4C5B6A7988";
const ZAK: &str = "1122334455667788998877665544332F";
const BDK: &str = "0123456789ABCDEFFEDCBA9876543210";
const LMK: &str = "C1D2E3F405162738495A6B7C8D9EAFB0";
const MASTER: &str = "9F8E7D6C5B4A39281706F5E4D3C2B1A09F8E7D6C5B4A39281706F5E4D3C2B1A0";
/// The canary PIN: the issuer simulator approves it, and it must never be written.
const PIN: &str = "4739";
const KSN: &str = "FFFF9876543210E00000";

fn tdes(hex: &str) -> Key {
    Key::Tdes(TdesKey::new(&from_hex(hex).unwrap()).unwrap())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

/// A payShield simulator process (`sim hsm`) with its LMK.
struct HsmProcess {
    child: Child,
    port: u16,
    lmk: PathBuf,
}

impl HsmProcess {
    fn start(dir: &Path) -> HsmProcess {
        let port = free_port();
        let lmk = write(dir, "lmk.hex", LMK);
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["sim", "hsm", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--lmk-file")
            .arg(&lmk)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "HSM simulator did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        HsmProcess { child, port, lmk }
    }
}

impl Drop for HsmProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A simulated issuer process holding the ZPK and ZAK.
struct IssuerProcess(Child, u16);

impl IssuerProcess {
    fn start(dir: &Path, extra: &[&str]) -> IssuerProcess {
        let port = free_port();
        let zpk = write(dir, "issuer-zpk.hex", ZPK);
        let zak = write(dir, "issuer-zak.hex", ZAK);
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["sim", "issuer", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--pin-format", "3", "--expected-pin", PIN])
            .arg("--zpk-file")
            .arg(&zpk)
            .arg("--zak-file")
            .arg(&zak)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "issuer simulator did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        IssuerProcess(child, port)
    }

    /// SIGTERM; its ledger line.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let out = std::mem::replace(&mut self.0, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for IssuerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sim terminal` as terminal `tid` with `extra` arguments: its JSON report.
/// (Each run starts at STAN 1: a second apart, field 7 differs and the switch's duplicate
/// window does not take a run for the retransmission of the one before.)
fn terminal(switch: &Switch, tid: &str, count: u32, extra: &[&str]) -> serde_json::Value {
    std::thread::sleep(Duration::from_millis(1100));
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["sim", "terminal", "--target", &switch.terminals.to_string()])
        .args([
            "--terminal",
            tid,
            "--merchant",
            "MERCHANT0000001",
            "--count",
            &count.to_string(),
        ])
        .args(["--json", "--ksn-field", "62"])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("{stdout}{}", String::from_utf8_lossy(&out.stderr)));
    report
}

fn codes(report: &serde_json::Value) -> String {
    report["codes"].to_string()
}

/// The ZMK its two canary components make.
fn zmk_of_components() -> Vec<u8> {
    from_hex(ZMK_1)
        .unwrap()
        .iter()
        .zip(from_hex(ZMK_2).unwrap())
        .map(|(a, b)| a ^ b)
        .collect()
}

/// Timed load from terminal T0000001 (no pause first: it overlaps what the lab schedules).
fn load(lab: &Lab, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "sim",
            "terminal",
            "--target",
            &lab.switch.terminals.to_string(),
        ])
        .args([
            "--terminal",
            "T0000001",
            "--merchant",
            "MERCHANT0000001",
            "--json",
        ])
        .args(args)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The key exchange events of the audit log started by `initiator`.
fn exchange_events(switch: &Switch, initiator: &str) -> Vec<serde_json::Value> {
    crate::switch::audit_events(&switch.audit_dir(), |e| e == "key-exchange")
        .into_iter()
        .filter(|v| v["initiator"] == initiator)
        .collect()
}

/// Every byte the switch wrote under `dir` (audit log, key store, log), and `outputs`:
/// none holds a canary in hex (either case) or as raw bytes.
fn assert_no_canary(dir: &Path, outputs: &[String], blocks: &[Vec<u8>]) {
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    for hex in [ZMK_1, ZMK_2, TPK, TAK, ZPK, ZAK, BDK, MASTER, LMK] {
        secrets.push(hex.as_bytes().to_vec());
        secrets.push(hex.to_lowercase().into_bytes());
        secrets.push(from_hex(hex).unwrap());
    }
    for block in blocks {
        secrets.push(to_hex(block).into_bytes());
        secrets.push(to_hex(block).to_lowercase().into_bytes());
        secrets.push(block.clone());
    }
    let pin_field = format!("\"{PIN}\"");
    let mut files = vec![dir.to_path_buf()];
    let mut checked = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        // The test's own inputs: key components and the simulators' key files.
        if name.ends_with(".hex") || name == "master.key" {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        // Audit segments are zero-filled ahead of their records: only what was written counts.
        let written = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        bytes.truncate(written);
        checked += 1;
        for secret in &secrets {
            assert!(
                memchr::memmem::find(&bytes, secret).is_none(),
                "{} holds a canary ({} bytes)",
                path.display(),
                secret.len()
            );
        }
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&pin_field),
            "{} holds the PIN",
            path.display()
        );
    }
    assert!(
        checked >= 3,
        "the audit log, the key store and the log were read"
    );
    for out in outputs {
        for secret in secrets.iter().filter(|s| s.is_ascii()) {
            assert!(
                memchr::memmem::find(out.as_bytes(), secret).is_none(),
                "output holds a canary: {out}"
            );
        }
    }
}

/// The lab: an issuer simulator process (with `issuer_extra` arguments), the keys loaded
/// into the store with `switchyard keys`, and the switch.
struct Lab {
    work: tempfile::TempDir,
    issuer: IssuerProcess,
    _hsm: Option<HsmProcess>,
    switch: Switch,
    /// The `keys` commands' configuration.
    config: String,
    /// What the commands printed.
    outputs: Vec<String>,
    /// The ZPK's first check value.
    zpk_kcv: String,
}

impl Lab {
    fn start(issuer_extra: &[&str]) -> Lab {
        Lab::with_module(issuer_extra, false)
    }

    /// `payshield`: the switch's module is the payShield client, talking to `sim hsm`.
    fn with_module(issuer_extra: &[&str], payshield: bool) -> Lab {
        Lab::with_options(issuer_extra, payshield, "")
    }

    /// `exchange`: more of the link's `[links.security.key_exchange]` section.
    fn with_options(issuer_extra: &[&str], payshield: bool, exchange: &str) -> Lab {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path();
        let issuer = IssuerProcess::start(dir, issuer_extra);
        let master = write(dir, "master.key", MASTER);
        let hsm = payshield.then(|| HsmProcess::start(dir));
        let registry = write(
            dir,
            "registry.toml",
            "[[merchants]]\nid = \"MERCHANT0000001\"\nname = \"Shop\"\nmcc = \"5411\"\n\
             [[terminals]]\nid = \"T0000001\"\nmerchant = \"MERCHANT0000001\"\ntpk = \"tpk.T0000001\"\ntak = \"tak.T0000001\"\n\
             [[terminals]]\nid = \"T0000002\"\nmerchant = \"MERCHANT0000001\"\nbdk = \"bdk.fleet\"\n",
        );
        let module = match &hsm {
            None => format!(
                "key_store = \"{}\"\nmaster_key_file = \"{}\"\n",
                dir.join("keys.store").display(),
                master.display()
            ),
            Some(hsm) => format!(
                "module = \"payshield\"\n[security.payshield]\nendpoint = \"127.0.0.1:{}\"\nkey_table = \"{}\"\n",
                hsm.port,
                dir.join("keys.payshield").display()
            ),
        };
        let security = format!(
            "[security]\nksn_field = 62\n{module}[registry]\nfile = \"{}\"\n",
            registry.display()
        );
        let body = format!(
            "{security}{}[links.security]\nzpk = \"zpk.issuer\"\nzak = \"zak.issuer\"\npin_format = 3\n\
             [links.security.key_exchange]\nzmk = \"zmk.issuer\"\n{exchange}\n{}",
            link("issuer", format!("127.0.0.1:{}", issuer.1), "remap_stan = false\ntimeout_ms = 400"),
            route("all", "\"2\", \"4\", \"5\", \"6\"", "issuer")
        );
        // The keys first, with the CLI, into the store the switch will open.
        let config = write(dir, "keys-config.toml", &format!(
            "[audit]\ndir = \"{}\"\ndemo_keys = true\n[[listeners]]\nname = \"t\"\nlisten = \"127.0.0.1:0\"\n{body}",
            dir.join("audit-unused").display()
        ));
        let config = config.to_str().unwrap();
        let c1 = write(dir, "zmk-1.hex", ZMK_1);
        let c2 = write(dir, "zmk-2.hex", ZMK_2);
        let mut outputs = vec![match &hsm {
            None => ok(&cli(&[
                "keys",
                "load-zmk",
                "--config",
                config,
                "--id",
                "zmk.issuer",
                "--component",
                c1.to_str().unwrap(),
                "--component",
                c2.to_str().unwrap(),
            ])),
            // At the HSM: the custodians form the ZMK; its token goes in the key table.
            Some(hsm) => {
                let formed = ok(&cli(&[
                    "sim",
                    "hsm",
                    "--lmk-file",
                    hsm.lmk.to_str().unwrap(),
                    "--form-key",
                    "zmk",
                    "--component",
                    c1.to_str().unwrap(),
                    "--component",
                    c2.to_str().unwrap(),
                ]));
                let words: Vec<&str> = formed.split_whitespace().collect();
                let (token, kcv) = (words[1], words[3]);
                ok(&cli(&[
                    "keys",
                    "add-token",
                    "--config",
                    config,
                    "--id",
                    "zmk.issuer",
                    "--usage",
                    "zmk",
                    "--token",
                    token,
                    "--kcv",
                    kcv,
                ]))
            }
        }];
        let zmk = tdes(&to_hex(&zmk_of_components()));
        for (id, usage, clear, tr31_usage) in [
            ("tpk.T0000001", "tpk", TPK, "P0"),
            ("tak.T0000001", "tak", TAK, "M3"),
            ("zak.issuer", "zak", ZAK, "M3"),
            ("bdk.fleet", "bdk", BDK, "B0"),
        ] {
            let header =
                Tr31Header::new('B', tr31_usage, 'T', if usage == "bdk" { 'X' } else { 'N' });
            let block = tr31_wrap(&zmk, &header, &tdes(clear), &mut NoFill).unwrap();
            outputs.push(ok(&cli(&[
                "keys",
                "import",
                "--config",
                config,
                "--id",
                id,
                "--usage",
                usage,
                "--zmk",
                "zmk.issuer",
                "--tr31",
                &block,
            ])));
        }
        // The ZPK as X9.17 with its check value; a wrong check value is refused first.
        let zpk = tdes(ZPK);
        let wrapped = to_hex(&export_x917(zmk.tdes("zmk").unwrap(), &zpk).unwrap());
        let kcv = to_hex(&zpk.check_value());
        let import = |kcv: &str| {
            cli(&[
                "keys",
                "import",
                "--config",
                config,
                "--id",
                "zpk.issuer",
                "--usage",
                "zpk",
                "--zmk",
                "zmk.issuer",
                "--x917",
                &wrapped,
                "--kcv",
                kcv,
            ])
        };
        let refused = import("000000");
        assert_eq!(refused.status.code(), Some(65));
        assert!(String::from_utf8_lossy(&refused.stderr).contains("check value 000000 expected"));
        outputs.push(ok(&import(&kcv)));
        let listed = ok(&cli(&["keys", "list", "--config", config]));
        assert!(
            listed.contains(&format!("zpk.issuer               zpk  tdes kcv {kcv}")),
            "{listed}"
        );
        assert_eq!(listed.lines().count(), 6, "{listed}");
        outputs.push(listed);
        let switch = Switch::start(&format!("spec = \"iso8583-1987-ascii\"\n{body}"));
        let config = config.to_string();
        Lab {
            work,
            issuer,
            _hsm: hsm,
            switch,
            config,
            outputs,
            zpk_kcv: kcv,
        }
    }

    /// The terminal's fixed keys as `sim terminal` arguments.
    fn fixed(&self) -> Vec<String> {
        let dir = self.work.path();
        let tpk = write(dir, "terminal-tpk.hex", TPK);
        let tak = write(dir, "terminal-tak.hex", TAK);
        [
            "--pin-format",
            "0",
            "--tpk-file",
            tpk.to_str().unwrap(),
            "--tak-file",
            tak.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    }
}

#[test]
fn pin_transactions_are_translated_macs_checked_and_no_secret_is_written() {
    pin_flow(false);
}

/// The same through the payShield client and `sim hsm` (the client carries no DUKPT MACs:
/// the DUKPT terminal sends PIN blocks only).
#[test]
fn the_same_through_the_payshield_adapter_and_the_hsm_simulator() {
    pin_flow(true);
}

fn pin_flow(payshield: bool) {
    let lab = Lab::with_module(&[], payshield);
    let fixed = lab.fixed();
    let Lab {
        work,
        issuer,
        switch,
        mut outputs,
        ..
    } = lab;
    let dir = work.path();
    let fixed: Vec<&str> = fixed.iter().map(String::as_str).collect();
    // The right PIN under the TPK, MACed: approved by the issuer that decrypted it.
    let right = terminal(
        &switch,
        "T0000001",
        20,
        &[&["--pin", PIN][..], &fixed[..]].concat(),
    );
    let log = || {
        std::fs::read_to_string(switch.config.with_file_name("switchyard.log")).unwrap_or_default()
    };
    assert_eq!(codes(&right), r#"{"00":20}"#, "{right}\n{}", log());
    assert_eq!(
        right["failures"].to_string(),
        "{}",
        "every answer's MAC verified: {right}"
    );
    // Another PIN: the issuer declines 55.
    let wrong = terminal(
        &switch,
        "T0000001",
        5,
        &[&["--pin", "1111"][..], &fixed[..]].concat(),
    );
    assert_eq!(codes(&wrong), r#"{"55":5}"#, "{wrong}");
    // DUKPT: the terminal holds only its initial key; ten KSNs, counters 1 to 10.
    let ipek = dukpt::initial_key(
        &TdesKey::new(&from_hex(BDK).unwrap()).unwrap(),
        &from_hex(KSN).unwrap(),
    )
    .unwrap();
    let ipek = write(dir, "terminal-ipek.hex", &to_hex(ipek.bytes()));
    let mut dukpt_args = vec![
        "--pin",
        PIN,
        "--dukpt-key-file",
        ipek.to_str().unwrap(),
        "--ksn",
        KSN,
    ];
    if !payshield {
        dukpt_args.push("--dukpt-mac");
    }
    let dukpt = terminal(&switch, "T0000002", 10, &dukpt_args);
    assert_eq!(codes(&dukpt), r#"{"00":10}"#, "{dukpt}");
    // A wrong MAC: 63 from the switch, never forwarded.
    let forged = terminal(
        &switch,
        "T0000001",
        3,
        &[&["--pin", PIN, "--corrupt-mac"][..], &fixed[..]].concat(),
    );
    assert_eq!(codes(&forged), r#"{"63":3}"#, "{forged}");
    assert_eq!(
        switch.metric("switchyard_security_errors_total", &[("reason", "bad-mac")]),
        3.0
    );
    assert_eq!(
        switch.metric(
            "switchyard_security_operations_total",
            &[("operation", "translate_pin"), ("result", "ok")]
        ),
        35.0
    );
    let all = records(&switch.audit_dir());
    let refused: Vec<_> = all
        .iter()
        .filter(|r| r.outcome == Some(Outcome::SecurityError))
        .collect();
    assert_eq!(refused.len(), 3);
    assert!(refused
        .iter()
        .all(|r| r.response_code.as_deref() == Some("63")));
    let ledger = issuer.stop();
    assert!(
        ledger.contains("pin-right 30 pin-wrong 5 mac-failures 0"),
        "{ledger}"
    );
    assert!(
        ledger.contains("requests 35 "),
        "the forged ones never reached it: {ledger}"
    );
    switch.assert_audit_verifies();
    // The terminals' PIN blocks under the TPK (format 0 has no random fill: known here).
    let blocks: Vec<Vec<u8>> = switchyard_sim::TEST_PANS
        .iter()
        .map(|pan| {
            pin::encrypt(
                Format::Iso0,
                &tdes(TPK),
                PIN.as_bytes(),
                Some(pan.as_bytes()),
                &mut NoFill,
            )
            .unwrap()
        })
        .collect();
    outputs.push(ledger);
    outputs.push(right.to_string());
    outputs.push(super::switch::http_get(switch.admin, "/metrics").1);
    assert_no_canary(dir, &outputs, &blocks);
    assert_no_canary(switch.dir.path(), &[], &blocks);
}

#[test]
fn a_key_exchange_mid_load_changes_the_zpk_and_no_transaction_fails() {
    // The issuer sends a new ZPK under the ZMK 2 s after the link connects: amid the 4 s of
    // load that starts as soon as the switch is ready.
    let scratch = tempfile::tempdir().unwrap();
    let zmk_file = write(
        scratch.path(),
        "issuer-zmk.hex",
        &to_hex(&zmk_of_components()),
    );
    let zmk_file = zmk_file.to_str().unwrap();
    let lab = Lab::start(&["--zmk-file", zmk_file, "--key-exchange-after-ms", "2000"]);
    let fixed = lab.fixed();
    let args: Vec<&str> = [
        "--pin",
        PIN,
        "--duration",
        "4",
        "--window",
        "2",
        "--ksn-field",
        "62",
    ]
    .into_iter()
    .chain(fixed.iter().map(String::as_str))
    .collect();
    let load = load(&lab, &args);
    let sent = load["sent"].as_u64().unwrap();
    assert!(sent > 20, "{load}");
    assert_eq!(
        codes(&load),
        format!(r#"{{"00":{sent}}}"#),
        "every transaction approved across the exchange: {load}"
    );
    assert_eq!(load["failures"].to_string(), "{}", "{load}");
    // On a loaded machine the exchange can land at the end of the load: wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let zpk_line = loop {
        let listed = ok(&cli(&["keys", "list", "--config", &lab.config]));
        let line = listed
            .lines()
            .find(|l| l.starts_with("zpk.issuer"))
            .unwrap()
            .to_string();
        if !line.ends_with(&lab.zpk_kcv) || std::time::Instant::now() > deadline {
            break line;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        !zpk_line.ends_with(&lab.zpk_kcv),
        "the ZPK was replaced: {zpk_line}"
    );
    let events = exchange_events(&lab.switch, "issuer");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["result"], "ok");
    assert!(
        zpk_line.ends_with(events[0]["kcv"].as_str().unwrap()),
        "{zpk_line} {events:?}"
    );
    let ledger = lab.issuer.stop();
    assert!(
        ledger.contains("pin-wrong 0 mac-failures 0 key-exchanges 1"),
        "{ledger}"
    );
}

#[test]
fn reversals_of_timeouts_carry_the_link_mac() {
    // A third of the requests go unanswered: each times out, is answered 91 and reversed
    // from the store-and-forward queue, the reversal MACed under the ZAK like any request.
    let lab = Lab::start(&["--silence-rate", "0.3"]);
    let fixed = lab.fixed();
    let args: Vec<&str> = ["--pin", PIN]
        .into_iter()
        .chain(fixed.iter().map(String::as_str))
        .collect();
    let report = terminal(&lab.switch, "T0000001", 20, &args);
    let timeouts = report["codes"]["91"].as_u64().unwrap_or(0);
    assert!(timeouts > 0, "{report}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while lab.switch.metric("switchyard_saf_backlog", &[]) > 0.0 {
        assert!(Instant::now() < deadline, "reversals not delivered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ledger = lab.issuer.stop();
    assert!(ledger.contains("mac-failures 0"), "{ledger}");
    let reversals: u64 = ledger
        .split("reversals ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(reversals >= timeouts, "{timeouts} timeouts, {ledger}");
}

/// The switch sends the issuer a new ZPK every 2 s (through the payShield client: `A0`
/// generates and exports it); load across three exchanges is approved throughout.
#[test]
fn the_switch_sends_new_zpks_on_its_schedule_and_no_transaction_fails() {
    let scratch = tempfile::tempdir().unwrap();
    let zmk_file = write(
        scratch.path(),
        "issuer-zmk.hex",
        &to_hex(&zmk_of_components()),
    );
    let lab = Lab::with_options(
        &["--zmk-file", zmk_file.to_str().unwrap()],
        true,
        "interval_s = 2",
    );
    let fixed = lab.fixed();
    let args: Vec<&str> = ["--pin", PIN, "--duration", "7", "--window", "2"]
        .into_iter()
        .chain(fixed.iter().map(String::as_str))
        .collect();
    let load = load(&lab, &args);
    let sent = load["sent"].as_u64().unwrap();
    assert_eq!(codes(&load), format!(r#"{{"00":{sent}}}"#), "{load}");
    let exchanges = exchange_events(&lab.switch, "switch");
    assert!(
        exchanges.len() >= 3 && exchanges.iter().all(|e| e["result"] == "ok"),
        "{exchanges:?}"
    );
    let listed = ok(&cli(&["keys", "list", "--config", &lab.config]));
    let last = exchanges.last().unwrap()["kcv"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("zpk.issuer") && l.ends_with(&last)),
        "{listed}"
    );
    let ledger = lab.issuer.stop();
    assert!(ledger.contains("pin-wrong 0"), "{ledger}");
    assert!(
        ledger.contains(&format!("key-exchanges {}", exchanges.len())),
        "{ledger}"
    );
}
