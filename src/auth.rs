//! Layer 2: the authenticator hook (mirrors `rpyc/utils/authenticators.py`).
//!
//! An [`Authenticator`] runs on every accepted stream after the transport
//! handshake and before a single RPyC frame is read. It may wrap the stream
//! and returns the peer's [`Credentials`], or refuses the connection; the
//! reason is logged, never sent. The server enforces one deadline for the
//! handshake and the authenticator together, so a peer that stalls is
//! dropped.
//!
//! Built-ins:
//!
//! | authenticator | proves | transport |
//! |---|---|---|
//! | [`TlsClientCert`] | a client certificate verified by the TLS layer (optionally from a list of names) | TLS |
//! | [`SshPublicKey`] | a public key the SSH layer accepted for the identity it is bound to (optionally users/fingerprints from a list) | SSH |
//! | [`ChallengeResponse`] | knowledge of a shared secret, without sending it, both ways; bound to the TLS session | TLS, loopback TCP, Unix |
//! | [`AllowAll`] | nothing (development only) | any |
//! | [`FirstMatch`], [`AllOf`] | combinations | — |
//!
//! `TlsClientCert` (and [`IdentityFrom`]) need the crate feature `tls`,
//! `SshPublicKey` the feature `ssh`.

use crate::connection::handler::BoxFuture;
use crate::identity::{Credentials, TransportKind};
use crate::transport::BoxStream;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::BTreeMap;
#[cfg(any(feature = "tls", feature = "ssh"))]
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a peer was refused.
///
/// When an authenticator declines *without touching the stream* (for
/// example a TLS-certificate check on a plain TCP connection) it hands the
/// stream back, so a [`FirstMatch`] can offer it to the next one.
pub struct AuthError {
    /// What went wrong (logged by the server, never sent to the peer).
    pub reason: String,
    /// The untouched stream and credentials, if the authenticator passed.
    pub untouched: Option<Box<(BoxStream, Credentials)>>,
}

impl AuthError {
    /// A refusal after the stream was used (or that must not fall through).
    pub fn refused(reason: impl Into<String>) -> AuthError {
        AuthError { reason: reason.into(), untouched: None }
    }

    /// "Not for me": the stream is returned unread.
    pub fn pass(stream: BoxStream, creds: Credentials, reason: impl Into<String>) -> AuthError {
        AuthError { reason: reason.into(), untouched: Some(Box::new((stream, creds))) }
    }
}

impl fmt::Debug for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthError").field("reason", &self.reason).field("untouched", &self.untouched.is_some()).finish()
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "authentication failed: {}", self.reason)
    }
}

impl std::error::Error for AuthError {}

/// The result type of an authenticator.
pub type AuthResult = Result<(BoxStream, Credentials), AuthError>;

/// Decides who the peer is before the RPC connection starts.
pub trait Authenticator: Send + Sync + 'static {
    /// Inspects (and possibly wraps) the stream; `creds` holds what the
    /// transport already established (peer address, TLS certificate, SSH user).
    fn authenticate(&self, stream: BoxStream, creds: Credentials) -> BoxFuture<AuthResult>;
}

impl<A: Authenticator + ?Sized> Authenticator for Arc<A> {
    fn authenticate(&self, stream: BoxStream, creds: Credentials) -> BoxFuture<AuthResult> {
        (**self).authenticate(stream, creds)
    }
}

impl Authenticator for Box<dyn Authenticator> {
    fn authenticate(&self, stream: BoxStream, creds: Credentials) -> BoxFuture<AuthResult> {
        (**self).authenticate(stream, creds)
    }
}

/// Accepts everyone with the transport's credentials. For development, and
/// for transports that authenticate by themselves.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate(&self, stream: BoxStream, creds: Credentials) -> BoxFuture<AuthResult> {
        Box::pin(std::future::ready(Ok((stream, creds))))
    }
}

/// Optional identity → groups mapping shared by the built-ins.
fn add_groups(creds: &mut Credentials, groups: &BTreeMap<String, Vec<String>>) {
    if let Some(id) = &creds.identity {
        if let Some(gs) = groups.get(id) {
            for g in gs {
                if !creds.groups.contains(g) {
                    creds.groups.push(g.clone());
                }
            }
        }
    }
}

