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
//! (`max_sessions`), not yet logged in (`max_startups`) and not yet logged
//! in per source address (`max_startups_per_source`, so one host's idle
//! sockets cannot lock everyone else out), one deadline for the whole
//! pre-authentication phase — banner, key exchange and login
//! (`login_grace_time`, 5 s like the server's `auth_timeout`) — login
//! attempts per session (`max_auth_attempts`, then the session is dropped),
//! channels per session, keepalives and an inactivity timeout. Only
//! public-key logins exist.
//!
//! The identity of a session comes from the key that logged in, never from
//! the user name alone: see [`SshServerConfig::authorized_keys`].

use super::super::{Accept, BoxFut, Incoming};
use crate::error::{Error, Result};
use crate::identity::{Credentials, PeerAddr, TransportKind};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use russh::server::{Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelOpenFailure, ChannelStream, MethodKind, MethodSet};
use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
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
    /// The OpenSSH `authorized_keys` file of the keys that may log in. The
    /// user name a client logs in with becomes the connection's `identity`,
    /// so every key must be bound to the one identity it may claim, in one
    /// of two ways:
    ///
    /// - **one file per user**: a `%u` in the path is replaced by the login
    ///   user name (`keys/%u`, like sshd's `AuthorizedKeysFile`); a key logs
    ///   in only as the user whose file lists it;
    /// - **one shared file, every key bound**: each key line starts with an
    ///   `identity="NAME"` option, and the key logs in only as user `NAME`:
    ///
    ///   ```text
    ///   identity="alice" ssh-ed25519 AAAAC3Nza... alice@laptop
    ///   identity="bob",no-pty ssh-ed25519 AAAAC3Nza... bob@desktop
    ///   ```
    ///
    /// A login whose user name is not the key's identity is refused. A
    /// shared file with a key line without `identity=`, or with one key
    /// bound to two identities, would let a key claim several identities:
    /// [`SshAcceptor::bind`] refuses to start with it, and lines like that
    /// added later are ignored. (In a per-user file `identity=` is optional
    /// and, if present, must name that user.)
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
    /// unauthenticated peers cannot take every session slot. Default: 64.
    pub max_startups: usize,
    /// Most sessions not logged in yet from one source address (one IPv4
    /// address, or one IPv6 /64), so idle sockets from one host cannot take
    /// every `max_startups` slot. More are closed at once. Default: 8.
    pub max_startups_per_source: usize,
    /// Most open channels (RPyC connections) per session. Default: 64.
    pub max_channels_per_session: usize,
    /// Login attempts per session before it is dropped (sshd's
    /// `MaxAuthTries`). Default: 6.
    pub max_auth_attempts: usize,
    /// Time from TCP accept to a successful login, covering the banner, the
    /// key exchange and authentication (sshd's `LoginGraceTime`). Default:
    /// 5 s, the same as [`ServerConfig::auth_timeout`](crate::ServerConfig).
    /// Each refused key costs the client about a second (the rejection
    /// delay), so a client whose agent offers many keys before the right one
    /// may need a longer grace time, or `IdentitiesOnly`.
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
            max_startups: 64,
            max_startups_per_source: 8,
            max_channels_per_session: 64,
            max_auth_attempts: 6,
            login_grace_time: Duration::from_secs(5),
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
/// `ssh_target` attribute; `identity` and `ssh_user` are the SSH user —
/// which is the identity the key is bound to (see
/// [`SshServerConfig::authorized_keys`]) — and `ssh_key_fingerprint` the
/// key's `SHA256:…` fingerprint. Shells, commands,
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
    /// Sessions not logged in yet, per source (see [`source_of`]).
    startups_by_source: std::sync::Mutex<HashMap<IpAddr, usize>>,
    max_startups_per_source: usize,
    max_channels: usize,
    grace: Duration,
}

