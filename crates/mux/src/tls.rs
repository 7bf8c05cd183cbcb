//! TLS for both sides, with rustls and the ring provider (one crypto provider for the whole
//! workspace), TLS 1.2 and 1.3 only.
//!
//! [`ServerTls`] and [`ClientTls`] hold the files they were loaded from and the current
//! rustls configuration behind an `Arc`. `reload()` reads the files again and swaps the
//! configuration in one step: handshakes that start afterwards use the new certificate,
//! connections already open keep theirs, and a reload that fails keeps the old configuration
//! and says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::error::{MuxError, Result};

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn material_error(path: &Path, reason: impl ToString) -> MuxError {
    MuxError::TlsMaterial {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| material_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| material_error(path, e))?;
    if certs.is_empty() {
        return Err(material_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    // The error names the file, never its content.
    PrivateKeyDer::from_pem_file(path).map_err(|e| material_error(path, e))
}

fn load_roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| material_error(path, e))?;
    }
    Ok(roots)
}

fn config_error(e: impl ToString) -> MuxError {
    MuxError::TlsConfig(e.to_string())
}

/// One DER element at the start of `der`: (tag, contents, rest).
fn der_element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = (rest.get(..n)?, rest.get(n..)?);
        (
            bytes.iter().fold(0usize, |a, &b| (a << 8) | usize::from(b)),
            rest,
        )
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

/// The end of a certificate's validity (Unix seconds), read from its DER: Certificate ->
/// tbsCertificate -> [version], serial, signature, issuer, validity -> notAfter.
pub fn certificate_not_after(der: &[u8]) -> Option<i64> {
    let (_, certificate, _) = der_element(der)?;
    let (_, tbs, _) = der_element(certificate)?;
    let mut rest = tbs;
    let (tag, _, after) = der_element(rest)?;
    if tag == 0xA0 {
        rest = after; // explicit version
    }
    for _ in 0..3 {
        rest = der_element(rest)?.2; // serial, signature algorithm, issuer
    }
    let (_, validity, _) = der_element(rest)?;
    let (_, _, after_not_before) = der_element(validity)?;
    let (tag, time, _) = der_element(after_not_before)?;
    let text = std::str::from_utf8(time).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            // UTCTime: YYMMDDhhmmss, 1950..2049.
            let yy: i64 = text.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, text.get(2..)?)
        }
        0x18 => (text.get(..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    let num = |r: std::ops::Range<usize>| rest.get(r).and_then(|v| v.parse::<u32>().ok());
    switchyard_iso8583::datetime::Civil {
        year,
        month: num(0..2)?,
        day: num(2..4)?,
        hour: num(4..6)?,
        minute: num(6..8)?,
        second: num(8..10)?,
    }
    .to_unix()
}

/// Files for a TLS server (the terminal listener).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert_chain: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// PEM CA certificates: when set, clients must present a certificate issued by one of
    /// them (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// A reloadable TLS server configuration.
#[derive(Debug)]
pub struct ServerTls {
    files: ServerTlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// When the certificate in use expires (Unix seconds).
    not_after: std::sync::atomic::AtomicI64,
}

impl ServerTls {
    /// Load the files.
    pub fn load(files: ServerTlsFiles) -> Result<ServerTls> {
        let (config, not_after) = Self::build(&files)?;
        Ok(ServerTls {
            files,
            current: RwLock::new(config),
            not_after: std::sync::atomic::AtomicI64::new(not_after),
        })
    }

    /// When the certificate in use expires (Unix seconds; 0 if unreadable).
    pub fn not_after(&self) -> i64 {
        self.not_after.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn build(files: &ServerTlsFiles) -> Result<(Arc<ServerConfig>, i64)> {
        let chain = load_certs(&files.cert_chain)?;
        let not_after = chain
            .first()
            .and_then(|c| certificate_not_after(c))
            .unwrap_or(0);
        let key = load_key(&files.private_key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(config_error)?;
        let builder = match &files.client_ca {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(load_roots(ca)?),
                    provider(),
                )
                .build()
                .map_err(config_error)?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(chain, key).map_err(config_error)?;
        Ok((Arc::new(config), not_after))
    }

    /// Read the files again and use them for new handshakes. On error the configuration in
    /// use stays as it was.
    pub fn reload(&self) -> Result<()> {
        let (config, not_after) = Self::build(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        self.not_after
            .store(not_after, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// An acceptor with the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificate(&self) -> bool {
        self.files.client_ca.is_some()
    }
}

/// Files for a TLS client (an issuer link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// PEM CA certificates the issuer's certificate must chain to.
    pub ca: PathBuf,
    /// The name the issuer's certificate must carry (DNS name or IP address).
    pub server_name: String,
    /// PEM certificate chain and key presented to the issuer (mutual TLS), if any.
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

/// A reloadable TLS client configuration.
#[derive(Debug)]
pub struct ClientTls {
    files: ClientTlsFiles,
    server_name: ServerName<'static>,
    current: RwLock<Arc<ClientConfig>>,
}

impl ClientTls {
    /// Load the files.
    pub fn load(files: ClientTlsFiles) -> Result<ClientTls> {
        let server_name = ServerName::try_from(files.server_name.clone()).map_err(|_| {
            MuxError::Config(format!(
                "TLS server name {:?} is not a DNS name or IP address",
                files.server_name
            ))
        })?;
        let config = Self::build(&files)?;
        Ok(ClientTls {
            files,
            server_name,
            current: RwLock::new(config),
        })
    }

    fn build(files: &ClientTlsFiles) -> Result<Arc<ClientConfig>> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(config_error)?
            .with_root_certificates(load_roots(&files.ca)?);
        let config = match &files.client_auth {
            Some((chain, key)) => builder
                .with_client_auth_cert(load_certs(chain)?, load_key(key)?)
                .map_err(config_error)?,
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }

    /// Read the files again for new connections; on error nothing changes.
    pub fn reload(&self) -> Result<()> {
        let config = Self::build(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    /// A connector with the current configuration.
    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    /// The name checked against the issuer's certificate.
    pub fn server_name(&self) -> ServerName<'static> {
        self.server_name.clone()
    }
}