/// Which part of a client certificate is the identity.
///
/// Whatever the source, exactly one value must be there: a certificate
/// with two CNs, or two SANs of the chosen kind, has no identity (readers
/// disagree on which one counts; SPIFFE allows exactly one URI SAN) and is
/// refused.
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum IdentityFrom {
    /// The subject's common name (`CN=alice`). The default, and what
    /// Python's `SSLAuthenticator` users know.
    #[default]
    Cn,
    /// The URI subject alternative name: a workload identity such as the
    /// SPIFFE ID `spiffe://example.org/ns/prod/sa/billing` (what SPIRE,
    /// Istio and cert-manager's CSI driver issue).
    UriSan,
    /// The DNS subject alternative name (`billing.prod.svc`).
    DnsSan,
}

#[cfg(feature = "tls")]
impl IdentityFrom {
    /// The spelling in configuration files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityFrom::Cn => "cn",
            IdentityFrom::UriSan => "uri-san",
            IdentityFrom::DnsSan => "dns-san",
        }
    }
}

#[cfg(feature = "tls")]
impl fmt::Display for IdentityFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(feature = "tls")]
impl std::str::FromStr for IdentityFrom {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cn" => Ok(IdentityFrom::Cn),
            "uri-san" => Ok(IdentityFrom::UriSan),
            "dns-san" => Ok(IdentityFrom::DnsSan),
            other => Err(format!("unknown identity source {other:?}: use cn, uri-san or dns-san")),
        }
    }
}

/// Accepts connections that presented a client certificate the TLS layer
/// verified; the identity is the certificate's common name, or its one URI
/// or DNS subject alternative name ([`TlsClientCert::identity_from`]).
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
#[derive(Clone, Debug, Default)]
pub struct TlsClientCert {
    allowed: Option<BTreeSet<String>>,
    groups: BTreeMap<String, Vec<String>>,
    from: IdentityFrom,
}

#[cfg(feature = "tls")]
impl TlsClientCert {
    /// Any certificate the TLS layer verified.
    pub fn new() -> TlsClientCert {
        TlsClientCert::default()
    }

    /// Takes the identity from the common name (the default), the URI SAN
    /// or the DNS SAN.
    pub fn identity_from(mut self, from: IdentityFrom) -> Self {
        self.from = from;
        self
    }

