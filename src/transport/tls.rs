//! TLS over TCP, with client certificates as the identity (mirrors Python
//! rpyc's `rpyc.ssl_connect` and `rpyc.utils.authenticators.SSLAuthenticator`).
//!
//! Built on rustls with the *ring* provider only, the same provider russh
//! uses, so the crate compiles one crypto stack. TLS 1.2 and 1.3 are
//! offered by default.
//!
//! - Server: [`TlsServerConfig`] → [`TlsAcceptor`] (or [`Listener::tls`]).
//!   The acceptor returns each TCP stream at once; the TLS handshake runs in
//!   [`Incoming::handshake`], i.e. in the connection's own task under the
//!   server's authentication deadline, so a peer that stalls mid-handshake
//!   never holds up the accept loop. A verified client certificate becomes
//!   the connection's [`Credentials`]: `identity` is its subject common name
//!   (what `whoami()` returns), `certificate` holds CN, SANs (DNS, IP,
//!   URI), SHA-256 fingerprint and DER; an authenticator may take the
//!   identity from a SAN instead
//!   ([`TlsClientCert::identity_from`](crate::auth::TlsClientCert::identity_from)).
//! - Behind a proxy, [`TlsAcceptor::with_proxy_protocol`] (feature
//!   `proxy-protocol`) reads a PROXY protocol header before the ClientHello
//!   (see [`super::proxy`]).
//! - Certificates are reloadable without a restart: [`TlsReloadHandle`]
//!   swaps the configuration that *new* connections use; established
//!   connections keep the keys they negotiated.
//! - Client: [`TlsClientConfig`] → [`connect_tls`] (or [`Endpoint::Tls`]).
//!   The server name is checked against the certificate; set
//!   [`TlsClientConfig::server_name`] when connecting by an address the
//!   certificate does not name (tunnels, port forwards).
//!
//! # Protocol quirk: no TLS 1.3 session tickets by default
//!
//! A TLS 1.3 server normally sends session tickets right after the
//! handshake. A Python rpyc client that starts a `BgServingThread`
//! immediately after `ssl_connect` then has a thread reading the
//! `ssl.SSLSocket` while the tickets arrive, and the reply to its first
//! request can get stuck in the socket's TLS buffer, where rpyc's
//! file-descriptor poll does not see it: the call hangs until
//! `sync_request_timeout` (seen with rpyc 6.0.2, Python 3.11, OpenSSL 3.0:
//! a hang within 100 connections with two tickets, none without). RPyC
//! connections are long-lived, so resumption buys little:
//! [`TlsServerConfig`] sends **no** TLS 1.3 tickets unless you raise
//! `send_tls13_tickets`.
//!
//! # Protocol quirk: one RPyC frame per TLS record
//!
//! Python rpyc waits for the next frame by polling the socket's file
//! descriptor, blind to plaintext `ssl.SSLSocket` has already decrypted and
//! buffered. If one TLS record carried two frames, the Python peer would
//! read the first and then wait for the second forever (or until
//! `sync_request_timeout`). The engine batches frames into one write, so the
//! TLS streams made here cut every write at frame boundaries; Python peers
//! write one frame per `send` themselves.
//!
//! # Protocol quirk: a refused client certificate shows up late (TLS 1.3)
//!
//! In TLS 1.3 the client finishes its handshake before the server has
//! checked the client certificate. When the server refuses the certificate,
//! the client learns it from the alert that arrives with the first reply, so
//! the error surfaces on the first call (as [`Error::Closed`] naming the
//! cause), not in [`connect_tls`]. Every other failure — unknown CA,
//! expired or misnamed server certificate, a peer that does not speak TLS —
//! is reported by [`connect_tls`] as [`Error::Transport`].
//!
//! # System roots
//!
//! The client trusts only the CAs you give it, plus — when asked with
//! [`TlsClientConfig::with_system_roots`] — the operating system's bundle
//! (`$SSL_CERT_FILE`, or the usual Debian/RHEL/Alpine/SUSE bundle paths).

use crate::error::{Error, Result};
use crate::identity::{CertificateInfo, Credentials, PeerAddr, TransportKind};
use crate::transport::{
    connect_tcp, Accept, BoxFut, BoxStream, Endpoint, Incoming, Listener, QuickAck, Stream, TcpAcceptor, TcpOptions,
};
#[cfg(feature = "proxy-protocol")]
use crate::transport::{read_proxy_header, Handshake};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, CertificateError, RootCertStore, SupportedProtocolVersion};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The CA bundle in a development certificate directory.
pub const CA_FILE: &str = "ca.pem";
/// The server certificate in a development certificate directory.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// The server key in a development certificate directory.
pub const SERVER_KEY_FILE: &str = "server.key";

// ---------------------------------------------------------------------------
// configuration
// ---------------------------------------------------------------------------

/// Whether the server asks for client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClientAuth {
    /// A certificate signed by one of the client CAs is mandatory (Python:
    /// `SSLAuthenticator(..., ca_certs=...)`). The default.
    #[default]
    Required,
    /// A certificate is asked for and, if sent, must verify; clients without
    /// one are let in with no identity.
    Optional,
    /// No certificate is asked for; every client is anonymous.
    None,
}

/// The oldest TLS version to negotiate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3. The default: Python's `ssl` offers both.
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

impl TlsVersion {
    fn versions(self) -> &'static [&'static SupportedProtocolVersion] {
        static BOTH: [&SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];
        static ONLY13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            TlsVersion::Tls12 => &BOTH,
            TlsVersion::Tls13 => &ONLY13,
        }
    }
}

/// A certificate chain (leaf first) and its private key: what a server, or a
/// client with a client certificate, presents.
///
/// `Debug` never prints the key.
pub struct TlsIdentity {
    /// The certificate chain, leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PrivateKeyDer<'static>,
}

