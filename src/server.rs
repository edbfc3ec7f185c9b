//! Layer 5: accepting connections (mirrors `rpyc/utils/server.py`'s
//! `ThreadedServer`, with tasks instead of threads).
//!
//! Each accepted stream is authenticated (with a deadline), given a policy
//! chosen from its credentials, and served as its own connection. Limits on
//! the total number of connections and on connections per peer address are
//! enforced at accept time; a refused peer is dropped before a byte is read.
//! Behind a proxy (a listener that reads PROXY protocol headers) the limit
//! per address counts the client's address, once the connection's own task
//! has read the header, before the TLS handshake.

use crate::auth::{AllowAll, Authenticator};
use crate::connection::{Connection, ConnectionConfig};
use crate::error::Result;
use crate::identity::{Credentials, PeerAddr};
use crate::policy::AccessPolicy;
use crate::service::Service;
use crate::transport::{Incoming, Listener};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// Chooses the access policy for a connection from its credentials.
pub type PolicyResolver = Arc<dyn Fn(&Credentials) -> AccessPolicy + Send + Sync>;

/// Server settings.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Per-connection settings. Default: [`ConnectionConfig::default`] with
    /// an idle timeout of one hour.
    pub connection: ConnectionConfig,
    /// Most connections served at once. Default: 10,000.
    pub max_connections: usize,
    /// Most connections from one IP address. Default: 1,000.
    pub max_connections_per_peer: usize,
    /// Deadline for the authenticator. Default: 5 s.
    pub auth_timeout: Duration,
    /// The authenticator. Default: [`AllowAll`].
    pub authenticator: Arc<dyn Authenticator>,
    /// Policy per connection. Default: RPyC's default policy for everyone.
    pub policy: PolicyResolver,
}

impl Default for ServerConfig {
    fn default() -> Self {
        // Servers drop connections that sent nothing for an hour; clients
        // (ConnectionConfig's own default) wait forever, as in Python.
        let connection =
            ConnectionConfig { idle_timeout: Some(Duration::from_secs(3600)), ..ConnectionConfig::default() };
        ServerConfig {
            connection,
            max_connections: 10_000,
            max_connections_per_peer: 1_000,
            auth_timeout: Duration::from_secs(5),
            authenticator: Arc::new(AllowAll),
            policy: Arc::new(|_| AccessPolicy::default()),
        }
    }
}

impl ServerConfig {
    /// Uses one policy for every connection.
    pub fn with_policy(mut self, policy: AccessPolicy) -> Self {
        self.policy = Arc::new(move |_| policy.clone());
        self
    }

    /// Chooses policies per identity from a [`PolicySet`](crate::policy::PolicySet).
    pub fn with_policy_set(mut self, set: crate::policy::PolicySet) -> Self {
        self.policy = Arc::new(move |creds| set.resolve(creds));
        self
    }

    /// Uses an authenticator.
    pub fn with_authenticator(mut self, auth: impl Authenticator) -> Self {
        self.authenticator = Arc::new(auth);
        self
    }
}

/// Stops a running server.
#[derive(Clone)]
pub struct ShutdownHandle(watch::Sender<bool>);

impl ShutdownHandle {
    /// Stops accepting, then closes every connection.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// A server: a service, its configuration and one or more listeners.
pub struct Server {
    service: Service,
    config: Arc<ServerConfig>,
    listeners: Vec<Listener>,
    shutdown: watch::Sender<bool>,
}

impl Server {
    /// A server for `service` with no listeners yet.
    pub fn new(service: Service, config: ServerConfig) -> Server {
        let (shutdown, _) = watch::channel(false);
        Server { service, config: Arc::new(config), listeners: Vec::new(), shutdown }
    }

    /// Adds a listener (a server may listen on several transports at once).
    pub fn listen(mut self, listener: Listener) -> Server {
        self.listeners.push(listener);
        self
    }

    /// Binds a TCP listener.
    pub async fn bind_tcp(self, addr: &str) -> Result<Server> {
        Ok(self.listen(Listener::tcp(addr).await?))
    }

