//! Layer 6: a protocol-aware gateway that secures existing RPyC servers
//! without changing them.
//!
//! A Python RPyC server (classic mode above all) trusts whoever reaches its
//! port. The gateway stands in front of it: clients connect to the gateway
//! over mutual TLS, the embedded SSH endpoint, or TCP with
//! challenge–response; the gateway authenticates them, picks an upstream by
//! route, and relays the connection — parsing every frame in both
//! directions and applying the identity's [`GatewayPolicy`] to each request
//! before it is forwarded:
//!
//! - handler allow-list (by default no PICKLE, SETATTR or DELATTR);
//! - attribute names on GETATTR/CALLATTR/SETATTR/DELATTR, and the names
//!   hidden in CMP and OLDSLICING (by default no `_`-names except RPyC's
//!   safe dunders);
//! - root rules: method allow/deny lists, and the classic-mode roots
//!   (`eval`, `execute`, `getmodule`, `namespace`, `getconn`), blocked unless
//!   granted;
//! - frame, inflate and nesting limits; per-identity requests in flight and
//!   rate.
//!
//! A denied request is answered by the gateway itself with the exception a
//! Python client expects (`AttributeError("cannot access 'eval'")` for names
//! and for disabled GETATTR/SETATTR/DELATTR, as Python raises it;
//! `PermissionError` for other handlers) and never reaches the upstream; the
//! connection and the upstream stay healthy. Callbacks from the upstream to
//! the client pass through. When the upstream goes away, every pending call
//! of the client fails at once with an `EOFError` naming the upstream.
//!
//! Operations: an audit record per request ([`config::AuditConfig`]),
//! Prometheus metrics and `/healthz` ([`config::MetricsConfig`]), reload of
//! policies, routes, upstreams and certificates ([`GatewayHandle::reload`],
//! SIGHUP in `rpyc gateway`; certificate, key and CA files are also
//! re-read by themselves when they change on disk), and graceful shutdown
//! that lets calls in flight finish ([`GatewayHandle::shutdown`]).
//!
//! Listeners may sit behind a proxy that sends PROXY protocol headers
//! ([`ListenerConfig::proxy_protocol`]): the client's address is then the
//! one audited, logged and limited per address. A TLS listener's identity
//! is the client certificate's CN, URI SAN (SPIFFE) or DNS SAN
//! ([`ListenerConfig::identity_from`]).
//!
//! The gateway uses only the wire, channel, transport, auth, policy and
//! identity layers — not the connection engine: it never unboxes objects,
//! it only reads the messages that carry them. The module mirrors no Python
//! file; the rules it enforces mirror `rpyc/core/protocol.py`
//! (`_dispatch_request`, `_unbox`, `_check_attr`).
//!
//! ```no_run
//! use rpyc::gateway::{Gateway, GatewayConfig};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = GatewayConfig::load("gateway.toml".as_ref())?;
//! let gateway = Gateway::bind(config).await?;
//! let handle = gateway.handle();
//! tokio::spawn(gateway.run());
//! // … later: handle.reload(GatewayConfig::load("gateway.toml".as_ref())?)?; handle.shutdown();
//! # Ok(()) }
//! ```

mod capability;
pub mod config;
mod metrics;
pub mod policy;
mod pool;
mod relay;
mod scan;

pub use config::{ConfigError, GatewayConfig, ListenerConfig, RouteConfig, UpstreamConfig};
pub use policy::{GatewayPolicy, GatewayPolicySet};

use crate::auth::{Authenticator, ChallengeResponse, SshPublicKey, TlsClientCert};
use crate::server::{Admission, Admitted, Refused};
use crate::transport::tls::{TlsAcceptor, TlsReloadHandle, TlsServerConfig};
use crate::transport::{ssh, Incoming, Listener, TcpAcceptor};
use config::{secs, AuditFormat};
use metrics::{AuditSink, Metrics};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

/// Why the gateway could not start or reload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener, certificate, key or file could not be set up.
    #[error("{0}")]
    Setup(String),
}

fn setup(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::Setup(e.to_string())
}

/// What can change on reload: everything but the listeners' addresses.
pub(crate) struct Rules {
    pub config: GatewayConfig,
    pub generation: u64,
}

/// Per-identity counters shared by all connections of that identity.
pub(crate) struct IdentityLimiter {
    in_flight: AtomicUsize,
    /// (tokens, last refill); `None` until first used.
    bucket: Mutex<Option<(f64, Instant)>>,
}

impl IdentityLimiter {
    fn new() -> IdentityLimiter {
        IdentityLimiter { in_flight: AtomicUsize::new(0), bucket: Mutex::new(None) }
    }

