//! `rpyc serve`: the CONFORMANCE service on TCP, TLS, a Unix socket or
//! stdin/stdout (`--stdio`, for `connect_subproc`-style parents),
//! optionally kept registered with a registry.

use super::support::{parse_seconds, print_json, runtime, usage, wait_for_signal, Listening, RegistryArgs};
use super::CmdResult;
use clap::Args;
use rpyc::auth::{IdentityFrom, TlsClientCert};
use rpyc::registry::{Registrar, RegistrarConfig};
use rpyc::transport::tls::{TlsAcceptor, TlsServerConfig};
use rpyc::transport::{Listener, TcpAcceptor};
use rpyc::{Server, ServerConfig};
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The address to listen on; 0.0.0.0 (or ::) serves every interface.
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// The TCP port (0 picks a free one; the address is printed).
    #[arg(long, short = 'p', value_name = "PORT", default_value_t = 18861)]
    pub port: u16,
    /// Serve on this Unix socket instead of TCP.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["tls", "register", "registry"])]
    pub unix: Option<PathBuf>,
    /// Serve TLS with the certificates in CERTDIR (server.pem, server.key,
    /// and ca.pem for client certificates), as written by `rpyc certs init`.
    #[arg(long, value_name = "CERTDIR")]
    pub tls: Option<PathBuf>,
    /// Every connection (TCP or TLS) must start with a PROXY protocol
    /// header (HAProxy `send-proxy`/`send-proxy-v2`, AWS NLB, Envoy); the
    /// client address in it is the one logged and limited. Only where
    /// nothing but the proxy reaches the port.
    #[arg(long, conflicts_with = "unix")]
    pub proxy_protocol: bool,
    /// With --tls: authenticate by client certificate and take the
    /// identity (whoami) from its cn, its one uri-san (e.g. a SPIFFE ID) or
    /// its one dns-san; certificates without exactly one are refused.
    #[arg(long, value_name = "SOURCE", requires = "tls")]
    pub identity_from: Option<IdentityFrom>,
    /// Keep the service registered with a registry (UDP broadcast unless
    /// --registry is given); unregisters on Ctrl-C/SIGTERM.
    #[arg(long)]
    pub register: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Seconds between re-registrations.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_seconds)]
    pub register_interval: Duration,
    /// Serve one connection on stdin/stdout instead of listening (Python's
    /// PipeStream: `rpyc.utils.factory.connect_subproc(["rpyc", "serve",
    /// "--stdio"])`); exits when stdin ends. Logs stay on stderr.
    #[arg(long, conflicts_with_all = ["unix", "tls", "register", "registry", "json"])]
    pub stdio: bool,
    /// Print the listening address as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run_serve(args: &ServeArgs) -> CmdResult {
    if args.stdio {
        let rt = runtime()?;
        let result = rt.block_on(serve_stdio());
        // A read of stdin may still be parked on a blocking thread (after a
        // signal): do not wait for it.
        rt.shutdown_timeout(Duration::from_millis(100));
        return result;
    }
    let register = args.register || args.registry.registry.is_some();
    let registry = if register { Some(args.registry.client()?) } else { None };
    let host_ip: Option<IpAddr> = args.host.trim_matches(['[', ']']).parse().ok();
    if args.unix.is_none() && host_ip.is_none() && args.host.contains(':') {
        return Err(usage(format!("--host {:?} is not a host name or IP address", args.host)));
    }
    runtime()?.block_on(serve(args, registry, host_ip))
}

/// One connection on stdin/stdout: nothing but RPyC may reach stdout.
async fn serve_stdio() -> CmdResult {
    let service = rpyc::conformance::service();
    super::support::banner(format_args!("rpyc serve: {} on stdin/stdout", service.name()));
    let (stream, creds) = rpyc::transport::pipe::stdio();
    let server = Server::new(service, ServerConfig::default());
    tokio::select! {
        reason = server.serve_connection(Box::new(stream), creds) => {
            super::support::banner(format_args!("rpyc serve: connection ended: {reason}"));
        }
        _ = wait_for_signal() => super::support::banner(format_args!("rpyc serve: stopping")),
    }
    Ok(())
}

async fn serve(
    args: &ServeArgs,
    registry: Option<rpyc::registry::RegistryClient>,
    host_ip: Option<IpAddr>,
) -> CmdResult {
    let service = rpyc::conformance::service();
    let addr = match host_ip {
        Some(IpAddr::V6(ip)) => format!("[{ip}]:{}", args.port),
        _ => format!("{}:{}", args.host, args.port),
    };
    let (listener, scheme) = match (&args.unix, &args.tls) {
        #[cfg(unix)]
        (Some(path), _) => (Listener::unix(path.clone()).await?, "unix"),
        #[cfg(not(unix))]
        (Some(_), _) => return Err("unix sockets are not available on this platform".into()),
        (None, Some(dir)) => {
            let config = TlsServerConfig::from_dir(dir)?;
            let acceptor = TlsAcceptor::bind(&addr, &config).await?.with_proxy_protocol(args.proxy_protocol);
            (Listener::new(acceptor), "tls")
        }
        (None, None) => {
            (Listener::new(TcpAcceptor::bind(&addr).await?.with_proxy_protocol(args.proxy_protocol)), "tcp")
        }
    };
    let listening = match (listener.local_addr(), &args.unix) {
        (_, Some(path)) => format!("unix://{}", path.display()),
        (Some(a), None) => format!("{scheme}://{a}"),
        (None, None) => listener.describe(),
    };
    let port = listener.local_addr().map(|a| a.port());
    let mut config = ServerConfig::default();
    if let Some(from) = args.identity_from {
        config = config.with_authenticator(TlsClientCert::new().identity_from(from));
    }
    let server = Server::new(service.clone(), config).listen(listener);
    if args.json {
        print_json(&Listening { listening: &listening, port });
    } else {
        println!("listening on {listening}");
    }
    std::io::stdout().flush()?;
    super::support::banner(format_args!("rpyc serve: {} on {listening} (Ctrl-C to stop)", service.name()));
    let stop = server.spawn();

    let registrar = match (registry, port) {
        (Some(mut client), Some(port)) => {
            // The registry records the address a registration comes from:
            // send from the address we serve on, as Python does.
            if let Some(ip) = host_ip.filter(|ip| !ip.is_unspecified()) {
                client = client.bind_ip(ip);
            }
            super::support::banner(format_args!(
                "rpyc serve: registering {} (port {port}) with {} every {:?}",
                service.aliases().join(", "),
                client.describe(),
                args.register_interval
            ));
            let mut config = RegistrarConfig::default();
            config.interval = args.register_interval;
            Some(Registrar::start_with(client, service.aliases().to_vec(), port, config))
        }
        _ => None,
    };

    wait_for_signal().await;
    super::support::banner(format_args!("rpyc serve: stopping"));
    if let Some(r) = registrar {
        r.stop().await;
    }
    stop.shutdown();
    // Give connections a moment to see the shutdown and close cleanly.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}
