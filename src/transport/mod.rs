//! Layer 1: byte streams under the RPC connection.
//!
//! The engine runs over anything that is `AsyncRead + AsyncWrite` (the
//! [`Stream`] trait); this module only opens and accepts such streams. An
//! [`Endpoint`] says where to connect, a [`Listener`] accepts. TCP and Unix
//! sockets live here; TLS and SSH wrap the same two traits, so switching
//! transport never touches the engine. [`pipe`] runs a connection over a
//! child process's stdin/stdout (or our own).
//!
//! Behind a load balancer, TCP and TLS listeners can read a PROXY protocol
//! header first (`proxy`, feature `proxy-protocol`) so the client's real
//! address is the one logged and limited.
//!
//! TCP, Unix sockets and pipes are always built; `tls`, `ssh`, `srv` and
//! `proxy` are behind the crate features of the same names
//! (`proxy-protocol` for `proxy`). An address whose scheme needs a feature
//! this build lacks is refused by [`Endpoint::parse`] with an
//! [`Error::Transport`] that names the feature.

use crate::error::{Error, Result};
use crate::identity::{Credentials, PeerAddr, TransportKind};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

pub mod pipe;
#[cfg(feature = "proxy-protocol")]
#[cfg_attr(docsrs, doc(cfg(feature = "proxy-protocol")))]
pub mod proxy;
#[cfg(feature = "srv")]
#[cfg_attr(docsrs, doc(cfg(feature = "srv")))]
pub mod srv;
#[cfg(feature = "ssh")]
#[cfg_attr(docsrs, doc(cfg(feature = "ssh")))]
pub mod ssh;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;

/// A byte stream an RPyC connection can run over.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A boxed [`Stream`].
pub type BoxStream = Box<dyn Stream>;

/// TCP socket options.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpOptions {
    /// Disable Nagle's algorithm. Default: true — RPyC is request/reply, and
    /// Nagle plus delayed ACKs add up to 40 ms to small messages.
    pub nodelay: bool,
    /// Send TCP keepalives after this much idle time. Default: `None`.
    pub keepalive: Option<Duration>,
    /// How long a connect attempt may take. Default: 10 s.
    pub connect_timeout: Duration,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions { nodelay: true, keepalive: None, connect_timeout: Duration::from_secs(10) }
    }
}

/// Where to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Endpoint {
    /// `host:port` over TCP (IPv4 or IPv6; names are resolved).
    Tcp(String),
    /// A Unix domain socket path.
    Unix(PathBuf),
    /// `host:port` over TLS (see [`tls`]); build with [`Endpoint::tls`] or
    /// [`Endpoint::parse_tls`].
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    Tls {
        /// `host:port`.
        addr: String,
        /// CA, client certificate, server name.
        config: std::sync::Arc<tls::TlsClientConfig>,
    },
    /// A `direct-tcpip` channel of a new SSH session (see [`ssh`]); parsed
    /// from `ssh://user@host:port/target_host:target_port`.
    #[cfg(feature = "ssh")]
    #[cfg_attr(docsrs, doc(cfg(feature = "ssh")))]
    Ssh {
        /// The RPyC server's `host:port` as seen from the SSH server.
        target: String,
        /// The SSH server, login and host key checking.
        config: std::sync::Arc<ssh::SshConfig>,
    },
    /// The targets of a DNS SRV name (see [`srv`]), tried in RFC 2782
    /// order until one accepts; parsed from `srv://_rpyc._tcp.example.com`
    /// (system resolver) or built with [`Endpoint::srv`] (TCP) or
    /// [`Endpoint::srv_tls`] (TLS).
    ///
    /// Build it with those constructors: with the `tls` feature it has one
    /// more field.
    #[cfg(feature = "srv")]
    #[cfg_attr(docsrs, doc(cfg(feature = "srv")))]
    #[non_exhaustive]
    Srv {
        /// The SRV name, e.g. `_rpyc._tcp.example.com`.
        name: String,
        /// Who answers the lookup.
        resolver: srv::SrvResolver,
        /// TLS to the targets (each checked against its own host name), or
        /// `None` for plain TCP.
        #[cfg(feature = "tls")]
        #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
        tls: Option<std::sync::Arc<tls::TlsClientConfig>>,
    },
}

