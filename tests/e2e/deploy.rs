//! The deploy/ material against the real switch: every metric the alert rules and the
//! dashboard use is one a running switch exports, and the dashboard is valid JSON. (CI also
//! runs `promtool check rules` and `systemd-analyze verify` on the files.)

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use switchyard_iso8583::{shipped, MessageView};
use switchyard_sim::{IssuerSim, IssuerSimConfig};

use crate::support::root;
use crate::switch::{http_get, Switch, Terminal};

/// Every `switchyard_...` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("switchyard_") {
        let start = i + at;
        let end = bytes[start..]
            .iter()
            .position(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_'))
            .map_or(bytes.len(), |p| start + p);
        names.insert(text[start..end].to_string());
        i = end;
    }
    names
}

fn request(tid: &str, stan: u32, mcc: &str, amount: u64) -> Bytes {
    crate::switch::financial(
        "4000056655665556",
        tid,
        stan,
        amount,
        &[(18, mcc), (42, "MERCHANT0000001")],
    )
}

/// A simulated issuer approving everything, and the runtime it runs on.
fn approving_issuer() -> (tokio::runtime::Runtime, IssuerSim) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let spec = shipped("iso8583-1987-ascii").unwrap();
    let issuer = rt
        .block_on(IssuerSim::start(
            "127.0.0.1:0",
            IssuerSimConfig::approving(spec),
        ))
        .unwrap();
    (rt, issuer)
}

#[test]
fn alerts_and_dashboard_use_only_metrics_the_switch_exports() {
    let (rt, approving) = approving_issuer();
    let spec = shipped("iso8583-1987-ascii").unwrap();
    let mut quiet = IssuerSimConfig::approving(spec);
    quiet.silence_rate = 1.0;
    let silent = rt.block_on(IssuerSim::start("127.0.0.1:0", quiet)).unwrap();

    // TLS on a second listener (certificate expiry), a registry with a blocking rule.
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    let (cert_path, key_path, registry) = (
        dir.path().join("tls.pem"),
        dir.path().join("tls.key"),
        dir.path().join("registry.toml"),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(
        &registry,
        "[[merchants]]\nid = \"MERCHANT0000001\"\nmcc = \"5411\"\n[[terminals]]\nid = \"TERMDEP1\"\nmerchant = \"MERCHANT0000001\"\n\
         [rules]\nterminal_velocity = { window_s = 60, max_count = 2, action = \"block\", response_code = \"65\" }\n",
    )
    .unwrap();
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The audit stream on (its metrics), on a real nats-server.
    let nats = crate::cluster::Nats::start();
    let body = format!(
        "{}[registry]\nfile = \"{}\"\n\
         [[listeners]]\nname = \"terminals-tls\"\nlisten = \"127.0.0.1:{tls_port}\"\n[listeners.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[links]]\nname = \"approver\"\nendpoints = [\"{}\"]\n\
         [[links]]\nname = \"silent\"\nendpoints = [\"{}\"]\ntimeout_ms = 200\n\
         [[routes]]\nname = \"visa\"\nbins = [\"4000\"]\nlink = \"approver\"\n\
         [[routes]]\nname = \"visa-big\"\nbins = [\"4\"]\nlink = \"silent\"\n",
        crate::cluster::cluster_section(&nats, "sw-deploy-0"),
        registry.display(),
        cert_path.display(),
        key_path.display(),
        approving.addr,
        silent.addr,
    );
    let switch = Switch::start(&body);
    let mut t = Terminal::connect(switch.terminals);
    assert_eq!(
        t.call(&request("TERMDEP1", 1, "5411", 100)).str(39),
        Some("00")
    );
    assert_eq!(
        t.call(&request("TERMDEP1", 2, "7995", 100)).str(39),
        Some("03"),
        "MCC mismatch"
    );
    assert_eq!(
        t.call(&request("TERMDEP1", 3, "5411", 100)).str(39),
        Some("00")
    );
    assert_eq!(
        t.call(&request("TERMDEP1", 4, "5411", 100)).str(39),
        Some("65"),
        "velocity block"
    );
    let mut garbage = request("TERMDEP1", 5, "5411", 100).to_vec();
    let at = MessageView::decode(
        shipped("iso8583-1987-ascii").unwrap(),
        Bytes::from(garbage.clone()),
    )
    .unwrap()
    .range(4)
    .unwrap()
    .start;
    garbage[at] = b'X';
    assert_eq!(t.call(&garbage).str(39), Some("30"));
    std::thread::sleep(Duration::from_millis(100));

    let (status, metrics) = http_get(switch.admin, "/metrics");
    assert_eq!(status, 200);
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();

    let alerts = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    let dashboard_text =
        std::fs::read_to_string(root().join("deploy/grafana/switchyard.json")).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&dashboard_text).expect("the dashboard is valid JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(exprs.len() >= 20, "the dashboard has queries");
    let used: BTreeSet<String> = metric_names(&alerts)
        .into_iter()
        .chain(exprs.iter().flat_map(|e| metric_names(e)))
        .collect();
    assert!(used.len() >= 20, "{used:?}");
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}\nexported: {exported:?}"
    );
    for name in &exported {
        assert!(name.starts_with("switchyard_"), "{name}");
    }
}

