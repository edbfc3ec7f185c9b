//! Who the peer is, as plain data.
//!
//! An authenticator (see the `auth` layer) produces [`Credentials`] before the
//! first RPyC byte is read; the connection keeps them, services read them
//! (that is what `whoami()` returns) and policies are chosen by them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The kind of transport a connection arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum TransportKind {
    /// Plain TCP.
    #[default]
    Tcp,
    /// A Unix domain socket.
    Unix,
    /// TLS (over TCP).
    Tls,
    /// An SSH channel.
    Ssh,
    /// An in-memory or otherwise custom stream.
    Other,
}

impl TransportKind {
    /// Lower-case name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Unix => "unix",
            TransportKind::Tls => "tls",
            TransportKind::Ssh => "ssh",
            TransportKind::Other => "other",
        }
    }
}

/// Where the peer connected from.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum PeerAddr {
    /// An IP endpoint.
    Ip(SocketAddr),
    /// A Unix socket path (often unnamed for clients).
    Unix(Option<PathBuf>),
    /// Unknown (in-memory streams, tunnels).
    #[default]
    Unknown,
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddr::Ip(a) => write!(f, "{a}"),
            PeerAddr::Unix(Some(p)) => write!(f, "unix:{}", p.display()),
            PeerAddr::Unix(None) => write!(f, "unix:(unnamed)"),
            PeerAddr::Unknown => write!(f, "(unknown)"),
        }
    }
}

/// Details of a verified TLS client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CertificateInfo {
    /// The subject's common name: `None` if there is none, or if there are
    /// several (then the identity is ambiguous — Python's `dict(subject)`
    /// would take the last, x509 readers often the first — and
    /// [`common_name_count`](Self::common_name_count) says how many).
    pub common_name: Option<String>,
    /// How many common names the subject has (one is the only unambiguous
    /// count).
    pub common_name_count: usize,
    /// DNS names and IP addresses from the subjectAltName extension.
    pub subject_alt_names: Vec<String>,
    /// The DNS names alone from the subjectAltName extension.
    pub dns_names: Vec<String>,
    /// The URIs from the subjectAltName extension (a SPIFFE ID is one:
    /// `spiffe://trust-domain/path`).
    pub uris: Vec<String>,
    /// SHA-256 of the DER certificate, lower-case hex.
    pub sha256_fingerprint: String,
    /// The DER bytes of the certificate.
    pub der: Vec<u8>,
}

/// What an authenticator established about the peer.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Credentials {
    /// The authenticated identity (certificate CN, SSH user, shared-secret
    /// user…); `None` when the transport authenticates nobody.
    pub identity: Option<String>,
    /// The transport the connection arrived on.
    pub transport: TransportKind,
    /// The peer's address.
    pub peer: PeerAddr,
    /// The verified client certificate, on TLS.
    pub certificate: Option<CertificateInfo>,
    /// The SSH user name, on SSH.
    pub ssh_user: Option<String>,
    /// The SSH public key fingerprint (SHA256:…), on SSH.
    pub ssh_key_fingerprint: Option<String>,
    /// Groups the identity belongs to (policies are often chosen by group).
    pub groups: Vec<String>,
    /// Free-form attributes added by authenticators.
    pub attributes: BTreeMap<String, String>,
    /// A value both ends of this transport connection compute and nobody
    /// else can: on TLS, the RFC 9266 `tls-exporter` channel binding (32
    /// bytes of keying material exported under the label
    /// `EXPORTER-Channel-Binding`). Authenticators mix it into their proofs
    /// so an answer relayed from another connection does not verify. `None`
    /// on transports without one (plain TCP, Unix sockets).
    pub channel_binding: Option<ChannelBinding>,
}

/// A channel binding value (see [`Credentials::channel_binding`]). Not
/// secret on its own, but not printed either.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelBinding(pub Vec<u8>);

impl std::fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChannelBinding({} bytes)", self.0.len())
    }
}

impl Credentials {
    /// Unauthenticated credentials for a transport and peer.
    pub fn anonymous(transport: TransportKind, peer: PeerAddr) -> Credentials {
        Credentials { transport, peer, ..Credentials::default() }
    }

    /// The identity, or `"-"` for logs.
    pub fn display_identity(&self) -> &str {
        self.identity.as_deref().unwrap_or("-")
    }

    /// True if the identity belongs to `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}