impl Endpoint {
    /// The targets of the SRV name `name`, asked of `resolver`, over TCP.
    #[cfg(feature = "srv")]
    #[cfg_attr(docsrs, doc(cfg(feature = "srv")))]
    pub fn srv(name: impl Into<String>, resolver: srv::SrvResolver) -> Endpoint {
        Endpoint::Srv {
            name: name.into(),
            resolver,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The targets of the SRV name `name`, asked of `resolver`, over TLS
    /// (each target's certificate checked against its own host name unless
    /// `config` names the server).
    #[cfg(all(feature = "srv", feature = "tls"))]
    #[cfg_attr(docsrs, doc(cfg(all(feature = "srv", feature = "tls"))))]
    pub fn srv_tls(name: impl Into<String>, resolver: srv::SrvResolver, config: tls::TlsClientConfig) -> Endpoint {
        Endpoint::Srv { name: name.into(), resolver, tls: Some(std::sync::Arc::new(config)) }
    }

    /// Parses `tcp://host:port`, `unix:///path`, `ssh://…`,
    /// `srv://_service._proto.domain` (asking the system resolver) or a bare
    /// `host:port`.
    ///
    /// `ssh://` needs the `ssh` feature and `srv://` the `srv` feature;
    /// without them such an address is an [`Error::Transport`] naming the
    /// feature to enable.
    pub fn parse(s: &str) -> Result<Endpoint> {
        if let Some(rest) = s.strip_prefix("tcp://") {
            return Ok(Endpoint::Tcp(rest.trim_end_matches('/').to_string()));
        }
        if let Some(rest) = s.strip_prefix("unix://") {
            return Ok(Endpoint::Unix(PathBuf::from(rest)));
        }
        if s.starts_with("ssh://") {
            #[cfg(feature = "ssh")]
            {
                let (config, target) = ssh::parse_url(s)?;
                return Ok(Endpoint::Ssh { target, config: std::sync::Arc::new(config) });
            }
            #[cfg(not(feature = "ssh"))]
            return Err(feature_disabled(s, "ssh"));
        }
        if s.starts_with("srv://") {
            #[cfg(feature = "srv")]
            {
                let name = srv::parse_srv_url(s).unwrap_or_default();
                return Ok(Endpoint::srv(name, srv::SrvResolver::system()?));
            }
            #[cfg(not(feature = "srv"))]
            return Err(feature_disabled(s, "srv"));
        }
        if s.starts_with("tls://") {
            #[cfg(feature = "tls")]
            return Err(Error::Transport(format!(
                "'{s}' needs a TLS client configuration (CA, client certificate): use \
                 Endpoint::parse_tls or ClientBuilder::tls"
            )));
            #[cfg(not(feature = "tls"))]
            return Err(feature_disabled(s, "tls"));
        }
        if s.contains("://") {
            return Err(Error::Transport(format!(
                "unsupported address '{s}': use tcp://host:port, unix:///path or srv://_service._proto.domain"
            )));
        }
        if s.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            return Ok(Endpoint::Tcp(s.to_string()));
        }
        Err(Error::Transport(port_problem(s)))
    }
}

/// The error for an address whose scheme needs a crate feature this build
/// was compiled without.
#[cfg(not(all(feature = "tls", feature = "ssh", feature = "srv")))]
pub(crate) fn feature_disabled(addr: &str, feature: &str) -> Error {
    let scheme = addr.split_once("://").map_or(addr, |(scheme, _)| scheme);
    Error::Transport(format!(
        "'{addr}': {scheme}:// addresses need rpyc's \"{feature}\" feature, which this build does not have \
         (in Cargo.toml: rpyc = {{ version = \"…\", features = [\"{feature}\"] }})"
    ))
}

/// Why `host:port` text has no usable port, for error messages: no port at
/// all, or one that is not a number from 1 to 65535.
pub(crate) fn port_problem(s: &str) -> String {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.ends_with(':') || host.starts_with('[') => format!(
            "address '{s}' has an invalid port {port:?}: give a number from 1 to 65535 \
             (host:port, tcp://host:port or unix:///path)"
        ),
        _ => format!("address '{s}' has no port: use host:port, tcp://host:port or unix:///path"),
    }
}

