//! SSH tunnels: RPyC over `direct-tcpip` channels of an in-process SSH
//! session (russh), and an embedded SSH endpoint in front of a Rust server.
//!
//! # Why
//!
//! Python rpyc tunnels with `rpyc.utils.factory.ssh_connect(remote_machine,
//! remote_port)`, which makes plumbum's `SshMachine.tunnel` shell out to
//! `ssh -L localport:localhost:remote_port` and then connects to the local
//! port. That needs the `ssh` binary, leaves a port on the local machine that
//! every local user can connect to for the lifetime of the tunnel, and turns
//! every failure (unknown host, refused key, nothing listening) into "could
//! not connect to localhost:localport". Here the client runs the SSH session
//! itself and hands each `direct-tcpip` channel straight to the RPyC engine:
//! no subprocess, no local port, and errors that say what happened.
//!
//! # Client
//!
//! [`SshSession::connect`] logs in (key file, possibly passphrase-protected;
//! ssh-agent; password), verifying the host key against `known_hosts`
//! strictly unless [`HostKeyPolicy::AcceptNew`] is asked for.
//! [`SshSession::open_stream`] opens a channel to `host:port` *as seen from
//! the SSH server* (`localhost` there is the SSH server itself). A session is
//! cheap to clone and carries any number of RPyC connections:
//!
//! ```no_run
//! use rpyc::transport::ssh::{SshConfig, SshSession};
//! # async fn demo() -> rpyc::Result<()> {
//! let ssh = SshSession::connect(
//!     &SshConfig::new("gateway.example.com", 22, "bob").with_key_file("/home/bob/.ssh/id_ed25519"),
//! )
//! .await?;
//! let stream = ssh.open_stream("localhost", 18861).await?;
//! let conn = rpyc::ClientBuilder::new().start(stream, ssh.credentials());
//! let sum: i64 = conn.root().await?.call_method("add", (5, 10)).await?;
//! # let _ = sum; Ok(()) }
//! ```
//!
//! For one connection, [`Endpoint::Ssh`](super::Endpoint::Ssh) (or an
//! `ssh://user@host:port/target_host:target_port` address) opens a session
//! that lives as long as the stream.
//!
//! # Server
//!
//! [`SshAcceptor`] (or [`Listener::ssh`](super::Listener::ssh)) is an SSH
//! server that accepts only public-key logins listed in an OpenSSH
//! `authorized_keys` file and serves every `direct-tcpip` channel as an RPyC
//! connection of the server it is attached to, whatever `host:port` the
//! client asked for — it forwards nothing anywhere. The credentials carry the
//! SSH user (as `identity` and `ssh_user`) and the key's `SHA256:` fingerprint;
//! a key logs in only under the identity it is bound to (per-user files with
//! `%u`, or `identity="NAME"` on each line of a shared file — see
//! [`SshServerConfig::authorized_keys`]).
//! A stock `ssh -N -L 18861:localhost:18861 -p 2222 user@server` works with it.
//!
//! # Commands
//!
//! [`SshSession::exec_stream`] runs a command on the SSH server and returns
//! its stdin/stdout as a stream (an SSH exec channel); [`crate::deploy`]
//! runs a Python RPyC server that way, with no port at all.
//!
//! Only ed25519 and ECDSA keys are supported: russh is built on `ring`
//! without its (non-constant-time) RSA implementation.

mod exec;
mod known_hosts;
mod server;

pub use exec::{ExecHandle, ExecOutput, ExecStream, RemoteStderr};
pub use server::{SshAcceptor, SshServerConfig};

use super::BoxStream;
use crate::error::{Error, Result};
use crate::identity::{Credentials, PeerAddr, TransportKind};
use known_hosts::HostKeyStatus;
use russh::client;
use russh::keys::agent::client::{AgentClient, AgentStream};
use russh::keys::agent::AgentIdentity;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelOpenFailure, ChannelStream, MethodKind, MethodSet};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What to do when the server's host key is not in `known_hosts`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostKeyPolicy {
    /// Refuse the connection (OpenSSH `StrictHostKeyChecking yes`). The
    /// default: a key nobody has checked proves nothing.
    #[default]
    Strict,
    /// Trust on first use: record the key in `known_hosts` and connect
    /// (OpenSSH `StrictHostKeyChecking accept-new`). A key that differs from
    /// a recorded one is still refused.
    AcceptNew,
}

