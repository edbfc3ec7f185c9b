//! The Rust load generator of the performance harness: measures an RPyC
//! server that serves BENCH (`examples/bench_server.rs` or the Python
//! `tests/python/bench_server.py`) the way `tests/python/bench_client.py`
//! measures it from Python, and measures the machine's raw limit (plain TCP
//! and rustls TLS 1.3 ping-pong, pipelining and bulk echo) with the same
//! tool, so that every figure can be read as a ratio. `scripts/bench.sh`
//! runs everything; `BENCHMARKS.md` has the figures.
//!
//! ```text
//! cargo run --release --example bench_server -- --port 18871
//! cargo run --release --example bench_client -- --connect 127.0.0.1:18871
//! cargo run --release --example bench_client -- --raw            # the loopback limit
//! ```
//!
//! Addresses: `host:port`, `tcp://host:port`, `unix:///path`,
//! `ssh://user@host:port/target_host:target_port`; `--tls CERTDIR` makes
//! `host:port` mutual TLS with `CERTDIR/{ca.pem,client.pem,client.key}`.
//! Every figure is printed as a table row and, with `--json FILE`, appended
//! to FILE as one JSON object per line.
//!
//! Other modes (need the server's process id for its memory, read from
//! `/proc/PID/status`): `--idle N --server-pid PID` holds N idle connections
//! and times a new client's first call; `--netref-cycles N --server-pid PID`
//! creates and drops N remote objects on one connection and samples the
//! server's memory.

use clap::Parser;
use rpyc::transport::tls::{TlsClientConfig, TlsServerConfig};
use rpyc::{ClientBuilder, Connection, Netref, Object, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = std::result::Result<T, BoxError>;

#[derive(Parser, Clone)]
#[command(about = "RPyC load generator and loopback-limit meter")]
struct Cli {
    /// The BENCH server to measure (host:port, unix:///path, ssh://…).
    #[arg(long)]
    connect: Option<String>,
    /// Connect over mutual TLS with CERTDIR/{ca.pem,client.pem,client.key};
    /// with --raw, also measure raw rustls (needs server.pem/server.key too).
    #[arg(long, value_name = "CERTDIR")]
    tls: Option<PathBuf>,
    /// Measure the raw loopback limit (TCP, and TLS with --tls).
    #[arg(long)]
    raw: bool,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Only these measurements (comma separated: add,conns,pipelined,echo,netref,callback,connect).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Requests in flight for the pipelined measurement.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Echo sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [1024usize, 65536, 1 << 20, 16 << 20])]
    echo_sizes: Vec<usize>,
    /// Hold this many idle connections, then time a new client's first call.
    #[arg(long)]
    idle: Option<usize>,
    /// Create and drop this many remote objects on one connection, sampling server memory.
    #[arg(long)]
    netref_cycles: Option<u64>,
    /// The server's process id (for its memory, from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    /// What serves the other end, for the JSON lines (rust, python).
    #[arg(long, default_value = "rust")]
    server_kind: String,
    /// A label for this run, copied into every JSON line.
    #[arg(long, default_value = "")]
    run: String,
    /// Append JSON lines to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Collects figures: a table on stdout, JSON lines in a file.
struct Report {
    run: String,
    json: Option<std::fs::File>,
}

