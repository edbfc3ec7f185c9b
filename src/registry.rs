//! Layer 5: service registry and discovery (mirrors `rpyc/utils/registry.py`,
//! the `rpyc_registry` script and the discovery half of
//! `rpyc/utils/factory.py`).
//!
//! A registry maps service names to the servers that expose them. Servers
//! announce themselves every minute ([`Registrar`]); clients ask where a
//! service runs ([`discover`], [`connect_by_service`]). The Python and Rust
//! sides are interchangeable in every role: a Python server can register
//! with a [`RegistryServer`], a Rust [`Registrar`] with `rpyc_registry`, and
//! `rpyc.discover` finds either.
//!
//! # The protocol
//!
//! Each request is one brine value `("RPYC", command, args)` — a UDP
//! datagram of at most [`MAX_DGRAM_SIZE`] bytes, or the whole content of a
//! short-lived TCP connection (the client writes the request, the registry
//! writes the reply and closes):
//!
//! | command | args | reply |
//! |---|---|---|
//! | `QUERY` | `(name,)` | `((host, port), …)`, oldest registration first |
//! | `LIST` | `((filter_host,),)` | `(name, …)`, or `None` when listing is off |
//! | `REGISTER` | `((alias, …), port)` | `"OK"` |
//! | `UNREGISTER` | `(port,)` | `"OK"` |
//!
//! Names are upper-cased by the registry. The host of a registration is the
//! *source address* of the request, which is why a server binds its
//! registration socket to the address it listens on
//! ([`RegistryClient::bind_ip`]). Entries not refreshed within the pruning
//! timeout (default 4 minutes) are dropped.
//!
//! # Hostile input
//!
//! The registry listens on the network and keeps state for whoever writes to
//! it, so it treats every request as hostile: a datagram longer than 1500
//! bytes, a value that is not a well-formed request, or brine nested deeper
//! than a request ever is, is dropped and logged (warnings are rate-limited,
//! so a flood cannot flood the log too). The table is bounded
//! ([`RegistryConfig::max_entries`], [`RegistryConfig::max_entries_per_host`],
//! [`RegistryConfig::max_aliases`], [`RegistryConfig::max_name_len`]): when
//! it is full, stale entries are pruned and, if that is not enough, the
//! registration is refused without a reply, so the registrar retries later.
//! TCP requests get [`RegistryConfig::tcp_timeout`] to arrive and at most
//! [`RegistryConfig::max_tcp_connections`] are served at once.
//!
//! UDP has no handshake, so a UDP registry answers whoever a datagram
//! *claims* to come from. To keep it from amplifying a spoofed flood, a UDP
//! reply is at most [`UDP_REPLY_FACTOR`] (3) times the size of its request,
//! or [`UDP_REPLY_FLOOR`] (128) bytes, whichever is more: a QUERY of 143
//! bytes gets at most 429, a LIST of 16 bytes at most 128. A reply that
//! had to leave servers or names out carries what fits, written with
//! brine's long tuple header (Python's loader reads it as the same tuple);
//! a Rust client sees the mark and logs that a TCP registry gives the whole
//! answer. TCP replies (a completed handshake proves the address) keep
//! Python's sizes: 1500 bytes for QUERY, 15000 for LIST.
//!
//! What no limit fixes: anyone can register any name from an address they
//! can send from. The registry is a directory for a trusted network, as in
//! Python; authenticate the servers you find (TLS, SSH), not the registry.
//! Bind it to the address of that network, or to `127.0.0.1` when
//! everything runs on one host: `rpyc registry` listens on `0.0.0.0` by
//! default, as Python's `rpyc_registry` does, so broadcasts reach it.
//!
//! # Differences from Python
//!
//! - LIST also prunes stale entries (Python lists them until a QUERY for the
//!   name prunes them) and names services in alphabetical order.
//! - Ports must be integers 0–65535 (a Python server on a Unix socket
//!   registers its path as the "port"; such a registration is dropped).
//! - The limits above; Python's registry has none.
//! - [`connect_by_service`] tries the newest registration first, Python the
//!   oldest.

