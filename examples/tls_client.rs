//! Calls a TLS server with a client certificate; the server sees the
//! certificate's common name as our identity.
//!
//! ```text
//! cargo run --bin rpyc -- certs init --dir certs      # once
//! cargo run --example tls_server -- --certs certs     # terminal 1
//! cargo run --example tls_client -- --certs certs     # terminal 2: "whoami: client"
//! cargo run --bin rpyc -- certs client alice --dir certs
//! cargo run --example tls_client -- --certs certs --name alice   # "whoami: alice"
//! ```
//!
//! `--server-name` checks the server certificate against another name than
//! the one dialled (useful behind tunnels and port forwards).

use clap::Parser;
use rpyc::transport::tls::TlsClientConfig;
use rpyc::ClientBuilder;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Call a TLS server with a client certificate")]
struct Cli {
    /// Directory with ca.pem and NAME.pem / NAME.key.
    #[arg(long, default_value = "certs")]
    certs: PathBuf,
    /// Which client certificate to present.
    #[arg(long, default_value = "client")]
    name: String,
    /// The server.
    #[arg(long, default_value = "localhost:18821")]
    addr: String,
    /// The name the server certificate must carry (default: the host in --addr).
    #[arg(long)]
    server_name: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let mut tls = TlsClientConfig::from_dir(&cli.certs, &cli.name)?;
    if let Some(name) = cli.server_name {
        tls = tls.with_server_name(name);
    }
    let conn = ClientBuilder::new().tls(tls).connect(&cli.addr).await?;
    let root = conn.root().await?;
    let who: Option<String> = root.call_method("whoami", ()).await?;
    println!("whoami: {}", who.as_deref().unwrap_or("(nobody)"));
    let sum: i64 = root.call_method("add", (5, 10)).await?;
    println!("add(5, 10) = {sum}");
    conn.close().await;
    Ok(())
}
