//! TLS and mutual TLS on the terminal side, certificate reload, and TLS issuer links.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use switchyard_mux::{
    AcceptorConfig, ClientTls, ClientTlsFiles, Endpoint, Framing, IssuerLink, LinkConfig,
    ServerTls, ServerTlsFiles,
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::acceptor::start;
use crate::support::{eventually, request, spec, view, Approver, Issued, Peer, Pki, WAIT};

fn client(ca: &std::path::Path, auth: Option<&Issued>) -> ClientTls {
    ClientTls::load(ClientTlsFiles {
        ca: ca.to_path_buf(),
        server_name: "localhost".into(),
        client_auth: auth.map(|i| (i.cert.clone(), i.key.clone())),
    })
    .unwrap()
}

/// Connect and shake hands; `None` when the handshake fails.
async fn tls_peer(addr: SocketAddr, tls: &ClientTls) -> Option<Peer<TlsStream<TcpStream>>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = tokio::time::timeout(WAIT, tls.connector().connect(tls.server_name(), tcp))
        .await
        .unwrap()
        .ok()?;
    Some(Peer::new(stream, Framing::default()))
}

/// Whether a request over a fresh TLS connection is answered.
async fn answered(addr: SocketAddr, tls: &ClientTls) -> bool {
    let Some(mut peer) = tls_peer(addr, tls).await else {
        return false;
    };
    // With TLS 1.3 the client may finish its side before the server rejects it: the refusal
    // then shows as a closed connection instead of an answer.
    if peer
        .send_raw(&frame_bytes(request(1, "TERM0100", 1)))
        .await
        .is_err()
    {
        return false;
    }
    matches!(peer.recv().await, Some(f) if view(f.message.clone()).str(39) == Some("00"))
}

fn frame_bytes(message: bytes::Bytes) -> Vec<u8> {
    let mut out = vec![0u8, message.len() as u8];
    out.extend_from_slice(&message);
    out
}

#[tokio::test]
async fn tls_and_mutual_tls_terminals() {
    let pki = Pki::new();
    let ca = pki.ca("switch");
    let server_cert = pki.issue(&ca, &["localhost", "127.0.0.1"], "server");
    let terminal_cert = pki.issue(&ca, &["terminal-1"], "terminal");
    let rogue_ca = pki.ca("rogue");
    let rogue_cert = pki.issue(&rogue_ca, &["terminal-x"], "rogue");

    // Server-authenticated TLS.
    let tls = ServerTls::load(ServerTlsFiles {
        cert_chain: server_cert.cert.clone(),
        private_key: server_cert.key.clone(),
        client_ca: None,
    })
    .unwrap();
    // rcgen's default validity ends on 4096-01-01 (a GeneralizedTime).
    let far = switchyard_iso8583::datetime::Civil {
        year: 4096,
        month: 1,
        day: 1,
        hour: 0,
        minute: 0,
        second: 0,
    };
    assert_eq!(tls.not_after(), far.to_unix().unwrap());
    let plain_tls = start(
        AcceptorConfig::new("tls", spec()),
        Approver::default(),
        Some(Arc::new(tls)),
    )
    .await;
    assert!(answered(plain_tls.addr, &client(&ca.path, None)).await);
    assert!(
        !answered(plain_tls.addr, &client(&rogue_ca.path, None)).await,
        "a client that does not trust the server's CA does not get through"
    );

    // TLS 1.2 is offered too.
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&ca.path).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    use rustls::pki_types::pem::PemObject;
    let tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(plain_tls.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls12))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let mut peer = Peer::new(stream, Framing::default());
    assert_eq!(
        peer.call(request(2, "TERM0101", 1)).await.str(39),
        Some("00")
    );

    // Mutual TLS: a certificate from the configured CA is required.
    let mtls = ServerTls::load(ServerTlsFiles {
        cert_chain: server_cert.cert.clone(),
        private_key: server_cert.key.clone(),
        client_ca: Some(ca.path.clone()),
    })
    .unwrap();
    assert!(mtls.requires_client_certificate());
    let mutual = start(
        AcceptorConfig::new("mtls", spec()),
        Approver::default(),
        Some(Arc::new(mtls)),
    )
    .await;
    assert!(answered(mutual.addr, &client(&ca.path, Some(&terminal_cert))).await);
    assert_eq!(
        *mutual.handler.client_certificates.lock().unwrap(),
        [true],
        "handler sees the certificate"
    );
    assert!(
        !answered(mutual.addr, &client(&ca.path, None)).await,
        "no certificate: refused"
    );
    assert!(
        !answered(mutual.addr, &client(&ca.path, Some(&rogue_cert))).await,
        "certificate from another CA: refused"
    );
    let failures = mutual.acceptor.stats().clone();
    assert!(
        eventually(WAIT, || failures
            .tls_handshake_failures
            .load(Ordering::Relaxed)
            == 2)
        .await
    );
    assert_eq!(
        mutual.handler.handled.load(Ordering::SeqCst),
        1,
        "refused clients reach no handler"
    );
}