    /// Only these identities (common names, or SANs with
    /// [`TlsClientCert::identity_from`]).
    pub fn allow(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.allowed = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Puts an identity in groups (policies are often chosen by group).
    pub fn group(mut self, identity: &str, groups: &[&str]) -> Self {
        self.groups.insert(identity.into(), groups.iter().map(|g| g.to_string()).collect());
        self
    }
}

#[cfg(feature = "tls")]
impl Authenticator for TlsClientCert {
    fn authenticate(&self, stream: BoxStream, mut creds: Credentials) -> BoxFuture<AuthResult> {
        let result = (|| {
            if creds.transport != TransportKind::Tls {
                return Err(AuthError::pass(stream, creds, "not a TLS connection"));
            }
            let Some(cert) = &creds.certificate else {
                return Err(AuthError::refused("no client certificate was presented"));
            };
            let id = certificate_identity(cert, self.from).map_err(AuthError::refused)?;
            if let Some(allowed) = &self.allowed {
                if !allowed.contains(&id) {
                    let what = match self.from {
                        IdentityFrom::Cn => "certificate CN",
                        IdentityFrom::UriSan => "certificate URI SAN",
                        IdentityFrom::DnsSan => "certificate DNS SAN",
                    };
                    return Err(AuthError::refused(format!("{what} {id:?} is not allowed")));
                }
            }
            creds.identity = Some(id);
            add_groups(&mut creds, &self.groups);
            Ok((stream, creds))
        })();
        Box::pin(std::future::ready(result))
    }
}

/// The identity a verified certificate carries in `from`, or why it has none.
/// One decision for every caller: exactly one value, or no identity.
#[cfg(feature = "tls")]
fn certificate_identity(cert: &crate::identity::CertificateInfo, from: IdentityFrom) -> Result<String, String> {
    let id = certificate_identity_unchecked(cert, from)?;
    // Identities go into logs, audit records and policy tables: a control
    // character could forge a log line, and SAN values are ASCII by
    // definition (IA5String).
    if id.chars().any(char::is_control) {
        return Err("the client certificate's identity contains control characters; it is refused".into());
    }
    if from != IdentityFrom::Cn && !id.is_ascii() {
        return Err("the client certificate's subject alternative name is not ASCII (IA5String); it is refused".into());
    }
    // A CN spelled like a URI could pose as a SPIFFE ID that another
    // listener reads from a URI SAN (identities share one namespace).
    if from == IdentityFrom::Cn && id.contains("://") {
        return Err(format!(
            "the client certificate's common name {id:?} is shaped like a URI; URI identities (SPIFFE IDs) \
             come from a URI SAN on a listener with identity_from = \"uri-san\", never from a CN"
        ));
    }
    Ok(id)
}

#[cfg(feature = "tls")]
fn certificate_identity_unchecked(
    cert: &crate::identity::CertificateInfo,
    from: IdentityFrom,
) -> Result<String, String> {
    let (kind, values, hint) = match from {
        IdentityFrom::Cn => {
            if cert.common_name_count > 1 {
                return Err(format!(
                    "the client certificate has {} common names, so its identity is ambiguous; \
                     issue certificates with exactly one CN",
                    cert.common_name_count
                ));
            }
            return cert.common_name.clone().ok_or_else(|| "the client certificate has no common name".to_string());
        }
        IdentityFrom::UriSan => (
            "URI",
            &cert.uris,
            "issue it with exactly one URI SAN (a SPIFFE ID, spiffe://trust-domain/path), or choose \
             identity_from = \"cn\" or \"dns-san\"",
        ),
        IdentityFrom::DnsSan => (
            "DNS",
            &cert.dns_names,
            "issue it with exactly one DNS SAN, or choose identity_from = \"cn\" or \"uri-san\"",
        ),
    };
    match values.as_slice() {
        [one] if !one.is_empty() => Ok(one.clone()),
        [] | [_] => Err(format!("the client certificate has no {kind} subject alternative name: {hint}")),
        many => Err(format!(
            "the client certificate has {} {kind} subject alternative names ({}), so its identity is \
             ambiguous: {hint}",
            many.len(),
            many.join(", ")
        )),
    }
}

/// Accepts SSH channels whose user the SSH layer authenticated by public
/// key; the identity is the SSH user. The embedded endpoint
/// ([`SshAcceptor`](crate::transport::ssh::SshAcceptor)) only lets a key log
/// in under the one user name it is bound to (per-user `authorized_keys`
/// files or `identity="NAME"` options), so the user is proven by the key,
/// not merely claimed. `allow_fingerprints` pins keys as well.
#[cfg(feature = "ssh")]
#[cfg_attr(docsrs, doc(cfg(feature = "ssh")))]
#[derive(Clone, Debug, Default)]
pub struct SshPublicKey {
    users: Option<BTreeSet<String>>,
    fingerprints: Option<BTreeSet<String>>,
    groups: BTreeMap<String, Vec<String>>,
}

#[cfg(feature = "ssh")]
impl SshPublicKey {
    /// Any user the SSH layer authenticated.
    pub fn new() -> SshPublicKey {
        SshPublicKey::default()
    }

    /// Only these users.
    pub fn allow_users(mut self, users: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.users = Some(users.into_iter().map(Into::into).collect());
        self
    }

    /// Only keys with these fingerprints (`SHA256:…`).
    pub fn allow_fingerprints(mut self, fps: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.fingerprints = Some(fps.into_iter().map(Into::into).collect());
        self
    }