/// One way to log in.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SshAuth {
    /// A private key file (OpenSSH, PKCS#8 or PuTTY format; ed25519 or
    /// ECDSA), with its passphrase if it is encrypted. Like OpenSSH, a key
    /// file other users can read is refused.
    KeyFile {
        /// Path of the private key.
        path: PathBuf,
        /// Passphrase of an encrypted key.
        passphrase: Option<String>,
    },
    /// Every key the ssh-agent at `SSH_AUTH_SOCK` holds.
    Agent,
    /// Every key the ssh-agent listening on this Unix socket holds.
    AgentSocket(PathBuf),
    /// A password (only if the server allows password logins).
    Password(String),
}

impl fmt::Debug for SshAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SshAuth::KeyFile { path, passphrase } => f
                .debug_struct("KeyFile")
                .field("path", path)
                .field("passphrase", &passphrase.as_ref().map(|_| "<redacted>"))
                .finish(),
            SshAuth::Agent => f.write_str("Agent"),
            SshAuth::AgentSocket(path) => f.debug_tuple("AgentSocket").field(path).finish(),
            SshAuth::Password(_) => f.write_str("Password(<redacted>)"),
        }
    }
}

/// How to reach and log in to an SSH server.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SshConfig {
    /// Host name or address of the SSH server; also the name looked up in
    /// `known_hosts`.
    pub host: String,
    /// Port of the SSH server. Default: 22.
    pub port: u16,
    /// The login user.
    pub user: String,
    /// Login methods, tried in order until the server accepts one. Default:
    /// empty, meaning what a bare `ssh` does — the ssh-agent if
    /// `SSH_AUTH_SOCK` is set, then `~/.ssh/id_ed25519` and `~/.ssh/id_ecdsa`
    /// if they exist and are not passphrase-protected.
    pub auth: Vec<SshAuth>,
    /// The `known_hosts` file. Default: `None`, meaning `~/.ssh/known_hosts`.
    pub known_hosts: Option<PathBuf>,
    /// Unknown host keys. Default: [`HostKeyPolicy::Strict`].
    pub host_key_policy: HostKeyPolicy,
    /// Deadline for TCP connect, key exchange and login together, and for
    /// each channel open. Default: 20 s.
    pub connect_timeout: Duration,
    /// Send a keepalive after this long without hearing from the server.
    /// Default: 15 s — a dead server or network is noticed in about a
    /// minute instead of at the next TCP timeout.
    pub keepalive_interval: Option<Duration>,
    /// Unanswered keepalives before the session is declared dead. Default: 3.
    pub keepalive_max: usize,
}

impl SshConfig {
    /// `user@host:port` with the defaults above.
    pub fn new(host: impl Into<String>, port: u16, user: impl Into<String>) -> SshConfig {
        SshConfig {
            host: host.into(),
            port,
            user: user.into(),
            auth: Vec::new(),
            known_hosts: None,
            host_key_policy: HostKeyPolicy::Strict,
            connect_timeout: Duration::from_secs(20),
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 3,
        }
    }

    /// Adds an unencrypted private key file.
    pub fn with_key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth.push(SshAuth::KeyFile { path: path.into(), passphrase: None });
        self
    }

    /// Adds a passphrase-protected private key file.
    pub fn with_encrypted_key_file(mut self, path: impl Into<PathBuf>, passphrase: impl Into<String>) -> Self {
        self.auth.push(SshAuth::KeyFile { path: path.into(), passphrase: Some(passphrase.into()) });
        self
    }

    /// Adds the ssh-agent (`SSH_AUTH_SOCK`).
    pub fn with_agent(mut self) -> Self {
        self.auth.push(SshAuth::Agent);
        self
    }

    /// Adds a password.
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.auth.push(SshAuth::Password(password.into()));
        self
    }

    /// Uses this `known_hosts` file.
    pub fn with_known_hosts(mut self, path: impl Into<PathBuf>) -> Self {
        self.known_hosts = Some(path.into());
        self
    }

    /// Trust on first use (see [`HostKeyPolicy::AcceptNew`]).
    pub fn trust_on_first_use(mut self) -> Self {
        self.host_key_policy = HostKeyPolicy::AcceptNew;
        self
    }

    /// `host:port` for messages (`[v6]:port` for IPv6 literals).
    fn server(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Parses `ssh://[user@]host[:port]/target_host:target_port` into a client
/// configuration with default login methods and the RPyC server's address
/// as seen from the SSH server. The user defaults to `$USER`.
pub fn parse_url(url: &str) -> Result<(SshConfig, String)> {
    let bad = |why: &str| {
        Error::Ssh(format!("bad ssh address '{url}': {why} (expected ssh://user@host:port/target_host:target_port)"))
    };
    let rest = url.strip_prefix("ssh://").ok_or_else(|| bad("it does not start with ssh://"))?;
    let (authority, target) = rest.split_once('/').ok_or_else(|| bad("no /target_host:target_port"))?;
    let target = target.trim_end_matches('/');
    split_host_port(target).map_err(|_| bad("the target has no port"))?;
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (u.to_string(), h),
        None => (
            std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .map_err(|_| bad("no user, and $USER is not set"))?,
            authority,
        ),
    };
    let (host, port) = match split_host_port(hostport) {
        Ok(hp) => hp,
        Err(_) if !hostport.is_empty() => (hostport.trim_start_matches('[').trim_end_matches(']').to_string(), 22),
        Err(_) => return Err(bad("no SSH host")),
    };
    Ok((SshConfig::new(host, port, user), target.to_string()))
}