impl Report {
    fn emit(&mut self, client: &str, server: &str, transport: &str, metric: &str, value: f64, unit: &str) {
        println!("{:<6} {:<7} {:<6} {:<34} {:>14.2} {}", client, server, transport, metric, value, unit);
        if let Some(f) = &mut self.json {
            let line = format!(
                "{{\"run\":{},\"client\":\"{client}\",\"server\":\"{server}\",\"transport\":\"{transport}\",\"metric\":\"{metric}\",\"value\":{},\"unit\":\"{unit}\"}}",
                json_str(&self.run),
                if value.is_finite() { format!("{value:.3}") } else { "null".into() }
            );
            let _ = writeln!(f, "{line}");
        }
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Percentile of sorted nanosecond samples, in microseconds.
fn pct_us(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0) as f64 / 1000.0
}

/// Incompressible bytes (xorshift), so that no side wins by compressing.
fn payload(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

fn mib_s(bytes: usize, iters: u64, elapsed: Duration) -> f64 {
    (bytes as f64 * iters as f64) / (1024.0 * 1024.0) / elapsed.as_secs_f64()
}

fn size_name(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{}m", n >> 20)
    } else if n >= 1024 && n.is_multiple_of(1024) {
        format!("{}k", n >> 10)
    } else {
        format!("{n}b")
    }
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------
// RPC measurements
// ---------------------------------------------------------------------------

struct Target {
    addr: String,
    tls: Option<TlsClientConfig>,
    transport: String,
}

impl Target {
    async fn connect(&self) -> Res<Connection> {
        let mut b = ClientBuilder::new();
        if let Some(t) = &self.tls {
            b = b.tls(t.clone());
        }
        Ok(b.connect(&self.addr).await?)
    }
}

async fn add(root: &Netref) -> Res<()> {
    let r: i64 = root.call_method("add", (5i64, 10i64)).await?;
    if r != 15 {
        return Err("add(5, 10) != 15".into());
    }
    Ok(())
}

/// Runs `tasks` loops of sync `add` calls for `secs`; returns calls/s.
async fn add_loops(roots: Vec<Netref>, per_root: usize, secs: f64) -> Res<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    let start = Instant::now();
    for root in &roots {
        for _ in 0..per_root {
            let (root, stop, count) = (root.clone(), stop.clone(), count.clone());
            handles.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    add(&root).await?;
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
                Ok::<(), BoxError>(())
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await??;
    }
    Ok(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

async fn rpc_suite(cli: &Cli, target: &Target, rep: &mut Report) -> Res<()> {
    let want = |name: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == name);
    let (c, s, t) = ("rust", cli.server_kind.clone(), target.transport.clone());
    let conn = target.connect().await?;
    let root = conn.root().await?;
    for _ in 0..200 {
        add(&root).await?;
    }
    if want("add") {
        let mut samples = Vec::new();
        let deadline = Instant::now() + Duration::from_secs_f64(cli.secs);
        let start = Instant::now();
        while Instant::now() < deadline {
            let t0 = Instant::now();
            add(&root).await?;
            samples.push(t0.elapsed().as_nanos() as u64);
        }
        let rate = samples.len() as f64 / start.elapsed().as_secs_f64();
        samples.sort_unstable();
        rep.emit(c, &s, &t, "add_p50_us", pct_us(&samples, 0.5), "us");
        rep.emit(c, &s, &t, "add_p99_us", pct_us(&samples, 0.99), "us");
        rep.emit(c, &s, &t, "add_calls_per_s", rate, "calls/s");
    }
    if want("conns") {
        for k in [1usize, 4, 16] {
            let mut conns = Vec::new();
            let mut roots = Vec::new();
            for _ in 0..k {
                let cn = target.connect().await?;
                roots.push(cn.root().await?);
                conns.push(cn);
            }
            let rate = add_loops(roots, 1, cli.secs).await?;
            rep.emit(c, &s, &t, &format!("conns{k}_calls_per_s"), rate, "calls/s");
            for cn in conns {
                cn.abort("done");
            }
        }
    }
    if want("pipelined") {
        let rate = add_loops(vec![root.clone()], cli.window, cli.secs).await?;
        rep.emit(c, &s, &t, "pipelined_calls_per_s", rate, "calls/s");
    }
    if want("echo") {
        for &size in &cli.echo_sizes {
            let mut data = payload(size);
            // One warm-up call, then as many as fit in the time (at least 3).
            let back: Object = root.callattr("echo", (Object::Value(Value::Bytes(data)),)).await?;
            data = match back.into_value() {
                Ok(Value::Bytes(b)) if b.len() == size => b,
                _ => return Err("echo returned something else".into()),
            };
            let start = Instant::now();
            let mut iters = 0u64;
            while iters < 3 || start.elapsed().as_secs_f64() < cli.secs {
                let back: Object = root.callattr("echo", (Object::Value(Value::Bytes(data)),)).await?;
                data = match back.into_value() {
                    Ok(Value::Bytes(b)) if b.len() == size => b,
                    _ => return Err("echo returned something else".into()),
                };
                iters += 1;
            }
            rep.emit(
                c,
                &s,
                &t,
                &format!("echo_{}_mib_s", size_name(size)),
                mib_s(size, iters, start.elapsed()),
                "MiB/s",
            );
        }
    }
    if want("netref") {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < cli.secs {
            let counter = root.callattr("make_counter", ()).await?.into_netref()?;
            let v: i64 = counter.call_method("incr", ()).await?;
            if v != 1 {
                return Err("counter.incr() != 1".into());
            }
            drop(counter);
            n += 1;
        }
        rep.emit(c, &s, &t, "netref_ops_per_s", n as f64 / start.elapsed().as_secs_f64(), "ops/s");
    }
    if want("callback") {
        let f = Object::function(|_i: i64| Ok(()));
        let _: i64 = root.call_method("callback", (f.clone(), 100i64)).await?;
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < cli.secs {
            let k: i64 = root.call_method("callback", (f.clone(), 1000i64)).await?;
            n += k as u64;
        }
        rep.emit(c, &s, &t, "callback_rt_per_s", n as f64 / start.elapsed().as_secs_f64(), "round trips/s");
    }
    drop(root);
    conn.abort("done");
    if want("connect") {
        let mut samples = Vec::new();
        let start = Instant::now();
        while samples.len() < 5 || (start.elapsed().as_secs_f64() < cli.secs && samples.len() < 2000) {
            let t0 = Instant::now();
            let cn = target.connect().await?;
            let root = cn.root().await?;
            add(&root).await?;
            samples.push(t0.elapsed().as_nanos() as u64);
            drop(root);
            cn.abort("done");
        }
        samples.sort_unstable();
        rep.emit(c, &s, &t, "connect_first_call_p50_us", pct_us(&samples, 0.5), "us");
    }
    Ok(())
}

async fn idle_suite(cli: &Cli, target: &Target, n: usize, rep: &mut Report) -> Res<()> {
    let t = target.transport.clone();
    let s = cli.server_kind.clone();
    let pid = cli.server_pid.ok_or("--idle needs --server-pid")?;
    let before = rss_kib(pid).ok_or("cannot read the server's memory")?;
    let mut held = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let conn = match target.connect().await {
            Ok(c) => c,
            Err(e) => return Err(format!("connection {i} of {n} failed: {e}").into()),
        };
        let root = conn.root().await?;
        let _: Option<()> = root.call_method("noop", ()).await?;
        held.push((conn, root));
    }
    let opened = start.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid).ok_or("cannot read the server's memory")?;
    let per_conn = (after.saturating_sub(before)) as f64 / n as f64;
    rep.emit("rust", &s, &t, &format!("idle{n}_open_s"), opened.as_secs_f64(), "s");
    rep.emit("rust", &s, &t, &format!("idle{n}_server_rss_mib"), after as f64 / 1024.0, "MiB");
    rep.emit("rust", &s, &t, &format!("idle{n}_kib_per_conn"), per_conn, "KiB");
    let mut samples = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        let cn = target.connect().await?;
        let root = cn.root().await?;
        add(&root).await?;
        samples.push(t0.elapsed().as_nanos() as u64);
        drop(root);
        cn.abort("done");
    }
    samples.sort_unstable();
    rep.emit("rust", &s, &t, &format!("idle{n}_new_client_first_call_p50_us"), pct_us(&samples, 0.5), "us");
    rep.emit("rust", &s, &t, &format!("idle{n}_new_client_first_call_max_us"), pct_us(&samples, 1.0), "us");
    // An old, idle connection still answers too.
    if let Some((_, root)) = held.first() {
        let t0 = Instant::now();
        add(root).await?;
        rep.emit("rust", &s, &t, &format!("idle{n}_oldest_conn_call_us"), t0.elapsed().as_secs_f64() * 1e6, "us");
    }
    for (conn, root) in held {
        drop(root);
        conn.abort("done");
    }
    Ok(())
}

