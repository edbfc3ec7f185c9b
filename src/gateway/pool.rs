//! Upstream pools: which server a new client connection is relayed to, and
//! which servers are up.
//!
//! An upstream is a *pool* of servers. Its members come from a source:
//! static URLs (`url`, `urls`), a DNS SRV name (`srv://_rpyc._tcp.NAME`,
//! re-resolved when the records' TTL runs out), or an RPyC registry
//! (`service` + `registry`, asked again every health interval). Sources are
//! refreshed and every member is **actively checked** — connect, then an
//! RPyC PING answered in time — every `[health] interval_secs`, all members
//! at once, each check bounded by `timeout_secs`. A member that fails a
//! check, or that a client connection could not reach (**passive
//! ejection**), is down until it passes a check again.
//!
//! A new client connection goes to a healthy member of the best SRV
//! priority, chosen by **power of two choices**: two members drawn at
//! random (by SRV weight), the one with fewer connections per weight wins.
//! That spreads load like least-connections without a global scan, and
//! several gateways in front of the same pool do not herd onto the same
//! "least loaded" server. A connection attempt that fails ejects the member
//! and tries another, so a server that died since the last check costs a
//! client nothing but a retry.
//!
//! Why not a control plane of our own: Consul and Kubernetes headless
//! services already publish SRV records, and the registry exists for
//! Python RPyC users; the gateway only reads them.