impl TlsIdentity {
    /// An identity from DER values.
    pub fn new(cert_chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        TlsIdentity { cert_chain, key }
    }

    /// Parses a PEM certificate chain and a PEM private key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        let cert_chain = certs_from_pem(cert_pem, "the certificate PEM")?;
        let key = key_from_pem(key_pem, "the key PEM")?;
        Ok(TlsIdentity { cert_chain, key })
    }

    /// Reads a PEM certificate chain and a PEM private key from files.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let cert_chain = certs_from_pem(&read_file(cert)?, &cert.display().to_string())?;
        let key = key_from_pem(&read_file(key)?, &key.display().to_string())?;
        Ok(TlsIdentity { cert_chain, key })
    }

    /// Details of the leaf certificate.
    pub fn certificate_info(&self) -> Option<CertificateInfo> {
        self.cert_chain.first().map(|c| certificate_info(c))
    }
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity { cert_chain: self.cert_chain.clone(), key: self.key.clone_key() }
    }
}

impl PartialEq for TlsIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.cert_chain == other.cert_chain && self.key.secret_der() == other.key.secret_der()
    }
}

impl Eq for TlsIdentity {}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let leaf = self.cert_chain.first().map(|c| certificate_info(c));
        f.debug_struct("TlsIdentity")
            .field("certificates", &self.cert_chain.len())
            .field("common_name", &leaf.as_ref().and_then(|l| l.common_name.clone()))
            .field("sha256", &leaf.map(|l| l.sha256_fingerprint))
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Server-side TLS settings.
///
/// ```no_run
/// use rpyc::transport::tls::TlsServerConfig;
/// use rpyc::transport::Listener;
/// # async fn demo() -> rpyc::Result<()> {
/// // certs/ holds ca.pem, server.pem, server.key (`rpyc certs init --dir certs`);
/// // clients need a certificate signed by ca.pem.
/// let config = TlsServerConfig::from_dir("certs")?;
/// let listener = Listener::tls("127.0.0.1:18821", &config).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsServerConfig {
    /// The server's certificate chain and key.
    pub identity: TlsIdentity,
    /// CAs whose client certificates are accepted. Default: none (which is
    /// an error unless `client_auth` is [`ClientAuth::None`]).
    pub client_ca: Vec<CertificateDer<'static>>,
    /// Whether clients must present a certificate. Default:
    /// [`ClientAuth::Required`] — the certificate *is* the identity.
    pub client_auth: ClientAuth,
    /// Oldest TLS version accepted. Default: [`TlsVersion::Tls12`], as
    /// Python clients on older OpenSSL builds may lack TLS 1.3.
    pub min_version: TlsVersion,
    /// TLS 1.3 session tickets sent after each handshake. Default: 0 — see
    /// the module docs: tickets can make a Python client using
    /// `BgServingThread` lose the reply to its first request.
    pub send_tls13_tickets: usize,
}

impl TlsServerConfig {
    /// A configuration presenting `identity`, with the defaults above (add
    /// a client CA, or set `client_auth` to [`ClientAuth::None`]).
    pub fn new(identity: TlsIdentity) -> Self {
        TlsServerConfig {
            identity,
            client_ca: Vec::new(),
            client_auth: ClientAuth::Required,
            min_version: TlsVersion::Tls12,
            send_tls13_tickets: 0,
        }
    }