async fn netref_cycles_suite(cli: &Cli, target: &Target, n: u64, rep: &mut Report) -> Res<()> {
    let t = target.transport.clone();
    let s = cli.server_kind.clone();
    let pid = cli.server_pid.ok_or("--netref-cycles needs --server-pid")?;
    let conn = target.connect().await?;
    let root = conn.root().await?;
    const WORKERS: u64 = 16;
    let done = Arc::new(AtomicU64::new(0));
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let mut handles = Vec::new();
    let start = Instant::now();
    for _ in 0..WORKERS {
        let (root, done) = (root.clone(), done.clone());
        handles.push(tokio::spawn(async move {
            loop {
                if done.fetch_add(1, Ordering::Relaxed) >= n {
                    break;
                }
                let counter = root.callattr("make_counter", ()).await?.into_netref()?;
                drop(counter);
            }
            Ok::<(), BoxError>(())
        }));
    }
    let mut next_sample = n / 10;
    while handles.iter().any(|h| !h.is_finished()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let d = done.load(Ordering::Relaxed).min(n);
        if d >= next_sample {
            if let Some(r) = rss_kib(pid) {
                samples.push((d, r));
            }
            next_sample += n / 10;
        }
    }
    for h in handles {
        h.await??;
    }
    let elapsed = start.elapsed();
    // Let the last DELs land, then take the final sample.
    let _: Option<()> = root.call_method("noop", ()).await?;
    if let Some(r) = rss_kib(pid) {
        samples.push((n, r));
    }
    let first = samples.first().map(|x| x.1).unwrap_or(0) as f64;
    let last = samples.last().map(|x| x.1).unwrap_or(0) as f64;
    let max = samples.iter().map(|x| x.1).max().unwrap_or(0) as f64;
    rep.emit("rust", &s, &t, "netref_cycles_per_s", n as f64 / elapsed.as_secs_f64(), "cycles/s");
    rep.emit("rust", &s, &t, "netref_cycles_rss_first_mib", first / 1024.0, "MiB");
    rep.emit("rust", &s, &t, "netref_cycles_rss_last_mib", last / 1024.0, "MiB");
    rep.emit("rust", &s, &t, "netref_cycles_rss_growth_pct", (max - first) / first * 100.0, "%");
    drop(root);
    conn.abort("done");
    Ok(())
}