impl SshAcceptor {
    /// Loads (or creates) the host key, checks the authorized_keys file and
    /// binds `addr` (`"127.0.0.1:0"` picks a free port).
    ///
    /// A shared authorized_keys file (no `%u`) must bind every key to one
    /// identity (`identity="NAME"`); one that does not is an error that
    /// says which line and how to fix it.
    pub async fn bind(addr: &str, config: SshServerConfig) -> Result<SshAcceptor> {
        let host_key = load_or_create_host_key(&config.host_key)?;
        let public = host_key.public_key().clone();
        let keys = config.authorized_keys.clone();
        if !keys.to_string_lossy().contains("%u") {
            match std::fs::metadata(&keys) {
                Ok(m) if m.is_file() => check_shared_authorized_keys(&keys)?,
                Ok(_) => return Err(Error::Ssh(format!("ssh: authorized_keys {} is not a file", keys.display()))),
                Err(e) => {
                    return Err(Error::Ssh(format!(
                        "ssh: cannot read authorized_keys {}: {e} (create it with the public keys that may log in, \
                         e.g. cat ~/.ssh/id_ed25519.pub >> {})",
                        keys.display(),
                        keys.display()
                    )))
                }
            }
        }
        let listener =
            TcpListener::bind(addr).await.map_err(|e| Error::Ssh(format!("ssh: cannot listen on {addr}: {e}")))?;
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
            startups_by_source: std::sync::Mutex::new(HashMap::new()),
            max_startups_per_source: config.max_startups_per_source,
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
        let Some(startup) = Startup::acquire(&shared, peer.ip()) else {
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
    startup: Startup,
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

/// A slot of `max_startups` and of the source's `max_startups_per_source`,
/// held from accept until login (or the end of the session).
struct Startup {
    shared: Arc<Shared>,
    source: IpAddr,
    _global: OwnedSemaphorePermit,
}

impl Startup {
    /// Takes the slots, or logs why not and returns `None` (the caller
    /// closes the socket).
    fn acquire(shared: &Arc<Shared>, ip: IpAddr) -> Option<Startup> {
        let source = source_of(ip);
        let mut by_source = shared.startups_by_source.lock().unwrap_or_else(|e| e.into_inner());
        let count = by_source.entry(source).or_insert(0);
        if *count >= shared.max_startups_per_source {
            drop(by_source);
            tracing::warn!(
                peer = %ip, limit = shared.max_startups_per_source,
                "ssh: session refused: too many sessions from this source not logged in yet (max_startups_per_source)"
            );
            return None;
        }
        let Ok(global) = shared.startups.clone().try_acquire_owned() else {
            drop(by_source);
            tracing::warn!(peer = %ip, "ssh: session refused: too many sessions not logged in yet (max_startups)");
            return None;
        };
        *count += 1;
        Some(Startup { shared: shared.clone(), source, _global: global })
    }
}

impl Drop for Startup {
    fn drop(&mut self) {
        let mut by_source = self.shared.startups_by_source.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = by_source.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                by_source.remove(&self.source);
            }
        }
    }
}

/// The unit a per-source limit counts: the IPv4 address, or the /64 of an
/// IPv6 one (a single host usually has a whole /64).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::V6(o.into())
        }
        v4 => v4,
    }
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
    /// True if `key` may log in as `user`: listed in the user's file
    /// (`%u`), or bound to `user` by `identity="user"` in the shared file.
    async fn key_allowed(&self, user: &str, key: &PublicKey) -> bool {
        let Some(path) = authorized_keys_path(&self.shared.keys, user) else {
            tracing::info!(peer = %self.peer, user, "ssh: refused login: user name not allowed in an authorized_keys path");
            return false;
        };
        let per_user = self.shared.keys != path;
        let entries = match read_authorized_keys(&path).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::info!(peer = %self.peer, user, file = %path.display(), error = %e, "ssh: refused login: cannot read authorized_keys");
                return false;
            }
        };
        let matching: Vec<&AuthorizedKey> = entries.iter().filter(|k| k.key.key_data() == key.key_data()).collect();
        match key_identity(&matching, per_user.then_some(user)) {
            Ok(Some(identity)) if identity == user => true,
            Ok(Some(identity)) => {
                tracing::info!(peer = %self.peer, user, identity, file = %path.display(), "ssh: refused login: the key is bound to another identity");
                false
            }
            Ok(None) => false,
            Err(why) => {
                tracing::warn!(peer = %self.peer, user, file = %path.display(), why, "ssh: refused login");
                false
            }
        }
    }
}

