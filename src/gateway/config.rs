//! The gateway's configuration file (`gateway.toml`).
//!
//! ```toml
//! [[listen]]                          # mutual TLS: the certificate CN is the identity
//! url = "tls://0.0.0.0:18821"
//! tls = "certs"                       # ca.pem (client CA), server.pem, server.key
//!                                     # (files rewritten on disk are picked up by themselves)
//!
//! [[listen]]                          # behind HAProxy (`send-proxy-v2`): workload identities
//! name = "mesh"
//! url = "tls://127.0.0.1:18822"       # reachable by the proxy only
//! cert = "/run/spiffe/svid.pem"       # e.g. written by spiffe-helper
//! key = "/run/spiffe/svid_key.pem"
//! client_ca = "/run/spiffe/bundle.pem"
//! proxy_protocol = true               # the client address comes from the PROXY header
//! identity_from = "uri-san"           # spiffe://example.org/billing is the identity
//!
//! [[listen]]                          # embedded SSH: the identity the key is bound to
//! url = "ssh://0.0.0.0:2222"
//! host_key = "gateway_host_key"       # created on first start
//! authorized_keys = "keys/%u"         # one file per user: keys/alice logs in as alice only
//!                                     # or one file, every line bound:
//!                                     # identity="alice" ssh-ed25519 AAAA...
//!
//! [[listen]]                          # TCP with challenge-response (shared secrets);
//! url = "tcp://127.0.0.1:18830"       # loopback only: plain TCP could be relayed
//! secrets = "secrets.toml"            # identity = "secret", one per line
//!
//! [upstream.classic]                  # one server, typically on loopback
//! url = "tcp://127.0.0.1:18812"
//!
//! [upstream.calc]                     # a pool: each new connection goes to a
//! urls = ["tcp://10.0.0.5:18812",     # healthy server (power of two choices)
//!         "tcp://10.0.0.6:18812"]
//!
//! [upstream.batch]                    # servers found through DNS SRV (Consul, a
//! url = "srv://_rpyc._tcp.batch.example.com"  # Kubernetes headless service), re-resolved at the TTL
//!
//! [upstream.legacy]                   # found through the registry by service name
//! service = "CALCULATOR"
//! registry = "127.0.0.1"
//!
//! [[route]]                           # first match wins
//! groups = ["admins"]
//! upstream = "classic"
//! [[route]]
//! groups = ["batch"]
//! upstream = "batch"
//! [[route]]
//! upstream = "calc"                   # no conditions: everyone else
//!
//! [health]                            # every 5 s, connect + RPyC PING to every
//! interval_secs = 5                   # server; a failing one gets no new clients
//! timeout_secs = 2
//!
//! [dns]                               # for srv:// upstreams; default: the system resolver
//! nameservers = ["10.0.0.2:53"]
//!
//! [groups]                            # identity -> groups
//! alice = ["admins"]
//! "spiffe://example.org/billing" = ["admins"]
//!
//! [policy]                            # or policy_file = "policy.toml"
//! [policy.policies.admin]
//! classic = true
//! [policy.groups]
//! admins = "admin"
//!
//! [limits]
//! drain_timeout_secs = 30
//!
//! [audit]
//! format = "json"                     # "text" (tracing) or "json" (one object per line)
//! file = "audit.jsonl"                # json only; default: stdout
//!
//! [metrics]
//! listen = "127.0.0.1:9108"           # GET /metrics, GET /healthz (503: an upstream has no healthy server)
//! ```
//!
//! Relative paths are relative to the configuration file's directory.

use super::policy::GatewayPolicySet;
use crate::auth::IdentityFrom;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// The whole gateway configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// Where clients connect (at least one).
    #[serde(rename = "listen", default)]
    pub listeners: Vec<ListenerConfig>,
    /// The RPyC servers behind the gateway, by name.
    #[serde(rename = "upstream", default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Which identities reach which upstream; first match wins. Default:
    /// none, which is allowed only with a single upstream (everyone reaches it).
    #[serde(rename = "route", default)]
    pub routes: Vec<RouteConfig>,
    /// Identity → groups, for routes and policies. Default: none.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// The policies, inline. Default: the safe default for everyone.
    #[serde(default)]
    pub policy: GatewayPolicySet,
    /// Load the policies from this file instead (re-read on reload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_file: Option<PathBuf>,
    /// Frame, decoding, connection and time limits.
    #[serde(default)]
    pub limits: Limits,
    /// The audit trail.
    #[serde(default)]
    pub audit: AuditConfig,
    /// The metrics and health endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Active health checks of the upstream servers.
    #[serde(default)]
    pub health: HealthConfig,
    /// The DNS servers for `srv://` upstreams.
    #[serde(default)]
    pub dns: DnsConfig,
}