// ---------------------------------------------------------------------------
// The raw limit: the same measurements without RPyC
// ---------------------------------------------------------------------------

/// Bytes per ping-pong / pipelined message.
const MSG: usize = 16;

/// Serves raw echo on its own runtime (two workers, like the server
/// process). The first byte of a connection picks the mode:
/// `M` — echo 16-byte messages, one write each; `B` — echo bytes as they
/// arrive (cut-through); `S` — read a u32 length and that many bytes, then
/// write them back (store-and-forward, what an RPC echo has to do).
fn spawn_raw_server(tls: Option<Arc<rustls::ServerConfig>>) -> Res<std::net::SocketAddr> {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("raw server runtime: {e}");
                return;
            }
        };
        rt.block_on(async move {
            let Ok(listener) = TcpListener::from_std(std_listener) else { return };
            loop {
                let Ok((s, _)) = listener.accept().await else { continue };
                let _ = s.set_nodelay(true);
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(cfg) => {
                            if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(s).await {
                                let _ = raw_serve(s).await;
                            }
                        }
                        None => {
                            let _ = raw_serve(s).await;
                        }
                    }
                });
            }
        });
    });
    Ok(addr)
}

async fn raw_serve<S: AsyncRead + AsyncWrite + Unpin>(s: S) -> std::io::Result<()> {
    let (rd, mut wr) = tokio::io::split(s);
    let mut rd = BufReader::with_capacity(64 << 10, rd);
    let mut mode = [0u8; 1];
    rd.read_exact(&mut mode).await?;
    match mode[0] {
        b'M' => {
            let mut m = [0u8; MSG];
            loop {
                rd.read_exact(&mut m).await?;
                wr.write_all(&m).await?;
                wr.flush().await?;
            }
        }
        b'B' => {
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = rd.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                wr.write_all(buf.get(..n).unwrap_or_default()).await?;
                wr.flush().await?;
            }
        }
        b'S' => loop {
            let len = rd.read_u32().await? as usize;
            let mut buf = vec![0u8; len];
            rd.read_exact(&mut buf).await?;
            wr.write_all(&buf).await?;
            wr.flush().await?;
        },
        _ => Ok(()),
    }
}

