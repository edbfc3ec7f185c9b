//! A Python client sees AttributeError exactly where a Python rpyc server
//! with the same flags would raise it.

use crate::common::{python6, run_with_timeout, script, spawn};
use rpyc::{AccessPolicy, ServerConfig};
use std::process::Command;
use std::time::Duration;

async fn probe(port: u16) -> String {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(python6());
        cmd.arg(script("policy_probe.py")).args(["probe", "--port", &port.to_string()]);
        let (ok, out) = run_with_timeout(cmd, Duration::from_secs(60));
        assert!(ok, "probe failed:\n{out}");
        out
    })
    .await
    .expect("probe thread")
}

async fn compare(flags: &[&str], policy: AccessPolicy) {
    let mut cmd = Command::new(python6());
    cmd.arg(script("policy_probe.py")).arg("serve").args(flags);
    let py = spawn(cmd);
    let py_port: u16 = py.wait_line("PORT ", Duration::from_secs(30)).parse().expect("port");
    let (addr, stop) =
        crate::common::serve(rpyc::conformance::service(), ServerConfig::default().with_policy(policy)).await;
    let from_python = probe(py_port).await;
    let from_rust = probe(addr.port()).await;
    stop.shutdown();
    drop(py);
    // Only the last line differs by design: Rust objects have no dynamic
    // attributes, so a granted setattr on an undeclared name cannot succeed.
    assert_eq!(from_rust, from_python, "flags {flags:?}\n--- rust ---\n{from_rust}\n--- python ---\n{from_python}");
    assert!(from_python.lines().count() >= 15, "{from_python}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_outcomes_match_python_rpyc() {
    compare(&[], AccessPolicy::default()).await;
    compare(&["--allow-public"], AccessPolicy::default().with_public_attrs(true)).await;
    let mut all = AccessPolicy::default();
    all.allow_all_attrs = true;
    compare(&["--allow-all"], all).await;
    let mut no_exposed = AccessPolicy::default();
    no_exposed.allow_exposed_attrs = false;
    compare(&["--no-exposed"], no_exposed).await;
    let mut no_safe = AccessPolicy::default().with_public_attrs(true);
    no_safe.allow_safe_attrs = false;
    compare(&["--no-safe", "--allow-public"], no_safe).await;
}