use super::config::{secs, GatewayConfig, Protocol, UpstreamConfig};
use crate::channel::ChannelConfig;
use crate::transport::tls::TlsClientConfig;
use crate::transport::{connect_endpoint, BoxStream, Endpoint, TcpOptions};
use crate::wire::{DecodeLimits, Dialect};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Most members one pool keeps (SRV answers and registries can be large;
/// every member costs a health check per interval and metric lines).
pub(crate) const MAX_MEMBERS: usize = 256;
/// Most connection attempts for one client connection.
pub(crate) const MAX_ATTEMPTS: usize = 3;
/// Shortest time between two health rounds started early (after an
/// ejection), so a flapping upstream cannot make the gateway spin.
const MIN_ROUND_GAP: Duration = Duration::from_millis(250);

/// One server of a pool.
pub(crate) struct Member {
    /// How it is shown: `tcp://127.0.0.1:18812`, `tls://host:port`.
    pub url: String,
    endpoint: Endpoint,
    /// SRV priority (lower is preferred); 0 for static members.
    pub priority: u16,
    /// SRV weight; 1 for static members.
    pub weight: u16,
    healthy: AtomicBool,
    /// Client connections relayed to it now.
    active: AtomicU64,
    /// Client connections relayed to it so far.
    connections: AtomicU64,
    /// Failed checks and failed connection attempts.
    failures: AtomicU64,
    /// Why it is down (the last failure), for `/healthz` and logs.
    last_error: Mutex<Option<String>>,
    /// The dialect that answered the last check (auto pools).
    dialect: Mutex<Option<Dialect>>,
}

impl Member {
    fn new(url: String, endpoint: Endpoint, priority: u16, weight: u16) -> Member {
        Member {
            url,
            endpoint,
            priority,
            weight,
            // Optimistic until the first check, which runs before the
            // member is used when the gateway starts or discovers it; a
            // member added by a reload is checked at once, and a client
            // that finds it down is retried on another.
            healthy: AtomicBool::new(true),
            active: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            dialect: Mutex::new(None),
        }
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Marks the member down; logs the transition once.
    pub(crate) fn eject(&self, pool: &str, why: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_string());
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(upstream = pool, server = %self.url, reason = why, "upstream server is down");
        }
    }

    fn restore(&self, pool: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if !self.healthy.swap(true, Ordering::AcqRel) {
            tracing::info!(upstream = pool, server = %self.url, "upstream server is up again");
        }
    }

    /// Opens a stream to the member.
    pub(crate) async fn connect(&self, timeout: Duration) -> Result<BoxStream, String> {
        let tcp = TcpOptions { connect_timeout: timeout, ..TcpOptions::default() };
        connect_endpoint(&self.endpoint, &tcp).await.map(|(s, _)| s).map_err(|e| e.to_string())
    }

    /// Connect + RPyC PING, in the pool's dialect (auto: 6.x, then 5.x).
    async fn check(&self, protocol: Protocol, timeout: Duration) -> Result<(), String> {
        let known = *self.dialect.lock().unwrap_or_else(|e| e.into_inner());
        let order: &[Dialect] = match (protocol, known) {
            (Protocol::Rpyc6, _) | (Protocol::Auto, Some(Dialect::V6)) => &[Dialect::V6],
            (Protocol::Rpyc5, _) | (Protocol::Auto, Some(Dialect::V5)) => &[Dialect::V5],
            _ => &[Dialect::V6, Dialect::V5],
        };
        let mut last = String::new();
        for &dialect in order {
            let attempt = tokio::time::timeout(timeout, async {
                let mut s = self.connect(timeout).await?;
                super::relay::ping(&mut s, dialect, &ChannelConfig::default(), &DecodeLimits::default()).await
            })
            .await
            .unwrap_or_else(|_| Err(format!("no answer to PING within {timeout:?}")));
            match attempt {
                Ok(()) => {
                    *self.dialect.lock().unwrap_or_else(|e| e.into_inner()) = Some(dialect);
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// Holds a member's connection count for the life of a client connection.
pub(crate) struct Lease(pub Arc<Member>);

impl Lease {
    fn new(m: Arc<Member>) -> Lease {
        m.active.fetch_add(1, Ordering::AcqRel);
        m.connections.fetch_add(1, Ordering::Relaxed);
        Lease(m)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where a pool's members come from.
#[derive(Clone, Debug, PartialEq)]
enum Source {
    /// `url` / `urls` (tcp, unix, tls).
    Static(Vec<String>),
    /// `srv://NAME` entries, plus any static URLs beside them.
    Srv { names: Vec<String>, fixed: Vec<String> },
    /// `service` looked up in `registry`.
    Registry { service: String, registry: String },
}

/// One upstream: its members and how to refresh them.
pub(crate) struct Pool {
    pub name: String,
    pub config: UpstreamConfig,
    source: Source,
    members: RwLock<Vec<Arc<Member>>>,
    /// When the dynamic source must be asked again.
    refresh_at: Mutex<Option<Instant>>,
    /// Why the last refresh failed (no members is then explained by it).
    refresh_error: Mutex<Option<String>>,
    rng: AtomicU64,
}

/// A target produced by a source.
struct Target {
    url: String,
    endpoint: Endpoint,
    priority: u16,
    weight: u16,
}

fn tls_config(u: &UpstreamConfig, server_name: Option<&str>) -> Result<TlsClientConfig, String> {
    let mut c = TlsClientConfig::new();
    if let Some(ca) = &u.ca {
        c = c.with_ca_file(ca).map_err(|e| e.to_string())?;
    }
    if let (Some(cert), Some(key)) = (&u.cert, &u.key) {
        c = c.with_identity_files(cert, key).map_err(|e| e.to_string())?;
    }
    if let Some(n) = u.server_name.as_deref().or(server_name) {
        c = c.with_server_name(n.to_string());
    }
    Ok(c)
}

fn static_target(u: &UpstreamConfig, url: &str) -> Result<Target, String> {
    let endpoint = if url.starts_with("tls://") {
        Endpoint::parse_tls(url, tls_config(u, None)?).map_err(|e| e.to_string())?
    } else {
        Endpoint::parse(url).map_err(|e| e.to_string())?
    };
    Ok(Target { url: url.to_string(), endpoint, priority: 0, weight: 1 })
}

/// A target found by name (SRV or registry): TLS when the upstream has a
/// CA, the host name as the TLS server name.
fn found_target(u: &UpstreamConfig, host: &str, addr: &str, priority: u16, weight: u16) -> Result<Target, String> {
    if u.ca.is_some() {
        let endpoint = Endpoint::tls(addr.to_string(), tls_config(u, Some(host))?);
        Ok(Target { url: format!("tls://{addr}"), endpoint, priority, weight })
    } else {
        Ok(Target { url: format!("tcp://{addr}"), endpoint: Endpoint::Tcp(addr.to_string()), priority, weight })
    }
}

fn source_of(u: &UpstreamConfig) -> Source {
    if let (Some(service), Some(registry)) = (&u.service, &u.registry) {
        return Source::Registry { service: service.clone(), registry: registry.clone() };
    }
    let urls = u.targets();
    let (names, fixed): (Vec<String>, Vec<String>) = urls.into_iter().partition(|s| s.starts_with("srv://"));
    if names.is_empty() {
        Source::Static(fixed)
    } else {
        Source::Srv { names, fixed }
    }
}

impl Pool {
    fn new(name: &str, config: &UpstreamConfig) -> Pool {
        let seed = {
            let mut b = [0u8; 8];
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
            u64::from_le_bytes(b) | 1
        };
        let pool = Pool {
            name: name.to_string(),
            config: config.clone(),
            source: source_of(config),
            members: RwLock::new(Vec::new()),
            refresh_at: Mutex::new(None),
            refresh_error: Mutex::new(None),
            rng: AtomicU64::new(seed),
        };
        if let Source::Static(urls) = &pool.source {
            let mut members = Vec::new();
            let mut errors = Vec::new();
            for url in urls {
                match static_target(config, url) {
                    Ok(t) => members.push(Arc::new(Member::new(t.url, t.endpoint, t.priority, t.weight))),
                    Err(e) => errors.push(format!("{url}: {e}")),
                }
            }
            *pool.members.write().unwrap_or_else(|e| e.into_inner()) = members;
            if !errors.is_empty() {
                *pool.refresh_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(errors.join("; "));
            }
        }
        pool
    }

    pub(crate) fn members(&self) -> Vec<Arc<Member>> {
        self.members.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn random(&self) -> u64 {
        // xorshift64*: unpredictability is not needed, only spread.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A member drawn at random in proportion to its weight (weight 0
    /// counts as a small chance, as RFC 2782 asks).
    fn draw<'a>(&self, from: &[&'a Arc<Member>]) -> Option<&'a Arc<Member>> {
        let w = |m: &Arc<Member>| u64::from(m.weight) * 100 + 1;
        let total: u64 = from.iter().map(|m| w(m)).sum();
        if total == 0 {
            return None;
        }
        let mut r = self.random() % total;
        for m in from {
            if r < w(m) {
                return Some(m);
            }
            r -= w(m);
        }
        from.last().copied()
    }

    /// The member a new connection should go to: healthy, best priority,
    /// the less loaded (per weight) of two drawn at random; never one in
    /// `tried`.
    pub(crate) fn pick(&self, tried: &[Arc<Member>]) -> Result<Lease, String> {
        let members = self.members();
        let healthy: Vec<&Arc<Member>> =
            members.iter().filter(|m| m.is_healthy() && !tried.iter().any(|t| Arc::ptr_eq(t, m))).collect();
        let Some(best) = healthy.iter().map(|m| m.priority).min() else {
            return Err(self.why_none(&members, !tried.is_empty()));
        };
        let candidates: Vec<&Arc<Member>> = healthy.into_iter().filter(|m| m.priority == best).collect();
        let a = self.draw(&candidates);
        let b = self.draw(&candidates);
        let load = |m: &Arc<Member>| {
            (u128::from(m.active.load(Ordering::Acquire)) << 16) / u128::from(u64::from(m.weight).max(1))
        };
        let chosen = match (a, b) {
            (Some(a), Some(b)) if load(b) < load(a) => b,
            (Some(a), _) => a,
            _ => return Err(self.why_none(&members, !tried.is_empty())),
        };
        Ok(Lease::new(chosen.clone()))
    }

    fn why_none(&self, members: &[Arc<Member>], after_retries: bool) -> String {
        let refresh = self.refresh_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if members.is_empty() {
            return match refresh {
                Some(e) => format!("upstream {:?} has no server: {e}", self.name),
                None => format!("upstream {:?} has no server", self.name),
            };
        }
        let down: Vec<String> = members
            .iter()
            .map(|m| format!("{} ({})", m.url, m.last_error().unwrap_or_else(|| "failed just now".into())))
            .collect();
        let what = if after_retries { "no other healthy server" } else { "no healthy server" };
        format!("upstream {:?} has {what}: {}", self.name, down.join("; "))
    }

    /// True if a new connection could be placed now.
    pub(crate) fn healthy(&self) -> bool {
        self.members().iter().any(|m| m.is_healthy())
    }

    /// Asks a dynamic source again if its time has come; keeps the state
    /// of members that stay.
    async fn refresh(&self, dns: &Dns, timeout: Duration) {
        let due = self.refresh_at.lock().unwrap_or_else(|e| e.into_inner()).is_none_or(|t| Instant::now() >= t);
        if !due || matches!(self.source, Source::Static(_)) {
            return;
        }
        let found = match &self.source {
            Source::Static(_) => return,
            Source::Registry { service, registry } => self.ask_registry(service, registry, timeout).await,
            Source::Srv { names, fixed } => self.ask_dns(dns, names, fixed, timeout).await,
        };
        let (targets, next) = match found {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(upstream = %self.name, error = %e, "cannot refresh the upstream's servers");
                *self.refresh_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                // Keep the members we had; try again next round.
                *self.refresh_at.lock().unwrap_or_else(|e| e.into_inner()) = None;
                return;
            }
        };
        *self.refresh_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.refresh_at.lock().unwrap_or_else(|e| e.into_inner()) = next;
        let old = self.members();
        let mut members = Vec::with_capacity(targets.len());
        for t in targets.into_iter().take(MAX_MEMBERS) {
            match old.iter().find(|m| m.url == t.url && m.priority == t.priority && m.weight == t.weight) {
                Some(m) => members.push(m.clone()),
                None => {
                    let m = Member::new(t.url, t.endpoint, t.priority, t.weight);
                    // Discovered members are checked before they are used.
                    m.healthy.store(false, Ordering::Release);
                    *m.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some("not checked yet".into());
                    members.push(Arc::new(m));
                }
            }
        }
        let (added, removed) = (
            members.iter().filter(|m| !old.iter().any(|o| Arc::ptr_eq(o, m))).count(),
            old.iter().filter(|o| !members.iter().any(|m| Arc::ptr_eq(o, m))).count(),
        );
        if added + removed > 0 {
            tracing::info!(upstream = %self.name, servers = members.len(), added, removed, "upstream servers changed");
        }
        *self.members.write().unwrap_or_else(|e| e.into_inner()) = members;
    }

    async fn ask_registry(
        &self,
        service: &str,
        registry: &str,
        timeout: Duration,
    ) -> Result<(Vec<Target>, Option<Instant>), String> {
        let client = match registry.strip_prefix("tcp://") {
            Some(addr) => crate::registry::RegistryClient::tcp(addr),
            None => crate::registry::RegistryClient::udp(registry.strip_prefix("udp://").unwrap_or(registry)),
        }
        .map_err(|e| e.to_string())?
        .timeout(timeout.min(Duration::from_secs(5)));
        let found = client.discover(service).await.map_err(|e| format!("registry {registry}: {e}"))?;
        let usable: Vec<_> = found.into_iter().filter(|a| self.config.registry_hosts.contains(&a.host)).collect();
        if usable.is_empty() {
            return Err(format!(
                "registry {registry} knows no server for service {service:?} on an allowed host ({})",
                self.config.registry_hosts.join(", ")
            ));
        }
        let targets = usable
            .iter()
            .map(|a| found_target(&self.config, &a.host, &a.to_string(), 0, 1))
            .collect::<Result<Vec<_>, _>>()?;
        // Asked again every round: a registry has no TTL.
        Ok((targets, None))
    }

    async fn ask_dns(
        &self,
        dns: &Dns,
        names: &[String],
        fixed: &[String],
        timeout: Duration,
    ) -> Result<(Vec<Target>, Option<Instant>), String> {
        let mut targets = Vec::new();
        for url in fixed {
            targets.push(static_target(&self.config, url)?);
        }
        let mut next: Option<Instant> = None;
        for url in names {
            let name = crate::transport::srv::parse_srv_url(url).unwrap_or(url);
            let answer = tokio::time::timeout(timeout, dns.resolver()?.lookup(name))
                .await
                .map_err(|_| format!("DNS: no answer for {name} within {timeout:?}"))?
                .map_err(|e| e.to_string())?;
            next = Some(next.map_or(answer.valid_until, |n| n.min(answer.valid_until)));
            for t in &answer.targets {
                // 0.0.0.0 and :: reach the gateway host's own services:
                // never an upstream a DNS answer may name.
                for addr in t.addrs.iter().filter(|a| !a.ip().is_unspecified()) {
                    targets.push(found_target(&self.config, &t.host, &addr.to_string(), t.priority, t.weight)?);
                }
            }
        }
        Ok((targets, next))
    }
}

/// The DNS resolver for SRV sources: the configured nameservers, else the
/// system's.
pub(crate) struct Dns {
    nameservers: Vec<std::net::SocketAddr>,
    resolver: Mutex<Option<crate::transport::srv::SrvResolver>>,
}

impl Dns {
    fn new(nameservers: Vec<std::net::SocketAddr>) -> Dns {
        Dns { nameservers, resolver: Mutex::new(None) }
    }

    fn resolver(&self) -> Result<crate::transport::srv::SrvResolver, String> {
        let mut r = self.resolver.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = &*r {
            return Ok(r.clone());
        }
        let made = if self.nameservers.is_empty() {
            crate::transport::srv::SrvResolver::system().map_err(|e| e.to_string())?
        } else {
            crate::transport::srv::SrvResolver::with_nameservers(&self.nameservers)
        };
        *r = Some(made.clone());
        Ok(made)
    }
}

/// Every upstream's pool, refreshed and checked by one health task.
pub(crate) struct Pools {
    pools: RwLock<BTreeMap<String, Arc<Pool>>>,
    dns: RwLock<Arc<Dns>>,
    /// Wakes the health task early (an ejection, a reload).
    pub wake: tokio::sync::Notify,
}

impl Pools {
    pub(crate) fn new(config: &GatewayConfig) -> Pools {
        let pools = Pools {
            pools: RwLock::new(BTreeMap::new()),
            dns: RwLock::new(Arc::new(Dns::new(config.dns.socket_addrs().unwrap_or_default()))),
            wake: tokio::sync::Notify::new(),
        };
        pools.sync(config);
        pools
    }

    /// Brings the pools in line with a (new) configuration: an upstream
    /// whose settings did not change keeps its pool and members' health.
    pub(crate) fn sync(&self, config: &GatewayConfig) {
        let mut pools = self.pools.write().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::take(&mut *pools);
        for (name, u) in &config.upstreams {
            let pool = match old.get(name) {
                Some(p) if p.config == *u => p.clone(),
                _ => Arc::new(Pool::new(name, u)),
            };
            pools.insert(name.clone(), pool);
        }
        let ns = config.dns.socket_addrs().unwrap_or_default();
        let mut dns = self.dns.write().unwrap_or_else(|e| e.into_inner());
        if dns.nameservers != ns {
            *dns = Arc::new(Dns::new(ns));
        }
        drop(pools);
        self.wake.notify_one();
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<Pool>> {
        self.pools.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    fn all(&self) -> Vec<Arc<Pool>> {
        self.pools.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Refreshes every dynamic source that is due, then checks every member
    /// at once.
    pub(crate) async fn round(&self, timeout: Duration) {
        let dns = self.dns.read().unwrap_or_else(|e| e.into_inner()).clone();
        let pools = self.all();
        let mut refreshes = tokio::task::JoinSet::new();
        for p in &pools {
            let (p, dns) = (p.clone(), dns.clone());
            refreshes.spawn(async move { p.refresh(&dns, timeout).await });
        }
        while refreshes.join_next().await.is_some() {}
        let mut checks = tokio::task::JoinSet::new();
        for p in pools {
            for m in p.members() {
                let p = p.clone();
                checks.spawn(async move {
                    match m.check(p.config.protocol, timeout).await {
                        Ok(()) => m.restore(&p.name),
                        Err(e) => m.eject(&p.name, &format!("health check: {e}")),
                    }
                });
            }
        }
        while checks.join_next().await.is_some() {}
    }

    /// Runs health rounds every `interval` (earlier when woken) until
    /// `stop` turns true.
    pub(crate) async fn run(
        self: Arc<Self>,
        settings: impl Fn() -> (Duration, Duration),
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let (interval, timeout) = settings();
            let started = Instant::now();
            self.round(timeout).await;
            let next = started + interval;
            let woken = tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => false,
                _ = self.wake.notified() => true,
                _ = stop.wait_for(|s| *s) => return,
            };
            if woken {
                tokio::time::sleep_until((started + MIN_ROUND_GAP).into()).await;
            }
        }
    }

    /// `(upstream, why)` for each routed upstream without a healthy server.
    pub(crate) fn unhealthy(&self, config: &GatewayConfig) -> Vec<(String, String)> {
        let routed: Vec<&str> = if config.routes.is_empty() {
            config.upstreams.keys().map(String::as_str).collect()
        } else {
            config.routes.iter().map(|r| r.upstream.as_str()).collect()
        };
        let mut out = Vec::new();
        for name in routed {
            if out.iter().any(|(n, _)| n == name) {
                continue;
            }
            if let Some(p) = self.get(name) {
                if !p.healthy() {
                    out.push((name.to_string(), p.why_none(&p.members(), false)));
                }
            }
        }
        out
    }

    /// Per-upstream gauges and counters in the Prometheus text format.
    pub(crate) fn render(&self, s: &mut String) {
        let pools = self.all();
        let families: [Family; 4] = [
            ("rpyc_gateway_upstream_healthy", "1 if the server passed its last check.", "gauge", |m| {
                u64::from(m.is_healthy())
            }),
            (
                "rpyc_gateway_upstream_connections_active",
                "Client connections relayed to the server now.",
                "gauge",
                |m| m.active.load(Ordering::Relaxed),
            ),
            ("rpyc_gateway_upstream_connections_total", "Client connections relayed to the server.", "counter", |m| {
                m.connections.load(Ordering::Relaxed)
            }),
            (
                "rpyc_gateway_upstream_check_failures_total",
                "Failed health checks and connection attempts.",
                "counter",
                |m| m.failures.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, kind, get) in families {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for p in &pools {
                for m in p.members() {
                    let _ = writeln!(
                        s,
                        "{name}{{upstream=\"{}\",server=\"{}\"}} {}",
                        label(&p.name),
                        label(&m.url),
                        get(&m)
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            "# HELP rpyc_gateway_upstream_servers_healthy Healthy servers per upstream.\n\
             # TYPE rpyc_gateway_upstream_servers_healthy gauge"
        );
        for p in &pools {
            let n = p.members().iter().filter(|m| m.is_healthy()).count();
            let _ = writeln!(s, "rpyc_gateway_upstream_servers_healthy{{upstream=\"{}\"}} {n}", label(&p.name));
        }
    }
}

/// A per-server metric family: name, help, type, value.
type Family = (&'static str, &'static str, &'static str, fn(&Member) -> u64);

/// A Prometheus label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The health settings of a configuration: (interval, check timeout).
pub(crate) fn settings(config: &GatewayConfig) -> (Duration, Duration) {
    (secs(config.health.interval_secs), secs(config.health.timeout_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(urls: &[&str]) -> Pool {
        let mut u = UpstreamConfig::url(urls[0]);
        u.url = None;
        u.urls = urls.iter().map(|s| s.to_string()).collect();
        Pool::new("p", &u)
    }

    #[test]
    fn picks_only_healthy_members_and_spreads_load() {
        let p = pool(&["tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3"]);
        let ms = p.members();
        ms[0].eject("p", "refused");
        let mut leases = Vec::new();
        for _ in 0..300 {
            let l = p.pick(&[]).unwrap_or_else(|e| panic!("{e}"));
            assert!(!Arc::ptr_eq(&l.0, &ms[0]), "a down member was picked");
            leases.push(l);
        }
        let (a, b) = (ms[1].active.load(Ordering::Relaxed), ms[2].active.load(Ordering::Relaxed));
        assert_eq!(a + b, 300);
        // Power of two choices keeps the two within a few of each other.
        assert!(a.abs_diff(b) <= 10, "{a} vs {b}");
        drop(leases);
        assert_eq!(ms[1].active.load(Ordering::Relaxed), 0);
        ms[1].eject("p", "refused");
        ms[2].eject("p", "timed out");
        let e = p.pick(&[]).err().unwrap_or_default();
        assert!(e.contains("no healthy server") && e.contains("refused") && e.contains("timed out"), "{e}");
        ms[2].restore("p");
        assert!(Arc::ptr_eq(&p.pick(&[]).unwrap_or_else(|e| panic!("{e}")).0, &ms[2]));
        let e = p.pick(&[ms[2].clone()]).err().unwrap_or_default();
        assert!(e.contains("no other healthy server"), "{e}");
    }

    #[test]
    fn prefers_the_best_priority_and_follows_weights() {
        let p = pool(&["tcp://127.0.0.1:1"]);
        let mk = |port: u16, priority, weight| {
            Arc::new(Member::new(
                format!("tcp://127.0.0.1:{port}"),
                Endpoint::Tcp(format!("127.0.0.1:{port}")),
                priority,
                weight,
            ))
        };
        *p.members.write().unwrap_or_else(|e| e.into_inner()) = vec![mk(1, 10, 1), mk(2, 20, 1), mk(3, 20, 3)];
        let ms = p.members();
        for _ in 0..50 {
            assert!(Arc::ptr_eq(&p.pick(&[]).unwrap_or_else(|e| panic!("{e}")).0, &ms[0]));
        }
        ms[0].eject("p", "down");
        let mut leases = Vec::new();
        for _ in 0..400 {
            leases.push(p.pick(&[]).unwrap_or_else(|e| panic!("{e}")));
        }
        let (light, heavy) = (ms[1].active.load(Ordering::Relaxed), ms[2].active.load(Ordering::Relaxed));
        // Weight 3 against 1: load per weight evens out near 100 / 300.
        assert!((70..=130).contains(&light) && (270..=330).contains(&heavy), "{light} / {heavy}");
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
