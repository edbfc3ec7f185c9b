//! The embedded SSH endpoint: a russh server whose only service is RPyC.
//!
//! Every `direct-tcpip` channel a logged-in client opens becomes one RPyC
//! connection of the [`Server`](crate::Server) the listener is attached to.
//! The `host:port` the client asks for is recorded in the credentials
//! (attribute `ssh_target`) but not used: nothing is forwarded anywhere, so
//! `ssh -L 18861:localhost:18861` and `ssh -L 18861:anything:1` reach the
//! same service. Shells, commands, subsystems and remote forwarding are
//! refused.
//!
//! Hostile peers are bounded the way sshd bounds them: sessions in total
//! (`max_sessions`) and not yet logged in (`max_startups`), a login deadline
//! (`login_grace_time`), login attempts per session (`max_auth_attempts`,
//! then the session is dropped), channels per session, keepalives and an
//! inactivity timeout. Only public-key logins exist.

use super::super::{Accept, BoxFut, Incoming};
use crate::error::{Error, Result};
use crate::identity::{Credentials, PeerAddr, TransportKind};
use russh::keys::ssh_key::authorized_keys::{ConfigOpts, Entry};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use russh::server::{Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelOpenFailure, ChannelStream, MethodKind, MethodSet};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

/// Most bytes of an authorized_keys file we read.
const MAX_AUTHORIZED_KEYS_BYTES: u64 = 1 << 20;
/// Accepted channels waiting for the RPyC server to pick them up.
const QUEUE: usize = 64;

/// Settings of the embedded SSH endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SshServerConfig {
    /// The host key (OpenSSH private key file, unencrypted, not readable by
    /// others). If the file does not exist it is created on first start: a
    /// new ed25519 key, mode 0600, with `<file>.pub` beside it.
    pub host_key: PathBuf,
    /// The OpenSSH `authorized_keys` file of the keys that may log in.
    ///
    /// A `%u` in the path is replaced by the login user name (one file per
    /// user, like sshd's `AuthorizedKeysFile`), which binds user names to
    /// keys. With a single file every listed key may log in under *any* user
    /// name, so the name (the connection's `identity`) is only a claim; the
    /// key fingerprint (`ssh_key_fingerprint`) is what was proven.
    ///
    /// The file is read at each login, so keys can be added or removed
    /// without a restart. Lines with options that would restrict the key in
    /// ways this endpoint cannot enforce (`from=`, `permitopen=`,
    /// `expiry-time=`, `cert-authority`…) are skipped, as are keys marked
    /// `no-port-forwarding` or `restrict`: channels are all this endpoint
    /// offers.
    pub authorized_keys: PathBuf,
    /// Most SSH sessions at once. Default: 256.
    pub max_sessions: usize,
    /// Most sessions that have not logged in yet (sshd's `MaxStartups`):
    /// unauthenticated peers cannot take every session slot. Default: 32.
    pub max_startups: usize,
    /// Most open channels (RPyC connections) per session. Default: 64.
    pub max_channels_per_session: usize,
    /// Login attempts per session before it is dropped (sshd's
    /// `MaxAuthTries`). Default: 6.
    pub max_auth_attempts: usize,
    /// Time from TCP accept to a successful login (sshd's
    /// `LoginGraceTime`). Default: 30 s.
    pub login_grace_time: Duration,
    /// Send a keepalive after this long without hearing from the client.
    /// Default: 30 s.
    pub keepalive_interval: Option<Duration>,
    /// Unanswered keepalives before the session is dropped. Default: 3.
    pub keepalive_max: usize,
    /// Drop a session that sends nothing, not even keepalive replies, for
    /// this long. Default: 10 minutes.
    pub inactivity_timeout: Option<Duration>,
}

impl SshServerConfig {
    /// A configuration with the defaults above.
    pub fn new(host_key: impl Into<PathBuf>, authorized_keys: impl Into<PathBuf>) -> SshServerConfig {
        SshServerConfig {
            host_key: host_key.into(),
            authorized_keys: authorized_keys.into(),
            max_sessions: 256,
            max_startups: 32,
            max_channels_per_session: 64,
            max_auth_attempts: 6,
            login_grace_time: Duration::from_secs(30),
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 3,
            inactivity_timeout: Some(Duration::from_secs(600)),
        }
    }
}