/// The identity the matching lines of one file give a key: `Ok(None)` if
/// none matched. In a per-user file (`per_user` = that user) the identity is
/// the user; a line binding the key to someone else is ignored. In a shared
/// file the lines must bind the key, and all to the same identity.
fn key_identity(matching: &[&AuthorizedKey], per_user: Option<&str>) -> std::result::Result<Option<String>, String> {
    if let Some(user) = per_user {
        let ok = matching.iter().any(|k| k.identity.as_deref().is_none_or(|id| id == user));
        return Ok(ok.then(|| user.to_string()));
    }
    let mut identity: Option<&str> = None;
    for k in matching {
        let Some(id) = k.identity.as_deref() else {
            return Err(format!(
                "line {} lists the key without identity=\"NAME\"; in a shared authorized_keys file every key \
                 must be bound to its identity",
                k.line
            ));
        };
        match identity {
            Some(other) if other != id => {
                return Err(format!("the key is bound to two identities ({other:?} and {id:?}, line {})", k.line))
            }
            _ => identity = Some(id),
        }
    }
    Ok(identity.map(str::to_string))
}

/// Refuses (at start) a shared authorized_keys file that would let a key
/// claim several identities: a line without `identity=`, or one key bound
/// to two identities. The error says which line and how to fix it.
fn check_shared_authorized_keys(path: &Path) -> Result<()> {
    let text = read_capped(path)
        .map_err(|e| Error::Ssh(format!("ssh: cannot read authorized_keys {}: {e}", path.display())))?;
    let entries = parse_authorized_keys(&text, path);
    let fix = format!(
        "bind each key to the one identity it may log in as by starting its line with identity=\"NAME\" \
         (e.g. identity=\"alice\" ssh-ed25519 AAAA...), or use one file per user with a %u path \
         (e.g. {}/%u)",
        path.parent().map(|d| d.join("keys")).unwrap_or_else(|| PathBuf::from("keys")).display()
    );
    let mut seen: HashMap<String, (&str, usize)> = HashMap::new();
    for k in &entries {
        let Some(id) = k.identity.as_deref() else {
            return Err(Error::Ssh(format!(
                "ssh: authorized_keys {} line {}: the key {} has no identity binding, so it could log in under \
                 any user name and be any identity; {fix}",
                path.display(),
                k.line,
                k.key.fingerprint(HashAlg::Sha256)
            )));
        };
        let data = k.key.fingerprint(HashAlg::Sha256).to_string();
        if let Some((other, line)) = seen.insert(data, (id, k.line)) {
            if other != id {
                return Err(Error::Ssh(format!(
                    "ssh: authorized_keys {} lines {line} and {}: the key {} is bound to two identities \
                     ({other:?} and {id:?}); a key must prove one identity: give each person their own key",
                    path.display(),
                    k.line,
                    k.key.fingerprint(HashAlg::Sha256)
                )));
            }
        }
    }
    Ok(())
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
    valid_name(user).then(|| PathBuf::from(t.replace("%u", user)))
}

/// One usable line of an authorized_keys file.
#[derive(Debug)]
struct AuthorizedKey {
    key: PublicKey,
    /// The `identity="NAME"` binding, if the line has one.
    identity: Option<String>,
    /// 1-based line number, for messages.
    line: usize,
}

