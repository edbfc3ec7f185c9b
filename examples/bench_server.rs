//! Serves the BENCH service, the target of the performance harness
//! (`examples/bench_client.rs`, `tests/python/bench_client.py`,
//! `scripts/bench.sh`; figures in `BENCHMARKS.md`).
//!
//! ```text
//! cargo run --release --example bench_server -- --port 18871
//! cargo run --release --example bench_client -- --connect 127.0.0.1:18871
//! ```
//!
//! | member | behaviour |
//! |---|---|
//! | `noop()` | returns `None` |
//! | `add(a, b)` | returns `a + b` (Python's `+` on values) |
//! | `echo(x)` | returns `x` |
//! | `make_counter()` | a remote object with `incr()` and the attribute `value` |
//! | `callback(f, n)` | calls the client's `f(i)` for `i` in `range(n)`, one round trip each; returns `n` |
//!
//! Options: `--host H` (default 127.0.0.1), `--port P` (0 picks a free port,
//! printed as `PORT <n>` on stdout), `--unix PATH`, `--tls CERTDIR` (the TCP
//! port speaks mutual TLS with `CERTDIR/{ca.pem,server.pem,server.key}`),
//! `--gen-certs DIR` (write development certificates to DIR and exit; what
//! `rpyc certs init --dir DIR` writes). Connection limits are raised to
//! 100,000 (also per peer address) so that the harness can hold 10,000 idle
//! connections from 127.0.0.1; the idle timeout is off.

use clap::Parser;
use rpyc::transport::tls::TlsServerConfig;
use rpyc::transport::Listener;
use rpyc::{Class, Netref, Object, Server, ServerConfig, Service, This, Value};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;

#[derive(Parser)]
#[command(about = "Serve the BENCH service (performance harness)")]
struct Cli {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// TCP port (0 = any free port, printed as `PORT <n>`).
    #[arg(long)]
    port: Option<u16>,
    /// Also (or only) listen on this Unix socket path.
    #[arg(long)]
    unix: Option<std::path::PathBuf>,
    /// Serve the TCP port over mutual TLS with CERTDIR/{ca.pem,server.pem,server.key}.
    #[arg(long, value_name = "CERTDIR")]
    tls: Option<std::path::PathBuf>,
    /// Write development certificates (CA, server, client) to DIR and exit.
    #[arg(long, value_name = "DIR")]
    gen_certs: Option<std::path::PathBuf>,
}

struct Counter {
    value: AtomicI64,
}

fn counter_class() -> &'static Class<Counter> {
    static C: OnceLock<Class<Counter>> = OnceLock::new();
    C.get_or_init(|| {
        Class::<Counter>::builder("bench.Counter")
            .method("incr()", |c: This<Counter>| Ok(c.value.fetch_add(1, Ordering::Relaxed) + 1))
            .attr("value", |c: &Counter| c.value.load(Ordering::Relaxed))
            .build()
    })
}

/// The most callbacks one `callback()` call may make.
const MAX_CALLBACKS: i64 = 10_000_000;

/// The BENCH service.
fn bench_service() -> Service {
    Service::builder("bench", || ())
        .method("noop()", || Ok(()))
        .method("add(a, b)", |a: Value, b: Value| {
            // The common case without the bignum detour of `py_add`.
            if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
                if let Some(s) = x.checked_add(y) {
                    return Ok(Value::from(s));
                }
            }
            rpyc::conformance::py_add(&a, &b)
        })
        .method("echo(x)", |x: Object| Ok(x))
        .method("make_counter()", || Ok(counter_class().instance(Counter { value: AtomicI64::new(0) })))
        .async_method("callback(f, n)", |f: Netref, n: i64| async move {
            if !(0..=MAX_CALLBACKS).contains(&n) {
                return Err(rpyc::Error::value_error(format!("n must be between 0 and {MAX_CALLBACKS}")));
            }
            for i in 0..n {
                f.call((i,)).await?;
            }
            Ok(n)
        })
        .build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(dir) = &cli.gen_certs {
        rpyc::certs::init_dir(dir, &[])?;
        println!("CERTS {}", dir.display());
        return Ok(());
    }
    let mut config = ServerConfig::default();
    config.max_connections = 100_000;
    config.max_connections_per_peer = 100_000;
    config.connection.idle_timeout = None;
    let mut server = Server::new(bench_service(), config);
    if cli.port.is_some() || cli.unix.is_none() {
        let addr = format!("{}:{}", cli.host, cli.port.unwrap_or(18871));
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
    println!("PID {}", std::process::id());
    use std::io::Write;
    std::io::stdout().flush()?;
    server.run_until_ctrl_c().await?;
    Ok(())
}