    /// A configuration from a PEM certificate chain and key in memory.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        Ok(Self::new(TlsIdentity::from_pem(cert_pem, key_pem)?))
    }

    /// A configuration from PEM files.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::new(TlsIdentity::from_pem_files(cert, key)?))
    }

    /// A configuration from a certificate directory (as written by
    /// `rpyc certs init`): `server.pem` and `server.key` identify the
    /// server, and client certificates signed by `ca.pem` are required.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::Tls(format!(
                "certificate directory {} does not exist: create development certificates with \
                 `rpyc certs init --dir {}`",
                dir.display(),
                dir.display()
            )));
        }
        Self::from_pem_files(dir.join(SERVER_CERT_FILE), dir.join(SERVER_KEY_FILE))?
            .with_client_ca_file(dir.join(CA_FILE))
    }

    /// Adds the CA certificates in a PEM bundle to the client CAs.
    pub fn with_client_ca_pem(mut self, pem: &[u8]) -> Result<Self> {
        self.client_ca.extend(certs_from_pem(pem, "the client CA PEM")?);
        Ok(self)
    }

    /// Adds the CA certificates in a PEM file to the client CAs.
    pub fn with_client_ca_file(mut self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        self.client_ca.extend(certs_from_pem(&read_file(path)?, &path.display().to_string())?);
        Ok(self)
    }

    /// Sets whether clients must present a certificate.
    pub fn with_client_auth(mut self, client_auth: ClientAuth) -> Self {
        self.client_auth = client_auth;
        self
    }

    /// Builds the rustls configuration (checks that the key matches the
    /// certificate and that a client CA is there when one is needed).
    pub fn to_rustls(&self) -> Result<Arc<rustls::ServerConfig>> {
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(self.min_version.versions())
            .map_err(|e| Error::Tls(format!("TLS server configuration: {e}")))?;
        let builder = match self.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            mode => {
                if self.client_ca.is_empty() {
                    return Err(Error::Tls(
                        "TLS server configuration: client certificates are required but no CA \
                         to verify them was given (add one with with_client_ca_file, or set \
                         client_auth to ClientAuth::None)"
                            .into(),
                    ));
                }
                let roots = root_store(&self.client_ca, "client CA")?;
                let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                if mode == ClientAuth::Optional {
                    verifier = verifier.allow_unauthenticated();
                }
                let verifier =
                    verifier.build().map_err(|e| Error::Tls(format!("TLS server configuration: client CA: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        if self.identity.cert_chain.is_empty() {
            return Err(Error::Tls("TLS server configuration: no server certificate was given".into()));
        }
        let mut config = builder
            .with_single_cert(self.identity.cert_chain.clone(), self.identity.key.clone_key())
            .map_err(|e| Error::Tls(format!("TLS server certificate or key: {}", describe_config_error(&e))))?;
        config.send_tls13_tickets = self.send_tls13_tickets;
        Ok(Arc::new(config))
    }
}

/// Client-side TLS settings.
///
/// ```no_run
/// use rpyc::transport::tls::{connect_tls, TlsClientConfig};
/// # async fn demo() -> rpyc::Result<()> {
/// // Trust certs/ca.pem, present certs/alice.pem (`rpyc certs client alice`).
/// let config = TlsClientConfig::from_dir("certs", "alice")?;
/// let (stream, creds) = connect_tls("localhost:18821", &config).await?;
/// let conn = rpyc::ClientBuilder::new().start(stream, creds);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsClientConfig {
    /// CAs trusted to sign the server certificate. Default: none (which is
    /// an error: there is no "trust everyone" switch).
    pub ca: Vec<CertificateDer<'static>>,
    /// The client certificate to present. Default: `None`.
    pub identity: Option<TlsIdentity>,
    /// The name the server certificate must carry. Default: `None` — the
    /// host part of the address (a DNS name or an IP address).
    pub server_name: Option<String>,
    /// Oldest TLS version accepted. Default: [`TlsVersion::Tls12`].
    pub min_version: TlsVersion,
    /// How long the handshake may take once TCP is connected. Default: 10 s
    /// — a plain TCP server that waits for more bytes would otherwise stall
    /// the client forever.
    pub handshake_timeout: Duration,
}

impl Default for TlsClientConfig {
    fn default() -> Self {
        TlsClientConfig {
            ca: Vec::new(),
            identity: None,
            server_name: None,
            min_version: TlsVersion::Tls12,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl TlsClientConfig {
    /// The defaults: no CA (add one), no client certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `ca.pem` from a certificate directory and presents
    /// `<name>.pem` / `<name>.key` from it (as written by `rpyc certs`).
    pub fn from_dir(dir: impl AsRef<Path>, name: &str) -> Result<Self> {
        let dir = dir.as_ref();
        Self::new()
            .with_ca_file(dir.join(CA_FILE))?
            .with_identity_files(dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")))
    }

    /// Trusts the CA certificates in a PEM bundle.
    pub fn with_ca_pem(mut self, pem: &[u8]) -> Result<Self> {
        self.ca.extend(certs_from_pem(pem, "the CA PEM")?);
        Ok(self)
    }

    /// Also trusts the operating system's CA bundle: `$SSL_CERT_FILE` if set,
    /// else the first of the well-known bundle files that exists
    /// (`/etc/ssl/certs/ca-certificates.crt`, `/etc/pki/tls/certs/ca-bundle.crt`,
    /// `/etc/ssl/ca-bundle.pem`, `/etc/ssl/cert.pem`).
    pub fn with_system_roots(self) -> Result<Self> {
        const BUNDLES: [&str; 4] = [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/ca-bundle.pem",
            "/etc/ssl/cert.pem",
        ];
        let from_env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
        let found = from_env.or_else(|| BUNDLES.iter().map(std::path::PathBuf::from).find(|p| p.exists()));
        match found {
            Some(path) => self.with_ca_file(path),
            None => Err(Error::Tls(
                "TLS: no system CA bundle found (set SSL_CERT_FILE to your bundle, or use with_ca_file)".into(),
            )),
        }
    }

    /// Trusts the CA certificates in a PEM file.
    pub fn with_ca_file(mut self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        self.ca.extend(certs_from_pem(&read_file(path)?, &path.display().to_string())?);
        Ok(self)
    }

    /// Presents a client certificate.
    pub fn with_identity(mut self, identity: TlsIdentity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Presents the client certificate and key in PEM files.
    pub fn with_identity_files(self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self> {
        Ok(self.with_identity(TlsIdentity::from_pem_files(cert, key)?))
    }

    /// Expects the server certificate to name `name` whatever address is
    /// dialled (for IP addresses the certificate lacks, tunnels, forwards).
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Builds the rustls configuration.
    pub fn to_rustls(&self) -> Result<Arc<rustls::ClientConfig>> {
        if self.ca.is_empty() {
            return Err(Error::Tls(
                "TLS client configuration: no CA to verify the server certificate (add one with \
                 with_ca_file; for development certificates that is certs/ca.pem)"
                    .into(),
            ));
        }
        let roots = root_store(&self.ca, "CA")?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(self.min_version.versions())
            .map_err(|e| Error::Tls(format!("TLS client configuration: {e}")))?
            .with_root_certificates(roots);
        let config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some(id) => builder
                .with_client_auth_cert(id.cert_chain.clone(), id.key.clone_key())
                .map_err(|e| Error::Tls(format!("TLS client certificate or key: {}", describe_config_error(&e))))?,
        };
        Ok(Arc::new(config))
    }

    /// The name the server certificate must carry when dialling `addr`.
    pub fn server_name_for(&self, addr: &str) -> Result<ServerName<'static>> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => host_of(addr).to_string(),
        };
        ServerName::try_from(name.clone()).map_err(|_| {
            Error::Tls(format!(
                "'{name}' is not a DNS name or IP address a certificate can carry (set \
                 TlsClientConfig::server_name to the name in the server certificate)"
            ))
        })
    }
}

/// The host part of `host:port`, `[v6]:port` or a bare host.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    match addr.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.parse::<u16>().is_ok() => h,
        _ => addr,
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Largest certificate, key or CA file read (a CA bundle of a few hundred
/// certificates is well under it).
const MAX_PEM_FILE: u64 = 4 << 20;

fn read_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let shown = path.display();
    let err = |e: std::io::Error| Error::Tls(format!("cannot read {shown}: {e}"));
    // Only regular files: opening a FIFO would block the thread until a
    // writer comes, and a device (/dev/zero) never ends.
    let meta = std::fs::metadata(path).map_err(err)?;
    if !meta.is_file() {
        return Err(Error::Tls(format!("{shown} is not a regular file: give a PEM file")));
    }
    if meta.len() > MAX_PEM_FILE {
        return Err(Error::Tls(format!("{shown} is {} bytes, larger than any PEM file should be", meta.len())));
    }
    let mut data = Vec::new();
    std::fs::File::open(path).and_then(|f| f.take(MAX_PEM_FILE + 1).read_to_end(&mut data)).map_err(err)?;
    if data.len() as u64 > MAX_PEM_FILE {
        return Err(Error::Tls(format!("{shown} grew past {MAX_PEM_FILE} bytes while being read")));
    }
    Ok(data)
}

fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("{what}: not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!("{what}: no certificate found (expected a -----BEGIN CERTIFICATE----- block)")));
    }
    Ok(certs)
}

fn key_from_pem(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            Error::Tls(format!("{what}: no private key found (expected a -----BEGIN PRIVATE KEY----- block)"))
        }
        e => Error::Tls(format!("{what}: not a valid PEM private key: {e}")),
    })
}

