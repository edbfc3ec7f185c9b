//! Registry interop and the `rpyc` command line.
//!
//! - `registry`: the Rust registry, registrar and discovery against the real
//!   Python `rpyc_registry` script, Python servers that register, and Python
//!   `rpyc.discover` / `rpyc.connect_by_service` / `rpyc.list_services`, in
//!   each role, over UDP and TCP; pruning; hostile datagrams and floods.
//! - `commands`: every `rpyc` subcommand run as a process (assert_cmd),
//!   happy paths and error cases, over TCP, Unix sockets, TLS and SSH.
//! - `transfers`: `rpyc upload` / `rpyc download` against a Python
//!   classic server (JSON progress, errors) and `--log-format json`.
//! - `pipes`: `rpyc serve --stdio` from Python's `connect_subproc` and from
//!   `rpyc::connect_command`; child processes under a connection.
//!
//! Everything talks to 127.0.0.1 only: no test sends a broadcast (the CLI's
//! discovery commands are always given `--registry`).

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod commands;
mod pipes;
mod registry;
mod transfers;

use common::{python6, run_with_timeout, spawn, ChildGuard};
use rpyc::registry::RegistryClient;
use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The longest any single test may take.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Runs a test body under one overall deadline, with `RUST_LOG` logging.
pub async fn bounded<F: Future<Output = ()>>(body: F) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    tokio::time::timeout(DEADLINE, body).await.unwrap_or_else(|_| panic!("test did not finish within {DEADLINE:?}"));
}

/// Registry transport under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// Datagrams.
    Udp,
    /// One connection per request.
    Tcp,
}

impl Proto {
    /// A Rust client for the registry on 127.0.0.1:port.
    pub fn client(self, port: u16) -> RegistryClient {
        let addr = format!("127.0.0.1:{port}");
        match self {
            Proto::Udp => RegistryClient::udp(&addr),
            Proto::Tcp => RegistryClient::tcp(&addr),
        }
        .unwrap()
        .timeout(Duration::from_secs(2))
    }

    /// The Python registrar expression for the registry on 127.0.0.1:port.
    pub fn py_registrar(self, port: u16) -> String {
        match self {
            Proto::Udp => format!("UDPRegistryClient(ip='127.0.0.1', port={port})"),
            Proto::Tcp => format!("TCPRegistryClient('127.0.0.1', port={port})"),
        }
    }
}

/// A port that was free a moment ago (for peers that cannot report the
/// port they bound, like the `rpyc_registry` script).
pub fn free_port(proto: Proto) -> u16 {
    match proto {
        Proto::Udp => std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(),
        Proto::Tcp => std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(),
    }
}

/// The `rpyc_registry` script of the rpyc 6.0.2 venv.
pub fn rpyc_registry_script() -> PathBuf {
    let python = python6();
    let script = python.parent().unwrap().join("rpyc_registry");
    assert!(script.exists(), "{} is missing: the rpyc 6.0.2 venv installs it", script.display());
    script
}

/// Starts Python's `rpyc_registry` on 127.0.0.1 (it binds every interface:
/// the script has no host switch) and waits until it answers.
pub async fn python_registry(proto: Proto, listing: bool, pruning_secs: u32) -> (ChildGuard, u16) {
    for _attempt in 0..3 {
        let port = free_port(proto);
        let mut cmd = Command::new(python6());
        cmd.arg(rpyc_registry_script())
            .args(["--mode", if proto == Proto::Udp { "UDP" } else { "TCP" }])
            .args(["--port", &port.to_string()])
            .args(["--timeout", &pruning_secs.to_string()]);
        if listing {
            // plumbum converts the switch's text with bool(): any non-empty text is True.
            cmd.args(["--listing", "yes"]);
        }
        let mut child = spawn(cmd);
        let client = proto.client(port).timeout(Duration::from_millis(300));
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if client.discover("READINESS-PROBE").await.is_ok() {
                return (child, port);
            }
            if child.child.try_wait().unwrap().is_some() {
                break; // lost the port race; try another
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.child.kill();
    }
    panic!("rpyc_registry did not come up");
}

/// Runs Python (rpyc 6.0.2) code with `-c`, bounded; returns (success, output).
pub async fn python(code: &str, args: &[String]) -> (bool, String) {
    python_with(python6(), code, args).await
}

/// Runs code with a given interpreter.
pub async fn python_with(python: PathBuf, code: &str, args: &[String]) -> (bool, String) {
    let mut cmd = Command::new(python);
    cmd.arg("-c").arg(code).args(args);
    tokio::task::spawn_blocking(move || run_with_timeout(cmd, Duration::from_secs(60))).await.unwrap()
}

/// Python code that serves `EchoService` (aliases PYECHO, ECHO2) on
/// 127.0.0.1 and keeps it registered with the registry given as
/// `argv[1]` (`udp`/`tcp`) and `argv[2]` (port); prints `PORT n`.
pub const PY_REGISTERED_SERVER: &str = r#"
import sys, rpyc
from rpyc.utils.server import ThreadedServer
from rpyc.utils.registry import UDPRegistryClient, TCPRegistryClient
class EchoService(rpyc.Service):
    ALIASES = ["PyEcho", "echo2"]
    def exposed_get_answer(self):
        return 42
port = int(sys.argv[2])
reg = UDPRegistryClient(ip="127.0.0.1", port=port) if sys.argv[1] == "udp" else TCPRegistryClient("127.0.0.1", port=port)
srv = ThreadedServer(EchoService, hostname="127.0.0.1", port=0, registrar=reg, auto_register=True)
print("PORT", srv.port, flush=True)
srv.start()
"#;

/// Starts [`PY_REGISTERED_SERVER`] with the given interpreter.
pub fn python_registered_server(python: PathBuf, proto: Proto, registry_port: u16) -> (ChildGuard, u16) {
    let mut cmd = Command::new(python);
    cmd.arg("-c")
        .arg(PY_REGISTERED_SERVER)
        .arg(if proto == Proto::Udp { "udp" } else { "tcp" })
        .arg(registry_port.to_string());
    let child = spawn(cmd);
    let port = child.wait_line("PORT ", Duration::from_secs(30)).parse().unwrap();
    (child, port)
}

/// Polls `discover` until it names `port` (registrations are asynchronous).
pub async fn wait_discovered(client: &RegistryClient, name: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(found) = client.discover(name).await {
            if found.iter().any(|s| s.port == port) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{name} on port {port} never showed up in {}", client.describe());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
