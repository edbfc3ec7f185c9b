//! The README's first command: the quickstart example runs and shows the
//! secured path (allowed call, callback, denied call, refused connection).

use std::process::Command;
use std::time::Duration;

/// The examples these tests run, built once.
pub fn example(name: &str) -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| crate::common::build_examples(&["quickstart", "my_service", "test_service", "add_client"]))
        .join(name)
}

#[test]
fn quickstart_shows_the_secured_path() {
    let (ok, out) = crate::common::run_with_timeout(Command::new(example("quickstart")), Duration::from_secs(60));
    assert!(ok, "{out}");
    for expected in [
        "serving CALCULATOR over mutual TLS",
        "as alice:",
        "add(5, 10)                 = 15",
        "apply(lambda x: 3*x, 14)   = 42",
        "report().internal_notes    = \"draft by alice\"",
        "raised ZeroDivisionError: float division by zero",
        "as bob:",
        "raised AttributeError: cannot access 'internal_notes'",
        "without a client certificate:",
        "refused:",
        "requires a client certificate",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}

fn start(name: &str) -> (crate::common::ChildGuard, u16) {
    let mut cmd = Command::new(example(name));
    cmd.args(["--port", "0"]);
    let child = crate::common::spawn(cmd);
    let port = child.wait_line("PORT ", Duration::from_secs(20)).parse().expect("port");
    (child, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_seed_services_and_client() {
    let (_my, port) = start("my_service");
    let conn = rpyc::connect(&format!("127.0.0.1:{port}")).await.unwrap();
    let root = conn.root().await.unwrap();
    assert_eq!(root.call_method::<i64>("line_length", ("hello",)).await.unwrap(), 5);
    assert_eq!(root.call_method::<i64>("get_answer", ()).await.unwrap(), 42);
    assert_eq!(root.getattr("the_real_answer_though").await.unwrap().extract::<i64>().unwrap(), 43);
    assert!(root.callattr("get_question", ()).await.unwrap_err().is_exception("AttributeError"));
    assert_eq!(root.call_method::<String>("get_service_name", ()).await.unwrap(), "MY");

    let (_test, port) = start("test_service");
    let conn = rpyc::connect(&format!("127.0.0.1:{port}")).await.unwrap();
    let root = conn.root().await.unwrap();
    assert_eq!(root.call_method::<String>("foo", ()).await.unwrap(), "foo");
    assert_eq!(root.call_method::<String>("bar", ()).await.unwrap(), "bar");

    let (addr, stop) = crate::common::serve(rpyc::conformance::service(), rpyc::ServerConfig::default()).await;
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(example("add_client"));
        cmd.arg(addr.to_string());
        crate::common::run_with_timeout(cmd, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert!(out.0 && out.1.contains("add(5, 10) = 15"), "{}", out.1);
    stop.shutdown();
}
