//! Serves the CONFORMANCE service (see `rpyc::conformance`), the reference
//! service used by the interop tests — and handy for trying a Python client.
//!
//! ```text
//! cargo run --release --example conformance_server -- --port 18861
//! python -c "import rpyc; c = rpyc.connect('localhost', 18861); print(c.root.add(5, 10))"
//! ```
//!
//! Options: `--host H` (default 127.0.0.1), `--port P` (0 picks a free port,
//! printed as `PORT <n>` on stdout), `--unix PATH`, `--allow-public-attrs`,
//! `--tls CERTDIR`, `--ssh-port P --host-key FILE --authorized-keys FILE`.
//!
//! With `--tls CERTDIR` the TCP port speaks mutual TLS: the server presents
//! `CERTDIR/server.pem` (key `server.key`) and requires a client certificate
//! signed by `CERTDIR/ca.pem`; `whoami()` returns that certificate's common
//! name:
//!
//! ```text
//! cargo run --bin rpyc -- certs init --dir certs
//! cargo run --release --example conformance_server -- --port 18821 --tls certs
//! python -c "import rpyc; c = rpyc.ssl_connect('localhost', 18821, keyfile='certs/client.key', \
//!     certfile='certs/client.pem', ca_certs='certs/ca.pem'); print(c.root.whoami())"
//! ```
//!
//! With `--ssh-port P --host-key FILE --authorized-keys FILE` an embedded SSH
//! endpoint listens too (see `rpyc::transport::ssh`): keys in the OpenSSH
//! `authorized_keys` file may log in, each only as the identity its line
//! binds it to (`identity="alice" ssh-ed25519 AAAA…`; or one file per user
//! with a `%u` path), every `direct-tcpip` channel is served as a
//! connection, and `whoami()` returns the SSH user. The host key is created
//! on first start; its fingerprint is printed as `SSH_HOST_KEY …`:
//!
//! ```text
//! echo "identity=\"alice\" $(cat ~/.ssh/id_ed25519.pub)" > /tmp/rpyc_authorized_keys
//! cargo run --release --example conformance_server -- --port 18861 \
//!     --ssh-port 2222 --host-key /tmp/rpyc_host_key --authorized-keys /tmp/rpyc_authorized_keys
//! ssh -N -L 18862:localhost:18861 -p 2222 -o UserKnownHostsFile=/tmp/rpyc_known_hosts alice@127.0.0.1
//! python -c "import rpyc; print(rpyc.connect('localhost', 18862).root.whoami())"
//! ```

use clap::Parser;
use rpyc::transport::tls::TlsServerConfig;
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
    /// Serve the TCP port over mutual TLS with CERTDIR/{ca.pem,server.pem,server.key}.
    #[arg(long, value_name = "CERTDIR")]
    tls: Option<std::path::PathBuf>,
    /// Also run an embedded SSH endpoint on this port (0 = any free port).
    #[arg(long, requires_all = ["host_key", "authorized_keys"])]
    ssh_port: Option<u16>,
    /// SSH host key file (created, ed25519, if absent).
    #[arg(long, value_name = "FILE")]
    host_key: Option<std::path::PathBuf>,
    /// OpenSSH authorized_keys file of the keys that may log in over SSH,
    /// each bound to its identity (`identity="alice" ssh-ed25519 …`), or a
    /// per-user path with `%u`.
    #[arg(long, value_name = "FILE")]
    authorized_keys: Option<std::path::PathBuf>,
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
        let listener = match &cli.tls {
            Some(dir) => Listener::tls(&addr, &TlsServerConfig::from_dir(dir)?).await?,
            None => Listener::tcp(&addr).await?,
        };
        server = server.listen(listener);
        for a in server.local_addrs() {
            println!("PORT {}", a.port());
        }
    }
    if let Some(path) = &cli.unix {
        server = server.listen(Listener::unix(path).await?);
        println!("UNIX {}", path.display());
    }
    if let Some(port) = cli.ssh_port {
        use rpyc::transport::ssh::{SshAcceptor, SshServerConfig};
        let (Some(host_key), Some(keys)) = (&cli.host_key, &cli.authorized_keys) else {
            return Err("--ssh-port needs --host-key and --authorized-keys".into());
        };
        let addr = format!("{}:{port}", cli.host);
        let ssh = SshAcceptor::bind(&addr, SshServerConfig::new(host_key, keys)).await?;
        println!("SSH_PORT {}", ssh.addr().port());
        println!("SSH_HOST_KEY {}", ssh.host_key_fingerprint());
        server = server.listen(Listener::new(ssh));
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    server.run_until_ctrl_c().await?;
    Ok(())
}