    /// Takes one request slot (rate and in-flight); [`IdentityLimiter::release`]
    /// gives the in-flight part back when the reply arrives.
    pub(crate) fn acquire(&self, p: &GatewayPolicy) -> Result<(), policy::Denial> {
        if p.rate_per_sec > 0.0 {
            let burst = if p.burst > 0 { f64::from(p.burst) } else { p.rate_per_sec.max(1.0) };
            let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let (tokens, last) = b.unwrap_or((burst, now));
            let tokens = (tokens + now.duration_since(last).as_secs_f64() * p.rate_per_sec).min(burst);
            if tokens < 1.0 {
                *b = Some((tokens, now));
                return Err(policy::Denial::Limit(format!(
                    "rate limit of {} requests per second exceeded for this identity",
                    p.rate_per_sec
                )));
            }
            *b = Some((tokens - 1.0, now));
        }
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if p.max_in_flight > 0 && before >= p.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(policy::Denial::Limit(format!(
                "this identity already has {} requests in flight (the limit)",
                p.max_in_flight
            )));
        }
        Ok(())
    }

    pub(crate) fn release(&self) {
        let _ = self.in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// State shared by the accept loops and every relayed connection.
pub(crate) struct Shared {
    rules: RwLock<Arc<Rules>>,
    generation: AtomicU64,
    pub metrics: Arc<Metrics>,
    pub audit: AuditSink,
    limiters: Mutex<HashMap<String, Weak<IdentityLimiter>>>,
    pub draining: watch::Sender<bool>,
    next_conn: AtomicU64,
    active: AtomicUsize,
    pub pools: Arc<pool::Pools>,
}

impl Shared {
    pub(crate) fn rules(&self) -> Arc<Rules> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// (generation, policy name, policy) for an identity now.
    pub(crate) fn resolve_policy(&self, identity: &str, groups: &[String]) -> (u64, String, Arc<GatewayPolicy>) {
        let rules = self.rules();
        let (name, p) = rules.config.policy.resolve(Some(identity), groups);
        (rules.generation, name.to_string(), Arc::new(p.clone()))
    }

    pub(crate) fn metrics_text(&self) -> String {
        let mut text = self.metrics.render();
        self.pools.render(&mut text);
        text
    }

    /// Why `/healthz` must say 503, if it must.
    pub(crate) fn unhealthy(&self) -> Option<String> {
        if *self.draining.borrow() {
            return Some("draining: the gateway is shutting down".into());
        }
        let down = self.pools.unhealthy(&self.rules().config);
        if down.is_empty() {
            return None;
        }
        Some(down.into_iter().map(|(_, why)| why).collect::<Vec<_>>().join("\n"))
    }

    fn limiter(&self, identity: &str) -> Arc<IdentityLimiter> {
        let mut m = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = m.get(identity).and_then(Weak::upgrade) {
            return l;
        }
        if m.len() >= 1024 {
            m.retain(|_, w| w.strong_count() > 0);
        }
        let l = Arc::new(IdentityLimiter::new());
        m.insert(identity.to_string(), Arc::downgrade(&l));
        l
    }
}

/// A bound listener with its authenticator.
struct ListenerRt {
    name: String,
    url: String,
    listener: Listener,
    auth: RwLock<Arc<dyn Authenticator>>,
    allow: RwLock<Option<Vec<String>>>,
    tls: Option<TlsReloadHandle>,
    proxy_protocol: bool,
}

/// A running gateway: its listeners and shared state. Start it with
/// [`Gateway::run`] (or [`Gateway::spawn`]); control it with a
/// [`GatewayHandle`].
pub struct Gateway {
    shared: Arc<Shared>,
    listeners: Arc<Mutex<Vec<Arc<ListenerRt>>>>,
    metrics_listener: Option<tokio::net::TcpListener>,
    done: watch::Sender<bool>,
}

/// Controls a running gateway: reload, shut down. Cheap to clone.
#[derive(Clone)]
pub struct GatewayHandle {
    shared: Arc<Shared>,
    /// Emptied when the gateway stops, which closes the listening sockets.
    listeners: Arc<Mutex<Vec<Arc<ListenerRt>>>>,
    done: watch::Receiver<bool>,
}

fn addr_of(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest).trim_end_matches('/')
}

fn load_secrets(path: &std::path::Path) -> Result<ChallengeResponse, GatewayError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| setup(format!("cannot read secrets file {}: {e}", path.display())))?;
    // The parser's message quotes the offending line, which holds a secret:
    // say where and what, never the text.
    let table: std::collections::BTreeMap<String, String> = toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(0, |r| text.get(..r.start).unwrap_or("").matches('\n').count() + 1);
        let what = e.message().lines().next().unwrap_or("").split('`').next().unwrap_or("").trim();
        setup(format!(
            "secrets file {}: line {line} is not identity = \"secret\" ({what}; the line is not shown because it \
             holds a secret)",
            path.display()
        ))
    })?;
    if table.is_empty() {
        return Err(setup(format!("secrets file {} lists no identity", path.display())));
    }
    Ok(table.iter().fold(ChallengeResponse::new(), |cr, (id, secret)| cr.identity(id, secret)))
}