/// Active health checks: every `interval_secs`, each upstream server is
/// connected to and must answer an RPyC PING within `timeout_secs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthConfig {
    /// Seconds between checks. Default: 5.
    pub interval_secs: f64,
    /// Seconds a check may take (connect and PING). Default: 2.
    pub timeout_secs: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig { interval_secs: 5.0, timeout_secs: 2.0 }
    }
}

/// Which DNS servers resolve `srv://` upstreams.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DnsConfig {
    /// `HOST:PORT` of each nameserver (IP addresses). Default: none, which
    /// means the system resolver (`/etc/resolv.conf`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
}

impl DnsConfig {
    /// The nameservers as socket addresses.
    pub fn socket_addrs(&self) -> Result<Vec<std::net::SocketAddr>, ConfigError> {
        self.nameservers
            .iter()
            .map(|n| {
                n.parse().map_err(|_| {
                    ConfigError(format!("dns.nameservers: {n:?} is not IP:PORT (e.g. \"10.0.0.2:53\" or \"[::1]:53\")"))
                })
            })
            .collect()
    }
}

/// One listener.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ListenerConfig {
    /// A name for routes and logs. Default: the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `tls://host:port`, `ssh://host:port`, `tcp://host:port` or
    /// `unix:///path` (port 0 picks a free one).
    pub url: String,
    /// tls: a certificate directory holding `ca.pem` (the CA client
    /// certificates must be signed by), `server.pem` and `server.key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<PathBuf>,
    /// tls: the server certificate chain (instead of `tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// tls: the server key (instead of `tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// tls: the CA for client certificates (instead of `tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// ssh: the host key file (created on first start if missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<PathBuf>,
    /// ssh: the authorized_keys file: `keys/%u` (one file per user name),
    /// or one file whose every key line starts with `identity="NAME"`; the
    /// gateway refuses to start with a shared file that has an unbound key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorized_keys: Option<PathBuf>,
    /// tcp/unix: a TOML file of `identity = "secret"` for challenge–response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<PathBuf>,
    /// Only these identities may connect here. Default: every authenticated one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// tls/tcp: every connection starts with a PROXY protocol header (v1
    /// or v2, as HAProxy's `send-proxy` / `send-proxy-v2`, AWS NLB or Envoy
    /// write it), and the client's address is taken from it for the audit
    /// trail, logs and `max_connections_per_peer`; a connection without a
    /// valid header is refused. Default: false — whoever connects writes
    /// the header, so enable it only where nothing but the proxy can reach
    /// the port.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
    /// tls: which part of the client certificate is the identity: `"cn"`
    /// (the subject's common name), `"uri-san"` (its one URI SAN, e.g. a
    /// SPIFFE ID) or `"dns-san"` (its one DNS SAN). A certificate with none
    /// or several is refused. Default: `"cn"`.
    #[serde(default, skip_serializing_if = "is_cn")]
    pub identity_from: IdentityFrom,
}

fn is_cn(f: &IdentityFrom) -> bool {
    *f == IdentityFrom::Cn
}

impl ListenerConfig {
    /// The listener's name (its URL unless named).
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.url)
    }
}

/// Which RPyC wire format to speak to an upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Protocol {
    /// Whatever the client speaks. The default.
    #[default]
    Auto,
    /// rpyc 6.x.
    Rpyc6,
    /// rpyc 5.x (the gateway translates for 6.x clients, and back).
    Rpyc5,
}

/// One upstream RPyC server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct UpstreamConfig {
    /// One server: `tcp://host:port`, `unix:///path`, `tls://host:port`,
    /// or `srv://_rpyc._tcp.NAME` (every target of the DNS SRV record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Several servers (a pool), each as `url`: new client connections go
    /// to a healthy one (see [`HealthConfig`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Instead of `url`: a service name to look up in the registry at each
    /// connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The registry for `service`: `host[:port]` (UDP) or `tcp://host[:port]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// Servers found through the registry are used only on these hosts.
    /// Default: loopback (`127.0.0.1`, `::1`, `localhost`) — a registry is
    /// unauthenticated, and anyone who can register could otherwise draw
    /// authenticated clients to their own server.
    #[serde(default = "loopback")]
    pub registry_hosts: Vec<String>,
    /// tls (or a server found through `srv://` or the registry, which is
    /// then reached over TLS): the CA that signed the upstream's
    /// certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// tls: the gateway's client certificate for the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// tls: the key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// tls: the name the upstream certificate must carry, if not the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Wire format. Default: auto (the client's).
    #[serde(default)]
    pub protocol: Protocol,
}