/// Splits `host:port` / `[v6]:port`.
fn split_host_port(s: &str) -> Result<(String, u16)> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| Error::Ssh(format!("'{s}' has no port")))?;
    let port = port.parse::<u16>().map_err(|_| Error::Ssh(format!("'{s}' has no valid port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(Error::Ssh(format!("'{s}' has no host")));
    }
    Ok((host.to_string(), port))
}

/// Opens a new session and one stream through it to `target` (`host:port`
/// as seen from the SSH server). The session closes with the stream. This is
/// what [`connect_endpoint`](super::connect_endpoint) does for
/// [`Endpoint::Ssh`](super::Endpoint::Ssh).
pub async fn connect(config: &SshConfig, target: &str) -> Result<(BoxStream, Credentials)> {
    let (host, port) = split_host_port(target)?;
    let session = SshSession::connect(config).await?;
    let stream = session.open_stream(&host, port).await?;
    let mut creds = session.credentials();
    creds.attributes.insert("ssh_target".into(), target.to_string());
    Ok((stream, creds))
}

/// Why the session ended, written by the russh handler when it does.
#[derive(Default)]
struct SessionState {
    closed: Mutex<Option<String>>,
}

impl SessionState {
    fn close_reason(&self) -> Option<String> {
        self.closed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn set_closed(&self, reason: String) {
        let mut slot = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
    }
}

/// A logged-in SSH client session. Cheap to clone; every clone and every
/// stream opened through it share one SSH connection, which closes when the
/// last of them is dropped (or at [`SshSession::close`]).
#[derive(Clone)]
pub struct SshSession {
    inner: Arc<SessionInner>,
}

struct SessionInner {
    handle: client::Handle<ClientHandler>,
    state: Arc<SessionState>,
    server: String,
    user: String,
    peer: Option<SocketAddr>,
    host_key: String,
    open_timeout: Duration,
}

impl fmt::Debug for SshSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshSession")
            .field("server", &self.inner.server)
            .field("user", &self.inner.user)
            .field("host_key", &self.inner.host_key)
            .field("closed", &self.inner.state.close_reason())
            .finish()
    }
}

impl SshSession {
    /// Connects, verifies the host key and logs in.
    pub async fn connect(config: &SshConfig) -> Result<SshSession> {
        let server = config.server();
        match tokio::time::timeout(config.connect_timeout, connect_session(config, &server)).await {
            Ok(r) => r,
            Err(_) => Err(Error::ConnectTimeout(format!(
                "ssh: connecting to {server} timed out after {:?} (TCP connect, key exchange and login together)",
                config.connect_timeout
            ))),
        }
    }

