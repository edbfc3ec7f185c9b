//! Layer 1: finding servers through DNS SRV records (RFC 2782).
//!
//! Service registries publish where a service runs as SRV records: Consul
//! answers `_rpyc._tcp.service.consul`, a Kubernetes headless service with a
//! named port answers `_rpyc._tcp.my-svc.my-ns.svc.cluster.local`. Each
//! record names a target host and port with a *priority* (lower is tried
//! first; higher priorities are fallbacks) and a *weight* (how load is
//! shared among targets of one priority). Python rpyc has no equivalent —
//! its registry (`rpyc/utils/registry.py`, our [`crate::registry`]) is a
//! separate UDP/TCP protocol — so this module is what lets a client or the
//! gateway follow the same records every other service in the cluster uses.
//!
//! - [`SrvResolver::lookup`] asks for the records and resolves each target's
//!   addresses; the [`SrvAnswer`] says until when it is valid (the smallest
//!   TTL of the records, clamped to [1 s, 1 h]) so a long-lived user re-asks
//!   when the registry may have changed its mind.
//! - [`SrvAnswer::ordered`] is the RFC 2782 order to try targets in.
//! - [`Endpoint::Srv`](super::Endpoint::Srv) (`srv://_rpyc._tcp.example.com`)
//!   connects to the first target that accepts, over TCP ([`connect`]) or
//!   TLS ([`connect_tls`], with the `tls` feature).
//!
//! The resolver speaks plain DNS over UDP and TCP (hickory-resolver without
//! DNS-over-TLS or DNSSEC, so no second crypto stack). It caches answers only
//! for their TTL (at most an hour; failures for at most 5 s), so asking again
//! after [`SrvAnswer::valid_until`] reaches the DNS server.
//!
//! Everything in a DNS answer is untrusted input: at most
//! [`MAX_TARGETS`] targets are kept, and a lookup never panics, whatever
//! the name or the answer.

#[cfg(feature = "tls")]
use super::tls;
use super::{connect_tcp, BoxStream, QuickAck, TcpOptions};
use crate::error::{Error, Result};
use crate::identity::Credentials;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts, ServerOrderingStrategy,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The most targets one answer keeps (the lowest priorities win). A DNS
/// answer over TCP can list thousands; nobody needs to dial that many.
pub const MAX_TARGETS: usize = 64;

/// The shortest validity of an answer: a TTL of 0 would mean asking again
/// on every connection.
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// The longest validity of an answer: a registry that moved a service
/// should be noticed within the hour, whatever TTL it published.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// How long a failed lookup (no such name, no records) is cached, so a
/// service that appears is seen quickly.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// Bounds a whole lookup (SRV query plus the targets' addresses), whatever
/// the resolver's own timeouts and retries add up to.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(30);

/// `srv://_rpyc._tcp.example.com` → `_rpyc._tcp.example.com` (a trailing
/// `/` is dropped); `None` if `url` is not an `srv://` URL.
pub fn parse_srv_url(url: &str) -> Option<&str> {
    url.strip_prefix("srv://").map(|rest| rest.trim_end_matches('/'))
}

/// A resolver for `_service._proto.name` SRV records.
///
/// Cloning is cheap and shares the cache.
#[derive(Clone)]
pub struct SrvResolver {
    /// The resolver, or why it could not be built.
    inner: std::result::Result<Arc<TokioResolver>, Arc<str>>,
    /// The nameservers asked; `None` for the system's.
    servers: Option<Arc<[SocketAddr]>>,
}

impl fmt::Debug for SrvResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrvResolver").field("servers", &self.describe()).finish_non_exhaustive()
    }
}

/// Two resolvers are equal when they ask the same servers.
impl PartialEq for SrvResolver {
    fn eq(&self, other: &SrvResolver) -> bool {
        self.servers == other.servers
    }
}

impl Eq for SrvResolver {}

/// Cache bounds shared by both constructors (see the module docs).
fn tune(opts: &mut ResolverOpts) {
    opts.positive_max_ttl = Some(MAX_TTL);
    opts.negative_max_ttl = Some(NEGATIVE_TTL);
}

impl SrvResolver {
    /// The system resolver (`/etc/resolv.conf` on Unix, the registry on
    /// Windows), with its search domains, timeouts and attempts.
    pub fn system() -> Result<SrvResolver> {
        let mut builder = TokioResolver::builder_tokio().map_err(|e| {
            Error::Connect(format!(
                "cannot read the system DNS configuration (/etc/resolv.conf): {e}: name the DNS \
                 servers instead (SrvResolver::with_nameservers, ClientBuilder::dns, rpyc --dns HOST:PORT)"
            ))
        })?;
        tune(builder.options_mut());
        let resolver =
            builder.build().map_err(|e| Error::Connect(format!("cannot start the system DNS resolver: {e}")))?;
        Ok(SrvResolver { inner: Ok(Arc::new(resolver)), servers: None })
    }

