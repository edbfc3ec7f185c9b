//! `rpyc`: the command-line companion of the `rpyc` crate.
//!
//! ```text
//! rpyc certs init --dir certs [--san NAME]...   # development CA, server and client certificates
//! rpyc certs client alice --dir certs           # one more client certificate (CN = alice)
//! rpyc registry --allow-listing                 # a registry, like Python's rpyc_registry
//! rpyc serve --port 18861 --register            # the CONFORMANCE service, registered
//! rpyc discover conformance                     # where it runs (UDP broadcast by default)
//! rpyc list --registry 127.0.0.1                # what a registry knows
//! rpyc ping tcp://127.0.0.1:18861               # round-trip time, any transport
//! rpyc call 127.0.0.1:18861 add 1 2             # arguments as Python literals
//! rpyc upload 127.0.0.1:18812 build/ /srv/app   # files and directories to a classic server
//! rpyc download 127.0.0.1:18812 /var/log/app.log .   # ... and back, with a progress bar
//! rpyc serve --stdio                            # one connection on stdin/stdout (connect_subproc)
//! rpyc deploy ssh://bob@host --eval "1+1"       # zero-deploy: a Python server over SSH, no port
//! rpyc gateway --listen tls://0.0.0.0:18821 --tls certs --upstream tcp://127.0.0.1:18812
//!                                               # mutual TLS + per-identity policy in front of a server
//! ```
//!
//! Results go to stdout (`--json` for scripts), progress and logs to stderr
//! (`-v`, `-q`, or `RUST_LOG`; `--log-format json` for one JSON object per
//! line).
//!
//! Each subcommand is one variant of [`Command`] and one `run_*` function;
//! add new ones (registry, discover, call, serve, ping, gateway) the same
//! way. Exit status: 0 on success, 1 when the command failed, 2 for usage
//! errors (reported by clap).

use clap::{Args, Parser, Subcommand};
use rpyc::certs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

// The crate root is this file, so its modules live beside it under rpyc/
// (a file directly in src/bin/ would be a binary of its own).
#[path = "rpyc/deploy.rs"]
mod deploy;
#[path = "rpyc/discovery.rs"]
mod discovery;
#[path = "rpyc/gateway.rs"]
mod gateway;
#[path = "rpyc/remote.rs"]
mod remote;
#[path = "rpyc/serve.rs"]
mod serve;
#[path = "rpyc/support.rs"]
mod support;
#[path = "rpyc/transfer.rs"]
mod transfer;

/// What a subcommand returns; the error is printed as `rpyc: error: …`.
type CmdResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Parser)]
#[command(
    name = "rpyc",
    version,
    about = "Tools for RPyC (Remote Python Call) in Rust",
    propagate_version = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log output on stderr (repeat for more); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Log lines on stderr as text or as one JSON object per line
    /// (level, target, fields.message, timestamp); default: text, or the
    /// RPYC_LOG_FORMAT environment variable.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    log_format: Option<support::LogFormat>,
}

#[derive(Subcommand)]
enum Command {
    /// Create development TLS certificates (never use them in production).
    #[command(subcommand, arg_required_else_help = true)]
    Certs(CertsCommand),
    /// Run a registry server (Python's rpyc_registry): servers register,
    /// clients discover.
    Registry(discovery::RegistryCmdArgs),
    /// Print the servers (host:port, one per line) that expose a service.
    #[command(arg_required_else_help = true)]
    Discover(discovery::DiscoverArgs),
    /// Print the service names a registry knows (it must allow listing).
    List(discovery::ListArgs),
    /// Connect to a server and measure the round-trip time of a ping.
    #[command(arg_required_else_help = true)]
    Ping(remote::PingArgs),
    /// Call a method of a server's root object and print the result.
    #[command(arg_required_else_help = true)]
    Call(remote::CallArgs),
    /// Copy a file or directory to a classic server (Python's
    /// rpyc_classic), in chunks, SHA-256 verified, with a progress bar.
    #[command(arg_required_else_help = true)]
    Upload(transfer::UploadArgs),
    /// Copy a file or directory from a classic server (Python's
    /// rpyc_classic), in chunks, SHA-256 verified, with a progress bar.
    #[command(arg_required_else_help = true)]
    Download(transfer::DownloadArgs),
    /// Serve the CONFORMANCE test service, optionally registered with a registry.
    Serve(serve::ServeArgs),
    /// Secure existing RPyC servers: a TLS/SSH gateway that authenticates
    /// clients and checks every request against a per-identity policy.
    Gateway(gateway::GatewayArgs),
    /// Zero-deploy: start a Python classic server on an SSH host (over the
    /// SSH channel, no port), evaluate or execute there, and clean up.
    #[command(arg_required_else_help = true)]
    Deploy(deploy::DeployArgs),
    /// Print a shell completion script: `rpyc completions bash >
    /// /etc/bash_completion.d/rpyc`, `rpyc completions zsh >
    /// "${fpath[1]}/_rpyc"`, `rpyc completions fish >
    /// ~/.config/fish/completions/rpyc.fish`.
    #[command(arg_required_else_help = true)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a CA, a server certificate and a client certificate named "client".
    ///
    /// Writes ca.pem, ca.key, server.pem, server.key, client.pem and
    /// client.key into DIR (private keys with permission 0600). The server
    /// certificate is valid for localhost, 127.0.0.1 and ::1 plus every
    /// --san.
    Init(CertsInitArgs),
    /// Sign a client certificate whose common name (the identity a server
    /// sees) is NAME, with the CA in DIR.
    ///
    /// Writes NAME.pem and NAME.key into DIR.
    Client(CertsClientArgs),
    /// Reissue the server certificate (server.pem, server.key) with the CA
    /// in DIR, for new names, keeping the CA and every client certificate.
    ///
    /// Valid for localhost, 127.0.0.1 and ::1 plus every --san.
    Server(CertsServerArgs),
}