fn tls_server_config(l: &ListenerConfig) -> Result<TlsServerConfig, GatewayError> {
    match (&l.tls, &l.cert, &l.key, &l.client_ca) {
        (Some(dir), _, _, _) => TlsServerConfig::from_dir(dir).map_err(setup),
        (None, Some(cert), Some(key), Some(ca)) => {
            TlsServerConfig::from_pem_files(cert, key).and_then(|c| c.with_client_ca_file(ca)).map_err(setup)
        }
        _ => Err(setup(format!("listener {:?}: incomplete TLS settings", l.display_name()))),
    }
}

/// The authenticator for a listener (what it proves is the identity).
fn authenticator(l: &ListenerConfig) -> Result<Arc<dyn Authenticator>, GatewayError> {
    Ok(match l.url.split_once("://").map(|(s, _)| s) {
        Some("tls") => Arc::new(TlsClientCert::new().identity_from(l.identity_from)),
        Some("ssh") => Arc::new(SshPublicKey::new()),
        _ => {
            let path = l.secrets.as_deref().ok_or_else(|| setup("challenge-response needs a secrets file"))?;
            Arc::new(load_secrets(path)?)
        }
    })
}

async fn bind_listener(l: &ListenerConfig, auth_timeout: Duration) -> Result<ListenerRt, GatewayError> {
    let addr = addr_of(&l.url);
    let scheme = l.url.split_once("://").map(|(s, _)| s).unwrap_or("");
    let mut tls = None;
    let listener = match scheme {
        "tls" => {
            let acceptor = TlsAcceptor::bind(addr, &tls_server_config(l)?)
                .await
                .map_err(setup)?
                .with_proxy_protocol(l.proxy_protocol);
            tls = Some(acceptor.reload_handle());
            Listener::new(acceptor)
        }
        "ssh" => {
            let (Some(host_key), Some(keys)) = (&l.host_key, &l.authorized_keys) else {
                return Err(setup("ssh listener needs host_key and authorized_keys"));
            };
            // The whole SSH pre-auth phase (banner, kex, login) gets the
            // same deadline as every other listener's handshake.
            let mut config = ssh::SshServerConfig::new(host_key, keys);
            config.login_grace_time = auth_timeout;
            Listener::ssh(addr, config).await.map_err(setup)?
        }
        "tcp" => Listener::new(TcpAcceptor::bind(addr).await.map_err(setup)?.with_proxy_protocol(l.proxy_protocol)),
        #[cfg(unix)]
        "unix" => Listener::unix(addr).await.map_err(setup)?,
        other => return Err(setup(format!("unsupported listener scheme {other}://"))),
    };
    Ok(ListenerRt {
        name: l.display_name().to_string(),
        url: l.url.clone(),
        listener,
        auth: RwLock::new(authenticator(l)?),
        allow: RwLock::new(l.allow.clone()),
        tls,
        proxy_protocol: l.proxy_protocol,
    })
}

fn warn_weak_policies(config: &GatewayConfig) {
    if let Some(w) = identity_namespace_warning(config) {
        tracing::warn!("{w}");
    }
    let set = &config.policy;
    for (name, p) in std::iter::once(("default", &set.default)).chain(set.policies.iter().map(|(n, p)| (n.as_str(), p)))
    {
        if p.classic {
            tracing::info!(policy = name, "classic = true: full trust (remote code execution on a classic server)");
        } else if p.objects.get(policy::ANY_CLASS).is_some_and(|m| m.contains("*")) {
            tracing::warn!(
                policy = name,
                "objects.any = [\"*\"] grants every public member of every object the upstream hands out; \
                 if any of them leads to a module or function (os.system …), that is code execution — \
                 grant members per class instead"
            );
        }
    }
}

fn audit_sink(c: &config::AuditConfig) -> Result<AuditSink, GatewayError> {
    Ok(match (c.format, &c.file) {
        (AuditFormat::Json, Some(path)) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| setup(format!("cannot open audit file {}: {e}", path.display())))?;
            AuditSink::Json(Mutex::new(Box::new(std::io::LineWriter::new(f))))
        }
        (AuditFormat::Json, None) => AuditSink::Json(Mutex::new(Box::new(std::io::stdout()))),
        _ => AuditSink::Tracing,
    })
}