/// An embedded SSH server whose `direct-tcpip` channels are RPyC streams.
///
/// Only public-key logins listed in the `authorized_keys` file are accepted.
/// Every channel a logged-in client opens is served as a connection of the
/// [`Server`](crate::Server) this acceptor is attached to, *whatever
/// `host:port` the client asked for*: nothing is forwarded anywhere, so
/// `ssh -N -L 18861:localhost:18861` and `ssh -N -L 18861:anything:1` reach
/// the same service. The requested target is kept in the credentials'
/// `ssh_target` attribute; `identity` and `ssh_user` are the SSH user,
/// `ssh_key_fingerprint` the key's `SHA256:…` fingerprint. Shells, commands,
/// subsystems and remote forwarding are refused.
///
/// Limits (see [`SshServerConfig`]) bound sessions, unauthenticated
/// sessions, login time and attempts, and channels per session. Dropping the
/// acceptor stops listening and disconnects every session.
pub struct SshAcceptor {
    rx: tokio::sync::Mutex<mpsc::Receiver<Incoming>>,
    addr: SocketAddr,
    host_key: PublicKey,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    russh: Arc<russh::server::Config>,
    keys: PathBuf,
    tx: mpsc::Sender<Incoming>,
    sessions: Arc<Semaphore>,
    startups: Arc<Semaphore>,
    max_channels: usize,
    grace: Duration,
}

impl SshAcceptor {
    /// Loads (or creates) the host key, checks the authorized_keys file and
    /// binds `addr` (`"127.0.0.1:0"` picks a free port).
    pub async fn bind(addr: &str, config: SshServerConfig) -> Result<SshAcceptor> {
        let host_key = load_or_create_host_key(&config.host_key)?;
        let public = host_key.public_key().clone();
        let keys = config.authorized_keys.clone();
        if !keys.to_string_lossy().contains("%u") {
            match std::fs::metadata(&keys) {
                Ok(m) if m.is_file() => {}
                Ok(_) => {
                    return Err(Error::Transport(format!("ssh: authorized_keys {} is not a file", keys.display())))
                }
                Err(e) => {
                    return Err(Error::Transport(format!(
                        "ssh: cannot read authorized_keys {}: {e} (create it with the public keys that may log in, \
                         e.g. cat ~/.ssh/id_ed25519.pub >> {})",
                        keys.display(),
                        keys.display()
                    )))
                }
            }
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Transport(format!("ssh: cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr()?;
        let russh = russh::server::Config {
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            auth_rejection_time: Duration::from_secs(1),
            // OpenSSH clients start with a "none" probe; don't make every
            // login wait for the rejection delay.
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![host_key],
            max_auth_attempts: config.max_auth_attempts,
            inactivity_timeout: config.inactivity_timeout,
            keepalive_interval: config.keepalive_interval,
            keepalive_max: config.keepalive_max,
            nodelay: true,
            ..russh::server::Config::default()
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            russh: Arc::new(russh),
            keys,
            tx,
            sessions: Arc::new(Semaphore::new(config.max_sessions)),
            startups: Arc::new(Semaphore::new(config.max_startups)),
            max_channels: config.max_channels_per_session,
            grace: config.login_grace_time,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared, shutdown_rx));
        tracing::info!(addr = %local, host_key = %public.fingerprint(HashAlg::Sha256), "ssh endpoint listening");
        Ok(SshAcceptor { rx: tokio::sync::Mutex::new(rx), addr: local, host_key: public, shutdown, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The host key's fingerprint, `SHA256:…` as OpenSSH prints it.
    pub fn host_key_fingerprint(&self) -> String {
        self.host_key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// The host public key in OpenSSH format (`ssh-ed25519 AAAA…`).
    pub fn host_public_key(&self) -> String {
        let mut key = self.host_key.clone();
        key.set_comment("");
        key.to_openssh().map(|s| s.trim().to_string()).unwrap_or_default()
    }

    /// A `known_hosts` line for this endpoint reached as `host` (e.g.
    /// `[127.0.0.1]:2222 ssh-ed25519 AAAA…`).
    pub fn known_hosts_line(&self, host: &str) -> String {
        format!("{} {}", super::known_hosts::host_token(host, self.addr.port()), self.host_public_key())
    }
}

impl Drop for SshAcceptor {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
    }
}

impl Accept for SshAcceptor {
    fn accept(&self) -> BoxFut<'_, io::Result<Incoming>> {
        Box::pin(async move {
            let mut rx = self.rx.lock().await;
            rx.recv().await.ok_or_else(|| io::Error::other("the ssh endpoint has stopped"))
        })
    }
    fn describe(&self) -> String {
        format!("ssh://{}", self.addr)
    }
    fn local_addr(&self) -> Option<SocketAddr> {
        Some(self.addr)
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (sock, peer) = tokio::select! {
            _ = until_true(&mut shutdown) => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "ssh: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(session) = shared.sessions.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "ssh: session refused: max_sessions reached");
            continue;
        };
        let Ok(startup) = shared.startups.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "ssh: session refused: too many sessions not logged in yet (max_startups)");
            continue;
        };
        tokio::spawn(run_session(sock, peer, shared.clone(), session, startup, shutdown.clone()));
    }
}

async fn run_session(
    sock: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    _session: OwnedSemaphorePermit,
    startup: OwnedSemaphorePermit,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = sock.set_nodelay(true);
    let (authed_tx, mut authed) = watch::channel(false);
    let handler = ServerHandler {
        shared: shared.clone(),
        peer,
        login: None,
        channels: Arc::new(Semaphore::new(shared.max_channels)),
        authed: authed_tx,
    };
    let deadline = tokio::time::Instant::now() + shared.grace;
    let running =
        match tokio::time::timeout_at(deadline, russh::server::run_stream(shared.russh.clone(), sock, handler)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "ssh: handshake failed");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, "ssh: no SSH greeting within the login grace time");
                return;
            }
        };
    let handle = running.handle();
    tokio::pin!(running);
    let mut startup = Some(startup);
    let reason = tokio::select! {
        r = &mut running => {
            log_end(peer, r);
            return;
        }
        _ = until_true(&mut authed) => {
            startup.take();
            None
        }
        _ = tokio::time::sleep_until(deadline) => Some("login grace time exceeded"),
        _ = until_true(&mut shutdown) => Some("server shutting down"),
    };
    let reason = match reason {
        Some(r) => r,
        None => tokio::select! {
            r = &mut running => {
                log_end(peer, r);
                return;
            }
            _ = until_true(&mut shutdown) => "server shutting down",
        },
    };
    tracing::info!(%peer, reason, "ssh: disconnecting");
    let _ = handle.disconnect(russh::Disconnect::ByApplication, reason.into(), "en".into()).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut running).await;
}