#[test]
fn readiness_and_draining_are_reported_to_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let (port, admin) = (
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
    );
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[audit]\ndir = \"{}\"\ndemo_keys = true\n\
             [[listeners]]\nname = \"t\"\nlisten = \"127.0.0.1:{port}\"\n[[links]]\nname = \"sim\"\nsimulated = true\n[routing]\ndefault = \"sim\"\n",
            dir.path().join("audit").display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 within 15 s");
    assert_eq!(&buf[..n], b"READY=1");
    let health = crate::support::switchyard(
        &[
            "health",
            "--admin",
            &format!("127.0.0.1:{admin}"),
            "--path",
            "/readyz",
        ],
        b"",
    );
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let n = socket.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(child.wait().unwrap().success());
    let down =
        crate::support::switchyard(&["health", "--admin", &format!("127.0.0.1:{admin}")], b"");
    assert!(!down.status.success(), "a stopped switch is not healthy");
}

#[test]
fn the_simulated_terminal_is_approved_under_the_example_registry() {
    let (_rt, issuer) = approving_issuer();
    let registry = root().join("deploy/config/registry.toml");
    let body = format!(
        "[registry]\nfile = \"{}\"\n[[links]]\nname = \"issuer\"\nendpoints = [\"{}\"]\n[routing]\ndefault = \"issuer\"\n",
        registry.display(),
        issuer.addr
    );
    let switch = Switch::start(&body);
    let target = switch.terminals.to_string();
    // The defaults (T0000001 with MERCHANT0000001), and the flags naming them outright.
    for extra in [
        &[][..],
        &[
            "--terminal",
            "T0000001",
            "--merchant",
            "MERCHANT0000001",
            "--mcc",
            "5411",
        ][..],
    ] {
        // Each run numbers its STANs from 1: a new second (field 7) keeps the switch from
        // answering them as duplicates of the run before.
        std::thread::sleep(Duration::from_millis(1100));
        let mut args = vec![
            "sim", "terminal", "--target", &target, "--count", "5", "--json",
        ];
        args.extend_from_slice(extra);
        let out = crate::support::switchyard(&args, b"");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        // Registered and matching: approved, or over the example merchant's amount limit
        // (61; the simulator's amounts go up to 999.00); never refused as unknown (58, 03).
        let codes = report["codes"].as_object().unwrap();
        assert!(
            codes.keys().all(|c| c == "00" || c == "61"),
            "{extra:?}: {report}"
        );
        assert_eq!(report["answered"], 5, "{report}");
        assert!(out.status.success());
    }
    // Another merchant's MCC is refused, and the simulator says the requests were answered.
    std::thread::sleep(Duration::from_millis(1100));
    let args = [
        "sim", "terminal", "--target", &target, "--count", "1", "--mcc", "7995", "--json",
    ];
    let out = crate::support::switchyard(&args, b"");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["codes"]["03"], 1, "{report}");
}