    /// Puts an identity in groups.
    pub fn group(mut self, identity: &str, groups: &[&str]) -> Self {
        self.groups.insert(identity.into(), groups.iter().map(|g| g.to_string()).collect());
        self
    }
}

#[cfg(feature = "ssh")]
impl Authenticator for SshPublicKey {
    fn authenticate(&self, stream: BoxStream, mut creds: Credentials) -> BoxFuture<AuthResult> {
        let result = (|| {
            if creds.transport != TransportKind::Ssh {
                return Err(AuthError::pass(stream, creds, "not an SSH channel"));
            }
            let Some(user) = creds.ssh_user.clone() else {
                return Err(AuthError::refused("the SSH layer reported no user"));
            };
            // The user name is only a claim unless a key proved it: an
            // acceptor that reports no key did not authenticate one.
            if creds.ssh_key_fingerprint.is_none() {
                return Err(AuthError::refused(format!(
                    "the SSH layer reported user {user:?} but no public key proved it"
                )));
            }
            if let Some(users) = &self.users {
                if !users.contains(&user) {
                    return Err(AuthError::refused(format!("SSH user {user:?} is not allowed")));
                }
            }
            if let Some(fps) = &self.fingerprints {
                let fp = creds.ssh_key_fingerprint.clone().unwrap_or_default();
                if !fps.contains(&fp) {
                    return Err(AuthError::refused(format!("SSH key {fp} is not allowed")));
                }
            }
            creds.identity = Some(user);
            add_groups(&mut creds, &self.groups);
            Ok((stream, creds))
        })();
        Box::pin(std::future::ready(result))
    }
}

/// The greeting that starts the challenge–response exchange.
const CR_MAGIC: &[u8; 12] = b"RPYC-CHAL-2\n";
const CR_NONCE_LEN: usize = 32;
const CR_TAG_LEN: usize = 32;
const CR_OK: &[u8; 3] = b"OK\n";
const CR_CONTEXT: &[u8] = b"rpyc-rust challenge-response v2";

/// Whose proof a tag is: the two directions never share a tag.
#[derive(Clone, Copy)]
enum Prover {
    Client,
    Server,
}

/// `HMAC-SHA256(secret, context ‖ role ‖ server nonce ‖ client nonce ‖
/// len ‖ channel binding ‖ len ‖ identity)`; lengths are u32 big-endian.
fn cr_message(prover: Prover, server_nonce: &[u8], client_nonce: &[u8], binding: &[u8], identity: &str) -> Vec<u8> {
    let mut msg = CR_CONTEXT.to_vec();
    msg.extend_from_slice(match prover {
        Prover::Client => b"\0client\0",
        Prover::Server => b"\0server\0",
    });
    msg.extend_from_slice(server_nonce);
    msg.extend_from_slice(client_nonce);
    msg.extend_from_slice(&(binding.len() as u32).to_be_bytes());
    msg.extend_from_slice(binding);
    msg.extend_from_slice(&(identity.len() as u32).to_be_bytes());
    msg.extend_from_slice(identity.as_bytes());
    msg
}

/// Shared-secret challenge–response with mutual proof and channel binding.
///
/// Before any RPyC byte:
///
/// 1. server → `RPYC-CHAL-2\n` and a 32-byte random nonce `Ns`;
/// 2. client → its identity (u8 length + UTF-8), its own 32-byte nonce `Nc`
///    and `HMAC-SHA256(secret, context ‖ "client" ‖ Ns ‖ Nc ‖ binding ‖
///    identity)`;
/// 3. the server checks the tag in constant time and answers `OK\n` and
///    the same HMAC with `"server"`: the client checks it, so it knows the
///    server holds the secret too (an impostor server learns nothing it can
///    replay, and cannot pass itself off as the real one).
///
/// The secret never crosses the wire and a recorded answer is useless for
/// other nonces. `binding` is the transport's channel binding
/// ([`Credentials::channel_binding`]): over TLS the RFC 9266 exporter, which
/// differs on the two legs of a man in the middle, so an answer relayed
/// from the client's TLS session to the server's does not verify.
///
/// **Over plain TCP there is no channel binding**: a man in the middle can
/// relay the exchange as it happens and then hold an authenticated
/// connection (mutual proof does not stop a live relay), and it can read
/// and change everything afterwards. So by default this authenticator only
/// accepts plain TCP from loopback addresses (and Unix sockets, TLS, SSH);
/// [`allow_plain_tcp_from_network`](Self::allow_plain_tcp_from_network)
/// lifts that, knowingly. On networks, run it inside TLS (`AllOf` with
/// [`TlsClientCert`], or TLS without client certificates) or use TLS or SSH
/// authentication instead.
///
/// Python rpyc has no such authenticator; Rust clients use
/// `ClientBuilder::challenge_response` (or [`challenge_response_client`]).
#[derive(Clone, Default)]
pub struct ChallengeResponse {
    secrets: BTreeMap<String, Vec<u8>>,
    groups: BTreeMap<String, Vec<String>>,
    plain_tcp_from_network: bool,
}

impl fmt::Debug for ChallengeResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets.
        f.debug_struct("ChallengeResponse")
            .field("identities", &self.secrets.keys().collect::<Vec<_>>())
            .field("plain_tcp_from_network", &self.plain_tcp_from_network)
            .finish()
    }
}

