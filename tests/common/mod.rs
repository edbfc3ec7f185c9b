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
