//! RPyC over pipes: `rpyc serve --stdio` driven by Python's
//! `connect_subproc` and by `rpyc::connect_command`, hostile bytes on its
//! stdin, and the life of a child process under a connection (its exit
//! status in the close reason; killed and reaped when the connection ends).

use crate::bounded;
use crate::common::{python6, run_with_timeout};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rpyc");

/// True while `/proc/PID` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// Waits (bounded) until `pid` is gone.
async fn wait_gone(pid: u32, within: Duration) {
    let deadline = Instant::now() + within;
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} still runs after {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pid_of(conn: &rpyc::Connection) -> u32 {
    conn.credentials().attributes.get("pid").expect("pid attribute").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_connect_subproc_drives_rpyc_serve_stdio() {
    bounded(async {
        let code = r#"
import sys, rpyc
c = rpyc.utils.factory.connect_subproc([sys.argv[1], "serve", "--stdio", "-q"])
print("ADD", c.root.add(5, 10))
print("NAME", c.root.get_service_name())
print("CALLBACK", c.root.call_back(lambda x: x * 2, 21))
c.close()
print("EXIT", c.proc.wait(timeout=20))
"#;
        let mut cmd = Command::new(python6());
        cmd.arg("-c").arg(code).arg(BIN);
        let (ok, out) =
            tokio::task::spawn_blocking(move || run_with_timeout(cmd, Duration::from_secs(60))).await.unwrap();
        assert!(ok, "{out}");
        for want in ["ADD 15", "NAME CONFORMANCE", "CALLBACK 42", "EXIT 0"] {
            assert!(out.lines().any(|l| l == want), "no line {want:?} in:\n{out}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_command_runs_rpyc_serve_stdio_and_ends_it() {
    bounded(async {
        let conn = rpyc::connect_command(BIN, ["serve", "--stdio", "-q"]).await.unwrap();
        let pid = pid_of(&conn);
        let sum: i64 = conn.root().await.unwrap().call_method("add", (20, 22)).await.unwrap();
        assert_eq!(sum, 42);
        assert!(alive(pid));
        conn.close().await;
        // stdin closed: the server sees end of file and exits; it is reaped.
        wait_gone(pid, Duration::from_secs(10)).await;

        // The blocking facade and the classic helpers over the same pipes.
        let classic = tokio::task::spawn_blocking(|| {
            // What rpyc.classic.connect_subproc() runs.
            let script = python6().parent().unwrap().join("rpyc_classic.py");
            let c = rpyc::blocking::Classic::connect_command(
                python6().to_str().unwrap(),
                ["-u", script.to_str().unwrap(), "-q", "-m", "stdio"],
            )?;
            let two: i64 = c.eval_as("1+1")?;
            let pid: i64 = c.eval_as("__import__('os').getpid()")?;
            c.close()?;
            Ok::<_, rpyc::Error>((two, pid))
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(classic.0, 2);
        wait_gone(classic.1 as u32, Duration::from_secs(10)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_exit_status_ends_the_connection_and_a_stubborn_child_is_killed() {
    bounded(async {
        // The program exits: pending and later calls fail with its status.
        let conn = rpyc::connect_command("sh", ["-c", "head -c 1 >/dev/null; exit 3"]).await.unwrap();
        let err = conn.root().await.expect_err("the peer exited");
        tokio::time::timeout(Duration::from_secs(10), conn.closed()).await.expect("connection ended");
        let reason = conn.close_reason().unwrap_or_default();
        assert!(reason.contains("exit status: 3"), "reason: {reason}; error: {err}");

        // A program that ignores end of file is killed after the grace time.
        let conn = rpyc::connect_command("sleep", ["300"]).await.unwrap();
        let pid = pid_of(&conn);
        assert!(alive(pid));
        let started = Instant::now();
        conn.abort("test is done");
        drop(conn);
        wait_gone(pid, Duration::from_secs(10)).await;
        assert!(started.elapsed() >= Duration::from_secs(1), "killed before the grace time");

        // A program that does not exist: a clear error.
        let e = rpyc::connect_command("/nonexistent/rpyc-server", ["--stdio"]).await.expect_err("no such program");
        assert!(e.to_string().contains("cannot start /nonexistent/rpyc-server"), "{e}");
    })
    .await;
}

#[test]
fn hostile_bytes_on_stdin_get_the_socket_limits() {
    // An oversized frame header: the same refusal as over TCP, no panic.
    let mut child = Command::new(BIN)
        .args(["serve", "--stdio", "-v"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&[0xff, 0xff, 0xff, 0xf0, 0x00]).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("rpyc serve --stdio did not end after an oversized frame header");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(stdin);
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let mut stdout = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut stdout).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("frame of 4294967280 bytes exceeds the"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stdout.is_empty(), "nothing but RPyC on stdout, got {stdout:?}");
}