/// Waits until a watch flag is true or its sender is gone (the guard
/// `wait_for` returns is not `Send`, so it must not live in a `select!`).
async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

fn log_end(peer: SocketAddr, r: std::result::Result<(), russh::Error>) {
    match r {
        Ok(()) => tracing::debug!(%peer, "ssh: session ended"),
        Err(e) => tracing::debug!(%peer, error = %e, "ssh: session ended"),
    }
}

/// One session's russh callbacks.
struct ServerHandler {
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// (user, key fingerprint) once logged in.
    login: Option<(String, String)>,
    channels: Arc<Semaphore>,
    authed: watch::Sender<bool>,
}

impl ServerHandler {
    async fn key_allowed(&self, user: &str, key: &PublicKey) -> bool {
        let Some(path) = authorized_keys_path(&self.shared.keys, user) else {
            tracing::info!(peer = %self.peer, user, "ssh: refused login: user name not allowed in an authorized_keys path");
            return false;
        };
        match read_authorized_keys(&path).await {
            Ok(entries) => entries.iter().any(|k| k.key_data() == key.key_data()),
            Err(e) => {
                tracing::info!(peer = %self.peer, user, file = %path.display(), error = %e, "ssh: refused login: cannot read authorized_keys");
                false
            }
        }
    }
}

