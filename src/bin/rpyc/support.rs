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
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Set by `-q`: banners (what a command is doing, "stopping") are not
/// printed; results and errors are.
static QUIET: AtomicBool = AtomicBool::new(false);
/// Set by `--log-format json`: everything on stderr is a JSON log record.
static LOG_JSON: AtomicBool = AtomicBool::new(false);

/// The target of the CLI's own records in JSON logs (banners, notices,
/// the final error).
pub const CLI_TARGET: &str = "rpyc::cli";

/// How log lines look on stderr (`--log-format`, `RPYC_LOG_FORMAT`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, fields
    /// (fields.message is the text), span.
    Json,
}

impl LogFormat {
    /// `--log-format` if given, else `RPYC_LOG_FORMAT`, else text.
    pub fn resolve(flag: Option<LogFormat>) -> Result<LogFormat, Box<dyn Error>> {
        if let Some(f) = flag {
            return Ok(f);
        }
        match std::env::var("RPYC_LOG_FORMAT") {
            Ok(v) if v.trim().is_empty() => Ok(LogFormat::Text),
            Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err(usage(format!("RPYC_LOG_FORMAT={v:?} is not a log format: set it to text or json"))),
            },
            Err(_) => Ok(LogFormat::Text),
        }
    }
}

/// True when stderr carries JSON log records only (`--log-format json`).
pub fn log_json() -> bool {
    LOG_JSON.load(Ordering::Relaxed)
}

/// True with `-q`.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// A status line on stderr unless `-q` was given (with JSON logs: an
/// info record, target `rpyc::cli`).
pub fn banner(text: std::fmt::Arguments<'_>) {
    if quiet() {
        return;
    }
    if log_json() {
        tracing::info!(target: CLI_TARGET, "{text}");
    } else {
        eprintln!("{text}");
    }
}

/// A line on stderr that `-q` does not silence (with JSON logs: a record
/// at `level`, target `rpyc::cli`).
pub fn notice(level: tracing::Level, text: std::fmt::Arguments<'_>) {
    if !log_json() {
        eprintln!("{text}");
    } else if level == tracing::Level::WARN {
        tracing::warn!(target: CLI_TARGET, "{text}");
    } else {
        tracing::info!(target: CLI_TARGET, "{text}");
    }
}

/// Reports the error a command ended with: `rpyc: error: …`, or with JSON
/// logs an error record (written directly if the log filter hides errors:
/// the reason for a failure is always shown).
pub fn report_error(e: &dyn Error) {
    let e = for_cli(&e.to_string());
    if !log_json() {
        eprintln!("rpyc: error: {e}");
    } else if tracing::enabled!(target: CLI_TARGET, tracing::Level::ERROR) {
        tracing::error!(target: CLI_TARGET, "{e}");
    } else {
        #[derive(serde::Serialize)]
        struct Fields {
            message: String,
        }
        #[derive(serde::Serialize)]
        struct Record<'a> {
            level: &'a str,
            fields: Fields,
            target: &'a str,
        }
        let record = Record { level: "ERROR", fields: Fields { message: e }, target: CLI_TARGET };
        eprintln!("{}", serde_json::to_string(&record).unwrap_or_default());
    }
}

/// Logs to stderr, as text or JSON lines. `RUST_LOG` wins; otherwise `-q`
/// shows errors only, each `-v` one level more than `default` (debug and
/// trace for this crate only, the rest stays at warnings until `-vvvv`).
pub fn init_logging(verbose: u8, quiet: bool, default: &str, format: LogFormat) {
    QUIET.store(quiet, Ordering::Relaxed);
    LOG_JSON.store(format == LogFormat::Json, Ordering::Relaxed);
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.trim().is_empty() => f,
        _ if quiet => "error".to_string(),
        _ => {
            let level = match (default, verbose) {
                (d, 0) => d.to_string(),
                ("warn", 1) => "info".to_string(),
                (_, 1) | ("warn", 2) => "warn,rpyc=debug".to_string(),
                (_, 2) | (_, 3) => "warn,rpyc=trace".to_string(),
                _ => "trace".to_string(),
            };
            // Banners are info records of the CLI's own target: shown
            // unless -q, whatever the default level of the command.
            format!("{level},{CLI_TARGET}=info")
        }
    };
    let filter =
        tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => {
            builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_target(false).try_init()
        }
        LogFormat::Json => builder.json().with_ansi(false).with_current_span(true).with_span_list(false).try_init(),
    };
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
                if tls_opts {
                    Ok(Endpoint::srv_tls(name, resolver, self.tls_config(addr)?))
                } else {
                    Ok(Endpoint::srv(name, resolver))
                }
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
        self.connect_for(addr, self.timeout).await
    }

    /// Connects to ADDR (within `--timeout`), then waits up to
    /// `reply_timeout` for each reply.
    pub async fn connect_for(&self, addr: &str, reply_timeout: Duration) -> Result<Connection, Box<dyn Error>> {
        let endpoint = self.endpoint(addr)?;
        let mut tcp = TcpOptions::default();
        tcp.connect_timeout = self.timeout;
        let mut builder = ClientBuilder::new().timeout(reply_timeout).tcp_options(tcp);
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

/// Formats JSON as Python's `json.dumps` does by default (`", "` between
/// items, `": "` after keys), the style `--json` output has always had.
struct PySpacing;

impl serde_json::ser::Formatter for PySpacing {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// `value` as one line of JSON (see [`PySpacing`]).
pub fn to_json(value: &impl serde::Serialize) -> String {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PySpacing);
    // Serializing plain structs, strings and numbers into memory cannot fail.
    if value.serialize(&mut ser).is_err() {
        return "null".into();
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// `{"listening": "tcp://…", "port": N}`: where a server listens (`--json`).
#[derive(serde::Serialize)]
pub struct Listening<'a> {
    pub listening: &'a str,
    pub port: Option<u16>,
}

/// Prints `value` as one line of JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) {
    println!("{}", to_json(value));
}

/// A value as JSON: None → null, bool, int and finite float → number,
/// str → string, tuple and frozenset → array; what JSON cannot hold
/// (bytes, complex, inf, nan, slices…, and ints beyond 128 bits) → its
/// Python repr as a string.
pub struct JsonValue<'a>(pub &'a Value);

impl serde::Serialize for JsonValue<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::None => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => match i.to_i64() {
                Some(n) => s.serialize_i64(n),
                None => {
                    let digits = i.to_string();
                    match digits.parse::<i128>() {
                        Ok(n) => s.serialize_i128(n),
                        Err(_) => s.serialize_str(&digits),
                    }
                }
            },
            Value::Float(f) if f.is_finite() => s.serialize_f64(*f),
            Value::Str(text) => s.serialize_str(text),
            Value::Tuple(items) | Value::FrozenSet(items) => s.collect_seq(items.iter().map(JsonValue)),
            other => s.serialize_str(&other.repr()),
        }
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
        assert_eq!(to_json(&JsonValue(&v)), r#"[null, true, -3, 1.5, "inf", "a\"b\n\u0001", "b'\\x00'"]"#);
        let big = |t: &str| to_json(&JsonValue(&rpyc::wire::literal::parse(t).unwrap()));
        let p100 = num_bigint::BigInt::from(2).pow(100u32).to_string();
        let p200 = num_bigint::BigInt::from(2).pow(200u32).to_string();
        assert_eq!(big(&p100), p100);
        assert_eq!(big(&format!("-{p100}")), format!("-{p100}"));
        assert_eq!(big(&p200), format!("\"{p200}\""));
        assert_eq!(to_json(&(1, "x")), "[1, \"x\"]");
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