    /// Asks these nameservers (over UDP, and TCP for long answers) instead,
    /// in the order given: 2 s per query and one retry, so a server that
    /// does not answer is reported within about 4 s. No search domains:
    /// names are looked up as written.
    pub fn with_nameservers(ns: &[SocketAddr]) -> SrvResolver {
        let mut config = ResolverConfig::from_parts(None, vec![], vec![]);
        for addr in ns {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            config.add_name_server(NameServerConfig::new(addr.ip(), true, vec![udp, tcp]));
        }
        let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        let opts = builder.options_mut();
        tune(opts);
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 1;
        opts.server_ordering_strategy = ServerOrderingStrategy::UserProvidedOrder;
        let inner = match builder.build() {
            Ok(r) => Ok(Arc::new(r)),
            Err(e) => Err(Arc::from(format!("cannot start a DNS resolver for {}: {e}", list(ns)))),
        };
        SrvResolver { inner, servers: Some(Arc::from(ns)) }
    }

    /// The nameservers this resolver asks, `None` for the system's.
    pub fn nameservers(&self) -> Option<&[SocketAddr]> {
        self.servers.as_deref()
    }

    /// Who answers, for messages: `DNS server 127.0.0.1:5353` or the system's.
    fn describe(&self) -> String {
        match self.servers.as_deref() {
            None => "the system's DNS servers (/etc/resolv.conf)".into(),
            Some([one]) => format!("DNS server {one}"),
            Some(many) => format!("DNS servers {}", list(many)),
        }
    }