/// Opens a TCP stream with the given options.
pub async fn connect_tcp(addr: &str, opts: &TcpOptions) -> Result<(TcpStream, Credentials)> {
    let stream = match tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Error::Connect(format!("cannot connect to {addr}: {e}"))),
        Err(_) => {
            return Err(Error::ConnectTimeout(format!(
                "connecting to {addr} timed out after {:?}",
                opts.connect_timeout
            )))
        }
    };
    apply_tcp_options(&stream, opts)?;
    let peer = stream.peer_addr().map(PeerAddr::Ip).unwrap_or_default();
    Ok((stream, Credentials::anonymous(TransportKind::Tcp, peer)))
}

pub(crate) fn apply_tcp_options(stream: &TcpStream, opts: &TcpOptions) -> Result<()> {
    stream.set_nodelay(opts.nodelay)?;
    if let Some(idle) = opts.keepalive {
        let ka = socket2::TcpKeepalive::new().with_time(idle);
        socket2::SockRef::from(stream).set_tcp_keepalive(&ka)?;
    }
    Ok(())
}

/// A TCP stream that acknowledges bulk data at once.
///
/// Python rpyc writes a large frame in 64,000-byte `send`s on a socket
/// without `TCP_NODELAY`: Nagle's algorithm holds each chunk's tail until
/// the previous one is acknowledged, and Linux delays that ACK by up to
/// 40 ms on a connection in request/response ("ping-pong") mode, so a
/// 64 KiB call from Python stalls for most of 40 ms. Every 16 KiB read we
/// switch the socket to quick-ACK mode (`TCP_QUICKACK`), which also sends
/// the ACK the kernel was holding. Small calls, the latency path, never
/// pay the extra system call. Elsewhere than Linux this is a plain stream.
pub(crate) struct QuickAck {
    inner: TcpStream,
    /// Bytes read since the last quick ACK.
    unacked: usize,
}

impl QuickAck {
    const EVERY: usize = 16 << 10;

    pub(crate) fn new(inner: TcpStream) -> QuickAck {
        QuickAck { inner, unacked: 0 }
    }

    #[cfg(feature = "tls")]
    pub(crate) fn into_inner(self) -> TcpStream {
        self.inner
    }

    fn ack_now(&self) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Err(e) = socket2::SockRef::from(&self.inner).set_tcp_quickack(true) {
            tracing::trace!(error = %e, "TCP_QUICKACK failed");
        }
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = r {
            self.unacked += buf.filled().len().saturating_sub(before);
            if self.unacked >= Self::EVERY {
                self.unacked = 0;
                self.ack_now();
            }
        }
        r
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Opens a stream to an endpoint.
pub async fn connect_endpoint(endpoint: &Endpoint, opts: &TcpOptions) -> Result<(BoxStream, Credentials)> {
    match endpoint {
        Endpoint::Tcp(addr) => {
            let (s, c) = connect_tcp(addr, opts).await?;
            Ok((Box::new(QuickAck::new(s)), c))
        }
        #[cfg(unix)]
        Endpoint::Unix(path) => {
            let s = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| Error::Connect(format!("cannot connect to unix socket {}: {e}", path.display())))?;
            Ok((Box::new(s), Credentials::anonymous(TransportKind::Unix, PeerAddr::Unix(Some(path.clone())))))
        }
        #[cfg(not(unix))]
        Endpoint::Unix(_) => Err(Error::Transport("unix sockets are not available on this platform".into())),
        #[cfg(feature = "tls")]
        Endpoint::Tls { addr, config } => tls::connect_tls_with(addr, config, opts).await,
        #[cfg(feature = "ssh")]
        Endpoint::Ssh { target, config } => ssh::connect(config, target).await,
        #[cfg(all(feature = "srv", feature = "tls"))]
        Endpoint::Srv { name, resolver, tls: Some(config) } => srv::connect_tls(name, resolver, config, opts).await,
        #[cfg(feature = "srv")]
        Endpoint::Srv { name, resolver, .. } => srv::connect(name, resolver, opts).await,
    }
}