    /// Opens a `direct-tcpip` channel to `host:port` as seen from the SSH
    /// server and returns it as a byte stream for an RPyC connection.
    pub async fn open_stream(&self, host: &str, port: u16) -> Result<BoxStream> {
        let target = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let inner = &self.inner;
        if let Some(reason) = inner.state.close_reason() {
            return Err(self.closed_error(&reason));
        }
        let open = inner.handle.channel_open_direct_tcpip(host, u32::from(port), "127.0.0.1", 0);
        let channel = match tokio::time::timeout(inner.open_timeout, open).await {
            Ok(Ok(ch)) => ch,
            Ok(Err(russh::Error::ChannelOpenFailure(reason))) => {
                return Err(Error::Ssh(format!(
                    "ssh: channel to {target} refused by the server: {}",
                    describe_open_failure(&reason, &inner.server, &target, &inner.user)
                )))
            }
            Ok(Err(russh::Error::SendError | russh::Error::Disconnect | russh::Error::RecvError)) => {
                let reason = inner.state.close_reason().unwrap_or_else(|| "the connection ended".into());
                return Err(self.closed_error(&reason));
            }
            Ok(Err(e)) => {
                return Err(Error::Ssh(format!("ssh: cannot open a channel to {target} through {}: {e}", inner.server)))
            }
            Err(_) => {
                return Err(Error::Ssh(format!(
                    "ssh: channel to {target} through {} not opened within {:?} (the SSH server may still be \
                     trying to connect to {target})",
                    inner.server, inner.open_timeout
                )))
            }
        };
        tracing::debug!(server = %inner.server, %target, "ssh channel open");
        Ok(Box::new(SshStream { inner: channel.into_stream(), session: self.clone() }))
    }

    /// What the client knows about its peer: transport SSH, the SSH user it
    /// logged in as (`ssh_user`), the server's address, and the server's
    /// *host* key fingerprint (`ssh_key_fingerprint`). `identity` is `None`:
    /// the SSH server authenticated us, not an RPyC identity.
    pub fn credentials(&self) -> Credentials {
        let peer = self.inner.peer.map(PeerAddr::Ip).unwrap_or_default();
        let mut creds = Credentials::anonymous(TransportKind::Ssh, peer);
        creds.ssh_user = Some(self.inner.user.clone());
        creds.ssh_key_fingerprint = Some(self.inner.host_key.clone());
        creds
    }

    /// `host:port` of the SSH server.
    pub fn server(&self) -> &str {
        &self.inner.server
    }

    /// The user logged in as.
    pub fn user(&self) -> &str {
        &self.inner.user
    }

    /// The server's host key, `SHA256:…` as OpenSSH prints it.
    pub fn host_key_fingerprint(&self) -> &str {
        &self.inner.host_key
    }

    /// True once the SSH connection has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.handle.is_closed() || self.inner.state.close_reason().is_some()
    }

    /// Why the SSH connection ended, if it has.
    pub fn close_reason(&self) -> Option<String> {
        self.inner.state.close_reason()
    }

    /// Disconnects; every stream opened through this session ends.
    pub async fn close(&self) {
        self.inner.state.set_closed("closed by the client".into());
        let bye = self.inner.handle.disconnect(russh::Disconnect::ByApplication, "closed by the client", "en");
        // Bounded: a wedged session must not wedge the caller.
        let _ = tokio::time::timeout(Duration::from_secs(5), bye).await;
    }

    fn closed_error(&self, reason: &str) -> Error {
        Error::Ssh(format!("ssh: the session to {} is closed ({reason}); connect a new SshSession", self.inner.server))
    }
}