/// Reads at most [`MAX_AUTHORIZED_KEYS_BYTES`] of a file as text.
fn read_capped(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?.take(MAX_AUTHORIZED_KEYS_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_AUTHORIZED_KEYS_BYTES {
        return Err(io::Error::other(format!("larger than {MAX_AUTHORIZED_KEYS_BYTES} bytes")));
    }
    Ok(text)
}

/// The usable keys of an authorized_keys file (see
/// [`SshServerConfig::authorized_keys`] for what is skipped).
async fn read_authorized_keys(path: &Path) -> io::Result<Vec<AuthorizedKey>> {
    let owned = path.to_path_buf();
    let text = tokio::task::spawn_blocking(move || read_capped(&owned)).await.map_err(io::Error::other)??;
    Ok(parse_authorized_keys(&text, path))
}

/// Parses the lines of an authorized_keys file; unusable lines are logged
/// and skipped.
fn parse_authorized_keys(text: &str, path: &Path) -> Vec<AuthorizedKey> {
    let mut keys = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = parse_line(line).and_then(|(opts, key)| {
            let identity = options_allow_forwarding(&opts)?;
            Ok(AuthorizedKey { key, identity, line: index + 1 })
        });
        match parsed {
            Ok(k) => keys.push(k),
            Err(why) => {
                tracing::warn!(file = %path.display(), line = index + 1, why, "ssh: authorized_keys line skipped")
            }
        }
    }
    keys
}

/// Splits a line into its options and key. The options, if any, come first,
/// comma-separated, up to the first blank outside double quotes.
fn parse_line(line: &str) -> std::result::Result<(Vec<String>, PublicKey), String> {
    if let Ok(key) = PublicKey::from_openssh(line) {
        return Ok((Vec::new(), key));
    }
    let mut quoted = false;
    let mut end = None;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let Some(end) = end else { return Err("cannot parse: not a public key line".into()) };
    let (opts, rest) = line.split_at(end);
    let key = PublicKey::from_openssh(rest.trim_start()).map_err(|e| format!("cannot parse the key: {e}"))?;
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in opts.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(opts[start..i].to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err("cannot parse: unbalanced quotes in the options".into());
    }
    out.push(opts[start..].to_string());
    Ok((out, key))
}

/// True for names usable as an identity and in a `%u` path.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
}

/// Checks a key line's options and returns its `identity=` binding. Fails
/// closed: options that restrict a key in ways not enforced here make the
/// key unusable rather than unrestricted.
fn options_allow_forwarding(opts: &[String]) -> std::result::Result<Option<String>, String> {
    let mut restricted = false;
    let mut forwarding = None;
    let mut identity = None;
    for opt in opts {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n.to_ascii_lowercase(), Some(v)),
            None => (opt.to_ascii_lowercase(), None),
        };
        match name.as_str() {
            "identity" => {
                let v = value.unwrap_or_default();
                let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
                if !valid_name(v) {
                    return Err(format!(
                        "identity={v:?} is not a valid name (1-64 letters, digits, '.', '_', '-', '@'; \
                         not starting with '.' or '-')"
                    ));
                }
                if identity.replace(v.to_string()).is_some() {
                    return Err("the line has two identity= options".into());
                }
            }
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
        Ok(identity)
    } else {
        Err("the key may not forward ports (no-port-forwarding or restrict), which is all this endpoint offers".into())
    }
}