/// A boxed future borrowing from `'a`.
pub type BoxFut<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The transport handshake still to run (TLS, nothing for TCP): it yields
/// the stream and the credentials the transport establishes (e.g. the
/// client certificate).
pub type Handshake = BoxFut<'static, Result<(BoxStream, Credentials)>>;

/// A freshly accepted peer whose transport handshake (TLS, nothing for TCP)
/// has not run yet. The server runs [`Incoming::handshake`] in the
/// connection's own task under the authentication deadline, so one slow
/// peer never holds up the accept loop.
///
/// On a listener that expects a PROXY protocol header (see [`proxy`]),
/// the handshake starts by reading it; a server that limits connections
/// per client address calls [`Incoming::read_proxy_header`] first, checks
/// the real address in [`Incoming::peer`], then completes the handshake.
pub struct Incoming {
    /// Where the peer connected from. On a PROXY-protocol listener: the
    /// proxy, until [`Incoming::read_proxy_header`] has read the client's
    /// address.
    pub peer: PeerAddr,
    stage: Stage,
}

enum Stage {
    Handshake(Handshake),
    /// Reads the PROXY header: the client's address and the handshake.
    ProxyHeader(BoxFut<'static, Result<(PeerAddr, Handshake)>>),
    /// A header read that was cancelled (its deadline passed).
    Interrupted,
}

impl Incoming {
    /// A peer whose stream `handshake` completes.
    pub fn new(peer: PeerAddr, handshake: Handshake) -> Incoming {
        Incoming { peer, stage: Stage::Handshake(handshake) }
    }

    /// An incoming stream that needs no handshake.
    pub fn ready(stream: BoxStream, creds: Credentials) -> Incoming {
        Incoming::new(creds.peer.clone(), Box::pin(std::future::ready(Ok((stream, creds)))))
    }

    /// A peer behind a proxy: `proxy` is the socket's peer; `header` reads
    /// the PROXY header and yields the client's address and the rest of the
    /// handshake.
    pub fn behind_proxy(proxy: PeerAddr, header: BoxFut<'static, Result<(PeerAddr, Handshake)>>) -> Incoming {
        Incoming { peer: proxy, stage: Stage::ProxyHeader(header) }
    }

    /// True until the PROXY header this peer must send has been read.
    pub fn awaits_proxy_header(&self) -> bool {
        matches!(self.stage, Stage::ProxyHeader(_))
    }

    /// Reads the PROXY header, if the listener expects one; afterwards
    /// [`Incoming::peer`] is the client's address. Does nothing otherwise.
    pub async fn read_proxy_header(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.stage, Stage::Interrupted) {
            Stage::ProxyHeader(header) => {
                let (peer, handshake) = header.await?;
                self.peer = peer;
                self.stage = Stage::Handshake(handshake);
            }
            other => self.stage = other,
        }
        Ok(())
    }

    /// Completes the transport handshake (reading the PROXY header first
    /// if it has not been read) and yields the stream with its credentials.
    pub async fn handshake(mut self) -> Result<(BoxStream, Credentials)> {
        self.read_proxy_header().await?;
        match self.stage {
            Stage::Handshake(handshake) => handshake.await,
            _ => Err(Error::Transport(format!(
                "the connection from {} was abandoned while its PROXY header was read",
                self.peer
            ))),
        }
    }
}

/// A source of incoming streams: TCP, Unix, TLS, SSH channels…
pub trait Accept: Send + Sync + 'static {
    /// Waits for the next peer. Must return quickly once a peer is there;
    /// slow work belongs in [`Incoming::handshake`].
    fn accept(&self) -> BoxFut<'_, std::io::Result<Incoming>>;
    /// A short description for logs, e.g. `tcp://127.0.0.1:18861`.
    fn describe(&self) -> String;
    /// The bound TCP address, if any.
    fn local_addr(&self) -> Option<SocketAddr> {
        None
    }
}

