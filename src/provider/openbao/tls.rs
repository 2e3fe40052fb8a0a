//! TLS to OpenBao: the SPC's `<P>CACertPath`, `<P>CADirectory`, `<P>TLSServerName`,
//! `<P>TLSClientCertPath`/`<P>TLSClientKeyPath` and `<P>SkipTLSVerify` (anchors.md §10) turned
//! into a rustls configuration, one reqwest client per distinct configuration, and certificate
//! errors that say which problem it is.
//!
//! - Upstream's precedence (Vault's `api.ConfigureTLS`): a CA file replaces the system roots and
//!   wins over a CA directory; a client certificate needs its key; `TLSServerName` is the name
//!   the server certificate is checked against (the TLS SNI stays the address's host).
//! - Files are read at every fetch and their SHA-256 is part of the cache key, so a CA or client
//!   certificate rotated on disk is picked up by the next poll, without a restart.
//! - `SkipTLSVerify` accepts any certificate (handshake signatures are still checked) and is
//!   logged as a warning once per SPC.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use aws_lc_rs::digest;
use reqwest::{Client, ClientBuilder};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
};
use zeroize::Zeroizing;

use crate::spc::TlsParams;

/// Most distinct TLS configurations kept; beyond this the cache starts over.
const MAX_CLIENTS: usize = 64;
/// Most SPCs remembered as already warned about `SkipTLSVerify`.
const MAX_WARNED: usize = 4096;

/// A TLS configuration that cannot be used: a file is missing, unreadable or holds no usable
/// certificate or key. Names the parameter and the path, never file content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsSetupError {
    /// The parameter (without prefix), e.g. `CACertPath`.
    pub(crate) parameter: &'static str,
    /// The path it gave (empty for problems not tied to a file).
    pub(crate) path: String,
    /// What is wrong.
    pub(crate) reason: String,
}

impl TlsSetupError {
    fn new(parameter: &'static str, path: &str, reason: impl Into<String>) -> Self {
        Self {
            parameter,
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

/// What a client is cached under: the parameters and a digest of the files they name.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    params: TlsParams,
    files: [u8; 32],
}

impl ClientKey {
    /// A digest of the configuration and its files: what shared reads are keyed by.
    fn identity(&self) -> [u8; 32] {
        let p = &self.params;
        let opt = |o: &Option<String>| {
            o.as_deref()
                .map_or(b"\0".to_vec(), |s| s.as_bytes().to_vec())
        };
        super::shared::digest(&[
            b"tls",
            &opt(&p.ca_cert_path),
            &opt(&p.ca_directory),
            &opt(&p.server_name),
            &opt(&p.client_cert_path),
            &opt(&p.client_key_path),
            &[u8::from(p.skip_verify)],
            &self.files,
        ])
    }
}

/// The reqwest clients for non-default TLS configurations.
#[derive(Default)]
pub(crate) struct TlsClients {
    clients: Mutex<HashMap<ClientKey, Client>>,
    warned: Mutex<HashSet<String>>,
}

impl fmt::Debug for TlsClients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClients")
            .field("clients", &self.len())
            .finish()
    }
}