impl ChallengeResponse {
    /// No identities yet.
    pub fn new() -> ChallengeResponse {
        ChallengeResponse::default()
    }

    /// Adds an identity and its secret.
    pub fn identity(mut self, name: &str, secret: impl AsRef<[u8]>) -> Self {
        self.secrets.insert(name.to_string(), secret.as_ref().to_vec());
        self
    }

    /// Puts an identity in groups.
    pub fn group(mut self, identity: &str, groups: &[&str]) -> Self {
        self.groups.insert(identity.into(), groups.iter().map(|g| g.to_string()).collect());
        self
    }

    /// Also accepts plain TCP connections from non-loopback addresses.
    /// Those have no channel binding: anyone on the path can relay a live
    /// exchange and take over the authenticated connection, and read or
    /// change all traffic. Only for networks where nobody can be in the
    /// middle.
    pub fn allow_plain_tcp_from_network(mut self, allow: bool) -> Self {
        self.plain_tcp_from_network = allow;
        self
    }
}

/// True for a plain TCP peer that is not on this host.
fn plain_tcp_from_network(creds: &Credentials) -> bool {
    creds.transport == TransportKind::Tcp
        && creds.channel_binding.is_none()
        && !matches!(&creds.peer, crate::identity::PeerAddr::Ip(a) if a.ip().to_canonical().is_loopback())
}

impl Authenticator for ChallengeResponse {
    fn authenticate(&self, mut stream: BoxStream, mut creds: Credentials) -> BoxFuture<AuthResult> {
        let me = self.clone();
        Box::pin(async move {
            if !me.plain_tcp_from_network && plain_tcp_from_network(&creds) {
                return Err(AuthError::refused(format!(
                    "challenge-response over plain TCP from {} refused: without TLS the exchange can be relayed \
                     by anyone on the path; connect over TLS, from this host, or allow it with \
                     ChallengeResponse::allow_plain_tcp_from_network",
                    creds.peer
                )));
            }
            let binding = creds.channel_binding.as_ref().map(|b| b.0.clone()).unwrap_or_default();
            let rng = SystemRandom::new();
            let mut nonce = [0u8; CR_NONCE_LEN];
            rng.fill(&mut nonce).map_err(|_| AuthError::refused("no system randomness"))?;
            let mut hello = CR_MAGIC.to_vec();
            hello.extend_from_slice(&nonce);
            stream.write_all(&hello).await.map_err(|e| AuthError::refused(format!("sending challenge: {e}")))?;
            stream.flush().await.map_err(|e| AuthError::refused(format!("sending challenge: {e}")))?;
            let read_err = |e: std::io::Error| AuthError::refused(format!("reading response: {e}"));
            let mut len = [0u8; 1];
            stream.read_exact(&mut len).await.map_err(read_err)?;
            let mut id = vec![0u8; usize::from(len[0])];
            stream.read_exact(&mut id).await.map_err(read_err)?;
            let mut client_nonce = [0u8; CR_NONCE_LEN];
            stream.read_exact(&mut client_nonce).await.map_err(read_err)?;
            let mut tag = [0u8; CR_TAG_LEN];
            stream.read_exact(&mut tag).await.map_err(read_err)?;
            let identity = String::from_utf8(id).map_err(|_| AuthError::refused("identity is not UTF-8"))?;
            // Compute a tag even for unknown identities so timing does not
            // reveal which identities exist.
            let secret = me.secrets.get(&identity).cloned();
            let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_deref().unwrap_or(b"\0unknown identity\0"));
            let msg = cr_message(Prover::Client, &nonce, &client_nonce, &binding, &identity);
            let ok = hmac::verify(&key, &msg, &tag).is_ok() && secret.is_some();
            if !ok {
                return Err(AuthError::refused(format!(
                    "challenge-response failed for identity {identity:?} (wrong secret, unknown identity, or an \
                     answer made for another connection)"
                )));
            }
            let proof = hmac::sign(&key, &cr_message(Prover::Server, &nonce, &client_nonce, &binding, &identity));
            let mut reply = CR_OK.to_vec();
            reply.extend_from_slice(proof.as_ref());
            stream.write_all(&reply).await.map_err(|e| AuthError::refused(format!("confirming: {e}")))?;
            creds.identity = Some(identity);
            creds.attributes.insert("auth".into(), "challenge-response".into());
            if !binding.is_empty() {
                creds.attributes.insert("channel_binding".into(), "tls-exporter".into());
            }
            add_groups(&mut creds, &me.groups);
            Ok((stream, creds))
        })
    }
}

