//! The gateway with real peers: unmodified Python rpyc 6.0.2 servers behind
//! it (classic `SlaveService` and a plain service), Python `ssl_connect`
//! clients and Rust clients in front, certificates generated at test time.
//!
//! Everything binds 127.0.0.1 port 0, every wait is bounded, every process
//! started is killed by the test that started it.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod attack;
mod hostile;
mod identity;
mod ops;
mod pools;
mod proxy;
mod python;
mod rust;

use rpyc::certs;
use rpyc::gateway::{Gateway, GatewayConfig, GatewayHandle};
use rpyc::transport::tls::TlsClientConfig;
use rpyc::{ClientBuilder, Connection};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Deadline for a whole test.
pub(crate) const DEADLINE: Duration = Duration::from_secs(120);
/// Deadline for one step.
pub(crate) const STEP: Duration = Duration::from_secs(20);

pub(crate) async fn bounded<F: std::future::Future<Output = ()>>(body: F) {
    tokio::time::timeout(DEADLINE, body).await.unwrap_or_else(|_| panic!("test did not finish within {DEADLINE:?}"));
}

pub(crate) async fn step<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f).await.unwrap_or_else(|_| panic!("{what}: no answer within {STEP:?}"))
}

/// Runs blocking work (child processes) off the runtime's workers.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// A development PKI on disk: CA, server certificate, clients alice, bob,
/// carol; plus a client "mallory" signed by another CA.
pub(crate) struct Pki {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) rogue: tempfile::TempDir,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        certs::init_dir(dir.path(), &[]).unwrap();
        for name in ["alice", "bob", "carol"] {
            certs::client_cert(dir.path(), name).unwrap();
        }
        let rogue = tempfile::tempdir().unwrap();
        certs::init_dir(rogue.path(), &[]).unwrap();
        certs::client_cert(rogue.path(), "mallory").unwrap();
        Pki { dir, rogue }
    }

    pub(crate) fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A Rust client configuration presenting `name`'s certificate.
    pub(crate) fn client(&self, name: &str) -> TlsClientConfig {
        TlsClientConfig::from_dir(self.dir.path(), name).unwrap()
    }
}

/// A running in-process gateway.
pub(crate) struct Gw {
    pub(crate) handle: GatewayHandle,
    pub(crate) addr: SocketAddr,
    pub(crate) metrics: Option<SocketAddr>,
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// The TOML of a gateway with one TLS listener in `pki` and one upstream;
/// `extra` is appended (policies, limits…).
pub(crate) fn config_text(pki: &Pki, upstream: &str, extra: &str) -> String {
    format!(
        "[[listen]]\nurl = \"tls://127.0.0.1:0\"\ntls = {:?}\n\n[upstream.py]\nurl = {upstream:?}\n\n{extra}\n",
        pki.dir.path().display().to_string()
    )
}

pub(crate) async fn start_gateway(text: &str, base: &Path) -> Gw {
    let config = GatewayConfig::from_toml(text, base).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let gw = Gateway::bind(config).await.unwrap();
    let addr = gw.local_addrs()[0].1;
    let metrics = gw.metrics_addr();
    Gw { handle: gw.spawn(), addr, metrics }
}

/// A Python classic or service server and a gateway in front of it.
pub(crate) async fn python_behind_gateway(kind: &str, pki: &Pki, extra: &str) -> (common::ChildGuard, u16, Gw) {
    let kind = kind.to_string();
    let (child, port) = blocking(move || common::python_server(&common::python6(), &["--kind", &kind])).await;
    let gw = start_gateway(&config_text(pki, &format!("tcp://127.0.0.1:{port}"), extra), pki.dir.path()).await;
    (child, port, gw)
}

pub(crate) async fn rust_client(gw: &Gw, pki: &Pki, name: &str) -> Connection {
    step(
        "connect through the gateway",
        ClientBuilder::new().tls(pki.client(name)).timeout(STEP).connect(&gw.addr.to_string()),
    )
    .await
    .unwrap()
}

/// Runs a Python 6 script (`-c`) with arguments; returns (success, output).
pub(crate) async fn python(script: &'static str, args: Vec<String>) -> (bool, String) {
    blocking(move || {
        let mut cmd = Command::new(common::python6());
        cmd.arg("-c").arg(script).args(args);
        common::run_with_timeout(cmd, Duration::from_secs(60))
    })
    .await
}

/// Arguments for a Python client of `gw` presenting `name` from `dir`.
pub(crate) fn py_args(gw: &Gw, dir: &Path, name: &str, scenario: &str) -> Vec<String> {
    vec![
        scenario.to_string(),
        gw.addr.port().to_string(),
        dir.join(format!("{name}.pem")).display().to_string(),
        dir.join(format!("{name}.key")).display().to_string(),
        dir.join("ca.pem").display().to_string(),
    ]
}

pub(crate) fn assert_lines(out: &str, want: &[&str]) {
    for w in want {
        assert!(out.lines().any(|l| l.contains(w)), "expected a line containing {w:?} in:\n{out}");
    }
}
