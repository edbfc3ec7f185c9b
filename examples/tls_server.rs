//! A service behind mutual TLS: only clients with a certificate signed by
//! your CA get in, and the certificate's common name is who they are.
//!
//! ```text
//! cargo run --bin rpyc -- certs init --dir certs      # once: CA, server and client certificates
//! cargo run --example tls_server -- --certs certs     # terminal 1
//! cargo run --example tls_client -- --certs certs     # terminal 2
//! ```
//!
//! A Python client works the same way:
//!
//! ```text
//! python -c "import rpyc; c = rpyc.ssl_connect('localhost', 18821, keyfile='certs/client.key', \
//!     certfile='certs/client.pem', ca_certs='certs/ca.pem'); print(c.root.whoami())"
//! ```
//!
//! New certificates (say after `rpyc certs init --dir certs --force`) are
//! picked up without a restart: send SIGHUP (`kill -HUP <pid>`) and new
//! connections use them.

use clap::Parser;
use rpyc::transport::tls::{TlsAcceptor, TlsServerConfig};
use rpyc::transport::Listener;
use rpyc::{Ctx, Server, ServerConfig, Service};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Serve a small service over mutual TLS")]
struct Cli {
    /// Directory with ca.pem, server.pem and server.key.
    #[arg(long, default_value = "certs")]
    certs: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18821")]
    addr: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();

    let service = Service::builder("greeter", || ())
        .method("whoami()", |ctx: Ctx| Ok(ctx.credentials().identity.clone()))
        .method("greet()", |ctx: Ctx| Ok(format!("hello, {}", ctx.credentials().display_identity())))
        .method("add(x, y)", |x: i64, y: i64| Ok(x + y))
        .build();

    let acceptor = TlsAcceptor::bind(&cli.addr, &TlsServerConfig::from_dir(&cli.certs)?).await?;
    let reload = acceptor.reload_handle();
    let server = Server::new(service, ServerConfig::default()).listen(Listener::new(acceptor));
    for a in server.local_addrs() {
        println!("listening on tls://{a}");
    }

    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let dir = cli.certs.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match reload.reload_from_dir(&dir) {
                    Ok(()) => println!("reloaded certificates from {}", dir.display()),
                    Err(e) => eprintln!("reload failed, keeping the old certificates: {e}"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    drop(reload);

    server.run_until_ctrl_c().await?;
    Ok(())
}