impl TlsClients {
    /// The client for `params` (not the default configuration), built with `builder` and
    /// cached. `spc` and `address` are for the `SkipTLSVerify` warning.
    pub(crate) fn client(
        &self,
        params: &TlsParams,
        spc: &str,
        address: &str,
        builder: impl FnOnce() -> ClientBuilder,
    ) -> Result<(Client, [u8; 32]), TlsSetupError> {
        if params.skip_verify {
            self.warn_skip_verify(spc, address);
        }
        let material = Material::load(params)?;
        let key = ClientKey {
            params: params.clone(),
            files: material.digest,
        };
        let identity = key.identity();
        if let Some(c) = self.lock().get(&key) {
            return Ok((c.clone(), identity));
        }
        let config = material.client_config(params)?;
        let client = builder()
            .tls_backend_preconfigured(config)
            .build()
            .map_err(|e| TlsSetupError::new("TLS", "", super::error_chain(&e)))?;
        let mut clients = self.lock();
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        tracing::debug!(
            spc,
            "built an OpenBao client for a custom TLS configuration"
        );
        Ok((client, identity))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, Client>> {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of cached clients.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn warn_skip_verify(&self, spc: &str, address: &str) {
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        if warned.contains(spc) {
            return;
        }
        if warned.len() >= MAX_WARNED {
            warned.clear();
        }
        warned.insert(spc.to_owned());
        tracing::warn!(
            spc,
            address,
            "TLS CERTIFICATE VERIFICATION IS DISABLED for OpenBao (<prefix>SkipTLSVerify=true): \
             anyone on the network path can impersonate OpenBao and read the secrets and the \
             login credentials of this SecretProviderClass; set <prefix>CACertPath instead"
        );
    }
}

/// The files of a TLS configuration, read and parsed.
struct Material {
    /// CA certificates to trust; empty: the system's.
    roots: Vec<CertificateDer<'static>>,
    /// Client certificate chain and key.
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// SHA-256 over every file read (the cache key).
    digest: [u8; 32],
}

impl Material {
    fn load(params: &TlsParams) -> Result<Self, TlsSetupError> {
        let mut sha = digest::Context::new(&digest::SHA256);
        let mut add = |tag: &str, bytes: &[u8]| {
            sha.update(&(tag.len() as u64).to_be_bytes());
            sha.update(tag.as_bytes());
            sha.update(&(bytes.len() as u64).to_be_bytes());
            sha.update(bytes);
        };
        let mut roots = Vec::new();
        if let Some(path) = &params.ca_cert_path {
            let bytes = read("CACertPath", path)?;
            add("ca", &bytes);
            roots = certificates("CACertPath", path, &bytes)?;
        } else if let Some(dir) = &params.ca_directory {
            let mut entries: Vec<_> = std::fs::read_dir(dir)
                .map_err(|e| TlsSetupError::new("CADirectory", dir, e.to_string()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .collect();
            entries.sort();
            for file in entries {
                // Follows symlinks (c_rehash links); skips directories and unreadable files.
                if !file.is_file() {
                    continue;
                }
                let Ok(bytes) = std::fs::read(&file) else {
                    continue;
                };
                add(&file.display().to_string(), &bytes);
                roots.extend(
                    CertificateDer::pem_slice_iter(&bytes)
                        .filter_map(Result::ok)
                        .collect::<Vec<_>>(),
                );
            }
            if roots.is_empty() {
                return Err(TlsSetupError::new(
                    "CADirectory",
                    dir,
                    "holds no PEM certificate",
                ));
            }
        }
        let client = match (&params.client_cert_path, &params.client_key_path) {
            (Some(cert_path), Some(key_path)) => {
                let cert = read("TLSClientCertPath", cert_path)?;
                add("cert", &cert);
                let chain = certificates("TLSClientCertPath", cert_path, &cert)?;
                let key = Zeroizing::new(read("TLSClientKeyPath", key_path)?);
                add("key", &key);
                let key = PrivateKeyDer::from_pem_slice(&key).map_err(|_| {
                    TlsSetupError::new(
                        "TLSClientKeyPath",
                        key_path,
                        "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                    )
                })?;
                Some((chain, key))
            }
            // The SPC parser refuses one without the other.
            _ => None,
        };
        let mut out = [0u8; 32];
        out.copy_from_slice(sha.finish().as_ref());
        Ok(Self {
            roots,
            client,
            digest: out,
        })
    }

    fn client_config(self, params: &TlsParams) -> Result<ClientConfig, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = if params.skip_verify {
            Arc::new(AcceptAnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            })
        } else {
            let mut store = RootCertStore::empty();
            if self.roots.is_empty() {
                let native = rustls_native_certs::load_native_certs();
                store.add_parsable_certificates(native.certs);
                if store.is_empty() {
                    return Err(TlsSetupError::new(
                        "CACertPath",
                        "",
                        "no system CA certificates found; set <prefix>CACertPath",
                    ));
                }
            } else {
                let parameter = if params.ca_cert_path.is_some() {
                    "CACertPath"
                } else {
                    "CADirectory"
                };
                let path = params
                    .ca_cert_path
                    .as_deref()
                    .or(params.ca_directory.as_deref())
                    .unwrap_or_default();
                for cert in self.roots {
                    store.add(cert).map_err(|e| {
                        TlsSetupError::new(parameter, path, format!("unusable CA certificate: {e}"))
                    })?;
                }
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(store), Arc::clone(&provider))
                    .build()
                    .map_err(|e| TlsSetupError::new("CACertPath", "", e.to_string()))?;
            match &params.server_name {
                Some(name) => {
                    let name = ServerName::try_from(name.clone()).map_err(|_| {
                        TlsSetupError::new(
                            "TLSServerName",
                            "",
                            format!("'{name}' is not a DNS name or IP address"),
                        )
                    })?;
                    Arc::new(ServerNameOverride {
                        inner: webpki,
                        name,
                    })
                }
                None => webpki,
            }
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::new("TLS", "", e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match self.client {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
                TlsSetupError::new(
                    "TLSClientKeyPath",
                    params.client_key_path.as_deref().unwrap_or_default(),
                    format!("does not fit the client certificate: {e}"),
                )
            })?,
            None => builder.with_no_client_auth(),
        };
        // HTTP/1.1 only: over HTTP/2 a TLS alert received after the handshake (a refused
        // client certificate, in TLS 1.3) surfaces as a bare "connection closed".
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn read(parameter: &'static str, path: &str) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(Path::new(path)).map_err(|e| TlsSetupError::new(parameter, path, e.to_string()))
}

fn certificates(
    parameter: &'static str,
    path: &str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::new(parameter, path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsSetupError::new(
            parameter,
            path,
            "holds no PEM certificate",
        ));
    }
    Ok(certs)
}

/// Checks the server certificate against `<P>TLSServerName` instead of the address's host.
#[derive(Debug)]
struct ServerNameOverride {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for ServerNameOverride {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `SkipTLSVerify`: any certificate is accepted; the handshake signatures are still checked
/// against the key it presents.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A description of the TLS problem behind `e`, if it is one: which check failed and what to
/// change. Looks for a `rustls::Error` anywhere in the source chain (also inside `io::Error`).
pub(crate) fn describe_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(r) = find_rustls(e, 0) {
        return Some(describe(r));
    }
    // Some wrappers (h2) hide the typed error but keep rustls's message.
    let mut current = Some(e);
    while let Some(err) = current {
        let text = err.to_string();
        if let Some((_, alert)) = text.split_once("received fatal alert: ") {
            let name: String = alert
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            return Some(describe(&rustls::Error::AlertReceived(alert_named(&name))));
        }
        current = err.source();
    }
    None
}

/// The alert whose `Debug` name is `name` (the client-certificate ones; others are generic).
fn alert_named(name: &str) -> AlertDescription {
    [
        AlertDescription::CertificateRequired,
        AlertDescription::BadCertificate,
        AlertDescription::UnknownCA,
        AlertDescription::CertificateUnknown,
        AlertDescription::CertificateExpired,
        AlertDescription::CertificateRevoked,
        AlertDescription::UnsupportedCertificate,
        AlertDescription::AccessDenied,
        AlertDescription::HandshakeFailure,
    ]
    .into_iter()
    .find(|a| format!("{a:?}") == name)
    .unwrap_or(AlertDescription::InternalError)
}

/// `io::Error::source` skips the error it wraps (hyper-rustls nests `io::Error`s around the
/// `rustls::Error`), so wrapped errors are unwrapped explicitly as well as followed by
/// `source`.
fn find_rustls<'a>(
    e: &'a (dyn std::error::Error + 'static),
    depth: u8,
) -> Option<&'a rustls::Error> {
    if depth > 16 {
        return None;
    }
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        let inner: &'a (dyn std::error::Error + 'static) = inner;
        if let Some(r) = find_rustls(inner, depth + 1) {
            return Some(r);
        }
    }
    e.source().and_then(|s| find_rustls(s, depth + 1))
}