impl Gateway {
    /// Binds every listener (and the metrics endpoint) of a checked
    /// configuration. Certificates, keys and secrets are loaded now, so a
    /// mistake fails here rather than per connection.
    pub async fn bind(config: GatewayConfig) -> Result<Gateway, GatewayError> {
        config.validate()?;
        warn_weak_policies(&config);
        let audit = audit_sink(&config.audit)?;
        let mut listeners = Vec::new();
        for l in &config.listeners {
            listeners.push(Arc::new(bind_listener(l, secs(config.limits.auth_timeout_secs)).await?));
        }
        let metrics_listener = match &config.metrics.listen {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .map_err(|e| setup(format!("cannot listen for metrics on {a}: {e}")))?,
            ),
            None => None,
        };
        let (draining, _) = watch::channel(false);
        // Know which upstream servers are up before the first client comes.
        let pools = Arc::new(pool::Pools::new(&config));
        let (_, check_timeout) = pool::settings(&config);
        pools.round(check_timeout).await;
        for (name, why) in pools.unhealthy(&config) {
            tracing::warn!(upstream = %name, reason = %why, "no healthy upstream server at start");
        }
        let shared = Arc::new(Shared {
            pools,
            rules: RwLock::new(Arc::new(Rules { config, generation: 1 })),
            generation: AtomicU64::new(1),
            metrics: Arc::new(Metrics::default()),
            audit,
            limiters: Mutex::new(HashMap::new()),
            draining,
            next_conn: AtomicU64::new(1),
            active: AtomicUsize::new(0),
        });
        let (done, _) = watch::channel(false);
        Ok(Gateway { shared, listeners: Arc::new(Mutex::new(listeners)), metrics_listener, done })
    }

    /// `(listener name, bound address)` of every TCP-based listener.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners().iter().filter_map(|l| l.listener.local_addr().map(|a| (l.name.clone(), a))).collect()
    }

    /// The address of the metrics endpoint, if configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// A short description of each listener (`tls://127.0.0.1:18821`).
    pub fn describe(&self) -> Vec<String> {
        self.listeners().iter().map(|l| l.listener.describe()).collect()
    }

    fn listeners(&self) -> Vec<Arc<ListenerRt>> {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A handle to reload or stop the gateway.
    pub fn handle(&self) -> GatewayHandle {
        GatewayHandle { shared: self.shared.clone(), listeners: self.listeners.clone(), done: self.done.subscribe() }
    }

    /// Starts [`Gateway::run`] in the background.
    pub fn spawn(self) -> GatewayHandle {
        let handle = self.handle();
        tokio::spawn(self.run());
        handle
    }

    /// Serves until [`GatewayHandle::shutdown`], then waits for the
    /// connections to drain (each bounded by the drain timeout).
    pub async fn run(self) {
        let metrics_task = self.metrics_listener.map(|l| tokio::spawn(metrics::serve_http(l, self.shared.clone())));
        let health_task = {
            let shared = self.shared.clone();
            let settings = move || pool::settings(&shared.rules().config);
            tokio::spawn(self.shared.pools.clone().run(settings, self.shared.draining.subscribe()))
        };
        let state = Admission::new(self.shared.rules().config.limits.max_connections.max(1));
        let mut tasks = Vec::new();
        let listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let watcher = tokio::spawn(watch_certificates(listeners.clone(), self.shared.clone()));
        for l in &listeners {
            tracing::info!(listener = %l.name, address = %l.listener.describe(), "gateway listening");
            tasks.push(tokio::spawn(accept_loop(l.clone(), self.shared.clone(), state.clone())));
        }
        let mut rx = self.shared.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
        watcher.abort();
        for t in tasks {
            let _ = t.await;
        }
        // Close the listening sockets now, not when the last handle goes.
        self.listeners.lock().unwrap_or_else(|e| e.into_inner()).clear();
        // Every connection has its own drain deadline; this bounds the wait
        // for the last ones to finish flushing.
        let limit = secs(self.shared.rules().config.limits.drain_timeout_secs) + Duration::from_secs(10);
        let deadline = Instant::now() + limit;
        while self.shared.active.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(t) = metrics_task {
            t.abort();
        }
        health_task.abort();
        tracing::info!("gateway stopped");
        self.done.send_replace(true);
    }
}

/// What [`GatewayHandle::reload`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadReport {
    /// Listeners whose certificates or secrets were reloaded.
    pub reloaded: Vec<String>,
    /// Differences that need a restart (listener addresses, metrics, audit).
    pub needs_restart: Vec<String>,
}

impl GatewayHandle {
    /// Starts a graceful shutdown: listeners stop accepting, new requests
    /// are refused, and each connection closes once its calls in flight are
    /// answered (or the drain timeout passes).
    pub fn shutdown(&self) {
        self.shared.draining.send_replace(true);
    }

    /// Waits until [`Gateway::run`] has returned.
    pub async fn stopped(&self) {
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }

    /// The current metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics_text()
    }

    /// `None` if the gateway can place a new connection on every routed
    /// upstream; else why not (what `/healthz` answers with 503).
    pub fn unhealthy(&self) -> Option<String> {
        self.shared.unhealthy()
    }

    /// Applies a new configuration: policies, routes, upstreams, groups and
    /// limits at once (policies also for established connections, from
    /// their next request), TLS certificates and challenge–response secrets
    /// for new connections. On any error nothing changes.
    pub fn reload(&self, config: GatewayConfig) -> Result<ReloadReport, GatewayError> {
        config.validate()?;
        warn_weak_policies(&config);
        let old = self.shared.rules();
        let mut report = ReloadReport::default();
        let mut updates = Vec::new();
        let listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for l in &listeners {
            let Some(new) = config.listeners.iter().find(|n| n.display_name() == l.name) else {
                report.needs_restart.push(format!("listener {:?} was removed", l.name));
                continue;
            };
            if new.url != l.url {
                report.needs_restart.push(format!("listener {:?} moved to {}", l.name, new.url));
                continue;
            }
            if new.proxy_protocol != l.proxy_protocol {
                report.needs_restart.push(format!("listener {:?} changed proxy_protocol", l.name));
            }
            let tls = match &l.tls {
                Some(h) => Some((h.clone(), tls_server_config(new)?)),
                None => None,
            };
            updates.push((l.clone(), authenticator(new)?, new.allow.clone(), tls));
        }
        for n in &config.listeners {
            if !listeners.iter().any(|l| l.name == n.display_name()) {
                report.needs_restart.push(format!("listener {:?} is new", n.display_name()));
            }
        }
        if config.metrics != old.config.metrics {
            report.needs_restart.push("metrics endpoint changed".into());
        }
        if config.audit != old.config.audit {
            report.needs_restart.push("audit settings changed".into());
        }
        // Check every certificate before swapping any.
        for (_, _, _, tls) in &updates {
            if let Some((_, cfg)) = tls {
                cfg.to_rustls().map_err(setup)?;
            }
        }
        for (l, auth, allow, tls) in updates {
            if let Some((h, cfg)) = tls {
                h.reload(&cfg).map_err(setup)?;
            }
            *l.auth.write().unwrap_or_else(|e| e.into_inner()) = auth;
            *l.allow.write().unwrap_or_else(|e| e.into_inner()) = allow;
            report.reloaded.push(l.name.clone());
        }
        let generation = old.generation + 1;
        self.shared.pools.sync(&config);
        *self.shared.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Rules { config, generation });
        self.shared.generation.store(generation, Ordering::Release);
        for r in &report.needs_restart {
            tracing::warn!(change = %r, "configuration change needs a restart");
        }
        tracing::info!(generation, "gateway configuration reloaded");
        Ok(report)
    }
}

/// How often the certificate, key and CA files of TLS listeners are
/// checked for changes.
const CERT_POLL: Duration = Duration::from_secs(2);

/// The certificate, key and client CA files a TLS listener reads.
fn certificate_files(l: &ListenerConfig) -> Vec<std::path::PathBuf> {
    use crate::transport::tls::{CA_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE};
    match (&l.tls, &l.cert, &l.key, &l.client_ca) {
        (Some(dir), _, _, _) => vec![dir.join(SERVER_CERT_FILE), dir.join(SERVER_KEY_FILE), dir.join(CA_FILE)],
        (None, Some(cert), Some(key), Some(ca)) => vec![cert.clone(), key.clone(), ca.clone()],
        _ => Vec::new(),
    }
}

/// What identifies a file's current content without reading it: its
/// modification time, size and (on Unix) inode, following symlinks — so
/// cert-manager's and Kubernetes' symlink swaps count as changes too.
type FileStamp = Option<(std::time::SystemTime, u64, u64)>;

fn stamp(path: &std::path::Path) -> FileStamp {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.modified().ok()?, m.len(), ino))
}

/// Reloads a TLS listener's certificates when their files change on disk,
/// so short-lived certificates renewed by cert-manager or spiffe-helper,
/// and a rotated CA, take effect without SIGHUP or a restart. New
/// connections get the new files; established ones keep what they
/// negotiated. Files caught half-written (a certificate whose new key is
/// not there yet) change nothing; the next change is tried again.
async fn watch_certificates(listeners: Vec<Arc<ListenerRt>>, shared: Arc<Shared>) {
    let mut seen: HashMap<String, Vec<FileStamp>> = HashMap::new();
    let mut running: Option<tokio::task::JoinHandle<HashMap<String, Vec<FileStamp>>>> = None;
    let mut stalled_since: Option<std::time::Instant> = None;
    loop {
        // File system calls run on the blocking pool: a stalled mount (NFS,
        // FUSE secrets) must never hold a runtime worker. A check that has
        // not finished is waited for, not repeated.
        match running.take() {
            Some(h) if h.is_finished() => {
                if let Ok(s) = h.await {
                    seen = s;
                }
                stalled_since = None;
            }
            Some(h) => {
                let since = *stalled_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_secs(30) {
                    tracing::warn!(
                        "checking the certificate files has not finished for {:?} (a stalled file system?); \
                         the current certificates stay in force",
                        since.elapsed()
                    );
                    stalled_since = Some(std::time::Instant::now());
                }
                running = Some(h);
            }
            None => {}
        }
        if running.is_none() {
            let (listeners, rules, before) = (listeners.clone(), shared.rules(), seen.clone());
            running = Some(tokio::task::spawn_blocking(move || check_certificates(&listeners, &rules, before)));
        }
        tokio::time::sleep(CERT_POLL).await;
    }
}