/// The client side of [`ChallengeResponse`] on a stream without channel
/// binding (plain TCP, Unix sockets): answers the server's challenge and
/// checks the server's proof, before the RPyC connection starts. Over TLS
/// use [`challenge_response_client_bound`] with the connection's
/// [`Credentials::channel_binding`] (`ClientBuilder` does).
pub async fn challenge_response_client(
    stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    identity: &str,
    secret: &[u8],
) -> crate::Result<()> {
    challenge_response_client_bound(stream, identity, secret, None).await
}

/// The client side of [`ChallengeResponse`], bound to the transport's
/// channel binding (`None` on transports without one). Fails if the server
/// refuses us, or if the server cannot prove it knows the secret too.
pub async fn challenge_response_client_bound(
    stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    identity: &str,
    secret: &[u8],
    binding: Option<&crate::identity::ChannelBinding>,
) -> crate::Result<()> {
    let fail = |what: &str, e: std::io::Error| crate::Error::Auth(format!("challenge-response: {what}: {e}"));
    let mut hello = [0u8; CR_MAGIC.len() + CR_NONCE_LEN];
    stream.read_exact(&mut hello).await.map_err(|e| fail("reading the challenge", e))?;
    if &hello[..CR_MAGIC.len()] != CR_MAGIC {
        return Err(crate::Error::Auth(
            "challenge-response: the server did not send a version-2 challenge (is it configured for \
             challenge-response, and running the same rpyc version?)"
                .into(),
        ));
    }
    if identity.len() > 255 {
        return Err(crate::Error::Auth("challenge-response: identity longer than 255 bytes".into()));
    }
    let server_nonce = &hello[CR_MAGIC.len()..];
    let mut client_nonce = [0u8; CR_NONCE_LEN];
    SystemRandom::new()
        .fill(&mut client_nonce)
        .map_err(|_| crate::Error::Auth("challenge-response: the system random generator failed".into()))?;
    let binding = binding.map(|b| b.0.as_slice()).unwrap_or_default();
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, &cr_message(Prover::Client, server_nonce, &client_nonce, binding, identity));
    let mut answer = vec![identity.len() as u8];
    answer.extend_from_slice(identity.as_bytes());
    answer.extend_from_slice(&client_nonce);
    answer.extend_from_slice(tag.as_ref());
    stream.write_all(&answer).await.map_err(|e| fail("sending the response", e))?;
    stream.flush().await.map_err(|e| fail("sending the response", e))?;
    let mut ok = [0u8; CR_OK.len() + CR_TAG_LEN];
    match stream.read_exact(&mut ok).await {
        Ok(_) if &ok[..CR_OK.len()] == CR_OK => {}
        _ => {
            return Err(crate::Error::Auth(format!(
                "challenge-response: the server refused identity {identity:?} (wrong secret or unknown identity)"
            )))
        }
    }
    let expected = cr_message(Prover::Server, server_nonce, &client_nonce, binding, identity);
    hmac::verify(&key, &expected, &ok[CR_OK.len()..]).map_err(|_| {
        crate::Error::Auth(
            "challenge-response: the server did not prove it knows the secret: it is not the server you share \
             it with, or someone is relaying the exchange; do not use this connection"
                .into(),
        )
    })
}

