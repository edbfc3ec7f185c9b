//! Scale-out on one machine: two `rpyc gateway` processes in front of a
//! pool of three `rpyc serve` upstreams, driven by this load generator.
//!
//! ```text
//! cargo build --release --bin rpyc --example gateway_scale
//! target/release/examples/gateway_scale --clients 1000 --secs 10
//! ```
//!
//! It measures, and prints as a table (and as JSON lines with `--json FILE`):
//!
//! 1. **Load.** `--clients` mutual-TLS connections held open at once,
//!    spread over both gateways, each calling `add` in a closed loop for
//!    `--secs`: calls per second, p50 and p99 latency, and each gateway's
//!    resident memory per client connection (VmRSS from /proc, before the
//!    clients connected and while they are connected).
//! 2. **Failover.** Every client leaves a `sleep(30)` pending, then one
//!    upstream is killed (SIGKILL). The pending calls of the clients that
//!    were relayed to it must fail (with the gateway's `EOFError`) — the
//!    time from the kill to each failure is reported. Meanwhile new clients
//!    keep connecting for three health intervals: none may fail after the
//!    first interval (with the pool's retry, none fails at all).
//!
//! Everything binds 127.0.0.1 port 0; every process started is killed at
//! the end. Linux only (reads /proc).

use clap::Parser;
use rpyc::transport::tls::TlsClientConfig;
use rpyc::{ClientBuilder, Connection};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = std::result::Result<T, BoxError>;

#[derive(Parser)]
#[command(about = "2 gateways × 3 upstreams: throughput, latency, memory per connection, failover")]
struct Cli {
    /// Client connections held open at once (split over the two gateways).
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Seconds of closed-loop `add` calls.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// The gateways' health-check interval, in seconds.
    #[arg(long, default_value_t = 1.0)]
    health_interval: f64,
    /// The `rpyc` binary (default: next to this example's directory).
    #[arg(long)]
    rpyc: Option<PathBuf>,
    /// Append the figures as JSON lines to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// A child process killed when dropped, with its stdout lines.
struct Proc {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Res<Proc> {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc { child, lines })
    }

    fn line(&self, prefix: &str) -> Res<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).map_err(|_| format!("no line {prefix:?} within 30 s"))?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_string());
            }
        }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Report {
    json: Option<std::fs::File>,
}

impl Report {
    fn row(&mut self, name: &str, value: f64, unit: &str) {
        println!("{name:<58} {value:>12.2} {unit}");
        if let Some(f) = &mut self.json {
            let _ = writeln!(f, "{{\"figure\":\"{name}\",\"value\":{value},\"unit\":\"{unit}\"}}");
        }
    }
}

async fn connect(addr: &str, tls: &TlsClientConfig) -> Res<Connection> {
    Ok(ClientBuilder::new().tls(tls.clone()).timeout(Duration::from_secs(30)).connect(addr).await?)
}