/// A listener: any [`Accept`] implementation, boxed.
pub struct Listener(Box<dyn Accept>);

impl Listener {
    /// Wraps a custom acceptor.
    pub fn new(acceptor: impl Accept) -> Listener {
        Listener(Box::new(acceptor))
    }

    /// Binds TCP (`"127.0.0.1:0"` picks a free port).
    pub async fn tcp(addr: &str) -> Result<Listener> {
        Ok(Listener::new(TcpAcceptor::bind(addr).await?))
    }

    /// Binds a Unix socket, replacing a stale socket file.
    #[cfg(unix)]
    pub async fn unix(path: impl Into<PathBuf>) -> Result<Listener> {
        Ok(Listener::new(UnixAcceptor::bind(path.into())?))
    }

    /// Starts an embedded SSH endpoint whose `direct-tcpip` channels are
    /// served as RPyC connections (see [`ssh::SshAcceptor`]).
    #[cfg(feature = "ssh")]
    #[cfg_attr(docsrs, doc(cfg(feature = "ssh")))]
    pub async fn ssh(addr: &str, config: ssh::SshServerConfig) -> Result<Listener> {
        Ok(Listener::new(ssh::SshAcceptor::bind(addr, config).await?))
    }

    /// The bound TCP address (None for Unix sockets).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.0.local_addr()
    }

    /// A short description for logs.
    pub fn describe(&self) -> String {
        self.0.describe()
    }

    /// Waits for the next peer.
    pub async fn accept(&self) -> std::io::Result<Incoming> {
        self.0.accept().await
    }
}

/// Plain TCP.
pub struct TcpAcceptor {
    listener: TcpListener,
    opts: TcpOptions,
    proxy_protocol: bool,
}

impl TcpAcceptor {
    /// Binds `addr`.
    pub async fn bind(addr: &str) -> Result<TcpAcceptor> {
        let listener =
            TcpListener::bind(addr).await.map_err(|e| Error::Transport(format!("cannot listen on {addr}: {e}")))?;
        Ok(TcpAcceptor { listener, opts: TcpOptions::default(), proxy_protocol: false })
    }

    /// Requires a PROXY protocol header (v1 or v2, see [`proxy`]) at the
    /// start of every connection, and takes the client's address from it.
    /// Default: off — only turn it on where nothing but the proxy can reach
    /// the port, since whoever connects writes the header.
    #[cfg(feature = "proxy-protocol")]
    #[cfg_attr(docsrs, doc(cfg(feature = "proxy-protocol")))]
    pub fn with_proxy_protocol(mut self, on: bool) -> Self {
        self.proxy_protocol = on;
        self
    }

    /// True if connections must start with a PROXY header (never without
    /// the `proxy-protocol` feature).
    pub fn proxy_protocol(&self) -> bool {
        self.proxy_protocol
    }

    /// Accepts one TCP stream (used by TLS and other layers on top of TCP).
    pub async fn accept_tcp(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
        let (s, peer) = self.listener.accept().await?;
        if let Err(e) = apply_tcp_options(&s, &self.opts) {
            tracing::debug!(error = %e, "could not set TCP options");
        }
        Ok((s, peer))
    }

    /// The bound address.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }
}

impl Accept for TcpAcceptor {
    fn accept(&self) -> BoxFut<'_, std::io::Result<Incoming>> {
        Box::pin(async move {
            let (s, peer) = self.accept_tcp().await?;
            let ready = |s: TcpStream, peer: SocketAddr| -> (BoxStream, Credentials) {
                (Box::new(QuickAck::new(s)), Credentials::anonymous(TransportKind::Tcp, PeerAddr::Ip(peer)))
            };
            #[cfg(feature = "proxy-protocol")]
            if self.proxy_protocol {
                return Ok(Incoming::behind_proxy(
                    PeerAddr::Ip(peer),
                    Box::pin(async move {
                        let (s, client) = read_proxy_header(s, peer).await?;
                        let handshake: Handshake = Box::pin(std::future::ready(Ok(ready(s, client))));
                        Ok((PeerAddr::Ip(client), handshake))
                    }),
                ));
            }
            let (stream, creds) = ready(s, peer);
            Ok(Incoming::ready(stream, creds))
        })
    }
    fn describe(&self) -> String {
        match self.addr() {
            Some(a) => format!("tcp://{a}"),
            None => "tcp://?".into(),
        }
    }
    fn local_addr(&self) -> Option<SocketAddr> {
        self.addr()
    }
}