fn loopback() -> Vec<String> {
    vec!["127.0.0.1".into(), "::1".into(), "localhost".into()]
}

impl UpstreamConfig {
    /// An upstream at a URL.
    pub fn url(url: impl Into<String>) -> UpstreamConfig {
        UpstreamConfig {
            url: Some(url.into()),
            urls: Vec::new(),
            service: None,
            registry: None,
            registry_hosts: loopback(),
            ca: None,
            cert: None,
            key: None,
            server_name: None,
            protocol: Protocol::Auto,
        }
    }

    /// A pool of servers at these URLs.
    pub fn urls<S: Into<String>>(urls: impl IntoIterator<Item = S>) -> UpstreamConfig {
        let mut u = UpstreamConfig::url("");
        u.url = None;
        u.urls = urls.into_iter().map(Into::into).collect();
        u
    }

    /// Every URL given (`url`, then `urls`).
    pub fn targets(&self) -> Vec<String> {
        self.url.iter().chain(&self.urls).cloned().collect()
    }

    /// A description for logs: the URLs or `service NAME via REGISTRY`.
    pub fn describe(&self) -> String {
        match (self.targets(), &self.service) {
            (t, _) if !t.is_empty() => t.join(", "),
            (_, Some(s)) => format!("service {s} via registry {}", self.registry.as_deref().unwrap_or("?")),
            _ => "?".into(),
        }
    }
}

/// A route: identities (by name, group, or listener) → an upstream. Every
/// non-empty condition must hold; an empty route matches everyone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteConfig {
    /// Identities this route is for. Default: any.
    #[serde(default)]
    pub identities: Vec<String>,
    /// Groups (any of) this route is for. Default: any.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Listener names this route is for. Default: any.
    #[serde(default)]
    pub listeners: Vec<String>,
    /// The upstream's name.
    pub upstream: String,
}

impl RouteConfig {
    /// True if a connection matches.
    pub fn matches(&self, identity: &str, groups: &[String], listener: &str) -> bool {
        (self.identities.is_empty() || self.identities.iter().any(|i| i == identity))
            && (self.groups.is_empty() || self.groups.iter().any(|g| groups.contains(g)))
            && (self.listeners.is_empty() || self.listeners.iter().any(|l| l == listener))
    }
}

/// Gateway-wide limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Limits {
    /// Largest frame accepted from either side, in bytes. Default: 64 MiB.
    pub max_frame: usize,
    /// Largest payload after inflating a compressed frame. Default: 64 MiB.
    pub max_inflated: usize,
    /// Deepest brine nesting accepted, counting the message envelope.
    /// Default: 300 (values nested 256 deep pass, as between Python peers).
    pub max_depth: usize,
    /// Most requests one client connection may have awaiting replies.
    /// Default: 4096.
    pub max_pending: usize,
    /// Most client connections at once. Default: 10,000.
    pub max_connections: usize,
    /// Most client connections from one IP address. Default: 1,000.
    pub max_connections_per_peer: usize,
    /// Deadline for the transport handshake and authentication, in seconds.
    /// Default: 5.
    pub auth_timeout_secs: f64,
    /// Deadline for reaching an upstream (connect, TLS, and the root), in
    /// seconds. Default: 10.
    pub upstream_timeout_secs: f64,
    /// How long shutdown waits for calls in flight, in seconds. Default: 30.
    pub drain_timeout_secs: f64,
    /// Most values (each a Python object on the upstream) in one message a
    /// client sends on. The gateway relays values without building them;
    /// a Python server builds every one (~100 bytes each), so a 64 KB
    /// compressed frame of ten million small tuples would cost it a
    /// gigabyte. Default: 1,000,000 (a `bytes` or `str` of any size is one).
    pub max_values: u64,
    /// Most work building frozensets a client message may cost the
    /// upstream, as the sum of their squared sizes: Python ints hash to
    /// themselves, so a set of `n` colliding members costs `n²` comparisons
    /// while the interpreter lock is held. Default: 1,000,000 (one set of
    /// 1,000 members, or a hundred of 100).
    pub max_set_work: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 64 << 20,
            max_inflated: 64 << 20,
            max_depth: 300,
            max_pending: 4096,
            max_connections: 10_000,
            max_connections_per_peer: 1_000,
            auth_timeout_secs: 5.0,
            upstream_timeout_secs: 10.0,
            drain_timeout_secs: 30.0,
            max_values: 1_000_000,
            max_set_work: 1_000_000,
        }
    }
}