#[tokio::main]
async fn main() -> Res<()> {
    let cli = Cli::parse();
    let rpyc = match cli.rpyc.clone() {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("rpyc"))
            .ok_or("cannot find the rpyc binary: give --rpyc PATH")?,
    };
    let mut report = Report {
        json: match &cli.json {
            Some(p) => Some(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
            None => None,
        },
    };
    let dir = tempfile::tempdir()?;
    rpyc::certs::init_dir(dir.path(), &[])?;
    rpyc::certs::client_cert(dir.path(), "bench")?;
    let tls = TlsClientConfig::from_dir(dir.path(), "bench")?;

    // Three upstreams, two gateways.
    let mut upstreams = Vec::new();
    for _ in 0..3 {
        let p = Proc::spawn(Command::new(&rpyc).args(["serve", "--port", "0"]))?;
        let addr = p.line("listening on ")?;
        upstreams.push((p, addr.trim_start_matches("tcp://").to_string()));
    }
    let urls: Vec<String> = upstreams.iter().map(|(_, a)| format!("\"tcp://{a}\"")).collect();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[listen]]\nurl = \"tls://127.0.0.1:0\"\ntls = {:?}\n[upstream.calc]\nurls = [{}]\n\
             [health]\ninterval_secs = {}\n[limits]\nmax_connections_per_peer = 100000\n\
             max_connections = 100000\n",
            dir.path().display().to_string(),
            urls.join(", "),
            cli.health_interval
        ),
    )?;
    let mut gateways = Vec::new();
    for _ in 0..2 {
        let p = Proc::spawn(Command::new(&rpyc).arg("gateway").arg("--config").arg(&config))?;
        let addr = p.line("listening tls://")?;
        gateways.push((p, addr));
    }
    let rss_before: Vec<u64> = gateways.iter().map(|(p, _)| p.rss_kib()).collect();

    // 1. Load: all clients connected at once, then a closed loop of adds.
    let t = Instant::now();
    let mut conns = Vec::with_capacity(cli.clients);
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..cli.clients {
        let (addr, tls) = (gateways[i % 2].1.clone(), tls.clone());
        opening.spawn(async move {
            let c = connect(&addr, &tls).await?;
            let root = c.root().await?;
            Ok::<_, BoxError>((c, root))
        });
        if opening.len() >= 64 {
            if let Some(r) = opening.join_next().await {
                conns.push(r??);
            }
        }
    }
    while let Some(r) = opening.join_next().await {
        conns.push(r??);
    }
    report.row(&format!("connect {} mTLS clients through 2 gateways (s)", cli.clients), t.elapsed().as_secs_f64(), "s");
    let rss_loaded: Vec<u64> = gateways.iter().map(|(p, _)| p.rss_kib()).collect();
    for (i, (b, l)) in rss_before.iter().zip(&rss_loaded).enumerate() {
        let per = (l.saturating_sub(*b)) as f64 * 1024.0 / (cli.clients as f64 / 2.0);
        report.row(&format!("gateway {} RSS per client connection", i + 1), per / 1024.0, "KiB");
        report.row(&format!("gateway {} RSS with {} clients", i + 1, cli.clients / 2), *l as f64 / 1024.0, "MiB");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for (_, root) in &conns {
        let (root, stop, calls) = (root.clone(), stop.clone(), calls.clone());
        workers.spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let v: i64 = root.call_method("add", (20, 22)).await?;
                if v != 42 {
                    return Err::<Vec<Duration>, BoxError>(format!("add answered {v}").into());
                }
                lat.push(t.elapsed());
                calls.fetch_add(1, Ordering::Relaxed);
            }
            Ok(lat)
        });
    }
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(cli.secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    while let Some(r) = workers.join_next().await {
        lat.extend(r??);
    }
    let elapsed = t.elapsed().as_secs_f64();
    lat.sort();
    report.row("calls/s (add, closed loop, all clients)", lat.len() as f64 / elapsed, "calls/s");
    report.row("p50 latency", percentile(&lat, 0.5).as_secs_f64() * 1e6, "µs");
    report.row("p99 latency", percentile(&lat, 0.99).as_secs_f64() * 1e6, "µs");

    // 2. Failover: a pending call per client, then one upstream dies.
    let mut pending = Vec::new();
    for (_, root) in &conns {
        pending.push(root.async_callattr("sleep", (30,))?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let killed_at = Instant::now();
    let (victim, _) = &mut upstreams[0];
    victim.child.kill()?;
    let mut watching = tokio::task::JoinSet::new();
    for p in pending {
        let failures = failures.clone();
        watching.spawn(async move {
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), p.value()).await {
                if e.is_exception("EOFError") {
                    failures.lock().unwrap_or_else(|e| e.into_inner()).push(killed_at.elapsed());
                }
            }
        });
    }
    // New clients during three health intervals after the kill.
    let interval = Duration::from_secs_f64(cli.health_interval);
    let (mut new_ok, mut new_failed, mut failed_late) = (0u64, 0u64, 0u64);
    let mut i = 0;
    while killed_at.elapsed() < interval * 3 {
        let started = killed_at.elapsed();
        let addr = &gateways[i % 2].1;
        i += 1;
        let attempt = async {
            let c = connect(addr, &tls).await?;
            let root = c.root().await?;
            let v: i64 = root.call_method("add", (1, 2)).await?;
            c.close().await;
            Ok::<i64, BoxError>(v)
        };
        match attempt.await {
            Ok(3) => new_ok += 1,
            _ => {
                new_failed += 1;
                if started > interval {
                    failed_late += 1;
                }
            }
        }
    }
    // Stop waiting for the calls still pending on the live upstreams.
    let settle = Instant::now() + Duration::from_secs(1);
    while Instant::now() < settle && !watching.is_empty() {
        let _ = tokio::time::timeout(Duration::from_millis(100), watching.join_next()).await;
    }
    watching.abort_all();
    let mut fail = failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
    fail.sort();
    report.row("pending calls failed on the killed upstream", fail.len() as f64, "calls");
    report.row("  kill -> failure, p50", percentile(&fail, 0.5).as_secs_f64() * 1e3, "ms");
    report.row("  kill -> failure, max", fail.last().copied().unwrap_or_default().as_secs_f64() * 1e3, "ms");
    report.row("new connections after the kill (3 intervals)", (new_ok + new_failed) as f64, "conns");
    report.row("  of which failed", new_failed as f64, "conns");
    report.row("  of which failed after one health interval", failed_late as f64, "conns");
    drop(conns);
    let mut ok = true;
    if fail.is_empty() || fail.last().is_some_and(|d| *d >= Duration::from_millis(100)) {
        eprintln!("FAIL: pending calls on the killed upstream must fail within 100 ms");
        ok = false;
    }
    if failed_late > 0 {
        eprintln!("FAIL: new connections failed more than one health interval after the kill");
        ok = false;
    }
    if !ok {
        return Err("targets not met".into());
    }
    Ok(())
}