fn describe(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => describe_certificate(c),
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied
            | AlertDescription::NoCertificate => format!(
                "client certificate refused: OpenBao rejected the TLS client certificate or its \
                 absence (alert {alert:?}); set <prefix>TLSClientCertPath and \
                 <prefix>TLSClientKeyPath to a certificate the listener trusts"
            ),
            AlertDescription::HandshakeFailure => "handshake refused by OpenBao (alert \
                HandshakeFailure): it may require a client certificate \
                (<prefix>TLSClientCertPath/<prefix>TLSClientKeyPath) or share no cipher suite"
                .to_owned(),
            other => format!("OpenBao aborted the TLS connection (alert {other:?})"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "not TLS: the server did not answer with TLS (an http:// listener on an https:// \
             address?)"
                .to_owned()
        }
        rustls::Error::NoCertificatesPresented => "the server presented no certificate".to_owned(),
        other => format!("TLS failure: {other}"),
    }
}

fn describe_certificate(c: &CertificateError) -> String {
    match c {
        CertificateError::UnknownIssuer => "unknown CA: the server certificate is not signed by \
            a trusted CA; set <prefix>CACertPath or <prefix>CADirectory to the CA that issued it"
            .to_owned(),
        CertificateError::NotValidForName => "name mismatch: the server certificate is not valid \
            for the address's host; fix the address or set <prefix>TLSServerName"
            .to_owned(),
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => format!(
            "name mismatch: the server certificate is not valid for '{}' (it is for {}); fix the \
             address or set <prefix>TLSServerName",
            expected.to_str(),
            if presented.is_empty() {
                "no name".to_owned()
            } else {
                presented
                    .iter()
                    .map(|p| presented_name(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        CertificateError::Expired => {
            "expired certificate: the server certificate has expired".to_owned()
        }
        CertificateError::ExpiredContext { time, not_after } => format!(
            "expired certificate: the server certificate expired at {} ({}s ago)",
            crate::timefmt::utc_secs(not_after.as_secs()),
            time.as_secs().saturating_sub(not_after.as_secs())
        ),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "certificate not valid yet: the server certificate's notBefore is in the future \
             (check the clocks)"
                .to_owned()
        }
        CertificateError::Revoked => {
            "revoked certificate: the server certificate is revoked".to_owned()
        }
        CertificateError::BadSignature => {
            "bad certificate signature: the server certificate is not correctly signed".to_owned()
        }
        other => format!("invalid server certificate: {other:?}"),
    }
}

/// `bao.test` from rustls's `DnsName("bao.test")` (and `IpAddress(…)` alike).
fn presented_name(p: &str) -> &str {
    let inner = p
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or(p);
    inner.trim_matches('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_problems_are_named() {
        let e = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(describe(&e).starts_with("unknown CA"));
        let e = rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("127.0.0.1").expect("ip"),
            presented: vec!["DnsName(\"bao.test\")".into()],
        });
        let d = describe(&e);
        assert!(
            d.starts_with("name mismatch") && d.contains("127.0.0.1"),
            "{d}"
        );
        let e = rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
            time: UnixTime::since_unix_epoch(std::time::Duration::from_secs(100)),
            not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(40)),
        });
        let d = describe(&e);
        assert!(
            d.starts_with("expired certificate") && d.contains("60s ago"),
            "{d}"
        );
        let e = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert!(describe(&e).starts_with("client certificate refused"));
        // Found through nested io::Errors, as hyper-rustls reports it.
        let io = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        ));
        assert!(
            describe_failure(&io).is_some_and(|d| d.starts_with("unknown CA")),
            "{:?}",
            describe_failure(&io)
        );
        assert_eq!(describe_failure(&std::io::Error::other("plain")), None);
        let hidden = std::io::Error::other("received fatal alert: CertificateRequired");
        assert!(
            describe_failure(&hidden).is_some_and(|d| d.starts_with("client certificate refused"))
        );
    }

    #[test]
    fn missing_files_name_the_parameter() {
        let params = TlsParams {
            ca_cert_path: Some("/nonexistent/ca.pem".into()),
            ..TlsParams::default()
        };
        let e = TlsClients::default()
            .client(&params, "ns/spc", "https://x", Client::builder)
            .expect_err("missing file");
        assert_eq!(e.parameter, "CACertPath");
        assert_eq!(e.path, "/nonexistent/ca.pem");
        let dir = std::env::temp_dir().join(format!("baofs-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("readme.txt"), "no certs").expect("write");
        let params = TlsParams {
            ca_directory: Some(dir.display().to_string()),
            ..TlsParams::default()
        };
        let e = TlsClients::default()
            .client(&params, "ns/spc", "https://x", Client::builder)
            .expect_err("empty dir");
        assert!(e.reason.contains("no PEM certificate"), "{e:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