impl russh::server::Handler for ServerHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> std::result::Result<Auth, Self::Error> {
        if self.key_allowed(user, offer.public_key).await {
            Ok(Auth::Accept)
        } else {
            tracing::info!(
                peer = %self.peer, user, key = %offer.public_key.fingerprint(HashAlg::Sha256),
                "ssh: refused key: not in authorized_keys"
            );
            Ok(Auth::reject())
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> std::result::Result<Auth, Self::Error> {
        let fingerprint = key.public_key.fingerprint(HashAlg::Sha256).to_string();
        if self.key_allowed(user, key.public_key).await {
            tracing::info!(peer = %self.peer, user, key = %fingerprint, "ssh: accepted publickey");
            self.login = Some((user.to_string(), fingerprint));
            Ok(Auth::Accept)
        } else {
            tracing::info!(peer = %self.peer, user, key = %fingerprint, "ssh: refused key: not in authorized_keys");
            Ok(Auth::reject())
        }
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> std::result::Result<(), Self::Error> {
        let _ = self.authed.send(true);
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> std::result::Result<(), Self::Error> {
        tracing::debug!(peer = %self.peer, "ssh: refused a session channel (no shells or commands here; use ssh -N -L)");
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> std::result::Result<(), Self::Error> {
        let Some((user, fingerprint)) = self.login.clone() else {
            reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        };
        let target = format!("{host_to_connect}:{port_to_connect}");
        let Ok(permit) = self.channels.clone().try_acquire_owned() else {
            tracing::warn!(peer = %self.peer, %user, limit = self.shared.max_channels, "ssh: channel refused: too many channels in this session");
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        let Ok(slot) = self.shared.tx.try_reserve() else {
            tracing::warn!(peer = %self.peer, %user, "ssh: channel refused: the RPyC server is not accepting");
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        reply.accept().await;
        tracing::debug!(peer = %self.peer, %user, %target, "ssh: channel accepted");
        let mut creds = Credentials::anonymous(TransportKind::Ssh, PeerAddr::Ip(self.peer));
        creds.identity = Some(user.clone());
        creds.ssh_user = Some(user);
        creds.ssh_key_fingerprint = Some(fingerprint);
        creds.attributes.insert("ssh_target".into(), target);
        let stream = ServerStream { inner: channel.into_stream(), _permit: permit };
        slot.send(Incoming::ready(Box::new(stream), creds));
        Ok(())
    }
}

/// An accepted channel; holds its slot of the per-session channel limit.
struct ServerStream {
    inner: ChannelStream<Msg>,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for ServerStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerStream {
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

/// The authorized_keys path for `user`: `%u` replaced, with names that could
/// escape the directory refused.
fn authorized_keys_path(template: &Path, user: &str) -> Option<PathBuf> {
    let t = template.to_string_lossy();
    if !t.contains("%u") {
        return Some(template.to_path_buf());
    }
    let safe = !user.is_empty()
        && user.len() <= 64
        && !user.starts_with(['.', '-'])
        && user.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    safe.then(|| PathBuf::from(t.replace("%u", user)))
}

/// The usable keys of an authorized_keys file (see
/// [`SshServerConfig::authorized_keys`] for what is skipped).
async fn read_authorized_keys(path: &Path) -> io::Result<Vec<PublicKey>> {
    let owned = path.to_path_buf();
    let text = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut text = String::new();
        std::fs::File::open(&owned)?.take(MAX_AUTHORIZED_KEYS_BYTES + 1).read_to_string(&mut text)?;
        if text.len() as u64 > MAX_AUTHORIZED_KEYS_BYTES {
            return Err(io::Error::other(format!("larger than {MAX_AUTHORIZED_KEYS_BYTES} bytes")));
        }
        Ok(text)
    })
    .await
    .map_err(io::Error::other)??;
    let mut keys = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry = match line.parse::<Entry>() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(file = %path.display(), line = index + 1, error = %e, "ssh: authorized_keys line skipped: cannot parse");
                continue;
            }
        };
        match options_allow_forwarding(entry.config_opts()) {
            Ok(()) => keys.push(entry.public_key().clone()),
            Err(why) => {
                tracing::warn!(file = %path.display(), line = index + 1, why, "ssh: authorized_keys line skipped")
            }
        }
    }
    Ok(keys)
}

/// Fails closed: options that restrict a key in ways not enforced here make
/// the key unusable rather than unrestricted.
fn options_allow_forwarding(opts: &ConfigOpts) -> std::result::Result<(), String> {
    let mut restricted = false;
    let mut forwarding = None;
    for opt in opts.iter() {
        let name = opt.split_once('=').map_or(opt, |(n, _)| n).to_ascii_lowercase();
        match name.as_str() {
            // Irrelevant here: no shells, ptys, agents, X11 or remote forwards.
            "no-agent-forwarding"
            | "no-x11-forwarding"
            | "no-pty"
            | "no-user-rc"
            | "agent-forwarding"
            | "x11-forwarding"
            | "pty"
            | "user-rc"
            | "command"
            | "environment"
            | "permitlisten" => {}
            "restrict" => restricted = true,
            "no-port-forwarding" => forwarding = Some(false),
            "port-forwarding" => forwarding = Some(true),
            other => return Err(format!("option '{other}' is not supported by the embedded SSH endpoint")),
        }
    }
    if forwarding.unwrap_or(!restricted) {
        Ok(())
    } else {
        Err("the key may not forward ports (no-port-forwarding or restrict), which is all this endpoint offers".into())
    }
}

/// Loads the host key, or creates an ed25519 one (0600, plus `.pub`).
fn load_or_create_host_key(path: &Path) -> Result<PrivateKey> {
    let p = path.display();
    if path.exists() {
        return super::load_private_key(path, None).map_err(|e| match e {
            Error::Transport(msg) if msg.contains("passphrase-protected") => Error::Transport(format!(
                "ssh: host key {p} is passphrase-protected; the endpoint needs an unencrypted host key"
            )),
            Error::Transport(msg) => Error::Transport(msg.replacen("key file", "host key", 1)),
            other => other,
        });
    }
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| Error::Transport("ssh: the system random generator failed".into()))?;
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    seed.fill(0);
    key.set_comment("rpyc ssh endpoint host key");
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| Error::Transport(format!("ssh: cannot encode the new host key: {e}")))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(path).and_then(|mut f| f.write_all(pem.as_bytes()).and_then(|()| f.sync_all()));
    match written {
        Ok(()) => {}
        // Another process created it first: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return load_or_create_host_key(path),
        Err(e) => return Err(Error::Transport(format!("ssh: cannot create host key {p}: {e}"))),
    }
    if let Ok(public) = key.public_key().to_openssh() {
        let mut pub_path = path.as_os_str().to_owned();
        pub_path.push(".pub");
        if let Err(e) = std::fs::write(&pub_path, format!("{public}\n")) {
            tracing::warn!(file = ?pub_path, error = %e, "ssh: cannot write the host public key");
        }
    }
    tracing::info!(file = %p, fingerprint = %key.public_key().fingerprint(HashAlg::Sha256), "ssh: generated a new ed25519 host key");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(line: &str) -> std::result::Result<(), String> {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ c";
        let full = if line.is_empty() { key.to_string() } else { format!("{line} {key}") };
        options_allow_forwarding(full.parse::<Entry>().unwrap().config_opts())
    }

    #[test]
    fn authorized_keys_options_fail_closed() {
        assert!(opts("").is_ok());
        assert!(opts("no-pty,no-agent-forwarding").is_ok());
        assert!(opts("restrict,port-forwarding").is_ok());
        assert!(opts("restrict").is_err());
        assert!(opts("no-port-forwarding").is_err());
        assert!(opts("from=\"10.0.0.0/8\"").is_err());
        assert!(opts("permitopen=\"localhost:1\"").is_err());
    }

    #[test]
    fn per_user_paths() {
        let t = Path::new("/etc/rpyc/keys/%u");
        assert_eq!(authorized_keys_path(t, "alice"), Some(PathBuf::from("/etc/rpyc/keys/alice")));
        assert_eq!(authorized_keys_path(t, "../root"), None);
        assert_eq!(authorized_keys_path(t, ".."), None);
        assert_eq!(authorized_keys_path(t, "a/b"), None);
        assert_eq!(authorized_keys_path(Path::new("/k"), "../x"), Some(PathBuf::from("/k")));
    }

    #[test]
    fn host_key_created_once_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host_key");
        let a = load_or_create_host_key(&path).unwrap();
        let b = load_or_create_host_key(&path).unwrap();
        assert_eq!(a.public_key().key_data(), b.public_key().key_data());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(dir.path().join("host_key.pub").exists());
    }
}