fn root_store(certs: &[CertificateDer<'static>], what: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        roots
            .add(c.clone())
            .map_err(|e| Error::Tls(format!("{what} certificate #{} is not usable as a trust anchor: {e}", i + 1)))?;
    }
    Ok(roots)
}

fn describe_config_error(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(_) => {
            "the private key does not belong to the certificate (mixed up files?)".into()
        }
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------
// certificate details
// ---------------------------------------------------------------------------

/// Details of a DER certificate: subject CN, DNS/IP/URI subject
/// alternative names and the SHA-256 fingerprint. A certificate x509-parser cannot read
/// still gets its fingerprint.
pub fn certificate_info(der: &[u8]) -> CertificateInfo {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(der);
    let sha256_fingerprint = digest.iter().map(|b| format!("{b:02x}")).collect();
    let mut info = CertificateInfo { sha256_fingerprint, der: der.to_vec(), ..CertificateInfo::default() };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return info;
    };
    // Exactly one CN or none: with two, which one is "the" identity depends
    // on who reads it (Python's dict(subject) keeps the last), so a
    // certificate like that has no identity here.
    let cns: Vec<_> = cert.subject().iter_common_name().collect();
    info.common_name_count = cns.len();
    if let [cn] = cns.as_slice() {
        info.common_name = cn.as_str().ok().map(str::to_string);
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        use x509_parser::extensions::GeneralName;
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => {
                    info.subject_alt_names.push((*n).to_string());
                    info.dns_names.push((*n).to_string());
                }
                GeneralName::URI(u) => info.uris.push((*u).to_string()),
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        info.subject_alt_names.push(std::net::Ipv4Addr::from(a).to_string());
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        info.subject_alt_names.push(std::net::Ipv6Addr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    info
}

// ---------------------------------------------------------------------------
// server
// ---------------------------------------------------------------------------

type SharedConfig = Arc<RwLock<Arc<rustls::ServerConfig>>>;

/// Swaps the certificates of a running [`TlsAcceptor`]: connections
/// accepted afterwards use the new configuration; established ones keep
/// theirs. Cheap to clone.
#[derive(Clone)]
pub struct TlsReloadHandle(SharedConfig);

impl TlsReloadHandle {
    /// Replaces the configuration. On error the old one stays in force.
    pub fn reload(&self, config: &TlsServerConfig) -> Result<()> {
        let new = config.to_rustls()?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = new;
        tracing::info!("TLS configuration reloaded");
        Ok(())
    }

    /// Re-reads a certificate directory (see [`TlsServerConfig::from_dir`]).
    pub fn reload_from_dir(&self, dir: impl AsRef<Path>) -> Result<()> {
        self.reload(&TlsServerConfig::from_dir(dir)?)
    }
}

impl fmt::Debug for TlsReloadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsReloadHandle")
    }
}

/// Accepts TLS connections (implements [`Accept`]).
pub struct TlsAcceptor {
    tcp: TcpAcceptor,
    config: SharedConfig,
}

impl TlsAcceptor {
    /// Binds `addr` (`"127.0.0.1:0"` picks a free port). The configuration
    /// is checked now, so a bad certificate fails here, not per connection.
    pub async fn bind(addr: &str, config: &TlsServerConfig) -> Result<TlsAcceptor> {
        let config = config.to_rustls()?;
        let tcp = TcpAcceptor::bind(addr).await?;
        Ok(TlsAcceptor { tcp, config: Arc::new(RwLock::new(config)) })
    }

    /// Requires a PROXY protocol header in front of the TLS handshake (see
    /// [`TcpAcceptor::with_proxy_protocol`]): the client's address comes
    /// from it. Default: off.
    #[cfg(feature = "proxy-protocol")]
    #[cfg_attr(docsrs, doc(cfg(feature = "proxy-protocol")))]
    pub fn with_proxy_protocol(mut self, on: bool) -> Self {
        self.tcp = self.tcp.with_proxy_protocol(on);
        self
    }

    /// A handle that reloads the certificates while the server runs.
    pub fn reload_handle(&self) -> TlsReloadHandle {
        TlsReloadHandle(self.config.clone())
    }

