//! Serves the CONFORMANCE service (see `rpyc::conformance`), the reference
//! service used by the interop tests — and handy for trying a Python client.
//!
//! ```text
//! cargo run --release --example conformance_server -- --port 18861
//! python -c "import rpyc; c = rpyc.connect('localhost', 18861); print(c.root.add(5, 10))"
//! ```
//!
//! Options: `--host H` (default 127.0.0.1), `--port P` (0 picks a free port,
//! printed as `PORT <n>` on stdout), `--unix PATH`, `--allow-public-attrs`.

use clap::Parser;
use rpyc::transport::Listener;
use rpyc::{AccessPolicy, Server, ServerConfig};

#[derive(Parser)]
#[command(about = "Serve the CONFORMANCE service")]
struct Cli {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// TCP port (0 = any free port).
    #[arg(long)]
    port: Option<u16>,
    /// Also (or only) listen on this Unix socket path.
    #[arg(long)]
    unix: Option<std::path::PathBuf>,
    /// Switch on allow_public_attrs for every connection.
    #[arg(long)]
    allow_public_attrs: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let policy = AccessPolicy::default().with_public_attrs(cli.allow_public_attrs);
    let mut server = Server::new(rpyc::conformance::service(), ServerConfig::default().with_policy(policy));
    if cli.port.is_some() || cli.unix.is_none() {
        let addr = format!("{}:{}", cli.host, cli.port.unwrap_or(18861));
        server = server.listen(Listener::tcp(&addr).await?);
        for a in server.local_addrs() {
            println!("PORT {}", a.port());
        }
    }
    if let Some(path) = &cli.unix {
        server = server.listen(Listener::unix(path).await?);
        println!("UNIX {}", path.display());
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    server.run_until_ctrl_c().await?;
    Ok(())
}
