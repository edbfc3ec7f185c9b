//! Helpers shared by the integration test binaries: real peers in-process
//! or as child processes, always on 127.0.0.1 port 0, always bounded in time,
//! always killed by the test that started them.
#![allow(dead_code)]

use rpyc::transport::Listener;
use rpyc::{Server, ServerConfig, Service};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python_from_env(var: &str, version: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) if PathBuf::from(&p).exists() => PathBuf::from(p),
        _ => {
            let local = root().join(format!(".venv{}", &version[..1])).join("bin/python");
            if local.exists() {
                return local;
            }
            panic!(
                "Python rpyc {version} is required for interop tests: run `bash scripts/test.sh` \
                 (it creates .venv6/.venv5), or set {var} to a python that has rpyc=={version}"
            )
        }
    }
}

/// Python with rpyc 6.0.2.
pub fn python6() -> PathBuf {
    python_from_env("RPYC_PYTHON6", "6.0.2")
}

/// Python with rpyc 5.3.1.
pub fn python5() -> PathBuf {
    python_from_env("RPYC_PYTHON5", "5.3.1")
}

/// A script under tests/python.
pub fn script(name: &str) -> PathBuf {
    root().join("tests/python").join(name)
}

/// A child process that is killed when dropped.
pub struct ChildGuard {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildGuard {
    /// Peak resident memory of the process so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM in /proc/PID/status");
        kib << 10
    }

    /// Waits (bounded) for a stdout line starting with `prefix`; returns the rest.
    pub fn wait_line(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                }
                Err(_) => panic!("no line starting with {prefix:?} within {timeout:?}"),
            }
        }
    }
}

/// Spawns a command, capturing stdout line by line.
pub fn spawn(mut cmd: Command) -> ChildGuard {
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).stdin(Stdio::null());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    ChildGuard { child, lines: rx }
}

/// Runs a command to completion with a deadline; returns (success, stdout+stderr).
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> (bool, String) {
    let out_path = tempfile::NamedTempFile::new().expect("temp file");
    let file = out_path.reopen().expect("reopen");
    let file2 = file.try_clone().expect("clone");
    cmd.stdout(Stdio::from(file)).stderr(Stdio::from(file2)).stdin(Stdio::null());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::fs::read_to_string(out_path.path()).unwrap_or_default();
    match status {
        Some(st) => (st.success(), output),
        None => (false, format!("{output}\n*** killed after {timeout:?} ***")),
    }
}

/// Starts a Python rpyc server (`tests/python/run_server.py`) and returns it
/// with its port.
pub fn python_server(python: &std::path::Path, args: &[&str]) -> (ChildGuard, u16) {
    let mut cmd = Command::new(python);
    cmd.arg(script("run_server.py")).args(args).arg("--lifetime").arg("300");
    let child = spawn(cmd);
    let port = child.wait_line("PORT ", Duration::from_secs(30)).parse().expect("port number");
    (child, port)
}

/// Serves `service` on 127.0.0.1:0 in the current runtime.
pub async fn serve(service: Service, config: ServerConfig) -> (SocketAddr, rpyc::server::ShutdownHandle) {
    let listener = Listener::tcp("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("tcp addr");
    let server = Server::new(service, config).listen(listener);
    (addr, server.spawn())
}

/// Builds the named examples (with the profile this test binary was built
/// with, so the library is already compiled) and returns the folder holding
/// them. `cargo test --all-targets` builds examples as test harnesses under
/// hashed names, so a test that runs an example as a program must build it
/// itself; cargo's build lock makes concurrent calls from several test
/// binaries safe.
pub fn build_examples(names: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile dir>/deps/<test>-<hash>
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("profile dir").to_path_buf();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root()).args(["build", "--quiet"]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    } else {
        cmd.args(["--profile", "test"]);
    }
    for name in names {
        cmd.args(["--example", name]);
    }
    let (ok, out) = run_with_timeout(cmd, Duration::from_secs(1200));
    assert!(ok, "building the examples {names:?} failed:\n{out}");
    profile_dir.join("examples")
}

/// Brine for a tuple of `tuples` tuples of 1,000,000 `None` each: a frame
/// that deflates to a few KB and inflates to `tuples` MB, the decode
/// amplification attack.
pub fn tuples_of_none(tuples: u8) -> Vec<u8> {
    let mut raw = vec![0x14, tuples];
    for _ in 0..tuples {
        raw.push(0x15);
        raw.extend_from_slice(&1_000_000u32.to_be_bytes());
        raw.extend(std::iter::repeat_n(0u8, 1_000_000));
    }
    raw
}

/// `payload` as one zlib-compressed frame, whatever its size.
pub fn compressed_frame(payload: &[u8]) -> Vec<u8> {
    let mut cfg = rpyc::channel::ChannelConfig::default();
    cfg.compress_up_to = usize::MAX;
    cfg.compression_level = 9;
    let frame = rpyc::channel::encode_frame(payload, &cfg);
    assert_eq!(frame[4], 1, "compressed");
    frame
}