#[tokio::test]
async fn certificates_reload_without_restart_and_a_bad_reload_keeps_the_old_ones() {
    let pki = Pki::new();
    let old_ca = pki.ca("old");
    let new_ca = pki.ca("new");
    let live = ServerTlsFiles {
        cert_chain: pki.path("live.pem"),
        private_key: pki.path("live.key"),
        client_ca: None,
    };
    let old = pki.issue(&old_ca, &["localhost"], "old-server");
    let new = pki.issue(&new_ca, &["localhost"], "new-server");
    std::fs::copy(&old.cert, &live.cert_chain).unwrap();
    std::fs::copy(&old.key, &live.private_key).unwrap();
    let tls = Arc::new(ServerTls::load(live.clone()).unwrap());
    let server = start(
        AcceptorConfig::new("reload", spec()),
        Approver::default(),
        Some(tls.clone()),
    )
    .await;

    let (trusts_old, trusts_new) = (client(&old_ca.path, None), client(&new_ca.path, None));
    let mut open = tls_peer(server.addr, &trusts_old)
        .await
        .expect("old certificate served");
    assert_eq!(
        open.call(request(1, "TERM0200", 1)).await.str(39),
        Some("00")
    );
    assert!(!answered(server.addr, &trusts_new).await);

    std::fs::copy(&new.cert, &live.cert_chain).unwrap();
    std::fs::copy(&new.key, &live.private_key).unwrap();
    tls.reload().unwrap();
    assert!(
        answered(server.addr, &trusts_new).await,
        "new handshakes use the new certificate"
    );
    assert!(!answered(server.addr, &trusts_old).await);
    assert_eq!(
        open.call(request(2, "TERM0200", 1)).await.str(39),
        Some("00"),
        "the connection opened before the reload carries on"
    );

    // A broken file: the reload fails, names the file, and the running certificate stays.
    std::fs::write(&live.cert_chain, "not a certificate").unwrap();
    let err = tls.reload().unwrap_err().to_string();
    assert!(err.contains("live.pem"), "{err}");
    assert!(answered(server.addr, &trusts_new).await);
    // A key that does not belong to the certificate is refused too.
    std::fs::copy(&new.cert, &live.cert_chain).unwrap();
    std::fs::copy(&old.key, &live.private_key).unwrap();
    assert!(tls.reload().is_err());
    assert!(answered(server.addr, &trusts_new).await);
}

#[tokio::test]
async fn an_issuer_link_over_mutual_tls() {
    let pki = Pki::new();
    let ca = pki.ca("issuer");
    let issuer_cert = pki.issue(&ca, &["localhost"], "issuer");
    let acquirer_cert = pki.issue(&ca, &["acquirer"], "acquirer");
    // The "issuer" here is an acceptor with mutual TLS that approves everything.
    let tls = ServerTls::load(ServerTlsFiles {
        cert_chain: issuer_cert.cert.clone(),
        private_key: issuer_cert.key.clone(),
        client_ca: Some(ca.path.clone()),
    })
    .unwrap();
    let issuer = start(
        AcceptorConfig::new("issuer", spec()),
        Approver::default(),
        Some(Arc::new(tls)),
    )
    .await;

    let mut cfg = LinkConfig::new("tls-issuer", &issuer.addr.to_string(), spec());
    cfg.endpoints = vec![Endpoint {
        addr: issuer.addr.to_string(),
        tls: Some(Arc::new(client(&ca.path, Some(&acquirer_cert)))),
    }];
    let link = IssuerLink::start(cfg, None).unwrap();
    assert!(link.wait_ready(WAIT).await);
    let response = link
        .send(&view(request(31, "TERM0300", 700)))
        .await
        .unwrap();
    assert_eq!(response.str(39), Some("00"));
    assert_eq!(response.str(11), Some("000031"));
    assert_eq!(*issuer.handler.client_certificates.lock().unwrap(), [true]);
}
