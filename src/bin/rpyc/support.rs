//! What the network subcommands share: the runtime, logging, exit codes,
//! the options that say how to reach a server or a registry, and JSON.

use clap::Args;
use rpyc::registry::{RegistryClient, REGISTRY_PORT};
use rpyc::transport::srv::{parse_srv_url, SrvResolver};
use rpyc::transport::ssh::{self, SshConfig};
use rpyc::transport::tls::TlsClientConfig;
use rpyc::transport::{Endpoint, TcpOptions};
use rpyc::{ClientBuilder, Connection, Dialect, Value};
use std::error::Error;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A mistake in the command line (exit status 2, like clap's own errors).
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for UsageError {}

/// Library advice in error messages, and what to say on the command line
/// instead: the library names its types and setters, the CLI names flags.
const CLI_WORDING: &[(&str, &str)] = &[
    ("with HostKeyPolicy::AcceptNew (trust on first use)", "with --accept-new-host-key (trust on first use)"),
    ("give SshConfig::known_hosts", "give --known-hosts FILE"),
    (
        "add a key file, the agent or a password to SshConfig::auth",
        "give --identity KEYFILE, or add the key to ssh-agent (ssh-add KEYFILE)",
    ),
    (
        "give its passphrase (SshAuth::KeyFile { passphrase: Some(..) } / SshConfig::with_encrypted_key_file)",
        "add it to ssh-agent (ssh-add FILE) and leave out --identity, or use a key without a passphrase",
    ),
    ("(DeployOptions::python / --python)", "(--python PATH)"),
    ("(DeployOptions::upload_from / --upload-from PATH", "(--upload-from PATH"),
    ("use Endpoint::parse_tls or ClientBuilder::tls", "give --ca FILE (and --cert/--key for a client certificate)"),
    (
        "(set TlsClientConfig::server_name to the name in the server certificate)",
        "(give --server-name NAME, the name in the server certificate)",
    ),
    ("raise max_frame if it is", "the command line keeps the default limit"),
    ("connect a new SshSession", "run the command again"),
    ("without Dialect::V5 (--rpyc5)", "without --rpyc5"),
    ("with Dialect::V5 (--rpyc5)", "with --rpyc5"),
];

/// An error message as the CLI prints it: library advice ("set
/// `TlsClientConfig::server_name`") becomes the flag that does it
/// (`--server-name`).
pub fn for_cli(message: &str) -> String {
    CLI_WORDING.iter().fold(message.to_string(), |m, (library, cli)| m.replace(library, cli))
}

/// Boxes a usage error.
pub fn usage(msg: impl Into<String>) -> Box<dyn Error> {
    Box::new(UsageError(msg.into()))
}

/// The runtime the async subcommands run on.
pub fn runtime() -> Result<tokio::runtime::Runtime, Box<dyn Error>> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?)
}

/// Logs to stderr. `RUST_LOG` wins; otherwise `-q` shows errors only,
/// each `-v` one level more than `default` (debug and trace for this crate
/// only, the rest stays at warnings until `-vvvv`).
/// Set by `-q`: banners (what a command is doing, "stopping") are not
/// printed; results and errors are.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints a status line on stderr unless `-q` was given.
pub fn banner(text: std::fmt::Arguments<'_>) {
    if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("{text}");
    }
}