/// An authoritative DNS server for the zone `rpyc.test.`, in-process on
/// 127.0.0.1 (UDP and TCP on the same port 0-picked port), whose records
/// the test replaces while it runs. It has its own thread and runtime, so
/// sync and async tests alike can use it; dropping it stops the server.
pub struct DnsServer {
    addr: SocketAddr,
    zone: std::sync::Arc<hickory_server::store::in_memory::InMemoryZoneHandler>,
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The zone [`DnsServer`] serves.
pub const DNS_ZONE: &str = "rpyc.test.";

impl DnsServer {
    /// Starts the server (the zone holds only its SOA record, minimum TTL 1 s).
    pub async fn start() -> DnsServer {
        DnsServer::start_blocking()
    }

    /// [`DnsServer::start`] for sync tests (blocks for the bind only).
    pub fn start_blocking() -> DnsServer {
        use hickory_server::proto::rr::rdata::SOA;
        use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
        use hickory_server::store::in_memory::InMemoryZoneHandler;
        use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
        use std::sync::Arc;

        let origin = Name::from_ascii(DNS_ZONE).unwrap();
        let soa = SOA::new(
            Name::from_ascii("ns.rpyc.test.").unwrap(),
            Name::from_ascii("admin.rpyc.test.").unwrap(),
            1,
            60,
            60,
            600,
            1,
        );
        let mut soa_set = RecordSet::with_ttl(origin.clone(), RecordType::SOA, 1);
        soa_set.insert(Record::from_rdata(origin.clone(), 1, RData::SOA(soa)), 1);
        let mut records = std::collections::BTreeMap::new();
        records.insert(RrKey::new(LowerName::new(&origin), RecordType::SOA), soa_set);
        let zone =
            Arc::new(InMemoryZoneHandler::new(origin.clone(), records, ZoneType::Primary, AxfrPolicy::Deny).unwrap());

        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = Arc::clone(&zone);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let addr = udp.local_addr().unwrap();
                let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
                let mut catalog = Catalog::new();
                catalog.upsert(LowerName::new(&origin), vec![served as Arc<dyn ZoneHandler>]);
                let mut server = hickory_server::Server::new(catalog);
                server.register_socket(udp);
                server.register_listener(tcp, Duration::from_secs(5), 64);
                ready_tx.send((addr, tokio::runtime::Handle::current())).unwrap();
                let _ = stop_rx.await;
                let _ = tokio::time::timeout(Duration::from_secs(5), server.shutdown_gracefully()).await;
            });
        });
        let (addr, handle) = ready_rx.recv_timeout(Duration::from_secs(10)).expect("DNS server started");
        DnsServer { addr, zone, handle, stop: Some(stop_tx), thread: Some(thread) }
    }

    /// Where it listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the SRV records of `name` (relative names are in
    /// [`DNS_ZONE`]) with `targets`: `(priority, weight, port, host)`; no
    /// targets removes them.
    pub fn set_srv(&self, name: &str, ttl: u32, targets: &[(u16, u16, u16, &str)]) {
        use hickory_server::proto::rr::rdata::SRV;
        use hickory_server::proto::rr::{RData, RecordType};
        let records =
            targets.iter().map(|&(p, w, port, host)| RData::SRV(SRV::new(p, w, port, dns_name(host)))).collect();
        self.replace(name, RecordType::SRV, ttl, records);
    }

    /// Replaces the address records of `host` with `ip` (A or AAAA).
    pub fn set_a(&self, host: &str, ip: std::net::IpAddr, ttl: u32) {
        use hickory_server::proto::rr::rdata::{A, AAAA};
        use hickory_server::proto::rr::{RData, RecordType};
        match ip {
            std::net::IpAddr::V4(v4) => self.replace(host, RecordType::A, ttl, vec![RData::A(A(v4))]),
            std::net::IpAddr::V6(v6) => self.replace(host, RecordType::AAAA, ttl, vec![RData::AAAA(AAAA(v6))]),
        }
    }

    fn replace(
        &self,
        name: &str,
        rtype: hickory_server::proto::rr::RecordType,
        ttl: u32,
        rdata: Vec<hickory_server::proto::rr::RData>,
    ) {
        use hickory_server::proto::rr::{LowerName, Record, RecordSet, RrKey};
        let name = dns_name(name);
        let key = RrKey::new(LowerName::new(&name), rtype);
        let mut set = RecordSet::with_ttl(name.clone(), rtype, ttl);
        for data in rdata {
            set.insert(Record::from_rdata(name.clone(), ttl, data), 1);
        }
        let zone = std::sync::Arc::clone(&self.zone);
        let (tx, rx) = mpsc::channel();
        self.handle.spawn(async move {
            let mut records = zone.records_mut().await;
            if set.is_empty() {
                records.remove(&key);
            } else {
                records.insert(key, std::sync::Arc::new(set));
            }
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("DNS zone updated");
    }
}

/// `host` as an absolute name: as is if it ends with a dot or with the
/// zone's name, else inside [`DNS_ZONE`].
fn dns_name(host: &str) -> hickory_server::proto::rr::Name {
    let full = if host.ends_with('.') {
        host.to_string()
    } else if format!("{host}.").ends_with(DNS_ZONE) {
        format!("{host}.")
    } else {
        format!("{host}.{DNS_ZONE}")
    };
    hickory_server::proto::rr::Name::from_ascii(&full).unwrap_or_else(|e| panic!("bad DNS name {full:?}: {e}"))
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Deterministic bytes that do not compress (xorshift64).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