use crate::client::ClientBuilder;
use crate::connection::Connection;
use crate::wire::brine::{self, BrineError, DecodeLimits};
use crate::wire::{Int, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// The registry's well-known port (UDP and TCP).
pub const REGISTRY_PORT: u16 = 18811;
/// The largest request a registry reads (Python's `MAX_DGRAM_SIZE`).
pub const MAX_DGRAM_SIZE: usize = 1500;
/// A UDP reply is at most this many times the size of its request…
pub const UDP_REPLY_FACTOR: usize = 3;
/// …or this many bytes, whichever is more (a Python `QUERY` of a 10-letter
/// name is 26 bytes; 128 bytes answer it with 7 servers, a `LIST` with
/// about 8 names).
pub const UDP_REPLY_FLOOR: usize = 128;
/// How long an entry lives without a refresh (Python's `DEFAULT_PRUNING_TIMEOUT`).
pub const DEFAULT_PRUNING_TIMEOUT: Duration = Duration::from_secs(4 * 60);
/// How often a server re-registers (Python's `REREGISTER_INTERVAL`).
pub const REREGISTER_INTERVAL: Duration = Duration::from_secs(60);
/// The largest LIST reply: what Python's UDP client reads.
const MAX_LIST_REPLY: usize = MAX_DGRAM_SIZE * 10;
/// The largest reply a Rust client accepts.
const MAX_REPLY: usize = 64 * 1024;
/// How long a client waits by default (Python's `timeout=2`).
const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Full prunes of the table run at most this often.
const MIN_PRUNE_INTERVAL: Duration = Duration::from_secs(1);
/// At most one warning about dropped requests per this interval.
const DROP_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Brine limits for requests: a request is 3 levels deep and tiny.
fn request_limits() -> DecodeLimits {
    DecodeLimits { max_depth: 4, max_items: 256, max_int_digits: 20, ..DecodeLimits::default() }
}

/// Brine limits for replies: shallow, but a LIST may name many services.
fn reply_limits() -> DecodeLimits {
    DecodeLimits { max_depth: 4, max_items: 100_000, max_int_digits: 20, ..DecodeLimits::default() }
}

// ---------------------------------------------------------------------------
// errors and small types
// ---------------------------------------------------------------------------

/// What went wrong talking to (or running) a registry.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Nothing answered before the timeout.
    #[error(
        "no registry answered at {registry} within {timeout:?} (is a registry running there? start one \
         with `rpyc registry` or `rpyc_registry`)"
    )]
    NoReply {
        /// The registry asked, e.g. `udp://127.0.0.1:18811`.
        registry: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The registry answered, but no server exposes the service.
    #[error("no servers exposing {} were found (registry {registry})", py_str(name))]
    NotFound {
        /// The service asked for.
        name: String,
        /// The registry asked.
        registry: String,
    },
    /// The registry refuses LIST.
    #[error(
        "the registry at {registry} does not allow listing (start it with `rpyc registry --allow-listing` \
         or `rpyc_registry -l true`)"
    )]
    ListingDisabled {
        /// The registry asked.
        registry: String,
    },
    /// Every server the registry named refused the connection.
    #[error("all {} servers exposing {} are down: {}", attempts.len(), py_str(name), describe_attempts(attempts))]
    AllDown {
        /// The service asked for.
        name: String,
        /// Each server tried and why connecting failed.
        attempts: Vec<(ServerAddr, String)>,
    },
    /// Sending to or reaching the registry failed.
    #[error("cannot reach the registry at {registry}: {source}")]
    Io {
        /// The registry.
        registry: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// A registry server could not bind its socket.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The registry's reply is not what the protocol says.
    #[error("invalid reply from the registry at {registry}: {reason}")]
    BadReply {
        /// The registry.
        registry: String,
        /// What was wrong.
        reason: String,
    },
    /// A request that is not valid (decoding on the server side, or a
    /// request a client refuses to send).
    #[error("malformed registry request: {0}")]
    BadRequest(String),
    /// An address that cannot be parsed.
    #[error("bad registry address {addr:?}: {reason}")]
    BadAddress {
        /// The text given.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A name as Python's `repr()` shows it, as Python's error messages do.
fn py_str(s: &str) -> String {
    Value::from(s).repr()
}

fn describe_attempts(attempts: &[(ServerAddr, String)]) -> String {
    attempts.iter().map(|(a, e)| format!("{a} ({e})")).collect::<Vec<_>>().join(", ")
}

impl From<RegistryError> for crate::Error {
    fn from(e: RegistryError) -> crate::Error {
        crate::Error::Transport(e.to_string())
    }
}

/// A server as the registry knows it: the host it registered from and its port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerAddr {
    /// The host, usually an IP address as text.
    pub host: String,
    /// The server's TCP port.
    pub port: u16,
}

impl ServerAddr {
    /// A server address.
    pub fn new(host: impl Into<String>, port: u16) -> ServerAddr {
        ServerAddr { host: host.into(), port }
    }
}

impl fmt::Display for ServerAddr {
    /// `host:port`, or `[v6]:port`: what [`crate::connect`] takes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

// ---------------------------------------------------------------------------
// the protocol (pure)
// ---------------------------------------------------------------------------

/// One registry request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// Which servers expose `name`?
    Query {
        /// The service name or alias (any case).
        name: String,
    },
    /// Which services are registered (optionally: by this host)?
    List {
        /// Only services with a server on this host.
        filter_host: Option<String>,
    },
    /// The sender serves these aliases on `port`.
    Register {
        /// Service names.
        aliases: Vec<String>,
        /// The server's TCP port.
        port: u16,
    },
    /// The sender no longer serves on `port`.
    Unregister {
        /// The server's TCP port.
        port: u16,
    },
}

impl Request {
    /// The request as Python's registry client builds it.
    pub fn to_value(&self) -> Value {
        let (cmd, args) = match self {
            Request::Query { name } => ("QUERY", Value::Tuple(vec![Value::from(name.as_str())])),
            Request::List { filter_host } => (
                "LIST",
                Value::Tuple(vec![Value::Tuple(vec![filter_host.as_deref().map(Value::from).unwrap_or(Value::None)])]),
            ),
            Request::Register { aliases, port } => (
                "REGISTER",
                Value::Tuple(vec![
                    Value::Tuple(aliases.iter().map(|a| Value::from(a.as_str())).collect()),
                    Value::from(*port),
                ]),
            ),
            Request::Unregister { port } => ("UNREGISTER", Value::Tuple(vec![Value::from(*port)])),
        };
        Value::Tuple(vec![Value::from("RPYC"), Value::from(cmd), args])
    }

    /// The brine bytes of the request.
    pub fn encode(&self) -> Vec<u8> {
        brine::encode(&self.to_value())
    }

    /// Decodes and validates a request (strictly: anything Python's
    /// registry would reject or misinterpret is an error).
    pub fn decode(data: &[u8]) -> Result<Request, RegistryError> {
        if data.len() > MAX_DGRAM_SIZE {
            return Err(bad(format!("{} bytes exceed the {MAX_DGRAM_SIZE}-byte limit", data.len())));
        }
        let v = brine::decode(data, &request_limits()).map_err(|e| bad(format!("not brine: {e}")))?;
        Request::from_value(&v)
    }

    /// Validates a decoded request value.
    pub fn from_value(v: &Value) -> Result<Request, RegistryError> {
        let [magic, cmd, args] = v.as_tuple().unwrap_or_default() else {
            return Err(bad(format!("expected (\"RPYC\", command, args), got a {}", v.type_name())));
        };
        if magic.as_str() != Some("RPYC") {
            return Err(bad(format!("invalid magic {}", short_repr(magic))));
        }
        let Some(cmd) = cmd.as_str() else {
            return Err(bad(format!("the command is a {}, not a str", cmd.type_name())));
        };
        let Some(args) = args.as_tuple() else {
            return Err(bad(format!("the {cmd} arguments are a {}, not a tuple", args.type_name())));
        };
        // Python dispatches on `cmd.lower()`.
        match (cmd.to_ascii_lowercase().as_str(), args) {
            ("query", [Value::Str(name)]) => Ok(Request::Query { name: name.clone() }),
            ("query", _) => Err(bad("QUERY takes (name,)".into())),
            ("list", [filter]) => {
                let filter_host = match filter {
                    Value::Tuple(t) => match t.as_slice() {
                        [Value::None] => None,
                        [Value::Str(h)] => Some(h.clone()).filter(|h| !h.is_empty()),
                        _ => return Err(bad("LIST takes ((filter_host,),)".into())),
                    },
                    Value::None => None,
                    _ => return Err(bad("LIST takes ((filter_host,),)".into())),
                };
                Ok(Request::List { filter_host })
            }
            ("list", _) => Err(bad("LIST takes ((filter_host,),)".into())),
            ("register", [Value::Tuple(names), port]) => {
                let port = port_of(port)?;
                let mut aliases = Vec::with_capacity(names.len());
                for n in names {
                    match n {
                        Value::Str(s) => aliases.push(s.clone()),
                        other => return Err(bad(format!("REGISTER alias is a {}, not a str", other.type_name()))),
                    }
                }
                Ok(Request::Register { aliases, port })
            }
            ("register", _) => Err(bad("REGISTER takes ((alias, ...), port)".into())),
            ("unregister", [port]) => Ok(Request::Unregister { port: port_of(port)? }),
            ("unregister", _) => Err(bad("UNREGISTER takes (port,)".into())),
            _ => Err(bad(format!("unknown command {}", short_repr(&Value::from(cmd))))),
        }
    }
}

fn bad(reason: String) -> RegistryError {
    RegistryError::BadRequest(reason)
}

fn port_of(v: &Value) -> Result<u16, RegistryError> {
    match v {
        Value::Int(Int::Small(p)) => u16::try_from(*p).map_err(|_| bad(format!("port {p} is out of range"))),
        other => Err(bad(format!("the port is {}, not an integer", short_repr(other)))),
    }
}

/// A repr cut to 60 characters, for logs about hostile input.
fn short_repr(v: &Value) -> String {
    let r = v.repr();
    if r.chars().count() > 60 {
        format!("{}…", r.chars().take(60).collect::<String>())
    } else {
        r
    }
}

// ---------------------------------------------------------------------------
// the table (pure)
// ---------------------------------------------------------------------------

/// Registry server settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RegistryConfig {
    /// Entries not refreshed for this long are dropped. Default: 240 s, as
    /// Python (servers refresh every 60 s).
    pub pruning_timeout: Duration,
    /// Answer LIST. Default: false, as Python — a list tells anyone who
    /// asks what runs where.
    pub allow_listing: bool,
    /// Most (name, server) entries in the table. Default: 10,000 (about
    /// 2 MB at the longest names).
    pub max_entries: usize,
    /// Most entries registered from one IP address. Default: 1,000.
    pub max_entries_per_host: usize,
    /// Most aliases in one REGISTER. Default: 16 (a service has one or two).
    pub max_aliases: usize,
    /// Longest service name, in characters. Default: 128.
    pub max_name_len: usize,
    /// TCP: how long a client may take to send its request. Default: 3 s,
    /// Python's `TCPRegistryServer.TIMEOUT`.
    pub tcp_timeout: Duration,
    /// TCP: most requests handled at once; more connections are closed
    /// unanswered. Default: 64.
    pub max_tcp_connections: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            pruning_timeout: DEFAULT_PRUNING_TIMEOUT,
            allow_listing: false,
            max_entries: 10_000,
            max_entries_per_host: 1_000,
            max_aliases: 16,
            max_name_len: 128,
            tcp_timeout: Duration::from_secs(3),
            max_tcp_connections: 64,
        }
    }
}

type Key = (IpAddr, u16);