    /// The bound address.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.tcp.addr()
    }
}

impl Accept for TlsAcceptor {
    fn accept(&self) -> BoxFut<'_, io::Result<Incoming>> {
        Box::pin(async move {
            let (tcp, peer) = self.tcp.accept_tcp().await?;
            let config = self.config.read().unwrap_or_else(|p| p.into_inner()).clone();
            // The header comes before the ClientHello, in this connection's
            // own task (Incoming::read_proxy_header), never in the accept loop.
            #[cfg(feature = "proxy-protocol")]
            if self.tcp.proxy_protocol() {
                return Ok(Incoming::behind_proxy(
                    PeerAddr::Ip(peer),
                    Box::pin(async move {
                        let (tcp, client) = read_proxy_header(tcp, peer).await?;
                        let handshake: Handshake = Box::pin(server_handshake(tcp, client, config));
                        Ok((PeerAddr::Ip(client), handshake))
                    }),
                ));
            }
            Ok(Incoming::new(PeerAddr::Ip(peer), Box::pin(server_handshake(tcp, peer, config))))
        })
    }

    fn describe(&self) -> String {
        match self.addr() {
            Some(a) => format!("tls://{a}"),
            None => "tls://?".into(),
        }
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.addr()
    }
}

async fn server_handshake(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    config: Arc<rustls::ServerConfig>,
) -> Result<(BoxStream, Credentials)> {
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(QuickAck::new(tcp));
    let stream = match accept.into_fallible().await {
        Ok(s) => s,
        Err((e, tcp)) => {
            linger_close(tcp.into_inner()).await;
            return Err(Error::Tls(format!("TLS handshake with {peer} failed: {}", describe_io(&e, Side::Server))));
        }
    };
    let mut creds = Credentials::anonymous(TransportKind::Tls, PeerAddr::Ip(peer));
    creds.channel_binding = tls_exporter(&**stream.get_ref().1);
    // With a client verifier in place, rustls only completes the handshake
    // when a presented certificate verified, so any certificate here is
    // verified.
    if let Some(leaf) = stream.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        let info = certificate_info(leaf);
        creds.identity = info.common_name.clone();
        creds.certificate = Some(info);
    }
    Ok((Box::new(TlsStream::new(stream, Side::Server)), creds))
}

/// The RFC 9266 `tls-exporter` channel binding of a finished handshake:
/// 32 bytes exported under `EXPORTER-Channel-Binding` with no context. Both
/// ends get the same value; a man in the middle, holding two different TLS
/// sessions, gets two different ones.
fn tls_exporter<D>(conn: &rustls::ConnectionCommon<D>) -> Option<crate::identity::ChannelBinding> {
    conn.export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
        .ok()
        .map(|v| crate::identity::ChannelBinding(v.to_vec()))
}

/// How long a refused peer may take to close after our alert.
const LINGER: Duration = Duration::from_secs(1);

/// Closes a refused peer's socket gracefully: FIN after the alert, then
/// discard whatever the peer still sends until it closes (at most
/// [`LINGER`]). In TLS 1.3 the client's handshake is over before we check
/// its certificate, so its first request may already be in our receive
/// buffer; closing with unread bytes makes the kernel send RST, and the
/// client would see "connection reset" instead of the alert that says why.
async fn linger_close(mut tcp: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

impl Listener {
    /// Binds a TLS listener. To reload certificates later, build a
    /// [`TlsAcceptor`], keep its [`TlsAcceptor::reload_handle`] and wrap it
    /// with [`Listener::new`].
    pub async fn tls(addr: &str, config: &TlsServerConfig) -> Result<Listener> {
        Ok(Listener::new(TlsAcceptor::bind(addr, config).await?))
    }
}

// ---------------------------------------------------------------------------
// client
// ---------------------------------------------------------------------------

impl Endpoint {
    /// A TLS endpoint: `host:port` plus the client configuration.
    pub fn tls(addr: impl Into<String>, config: TlsClientConfig) -> Endpoint {
        Endpoint::Tls { addr: addr.into(), config: Arc::new(config) }
    }

    /// Parses `tls://host:port` or a bare `host:port` into a TLS endpoint
    /// (the configuration cannot be spelled in an address).
    pub fn parse_tls(s: &str, config: TlsClientConfig) -> Result<Endpoint> {
        let addr = match s.strip_prefix("tls://") {
            Some(rest) => rest.trim_end_matches('/'),
            None if s.contains("://") => {
                return Err(Error::Tls(format!("'{s}' is not a TLS address: use tls://host:port or host:port")))
            }
            None => s,
        };
        if addr.rsplit_once(':').is_none_or(|(_, p)| p.parse::<u16>().is_err()) {
            return Err(Error::Transport(
                super::port_problem(s).replace("tcp://host:port or unix:///path", "tls://host:port"),
            ));
        }
        Ok(Endpoint::tls(addr, config))
    }
}

/// Connects to `addr` (`host:port`) over TLS with default TCP options.
///
/// The returned credentials describe the server: `transport` is
/// [`TransportKind::Tls`] and `certificate` holds the server certificate
/// (`identity` stays `None`). Run RPyC over the stream with
/// [`ClientBuilder::start`](crate::ClientBuilder::start).
pub async fn connect_tls(addr: &str, config: &TlsClientConfig) -> Result<(BoxStream, Credentials)> {
    connect_tls_with(addr, config, &TcpOptions::default()).await
}

/// [`connect_tls`] with TCP options.
pub async fn connect_tls_with(
    addr: &str,
    config: &TlsClientConfig,
    tcp: &TcpOptions,
) -> Result<(BoxStream, Credentials)> {
    // Configuration mistakes first: they need no network round trip.
    let rustls_config = config.to_rustls()?;
    let name = config.server_name_for(addr)?;
    let (stream, creds) = connect_tcp(addr, tcp).await?;
    client_handshake(QuickAck::new(stream), name, rustls_config, config.handshake_timeout, addr, creds.peer).await
}

/// Connects to an already resolved address over TLS, checking the server
/// certificate against `host` (unless `config.server_name` overrides it):
/// for addresses found through DNS SRV records.
#[cfg(feature = "srv")]
pub(crate) async fn connect_tls_to(
    addr: std::net::SocketAddr,
    host: &str,
    config: &TlsClientConfig,
    tcp: &TcpOptions,
) -> Result<(BoxStream, Credentials)> {
    let rustls_config = config.to_rustls()?;
    let name = config.server_name_for(host)?;
    let shown = format!("{host} ({addr})");
    let (stream, creds) = connect_tcp(&addr.to_string(), tcp).await?;
    client_handshake(QuickAck::new(stream), name, rustls_config, config.handshake_timeout, &shown, creds.peer).await
}

/// Runs the TLS client handshake over a stream you opened (a tunnel, a
/// proxy). `server_name` is what the certificate must name, unless
/// `config.server_name` overrides it.
pub async fn connect_tls_stream(
    stream: impl Stream,
    server_name: &str,
    config: &TlsClientConfig,
) -> Result<(BoxStream, Credentials)> {
    let rustls_config = config.to_rustls()?;
    let name = config.server_name_for(server_name)?;
    client_handshake(stream, name, rustls_config, config.handshake_timeout, server_name, PeerAddr::Unknown).await
}

async fn client_handshake<S: Stream>(
    stream: S,
    name: ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
    addr: &str,
    peer: PeerAddr,
) -> Result<(BoxStream, Credentials)> {
    let connect = tokio_rustls::TlsConnector::from(config).connect(name, stream);
    let stream = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(Error::Tls(format!("TLS handshake with {addr} failed: {}", describe_io(&e, Side::Client))))
        }
        Err(_) => {
            return Err(Error::ConnectTimeout(format!(
                "TLS handshake with {addr} timed out after {timeout:?}: the server did not answer \
                 the TLS hello (is it a plain TCP server? then connect without TLS)"
            )))
        }
    };
    let mut creds = Credentials::anonymous(TransportKind::Tls, peer);
    creds.certificate = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| certificate_info(c));
    creds.channel_binding = tls_exporter(&**stream.get_ref().1);
    Ok((Box::new(TlsStream::new(stream, Side::Client)), creds))
}

