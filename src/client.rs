//! Layer 4: connecting to a server (mirrors `rpyc/utils/factory.py`).
//!
//! [`connect`] is the one-liner; [`ClientBuilder`] chooses the local service
//! (what the server may call back into), the configuration and the dialect.
//! [`connect_stream`] runs a connection over any stream you opened yourself;
//! [`connect_command`] over the stdin/stdout of a program it starts.
//!
//! TLS (`tls://`, [`ClientBuilder::tls`]), SSH (`ssh://`) and DNS SRV
//! (`srv://`, [`ClientBuilder::dns`]) need the crate features `tls`, `ssh`
//! and `srv`; without them such an address is an
//! [`Error::Transport`](crate::Error::Transport) naming the feature.

use crate::connection::{Connection, ConnectionConfig};
use crate::error::Result;
use crate::identity::Credentials;
use crate::policy::AccessPolicy;
use crate::service::Service;
#[cfg(feature = "srv")]
use crate::transport::srv::{parse_srv_url, SrvResolver};
use crate::transport::{connect_endpoint, Endpoint, Stream, TcpOptions};
use crate::wire::Dialect;
#[cfg(feature = "srv")]
use std::net::SocketAddr;
use std::time::Duration;

/// Connects to `addr` (`host:port`, `tcp://host:port`, `unix:///path`,
/// `ssh://…`, or `srv://_rpyc._tcp.example.com` to dial the targets of a
/// DNS SRV name with the system resolver) with a void local service and
/// default settings.
pub async fn connect(addr: &str) -> Result<Connection> {
    ClientBuilder::new().connect(addr).await
}

/// Starts `program` with `args` and speaks RPyC over its stdin/stdout
/// (Python: `rpyc.utils.factory.connect_subproc([program, *args])`), e.g.
/// `connect_command("rpyc", ["serve", "--stdio"])`. The program's stderr
/// is passed through; its exit ends the connection (the close reason
/// carries the exit status), and closing the connection ends the program
/// (see [`crate::transport::pipe`]).
pub async fn connect_command<I, S>(program: &str, args: I) -> Result<Connection>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = std::process::Command::new(program);
    command.args(args);
    ClientBuilder::new().connect_command(command).await
}

/// Runs a client connection over an already open stream.
pub fn connect_stream(stream: impl Stream, service: Service, config: ConnectionConfig) -> Connection {
    let mut config = config;
    if config.dialect.is_none() {
        config.dialect = Some(Dialect::V6);
    }
    Connection::start(stream, service, config, Credentials::default(), AccessPolicy::default())
}

/// Client settings.
#[derive(Clone)]
pub struct ClientBuilder {
    service: Option<Service>,
    config: ConnectionConfig,
    policy: AccessPolicy,
    tcp: TcpOptions,
    #[cfg(feature = "tls")]
    tls: Option<crate::transport::tls::TlsClientConfig>,
    challenge: Option<(String, Vec<u8>)>,
    #[cfg(feature = "srv")]
    srv: Option<SrvResolver>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The challenge-response secret is never printed.
        let mut d = f.debug_struct("ClientBuilder");
        d.field("service", &self.service).field("config", &self.config);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls);
        #[cfg(feature = "srv")]
        d.field("srv", &self.srv);
        d.field("challenge_identity", &self.challenge.as_ref().map(|c| &c.0)).finish_non_exhaustive()
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder::new()
    }
}

impl ClientBuilder {
    /// Defaults: void service, rpyc 6 framing, 30 s request timeout.
    pub fn new() -> ClientBuilder {
        let config = ConnectionConfig { dialect: Some(Dialect::V6), ..ConnectionConfig::default() };
        ClientBuilder {
            service: None,
            config,
            policy: AccessPolicy::default(),
            tcp: TcpOptions::default(),
            #[cfg(feature = "tls")]
            tls: None,
            challenge: None,
            #[cfg(feature = "srv")]
            srv: None,
        }
    }

    /// The service the server may call back into (Python's `service=`).
    pub fn service(mut self, service: Service) -> Self {
        self.service = Some(service);
        self
    }

    /// Speak rpyc 5.x framing (for Python rpyc 5.x servers).
    pub fn dialect(mut self, dialect: Dialect) -> Self {
        self.config.dialect = Some(dialect);
        self
    }