/// Loads the host key, or creates an ed25519 one (0600, plus `.pub`).
fn load_or_create_host_key(path: &Path) -> Result<PrivateKey> {
    let p = path.display();
    if path.exists() {
        return super::load_private_key(path, None).map_err(|e| match e {
            Error::Ssh(msg) if msg.contains("passphrase-protected") => Error::Ssh(format!(
                "ssh: host key {p} is passphrase-protected; the endpoint needs an unencrypted host key"
            )),
            Error::Ssh(msg) => Error::Ssh(msg.replacen("key file", "host key", 1)),
            other => other,
        });
    }
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| Error::Ssh("ssh: the system random generator failed".into()))?;
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    seed.fill(0);
    key.set_comment("rpyc ssh endpoint host key");
    let pem =
        key.to_openssh(LineEnding::LF).map_err(|e| Error::Ssh(format!("ssh: cannot encode the new host key: {e}")))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(path).and_then(|mut f| f.write_all(pem.as_bytes()).and_then(|()| f.sync_all()));
    match written {
        Ok(()) => {}
        // Another process created it first: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return load_or_create_host_key(path),
        Err(e) => return Err(Error::Ssh(format!("ssh: cannot create host key {p}: {e}"))),
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

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ c";

    fn opts(line: &str) -> std::result::Result<Option<String>, String> {
        let full = if line.is_empty() { KEY.to_string() } else { format!("{line} {KEY}") };
        let (opts, _) = parse_line(&full)?;
        options_allow_forwarding(&opts)
    }

    #[test]
    fn identity_bindings() {
        assert_eq!(opts("identity=\"alice\"").unwrap().as_deref(), Some("alice"));
        assert_eq!(opts("no-pty,identity=\"bob\",port-forwarding").unwrap().as_deref(), Some("bob"));
        // Without a comment, too (two blanks only).
        let (o, _) = parse_line(
            "identity=\"alice\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ",
        )
        .unwrap();
        assert_eq!(options_allow_forwarding(&o).unwrap().as_deref(), Some("alice"));
        assert!(opts("identity=\"../root\"").is_err());
        assert!(opts("identity=\"\"").is_err());
        assert!(opts("identity=\"a\",identity=\"b\"").is_err());
        assert!(opts("identity=\"a b\"").is_err());

        let k = |identity: Option<&str>, line| AuthorizedKey {
            key: PublicKey::from_openssh(KEY).unwrap(),
            identity: identity.map(str::to_string),
            line,
        };
        let (alice, bob, unbound) = (k(Some("alice"), 1), k(Some("bob"), 2), k(None, 3));
        // Shared file: the binding decides; unbound or doubly bound keys fail.
        assert_eq!(key_identity(&[&alice], None).unwrap().as_deref(), Some("alice"));
        assert_eq!(key_identity(&[], None).unwrap(), None);
        assert!(key_identity(&[&unbound], None).unwrap_err().contains("identity="));
        assert!(key_identity(&[&alice, &bob], None).unwrap_err().contains("two identities"));
        // Per-user file: the user, unless the line names someone else.
        assert_eq!(key_identity(&[&unbound], Some("carol")).unwrap().as_deref(), Some("carol"));
        assert_eq!(key_identity(&[&alice], Some("alice")).unwrap().as_deref(), Some("alice"));
        assert_eq!(key_identity(&[&alice], Some("carol")).unwrap(), None);
    }

    #[test]
    fn shared_files_must_bind_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("authorized_keys");
        std::fs::write(&file, format!("# comment\nidentity=\"alice\" {KEY}\n")).unwrap();
        check_shared_authorized_keys(&file).unwrap();
        std::fs::write(&file, format!("identity=\"alice\" {KEY}\n{KEY}\n")).unwrap();
        let e = check_shared_authorized_keys(&file).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("no identity binding") && e.contains("%u"), "{e}");
        std::fs::write(&file, format!("identity=\"alice\" {KEY}\nidentity=\"bob\" {KEY}\n")).unwrap();
        let e = check_shared_authorized_keys(&file).unwrap_err().to_string();
        assert!(e.contains("two identities") && e.contains("lines 1 and 2"), "{e}");
    }

    #[test]
    fn sources_group_ipv6_by_64() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of("10.0.0.1".parse().unwrap()), source_of("10.0.0.2".parse().unwrap()));
        assert_eq!(source_of("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1".parse::<IpAddr>().unwrap());
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
