//! Shared by the `tutorial_*` examples: a Python classic server to talk to.
//!
//! Each tutorial either connects to a server you name
//! (`-- --connect HOST:PORT`, e.g. one you started with
//! `rpyc_classic --host 127.0.0.1 --port 18812`), or starts its own:
//! the `rpyc_classic` script that `pip install rpyc` installs, found as
//! `$RPYC_CLASSIC`, next to `$RPYC_PYTHON6`, in `.venv6/bin/` of this
//! repository, or on `PATH`. It listens on a free port of 127.0.0.1 and is
//! stopped when the example ends.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// A classic server: started by us (and killed on drop), or named on the
/// command line.
pub struct Server {
    addr: String,
    child: Option<Child>,
    stdout: Option<Receiver<String>>,
}

impl Server {
    /// `host:port` to connect to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// True if this example started the server (so it sees its stdout).
    pub fn started_here(&self) -> bool {
        self.child.is_some()
    }

    /// Waits up to `timeout` for a line containing `needle` on the server's
    /// stdout (only for a server started here).
    pub fn wait_stdout(&self, needle: &str, timeout: Duration) -> Option<String> {
        let rx = self.stdout.as_ref()?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn rpyc_classic() -> PathBuf {
    if let Some(p) = std::env::var_os("RPYC_CLASSIC") {
        return PathBuf::from(p);
    }
    if let Some(py) = std::env::var_os("RPYC_PYTHON6") {
        if let Some(dir) = PathBuf::from(py).parent() {
            let candidate = dir.join("rpyc_classic");
            if candidate.exists() {
                return candidate;
            }
        }
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv6/bin/rpyc_classic");
    if local.exists() {
        return local;
    }
    PathBuf::from("rpyc_classic")
}

/// The server named by `--connect HOST:PORT`, or a new one.
pub fn server() -> Server {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--connect") {
        match args.get(i + 1) {
            Some(addr) => return Server { addr: addr.clone(), child: None, stdout: None },
            None => fail("--connect needs HOST:PORT"),
        }
    }
    start()
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2)
}

fn start() -> Server {
    let program = rpyc_classic();
    let mut child = Command::new(&program)
        .args(["--host", "127.0.0.1", "--port", "0"])
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            fail(&format!(
                "cannot start {} ({e}); `pip install rpyc` and set RPYC_CLASSIC, or pass --connect HOST:PORT",
                program.display()
            ))
        });
    // rpyc_classic logs "server started on [127.0.0.1]:PORT" to stderr; keep
    // draining stderr afterwards so the server never blocks on a full pipe.
    let (port_tx, port_rx) = channel();
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            let verbose = std::env::var_os("RPYC_TUTORIAL_VERBOSE").is_some();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if verbose {
                    eprintln!("[server log] {line}");
                }
                if let Some(rest) = line.split("server started on [127.0.0.1]:").nth(1) {
                    let _ = port_tx.send(rest.trim().to_string());
                }
            }
        });
    }
    let (out_tx, out_rx) = channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if out_tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let mut server = Server { addr: String::new(), child: Some(child), stdout: Some(out_rx) };
    match port_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(port) => server.addr = format!("127.0.0.1:{port}"),
        Err(_) => {
            drop(server);
            fail(&format!("{} did not report its port within 30 s", program.display()))
        }
    }
    server
}