struct RawClient {
    addr: std::net::SocketAddr,
    tls: Option<(Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>)>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

impl RawClient {
    async fn open(&self, mode: u8) -> Res<Box<dyn Io>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let mut s: Box<dyn Io> = match &self.tls {
            Some((cfg, name)) => {
                Box::new(tokio_rustls::TlsConnector::from(cfg.clone()).connect(name.clone(), tcp).await?)
            }
            None => Box::new(tcp),
        };
        s.write_all(&[mode]).await?;
        Ok(s)
    }
}

async fn raw_suite(cli: &Cli, rep: &mut Report, transport: &str, client: RawClient) -> Res<()> {
    let (c, s, t) = ("raw", "raw", transport);
    // Ping-pong of one small message.
    let mut conn = client.open(b'M').await?;
    let mut m = [7u8; MSG];
    for _ in 0..1000 {
        conn.write_all(&m).await?;
        conn.flush().await?;
        conn.read_exact(&mut m).await?;
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < cli.secs {
        let t0 = Instant::now();
        conn.write_all(&m).await?;
        conn.flush().await?;
        conn.read_exact(&mut m).await?;
        samples.push(t0.elapsed().as_nanos() as u64);
    }
    let rate = samples.len() as f64 / start.elapsed().as_secs_f64();
    samples.sort_unstable();
    rep.emit(c, s, t, "pingpong_p50_us", pct_us(&samples, 0.5), "us");
    rep.emit(c, s, t, "pingpong_p99_us", pct_us(&samples, 0.99), "us");
    rep.emit(c, s, t, "pingpong_per_s", rate, "msgs/s");
    drop(conn);

    // Pipelined: `window` messages in flight, one write per message each way.
    let conn = client.open(b'M').await?;
    let (mut rd, mut wr) = tokio::io::split(conn);
    let window = cli.window as u64;
    let sent = Arc::new(AtomicU64::new(0));
    let recvd = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(tokio::sync::Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (sent, recvd, notify, stop) = (sent.clone(), recvd.clone(), notify.clone(), stop.clone());
        tokio::spawn(async move {
            let m = [1u8; MSG];
            while !stop.load(Ordering::Relaxed) {
                if sent.load(Ordering::Relaxed) - recvd.load(Ordering::Acquire) >= window {
                    // TLS may hold written records back until flushed.
                    wr.flush().await?;
                    notify.notified().await;
                    continue;
                }
                wr.write_all(&m).await?;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, std::io::Error>(wr)
        })
    };
    let start = Instant::now();
    let mut buf = [0u8; MSG];
    let mut got = 0u64;
    while start.elapsed().as_secs_f64() < cli.secs {
        tokio::time::timeout(Duration::from_secs(10), rd.read_exact(&mut buf)).await??;
        got += 1;
        recvd.store(got, Ordering::Release);
        notify.notify_one();
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    notify.notify_one();
    // Drain what is still in flight so the writer can finish.
    let in_flight = sent.load(Ordering::Relaxed).saturating_sub(got);
    for _ in 0..in_flight {
        if rd.read_exact(&mut buf).await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    rep.emit(c, s, t, "pipelined_msgs_per_s", got as f64 / elapsed.as_secs_f64(), "msgs/s");

    // Bulk echo, cut-through and store-and-forward.
    for &size in &cli.echo_sizes {
        let data = Arc::new(payload(size));
        let conn = client.open(b'B').await?;
        let (mut rd, mut wr) = tokio::io::split(conn);
        let mut back = vec![0u8; size];
        let mut iters = 0u64;
        let start = Instant::now();
        while iters < 3 || start.elapsed().as_secs_f64() < cli.secs {
            let d = data.clone();
            let w = tokio::spawn(async move {
                wr.write_all(&d).await?;
                wr.flush().await?;
                Ok::<_, std::io::Error>(wr)
            });
            rd.read_exact(&mut back).await?;
            wr = w.await??;
            iters += 1;
        }
        rep.emit(c, s, t, &format!("echo_{}_mib_s", size_name(size)), mib_s(size, iters, start.elapsed()), "MiB/s");

        let mut conn = client.open(b'S').await?;
        let mut iters = 0u64;
        let start = Instant::now();
        while iters < 3 || start.elapsed().as_secs_f64() < cli.secs {
            conn.write_all(&(size as u32).to_be_bytes()).await?;
            conn.write_all(&data).await?;
            conn.flush().await?;
            conn.read_exact(&mut back).await?;
            iters += 1;
        }
        rep.emit(c, s, t, &format!("echo_sf_{}_mib_s", size_name(size)), mib_s(size, iters, start.elapsed()), "MiB/s");
    }

    // Connect (+ handshake) and one ping-pong.
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 5 || (start.elapsed().as_secs_f64() < cli.secs && samples.len() < 2000) {
        let t0 = Instant::now();
        let mut conn = client.open(b'M').await?;
        conn.write_all(&m).await?;
        conn.flush().await?;
        conn.read_exact(&mut m).await?;
        samples.push(t0.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    rep.emit(c, s, t, "connect_pingpong_p50_us", pct_us(&samples, 0.5), "us");
    Ok(())
}

async fn raw(cli: &Cli, rep: &mut Report) -> Res<()> {
    let addr = spawn_raw_server(None)?;
    raw_suite(cli, rep, "tcp", RawClient { addr, tls: None }).await?;
    if let Some(dir) = &cli.tls {
        let server = TlsServerConfig::from_dir(dir)?.to_rustls()?;
        let addr = spawn_raw_server(Some(server))?;
        let client = tls_client_config(dir)?;
        let name = client.server_name_for(&addr.to_string())?;
        let tls = Some((client.to_rustls()?, name));
        raw_suite(cli, rep, "tls", RawClient { addr, tls }).await?;
    }
    Ok(())
}

fn tls_client_config(dir: &Path) -> Res<TlsClientConfig> {
    Ok(TlsClientConfig::from_dir(dir, "client")?)
}

fn main() -> Res<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // Everything runs in a task on the runtime's workers, as in an async
    // application (the thread in `block_on` is not a worker: every wake-up
    // of it would be a cross-thread hop, raw and RPC alike).
    rt.block_on(async move { tokio::spawn(run(cli)).await? })
}

async fn run(cli: Cli) -> Res<()> {
    {
        let json = match &cli.json {
            Some(p) => Some(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
            None => None,
        };
        let mut rep = Report { run: cli.run.clone(), json };
        if cli.raw {
            raw(&cli, &mut rep).await?;
        }
        if let Some(addr) = &cli.connect {
            let tls = match &cli.tls {
                Some(dir) => Some(tls_client_config(dir)?),
                None => None,
            };
            let transport = if tls.is_some() {
                "tls"
            } else if addr.starts_with("unix://") {
                "unix"
            } else if addr.starts_with("ssh://") {
                "ssh"
            } else {
                "tcp"
            };
            let target = Target { addr: addr.clone(), tls, transport: transport.into() };
            if let Some(n) = cli.idle {
                idle_suite(&cli, &target, n, &mut rep).await?;
            } else if let Some(n) = cli.netref_cycles {
                netref_cycles_suite(&cli, &target, n, &mut rep).await?;
            } else {
                rpc_suite(&cli, &target, &mut rep).await?;
            }
        } else if !cli.raw {
            return Err("nothing to do: give --connect ADDR and/or --raw".into());
        }
        Ok(())
    }
}
