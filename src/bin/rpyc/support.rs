//! What the network subcommands share: the runtime, logging, exit codes,
//! the options that say how to reach a server or a registry, and JSON.

use clap::Args;
use rpyc::registry::{RegistryClient, REGISTRY_PORT};
use rpyc::transport::ssh::{self, SshConfig};
use rpyc::transport::tls::TlsClientConfig;
use rpyc::transport::{Endpoint, TcpOptions};
use rpyc::{ClientBuilder, Connection, Dialect, Value};
use std::error::Error;
use std::fmt;
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
pub fn init_logging(verbose: u8, quiet: bool, default: &str) {
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
        if tls_opts && scheme != "tls" {
            return Err(usage(format!(
                "--ca, --cert, --key and --server-name apply to tls:// addresses, not {addr:?}"
            )));
        }
        if ssh_opts && scheme != "ssh" {
            return Err(usage(format!(
                "--identity, --known-hosts and --accept-new-host-key apply to ssh:// addresses, not {addr:?}"
            )));
        }
        match scheme {
            "tls" => {
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
                Ok(Endpoint::parse_tls(addr, config).map_err(|e| usage(e.to_string()))?)
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
                 unix:///path, tls://host:port or ssh://user@sshhost[:port]/host:port"
            ))),
        }
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
}
