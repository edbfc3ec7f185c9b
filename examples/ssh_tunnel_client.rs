//! Calls an RPyC server through an SSH tunnel opened in-process: one SSH
//! session, two RPyC connections over `direct-tcpip` channels, no `ssh`
//! subprocess and no local port (Python's `rpyc.utils.factory.ssh_connect`
//! shells out to `ssh -L` instead).
//!
//! Against the embedded SSH endpoint of the conformance server (`whoami()`
//! then returns the SSH user):
//!
//! ```text
//! ssh-keygen -t ed25519 -N '' -f /tmp/rpyc_id                     # once
//! echo "identity=\"alice\" $(cat /tmp/rpyc_id.pub)" > /tmp/rpyc_authorized_keys   # alice's key
//! cargo run --example conformance_server -- --port 18861 --ssh-port 2222 \
//!     --host-key /tmp/rpyc_host_key --authorized-keys /tmp/rpyc_authorized_keys   # terminal 1
//! cargo run --example ssh_tunnel_client -- --ssh alice@127.0.0.1:2222 --key /tmp/rpyc_id \
//!     --known-hosts /tmp/rpyc_known_hosts --accept-new                # terminal 2
//! ```
//!
//! The first run records the host key in `/tmp/rpyc_known_hosts` (trust on
//! first use); later runs can drop `--accept-new` and are checked strictly.
//! Through a real OpenSSH server, `--target` is the RPyC server as seen from
//! that server: `--ssh you@gateway:22 --target localhost:18861`.
//!
//! Without `--key` the ssh-agent (`SSH_AUTH_SOCK`) and `~/.ssh/id_ed25519` are
//! tried; a passphrase-protected key takes its passphrase from the
//! `RPYC_SSH_PASSPHRASE` environment variable.

use clap::Parser;
use rpyc::transport::ssh::{SshConfig, SshSession};
use rpyc::ClientBuilder;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Call an RPyC server through an SSH tunnel")]
struct Cli {
    /// The SSH server: user@host[:port].
    #[arg(long)]
    ssh: String,
    /// Private key file.
    #[arg(long)]
    key: Option<PathBuf>,
    /// known_hosts file (default ~/.ssh/known_hosts).
    #[arg(long)]
    known_hosts: Option<PathBuf>,
    /// Record an unknown host key instead of refusing (trust on first use).
    #[arg(long)]
    accept_new: bool,
    /// The RPyC server, as seen from the SSH server.
    #[arg(long, default_value = "localhost:18861")]
    target: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let (user, server) = cli.ssh.split_once('@').ok_or("--ssh takes user@host[:port]")?;
    let (host, port) = match server.rsplit_once(':') {
        Some((h, p)) => (h, p.parse()?),
        None => (server, 22),
    };
    let mut config = SshConfig::new(host, port, user);
    if let Some(key) = cli.key {
        config = match std::env::var("RPYC_SSH_PASSPHRASE") {
            Ok(passphrase) => config.with_encrypted_key_file(key, passphrase),
            Err(_) => config.with_key_file(key),
        };
    }
    if let Some(path) = cli.known_hosts {
        config = config.with_known_hosts(path);
    }
    if cli.accept_new {
        config = config.trust_on_first_use();
    }
    let (target_host, target_port) = cli.target.rsplit_once(':').ok_or("--target takes host:port")?;
    let target_port: u16 = target_port.parse()?;

    let ssh = SshSession::connect(&config).await?;
    println!("logged in to {} as {} (host key {})", ssh.server(), ssh.user(), ssh.host_key_fingerprint());

    // Two connections share the one SSH session.
    let first = ClientBuilder::new().start(ssh.open_stream(target_host, target_port).await?, ssh.credentials());
    let second = ClientBuilder::new().start(ssh.open_stream(target_host, target_port).await?, ssh.credentials());
    let sum: i64 = first.root().await?.call_method("add", (5, 10)).await?;
    println!("add(5, 10) = {sum}");
    let who: Option<String> = second.root().await?.call_method("whoami", ()).await?;
    println!("whoami: {}", who.as_deref().unwrap_or("(nobody)"));

    first.close().await;
    second.close().await;
    ssh.close().await;
    Ok(())
}