    /// The TCP addresses bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(Listener::local_addr).collect()
    }

    /// A handle that stops the server.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Serves until shut down.
    pub async fn run(self) -> Result<()> {
        let state = Admission::new(self.config.max_connections);
        let mut tasks = Vec::new();
        for l in self.listeners {
            tracing::info!(service = self.service.name(), listener = %l.describe(), "listening");
            tasks.push(tokio::spawn(accept_loop(
                l,
                self.service.clone(),
                self.config.clone(),
                state.clone(),
                self.shutdown.subscribe(),
            )));
        }
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
        for t in tasks {
            let _ = t.await;
        }
        Ok(())
    }

    /// Serves until Ctrl-C (SIGINT) or the shutdown handle fires.
    pub async fn run_until_ctrl_c(self) -> Result<()> {
        let handle = self.shutdown_handle();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("interrupted: shutting down");
                handle.shutdown();
            }
        });
        self.run().await
    }

    /// Serves one stream that is already open — e.g. stdin/stdout
    /// ([`crate::transport::pipe::stdio`], `rpyc serve --stdio`) — with this
    /// server's authenticator, policy and connection limits, and returns
    /// when that connection ends (or the shutdown handle fires). Listeners
    /// are not used. Returns why the connection ended (or was refused).
    pub async fn serve_connection(self, stream: crate::transport::BoxStream, creds: Credentials) -> String {
        let incoming = Incoming::ready(stream, creds);
        serve_stream(incoming, None, self.service, self.config, self.shutdown.subscribe()).await
    }

    /// Starts serving in the background and returns the shutdown handle.
    pub fn spawn(self) -> ShutdownHandle {
        let h = self.shutdown_handle();
        tokio::spawn(self.run());
        h
    }
}

/// Connection limits at accept time, shared by [`Server`] and the gateway:
/// a total number of slots and a count per peer IP address.
pub(crate) struct Admission {
    slots: Arc<Semaphore>,
    per_peer: Mutex<HashMap<IpAddr, usize>>,
}

/// Why [`Admission::admit`] refused a connection.
pub(crate) enum Refused {
    /// Every slot is taken (`max_connections`).
    Full,
    /// This address holds `max_connections_per_peer` already.
    PerPeer,
}

/// An admitted connection's slot; dropping it frees the slot.
pub(crate) struct Admitted {
    _permit: tokio::sync::OwnedSemaphorePermit,
    state: Arc<Admission>,
    ip: Option<IpAddr>,
}

impl Admission {
    pub(crate) fn new(max_connections: usize) -> Arc<Admission> {
        Arc::new(Admission { slots: Arc::new(Semaphore::new(max_connections)), per_peer: Mutex::new(HashMap::new()) })
    }

    /// Takes a slot for a connection from `peer`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, peer: &PeerAddr, max_per_peer: usize) -> Result<Admitted, Refused> {
        let mut admitted = self.admit_slot()?;
        admitted.count_peer(peer, max_per_peer)?;
        Ok(admitted)
    }

    /// Takes a slot without counting an address yet (the address is the
    /// proxy's until the PROXY header is read): follow with
    /// [`Admitted::count_peer`].
    pub(crate) fn admit_slot(self: &Arc<Self>) -> Result<Admitted, Refused> {
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| Refused::Full)?;
        Ok(Admitted { _permit: permit, state: self.clone(), ip: None })
    }
}

impl Admitted {
    /// Counts this connection against `peer`'s address (once; IP peers only).
    pub(crate) fn count_peer(&mut self, peer: &PeerAddr, max_per_peer: usize) -> Result<(), Refused> {
        let PeerAddr::Ip(addr) = peer else {
            return Ok(());
        };
        if self.ip.is_some() {
            return Ok(());
        }
        let mut m = self.state.per_peer.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(addr.ip()).or_insert(0);
        if *n >= max_per_peer {
            if *n == 0 {
                m.remove(&addr.ip());
            }
            return Err(Refused::PerPeer);
        }
        *n += 1;
        self.ip = Some(addr.ip());
        Ok(())
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut m = self.state.per_peer.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = m.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
    }
}