/// The registry's state: who serves what, and when they last said so.
///
/// Every operation a single datagram can trigger costs at most the entries
/// of one name or one server, except a full prune, which runs at most once
/// per [`MIN_PRUNE_INTERVAL`] however many requests arrive.
#[derive(Default)]
struct Table {
    services: BTreeMap<String, HashMap<Key, Instant>>,
    /// The names each server is registered under (for UNREGISTER).
    by_server: HashMap<Key, BTreeSet<String>>,
    total: usize,
    per_host: HashMap<IpAddr, usize>,
    last_prune: Option<Instant>,
}

impl Table {
    fn remove(&mut self, name: &str, key: Key, why: &str) -> bool {
        let Some(servers) = self.services.get_mut(name) else {
            return false;
        };
        if servers.remove(&key).is_none() {
            return false;
        }
        if servers.is_empty() {
            self.services.remove(name);
        }
        if let Some(names) = self.by_server.get_mut(&key) {
            names.remove(name);
            if names.is_empty() {
                self.by_server.remove(&key);
            }
        }
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_host.get_mut(&key.0) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_host.remove(&key.0);
            }
        }
        tracing::info!(service = name, server = %ServerAddr::new(key.0.to_string(), key.1), "service {why}");
        true
    }

    fn prune(&mut self, now: Instant, timeout: Duration) {
        self.last_prune = Some(now);
        let stale: Vec<(String, Key)> = self
            .services
            .iter()
            .flat_map(|(name, servers)| {
                servers
                    .iter()
                    .filter(|(_, t)| now.saturating_duration_since(**t) > timeout)
                    .map(move |(k, _)| (name.clone(), *k))
            })
            .collect();
        for (name, key) in stale {
            self.remove(&name, key, "pruned (no refresh within the pruning timeout)");
        }
    }

    /// Prunes if the last full prune is older than `every` (and never more
    /// often than [`MIN_PRUNE_INTERVAL`]).
    fn prune_if_due(&mut self, now: Instant, timeout: Duration, every: Duration) {
        let every = every.max(MIN_PRUNE_INTERVAL);
        if self.last_prune.is_none_or(|t| now.saturating_duration_since(t) >= every) {
            self.prune(now, timeout);
        }
    }

    /// Adds or refreshes the entries; refuses the whole registration if it
    /// would break a limit even after pruning.
    fn register(
        &mut self,
        ip: IpAddr,
        aliases: &[String],
        port: u16,
        now: Instant,
        config: &RegistryConfig,
    ) -> Result<(), String> {
        let mut names: Vec<String> = aliases.iter().map(|a| a.to_uppercase()).collect();
        names.sort();
        names.dedup();
        let key = (ip, port);
        let count_new =
            |t: &Table| names.iter().filter(|n| !t.services.get(*n).is_some_and(|s| s.contains_key(&key))).count();
        let mut new = count_new(self);
        let over = |t: &Table, new: usize| {
            t.total + new > config.max_entries
                || t.per_host.get(&ip).copied().unwrap_or(0) + new > config.max_entries_per_host
        };
        if new > 0 && over(self, new) {
            // Make room from stale entries (rate-limited: a flood against a
            // full table must not turn every datagram into a full scan).
            self.prune_if_due(now, config.pruning_timeout, MIN_PRUNE_INTERVAL);
            new = count_new(self);
            if over(self, new) {
                return Err(format!(
                    "table full: {} of {} entries in use, {} of {} from {ip}",
                    self.total,
                    config.max_entries,
                    self.per_host.get(&ip).copied().unwrap_or(0),
                    config.max_entries_per_host
                ));
            }
        }
        for name in names {
            let servers = self.services.entry(name.clone()).or_default();
            if servers.insert(key, now).is_none() {
                self.by_server.entry(key).or_default().insert(name.clone());
                self.total += 1;
                *self.per_host.entry(ip).or_insert(0) += 1;
                tracing::info!(service = %name, server = %ServerAddr::new(ip.to_string(), port), "service added");
            }
        }
        Ok(())
    }

    fn unregister(&mut self, ip: IpAddr, port: u16) {
        let key = (ip, port);
        let names: Vec<String> = self.by_server.get(&key).map(|n| n.iter().cloned().collect()).unwrap_or_default();
        for name in names {
            self.remove(&name, key, "unregistered");
        }
    }

    /// Live servers of `name`, least recently refreshed first (Python's order).
    fn query(&mut self, name: &str, now: Instant, timeout: Duration) -> Vec<(Key, Instant)> {
        let name = name.to_uppercase();
        let Some(servers) = self.services.get(&name) else {
            return Vec::new();
        };
        let stale: Vec<Key> =
            servers.iter().filter(|(_, t)| now.saturating_duration_since(**t) > timeout).map(|(k, _)| *k).collect();
        for k in stale {
            self.remove(&name, k, "pruned (no refresh within the pruning timeout)");
        }
        let mut live: Vec<(Key, Instant)> =
            self.services.get(&name).map(|s| s.iter().map(|(k, t)| (*k, *t)).collect()).unwrap_or_default();
        live.sort_by_key(|(k, t)| (*t, *k));
        live
    }

    /// Names with at least one live server (on `filter_host`, if given).
    fn list(&self, filter_host: Option<&str>, now: Instant, timeout: Duration) -> Vec<String> {
        self.services
            .iter()
            .filter(|(_, servers)| {
                servers.iter().any(|((ip, _), t)| {
                    now.saturating_duration_since(*t) <= timeout && filter_host.is_none_or(|h| ip.to_string() == h)
                })
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// The registry's shared state plus the drop counter for rate-limited logs.
struct State {
    table: Table,
    drops: DropLog,
}

#[derive(Default)]
struct DropLog {
    last_warn: Option<Instant>,
    suppressed: u64,
}

impl DropLog {
    fn drop_request(&mut self, peer: SocketAddr, reason: &str) {
        let now = Instant::now();
        if self.last_warn.is_none_or(|t| now.saturating_duration_since(t) >= DROP_WARN_INTERVAL) {
            if self.suppressed > 0 {
                tracing::warn!(%peer, reason, suppressed = self.suppressed, "registry request dropped (and {} more since the last warning)", self.suppressed);
            } else {
                tracing::warn!(%peer, reason, "registry request dropped");
            }
            self.last_warn = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
            tracing::debug!(%peer, reason, "registry request dropped");
        }
    }
}

/// The most bytes a UDP reply may have for a request of `request_len`
/// bytes: [`UDP_REPLY_FACTOR`] times the request, at least
/// [`UDP_REPLY_FLOOR`], never more than `cap`. UDP has no handshake, so a
/// reply goes to whoever the request *claims* to come from; bounding it by
/// the request keeps the registry from amplifying a spoofed flood.
fn udp_reply_budget(request_len: usize, cap: usize) -> usize {
    request_len.saturating_mul(UDP_REPLY_FACTOR).max(UDP_REPLY_FLOOR).min(cap)
}

/// How a request arrived, which decides how large its reply may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// A datagram: replies bounded by [`udp_reply_budget`].
    Udp,
    /// A TCP connection (the peer completed a handshake, so its address is
    /// real): replies up to what Python's clients read.
    Tcp,
}

/// Handles one request; `None` means "drop it, send nothing".
fn handle(state: &Mutex<State>, config: &RegistryConfig, peer: SocketAddr, data: &[u8], via: Via) -> Option<Vec<u8>> {
    let budget = |cap: usize| match via {
        Via::Udp => udp_reply_budget(data.len(), cap),
        Via::Tcp => cap,
    };
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    let req = match Request::decode(data) {
        Ok(r) => r,
        Err(e) => {
            st.drops.drop_request(peer, &e.to_string());
            return None;
        }
    };
    let ip = peer.ip().to_canonical();
    let now = Instant::now();
    st.table.prune_if_due(now, config.pruning_timeout, config.pruning_timeout.min(Duration::from_secs(30)));
    tracing::debug!(%peer, ?req, "registry request");
    let reply = match req {
        Request::Query { name } => {
            let live = st.table.query(&name, now, config.pruning_timeout);
            return Some(query_reply(&live, budget(MAX_DGRAM_SIZE)));
        }
        Request::List { filter_host } => {
            if !config.allow_listing {
                tracing::debug!(%peer, "LIST refused: listing is disabled");
                Value::None
            } else {
                let names = st.table.list(filter_host.as_deref(), now, config.pruning_timeout);
                return Some(list_reply(names, budget(MAX_LIST_REPLY)));
            }
        }
        Request::Register { aliases, port } => {
            if aliases.len() > config.max_aliases {
                st.drops.drop_request(
                    peer,
                    &format!("REGISTER with {} aliases (limit {})", aliases.len(), config.max_aliases),
                );
                return None;
            }
            if let Some(long) = aliases.iter().find(|a| a.chars().count() > config.max_name_len) {
                let reason =
                    format!("service name of {} characters (limit {})", long.chars().count(), config.max_name_len);
                st.drops.drop_request(peer, &reason);
                return None;
            }
            if let Err(reason) = st.table.register(ip, &aliases, port, now, config) {
                st.drops.drop_request(peer, &format!("REGISTER refused: {reason}"));
                return None;
            }
            Value::from("OK")
        }
        Request::Unregister { port } => {
            st.table.unregister(ip, port);
            Value::from("OK")
        }
    };
    Some(brine::encode(&reply))
}

/// `((host, port), …)` in at most `budget` bytes: when there are too many
/// servers to fit, the oldest registrations are left out (the newest are
/// likeliest alive) and the reply is marked truncated (see [`encode_reply`]).
fn query_reply(live: &[(Key, Instant)], budget: usize) -> Vec<u8> {
    let mut items: Vec<Value> =
        live.iter().map(|((ip, port), _)| Value::Tuple(vec![Value::Str(ip.to_string()), Value::from(*port)])).collect();
    items.reverse();
    let (mut kept, truncated) = fit_items(items, budget);
    kept.reverse();
    if truncated {
        tracing::info!(servers = live.len(), sent = kept.len(), budget, "QUERY reply truncated to fit its size bound");
    }
    encode_reply(&kept, truncated)
}

/// `(name, …)` in at most `budget` bytes, alphabetical, marked truncated
/// when names were left out.
fn list_reply(names: Vec<String>, budget: usize) -> Vec<u8> {
    let total = names.len();
    let (kept, truncated) = fit_items(names.into_iter().map(Value::Str).collect(), budget);
    if truncated {
        tracing::info!(services = total, sent = kept.len(), budget, "LIST reply truncated to fit its size bound");
    }
    encode_reply(&kept, truncated)
}

/// The items, in order, that fit in `budget` bytes with the longest tuple
/// header (5 bytes); true if some were left out.
fn fit_items(items: Vec<Value>, budget: usize) -> (Vec<Value>, bool) {
    let mut left = budget.saturating_sub(5);
    let total = items.len();
    let mut out = Vec::new();
    for v in items {
        let size = brine::encode(&v).len();
        if size > left {
            break;
        }
        left -= size;
        out.push(v);
    }
    let truncated = out.len() < total;
    (out, truncated)
}

/// Encodes the reply tuple. A truncated one is written with brine's 4-byte
/// length tuple header whatever its length; any brine reader (Python's
/// included) loads it as the same tuple, but brine never writes that header
/// for fewer than 256 items, so a Rust client can tell "this is not
/// everything; ask over TCP" ([`reply_is_truncated`]).
fn encode_reply(items: &[Value], truncated: bool) -> Vec<u8> {
    if !truncated || items.len() >= 256 {
        return brine::encode(&Value::Tuple(items.to_vec()));
    }
    let mut out = vec![brine::TAG_TUP_L4];
    out.extend_from_slice(&(items.len() as u32).to_be_bytes());
    for v in items {
        out.extend_from_slice(&brine::encode(v));
    }
    out
}

/// True if a registry reply is a tuple marked truncated by [`encode_reply`].
fn reply_is_truncated(reply: &[u8]) -> bool {
    match reply {
        [tag, a, b, c, d, ..] if *tag == brine::TAG_TUP_L4 => u32::from_be_bytes([*a, *b, *c, *d]) < 256,
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// the server
// ---------------------------------------------------------------------------

enum Socket {
    Udp(UdpSocket),
    Tcp(TcpListener),
}

/// A registry server (Python's `UDPRegistryServer` / `TCPRegistryServer`).
///
/// ```no_run
/// use rpyc::registry::{RegistryConfig, RegistryServer};
/// # async fn demo() -> Result<(), rpyc::registry::RegistryError> {
/// let server = RegistryServer::bind_udp("0.0.0.0:18811", RegistryConfig::default()).await?;
/// let handle = server.spawn();
/// // ... later
/// handle.shutdown();
/// # Ok(()) }
/// ```
pub struct RegistryServer {
    socket: Socket,
    local_addr: SocketAddr,
    config: Arc<RegistryConfig>,
    state: Arc<Mutex<State>>,
    shutdown: watch::Sender<bool>,
}

/// Stops a running registry and inspects its table.
#[derive(Clone)]
pub struct RegistryHandle {
    shutdown: watch::Sender<bool>,
    state: Arc<Mutex<State>>,
    config: Arc<RegistryConfig>,
    local_addr: SocketAddr,
}

impl RegistryHandle {
    /// Stops the registry (its table is dropped with it).
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The live entries: each service name with its servers, oldest first.
    pub fn services(&self) -> Vec<(String, Vec<ServerAddr>)> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        st.table.prune(now, self.config.pruning_timeout);
        let names: Vec<String> = st.table.services.keys().cloned().collect();
        names
            .into_iter()
            .map(|n| {
                let servers = st
                    .table
                    .query(&n, now, self.config.pruning_timeout)
                    .into_iter()
                    .map(|((ip, port), _)| ServerAddr::new(ip.to_string(), port))
                    .collect();
                (n, servers)
            })
            .collect()
    }
}

impl RegistryServer {
    /// Binds a UDP registry (`"0.0.0.0:18811"` is Python's default).
    pub async fn bind_udp(addr: &str, config: RegistryConfig) -> Result<RegistryServer, RegistryError> {
        let sock = UdpSocket::bind(addr)
            .await
            .map_err(|source| RegistryError::Bind { addr: format!("udp://{addr}"), source })?;
        let local_addr = sock.local_addr().map_err(|source| RegistryError::Bind { addr: addr.into(), source })?;
        Ok(Self::new(Socket::Udp(sock), local_addr, config))
    }

    /// Binds a TCP registry.
    pub async fn bind_tcp(addr: &str, config: RegistryConfig) -> Result<RegistryServer, RegistryError> {
        let sock = TcpListener::bind(addr)
            .await
            .map_err(|source| RegistryError::Bind { addr: format!("tcp://{addr}"), source })?;
        let local_addr = sock.local_addr().map_err(|source| RegistryError::Bind { addr: addr.into(), source })?;
        Ok(Self::new(Socket::Tcp(sock), local_addr, config))
    }

    fn new(socket: Socket, local_addr: SocketAddr, config: RegistryConfig) -> RegistryServer {
        let (shutdown, _) = watch::channel(false);
        RegistryServer {
            socket,
            local_addr,
            config: Arc::new(config),
            state: Arc::new(Mutex::new(State { table: Table::default(), drops: DropLog::default() })),
            shutdown,
        }
    }

    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `udp://addr` or `tcp://addr`, for logs.
    pub fn describe(&self) -> String {
        match self.socket {
            Socket::Udp(_) => format!("udp://{}", self.local_addr),
            Socket::Tcp(_) => format!("tcp://{}", self.local_addr),
        }
    }

    /// A handle that stops the registry and shows its table.
    pub fn handle(&self) -> RegistryHandle {
        RegistryHandle {
            shutdown: self.shutdown.clone(),
            state: self.state.clone(),
            config: self.config.clone(),
            local_addr: self.local_addr,
        }
    }

    /// Starts serving in the background; returns the handle.
    pub fn spawn(self) -> RegistryHandle {
        let h = self.handle();
        tokio::spawn(self.run());
        h
    }

    /// Serves until the handle's [`shutdown`](RegistryHandle::shutdown).
    pub async fn run(self) {
        tracing::info!(
            listener = %self.describe(),
            pruning_timeout = ?self.config.pruning_timeout,
            allow_listing = self.config.allow_listing,
            "registry started"
        );
        let mut stop = self.shutdown.subscribe();
        match self.socket {
            Socket::Udp(sock) => serve_udp(sock, self.config, self.state, &mut stop).await,
            Socket::Tcp(listener) => serve_tcp(listener, self.config, self.state, &mut stop).await,
        }
        tracing::info!("registry stopped");
    }
}

async fn serve_udp(
    sock: UdpSocket,
    config: Arc<RegistryConfig>,
    state: Arc<Mutex<State>>,
    stop: &mut watch::Receiver<bool>,
) {
    // One byte more than allowed, to tell "exactly 1500" from "truncated".
    let mut buf = vec![0u8; MAX_DGRAM_SIZE + 1];
    loop {
        let received = tokio::select! {
            _ = crate::connection::wait_true(stop) => break,
            r = sock.recv_from(&mut buf) => r,
        };
        let (n, peer) = match received {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors from earlier replies surface here on some systems.
                tracing::debug!(error = %e, "registry recv failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if n > MAX_DGRAM_SIZE {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            st.drops.drop_request(peer, &format!("datagram larger than {MAX_DGRAM_SIZE} bytes"));
            continue;
        }
        let Some(data) = buf.get(..n) else { continue };
        if let Some(reply) = handle(&state, &config, peer, data, Via::Udp) {
            if let Err(e) = sock.send_to(&reply, peer).await {
                tracing::debug!(%peer, error = %e, "registry reply not sent");
            }
        }
    }
}

async fn serve_tcp(
    listener: TcpListener,
    config: Arc<RegistryConfig>,
    state: Arc<Mutex<State>>,
    stop: &mut watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(config.max_tcp_connections));
    loop {
        let accepted = tokio::select! {
            _ = crate::connection::wait_true(stop) => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "registry accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            st.drops.drop_request(peer, &format!("{} TCP requests already in progress", config.max_tcp_connections));
            continue;
        };
        let (config, state) = (config.clone(), state.clone());
        tokio::spawn(async move {
            let _permit = permit;
            serve_tcp_request(stream, peer, &config, &state).await;
        });
    }
}

async fn serve_tcp_request(mut stream: TcpStream, peer: SocketAddr, config: &RegistryConfig, state: &Mutex<State>) {
    let read = tokio::time::timeout(config.tcp_timeout, read_request(&mut stream)).await;
    let data = match read {
        Ok(Ok(d)) => d,
        Ok(Err(reason)) => {
            state.lock().unwrap_or_else(|p| p.into_inner()).drops.drop_request(peer, &reason);
            return;
        }
        Err(_) => {
            let reason = format!("no complete request within {:?}", config.tcp_timeout);
            state.lock().unwrap_or_else(|p| p.into_inner()).drops.drop_request(peer, &reason);
            return;
        }
    };
    if let Some(reply) = handle(state, config, peer, &data, Via::Tcp) {
        let written = tokio::time::timeout(config.tcp_timeout, async {
            stream.write_all(&reply).await?;
            stream.shutdown().await
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::debug!(%peer, "registry reply not sent");
        }
    }
}

/// Reads until the bytes form one complete brine value (Python's client
/// sends the request and waits, without closing its side), EOF, or the
/// 1500-byte limit.
async fn read_request(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut data = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| format!("read failed: {e}"))?;
        if n == 0 {
            return Ok(data);
        }
        data.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if data.len() > MAX_DGRAM_SIZE {
            return Err(format!("request larger than {MAX_DGRAM_SIZE} bytes"));
        }
        match brine::decode(&data, &request_limits()) {
            Err(BrineError::Truncated { .. }) => continue,
            _ => return Ok(data),
        }
    }
}

// ---------------------------------------------------------------------------
// the client
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum Mode {
    Udp,
    UdpBroadcast,
    Tcp,
}

/// Talks to a registry (Python's `UDPRegistryClient` / `TCPRegistryClient`).
///
/// ```no_run
/// use rpyc::registry::RegistryClient;
/// # async fn demo() -> Result<(), rpyc::registry::RegistryError> {
/// let registry = RegistryClient::udp("127.0.0.1")?; // port 18811
/// for server in registry.discover("conformance").await? {
///     println!("{server}");
/// }
/// # Ok(()) }
/// ```
///
/// Broadcasting is never implied: only [`RegistryClient::udp_broadcast`]
/// sends to `255.255.255.255`.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    mode: Mode,
    host: String,
    port: u16,
    timeout: Duration,
    bind_ip: Option<IpAddr>,
}

impl RegistryClient {
    /// UDP to one registry: `host`, `host:port` or `[v6]:port` (default
    /// port 18811). As in Python, an IPv4 address with a 255 octet (a
    /// broadcast address such as `192.168.1.255`) is sent as a broadcast,
    /// and the first registry to answer counts.
    pub fn udp(addr: &str) -> Result<RegistryClient, RegistryError> {
        let (host, port) = parse_host_port(addr)?;
        Ok(Self::with(Mode::Udp, host, port))
    }

    /// UDP broadcast to `255.255.255.255:port` (Python's default
    /// registrar). Every registry on the local network answers; the first
    /// answer counts. Needs a network that allows broadcasts.
    pub fn udp_broadcast(port: u16) -> RegistryClient {
        Self::with(Mode::UdpBroadcast, Ipv4Addr::BROADCAST.to_string(), port)
    }

    /// TCP to one registry: `host`, `host:port` or `[v6]:port` (default
    /// port 18811).
    pub fn tcp(addr: &str) -> Result<RegistryClient, RegistryError> {
        let (host, port) = parse_host_port(addr)?;
        Ok(Self::with(Mode::Tcp, host, port))
    }

    fn with(mode: Mode, host: String, port: u16) -> RegistryClient {
        RegistryClient { mode, host, port, timeout: DEFAULT_CLIENT_TIMEOUT, bind_ip: None }
    }

    /// How long to wait for a reply. Default: 2 s, as Python.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends from this local address. The registry records the source
    /// address as the server's host, so a server bound to one interface
    /// registers from it (Python passes the server's host as `interface`).
    /// Default: chosen by the operating system.
    pub fn bind_ip(mut self, ip: IpAddr) -> Self {
        self.bind_ip = Some(ip);
        self
    }

    /// `udp://host:port`, `udp-broadcast://…` or `tcp://host:port`.
    pub fn describe(&self) -> String {
        let scheme = match self.mode {
            Mode::Udp => "udp",
            Mode::UdpBroadcast => "udp-broadcast",
            Mode::Tcp => "tcp",
        };
        format!("{scheme}://{}", ServerAddr::new(self.host.clone(), self.port))
    }

    /// The servers registered for `name` (any case), oldest registration
    /// first; empty if the registry knows none. [`discover`] makes "none"
    /// an error.
    pub async fn discover(&self, name: &str) -> Result<Vec<ServerAddr>, RegistryError> {
        let reply = self.request(&Request::Query { name: name.to_string() }, MAX_DGRAM_SIZE).await?;
        let Some(items) = reply.as_tuple() else {
            return Err(self.bad_reply(format!("QUERY reply is a {}, not a tuple", reply.type_name())));
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item.as_tuple() {
                Some([Value::Str(host), Value::Int(Int::Small(port))]) => match u16::try_from(*port) {
                    Ok(port) => out.push(ServerAddr::new(host.clone(), port)),
                    Err(_) => {
                        tracing::debug!(entry = %short_repr(item), "skipping a server with an invalid port")
                    }
                },
                // A Python server on a Unix socket registers its path as the port.
                _ => {
                    tracing::debug!(entry = %short_repr(item), "skipping an entry that is not (host, port)")
                }
            }
        }
        Ok(out)
    }

    /// The registered service names (optionally only those with a server on
    /// `filter_host`). [`RegistryError::ListingDisabled`] if the registry
    /// does not allow listing.
    pub async fn list(&self, filter_host: Option<&str>) -> Result<Vec<String>, RegistryError> {
        let req = Request::List { filter_host: filter_host.map(str::to_string) };
        let reply = self.request(&req, MAX_REPLY).await?;
        match reply {
            Value::None => Err(RegistryError::ListingDisabled { registry: self.describe() }),
            Value::Tuple(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::Str(s) => Ok(s),
                    other => Err(self.bad_reply(format!("LIST reply names a {}", other.type_name()))),
                })
                .collect(),
            other => Err(self.bad_reply(format!("LIST reply is a {}, not a tuple", other.type_name()))),
        }
    }

    /// Registers `aliases` as served on `port` (from this host); succeeds
    /// when the registry acknowledges.
    pub async fn register(&self, aliases: &[String], port: u16) -> Result<(), RegistryError> {
        let req = Request::Register { aliases: aliases.to_vec(), port };
        if req.encode().len() > MAX_DGRAM_SIZE {
            return Err(RegistryError::BadRequest(format!(
                "the aliases {aliases:?} do not fit in one {MAX_DGRAM_SIZE}-byte request"
            )));
        }
        match self.request(&req, MAX_DGRAM_SIZE).await? {
            Value::Str(s) if s == "OK" => Ok(()),
            other => Err(self.bad_reply(format!("REGISTER reply is {}, not 'OK'", short_repr(&other)))),
        }
    }

    /// Removes every registration of `port` from this host. Waits for the
    /// acknowledgement (so a QUERY sent afterwards no longer sees the
    /// server), but a registry that does not answer is not an error:
    /// Python's registrar does not wait at all.
    pub async fn unregister(&self, port: u16) -> Result<(), RegistryError> {
        match self.request(&Request::Unregister { port }, MAX_DGRAM_SIZE).await {
            Ok(_) | Err(RegistryError::NoReply { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn bad_reply(&self, reason: String) -> RegistryError {
        RegistryError::BadReply { registry: self.describe(), reason }
    }

    fn io(&self, source: io::Error) -> RegistryError {
        RegistryError::Io { registry: self.describe(), source }
    }

    fn no_reply(&self) -> RegistryError {
        RegistryError::NoReply { registry: self.describe(), timeout: self.timeout }
    }

    async fn resolve(&self) -> Result<SocketAddr, RegistryError> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        let found = tokio::time::timeout(self.timeout, tokio::net::lookup_host((self.host.as_str(), self.port)))
            .await
            .map_err(|_| self.no_reply())?
            .map_err(|e| self.io(e))?;
        let all: Vec<SocketAddr> = found.collect();
        // Prefer the family of the bind address, then IPv4 (Python's client is IPv4).
        let pick = match self.bind_ip {
            Some(b) => all.iter().find(|a| a.is_ipv4() == b.is_ipv4()),
            None => all.iter().find(|a| a.is_ipv4()),
        };
        pick.or(all.first()).copied().ok_or_else(|| self.io(io::Error::other(format!("{} has no address", self.host))))
    }

    fn local_bind(&self, target: &SocketAddr) -> SocketAddr {
        match self.bind_ip {
            Some(ip) => SocketAddr::new(ip, 0),
            None if target.is_ipv4() => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            None => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        }
    }

    /// Sends one request and returns the decoded reply.
    async fn request(&self, req: &Request, max_reply: usize) -> Result<Value, RegistryError> {
        let target = self.resolve().await?;
        let data = req.encode();
        let reply = match self.mode {
            Mode::Udp | Mode::UdpBroadcast => self.udp_exchange(target, &data, max_reply).await?,
            Mode::Tcp => self.tcp_exchange(target, &data, max_reply).await?,
        };
        if reply_is_truncated(&reply) {
            tracing::warn!(
                registry = %self.describe(),
                "the registry's reply was cut to fit its UDP size bound (it limits replies to spoofable \
                 addresses); ask a TCP registry (RegistryClient::tcp, rpyc --tcp) for the full answer"
            );
        }
        brine::decode(&reply, &reply_limits()).map_err(|e| self.bad_reply(format!("not brine: {e}")))
    }

    async fn udp_exchange(&self, target: SocketAddr, data: &[u8], max_reply: usize) -> Result<Vec<u8>, RegistryError> {
        let sock = UdpSocket::bind(self.local_bind(&target)).await.map_err(|e| self.io(e))?;
        // Python broadcasts whenever an octet of the address is 255.
        let broadcast =
            self.mode == Mode::UdpBroadcast || matches!(target.ip(), IpAddr::V4(v4) if v4.octets().contains(&255));
        if broadcast {
            sock.set_broadcast(true).map_err(|e| self.io(e))?;
        }
        sock.send_to(data, target).await.map_err(|e| self.io(e))?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut buf = vec![0u8; max_reply + 1];
        loop {
            let got = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await.map_err(|_| self.no_reply())?;
            let (n, from) = match got {
                Ok(x) => x,
                // "Connection refused": an ICMP port-unreachable for our
                // datagram, i.e. nothing listens there.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Err(self.no_reply()),
                Err(e) => return Err(self.io(e)),
            };
            // Only the registry's answer counts (a broadcast is answered
            // from the registry's own address, so match the port there).
            let expected =
                from.port() == target.port() && (broadcast || from.ip().to_canonical() == target.ip().to_canonical());
            if !expected {
                tracing::debug!(%from, "ignoring a datagram that is not from the registry");
                continue;
            }
            if n > max_reply {
                return Err(self.bad_reply(format!("reply larger than {max_reply} bytes")));
            }
            return Ok(buf.get(..n).unwrap_or_default().to_vec());
        }
    }

    async fn tcp_exchange(&self, target: SocketAddr, data: &[u8], max_reply: usize) -> Result<Vec<u8>, RegistryError> {
        let exchange = async {
            let sock =
                if target.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(|e| self.io(e))?;
            if let Some(ip) = self.bind_ip {
                sock.bind(SocketAddr::new(ip, 0)).map_err(|e| self.io(e))?;
            }
            let mut stream = sock.connect(target).await.map_err(|e| self.io(e))?;
            stream.write_all(data).await.map_err(|e| self.io(e))?;
            // Python's registry reads once and answers; it never waits for our EOF.
            let mut reply = Vec::new();
            let mut chunk = [0u8; 2048];
            loop {
                let n = stream.read(&mut chunk).await.map_err(|e| self.io(e))?;
                if n == 0 {
                    break;
                }
                reply.extend_from_slice(chunk.get(..n).unwrap_or_default());
                if reply.len() > max_reply {
                    return Err(self.bad_reply(format!("reply larger than {max_reply} bytes")));
                }
            }
            if reply.is_empty() {
                // The registry closed without answering (e.g. a refused registration).
                return Err(self.no_reply());
            }
            Ok(reply)
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| self.no_reply())?
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address.
fn parse_host_port(addr: &str) -> Result<(String, u16), RegistryError> {
    let bad = |reason: &str| RegistryError::BadAddress { addr: addr.to_string(), reason: reason.to_string() };
    let addr_t = addr.trim();
    if addr_t.is_empty() {
        return Err(bad("it is empty"));
    }
    if addr_t.contains("://") {
        return Err(bad("give host or host:port without a scheme"));
    }
    let port_of = |p: &str| p.parse::<u16>().map_err(|_| bad("the port is not a number from 0 to 65535"));
    if let Some(rest) = addr_t.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => port_of(p)?,
            None if tail.is_empty() => REGISTRY_PORT,
            None => return Err(bad("unexpected text after ']'")),
        };
        return Ok((host.to_string(), port));
    }
    if addr_t.parse::<Ipv6Addr>().is_ok() {
        return Ok((addr_t.to_string(), REGISTRY_PORT));
    }
    match addr_t.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => Ok((host.to_string(), port_of(port)?)),
        Some(_) => Err(bad("no host")),
        None => Ok((addr_t.to_string(), REGISTRY_PORT)),
    }
}

// ---------------------------------------------------------------------------
// factory functions (rpyc.discover, rpyc.list_services, rpyc.connect_by_service)
// ---------------------------------------------------------------------------

/// The servers exposing `name` (Python's `rpyc.discover`):
/// [`RegistryError::NotFound`] when there are none.
pub async fn discover(registry: &RegistryClient, name: &str) -> Result<Vec<ServerAddr>, RegistryError> {
    let found = registry.discover(name).await?;
    if found.is_empty() {
        return Err(RegistryError::NotFound { name: name.to_string(), registry: registry.describe() });
    }
    Ok(found)
}

/// The registered service names (Python's `rpyc.list_services`).
pub async fn list_services(registry: &RegistryClient, filter_host: Option<&str>) -> Result<Vec<String>, RegistryError> {
    registry.list(filter_host).await
}

/// Connects to a server exposing `name` (Python's
/// `rpyc.connect_by_service`): asks the registry, then tries the servers
/// newest registration first, skipping those that refuse the connection.
///
/// ```no_run
/// use rpyc::registry::{connect_by_service, RegistryClient};
/// # async fn demo() -> rpyc::Result<()> {
/// let registry = RegistryClient::udp("127.0.0.1:18811")?;
/// let conn = connect_by_service(&registry, "conformance", rpyc::ClientBuilder::new()).await?;
/// let answer: i64 = conn.root().await?.call_method("get_answer", ()).await?;
/// # let _ = answer; Ok(()) }
/// ```
pub async fn connect_by_service(
    registry: &RegistryClient,
    name: &str,
    builder: ClientBuilder,
) -> Result<Connection, RegistryError> {
    let servers = discover(registry, name).await?;
    let mut attempts = Vec::new();
    // The newest registration is the likeliest to be alive (Python tries
    // the oldest first; a dead server that kept re-registering is rare).
    for server in servers.into_iter().rev() {
        match builder.clone().connect(&server.to_string()).await {
            Ok(conn) => {
                tracing::debug!(service = name, %server, "connected");
                return Ok(conn);
            }
            Err(e) => {
                tracing::info!(service = name, %server, error = %e, "server is down, trying the next");
                attempts.push((server, e.to_string()));
            }
        }
    }
    Err(RegistryError::AllDown { name: name.to_string(), attempts })
}

// ---------------------------------------------------------------------------
// auto-registration
// ---------------------------------------------------------------------------

/// Registrar settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RegistrarConfig {
    /// Time between refreshes once registered. Default: 60 s, as Python
    /// (a quarter of the registry's default pruning timeout).
    pub interval: Duration,
    /// First wait before retrying a failed registration; doubles up to
    /// `interval`. Default: 1 s (Python retries every second).
    pub retry: Duration,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig { interval: REREGISTER_INTERVAL, retry: Duration::from_secs(1) }
    }
}

