//! `rpyc registry`, `rpyc discover`, `rpyc list`: the registry from the
//! command line (`rpyc_registry` and `rpyc.discover` in Python).

use super::support::{parse_seconds, print_json, runtime, usage, wait_for_signal, Listening, RegistryArgs};
use super::CmdResult;
use clap::Args;
use rpyc::registry::{self, RegistryClient, RegistryConfig, RegistryError, RegistryServer, REGISTRY_PORT};
use std::io::Write;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct RegistryCmdArgs {
    /// Serve over UDP (the default): answers broadcasts, and Python's
    /// UDPRegistryClient.
    #[arg(long, conflicts_with = "tcp")]
    pub udp: bool,
    /// Serve over TCP (Python's TCPRegistryClient): crosses routers that
    /// drop broadcasts.
    #[arg(long)]
    pub tcp: bool,
    /// The address to listen on. The default, 0.0.0.0, is Python's: every
    /// interface, so broadcasts reach it. Anyone who can reach it can
    /// register names; prefer 127.0.0.1 or the trusted network's address.
    #[arg(long, value_name = "HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// The port to listen on (0 picks a free one; the port is printed).
    #[arg(long, value_name = "PORT", default_value_t = REGISTRY_PORT)]
    pub port: u16,
    /// Answer LIST requests (`rpyc list`, `rpyc.list_services()`): anyone
    /// who asks learns what runs where.
    #[arg(long)]
    pub allow_listing: bool,
    /// Forget a server this many seconds after its last registration
    /// (servers re-register every 60 s).
    #[arg(long, value_name = "SECONDS", default_value = "240", value_parser = parse_seconds)]
    pub pruning_timeout: Duration,
    /// Most (service, server) entries kept; registrations beyond are refused.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_entries: usize,
    /// Print the listening address as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DiscoverArgs {
    /// The service name or alias (any case), e.g. CONFORMANCE.
    #[arg(value_name = "NAME")]
    pub name: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print a JSON array of {"host", "port"} objects.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Only services with a server on this host (an IP address as the
    /// registry saw it).
    #[arg(long, value_name = "HOST")]
    pub filter_host: Option<String>,
    /// Print a JSON array of names.
    #[arg(long)]
    pub json: bool,
}

pub fn run_registry(args: &RegistryCmdArgs) -> CmdResult {
    if args.max_entries == 0 {
        return Err(usage("--max-entries must be at least 1"));
    }
    let mut config = RegistryConfig::default();
    config.allow_listing = args.allow_listing;
    config.pruning_timeout = args.pruning_timeout;
    config.max_entries = args.max_entries;
    config.max_entries_per_host = config.max_entries_per_host.min(args.max_entries);
    let addr = if args.host.contains(':') && !args.host.starts_with('[') {
        format!("[{}]:{}", args.host, args.port)
    } else {
        format!("{}:{}", args.host, args.port)
    };
    runtime()?.block_on(serve_registry(args, config, &addr))
}

async fn serve_registry(args: &RegistryCmdArgs, config: RegistryConfig, addr: &str) -> CmdResult {
    let server = if args.tcp {
        RegistryServer::bind_tcp(addr, config).await?
    } else {
        RegistryServer::bind_udp(addr, config).await?
    };
    let listening = server.describe();
    if args.json {
        print_json(&Listening { listening: &listening, port: Some(server.local_addr().port()) });
    } else {
        println!("listening on {listening}");
    }
    std::io::stdout().flush()?;
    super::support::banner(format_args!(
        "rpyc registry on {listening}: pruning after {:?}, listing {} (Ctrl-C to stop)",
        args.pruning_timeout,
        if args.allow_listing { "allowed" } else { "refused" }
    ));
    let handle = server.spawn();
    wait_for_signal().await;
    super::support::banner(format_args!("rpyc registry: stopping"));
    handle.shutdown();
    Ok(())
}

pub fn run_discover(args: &DiscoverArgs) -> CmdResult {
    let client = args.registry.client()?;
    runtime()?.block_on(discover(args, client))
}

async fn discover(args: &DiscoverArgs, client: RegistryClient) -> CmdResult {
    tracing::info!(registry = %client.describe(), name = %args.name, "querying");
    let servers = match registry::discover(&client, &args.name).await {
        Ok(s) => s,
        Err(e @ RegistryError::NotFound { .. }) if args.json => {
            println!("[]");
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        #[derive(serde::Serialize)]
        struct Found<'a> {
            host: &'a str,
            port: u16,
        }
        print_json(&servers.iter().map(|s| Found { host: &s.host, port: s.port }).collect::<Vec<_>>());
    } else {
        for s in &servers {
            println!("{s}");
        }
    }
    Ok(())
}

pub fn run_list(args: &ListArgs) -> CmdResult {
    let client = args.registry.client()?;
    runtime()?.block_on(list(args, client))
}

async fn list(args: &ListArgs, client: RegistryClient) -> CmdResult {
    tracing::info!(registry = %client.describe(), "listing");
    let names = registry::list_services(&client, args.filter_host.as_deref()).await?;
    if args.json {
        print_json(&names);
    } else {
        for n in &names {
            println!("{n}");
        }
    }
    if names.is_empty() {
        super::support::notice(
            tracing::Level::WARN,
            format_args!("rpyc: the registry at {} knows no services", client.describe()),
        );
    }
    Ok(())
}