/// Reads the PROXY header at the start of `tcp` (from the proxy at
/// `proxy`); returns the stream, positioned just after it, and the
/// client's address (the proxy's own for `LOCAL` health checks).
#[cfg(feature = "proxy-protocol")]
pub(crate) async fn read_proxy_header(mut tcp: TcpStream, proxy: SocketAddr) -> Result<(TcpStream, SocketAddr)> {
    match proxy::read_header(&mut tcp).await {
        Ok(proxy::ProxySource::Client(client)) => Ok((tcp, client)),
        Ok(proxy::ProxySource::Local) => Ok((tcp, proxy)),
        Err(e) => Err(Error::Transport(format!("from {proxy}: {e}"))),
    }
}

/// A Unix domain socket; the socket file is removed when dropped.
#[cfg(unix)]
pub struct UnixAcceptor {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

#[cfg(unix)]
impl UnixAcceptor {
    /// Binds `path`, replacing a stale socket file.
    pub fn bind(path: PathBuf) -> Result<UnixAcceptor> {
        if path.exists() {
            let _ = std::fs::remove_file(&path);
        }
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| Error::Transport(format!("cannot listen on unix socket {}: {e}", path.display())))?;
        Ok(UnixAcceptor { listener, path })
    }
}

#[cfg(unix)]
impl Accept for UnixAcceptor {
    fn accept(&self) -> BoxFut<'_, std::io::Result<Incoming>> {
        Box::pin(async move {
            let (s, _) = self.listener.accept().await?;
            Ok(Incoming::ready(Box::new(s), Credentials::anonymous(TransportKind::Unix, PeerAddr::Unix(None))))
        })
    }
    fn describe(&self) -> String {
        format!("unix://{}", self.path.display())
    }
}

#[cfg(unix)]
impl Drop for UnixAcceptor {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(Endpoint::parse("tcp://h:1").ok(), Some(Endpoint::Tcp("h:1".into())));
        assert_eq!(Endpoint::parse("127.0.0.1:18861").ok(), Some(Endpoint::Tcp("127.0.0.1:18861".into())));
        assert_eq!(Endpoint::parse("unix:///tmp/x").ok(), Some(Endpoint::Unix("/tmp/x".into())));
        assert!(Endpoint::parse("http://x:1").is_err());
        assert!(Endpoint::parse("nohost").is_err());
    }

    #[test]
    fn schemes_of_disabled_features_name_the_feature() {
        for (addr, feature, enabled) in [
            ("tls://h:1", "tls", cfg!(feature = "tls")),
            ("ssh://u@h/t:1", "ssh", cfg!(feature = "ssh")),
            ("srv://_rpyc._tcp.example.com", "srv", cfg!(feature = "srv")),
        ] {
            if enabled {
                continue;
            }
            let e = Endpoint::parse(addr).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(&format!("\"{feature}\" feature")), "{addr}: {e}");
        }
    }

    #[test]
    #[cfg(feature = "srv")]
    fn srv_endpoints_compare_by_name_and_nameservers() {
        let ns = |port| srv::SrvResolver::with_nameservers(&[SocketAddr::from(([127, 0, 0, 1], port))]);
        assert_eq!(Endpoint::srv("_rpyc._tcp.a", ns(53)), Endpoint::srv("_rpyc._tcp.a", ns(53)));
        assert_ne!(Endpoint::srv("_rpyc._tcp.a", ns(53)), Endpoint::srv("_rpyc._tcp.a", ns(5353)));
        assert_ne!(Endpoint::srv("_rpyc._tcp.a", ns(53)), Endpoint::srv("_rpyc._tcp.b", ns(53)));
    }
}