pub fn init_logging(verbose: u8, quiet: bool, default: &str) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.trim().is_empty() => f,
        _ if quiet => "error".to_string(),
        _ => match (default, verbose) {
            (d, 0) => d.to_string(),
            ("warn", 1) => "info".to_string(),
            (_, 1) | ("warn", 2) => "warn,rpyc=debug".to_string(),
            (_, 2) | (_, 3) => "warn,rpyc=trace".to_string(),
            _ => "trace".to_string(),
        },
    };
    let filter =
        tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Parses a positive number of seconds.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(format!("{s:?} is not a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a `--dns` nameserver: `IP:PORT`, `[IPv6]:PORT`, a bare IP
/// (port 53) or `HOST:PORT` (looked up once, by the system).
pub fn parse_dns(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    let bad = |why: &str| format!("invalid --dns {s:?}: expected HOST:PORT, e.g. 127.0.0.1:53 ({why})");
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => s
            .to_socket_addrs()
            .map_err(|e| bad(&format!("cannot resolve {host}: {e}")))?
            .next()
            .ok_or_else(|| bad(&format!("{host} has no address"))),
        Some((_, port)) if !port.is_empty() && port.parse::<u16>().is_err() => Err(bad("bad port")),
        _ => Err(bad("no port")),
    }
}

/// Waits for Ctrl-C or (on Unix) SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// How to reach a server: the address schemes and their credentials.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// tls:// — the CA certificate (PEM) that signed the server certificate.
    #[arg(long, value_name = "FILE", help_heading = "TLS (tls://)")]
    pub ca: Option<PathBuf>,
    /// tls:// — the client certificate (PEM) to present; needs --key.
    #[arg(long, value_name = "FILE", requires = "key", help_heading = "TLS (tls://)")]
    pub cert: Option<PathBuf>,
    /// tls:// — the private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert", help_heading = "TLS (tls://)")]
    pub key: Option<PathBuf>,
    /// tls:// — the name the server certificate must carry, when it is not
    /// the host in ADDR (tunnels, port forwards).
    #[arg(long, value_name = "NAME", help_heading = "TLS (tls://)")]
    pub server_name: Option<String>,
    /// ssh:// — the private key to log in with (ed25519 or ECDSA). Default:
    /// the ssh-agent, then ~/.ssh/id_ed25519 and ~/.ssh/id_ecdsa.
    #[arg(long, value_name = "FILE", help_heading = "SSH (ssh://)")]
    pub identity: Option<PathBuf>,
    /// ssh:// — the known_hosts file that must list the SSH server's key.
    /// Default: ~/.ssh/known_hosts.
    #[arg(long, value_name = "FILE", help_heading = "SSH (ssh://)")]
    pub known_hosts: Option<PathBuf>,
    /// ssh:// — trust an SSH server key that known_hosts does not list yet,
    /// and record it (trust on first use).
    #[arg(long, help_heading = "SSH (ssh://)")]
    pub accept_new_host_key: bool,
    /// srv:// — the DNS server (HOST:PORT) that answers the SRV lookup and
    /// the targets' addresses; repeat it for fallbacks. Default: the system
    /// resolver (/etc/resolv.conf).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_dns, help_heading = "DNS SRV (srv://)")]
    pub dns: Vec<SocketAddr>,
    /// Seconds to wait for the connection and for each reply.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub timeout: Duration,
    /// Speak the rpyc 5.x wire format (for Python rpyc 5 servers).
    #[arg(long)]
    pub rpyc5: bool,
}

impl ConnectArgs {
    /// The endpoint ADDR names, with the credentials the options give.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, Box<dyn Error>> {
        let tls_opts = self.ca.is_some() || self.cert.is_some() || self.server_name.is_some();
        let ssh_opts = self.identity.is_some() || self.known_hosts.is_some() || self.accept_new_host_key;
        let scheme = addr.split_once("://").map(|(s, _)| s).unwrap_or("tcp");
        if tls_opts && scheme != "tls" && scheme != "srv" {
            return Err(usage(format!(
                "--ca, --cert, --key and --server-name apply to tls:// addresses (and srv://, for TLS to \
                 its targets), not {addr:?}"
            )));
        }
        if ssh_opts && scheme != "ssh" {
            return Err(usage(format!(
                "--identity, --known-hosts and --accept-new-host-key apply to ssh:// addresses, not {addr:?}"
            )));
        }
        if !self.dns.is_empty() && scheme != "srv" {
            return Err(usage(format!("--dns applies to srv:// addresses, not {addr:?}")));
        }
        match scheme {
            "tls" => Ok(Endpoint::parse_tls(addr, self.tls_config(addr)?).map_err(|e| usage(e.to_string()))?),
            "srv" => {
                let name = parse_srv_url(addr).unwrap_or_default();
                if name.is_empty() {
                    return Err(usage(format!("{addr:?} names no service: use srv://_service._proto.domain")));
                }
                let resolver = if self.dns.is_empty() {
                    SrvResolver::system().map_err(|e| usage(e.to_string()))?
                } else {
                    SrvResolver::with_nameservers(&self.dns)
                };
                // With --ca, TLS to each target, checked against its host name.
                let tls = if tls_opts { Some(Arc::new(self.tls_config(addr)?)) } else { None };
                Ok(Endpoint::Srv { name: name.to_string(), resolver, tls })
            }
            "ssh" => {
                let (mut config, target): (SshConfig, String) =
                    ssh::parse_url(addr).map_err(|e| usage(e.to_string()))?;
                if let Some(key) = &self.identity {
                    config = config.with_key_file(key);
                }
                if let Some(kh) = &self.known_hosts {
                    config = config.with_known_hosts(kh);
                }
                if self.accept_new_host_key {
                    config = config.trust_on_first_use();
                }
                config.connect_timeout = self.timeout;
                Ok(Endpoint::Ssh { target, config: Arc::new(config) })
            }
            "tcp" | "unix" => Ok(Endpoint::parse(addr).map_err(|e| usage(e.to_string()))?),
            other => Err(usage(format!(
                "unsupported address scheme {other}:// in {addr:?}: use tcp://host:port, \
                 unix:///path, tls://host:port, ssh://user@sshhost[:port]/host:port or \
                 srv://_service._proto.domain"
            ))),
        }
    }

    /// The TLS client configuration the options give (tls:// and srv://).
    fn tls_config(&self, addr: &str) -> Result<TlsClientConfig, Box<dyn Error>> {
        let Some(ca) = &self.ca else {
            return Err(usage(format!(
                "{addr} needs --ca FILE, the CA certificate that signed the server's \
                 certificate (add --cert/--key if the server wants a client certificate)"
            )));
        };
        let mut config = TlsClientConfig::new().with_ca_file(ca)?;
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            config = config.with_identity_files(cert, key)?;
        }
        if let Some(name) = &self.server_name {
            config = config.with_server_name(name.clone());
        }
        config.handshake_timeout = self.timeout;
        Ok(config)
    }

    /// Connects to ADDR.
    pub async fn connect(&self, addr: &str) -> Result<Connection, Box<dyn Error>> {
        let endpoint = self.endpoint(addr)?;
        let mut tcp = TcpOptions::default();
        tcp.connect_timeout = self.timeout;
        let mut builder = ClientBuilder::new().timeout(self.timeout).tcp_options(tcp);
        if self.rpyc5 {
            builder = builder.dialect(Dialect::V5);
        }
        tracing::debug!(addr, "connecting");
        // SSH and TLS have their own deadlines; this bounds everything else.
        let deadline = self.timeout + Duration::from_secs(1);
        match tokio::time::timeout(deadline, builder.connect_endpoint(&endpoint)).await {
            Ok(Ok(conn)) => Ok(conn),
            // The transport's message names the address already.
            Ok(Err(e)) if e.to_string().contains(addr.trim_start_matches("tcp://")) => Err(e.to_string().into()),
            Ok(Err(e)) => Err(format!("cannot connect to {addr}: {e}").into()),
            Err(_) => Err(format!("cannot connect to {addr}: no connection within {deadline:?}").into()),
        }
    }
}

