//! Zero-deploy: starts a Python classic server on a machine you can SSH
//! into, uses it, and leaves nothing behind — Python's
//! `DeployedServer(SshMachine(host)).classic_connect()`, without the TCP
//! port (the server speaks RPyC on the SSH channel's stdin/stdout).
//!
//! ```text
//! cargo run --example deploy -- --ssh bob@build-box --key ~/.ssh/id_ed25519
//! # the remote Python lacks rpyc? upload this machine's:
//! cargo run --example deploy -- --ssh bob@build-box --upload-from .venv/bin/python
//! # first contact with the host (records its key in ~/.ssh/known_hosts):
//! cargo run --example deploy -- --ssh bob@build-box --accept-new
//! ```
//!
//! Without `--key` the ssh-agent (`SSH_AUTH_SOCK`) and `~/.ssh/id_ed25519`
//! are tried. Ed25519 and ECDSA keys only.

use clap::Parser;
use rpyc::deploy::DeployOptions;
use rpyc::transport::ssh::SshConfig;
use std::path::PathBuf;

#[derive(Parser)]
struct Args {
    /// USER@HOST[:PORT] of the SSH server.
    #[arg(long)]
    ssh: String,
    /// Private key file.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Trust an unknown host key on first use.
    #[arg(long)]
    accept_new: bool,
    /// The remote Python.
    #[arg(long, default_value = "python3")]
    python: String,
    /// A local python (or site-packages/rpyc directory) to upload rpyc from.
    #[arg(long)]
    upload_from: Option<PathBuf>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let (user, hostport) = args.ssh.split_once('@').ok_or("--ssh wants USER@HOST[:PORT]")?;
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse()?),
        None => (hostport, 22),
    };
    let mut ssh = SshConfig::new(host, port, user);
    if let Some(key) = &args.key {
        ssh = ssh.with_key_file(key);
    }
    if args.accept_new {
        ssh = ssh.trust_on_first_use();
    }
    let mut options = DeployOptions::new().python(args.python);
    if let Some(from) = args.upload_from {
        options = options.upload_from(from);
    }

    let server = rpyc::blocking::DeployedServer::start(ssh, options)?;
    let info = server.info();
    println!("deployed: pid {} in {} (rpyc {}, uploaded: {})", info.pid, info.dir, info.rpyc_version, info.uploaded);

    let c = server.classic()?;
    let node: String = c.eval_as("__import__('platform').node()")?;
    let files: Vec<String> = c.module("os")?.callattr("listdir", (info.dir.as_str(),))?.into_netref()?.get()?;
    println!("remote host {node}; its temporary directory holds {files:?}");
    let square = rpyc::blocking::function(|x: i64| Ok(x * x));
    let squares: Vec<i64> = c.builtins()?.callattr("map", (square, (1, 2, 3)))?.into_netref()?.get()?;
    println!("squares computed here, driven from there: {squares:?}");

    // Dropping the handle would do the same, in the background.
    println!("remote server {}", server.close()?.unwrap_or_default());
    Ok(())
}