async fn accept_loop(
    listener: Listener,
    service: Service,
    config: Arc<ServerConfig>,
    state: Arc<Admission>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = crate::connection::wait_true(&mut shutdown) => break,
            a = listener.accept() => a,
        };
        let incoming = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Behind a proxy the address is the proxy's: the connection's task
        // counts the client's once it has read the PROXY header.
        let admitted = match incoming.awaits_proxy_header() {
            true => state.admit_slot(),
            false => state.admit(&incoming.peer, config.max_connections_per_peer),
        };
        let admitted = match admitted {
            Ok(a) => a,
            Err(Refused::Full) => {
                tracing::warn!(peer = %incoming.peer, limit = config.max_connections, "connection refused: server is at max_connections");
                continue;
            }
            Err(Refused::PerPeer) => {
                tracing::warn!(peer = %incoming.peer, limit = config.max_connections_per_peer, "connection refused: too many connections from this address");
                continue;
            }
        };
        tracing::debug!(peer = %incoming.peer, "accepted");
        let service = service.clone();
        let config = config.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _ = serve_stream(incoming, Some(admitted), service, config, shutdown).await;
        });
    }
}

async fn serve_stream(
    mut incoming: Incoming,
    mut admitted: Option<Admitted>,
    service: Service,
    config: Arc<ServerConfig>,
    mut shutdown: watch::Receiver<bool>,
) -> String {
    // The PROXY header, the transport handshake and the authenticator
    // share one deadline.
    let deadline = tokio::time::Instant::now() + config.auth_timeout;
    if incoming.awaits_proxy_header() {
        let proxy = incoming.peer.clone();
        match tokio::time::timeout_at(deadline, incoming.read_proxy_header()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(peer = %proxy, reason = %e, "connection refused: no valid PROXY header");
                return format!("refused: no valid PROXY header: {e}");
            }
            Err(_) => {
                tracing::warn!(peer = %proxy, timeout = ?config.auth_timeout, "connection refused: no PROXY header in time");
                return format!("refused: no PROXY header within {:?}", config.auth_timeout);
            }
        }
        if let Some(a) = admitted.as_mut() {
            if a.count_peer(&incoming.peer, config.max_connections_per_peer).is_err() {
                tracing::warn!(peer = %incoming.peer, via = %proxy, limit = config.max_connections_per_peer, "connection refused: too many connections from this address");
                return "refused: too many connections from this address".into();
            }
        }
    }
    let _admitted = admitted;
    let peer = incoming.peer.clone();
    let auth = config.authenticator.clone();
    let authed = tokio::time::timeout_at(deadline, async move {
        let (stream, creds) = incoming.handshake().await.map_err(|e| e.to_string())?;
        let transport = creds.transport;
        auth.authenticate(stream, creds).await.map_err(|e| format!("{} ({})", e, transport.as_str()))
    })
    .await;
    let (stream, creds) = match authed {
        Ok(Ok(x)) => x,
        Ok(Err(reason)) => {
            tracing::warn!(%peer, %reason, "connection refused: authentication failed");
            return format!("refused: authentication failed: {reason}");
        }
        Err(_) => {
            tracing::warn!(%peer, timeout = ?config.auth_timeout, "connection refused: authentication timed out");
            return format!("refused: authentication timed out after {:?}", config.auth_timeout);
        }
    };
    let transport = creds.transport;
    tracing::info!(%peer, transport = transport.as_str(), identity = creds.display_identity(), "authenticated");
    let policy = (config.policy)(&creds);
    let conn = Connection::start(stream, service, config.connection.clone(), creds, policy);
    tokio::select! {
        _ = conn.closed() => {}
        _ = crate::connection::wait_true(&mut shutdown) => {
            conn.abort("server shutting down");
            conn.closed().await;
        }
    }
    let reason = conn.close_reason().unwrap_or_default();
    tracing::debug!(%peer, %reason, "connection ended");
    reason
}
