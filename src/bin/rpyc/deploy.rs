//! `rpyc deploy`: zero-deploy over SSH — start a Python classic server on
//! a host you can SSH into, evaluate or execute there (or keep it until
//! Ctrl-C), and leave nothing behind (see `rpyc::deploy`).

use super::remote::{print_outcome, show};
use super::support::{print_json, runtime, usage, wait_for_signal};
use super::CmdResult;
use clap::Args;
use rpyc::deploy::{DeployOptions, DeployedServer};
use rpyc::transport::ssh::{self, RemoteStderr, SshConfig};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// The SSH host: ssh://USER@HOST[:PORT] (the user defaults to $USER,
    /// the port to 22).
    #[arg(value_name = "SSH_URL")]
    pub url: String,
    /// The private key to log in with (ed25519 or ECDSA). Default: the
    /// ssh-agent, then ~/.ssh/id_ed25519 and ~/.ssh/id_ecdsa.
    #[arg(long, visible_alias = "identity", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The known_hosts file that must list the host's key. Default:
    /// ~/.ssh/known_hosts.
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Trust a host key that known_hosts does not list yet, and record it
    /// (trust on first use).
    #[arg(long)]
    pub accept_new: bool,
    /// The remote Python interpreter.
    #[arg(long, value_name = "PATH", default_value = "python3")]
    pub python: String,
    /// If the remote Python lacks rpyc, upload it from here: a local
    /// site-packages/rpyc directory, or a local python that has rpyc.
    #[arg(long, value_name = "PATH")]
    pub upload_from: Option<PathBuf>,
    /// Serve this Python service (module:Class) instead of the classic one.
    #[arg(long, value_name = "MODULE:CLASS", conflicts_with_all = ["eval", "execute"])]
    pub service: Option<String>,
    /// Evaluate a Python expression there, print its repr and clean up.
    #[arg(long, value_name = "EXPR", conflicts_with = "execute")]
    pub eval: Option<String>,
    /// Execute Python statements there (their output shows on stderr) and clean up.
    #[arg(long, value_name = "CODE")]
    pub execute: Option<String>,
    /// Print results, or where the server runs, as JSON.
    #[arg(long)]
    pub json: bool,
}

impl DeployArgs {
    fn ssh_config(&self) -> Result<SshConfig, Box<dyn std::error::Error>> {
        let bad = |why: &str| usage(format!("bad SSH address {:?}: {why} (expected ssh://USER@HOST[:PORT])", self.url));
        let rest = self.url.strip_prefix("ssh://").ok_or_else(|| bad("it does not start with ssh://"))?;
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') {
            return Err(bad("it has a path; deploy needs only the host"));
        }
        // The tunnel URL parser with a placeholder target.
        let (mut config, _) =
            ssh::parse_url(&format!("ssh://{authority}/localhost:1")).map_err(|e| bad(&e.to_string()))?;
        if let Some(key) = &self.key {
            config = config.with_key_file(key);
        }
        if let Some(kh) = &self.known_hosts {
            config = config.with_known_hosts(kh);
        }
        if self.accept_new {
            config = config.trust_on_first_use();
        }
        Ok(config)
    }
}

pub fn run_deploy(args: &DeployArgs) -> CmdResult {
    let config = args.ssh_config()?;
    let mut options = DeployOptions::new().python(args.python.clone()).stderr(RemoteStderr::Inherit);
    if let Some(from) = &args.upload_from {
        options = options.upload_from(from.clone());
    }
    if let Some(service) = &args.service {
        if !service.contains(':') {
            return Err(usage(format!("--service {service:?} is not MODULE:CLASS")));
        }
        options = options.service(service.clone());
    }
    runtime()?.block_on(deploy(args, config, options))
}

async fn deploy(args: &DeployArgs, config: SshConfig, options: DeployOptions) -> CmdResult {
    let server = DeployedServer::start(config, options).await?;
    let info = server.info().clone();
    let result = match (&args.eval, &args.execute) {
        (Some(expr), _) => {
            let shown = match server.classic().await {
                Ok(c) => match c.eval(expr).await {
                    Ok(obj) => Ok((obj.describe(), show(obj).await)),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            server.close().await;
            print_outcome(args.json, "eval", shown)
        }
        (None, Some(code)) => {
            let done = match server.classic().await {
                Ok(c) => c.execute(code).await,
                Err(e) => Err(e),
            };
            server.close().await;
            match done {
                Ok(()) if !args.json => Ok(()),
                Ok(()) => print_outcome(true, "execute", Ok(("NoneType".into(), ("None".into(), None)))),
                Err(e) => print_outcome(args.json, "execute", Err(e)),
            }
        }
        (None, None) => {
            if args.json {
                #[derive(serde::Serialize)]
                struct Deployed<'a> {
                    server: &'a str,
                    pid: u64,
                    dir: &'a str,
                    rpyc_version: &'a str,
                    uploaded: bool,
                }
                print_json(&Deployed {
                    server: &info.server,
                    pid: info.pid.into(),
                    dir: &info.dir,
                    rpyc_version: &info.rpyc_version,
                    uploaded: info.uploaded,
                });
            } else {
                println!(
                    "deployed on {}: pid {}, directory {}, rpyc {}{}",
                    info.server,
                    info.pid,
                    info.dir,
                    info.rpyc_version,
                    if info.uploaded { " (uploaded)" } else { "" }
                );
            }
            std::io::stdout().flush()?;
            super::support::banner(format_args!(
                "rpyc deploy: serving until Ctrl-C; the remote process and directory go away with it"
            ));
            let conn = server.connect();
            tokio::select! {
                _ = wait_for_signal() => {}
                _ = conn.closed() => super::support::banner(format_args!("rpyc deploy: the connection ended: {}", conn.close_reason().unwrap_or_default())),
            }
            drop(conn);
            let ended = server.close().await.unwrap_or_else(|| "still running after 10 s".into());
            super::support::banner(format_args!("rpyc deploy: cleaned up ({ended})"));
            Ok(())
        }
    };
    result
}