pub(crate) fn secs(v: f64) -> Duration {
    Duration::try_from_secs_f64(v).unwrap_or(Duration::from_secs(1))
}

/// Audit trail format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum AuditFormat {
    /// Tracing events at info level, target `rpyc::gateway::audit`. The default.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The audit trail: one record per client request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AuditConfig {
    /// Text (tracing) or JSON lines. Default: text.
    pub format: AuditFormat,
    /// For JSON: append to this file. Default: standard output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// The HTTP endpoint for `/metrics` (Prometheus) and `/healthz`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MetricsConfig {
    /// `host:port` to serve on. Default: none (no endpoint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

impl GatewayConfig {
    /// The common case: one listener, one upstream, one policy set.
    pub fn simple(listen: ListenerConfig, upstream: UpstreamConfig, policy: GatewayPolicySet) -> GatewayConfig {
        GatewayConfig {
            listeners: vec![listen],
            upstreams: [("upstream".to_string(), upstream)].into(),
            policy,
            ..GatewayConfig::default()
        }
    }

    /// Parses TOML; relative paths are taken relative to `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<GatewayConfig, ConfigError> {
        if let Ok(table) = text.parse::<toml::Table>() {
            if let Some(toml::Value::Table(p)) = table.get("policy") {
                super::policy::check_removed(p, "[policy]").map_err(ConfigError)?;
            }
        }
        let mut c: GatewayConfig =
            toml::from_str(text).map_err(|e| ConfigError(format!("invalid gateway configuration: {e}")))?;
        c.resolve_paths(base_dir);
        if let Some(p) = &c.policy_file {
            if c.policy != GatewayPolicySet::default() {
                return err("give the policies either inline ([policy]) or as policy_file, not both");
            }
            c.policy = GatewayPolicySet::load(p).map_err(ConfigError)?;
        }
        c.validate()?;
        Ok(c)
    }

    /// Loads a configuration file.
    pub fn load(path: &Path) -> Result<GatewayConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read gateway configuration {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(path) = p {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        };
        for l in &mut self.listeners {
            for p in [
                &mut l.tls,
                &mut l.cert,
                &mut l.key,
                &mut l.client_ca,
                &mut l.host_key,
                &mut l.authorized_keys,
                &mut l.secrets,
            ] {
                fix(p);
            }
        }
        for u in self.upstreams.values_mut() {
            for p in [&mut u.ca, &mut u.cert, &mut u.key] {
                fix(p);
            }
        }
        fix(&mut self.policy_file);
        fix(&mut self.audit.file);
    }

    /// Checks references and required fields (what can be checked without I/O).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return err("no listener: add at least one [[listen]] with a url");
        }
        let mut names = std::collections::BTreeSet::new();
        for l in &self.listeners {
            if !names.insert(l.display_name()) {
                return err(format!("two listeners are named {:?}", l.display_name()));
            }
            let scheme = l.url.split_once("://").map(|(s, _)| s).unwrap_or("");
            let what = format!("listener {:?}", l.display_name());
            if l.proxy_protocol && !matches!(scheme, "tls" | "tcp") {
                return err(format!(
                    "{what}: proxy_protocol is supported on tls:// and tcp:// listeners, not {scheme}://"
                ));
            }
            if l.identity_from != IdentityFrom::Cn && scheme != "tls" {
                return err(format!(
                    "{what}: identity_from applies to tls:// listeners (client certificates), not {scheme}://"
                ));
            }
            match scheme {
                "tls" => {
                    if l.tls.is_none() && (l.cert.is_none() || l.key.is_none() || l.client_ca.is_none()) {
                        return err(format!(
                            "{what}: TLS needs tls = CERTDIR (ca.pem, server.pem, server.key) or cert, key \
                             and client_ca (client certificates are required)"
                        ));
                    }
                }
                "ssh" => {
                    if l.host_key.is_none() || l.authorized_keys.is_none() {
                        return err(format!("{what}: SSH needs host_key and authorized_keys"));
                    }
                }
                "tcp" | "unix" => {
                    if l.secrets.is_none() {
                        return err(format!(
                            "{what}: plain {scheme}:// needs secrets = FILE for challenge-response \
                             (the gateway serves authenticated identities only)"
                        ));
                    }
                    if scheme == "tcp" && !loopback_url(&l.url) {
                        return err(format!(
                            "{what}: challenge-response over plain TCP must listen on loopback (127.0.0.1, \
                             [::1], localhost): without TLS anyone on the path can relay the exchange and \
                             read the traffic; listen on loopback or unix://, or use tls:// or ssh:// for \
                             remote clients"
                        ));
                    }
                }
                _ => {
                    return err(format!(
                        "{what}: unsupported url {:?}: use tls://host:port, ssh://host:port, \
                         tcp://host:port or unix:///path",
                        l.url
                    ))
                }
            }
        }
        if self.upstreams.is_empty() {
            return err("no upstream: add an [upstream.NAME] with a url");
        }
        for (name, u) in &self.upstreams {
            let targets = u.targets();
            match (targets.is_empty(), &u.service) {
                (false, None) => {
                    for url in &targets {
                        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
                        if !matches!(scheme, "tcp" | "unix" | "tls" | "srv") {
                            return err(format!(
                                "upstream {name:?}: unsupported url {url:?}: use tcp://host:port, unix:///path, \
                                 tls://host:port or srv://_service._tcp.name"
                            ));
                        }
                        if scheme == "tls" && u.ca.is_none() {
                            return err(format!(
                                "upstream {name:?}: tls:// needs ca (the CA of the upstream's certificate)"
                            ));
                        }
                        if scheme == "srv" && url.trim_start_matches("srv://").trim_matches('.').is_empty() {
                            return err(format!("upstream {name:?}: {url:?} names no SRV record"));
                        }
                    }
                    if targets.len() > super::pool::MAX_MEMBERS {
                        return err(format!(
                            "upstream {name:?}: {} urls; a pool has at most {} servers",
                            targets.len(),
                            super::pool::MAX_MEMBERS
                        ));
                    }
                }
                (true, Some(_)) => {
                    if u.registry.is_none() {
                        return err(format!("upstream {name:?}: service needs registry = \"host[:port]\""));
                    }
                }
                _ => return err(format!("upstream {name:?}: give url (or urls) or service, not both and not neither")),
            }
            if u.cert.is_some() != u.key.is_some() {
                return err(format!("upstream {name:?}: cert and key go together"));
            }
        }
        if self.routes.is_empty() && self.upstreams.len() > 1 {
            return err("several upstreams but no [[route]]: say which identities reach which upstream");
        }
        for r in &self.routes {
            if !self.upstreams.contains_key(&r.upstream) {
                return err(format!("a route names upstream {:?}, which is not defined", r.upstream));
            }
            for l in &r.listeners {
                if !names.contains(l.as_str()) {
                    return err(format!("a route names listener {l:?}, which is not defined"));
                }
            }
        }
        self.policy.validate("in the gateway configuration").map_err(ConfigError)?;
        let l = &self.limits;
        for (what, v) in [
            ("auth_timeout_secs", l.auth_timeout_secs),
            ("upstream_timeout_secs", l.upstream_timeout_secs),
            ("drain_timeout_secs", l.drain_timeout_secs),
        ] {
            if !(0.0..1e9).contains(&v) {
                return err(format!("limits.{what} must be a number of seconds"));
            }
        }
        for (what, v) in
            [("health.interval_secs", self.health.interval_secs), ("health.timeout_secs", self.health.timeout_secs)]
        {
            if !(0.05..1e6).contains(&v) {
                return err(format!("{what} must be a number of seconds (at least 0.05)"));
            }
        }
        self.dns.socket_addrs()?;
        if self.audit.file.is_some() && self.audit.format != AuditFormat::Json {
            return err("audit.file needs audit.format = \"json\" (text records go to the log)");
        }
        Ok(())
    }

    /// The upstream for a connection, by the routes (or the only upstream).
    pub fn route(&self, identity: &str, groups: &[String], listener: &str) -> Option<&str> {
        if self.routes.is_empty() {
            return self.upstreams.keys().next().map(String::as_str);
        }
        self.routes.iter().find(|r| r.matches(identity, groups, listener)).map(|r| r.upstream.as_str())
    }
}