    /// Looks the name up: every target with its host's addresses resolved,
    /// lowest priority first (use [`SrvAnswer::ordered`] to dial).
    ///
    /// Targets whose host has no address are left out (and logged); if none
    /// is left, or there are no records, it is an error that says what to
    /// check.
    pub async fn lookup(&self, name: &str) -> Result<SrvAnswer> {
        match tokio::time::timeout(LOOKUP_DEADLINE, self.lookup_inner(name)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Connect(format!(
                "looking up SRV records for {name} took longer than {LOOKUP_DEADLINE:?}: check that {} \
                 answers",
                self.describe()
            ))),
        }
    }

    async fn lookup_inner(&self, name: &str) -> Result<SrvAnswer> {
        let resolver = match &self.inner {
            Ok(r) => r,
            Err(why) => return Err(Error::Connect(why.to_string())),
        };
        if self.servers.as_deref().is_some_and(|s| s.is_empty()) {
            return Err(Error::Connect(format!(
                "cannot look up {name}: no DNS server was given (name one, e.g. --dns 10.0.0.2:53)"
            )));
        }
        let qname = check_name(name)?;
        let lookup = resolver.srv_lookup(qname).await.map_err(|e| self.explain(name, "SRV", &e))?;
        let now = Instant::now();
        let mut ttl = u32::MAX;
        let mut records = Vec::new();
        for record in lookup.answers() {
            ttl = ttl.min(record.ttl);
            if let RData::SRV(srv) = &record.data {
                records.push((srv.priority, srv.weight, srv.port, srv.target.clone()));
            }
        }
        if records.is_empty() {
            return Err(self.no_records(name));
        }
        // RFC 2782: a single record with target "." means "decidedly not
        // available here"; a "." among others is simply skipped.
        records.retain(|r| !r.3.is_root());
        if records.is_empty() {
            return Err(Error::Connect(format!(
                "{name} says the service is not available (its SRV target is \".\"): the registry has no \
                 live instance"
            )));
        }
        // Lowest priority first (stable), each host:port once (its first,
        // i.e. best, record wins).
        records.sort_by_key(|r| r.0);
        let mut seen = std::collections::HashSet::new();
        records.retain(|r| seen.insert((r.2, r.3.clone())));
        if records.len() > MAX_TARGETS {
            tracing::warn!(name, records = records.len(), "SRV answer truncated to {MAX_TARGETS} targets");
            records.truncate(MAX_TARGETS);
        }

        // Each distinct host once, all at the same time.
        let mut hosts: Vec<Name> = records.iter().map(|r| r.3.clone()).collect();
        hosts.sort();
        hosts.dedup();
        let mut tasks = tokio::task::JoinSet::new();
        for host in hosts {
            let resolver = Arc::clone(resolver);
            tasks.spawn(async move {
                let r = resolver.lookup_ip(host.clone()).await;
                (host, r)
            });
        }
        let mut resolved = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((host, Ok(ips))) => {
                    for record in ips.as_lookup().answers() {
                        ttl = ttl.min(record.ttl);
                    }
                    resolved.push((host, Ok(ips.iter().collect::<Vec<_>>())));
                }
                Ok((host, Err(e))) => resolved.push((host, Err(e))),
                Err(e) => return Err(Error::Connect(format!("resolving the targets of {name} failed: {e}"))),
            }
        }

        let mut targets = Vec::new();
        let mut failures = Vec::new();
        for (priority, weight, port, host) in records {
            let host_text = trim_dot(&host);
            match resolved.iter().find(|(h, _)| *h == host).map(|(_, r)| r) {
                Some(Ok(ips)) if !ips.is_empty() => targets.push(SrvTarget {
                    host: host_text,
                    port,
                    priority,
                    weight,
                    addrs: ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect(),
                }),
                Some(Err(e)) => {
                    let why = self.explain(&host_text, "address", e);
                    tracing::warn!(srv = name, target = %host_text, error = %why, "SRV target skipped");
                    failures.push(format!("{host_text}:{port}: {why}"));
                }
                _ => failures.push(format!("{host_text}:{port}: no addresses")),
            }
        }
        if targets.is_empty() {
            return Err(Error::Connect(format!(
                "no target of {name} resolves to an address: {}; check the A/AAAA records of the target hosts",
                failures.join("; ")
            )));
        }
        let ttl = Duration::from_secs(u64::from(ttl)).clamp(MIN_TTL, MAX_TTL);
        Ok(SrvAnswer { targets, valid_until: now + ttl })
    }

    fn no_records(&self, name: &str) -> Error {
        Error::Connect(format!(
            "no SRV records for {name}: check the name (_service._proto.domain, e.g. _rpyc._tcp.example.com) \
             and that {} publishes it",
            self.describe()
        ))
    }

    /// A resolver error as a message that says what to do.
    fn explain(&self, name: &str, what: &str, e: &NetError) -> Error {
        let who = self.describe();
        match e {
            NetError::Dns(DnsError::NoRecordsFound(nr)) if what == "SRV" => {
                if nr.response_code == ResponseCode::NXDomain {
                    Error::Connect(format!(
                        "no SRV records for {name}: {who} answered that the name does not exist; check the \
                         name (_service._proto.domain, e.g. _rpyc._tcp.example.com)"
                    ))
                } else {
                    self.no_records(name)
                }
            }
            NetError::Dns(DnsError::NoRecordsFound(_)) => {
                Error::Connect(format!("{name} has no {what} records at {who}"))
            }
            NetError::Timeout | NetError::NoConnections | NetError::Io(_) => Error::Connect(format!(
                "{who} did not answer the {what} query for {name} ({e}): check the DNS server address and \
                 that it is reachable"
            )),
            NetError::Dns(DnsError::ResponseCode(code)) => Error::Connect(format!(
                "{who} refused the {what} query for {name} ({code}): check that it serves this domain"
            )),
            other => Error::Connect(format!("{what} lookup of {name} at {who} failed: {other}")),
        }
    }
}