/// Keeps a server registered: registers at once, refreshes every
/// [`RegistrarConfig::interval`], and unregisters when stopped (Python's
/// `Server(auto_register=True)`).
///
/// ```no_run
/// use rpyc::registry::{Registrar, RegistryClient};
/// use rpyc::{Server, ServerConfig};
/// # async fn demo() -> rpyc::Result<()> {
/// let service = rpyc::conformance::service();
/// let server = Server::new(service.clone(), ServerConfig::default()).bind_tcp("127.0.0.1:0").await?;
/// let port = server.local_addrs()[0].port();
/// let stop = server.spawn();
/// let registry = RegistryClient::udp("127.0.0.1:18811")?.bind_ip([127, 0, 0, 1].into());
/// let registrar = Registrar::start(registry, service.aliases().to_vec(), port);
/// // ... on shutdown:
/// registrar.stop().await; // UNREGISTER
/// stop.shutdown();
/// # Ok(()) }
/// ```
///
/// Dropping a `Registrar` without [`stop`](Registrar::stop) also
/// unregisters, in the background, if the runtime is still running.
pub struct Registrar {
    stop: Option<watch::Sender<bool>>,
    task: Option<JoinHandle<()>>,
    registrations: watch::Receiver<u64>,
}

impl Registrar {
    /// Starts registering `aliases` on `port` with the default settings.
    /// Must be called within a Tokio runtime.
    pub fn start(registry: RegistryClient, aliases: Vec<String>, port: u16) -> Registrar {
        Self::start_with(registry, aliases, port, RegistrarConfig::default())
    }