/// One round of [`watch_certificates`]: reloads each TLS listener whose
/// files changed since `seen`; returns what was seen now.
fn check_certificates(
    listeners: &[Arc<ListenerRt>],
    rules: &Rules,
    mut seen: HashMap<String, Vec<FileStamp>>,
) -> HashMap<String, Vec<FileStamp>> {
    for l in listeners {
        let (Some(handle), Some(config)) = (&l.tls, rules.config.listeners.iter().find(|c| c.display_name() == l.name))
        else {
            continue;
        };
        let now: Vec<FileStamp> = certificate_files(config).iter().map(|p| stamp(p)).collect();
        match seen.insert(l.name.clone(), now.clone()) {
            Some(before) if before != now => {
                match tls_server_config(config).and_then(|c| handle.reload(&c).map_err(setup)) {
                    Ok(()) => tracing::info!(listener = %l.name, "certificate files changed: reloaded"),
                    Err(e) => tracing::warn!(
                        listener = %l.name,
                        error = %e,
                        "certificate files changed but cannot be used; the previous certificates stay in force \
                         until the files change again"
                    ),
                }
            }
            _ => {}
        }
    }
    seen
}

struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_loop(l: Arc<ListenerRt>, shared: Arc<Shared>, state: Arc<Admission>) {
    let mut draining = shared.draining.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = draining.wait_for(|d| *d) => break,
            a = l.listener.accept() => a,
        };
        let incoming = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(listener = %l.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let max_per_peer = shared.rules().config.limits.max_connections_per_peer;
        // Behind a proxy the socket's peer is the proxy: the connection's
        // task counts the client's address once it has read the header.
        let admitted = match incoming.awaits_proxy_header() {
            true => state.admit_slot(),
            false => state.admit(&incoming.peer, max_per_peer),
        };
        let admitted = match admitted {
            Ok(a) => a,
            Err(refused) => {
                shared.metrics.refused_connections.fetch_add(1, Ordering::Relaxed);
                let why = match refused {
                    Refused::Full => "gateway is at max_connections",
                    Refused::PerPeer => "too many connections from this address",
                };
                tracing::warn!(peer = %incoming.peer, "connection refused: {why}");
                continue;
            }
        };
        shared.active.fetch_add(1, Ordering::AcqRel);
        shared.metrics.connections_total.fetch_add(1, Ordering::Relaxed);
        shared.metrics.connections_active.fetch_add(1, Ordering::Relaxed);
        let active = ActiveGuard(shared.clone());
        let (shared, l) = (shared.clone(), l.clone());
        tokio::spawn(async move {
            let _active = active;
            serve_incoming(incoming, admitted, l, shared).await;
        });
    }
}