/// True if a `tcp://host:port` url names a loopback host.
fn loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => rest.rsplit_once(':').map_or(rest, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let text = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").strip_prefix(' ').unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let c = GatewayConfig::from_toml(&text, dir.path()).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.listeners.len(), 4);
        assert_eq!(c.listeners[0].tls.as_deref(), Some(dir.path().join("certs").as_path()));
        assert!(c.listeners[1].proxy_protocol && !c.listeners[0].proxy_protocol);
        assert_eq!(
            (c.listeners[1].identity_from, c.listeners[0].identity_from),
            (IdentityFrom::UriSan, IdentityFrom::Cn)
        );
        let spiffe = "spiffe://example.org/billing";
        assert_eq!(c.route(spiffe, &c.groups[spiffe], "mesh"), Some("classic"));
        assert_eq!(c.route("alice", &["admins".to_string()], "x"), Some("classic"));
        assert_eq!(c.route("bob", &[], "x"), Some("calc"));
        assert!(c.policy.resolve(Some("alice"), &["admins".to_string()]).1.classic);
    }

    #[test]
    fn challenge_response_listens_on_loopback_only() {
        let base = Path::new("/tmp");
        let text = |url: &str| {
            format!("[[listen]]\nurl = \"{url}\"\nsecrets = \"s\"\n[upstream.a]\nurl = \"tcp://127.0.0.1:1\"\n")
        };
        for url in ["tcp://0.0.0.0:1", "tcp://192.168.1.1:1", "tcp://[::]:1", "tcp://example.com:1"] {
            let e = GatewayConfig::from_toml(&text(url), base).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("must listen on loopback") && e.contains("relay"), "{url}: {e}");
        }
        for url in ["tcp://127.0.0.1:1", "tcp://[::1]:1", "tcp://localhost:1", "unix:///tmp/gw.sock"] {
            assert!(GatewayConfig::from_toml(&text(url), base).is_ok(), "{url}");
        }
    }

    #[test]
    fn mistakes_are_explained() {
        let base = Path::new("/tmp");
        for (text, want) in [
            ("", "no listener"),
            ("[[listen]]\nurl = \"tls://x:1\"\n", "TLS needs"),
            ("[[listen]]\nurl = \"tcp://x:1\"\n", "challenge-response"),
            ("[[listen]]\nurl = \"tls://x:1\"\ntls = \"c\"\n", "no upstream"),
            (
                "[[listen]]\nurl = \"tls://x:1\"\ntls = \"c\"\n[upstream.a]\nurl = \"http://x\"\n",
                "unsupported url",
            ),
            (
                "[[listen]]\nurl = \"tls://x:1\"\ntls = \"c\"\n[upstream.a]\nurl = \"tcp://x:1\"\n[[route]]\nupstream = \"b\"\n",
                "not defined",
            ),
            ("[[listen]]\nurl = \"tls://x:1\"\ntls = \"c\"\nbogus = 1\n", "bogus"),
            (
                "[[listen]]\nurl = \"tls://x:1\"\ntls = \"c\"\n[upstream.a]\nurl = \"tcp://x:1\"\nservice = \"S\"\nregistry = \"r\"\n",
                "not both",
            ),
            (
                "[[listen]]\nurl = \"tls://x:1\"\ntls = \"c\"\n[upstream.a]\nurls = [\"tcp://x:1\", \"ftp://y\"]\n",
                "unsupported url \"ftp://y\"",
            ),
            (
                "[[listen]]\nurl = \"tls://x:1\"\ntls = \"c\"\n[upstream.a]\nurl = \"srv://\"\n",
                "names no SRV record",
            ),
            (
                "[[listen]]\nurl = \"tls://x:1\"\ntls = \"c\"\n[upstream.a]\nurl = \"tcp://x:1\"\n[dns]\nnameservers = [\"ns1:53\"]\n",
                "is not IP:PORT",
            ),
            (
                "[[listen]]\nurl = \"tls://x:1\"\ntls = \"c\"\n[upstream.a]\nurl = \"tcp://x:1\"\n[health]\ninterval_secs = 0\n",
                "health.interval_secs",
            ),
            ("[[listen]]\nurl = \"tls://x:1\"\ntls = \"c\"\nidentity_from = \"email\"\n", "unknown variant `email`"),
            (
                "[[listen]]\nurl = \"ssh://x:1\"\nhost_key = \"k\"\nauthorized_keys = \"a\"\nproxy_protocol = true\n",
                "proxy_protocol is supported on tls:// and tcp://",
            ),
            (
                "[[listen]]\nurl = \"unix:///x\"\nsecrets = \"s\"\nidentity_from = \"uri-san\"\n",
                "identity_from applies to tls://",
            ),
        ] {
            let e = GatewayConfig::from_toml(text, base).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