/// Where the registry is.
#[derive(Args, Debug, Clone)]
pub struct RegistryArgs {
    /// The registry to ask: HOST or HOST:PORT (port 18811). Without it, the
    /// request is broadcast over UDP to 255.255.255.255:18811, as Python does.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub registry: Option<String>,
    /// Talk to the registry over TCP (needs --registry: TCP cannot broadcast).
    #[arg(long, requires = "registry")]
    pub registry_tcp: bool,
    /// Seconds to wait for the registry's answer.
    #[arg(long = "registry-timeout", value_name = "SECONDS", default_value = "2", value_parser = parse_seconds)]
    pub registry_timeout: Duration,
}

impl RegistryArgs {
    /// The registry client these options describe.
    pub fn client(&self) -> Result<RegistryClient, Box<dyn Error>> {
        let client = match (&self.registry, self.registry_tcp) {
            (Some(addr), true) => RegistryClient::tcp(addr).map_err(|e| usage(e.to_string()))?,
            (Some(addr), false) => RegistryClient::udp(addr).map_err(|e| usage(e.to_string()))?,
            (None, true) => return Err(usage("--registry-tcp needs --registry HOST[:PORT]: TCP cannot broadcast")),
            (None, false) => RegistryClient::udp_broadcast(REGISTRY_PORT),
        };
        Ok(client.timeout(self.registry_timeout))
    }
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A value as JSON: None → null, bool, int (any size) and finite float →
/// number, str → string, tuple and frozenset → array; what JSON cannot
/// hold (bytes, complex, inf, nan, slices…) → its Python repr as a string.
pub fn json_value(v: &Value) -> String {
    match v {
        Value::None => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) if f.is_finite() => v.repr(),
        Value::Str(s) => json_str(s),
        Value::Tuple(items) | Value::FrozenSet(items) => {
            format!("[{}]", items.iter().map(json_value).collect::<Vec<_>>().join(", "))
        }
        other => json_str(&other.repr()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_of_values() {
        let v = Value::Tuple(vec![
            Value::None,
            Value::Bool(true),
            Value::from(-3),
            Value::Float(1.5),
            Value::Float(f64::INFINITY),
            Value::from("a\"b\n\u{1}"),
            Value::Bytes(vec![0]),
        ]);
        assert_eq!(json_value(&v), r#"[null, true, -3, 1.5, "inf", "a\"b\n\u0001", "b'\\x00'"]"#);
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("x").is_err());
        assert!(parse_seconds("inf").is_err());
    }

    #[test]
    fn dns_servers() {
        assert_eq!(parse_dns("127.0.0.1:5353"), Ok(SocketAddr::from(([127, 0, 0, 1], 5353))));
        assert_eq!(parse_dns("10.0.0.2"), Ok(SocketAddr::from(([10, 0, 0, 2], 53))));
        assert_eq!(parse_dns("[::1]:53").map(|a| a.port()), Ok(53));
        for bad in ["", "x", "1.2.3.4:99999", "h:port", ":53"] {
            let e = parse_dns(bad).unwrap_err();
            assert!(e.starts_with("invalid --dns") && e.contains("expected HOST:PORT"), "{bad}: {e}");
        }
    }
}