    /// `sync_request_timeout`.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.config.sync_request_timeout = t;
        self
    }

    /// Replaces the whole connection configuration (the dialect defaults to 6.x).
    pub fn config(mut self, config: ConnectionConfig) -> Self {
        let dialect = config.dialect.or(Some(Dialect::V6));
        self.config = ConnectionConfig { dialect, ..config };
        self
    }

    /// The policy applied to the server's requests into our service.
    pub fn policy(mut self, policy: AccessPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// TCP options (keepalive, connect timeout).
    pub fn tcp_options(mut self, opts: TcpOptions) -> Self {
        self.tcp = opts;
        self
    }

    /// Connects over TLS: [`connect`](Self::connect) then takes
    /// `tls://host:port` or `host:port`.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, config: crate::transport::tls::TlsClientConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Answers a [`ChallengeResponse`](crate::auth::ChallengeResponse)
    /// server as `identity` with `secret` before the RPyC connection starts,
    /// and checks that the server knows the secret too. Over TLS the
    /// exchange is bound to the TLS session; over plain TCP it is not, so
    /// anyone on the path could relay it — use TLS off the local host.
    pub fn challenge_response(mut self, identity: &str, secret: impl AsRef<[u8]>) -> Self {
        self.challenge = Some((identity.to_string(), secret.as_ref().to_vec()));
        self
    }

    /// The DNS servers that answer `srv://` lookups (UDP and TCP, in this
    /// order). Default: the system resolver (`/etc/resolv.conf`).
    #[cfg(feature = "srv")]
    #[cfg_attr(docsrs, doc(cfg(feature = "srv")))]
    pub fn dns(self, nameservers: Vec<SocketAddr>) -> Self {
        self.srv_resolver(SrvResolver::with_nameservers(&nameservers))
    }

    /// The resolver for `srv://` addresses; share one between builders to
    /// share its cache. Default: [`SrvResolver::system`].
    #[cfg(feature = "srv")]
    #[cfg_attr(docsrs, doc(cfg(feature = "srv")))]
    pub fn srv_resolver(mut self, resolver: SrvResolver) -> Self {
        self.srv = Some(resolver);
        self
    }

    /// Connects to an address string: see [`crate::connect`] for
    /// the forms. With [`tls`](Self::tls), `tls://host:port`, `host:port`,
    /// or `srv://…` (TLS to each target, checked against the target's
    /// host name).
    pub async fn connect(self, addr: &str) -> Result<Connection> {
        #[cfg(feature = "srv")]
        if let Some(name) = parse_srv_url(addr) {
            let resolver = match &self.srv {
                Some(r) => r.clone(),
                None => SrvResolver::system()?,
            };
            let ep = Endpoint::Srv {
                name: name.to_string(),
                resolver,
                #[cfg(feature = "tls")]
                tls: self.tls.clone().map(std::sync::Arc::new),
            };
            return self.connect_endpoint(&ep).await;
        }
        #[cfg(feature = "tls")]
        let ep = match &self.tls {
            Some(tls) => Endpoint::parse_tls(addr, tls.clone())?,
            None => Endpoint::parse(addr)?,
        };
        #[cfg(not(feature = "tls"))]
        let ep = Endpoint::parse(addr)?;
        self.connect_endpoint(&ep).await
    }

    /// Connects to an endpoint.
    pub async fn connect_endpoint(self, ep: &Endpoint) -> Result<Connection> {
        let (mut stream, creds) = connect_endpoint(ep, &self.tcp).await?;
        if let Some((identity, secret)) = &self.challenge {
            let deadline = self.tcp.connect_timeout;
            // Over TLS the answer is bound to this TLS session (RFC 9266
            // exporter), so it cannot be relayed to another one.
            let binding = creds.channel_binding.as_ref();
            let exchange = crate::auth::challenge_response_client_bound(&mut stream, identity, secret, binding);
            tokio::time::timeout(deadline, exchange).await.map_err(|_| {
                crate::Error::ConnectTimeout(format!("challenge-response: no answer within {deadline:?}"))
            })??;
        }
        Ok(self.start(stream, creds))
    }

    /// Starts `command` and connects over its stdin/stdout (see
    /// [`connect_command`]); [`PipeOptions`](crate::transport::pipe::PipeOptions)
    /// defaults.
    pub async fn connect_command(self, command: std::process::Command) -> Result<Connection> {
        self.connect_command_with(command, &crate::transport::pipe::PipeOptions::default()).await
    }

    /// [`connect_command`](Self::connect_command) with explicit pipe options.
    pub async fn connect_command_with(
        self,
        command: std::process::Command,
        options: &crate::transport::pipe::PipeOptions,
    ) -> Result<Connection> {
        let (stream, creds) = crate::transport::pipe::spawn(command, options)?;
        Ok(self.start(stream, creds))
    }

    /// Runs the connection over a stream you opened.
    pub fn start(self, stream: impl Stream, creds: Credentials) -> Connection {
        let service = self.service.unwrap_or_else(Service::void);
        Connection::start(stream, service, self.config, creds, self.policy)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Server, ServerConfig, Service};

    /// What a `default-features = false` user has: a server and a client
    /// over plain TCP.
    #[tokio::test]
    async fn the_core_alone_serves_and_calls_over_tcp() {
        let service = Service::builder("calculator", || ()).method("add(x, y)", |x: i64, y: i64| Ok(x + y)).build();
        let server = Server::new(service, ServerConfig::default()).bind_tcp("127.0.0.1:0").await.unwrap();
        let addr = server.local_addrs()[0];
        let stop = server.spawn();
        let conn = crate::connect(&format!("tcp://{addr}")).await.unwrap();
        let sum: i64 = conn.root().await.unwrap().call_method("add", (5, 10)).await.unwrap();
        assert_eq!(sum, 15);
        stop.shutdown();
    }

    /// An address that needs a feature the build lacks says which.
    #[tokio::test]
    async fn addresses_of_missing_features_name_the_feature() {
        for (addr, feature, enabled) in [
            ("tls://127.0.0.1:1", "tls", cfg!(feature = "tls")),
            ("ssh://u@127.0.0.1:1/127.0.0.1:2", "ssh", cfg!(feature = "ssh")),
            ("srv://_rpyc._tcp.example.com", "srv", cfg!(feature = "srv")),
        ] {
            if enabled {
                continue;
            }
            let e = crate::connect(addr).await.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(&format!("rpyc's \"{feature}\" feature")), "{addr}: {e}");
        }
    }
}