/// A TLS stream (either side) as the RPyC engine sees it:
///
/// - each TLS record carries bytes of one RPyC frame only (see
///   [`FrameCut`]);
/// - rustls errors that arrive after the handshake (in TLS 1.3, the
///   server's refusal of our client certificate) become text that says
///   what to do;
/// - a peer that closes without `close_notify` reads as a plain end of
///   stream. Python's `ssl` sockets never send `close_notify` on `close()`,
///   and RPyC frames carry their own length, so a truncation inside a frame
///   is still caught by the channel layer; only the alarming log line goes.
struct TlsStream<T> {
    inner: T,
    side: Side,
    cut: FrameCut,
}

impl<T> TlsStream<T> {
    fn new(inner: T, side: Side) -> Self {
        TlsStream { inner, side, cut: FrameCut::default() }
    }

    fn map<R>(&self, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match r {
            Poll::Ready(Err(e)) if tls_error(&e).is_some() => {
                let text = describe_io(&e, self.side);
                Poll::Ready(Err(io::Error::new(e.kind(), format!("TLS: {text}"))))
            }
            other => other,
        }
    }
}

/// Tracks RPyC frame boundaries (`!LB` header, payload, `\n`; see
/// [`crate::channel`]) in the bytes written, so that one write — and hence
/// one TLS record — never holds the end of one frame and the start of the
/// next.
///
/// Why: Python rpyc waits for the next frame by polling the socket's file
/// descriptor (`SocketStream.poll`), which knows nothing of plaintext that
/// `ssl.SSLSocket` already decrypted and buffered. A record carrying two
/// frames leaves the second one in that buffer after the first is read,
/// and the Python peer waits for it until `sync_request_timeout` expires.
/// Python's own peers write every frame with its own `send`, so they never
/// do this; the engine batches frames into one write for speed, so we cut
/// them apart again here. Splitting writes never changes the byte stream.
#[derive(Default)]
struct FrameCut {
    /// Header bytes of the current frame seen so far.
    header: [u8; crate::channel::HEADER_LEN],
    have: usize,
    /// Payload and `\n` bytes of the current frame still to come.
    left: usize,
}

impl FrameCut {
    const FLUSHER: usize = 1;

    /// How many bytes of `buf` may go into the next write.
    fn next_chunk(&self, buf: &[u8]) -> usize {
        if self.left > 0 {
            return self.left.min(buf.len());
        }
        let need = crate::channel::HEADER_LEN - self.have;
        let Some(rest) = buf.get(..need) else {
            return buf.len();
        };
        let mut header = self.header;
        if let Some(h) = header.get_mut(self.have..) {
            h.copy_from_slice(rest);
        }
        need.saturating_add(Self::frame_rest(&header)).min(buf.len())
    }

    /// Payload plus `\n` of a frame with this header.
    fn frame_rest(header: &[u8; crate::channel::HEADER_LEN]) -> usize {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        usize::try_from(len).unwrap_or(usize::MAX).saturating_add(Self::FLUSHER)
    }