#[derive(Args)]
struct CertsServerArgs {
    /// Directory holding ca.pem and ca.key (and the server files to replace).
    #[arg(long, value_name = "DIR", default_value = "certs")]
    dir: PathBuf,
    /// A DNS name or IP address the server certificate must also be valid
    /// for (repeatable).
    #[arg(long = "san", value_name = "NAME")]
    sans: Vec<String>,
}

#[derive(Args)]
struct CertsInitArgs {
    /// Directory for the certificates (created if missing).
    #[arg(long, value_name = "DIR", default_value = "certs")]
    dir: PathBuf,
    /// Another DNS name or IP address for the server certificate (repeatable).
    #[arg(long = "san", value_name = "NAME")]
    sans: Vec<String>,
    /// Overwrite existing files (every certificate signed by the old CA stops working).
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct CertsClientArgs {
    /// The client's identity: the certificate's common name and file name.
    #[arg(value_name = "NAME")]
    name: String,
    /// Directory holding ca.pem and ca.key.
    #[arg(long, value_name = "DIR", default_value = "certs")]
    dir: PathBuf,
    /// Overwrite NAME.pem and NAME.key if they exist.
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Long-running commands report their progress at info level.
    let default_log = match cli.command {
        Command::Registry(_) | Command::Serve(_) | Command::Gateway(_) => "info",
        _ => "warn",
    };
    let log_format = match support::LogFormat::resolve(cli.log_format) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("rpyc: error: {e}");
            return ExitCode::from(2);
        }
    };
    support::init_logging(cli.verbose, cli.quiet, default_log, log_format);
    let result = match cli.command {
        Command::Certs(CertsCommand::Init(args)) => run_certs_init(&args),
        Command::Certs(CertsCommand::Client(args)) => run_certs_client(&args),
        Command::Certs(CertsCommand::Server(args)) => run_certs_server(&args),
        Command::Registry(args) => discovery::run_registry(&args),
        Command::Discover(args) => discovery::run_discover(&args),
        Command::List(args) => discovery::run_list(&args),
        Command::Ping(args) => remote::run_ping(&args),
        Command::Call(args) => remote::run_call(&args),
        Command::Upload(args) => transfer::run_upload(&args),
        Command::Download(args) => transfer::run_download(&args),
        Command::Serve(args) => serve::run_serve(&args),
        Command::Gateway(args) => gateway::run_gateway(&args),
        Command::Deploy(args) => deploy::run_deploy(&args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "rpyc", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            support::report_error(e.as_ref());
            if e.is::<support::UsageError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run_certs_init(args: &CertsInitArgs) -> CmdResult {
    if args.force {
        for f in certs::INIT_FILES {
            remove_if_exists(&args.dir.join(f))?;
        }
    }
    let files = certs::init_dir(&args.dir, &args.sans)?;
    println!("Created DEVELOPMENT certificates in {} (not for production):", args.dir.display());
    for f in &files {
        let what = match f.file_name().and_then(|n| n.to_str()).unwrap_or_default() {
            "ca.pem" => "CA certificate: both sides trust it",
            "ca.key" => "CA private key (0600): signs new client certificates; keep it secret",
            "server.pem" => "server certificate",
            "server.key" => "server private key (0600)",
            "client.pem" => "client certificate, identity \"client\"",
            _ => "client private key (0600)",
        };
        println!("  {:<28} {what}", f.display());
    }
    let dir = args.dir.display();
    println!();
    println!("Serve:   cargo run --example tls_server -- --certs {dir}");
    println!("Connect: cargo run --example tls_client -- --certs {dir}");
    println!("More clients: rpyc certs client NAME --dir {dir}");
    Ok(())
}

fn run_certs_client(args: &CertsClientArgs) -> CmdResult {
    if args.force {
        let (cert, key) = certs::client_paths(&args.dir, &args.name)?;
        remove_if_exists(&cert)?;
        remove_if_exists(&key)?;
    }
    let (cert, key) = certs::client_cert(&args.dir, &args.name)?;
    println!("Created client certificate for identity {:?} (development only):", args.name);
    println!("  {}", cert.display());
    println!("  {} (0600)", key.display());
    Ok(())
}

fn run_certs_server(args: &CertsServerArgs) -> CmdResult {
    let (cert, key) = certs::server_cert(&args.dir, &args.sans)?;
    let mut names = vec!["localhost", "127.0.0.1", "::1"];
    names.extend(args.sans.iter().map(String::as_str));
    println!("Reissued the server certificate for {} (development only; CA unchanged):", names.join(", "));
    println!("  {}", cert.display());
    println!("  {} (0600)", key.display());
    Ok(())
}

fn remove_if_exists(path: &Path) -> CmdResult {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display()).into()),
    }
}