/// Tries authenticators in order; the first that accepts wins. One that
/// *passes* (hands the stream back untouched, e.g. a TLS check on a plain
/// TCP connection) lets the next one try; one that refuses ends the attempt.
pub struct FirstMatch(pub Vec<Arc<dyn Authenticator>>);

impl Authenticator for FirstMatch {
    fn authenticate(&self, stream: BoxStream, creds: Credentials) -> BoxFuture<AuthResult> {
        let list = self.0.clone();
        Box::pin(async move {
            let mut current = (stream, creds);
            let mut reasons = Vec::new();
            for a in list {
                match a.authenticate(current.0, current.1).await {
                    Ok(ok) => return Ok(ok),
                    Err(AuthError { reason, untouched: Some(back) }) => {
                        reasons.push(reason);
                        current = *back;
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(AuthError::refused(if reasons.is_empty() {
                "no authenticator configured".to_string()
            } else {
                format!("no authenticator accepted the connection ({})", reasons.join("; "))
            }))
        })
    }
}

/// Runs every authenticator in turn, each on the stream and credentials the
/// previous one returned; all must accept (e.g. a TLS certificate *and* a
/// challenge–response inside it).
pub struct AllOf(pub Vec<Arc<dyn Authenticator>>);

impl Authenticator for AllOf {
    fn authenticate(&self, stream: BoxStream, creds: Credentials) -> BoxFuture<AuthResult> {
        let list = self.0.clone();
        Box::pin(async move {
            let mut cur = (stream, creds);
            for a in list {
                cur = a.authenticate(cur.0, cur.1).await.map_err(|e| AuthError::refused(e.reason))?;
            }
            Ok(cur)
        })
    }
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;
    use crate::identity::CertificateInfo;

    fn cert(cns: &[&str], dns: &[&str], uris: &[&str]) -> CertificateInfo {
        CertificateInfo {
            common_name: match cns {
                [one] => Some(one.to_string()),
                _ => None,
            },
            common_name_count: cns.len(),
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            uris: uris.iter().map(|s| s.to_string()).collect(),
            ..CertificateInfo::default()
        }
    }

    #[test]
    fn identity_comes_from_exactly_one_value() {
        let spiffe = "spiffe://example.org/ns/prod/sa/billing";
        let c = cert(&["alice"], &["billing.prod.svc"], &[spiffe]);
        assert_eq!(certificate_identity(&c, IdentityFrom::Cn).as_deref(), Ok("alice"));
        assert_eq!(certificate_identity(&c, IdentityFrom::UriSan).as_deref(), Ok(spiffe));
        assert_eq!(certificate_identity(&c, IdentityFrom::DnsSan).as_deref(), Ok("billing.prod.svc"));
        for (c, from, want) in [
            (cert(&["a", "b"], &[], &[]), IdentityFrom::Cn, "2 common names"),
            (cert(&[], &[], &[]), IdentityFrom::Cn, "no common name"),
            (cert(&["alice"], &[], &[]), IdentityFrom::UriSan, "no URI subject alternative name"),
            (cert(&["alice"], &["x"], &[]), IdentityFrom::UriSan, "exactly one URI SAN"),
            (cert(&[], &[], &[spiffe, "spiffe://example.org/admin"]), IdentityFrom::UriSan, "2 URI subject alternative names (spiffe://example.org/ns/prod/sa/billing, spiffe://example.org/admin), so its identity is ambiguous"),
            (cert(&[], &["a", "b", "c"], &[]), IdentityFrom::DnsSan, "3 DNS subject alternative names"),
            (cert(&["alice"], &[], &[spiffe]), IdentityFrom::DnsSan, "no DNS subject alternative name"),
        ] {
            let e = certificate_identity(&c, from).err().unwrap_or_default();
            assert!(e.contains(want), "{from}: {e}");
        }
        for s in ["cn", "uri-san", "dns-san"] {
            assert_eq!(s.parse::<IdentityFrom>().map(|f| f.to_string()).as_deref(), Ok(s));
        }
        assert!("email".parse::<IdentityFrom>().unwrap_err().contains("cn, uri-san or dns-san"));
    }
}
