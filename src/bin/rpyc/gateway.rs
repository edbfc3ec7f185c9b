//! `rpyc gateway`: the protocol-aware TLS/SSH gateway (see `rpyc::gateway`).
//!
//! ```text
//! rpyc gateway --config gateway.toml
//! rpyc gateway --listen tls://0.0.0.0:18821 --tls certs --upstream tcp://127.0.0.1:18812 [--policy policy.toml]
//!              [--proxy-protocol] [--identity-from cn|uri-san|dns-san]
//! rpyc gateway --listen tls://0.0.0.0:18821 --tls certs --upstream tcp://10.0.0.5:18812 --upstream tcp://10.0.0.6:18812
//! rpyc gateway --listen tls://0.0.0.0:18821 --tls certs --upstream srv://_rpyc._tcp.calc.example --dns 10.0.0.2:53
//! rpyc gateway --config gateway.toml --check
//! ```
//!
//! SIGHUP reloads the configuration (policies, routes, upstreams,
//! certificates, secrets); SIGINT/SIGTERM drain calls in flight and stop (a
//! second signal stops at once).

use super::support::usage;
use super::CmdResult;
use clap::Args;
use rpyc::auth::IdentityFrom;
use rpyc::gateway::config::{AuditConfig, AuditFormat, MetricsConfig};
use rpyc::gateway::{Gateway, GatewayConfig, GatewayPolicySet, ListenerConfig, UpstreamConfig};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// The gateway configuration file (TOML: [[listen]], [upstream.NAME],
    /// [[route]], [policy], [limits], [audit], [metrics]).
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        conflicts_with_all = ["listen", "tls", "upstream", "policy", "proxy_protocol", "identity_from"]
    )]
    pub config: Option<PathBuf>,
    /// Check the configuration and the files it names, print what the
    /// gateway would apply (listeners, upstreams, routes, policies), and
    /// exit: 0 if it can start, 1 if not. Binds nothing, contacts nobody.
    #[arg(long)]
    pub check: bool,
    /// Where clients connect: tls://HOST:PORT (with --tls).
    #[arg(long, value_name = "URL", requires_all = ["tls"])]
    pub listen: Option<String>,
    /// Certificate directory for --listen: ca.pem (client certificates must
    /// be signed by it), server.pem, server.key — as `rpyc certs init` writes.
    #[arg(long, value_name = "CERTDIR")]
    pub tls: Option<PathBuf>,
    /// The RPyC server behind the gateway: tcp://HOST:PORT, unix:///PATH,
    /// or srv://_SERVICE._tcp.NAME (every target of a DNS SRV record).
    /// Repeat for a pool: new connections go to a healthy server.
    #[arg(long, value_name = "URL")]
    pub upstream: Vec<String>,
    /// Seconds between health checks of the upstream servers (connect and
    /// RPyC PING). Default: 5.
    #[arg(long, value_name = "SECS")]
    pub health_interval: Option<f64>,
    /// DNS server for srv:// upstreams, as IP:PORT (repeatable). Default:
    /// the system resolver.
    #[arg(long, value_name = "IP:PORT")]
    pub dns: Vec<String>,
    /// Policy file (TOML: [default], [policies.NAME], [identities], [groups]).
    /// Default for every identity: the root's public methods (not the
    /// classic roots) and their by-value results, nothing else; objects
    /// need [objects] grants, callbacks need callbacks = true.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// --listen sits behind a proxy (HAProxy `send-proxy`/`send-proxy-v2`,
    /// AWS NLB, Envoy): every connection must start with a PROXY protocol
    /// header, whose client address the audit trail, logs and per-address
    /// limits use. Only where nothing but the proxy reaches the port.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// Which part of the client certificate is the identity on --listen:
    /// cn (the common name), uri-san (its one URI SAN, e.g. a SPIFFE ID
    /// spiffe://example.org/billing) or dns-san (its one DNS SAN).
    #[arg(long, value_name = "SOURCE", default_value = "cn")]
    pub identity_from: IdentityFrom,
    /// Serve GET /metrics (Prometheus) and GET /healthz on HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<String>,
    /// Write the audit trail as JSON lines (to --audit-file, else stdout)
    /// instead of log records.
    #[arg(long)]
    pub audit_json: bool,
    /// Append JSON audit lines to FILE (implies --audit-json).
    #[arg(long, value_name = "FILE")]
    pub audit_file: Option<PathBuf>,
}