async fn serve_incoming(mut incoming: Incoming, mut admitted: Admitted, l: Arc<ListenerRt>, shared: Arc<Shared>) {
    let rules = shared.rules();
    let auth_timeout = secs(rules.config.limits.auth_timeout_secs);
    let max_per_peer = rules.config.limits.max_connections_per_peer;
    drop(rules);
    // The PROXY header, the transport handshake and authentication share
    // one deadline.
    let deadline = tokio::time::Instant::now() + auth_timeout;
    if incoming.awaits_proxy_header() {
        let proxy = incoming.peer.clone();
        let read = tokio::time::timeout_at(deadline, incoming.read_proxy_header()).await;
        let refused = match read {
            Ok(Ok(())) => match admitted.count_peer(&incoming.peer, max_per_peer) {
                Ok(()) => None,
                Err(_) => Some("too many connections from this address".to_string()),
            },
            Ok(Err(e)) => Some(format!("no valid PROXY header {e}")),
            Err(_) => Some(format!("no PROXY header within {auth_timeout:?}")),
        };
        if let Some(why) = refused {
            shared.metrics.refused_connections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(listener = %l.name, peer = %incoming.peer, via = %proxy, "connection refused: {why}");
            return;
        }
        tracing::debug!(listener = %l.name, peer = %incoming.peer, via = %proxy, "PROXY header read");
    }
    let _admitted = admitted;
    let peer = incoming.peer.clone();
    let auth = l.auth.read().unwrap_or_else(|e| e.into_inner()).clone();
    let authed = tokio::time::timeout_at(deadline, async move {
        let (stream, creds) = incoming.handshake().await.map_err(|e| e.to_string())?;
        auth.authenticate(stream, creds).await.map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|_| Err(format!("authentication timed out after {auth_timeout:?}")));
    let (stream, mut creds) = match authed {
        Ok(x) => x,
        Err(reason) => {
            shared.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(listener = %l.name, %peer, %reason, "connection refused: authentication failed");
            return;
        }
    };
    let Some(identity) = creds.identity.clone() else {
        shared.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(listener = %l.name, %peer, "connection refused: no identity was established");
        return;
    };
    let allowed = l.allow.read().unwrap_or_else(|e| e.into_inner()).as_ref().is_none_or(|a| a.contains(&identity));
    if !allowed {
        shared.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(listener = %l.name, %peer, %identity, "connection refused: identity not allowed on this listener");
        return;
    }
    let rules = shared.rules();
    if let Some(gs) = rules.config.groups.get(&identity) {
        for g in gs {
            if !creds.groups.contains(g) {
                creds.groups.push(g.clone());
            }
        }
    }
    let Some(upstream_name) = rules.config.route(&identity, &creds.groups, &l.name).map(str::to_string) else {
        shared.metrics.refused_connections.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(listener = %l.name, %peer, %identity, "connection refused: no route for this identity");
        return;
    };
    let Some(pool) = shared.pools.get(&upstream_name) else {
        return;
    };
    drop(rules);
    let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        conn = conn_id,
        listener = %l.name,
        %peer,
        transport = creds.transport.as_str(),
        %identity,
        upstream = %upstream_name,
        "authenticated"
    );
    // `conn{id listener peer identity upstream}`: the relay's and the
    // upstream connection's log lines are told apart by it.
    let span = tracing::info_span!(
        "conn",
        id = conn_id,
        listener = %l.name,
        %peer,
        %identity,
        upstream = %upstream_name,
    );
    let ctx = relay::ConnCtx {
        limiter: shared.limiter(&identity),
        shared,
        conn_id,
        identity,
        groups: creds.groups.clone(),
        peer: peer.to_string(),
        upstream_name,
        pool,
    };
    relay::relay(ctx, stream).instrument(span).await;
}

/// What [`check`] found: the effective configuration, in words, and the
/// problems with the files it names.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct CheckReport {
    /// Listeners, upstreams, routes, policies and settings as the gateway
    /// would apply them.
    pub summary: String,
    /// Files the configuration names that do not exist yet (needed at start).
    pub missing: Vec<String>,
    /// Files that exist but cannot be used (a bad certificate, key, secrets
    /// file): starting would fail.
    pub errors: Vec<String>,
    /// Settings that work but deserve a second look.
    pub warnings: Vec<String>,
}

/// Listeners that read identities from different places share one
/// namespace of identity names: say so, unless each is fenced by `allow`.
fn identity_namespace_warning(config: &GatewayConfig) -> Option<String> {
    let tls: Vec<&ListenerConfig> = config.listeners.iter().filter(|l| l.url.starts_with("tls://")).collect();
    let first = tls.first()?.identity_from;
    if tls.iter().all(|l| l.identity_from == first) || tls.iter().all(|l| l.allow.is_some()) {
        return None;
    }
    Some(
        "TLS listeners read identities from different places (identity_from differs), and identities share one \
         namespace: a certificate CN on one listener could spell a DNS SAN identity of another (URI-shaped CNs \
         are refused). Fence each listener with allow = [...] or route by listeners = [...], especially if \
         their client CAs differ"
            .into(),
    )
}