    /// Accounts for bytes that were written.
    fn advance(&mut self, mut written: &[u8]) {
        while !written.is_empty() {
            if self.left == 0 {
                let take = (crate::channel::HEADER_LEN - self.have).min(written.len());
                let (head, rest) = written.split_at(take);
                if let Some(h) = self.header.get_mut(self.have..self.have + take) {
                    h.copy_from_slice(head);
                }
                self.have += take;
                written = rest;
                if self.have == crate::channel::HEADER_LEN {
                    self.left = Self::frame_rest(&self.header);
                }
            } else {
                let take = self.left.min(written.len());
                self.left -= take;
                written = written.get(take..).unwrap_or_default();
                if self.left == 0 {
                    self.have = 0;
                }
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            // rustls reports a missing close_notify as UnexpectedEof.
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
            other => self.map(other),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let chunk = buf.get(..self.cut.next_chunk(buf)).unwrap_or(buf);
        let r = Pin::new(&mut self.inner).poll_write(cx, chunk);
        if let Poll::Ready(Ok(n)) = r {
            self.cut.advance(chunk.get(..n).unwrap_or(chunk));
        }
        self.map(r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.map(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.map(r)
    }
}

// ---------------------------------------------------------------------------
// errors in words
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// An I/O error from a TLS handshake or stream, in words.
fn describe_io(e: &io::Error, side: Side) -> String {
    if let Some(tls) = tls_error(e) {
        return describe(tls, side);
    }
    match (e.kind(), side) {
        (io::ErrorKind::UnexpectedEof, Side::Client) => "the server closed the connection during \
            the TLS handshake (is it a plain TCP server? then connect without TLS)"
            .into(),
        (io::ErrorKind::UnexpectedEof, Side::Server) => "the client closed the connection during \
            the TLS handshake (it may not trust this server's certificate, or not speak TLS)"
            .into(),
        (io::ErrorKind::ConnectionReset, _) => {
            format!("the connection was reset during the TLS handshake ({e})")
        }
        _ => e.to_string(),
    }
}

/// A rustls error in words, with a hint of what to do.
fn describe(e: &rustls::Error, side: Side) -> String {
    use rustls::Error as E;
    let (peer, me) = match side {
        Side::Client => ("server", "client"),
        Side::Server => ("client", "server"),
    };
    match e {
        E::InvalidCertificate(ce) => describe_cert_error(ce, peer),
        E::NoCertificatesPresented => match side {
            Side::Server => "the client presented no certificate, but this server requires one \
                (Python: rpyc.ssl_connect(..., keyfile=..., certfile=...); create one with \
                `rpyc certs client NAME`)"
                .into(),
            Side::Client => "the server presented no certificate".into(),
        },
        E::AlertReceived(alert) => describe_alert(*alert, side),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => match side {
            Side::Server => format!(
                "the client does not speak TLS ({e}); a plain RPyC client must use \
                     rpyc.ssl_connect (Python) or a tls:// endpoint"
            ),
            Side::Client => format!(
                "the server did not answer with TLS ({e}); is it a plain TCP server? then \
                     connect without TLS"
            ),
        },
        E::PeerIncompatible(p) => format!(
            "the {peer} and {me} have no TLS version, cipher suite or key exchange in common \
             ({p:?}); both must support TLS 1.2 or 1.3"
        ),
        E::DecryptError => "decryption failed (corrupted data, or a man in the middle)".into(),
        E::PeerMisbehaved(p) => format!("the {peer} broke the TLS protocol ({p:?})"),
        other => other.to_string(),
    }
}

fn describe_cert_error(e: &CertificateError, whose: &str) -> String {
    use CertificateError as C;
    let renew = match whose {
        "client" => "issue a new one with `rpyc certs client NAME`",
        _ => "issue a new server certificate (development: `rpyc certs init`)",
    };
    match e {
        C::UnknownIssuer => format!(
            "the {whose} certificate is not signed by a trusted CA (unknown issuer): it comes from \
             another CA, or the {} side was given the wrong CA file",
            if whose == "client" { "server" } else { "client" }
        ),
        #[allow(deprecated)]
        C::BadSignature
        | C::UnsupportedSignatureAlgorithm
        | C::UnsupportedSignatureAlgorithmContext { .. }
        | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => format!(
            "the {whose} certificate's signature does not verify with the trusted CA: it was \
             issued by a different CA with the same name (another `rpyc certs init`?)"
        ),
        C::Expired => format!("the {whose} certificate has expired: {renew}"),
        C::ExpiredContext { time, not_after } => format!(
            "the {whose} certificate expired {} ago: {renew}",
            human_secs(time.as_secs().saturating_sub(not_after.as_secs()))
        ),
        C::NotValidYet | C::NotValidYetContext { .. } => {
            format!("the {whose} certificate is not valid yet (check the clocks of both machines)")
        }
        C::NotValidForName => format!(
            "the {whose} certificate is not valid for the name that was dialled: connect by a name \
             the certificate carries, or set server_name"
        ),
        C::NotValidForNameContext { expected, presented } => {
            let names = match presented.is_empty() {
                true => "nothing".to_string(),
                false => presented.iter().map(|p| plain_name(p)).collect::<Vec<_>>().join(", "),
            };
            format!(
                "the {whose} certificate is not valid for '{}' (it names {names}): connect by one \
                 of those names, set server_name, or reissue the certificate with the name \
                 (`rpyc certs init --san NAME`)",
                expected.to_str()
            )
        }
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => format!(
            "the {whose} certificate is not meant for this purpose (extended key usage): a \
             {whose} needs a {whose} certificate"
        ),
        C::Revoked => format!("the {whose} certificate has been revoked"),
        C::BadEncoding => format!("the {whose} certificate is malformed"),
        other => format!("the {whose} certificate was rejected: {other}"),
    }
}

fn describe_alert(alert: AlertDescription, side: Side) -> String {
    use AlertDescription as A;
    match side {
        Side::Client => match alert {
            A::CertificateRequired => "the server requires a client certificate and we sent none \
                (TlsClientConfig::with_identity_files; create one with `rpyc certs client NAME`)"
                .into(),
            A::UnknownCA => "the server does not trust our client certificate (unknown CA): use \
                a certificate signed by the CA the server trusts"
                .into(),
            A::DecryptError => "the server could not verify our client certificate with its CA: \
                it was issued by a different CA (another `rpyc certs init`?)"
                .into(),
            A::CertificateExpired => "the server refused our client certificate as expired (or \
                not yet valid): issue a new one with `rpyc certs client NAME`"
                .into(),
            A::BadCertificate | A::UnsupportedCertificate | A::CertificateUnknown => {
                format!("the server refused our client certificate ({alert:?})")
            }
            A::CertificateRevoked => "the server refused our client certificate: revoked".into(),
            A::AccessDenied => "the server denied access".into(),
            A::HandshakeFailure => "the server aborted the handshake (handshake_failure): no TLS \
                settings in common, or (TLS 1.2) it requires a client certificate we did not send"
                .into(),
            A::ProtocolVersion => "the server does not accept our TLS versions".into(),
            other => format!("the server aborted the TLS connection with alert {other:?}"),
        },
        Side::Server => match alert {
            A::UnknownCA => "the client does not trust this server's certificate (unknown CA): \
                give the client the CA that signed the server certificate (ca.pem)"
                .into(),
            A::BadCertificate => "the client rejected this server's certificate (wrong name for \
                the address it dialled?)"
                .into(),
            A::CertificateExpired => "the client rejected this server's certificate as expired".into(),
            A::DecryptError => "the client could not verify this server's certificate with its \
                CA (signed by a different CA of the same name?)"
                .into(),
            other => format!("the client aborted the TLS handshake with alert {other:?}"),
        },
    }
}

/// rustls spells presented names as `DnsName("x")` / `IpAddress(1.2.3.4)`.
fn plain_name(presented: &str) -> &str {
    let inner = presented
        .strip_prefix("DnsName(")
        .or_else(|| presented.strip_prefix("IpAddress("))
        .and_then(|r| r.strip_suffix(')'));
    inner.map_or(presented, |n| n.trim_matches('"'))
}

fn human_secs(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_roots_load_the_os_bundle() {
        // This machine (and CI) has Debian's bundle; the error names the fix otherwise.
        match TlsClientConfig::new().with_system_roots() {
            Ok(cfg) => assert!(cfg.ca.len() > 10, "only {} system CAs", cfg.ca.len()),
            Err(e) => assert!(e.to_string().contains("SSL_CERT_FILE"), "{e}"),
        }
    }
    #[test]
    fn hosts() {
        assert_eq!(host_of("localhost:1"), "localhost");
        assert_eq!(host_of("[::1]:18861"), "::1");
        assert_eq!(host_of("127.0.0.1:5"), "127.0.0.1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("example.org"), "example.org");
    }

    #[test]
    fn tls_endpoints_parse() {
        let cfg = TlsClientConfig::default();
        let ep = Endpoint::parse_tls("tls://h:1/", cfg.clone()).unwrap();
        assert_eq!(ep, Endpoint::tls("h:1", cfg.clone()));
        assert!(Endpoint::parse_tls("h:1", cfg.clone()).is_ok());
        assert!(Endpoint::parse_tls("tcp://h:1", cfg.clone()).is_err());
        assert!(Endpoint::parse_tls("tls://h", cfg).is_err());
        assert!(Endpoint::parse("tls://h:1").is_err());
    }

    #[test]
    fn missing_ca_is_a_clear_error() {
        let e = TlsClientConfig::new().to_rustls().unwrap_err().to_string();
        assert!(e.contains("no CA"), "{e}");
        let e = TlsClientConfig::new().with_ca_pem(b"junk").unwrap_err().to_string();
        assert!(e.contains("no certificate found"), "{e}");
    }

    #[test]
    fn frame_cut_splits_batched_frames() {
        let frame = |n: usize| {
            let mut f = (n as u32).to_be_bytes().to_vec();
            f.push(0);
            f.extend(std::iter::repeat_n(7u8, n));
            f.push(b'\n');
            f
        };
        let (a, b, c) = (frame(3), frame(0), frame(40_000));
        let batch = [a.clone(), b.clone(), c.clone()].concat();
        let mut cut = FrameCut::default();
        let mut chunks = Vec::new();
        let mut rest = batch.as_slice();
        while !rest.is_empty() {
            // A short write (at most 1000 bytes) must not confuse the tracking.
            let n = cut.next_chunk(rest).min(1000);
            cut.advance(&rest[..n]);
            chunks.push(n);
            rest = &rest[n..];
        }
        // no chunk crosses a frame boundary
        let bounds = [a.len(), a.len() + b.len(), batch.len()];
        let mut at = 0;
        for n in chunks {
            assert!(bounds.iter().all(|&bd| !(at < bd && at + n > bd)), "chunk {at}+{n}");
            at += n;
        }
        // a header split over two writes
        let mut cut = FrameCut::default();
        cut.advance(&a[..2]);
        assert_eq!(cut.next_chunk(&batch[2..]), a.len() - 2);
    }

    #[test]
    fn errors_in_words() {
        let e = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert!(describe(&e, Side::Client).contains("requires a client certificate"));
        let e = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(describe(&e, Side::Server).contains("client certificate is not signed by a trusted CA"));
        let e = rustls::Error::NoCertificatesPresented;
        assert!(describe(&e, Side::Server).contains("presented no certificate"));
        let io = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert!(tls_error(&io).is_some());
    }
}