    /// Starts registering with explicit settings.
    pub fn start_with(registry: RegistryClient, aliases: Vec<String>, port: u16, config: RegistrarConfig) -> Registrar {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (count_tx, count_rx) = watch::channel(0u64);
        let task = tokio::spawn(registrar_task(registry, aliases, port, config, stop_rx, count_tx));
        Registrar { stop: Some(stop_tx), task: Some(task), registrations: count_rx }
    }

    /// How many registrations the registry has acknowledged so far.
    pub fn registrations(&self) -> u64 {
        *self.registrations.borrow()
    }

    /// Waits until the registry has acknowledged a registration; false if
    /// that did not happen within `timeout`.
    pub async fn wait_registered(&self, timeout: Duration) -> bool {
        let mut rx = self.registrations.clone();
        let registered = tokio::time::timeout(timeout, async { rx.wait_for(|n| *n > 0).await.is_ok() }).await;
        registered.unwrap_or(false)
    }

    /// Stops refreshing and unregisters (waiting at most the registry
    /// client's timeout for the acknowledgement).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send_replace(true);
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        // The task sees the stop (or the dropped sender) and unregisters.
        if let Some(stop) = self.stop.take() {
            stop.send_replace(true);
        }
    }
}

async fn registrar_task(
    registry: RegistryClient,
    aliases: Vec<String>,
    port: u16,
    config: RegistrarConfig,
    mut stop: watch::Receiver<bool>,
    count: watch::Sender<u64>,
) {
    tracing::info!(registry = %registry.describe(), ?aliases, port, interval = ?config.interval, "auto-registration started");
    let mut retry = config.retry;
    let mut failing = false;
    loop {
        let wait = match registry.register(&aliases, port).await {
            Ok(()) => {
                if failing || *count.borrow() == 0 {
                    tracing::info!(registry = %registry.describe(), "registered");
                }
                failing = false;
                retry = config.retry;
                count.send_modify(|n| *n += 1);
                config.interval
            }
            Err(e) => {
                if failing {
                    tracing::debug!(error = %e, "registering failed again; will retry");
                } else {
                    tracing::warn!(error = %e, "registering failed; will retry");
                }
                failing = true;
                let wait = retry;
                retry = (retry * 2).min(config.interval);
                wait
            }
        };
        tokio::select! {
            _ = crate::connection::wait_true(&mut stop) => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    match registry.unregister(port).await {
        Ok(()) => tracing::info!(registry = %registry.describe(), port, "unregistered"),
        Err(e) => tracing::warn!(error = %e, "unregistering failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn requests_match_python_bytes() {
        // brine.dump(("RPYC", "QUERY", ("foo",))) in Python 6.0.2
        let q = Request::Query { name: "foo".into() }.encode();
        assert_eq!(q, b"\x12\x08\x0dRPYC\x08\x0e\x05QUERY\x10\x08\x0cfoo".to_vec());
        let l = Request::List { filter_host: None }.encode();
        assert_eq!(l, b"\x12\x08\x0dRPYC\x08\x0dLIST\x10\x10\x00".to_vec());
        for req in [
            Request::Query { name: "x".into() },
            Request::List { filter_host: None },
            Request::List { filter_host: Some("127.0.0.1".into()) },
            Request::Register { aliases: vec!["A".into(), "B".into()], port: 18861 },
            Request::Unregister { port: 1 },
        ] {
            assert_eq!(Request::decode(&req.encode()).unwrap(), req);
        }
    }

    #[test]
    fn malformed_requests_are_refused() {
        let enc = |v: Value| brine::encode(&v);
        let t = |items: Vec<Value>| Value::Tuple(items);
        assert!(Request::decode(b"\xff\xff").is_err());
        assert!(Request::decode(&vec![0u8; MAX_DGRAM_SIZE + 1]).is_err());
        assert!(Request::decode(&enc(t(vec!["XXXX".into(), "QUERY".into(), t(vec!["a".into()])]))).is_err());
        assert!(Request::decode(&enc(t(vec!["RPYC".into(), "NOPE".into(), t(vec![])]))).is_err());
        assert!(Request::decode(&enc(t(vec!["RPYC".into(), "QUERY".into(), t(vec![1.into()])]))).is_err());
        assert!(
            Request::decode(&enc(t(vec!["RPYC".into(), "REGISTER".into(), t(vec!["AB".into(), 1.into()])]))).is_err()
        );
        assert!(Request::decode(&enc(t(vec!["RPYC".into(), "UNREGISTER".into(), t(vec![70000.into()])]))).is_err());
        assert!(
            Request::decode(&enc(t(vec!["RPYC".into(), "UNREGISTER".into(), t(vec!["/tmp/sock".into()])]))).is_err()
        );
        let deep = (0..10).fold(Value::None, |v, _| t(vec![v]));
        assert!(Request::decode(&enc(t(vec!["RPYC".into(), "QUERY".into(), deep]))).is_err());
        // Lowercase commands are what Python dispatches on.
        let lower = enc(t(vec!["RPYC".into(), "query".into(), t(vec!["a".into()])]));
        assert_eq!(Request::decode(&lower).unwrap(), Request::Query { name: "a".into() });
    }

    #[test]
    fn table_registers_queries_and_prunes() {
        let cfg = RegistryConfig { pruning_timeout: Duration::from_secs(10), ..RegistryConfig::default() };
        let mut t = Table::default();
        let t0 = Instant::now();
        t.register(ip("10.0.0.1"), &["svc".into(), "Alias".into()], 1000, t0, &cfg).unwrap();
        t.register(ip("10.0.0.2"), &["SVC".into()], 2000, t0 + Duration::from_secs(5), &cfg).unwrap();
        let q = t.query("Svc", t0 + Duration::from_secs(6), cfg.pruning_timeout);
        assert_eq!(q.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![(ip("10.0.0.1"), 1000), (ip("10.0.0.2"), 2000)]);
        assert_eq!(t.list(None, t0, cfg.pruning_timeout), vec!["ALIAS".to_string(), "SVC".to_string()]);
        assert_eq!(t.list(Some("10.0.0.2"), t0, cfg.pruning_timeout), vec!["SVC".to_string()]);
        // 10.0.0.1 went stale at t0+10; 10.0.0.2 lives until t0+15.
        let q = t.query("svc", t0 + Duration::from_secs(12), cfg.pruning_timeout);
        assert_eq!(q.len(), 1);
        assert_eq!(t.total, 2, "ALIAS from 10.0.0.1 is still there until something prunes it");
        t.prune(t0 + Duration::from_secs(12), cfg.pruning_timeout);
        assert_eq!(t.total, 1);
        assert_eq!(t.per_host.get(&ip("10.0.0.1")), None);
        t.unregister(ip("10.0.0.2"), 2000);
        assert!(t.services.is_empty());
        assert!(t.by_server.is_empty());
        assert_eq!(t.total, 0);
        assert!(t.per_host.is_empty());
    }

    #[test]
    fn table_is_bounded() {
        let cfg = RegistryConfig { max_entries: 10, max_entries_per_host: 4, ..RegistryConfig::default() };
        let mut t = Table::default();
        let now = Instant::now();
        for i in 0..4 {
            t.register(ip("10.0.0.1"), &[format!("S{i}")], 1, now, &cfg).unwrap();
        }
        // Refreshing an existing entry is always allowed.
        t.register(ip("10.0.0.1"), &["S0".into()], 1, now, &cfg).unwrap();
        assert!(t.register(ip("10.0.0.1"), &["S9".into()], 1, now, &cfg).is_err());
        for h in 2..4 {
            for i in 0..3 {
                t.register(ip(&format!("10.0.0.{h}")), &[format!("S{i}")], 1, now, &cfg).unwrap();
            }
        }
        assert_eq!(t.total, 10);
        assert!(t.register(ip("10.0.0.9"), &["X".into()], 1, now, &cfg).is_err());
        // Once entries are stale, pruning makes room.
        let later = now + cfg.pruning_timeout + Duration::from_secs(1);
        t.register(ip("10.0.0.9"), &["X".into()], 1, later, &cfg).unwrap();
        assert_eq!(t.total, 1);
    }

    #[test]
    fn replies_fit_python_buffers() {
        let now = Instant::now();
        let live: Vec<(Key, Instant)> = (0..500u16)
            .map(|i| ((ip("192.168.100.200"), 10000 + i), now + Duration::from_millis(u64::from(i))))
            .collect();
        let bytes = query_reply(&live, MAX_DGRAM_SIZE);
        assert!(bytes.len() <= MAX_DGRAM_SIZE, "{}", bytes.len());
        assert!(reply_is_truncated(&bytes));
        let reply = brine::decode(&bytes, &reply_limits()).unwrap();
        let items = reply.as_tuple().unwrap();
        // The newest registrations are kept.
        assert_eq!(items.last().unwrap().as_tuple().unwrap()[1], Value::from(10499));
        let names: Vec<String> = (0..5000).map(|i| format!("SERVICE_NUMBER_{i}")).collect();
        let bytes = list_reply(names, MAX_LIST_REPLY);
        assert!(bytes.len() <= MAX_LIST_REPLY);
        assert!(brine::decode(&bytes, &reply_limits()).is_ok());
        // A reply with everything is plain canonical brine.
        let whole = list_reply(vec!["A".into(), "B".into()], UDP_REPLY_FLOOR);
        assert!(!reply_is_truncated(&whole));
        assert_eq!(whole, brine::encode(&Value::Tuple(vec!["A".into(), "B".into()])));
    }

    #[test]
    fn udp_replies_are_bounded_by_the_request() {
        assert_eq!(udp_reply_budget(16, MAX_LIST_REPLY), UDP_REPLY_FLOOR);
        assert_eq!(udp_reply_budget(143, MAX_DGRAM_SIZE), 429);
        assert_eq!(udp_reply_budget(1500, MAX_DGRAM_SIZE), MAX_DGRAM_SIZE);
        let names: Vec<String> = (0..500).map(|i| format!("SERVICE_NUMBER_{i}")).collect();
        let bytes = list_reply(names, udp_reply_budget(16, MAX_LIST_REPLY));
        assert!(bytes.len() <= UDP_REPLY_FLOOR && reply_is_truncated(&bytes));
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(parse_host_port("h").unwrap(), ("h".into(), REGISTRY_PORT));
        assert_eq!(parse_host_port("h:1").unwrap(), ("h".into(), 1));
        assert_eq!(parse_host_port("[::1]:2").unwrap(), ("::1".into(), 2));
        assert_eq!(parse_host_port("[::1]").unwrap(), ("::1".into(), REGISTRY_PORT));
        assert_eq!(parse_host_port("::1").unwrap(), ("::1".into(), REGISTRY_PORT));
        assert!(parse_host_port("h:99999").is_err());
        assert!(parse_host_port("udp://h").is_err());
        assert!(parse_host_port("").is_err());
        assert_eq!(ServerAddr::new("::1", 5).to_string(), "[::1]:5");
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..1600)) {
                let _ = Request::decode(&data);
            }

            #[test]
            fn requests_round_trip(name in ".{0,30}", aliases in proptest::collection::vec(".{0,12}", 0..5), port in any::<u16>()) {
                for req in [
                    Request::Query { name: name.clone() },
                    Request::Register { aliases: aliases.clone(), port },
                    Request::Unregister { port },
                ] {
                    prop_assert_eq!(Request::decode(&req.encode()).ok(), Some(req));
                }
            }
        }
    }
}