async fn connect_session(config: &SshConfig, server: &str) -> Result<SshSession> {
    let known_hosts = match &config.known_hosts {
        Some(p) => p.clone(),
        None => home_dir()
            .map(|h| h.join(".ssh/known_hosts"))
            .ok_or_else(|| Error::Ssh("ssh: HOME is not set: give SshConfig::known_hosts".into()))?,
    };
    // Key files are read before connecting: a wrong path or passphrase fails
    // without a network round trip.
    let (methods, notes) = resolve_auth(config)?;
    if methods.is_empty() {
        return Err(Error::Ssh(format!(
            "ssh: no way to log in to {server} as {}: {}; add a key file, the agent or a password to SshConfig::auth",
            config.user,
            notes.join("; ")
        )));
    }
    let host = config.host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((host, config.port))
        .await
        .map_err(|e| Error::Connect(format!("ssh: cannot connect to {server}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let peer = tcp.peer_addr().ok();

    // Ask for the host key algorithms known_hosts has for this host first,
    // so a recorded key can be checked (OpenSSH does the same).
    let mut preferred = russh::Preferred::default();
    let recorded = known_hosts::recorded_algorithms(&known_hosts, host, config.port);
    if !recorded.is_empty() {
        let mut order: Vec<_> = preferred.key.iter().filter(|a| recorded.contains(a)).cloned().collect();
        order.extend(preferred.key.iter().filter(|a| !recorded.contains(a)).cloned());
        preferred.key = order.into();
    }
    let rconfig = client::Config {
        keepalive_interval: config.keepalive_interval,
        keepalive_max: config.keepalive_max,
        nodelay: true,
        preferred,
        ..client::Config::default()
    };
    let state = Arc::new(SessionState::default());
    let host_key = Arc::new(Mutex::new(String::new()));
    let handler = ClientHandler {
        host: host.to_string(),
        port: config.port,
        server: server.to_string(),
        known_hosts: known_hosts.clone(),
        policy: config.host_key_policy,
        state: state.clone(),
        host_key: host_key.clone(),
        keepalive: (config.keepalive_interval, config.keepalive_max),
    };
    let mut handle = client::connect_stream(Arc::new(rconfig), tcp, handler).await.map_err(|e| match e {
        ClientError::HostKey(msg) => Error::Ssh(msg),
        ClientError::Ssh(e) => Error::Ssh(format!("ssh: handshake with {server} failed: {}", describe_ssh_error(&e))),
    })?;
    login(&mut handle, config, server, methods, notes).await?;
    let host_key = host_key.lock().unwrap_or_else(|p| p.into_inner()).clone();
    tracing::debug!(%server, user = %config.user, %host_key, "ssh session ready");
    Ok(SshSession {
        inner: Arc::new(SessionInner {
            handle,
            state,
            server: server.to_string(),
            user: config.user.clone(),
            peer,
            host_key,
            open_timeout: config.connect_timeout,
        }),
    })
}

/// A login method with its material loaded.
enum Method {
    Key {
        label: String,
        key: Arc<PrivateKey>,
    },
    /// The agent at this socket, or at `SSH_AUTH_SOCK`.
    Agent(Option<PathBuf>),
    Password(String),
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

/// Loads explicit methods (failing on any unusable one), or the defaults
/// (skipping what is absent, with a note for the final error).
fn resolve_auth(config: &SshConfig) -> Result<(Vec<Method>, Vec<String>)> {
    let mut methods = Vec::new();
    let mut notes = Vec::new();
    if !config.auth.is_empty() {
        for auth in &config.auth {
            methods.push(match auth {
                SshAuth::KeyFile { path, passphrase } => Method::Key {
                    label: path.display().to_string(),
                    key: Arc::new(load_private_key(path, passphrase.as_deref())?),
                },
                SshAuth::Agent => Method::Agent(None),
                SshAuth::AgentSocket(path) => Method::Agent(Some(path.clone())),
                SshAuth::Password(p) => Method::Password(p.clone()),
            });
        }
        return Ok((methods, notes));
    }
    if std::env::var_os("SSH_AUTH_SOCK").is_some() {
        methods.push(Method::Agent(None));
    } else {
        notes.push("SSH_AUTH_SOCK is not set (no ssh-agent)".into());
    }
    let Some(home) = home_dir() else {
        notes.push("HOME is not set (no ~/.ssh keys)".into());
        return Ok((methods, notes));
    };
    for name in ["id_ed25519", "id_ecdsa"] {
        let path = home.join(".ssh").join(name);
        if !path.exists() {
            notes.push(format!("{} does not exist", path.display()));
            continue;
        }
        match load_private_key(&path, None) {
            Ok(key) => methods.push(Method::Key { label: path.display().to_string(), key: Arc::new(key) }),
            Err(e) => notes.push(format!("skipped {}: {e}", path.display())),
        }
    }
    Ok((methods, notes))
}

/// Reads a private key file, with OpenSSH's refusal of keys others can read.
pub(crate) fn load_private_key(path: &Path, passphrase: Option<&str>) -> Result<PrivateKey> {
    let p = path.display();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(path) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                return Err(Error::Ssh(format!(
                    "ssh: key file {p} can be read by other users (mode {:o}); like OpenSSH, refusing to use it: \
                     chmod 600 {p}",
                    m.permissions().mode() & 0o777
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::Ssh(format!("ssh: key file {p} does not exist")))
            }
            Err(e) => return Err(Error::Ssh(format!("ssh: cannot read key file {p}: {e}"))),
        }
    }
    russh::keys::load_secret_key(path, passphrase).map_err(|e| {
        use russh::keys::Error as K;
        Error::Ssh(match e {
            K::KeyIsEncrypted => format!(
                "ssh: key file {p} is passphrase-protected: give its passphrase \
                 (SshAuth::KeyFile {{ passphrase: Some(..) }} / SshConfig::with_encrypted_key_file)"
            ),
            K::SshKey(_) | K::Pad(_) | K::Unpad(_) if passphrase.is_some() => {
                format!("ssh: cannot decrypt key file {p}: wrong passphrase ({e})")
            }
            K::UnsupportedKeyType { key_type_string, .. } => format!(
                "ssh: key file {p} holds a {key_type_string} key, which this build does not support \
                 (russh on ring, without RSA): use an ed25519 or ECDSA key"
            ),
            K::IO(io) if io.kind() == io::ErrorKind::NotFound => format!("ssh: key file {p} does not exist"),
            other => format!("ssh: cannot read key file {p}: {other}"),
        })
    })
}

type Agent = AgentClient<Box<dyn AgentStream + Send + Unpin + 'static>>;

#[cfg(unix)]
async fn connect_agent(socket: Option<&Path>) -> std::result::Result<Agent, String> {
    let connected = match socket {
        Some(path) => AgentClient::connect_uds(path).await,
        None => AgentClient::connect_env().await,
    };
    connected.map(AgentClient::dynamic).map_err(|e| e.to_string())
}

#[cfg(not(unix))]
async fn connect_agent(_socket: Option<&Path>) -> std::result::Result<Agent, String> {
    Err("ssh-agent support needs Unix sockets".into())
}

fn describe_methods(methods: &MethodSet) -> String {
    let names: Vec<&str> = methods.iter().map(<&str>::from).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

async fn login(
    handle: &mut client::Handle<ClientHandler>,
    config: &SshConfig,
    server: &str,
    methods: Vec<Method>,
    notes: Vec<String>,
) -> Result<()> {
    let user = config.user.as_str();
    let gone = |e: &dyn fmt::Display| Error::Ssh(format!("ssh: {server} closed the connection during login: {e}"));
    // (what was tried, why it was refused)
    let mut refused: Vec<(String, String)> = Vec::new();
    let mut server_accepts: Option<MethodSet> = None;
    for method in methods {
        match method {
            Method::Key { label, key } => {
                let fingerprint = key.public_key().fingerprint(HashAlg::Sha256);
                let hash = if key.algorithm().is_rsa() {
                    handle.best_supported_rsa_hash().await.ok().flatten().flatten()
                } else {
                    None
                };
                match handle.authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, hash)).await {
                    Ok(client::AuthResult::Success) => return Ok(()),
                    Ok(client::AuthResult::Failure { remaining_methods, .. }) => {
                        refused.push((
                            format!("key {label} ({fingerprint})"),
                            "the key is not in the server's authorized_keys for that user, or the user does not \
                             exist"
                                .into(),
                        ));
                        server_accepts = Some(remaining_methods);
                    }
                    Err(e) => return Err(gone(&e)),
                }
            }
            Method::Agent(socket) => {
                let mut agent = match connect_agent(socket.as_deref()).await {
                    Ok(a) => a,
                    Err(e) => {
                        refused.push(("the ssh-agent".into(), format!("cannot reach it: {e}")));
                        continue;
                    }
                };
                let identities = match agent.request_identities().await {
                    Ok(ids) => ids,
                    Err(e) => {
                        refused.push(("the ssh-agent".into(), format!("cannot list its keys: {e}")));
                        continue;
                    }
                };
                let keys: Vec<PublicKey> = identities
                    .into_iter()
                    .filter_map(|id| match id {
                        AgentIdentity::PublicKey { key, .. } => Some(key),
                        AgentIdentity::Certificate { .. } => None,
                    })
                    .collect();
                if keys.is_empty() {
                    refused.push(("the ssh-agent".into(), "it holds no keys".into()));
                    continue;
                }
                let count = keys.len();
                for key in keys {
                    let hash = if key.algorithm().is_rsa() {
                        handle.best_supported_rsa_hash().await.ok().flatten().flatten()
                    } else {
                        None
                    };
                    match handle.authenticate_publickey_with(user, key, hash, &mut agent).await {
                        Ok(client::AuthResult::Success) => return Ok(()),
                        Ok(client::AuthResult::Failure { remaining_methods, .. }) => {
                            server_accepts = Some(remaining_methods)
                        }
                        Err(e) => tracing::debug!(error = %e, "ssh-agent could not sign"),
                    }
                }
                refused.push((
                    format!("the ssh-agent's {count} key(s)"),
                    "none is in the server's authorized_keys for that user".into(),
                ));
            }
            Method::Password(password) => {
                if server_accepts.as_ref().is_some_and(|m| !m.contains(&MethodKind::Password)) {
                    refused.push(("a password".into(), "the server does not accept password logins".into()));
                    continue;
                }
                match handle.authenticate_password(user, password).await {
                    Ok(client::AuthResult::Success) => return Ok(()),
                    Ok(client::AuthResult::Failure { remaining_methods, .. }) => {
                        let why = if remaining_methods.contains(&MethodKind::Password) {
                            "wrong password"
                        } else {
                            "the server does not accept password logins"
                        };
                        refused.push(("the password".into(), why.into()));
                        server_accepts = Some(remaining_methods);
                    }
                    Err(e) => return Err(gone(&e)),
                }
            }
        }
    }
    let accepts =
        server_accepts.map(|m| format!(" (the server accepts: {})", describe_methods(&m))).unwrap_or_default();
    let skipped = if notes.is_empty() { String::new() } else { format!("; also {}", notes.join("; ")) };
    Err(Error::Auth(match refused.as_slice() {
        [(what, why)] => {
            format!("ssh: {server} refused {what} for user {user}: {why}{accepts}{skipped}")
        }
        _ => {
            let each: Vec<String> = refused.iter().map(|(what, why)| format!("{what}: {why}")).collect();
            format!("ssh: {server} refused every login for user {user}: {}{accepts}{skipped}", each.join("; "))
        }
    }))
}

fn describe_open_failure(reason: &ChannelOpenFailure, server: &str, target: &str, user: &str) -> String {
    match reason {
        ChannelOpenFailure::ConnectFailed => format!(
            "connection refused (the SSH server {server} could not connect to {target}; is an RPyC server \
             listening there, as seen from the SSH server?)"
        ),
        ChannelOpenFailure::AdministrativelyProhibited => format!(
            "forwarding is not allowed for {user} (AllowTcpForwarding/PermitOpen in sshd_config, or \
             no-port-forwarding/restrict in authorized_keys)"
        ),
        ChannelOpenFailure::ResourceShortage => "the server is out of resources (too many channels)".into(),
        ChannelOpenFailure::UnknownChannelType => "the server does not support direct-tcpip channels".into(),
        ChannelOpenFailure::Other { code, reason } => format!("code {code}: {reason}"),
    }
}

fn describe_ssh_error(e: &russh::Error) -> String {
    match e {
        russh::Error::Disconnect | russh::Error::HUP => {
            "the server closed the connection (is it an SSH server? is it refusing new connections?)".into()
        }
        russh::Error::IO(io) => format!("connection lost: {io}"),
        other => other.to_string(),
    }
}

/// The client side of russh's callbacks: host key checking and recording
/// why the session ended.
struct ClientHandler {
    host: String,
    port: u16,
    server: String,
    known_hosts: PathBuf,
    policy: HostKeyPolicy,
    state: Arc<SessionState>,
    host_key: Arc<Mutex<String>>,
    keepalive: (Option<Duration>, usize),
}

/// The handler's error: russh's, or a host key refusal with its full text.
#[derive(Debug)]
enum ClientError {
    Ssh(russh::Error),
    HostKey(String),
}

impl From<russh::Error> for ClientError {
    fn from(e: russh::Error) -> Self {
        ClientError::Ssh(e)
    }
}

impl ClientHandler {
    fn verify(&self, key: &PublicKey) -> std::result::Result<(), String> {
        let kh = self.known_hosts.display();
        let presented = known_hosts::describe_key(key);
        let token = known_hosts::host_token(&self.host, self.port);
        let status = known_hosts::check(&self.known_hosts, &self.host, self.port, key)
            .map_err(|e| format!("ssh: cannot read known_hosts file {kh}: {e}"))?;
        match status {
            HostKeyStatus::Known => Ok(()),
            HostKeyStatus::Unknown if self.policy == HostKeyPolicy::AcceptNew => {
                known_hosts::append(&self.known_hosts, &self.host, self.port, key)
                    .map_err(|e| format!("ssh: cannot record the host key of {} in {kh}: {e}", self.server))?;
                tracing::warn!(server = %self.server, key = %presented, file = %kh, "trust on first use: recorded a new host key");
                Ok(())
            }
            HostKeyStatus::Unknown => Err(format!(
                "ssh: the host key of {server} is unknown: {presented}, and {kh} has no entry for {token}. \
                 Check the fingerprint with the server's administrator (on the server: ssh-keygen -lf \
                 <host key>.pub), then add it (e.g. ssh-keyscan -p {port} {host} >> {kh}), or connect once \
                 with HostKeyPolicy::AcceptNew (trust on first use)",
                server = self.server,
                port = self.port,
                host = self.host,
            )),
            HostKeyStatus::Changed(recorded) => {
                let lines: Vec<String> = recorded.iter().map(|(line, k)| format!("line {line}: {k}")).collect();
                Err(format!(
                    "ssh: HOST KEY MISMATCH for {server}: it presented {presented}, but {kh} records {}. Someone \
                     may be intercepting the connection (man in the middle), or the host key was replaced. If \
                     the change is expected, remove the old entry (ssh-keygen -R '{token}' -f {kh}) and \
                     connect again",
                    lines.join(", "),
                    server = self.server,
                ))
            }
            HostKeyStatus::Revoked(line) => Err(format!(
                "ssh: the host key of {} ({presented}) is marked @revoked in {kh} line {line}; refusing to connect",
                self.server
            )),
        }
    }
}

impl client::Handler for ClientHandler {
    type Error = ClientError;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> std::result::Result<bool, ClientError> {
        let key = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => {
                return Err(ClientError::HostKey(format!(
                    "ssh: {} presented a host certificate; only plain host keys from known_hosts are supported",
                    self.server
                )))
            }
        };
        self.verify(key).map_err(ClientError::HostKey)?;
        *self.host_key.lock().unwrap_or_else(|p| p.into_inner()) = key.fingerprint(HashAlg::Sha256).to_string();
        Ok(true)
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<ClientError>,
    ) -> std::result::Result<(), ClientError> {
        match reason {
            client::DisconnectReason::ReceivedDisconnect(info) => {
                let why = if info.message.is_empty() { format!("{:?}", info.reason_code) } else { info.message };
                self.state.set_closed(format!("the server disconnected: {why}"));
                Ok(())
            }
            client::DisconnectReason::Error(e) => {
                let why = match &e {
                    ClientError::Ssh(russh::Error::KeepaliveTimeout) => format!(
                        "no reply to {} keepalives sent {:?} apart: the server or the network is gone",
                        self.keepalive.1,
                        self.keepalive.0.unwrap_or_default()
                    ),
                    ClientError::Ssh(russh::Error::Disconnect | russh::Error::HUP) => {
                        "the server closed the connection".into()
                    }
                    ClientError::Ssh(e) => describe_ssh_error(e),
                    ClientError::HostKey(m) => m.clone(),
                };
                tracing::debug!(server = %self.server, reason = %why, "ssh session ended");
                self.state.set_closed(why);
                Err(e)
            }
        }
    }
}

/// A client channel as a byte stream. Holds the session so it outlives
/// every stream, and turns the end of the session into an error that says
/// why instead of a silent end of file.
struct SshStream {
    inner: ChannelStream<client::Msg>,
    session: SshSession,
}

impl AsyncRead for SshStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                match this.session.inner.state.close_reason() {
                    Some(reason) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("ssh session to {} dropped: {reason}", this.session.inner.server),
                    ))),
                    None => Poll::Ready(Ok(())),
                }
            }
            other => other,
        }
    }
}

impl AsyncWrite for SshStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let (c, t) = parse_url("ssh://bob@gw.example:2222/localhost:18861").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.user.as_str(), t.as_str()),
            ("gw.example", 2222, "bob", "localhost:18861")
        );
        let (c, t) = parse_url("ssh://bob@[::1]/[::1]:18861").unwrap();
        assert_eq!((c.host.as_str(), c.port, t.as_str()), ("::1", 22, "[::1]:18861"));
        assert_eq!(c.server(), "[::1]:22");
        assert!(parse_url("ssh://bob@gw").is_err());
        assert!(parse_url("ssh://bob@gw/localhost").is_err());
    }

    #[test]
    fn secrets_are_redacted() {
        let c = SshConfig::new("h", 22, "u").with_password("hunter2").with_encrypted_key_file("/k", "s3cret");
        let text = format!("{c:?}");
        assert!(!text.contains("hunter2") && !text.contains("s3cret"), "{text}");
    }
}