/// Checks a name before it goes on the wire.
fn check_name(name: &str) -> Result<Name> {
    let bad = |why: &str| {
        Error::Connect(format!(
            "'{name}' is not a DNS name ({why}): use srv://_service._proto.domain, e.g. srv://_rpyc._tcp.example.com"
        ))
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > 253 {
        return Err(bad("longer than 253 characters"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == ':') {
        return Err(bad("spaces, '/' or ':' cannot appear in it"));
    }
    Name::from_utf8(name).map_err(|e| bad(&e.to_string()))
}

fn trim_dot(name: &Name) -> String {
    let s = name.to_utf8();
    s.strip_suffix('.').map(str::to_string).unwrap_or(s)
}

fn list(addrs: &[SocketAddr]) -> String {
    addrs.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(", ")
}

/// One target of an SRV answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvTarget {
    /// The target host, without the trailing dot (for TLS, the name its
    /// certificate must carry).
    pub host: String,
    /// The port the service listens on.
    pub port: u16,
    /// Lower is tried first.
    pub priority: u16,
    /// Among targets of one priority, the share of connections.
    pub weight: u16,
    /// The host's addresses, with `port` (never empty).
    pub addrs: Vec<SocketAddr>,
}

/// What [`SrvResolver::lookup`] found.
#[derive(Clone, Debug)]
pub struct SrvAnswer {
    /// The targets, lowest priority first (within one, as the answer listed them).
    pub targets: Vec<SrvTarget>,
    /// When to ask again: the smallest TTL of the SRV and address records,
    /// clamped to [`MIN_TTL`]..=[`MAX_TTL`].
    pub valid_until: Instant,
}

impl SrvAnswer {
    /// RFC 2782 order: lowest priority first; within a priority, weighted
    /// random (a target of weight `w` comes first with probability
    /// `w / total`; weight 0 can still be chosen, least often). Each call
    /// draws a new order.
    pub fn ordered(&self) -> Vec<SrvTarget> {
        let mut rng = Rng::seeded();
        order(&self.targets, |n| rng.below(n))
    }
}

/// RFC 2782 ordering with `pick(n)` returning a uniform number in `0..n`.
fn order(targets: &[SrvTarget], mut pick: impl FnMut(u64) -> u64) -> Vec<SrvTarget> {
    let mut sorted: Vec<SrvTarget> = targets.to_vec();
    // Stable: within a priority, weight-0 targets first (the RFC's
    // arrangement), otherwise the order of the answer.
    sorted.sort_by_key(|t| (t.priority, t.weight != 0));
    let mut out = Vec::with_capacity(sorted.len());
    let mut rest = sorted.as_slice();
    while let Some(first) = rest.first() {
        let end = rest.iter().position(|t| t.priority != first.priority).unwrap_or(rest.len());
        let (mut group, tail) = (rest[..end].to_vec(), &rest[end..]);
        rest = tail;
        while !group.is_empty() {
            let total: u64 = group.iter().map(|t| u64::from(t.weight)).sum();
            let index = if total == 0 {
                // Only weight-0 targets left: any of them, evenly.
                usize::try_from(pick(group.len() as u64)).unwrap_or(0).min(group.len() - 1)
            } else {
                // A number in 0..=total; the first target whose running sum
                // reaches it (r == 0 picks a leading weight-0 target).
                let r = pick(total + 1);
                let mut sum = 0u64;
                group
                    .iter()
                    .position(|t| {
                        sum += u64::from(t.weight);
                        sum >= r
                    })
                    .unwrap_or(group.len() - 1)
            };
            out.push(group.remove(index));
        }
    }
    out
}

/// A small xorshift generator, seeded from the standard library's
/// per-process random keys: load sharing needs spread, not secrecy.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        use std::hash::{BuildHasher, Hasher};
        // Every RandomState has fresh keys, so each hash of the same input differs.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(0);
        Rng(h.finish() | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform enough in `0..n` (n ≤ 2^24 here, so the modulo bias is < 2^-40).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// Resolves `name` and connects over TCP to the first target, in
/// [`SrvAnswer::ordered`] order, that accepts.
pub async fn connect(name: &str, resolver: &SrvResolver, opts: &TcpOptions) -> Result<(BoxStream, Credentials)> {
    connect_first(
        name,
        resolver,
        #[cfg(feature = "tls")]
        None,
        opts,
    )
    .await
}

/// Resolves `name` and connects over TLS to the first target, in
/// [`SrvAnswer::ordered`] order, that accepts, with the target host as the
/// name its certificate must carry (unless the configuration names
/// another).
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub async fn connect_tls(
    name: &str,
    resolver: &SrvResolver,
    tls: &tls::TlsClientConfig,
    opts: &TcpOptions,
) -> Result<(BoxStream, Credentials)> {
    connect_first(name, resolver, Some(tls), opts).await
}

/// [`connect`] or, with a TLS configuration, [`connect_tls`].
async fn connect_first(
    name: &str,
    resolver: &SrvResolver,
    #[cfg(feature = "tls")] tls: Option<&tls::TlsClientConfig>,
    opts: &TcpOptions,
) -> Result<(BoxStream, Credentials)> {
    let answer = resolver.lookup(name).await?;
    let mut failures = Vec::new();
    for target in answer.ordered() {
        for addr in &target.addrs {
            #[cfg(feature = "tls")]
            let attempt = match tls {
                Some(config) => tls::connect_tls_to(*addr, &target.host, config, opts).await,
                None => connect_plain(*addr, opts).await,
            };
            #[cfg(not(feature = "tls"))]
            let attempt = connect_plain(*addr, opts).await;
            match attempt {
                Ok(done) => {
                    tracing::debug!(srv = name, target = %target.host, %addr, "connected");
                    return Ok(done);
                }
                Err(e) => {
                    tracing::debug!(srv = name, target = %target.host, %addr, error = %e, "SRV target failed");
                    failures.push(format!("{}:{} ({addr}): {e}", target.host, target.port));
                }
            }
        }
    }
    Err(Error::Connect(format!("no target of {name} accepted a connection: {}", failures.join("; "))))
}

async fn connect_plain(addr: SocketAddr, opts: &TcpOptions) -> Result<(BoxStream, Credentials)> {
    let (s, c) = connect_tcp(&addr.to_string(), opts).await?;
    Ok((Box::new(QuickAck::new(s)), c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, priority: u16, weight: u16) -> SrvTarget {
        SrvTarget { host: host.into(), port: 1, priority, weight, addrs: vec![SocketAddr::from(([127, 0, 0, 1], 1))] }
    }

    fn hosts(v: &[SrvTarget]) -> Vec<&str> {
        v.iter().map(|t| t.host.as_str()).collect()
    }

    #[test]
    fn srv_urls_parse() {
        assert_eq!(parse_srv_url("srv://_rpyc._tcp.example.com"), Some("_rpyc._tcp.example.com"));
        assert_eq!(parse_srv_url("srv://_rpyc._tcp.example.com/"), Some("_rpyc._tcp.example.com"));
        assert_eq!(parse_srv_url("srv://"), Some(""));
        assert_eq!(parse_srv_url("tcp://h:1"), None);
        assert_eq!(parse_srv_url("_rpyc._tcp.example.com"), None);
    }

    #[test]
    fn bad_names_are_refused_with_a_reason() {
        for bad in ["", "a b", "x/y", "h:1", &"a".repeat(300), "a..b", "\u{0}"] {
            let e = check_name(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("is not a DNS name"), "{bad:?}: {e}");
        }
        assert!(check_name("_rpyc._tcp.example.com").is_ok());
        assert!(check_name("_rpyc._tcp.example.com.").is_ok());
    }

    #[test]
    fn priority_first_then_weight() {
        let targets = vec![t("c", 20, 5), t("a", 10, 0), t("b", 10, 0), t("d", 30, 1)];
        for _ in 0..50 {
            let o = SrvAnswer { targets: targets.clone(), valid_until: Instant::now() }.ordered();
            let h = hosts(&o);
            assert_eq!(h.len(), 4);
            assert!(h[..2].contains(&"a") && h[..2].contains(&"b"), "{h:?}");
            assert_eq!(&h[2..], ["c", "d"]);
        }
    }

    #[test]
    fn ordering_follows_the_rfc_draw() {
        let targets = vec![t("w0", 0, 0), t("w1", 0, 1), t("w3", 0, 3)];
        // r = 0 → the weight-0 target (placed first), then among w1, w3
        // (total 4): r = 2 → running sums 1, 4 → w3.
        let mut draws = vec![0u64, 2, 0].into_iter();
        let o = order(&targets, |_| draws.next().unwrap_or(0));
        assert_eq!(hosts(&o), ["w0", "w3", "w1"]);
        // r = 1 → w1 (running sums 0, 1, 4), then of w0, w3 (total 3):
        // r = 3 → w3, and w0 last.
        let mut draws = vec![1u64, 3, 0].into_iter();
        let o = order(&targets, |_| draws.next().unwrap_or(0));
        assert_eq!(hosts(&o), ["w1", "w3", "w0"]);
    }

    #[test]
    fn weights_share_the_first_place() {
        let answer = SrvAnswer { targets: vec![t("a", 0, 1), t("b", 0, 3), t("z", 0, 0)], valid_until: Instant::now() };
        let mut first = std::collections::HashMap::new();
        let n = 20_000;
        for _ in 0..n {
            *first.entry(answer.ordered()[0].host.clone()).or_insert(0u32) += 1;
        }
        let share = |h: &str| f64::from(first.get(h).copied().unwrap_or(0)) / f64::from(n);
        // Expected 1/5, 3/5, 1/5 (r in 0..=4; r = 0 picks the weight-0 target).
        assert!((share("a") - 0.2).abs() < 0.03, "{first:?}");
        assert!((share("b") - 0.6).abs() < 0.03, "{first:?}");
        assert!(share("z") > 0.1 && share("z") < 0.3, "{first:?}");
    }

    #[test]
    fn all_zero_weights_are_spread_evenly() {
        let answer = SrvAnswer { targets: vec![t("a", 0, 0), t("b", 0, 0)], valid_until: Instant::now() };
        let a_first = (0..4000).filter(|_| answer.ordered()[0].host == "a").count();
        assert!((1600..2400).contains(&a_first), "{a_first}");
    }

    #[test]
    fn empty_nameserver_list_is_an_error_not_a_panic() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let e = rt.block_on(SrvResolver::with_nameservers(&[]).lookup("_rpyc._tcp.x")).unwrap_err();
        assert!(e.to_string().contains("no DNS server was given"), "{e}");
    }
}
