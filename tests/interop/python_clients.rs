//! The unmodified Python rpyc client against the Rust CONFORMANCE server.

use crate::common::{self, python5, python6, run_with_timeout, script};
use rpyc::transport::Listener;
use rpyc::{AccessPolicy, Server, ServerConfig};
use std::process::Command;
use std::time::Duration;

async fn run_client(python: std::path::PathBuf, args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(python);
        cmd.arg(script("conformance_client.py")).args(args);
        run_with_timeout(cmd, Duration::from_secs(240))
    })
    .await
    .expect("client thread")
}

fn assert_passed(ok: bool, output: &str) {
    assert!(ok, "Python conformance client failed:\n{output}");
    let summary = output.lines().rev().find(|l| l.starts_with("checks:")).unwrap_or("");
    assert!(!summary.contains("FAILURES"), "{output}");
    let n: usize =
        summary.trim_start_matches("checks:").split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(n > 0, "the client ran no checks:\n{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python6_client_passes_every_conformance_group() {
    let (addr, stop) = common::serve(rpyc::conformance::service(), ServerConfig::default()).await;
    let (ok, out) = run_client(python6(), vec!["--port".into(), addr.port().to_string()]).await;
    stop.shutdown();
    assert_passed(ok, &out);
    for group in [
        "seeds",
        "echo",
        "callbacks",
        "sleep",
        "exceptions",
        "counter",
        "async",
        "events",
        "listlike",
        "dictlike",
        "policy",
        "threads",
        "close",
    ] {
        assert!(out.contains(&format!("[{group}] ok")), "group {group} did not pass:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python6_client_with_allow_public_attrs() {
    let cfg = ServerConfig::default().with_policy(AccessPolicy::default().with_public_attrs(true));
    let (addr, stop) = common::serve(rpyc::conformance::service(), cfg).await;
    let args =
        ["--port", &addr.port().to_string(), "--allow-public", "--only", "policy,seeds"].map(String::from).to_vec();
    let (ok, out) = run_client(python6(), args).await;
    stop.shutdown();
    assert_passed(ok, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python5_client_is_served_in_its_own_dialect() {
    let (addr, stop) = common::serve(rpyc::conformance::service(), ServerConfig::default()).await;
    let args = ["--port", &addr.port().to_string(), "--v5-subset"].map(String::from).to_vec();
    let (ok, out) = run_client(python5(), args).await;
    stop.shutdown();
    assert_passed(ok, &out);
    assert!(out.contains("rpyc 5.3.1"), "{out}");
    for group in ["seeds", "exceptions", "callbacks", "counter", "listlike", "dictlike", "echo"] {
        assert!(out.contains(&format!("[{group}] ok")), "group {group} did not pass:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python5_and_python6_clients_share_one_server() {
    let (addr, stop) = common::serve(rpyc::conformance::service(), ServerConfig::default()).await;
    let port = addr.port().to_string();
    let a = run_client(python5(), ["--port", &port, "--only", "seeds,callbacks"].map(String::from).to_vec());
    let b = run_client(python6(), ["--port", &port, "--only", "seeds,callbacks"].map(String::from).to_vec());
    let ((ok5, out5), (ok6, out6)) = tokio::join!(a, b);
    stop.shutdown();
    assert_passed(ok5, &out5);
    assert_passed(ok6, &out6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python6_client_over_a_unix_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rpyc.sock");
    let server = Server::new(rpyc::conformance::service(), ServerConfig::default())
        .listen(Listener::unix(&path).await.expect("bind unix"));
    let stop = server.spawn();
    let args = vec!["--unix".into(), path.display().to_string(), "--only".into(), "seeds,counter,callbacks".into()];
    let (ok, out) = run_client(python6(), args).await;
    stop.shutdown();
    assert_passed(ok, &out);
}