/// Checks a configuration without starting anything (`rpyc gateway
/// --check`): every rule [`GatewayConfig::validate`] knows, then every
/// certificate, key and secrets file it names. Nothing is bound and no
/// upstream is contacted.
pub fn check(config: &GatewayConfig) -> Result<CheckReport, GatewayError> {
    use std::fmt::Write as _;
    config.validate()?;
    let mut r = CheckReport::default();
    let file = |path: &std::path::Path, r: &mut CheckReport| -> bool {
        if path.exists() {
            true
        } else {
            r.missing.push(path.display().to_string());
            false
        }
    };
    for l in &config.listeners {
        let scheme = l.url.split_once("://").map_or("", |(s, _)| s);
        let what = format!("listener {:?}", l.display_name());
        match scheme {
            "tls" => {
                let files: Vec<PathBuf> = match &l.tls {
                    Some(d) => ["ca.pem", "server.pem", "server.key"].iter().map(|f| d.join(f)).collect(),
                    None => [&l.cert, &l.key, &l.client_ca].into_iter().flatten().cloned().collect(),
                };
                let before = r.missing.len();
                files.iter().for_each(|f| {
                    file(f, &mut r);
                });
                if r.missing.len() == before {
                    if let Err(e) = tls_server_config(l).and_then(|c| c.to_rustls().map_err(setup)) {
                        r.errors.push(format!("{what}: {e}"));
                    }
                }
            }
            "ssh" => {
                if let Some(k) = &l.authorized_keys {
                    let shown = k.display().to_string();
                    let per_user = shown.contains("%u");
                    let dir = if per_user { k.parent().map(PathBuf::from) } else { Some(k.clone()) };
                    if let Some(d) = dir {
                        file(&d, &mut r);
                    }
                }
                // The host key is created on first start if missing.
            }
            _ => {
                if let Some(s) = &l.secrets {
                    if file(s, &mut r) {
                        if let Err(e) = load_secrets(s) {
                            r.errors.push(format!("{what}: {e}"));
                        }
                    }
                }
            }
        }
    }
    for (name, u) in &config.upstreams {
        let before = r.missing.len();
        [&u.ca, &u.cert, &u.key].into_iter().flatten().for_each(|f| {
            file(f, &mut r);
        });
        if r.missing.len() == before && (u.ca.is_some() || u.cert.is_some()) {
            if let Err(e) = upstream_tls(u) {
                r.errors.push(format!("upstream {name:?}: {e}"));
            }
        }
    }
    r.warnings.extend(identity_namespace_warning(config));
    let s = &mut r.summary;
    let _ = writeln!(s, "listeners:");
    for l in &config.listeners {
        let auth = match l.url.split_once("://").map_or("", |(s, _)| s) {
            "tls" => format!("client certificate ({:?})", l.identity_from),
            "ssh" => "SSH key".to_string(),
            _ => "challenge-response".to_string(),
        };
        let allow = l.allow.as_ref().map_or("every authenticated identity".to_string(), |a| a.join(", "));
        let proxy = if l.proxy_protocol { "; PROXY protocol header required" } else { "" };
        let _ = writeln!(s, "  {:<24} {}  auth: {auth}; allowed: {allow}{proxy}", l.display_name(), l.url);
    }
    let _ = writeln!(s, "upstreams:");
    for (name, u) in &config.upstreams {
        let tls = if u.ca.is_some() { ", TLS" } else { "" };
        let _ = writeln!(s, "  {name:<24} {}  (protocol {:?}{tls})", u.describe(), u.protocol);
    }
    let _ = writeln!(
        s,
        "health checks: every {} s, {} s timeout; DNS: {}",
        config.health.interval_secs,
        config.health.timeout_secs,
        if config.dns.nameservers.is_empty() {
            "system resolver".to_string()
        } else {
            config.dns.nameservers.join(", ")
        }
    );
    let _ = writeln!(s, "routes (first match wins):");
    if config.routes.is_empty() {
        let _ = writeln!(s, "  everyone -> {}", config.upstreams.keys().next().map_or("?", String::as_str));
    }
    for (i, rt) in config.routes.iter().enumerate() {
        let mut who = Vec::new();
        for (k, v) in [("identities", &rt.identities), ("groups", &rt.groups), ("listeners", &rt.listeners)] {
            if !v.is_empty() {
                who.push(format!("{k} [{}]", v.join(", ")));
            }
        }
        let who = if who.is_empty() { "everyone".to_string() } else { who.join(" and ") };
        let _ = writeln!(s, "  {}. {who} -> {}", i + 1, rt.upstream);
    }
    let _ = writeln!(s, "policies:");
    let set = &config.policy;
    for (name, p) in std::iter::once(("default", &set.default)).chain(set.policies.iter().map(|(n, p)| (n.as_str(), p)))
    {
        let _ = writeln!(s, "  {name}: {}", policy::describe(p));
    }
    for (what, map) in [("identity", &set.identities), ("group", &set.groups)] {
        for (k, v) in map {
            let _ = writeln!(s, "  {what} {k} -> {v}");
        }
    }
    for (id, gs) in &config.groups {
        let _ = writeln!(s, "  {id} is in groups [{}]", gs.join(", "));
    }
    let m = config.metrics.listen.as_deref().unwrap_or("off");
    let _ = writeln!(s, "metrics: {m}; audit: {:?}", config.audit.format);
    Ok(r)
}

/// Loads an upstream's CA and client certificate the way its connections will.
fn upstream_tls(u: &UpstreamConfig) -> Result<(), String> {
    let mut c = crate::transport::tls::TlsClientConfig::new();
    if let Some(ca) = &u.ca {
        c = c.with_ca_file(ca).map_err(|e| e.to_string())?;
    }
    if let (Some(cert), Some(key)) = (&u.cert, &u.key) {
        c.with_identity_files(cert, key).map_err(|e| e.to_string())?;
    }
    Ok(())
}