/// The configuration the arguments describe (re-read on SIGHUP).
fn load(args: &GatewayArgs) -> Result<GatewayConfig, Box<dyn std::error::Error>> {
    let mut config = if let Some(path) = &args.config {
        GatewayConfig::load(path)?
    } else {
        let (Some(listen), Some(tls), false) = (&args.listen, &args.tls, args.upstream.is_empty()) else {
            return Err(usage(
                "give --config FILE, or --listen tls://HOST:PORT --tls CERTDIR --upstream tcp://HOST:PORT",
            ));
        };
        if !listen.starts_with("tls://") {
            return Err(usage(format!(
                "--listen {listen:?}: the command line sets up TLS listeners only (tls://HOST:PORT); \
                 use --config for SSH and challenge-response listeners"
            )));
        }
        let policy = match &args.policy {
            Some(p) => GatewayPolicySet::load(p)?,
            None => GatewayPolicySet::default(),
        };
        let mut l = ListenerConfig::default();
        l.url = listen.clone();
        l.tls = Some(tls.clone());
        l.proxy_protocol = args.proxy_protocol;
        l.identity_from = args.identity_from;
        let upstream = match args.upstream.as_slice() {
            [one] => UpstreamConfig::url(one.clone()),
            many => UpstreamConfig::urls(many.iter().cloned()),
        };
        GatewayConfig::simple(l, upstream, policy)
    };
    if let Some(secs) = args.health_interval {
        if !(0.05..1e6).contains(&secs) {
            return Err(usage(format!("--health-interval {secs}: give a number of seconds, at least 0.05")));
        }
        config.health.interval_secs = secs;
    }
    if !args.dns.is_empty() {
        for d in &args.dns {
            if d.parse::<std::net::SocketAddr>().is_err() {
                return Err(usage(format!("invalid --dns {d:?}: expected IP:PORT, e.g. 10.0.0.2:53")));
            }
        }
        config.dns.nameservers = args.dns.clone();
    }
    if args.audit_json || args.audit_file.is_some() {
        let mut audit = AuditConfig::default();
        audit.format = AuditFormat::Json;
        audit.file = args.audit_file.clone();
        config.audit = audit;
    }
    if let Some(m) = &args.metrics {
        let mut metrics = MetricsConfig::default();
        metrics.listen = Some(m.clone());
        config.metrics = metrics;
    }
    config.validate()?;
    Ok(config)
}

/// `--check`: what the gateway would apply, and whether it could start.
fn check(args: &GatewayArgs, config: &GatewayConfig) -> CmdResult {
    let report = rpyc::gateway::check(config)?;
    let origin = args.config.as_ref().map_or("the command line".to_string(), |p| p.display().to_string());
    print!("{}", report.summary);
    for m in &report.missing {
        println!("missing: {m} (must exist when the gateway starts)");
    }
    for w in &report.warnings {
        println!("warning: {w}");
    }
    if report.errors.is_empty() {
        println!("configuration {origin} is valid");
        return Ok(());
    }
    for e in &report.errors {
        println!("error: {e}");
    }
    Err(format!("configuration {origin}: {} problem(s) would stop the gateway from starting", report.errors.len())
        .into())
}

pub fn run_gateway(args: &GatewayArgs) -> CmdResult {
    let config = load(args)?;
    if args.check {
        return check(args, &config);
    }
    let audit_on_stdout = config.audit.format == AuditFormat::Json && config.audit.file.is_none();
    super::support::runtime()?.block_on(async move {
        let gateway = Gateway::bind(config).await?;
        for (d, (name, _)) in gateway.describe().iter().zip(gateway.local_addrs()) {
            tracing::info!(listener = %name, "listening on {d}");
            if !audit_on_stdout {
                println!("listening {d}");
            }
        }
        if let Some(a) = gateway.metrics_addr() {
            if !audit_on_stdout {
                println!("metrics http://{a}/metrics");
            }
        }
        let handle = gateway.handle();
        let mut run = tokio::spawn(gateway.run());
        signals(args, &handle, &mut run).await
    })
}

#[cfg(unix)]
async fn signals(
    args: &GatewayArgs,
    handle: &rpyc::gateway::GatewayHandle,
    run: &mut tokio::task::JoinHandle<()>,
) -> CmdResult {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = &mut *run => return Ok(()),
            _ = hup.recv() => match load(args).map_err(|e| e.to_string()).and_then(|c| handle.reload(c).map_err(|e| e.to_string())) {
                Ok(report) => tracing::info!(reloaded = ?report.reloaded, "SIGHUP: configuration reloaded"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: reload failed; the previous configuration stays in force"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("draining calls in flight (send the signal again to stop at once)");
    handle.shutdown();
    tokio::select! {
        _ = &mut *run => {}
        _ = term.recv() => tracing::warn!("stopping without draining"),
        _ = int.recv() => tracing::warn!("stopping without draining"),
    }
    Ok(())
}

#[cfg(not(unix))]
async fn signals(
    _args: &GatewayArgs,
    handle: &rpyc::gateway::GatewayHandle,
    run: &mut tokio::task::JoinHandle<()>,
) -> CmdResult {
    tokio::select! {
        _ = &mut *run => return Ok(()),
        _ = tokio::signal::ctrl_c() => {}
    }
    handle.shutdown();
    let _ = run.await;
    Ok(())
}
