//! Zero-deploy through a real OpenSSH `sshd` (the setup of `ssh.rs`): a
//! Python rpyc server started over an exec channel as user `rpyctest`,
//! used (eval, remote files, teleport, callbacks), shown to listen on no
//! TCP port, and gone — process and temporary directory — after the handle
//! is dropped, after `close()`, and after the local client is killed.
//!
//! The remote interpreters are venvs of the system Python 3
//! (`/usr/bin/python3`; the test user cannot run the pyenv Python behind
//! `.venv6`): one with a copy of the rpyc 6.0.2 package from `.venv6`, one
//! without rpyc, where the deployment uploads it.

use super::ssh::{bounded, keygen, public_key, Sshd, USER};
use crate::common;
use rpyc::deploy::{DeployOptions, DeployedServer};
use rpyc::transport::ssh::{SshConfig, SshSession};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// A directory the test user can read, holding two venvs of the system
/// Python: `with/` (rpyc 6.0.2 copied in) and `without/` (no rpyc).
struct RemotePythons {
    dir: tempfile::TempDir,
}

impl RemotePythons {
    fn new() -> RemotePythons {
        assert!(
            Path::new(SYSTEM_PYTHON).exists(),
            "{SYSTEM_PYTHON} is missing: the deploy tests run it as the SSH test user (apt-get install -y python3)"
        );
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        for name in ["with", "without"] {
            let mut cmd = Command::new(SYSTEM_PYTHON);
            cmd.args(["-m", "venv", "--without-pip"]).arg(dir.path().join(name));
            let (ok, out) = common::run_with_timeout(cmd, Duration::from_secs(60));
            assert!(ok, "python3 -m venv failed: {out}");
        }
        let with = RemotePythons { dir };
        let mut cmd = Command::new(with.python(true));
        cmd.args(["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]);
        let (ok, purelib) = common::run_with_timeout(cmd, Duration::from_secs(30));
        assert!(ok, "{purelib}");
        let mut cmd = Command::new("cp");
        cmd.arg("-r").arg(local_rpyc_package()).arg(purelib.trim());
        let (ok, out) = common::run_with_timeout(cmd, Duration::from_secs(60));
        assert!(ok, "copying rpyc failed: {out}");
        // Readable by the test user whatever this process's umask is.
        let mut cmd = Command::new("chmod");
        cmd.arg("-R").arg("a+rX").arg(with.dir.path());
        let (ok, out) = common::run_with_timeout(cmd, Duration::from_secs(60));
        assert!(ok, "chmod failed: {out}");
        with
    }

    fn python(&self, with_rpyc: bool) -> PathBuf {
        self.dir.path().join(if with_rpyc { "with" } else { "without" }).join("bin/python")
    }
}

/// The rpyc 6.0.2 package directory of `.venv6`.
fn local_rpyc_package() -> PathBuf {
    let mut cmd = Command::new(common::python6());
    cmd.args(["-c", "import os, rpyc; print(os.path.dirname(rpyc.__file__))"]);
    let (ok, out) = common::run_with_timeout(cmd, Duration::from_secs(30));
    assert!(ok, "{out}");
    PathBuf::from(out.trim())
}

/// sshd, a key it accepts for the test user, and the client config.
struct Setup {
    sshd: Sshd,
    key: PathBuf,
    known_hosts: PathBuf,
    _keys: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let keys = tempfile::tempdir().unwrap();
        let key = keygen(keys.path(), "id_ed25519", "");
        let sshd = Sshd::start(&[public_key(&key)]);
        let known_hosts = sshd.known_hosts(keys.path());
        Setup { sshd, key, known_hosts, _keys: keys }
    }

    fn config(&self) -> SshConfig {
        SshConfig::new("127.0.0.1", self.sshd.port, USER).with_key_file(&self.key).with_known_hosts(&self.known_hosts)
    }

    /// `ssh://rpyctest@127.0.0.1:PORT` for the CLI.
    fn url(&self) -> String {
        format!("ssh://{USER}@127.0.0.1:{}", self.sshd.port)
    }

    /// What a fresh SSH session sees of `pid` and `dir`: "alive", "dir", both or neither.
    async fn remains(&self, pid: u32, dir: &str) -> String {
        let ssh = SshSession::connect(&self.config()).await.unwrap();
        let out = ssh
            .exec(
                &format!("if kill -0 {pid} 2>/dev/null; then echo alive; fi; if [ -e '{dir}' ]; then echo dir; fi"),
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        ssh.close().await;
        assert_eq!(out.status, Some(0), "{out:?}");
        out.stdout.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// Waits (bounded) until the remote process and directory are gone.
    async fn wait_cleaned_up(&self, pid: u32, dir: &str, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let left = self.remains(pid, dir).await;
            if left.is_empty() {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "after {within:?} the remote side still has: {left} (pid {pid}, dir {dir})\nsshd log:\n{}",
                self.sshd.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The inodes of the TCP sockets (any state) in /proc/net/tcp{,6} that
/// `pid` holds open; and whether any of them listens.
fn tcp_sockets_of(pid: u32) -> (usize, bool) {
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("cannot list /proc/{pid}/fd: {e}"))
        .flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[").map(|i| i.trim_end_matches(']').to_string())
        })
        .collect();
    let mut held = 0;
    let mut listening = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if let (Some(state), Some(inode)) = (cols.get(3), cols.get(9)) {
                if inodes.iter().any(|i| i == inode) {
                    held += 1;
                    listening |= *state == "0A";
                }
            }
        }
    }
    (held, listening)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployed_classic_server_works_listens_nowhere_and_leaves_nothing() {
    bounded(async {
        let setup = Setup::new();
        let pythons = RemotePythons::new();
        let options = DeployOptions::new().python(pythons.python(true).to_str().unwrap());
        let server = DeployedServer::start(setup.config(), options)
            .await
            .unwrap_or_else(|e| panic!("{e}\nsshd log:\n{}", setup.sshd.log_text()));
        let info = server.info().clone();
        assert_eq!((info.rpyc_version.as_str(), info.uploaded), ("6.0.2", false));
        assert!(info.dir.contains("rpyc-deploy."), "{info:?}");

        let c = server.classic().await.unwrap();
        assert_eq!(c.eval_as::<i64>("1+1").await.unwrap(), 2);
        let user: String = c.eval_as("__import__('getpass').getuser()").await.unwrap();
        assert_eq!(user, USER);
        let pid: u32 = c.eval_as("__import__('os').getpid()").await.unwrap();
        assert_eq!(pid, info.pid);
        let cwd_dir: bool = c.eval_as(&format!("__import__('os').path.isdir({:?})", info.dir)).await.unwrap();
        assert!(cwd_dir);

        // A remote file read.
        let files = tempfile::tempdir().unwrap();
        fs::set_permissions(files.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let path = files.path().join("hello.txt");
        fs::write(&path, "hello from the remote side\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let f = c.open(path.to_str().unwrap(), "r").await.unwrap();
        assert_eq!(f.read_to_string().await.unwrap(), "hello from the remote side\n");
        f.close().await.unwrap();

        // Teleport and a callback into this process.
        let apply = c.teleport("def apply_twice(f, x):\n    return f(f(x))\n", "apply_twice").await.unwrap();
        let square = rpyc::Object::function(|x: i64| Ok(x * x));
        let got: i64 = apply.call((square, 3)).await.unwrap().extract().unwrap();
        assert_eq!(got, 81);

        // print() goes to stderr, never into the RPyC stream.
        c.execute("print('noise on stdout ' * 100)").await.unwrap();
        assert_eq!(c.eval_as::<i64>("6*7").await.unwrap(), 42);

        // No TCP socket at all, so nothing listening.
        let (held, listening) = tcp_sockets_of(info.pid);
        assert!(!listening && held == 0, "the remote server holds {held} TCP socket(s), listening: {listening}");
        assert_eq!(setup.remains(info.pid, &info.dir).await, "alive dir");

        // Dropping the handle ends the remote process and removes its
        // directory, even while the server is busy in a long call.
        let busy = c.module("time").await.unwrap().getattr("sleep").await.unwrap().into_netref().unwrap();
        let sleeping = busy.async_call((600,)).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!sleeping.ready());
        drop(c);
        drop(server);
        let took = setup.wait_cleaned_up(info.pid, &info.dir, Duration::from_secs(15)).await;
        eprintln!("cleaned up {took:?} after drop (server busy in a call)");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_uploads_rpyc_when_the_remote_python_lacks_it() {
    bounded(async {
        let setup = Setup::new();
        let pythons = RemotePythons::new();
        let bare = pythons.python(false);

        // Without an upload source: the error says what to do.
        let e = DeployedServer::start(setup.config(), DeployOptions::new().python(bare.to_str().unwrap()))
            .await
            .expect_err("no rpyc remotely, nothing to upload");
        let e = e.to_string();
        assert!(e.contains("cannot import rpyc") && e.contains("--upload-from"), "{e}");

        // A missing interpreter: its exit status and the shell's complaint.
        let e = DeployedServer::start(setup.config(), DeployOptions::new().python("/nonexistent/python3"))
            .await
            .expect_err("no such interpreter");
        let e = e.to_string();
        assert!(e.contains("status 127") && e.contains("/nonexistent/python3"), "{e}");

        // Uploaded from a local Python's rpyc (asked where it is).
        let options = DeployOptions::new().python(bare.to_str().unwrap()).upload_from(common::python6());
        let server = DeployedServer::start(setup.config(), options)
            .await
            .unwrap_or_else(|e| panic!("{e}\nsshd log:\n{}", setup.sshd.log_text()));
        let info = server.info().clone();
        assert!(info.uploaded, "{info:?}");
        assert_eq!(info.rpyc_version, "6.0.2");
        let c = server.classic().await.unwrap();
        let file: String = c.eval_as("__import__('rpyc').__file__").await.unwrap();
        assert!(file.starts_with(&format!("{}/lib/rpyc/", info.dir)), "{file}");
        assert_eq!(c.eval_as::<i64>("1+1").await.unwrap(), 2);
        let ended = server.close().await.unwrap_or_default();
        assert!(ended.contains("exited with status 0"), "{ended}");
        setup.wait_cleaned_up(info.pid, &info.dir, Duration::from_secs(15)).await;

        // The same from the package directory itself, and a named service.
        let options = DeployOptions::new()
            .python(bare.to_str().unwrap())
            .upload_from(local_rpyc_package())
            .service("rpyc.core.service:SlaveService");
        let server = DeployedServer::start(setup.config(), options).await.unwrap();
        let c = server.classic().await.unwrap();
        assert_eq!(c.eval_as::<String>("'ok'").await.unwrap(), "ok");
        let info = server.info().clone();
        drop(c);
        drop(server);
        setup.wait_cleaned_up(info.pid, &info.dir, Duration::from_secs(15)).await;

        // The blocking facade.
        let (config, python) = (setup.config(), pythons.python(true));
        let (info, ended) = tokio::task::spawn_blocking(move || {
            let options = DeployOptions::new().python(python.to_string_lossy());
            let server = rpyc::blocking::DeployedServer::start(config, options)?;
            let c = server.classic()?;
            assert_eq!(c.eval_as::<i64>("2**10")?, 1024);
            let info = server.info().clone();
            Ok::<_, rpyc::Error>((info, server.close()?.unwrap_or_default()))
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("blocking deploy: {e}"));
        assert!(ended.contains("exited with status 0"), "{ended}");
        setup.wait_cleaned_up(info.pid, &info.dir, Duration::from_secs(15)).await;
    })
    .await;
}

/// One bounded `rpyc deploy …` run: (success, stdout, stderr).
fn rpyc_cli(args: &[&str]) -> (bool, String, String) {
    let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_rpyc"))
        .env_remove("RUST_LOG")
        .args(args)
        .timeout(Duration::from_secs(90))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_command_evaluates_and_a_killed_client_leaves_nothing() {
    bounded(async {
        let setup = Setup::new();
        let pythons = RemotePythons::new();
        let url = setup.url();
        let key = setup.key.to_str().unwrap().to_string();
        let kh = setup.known_hosts.to_str().unwrap().to_string();
        let with = pythons.python(true).to_str().unwrap().to_string();
        let bare = pythons.python(false).to_str().unwrap().to_string();
        let python6 = common::python6().to_str().unwrap().to_string();
        let base = [url.as_str(), "--key", &key, "--known-hosts", &kh];

        // `rpyc deploy BASE… EXTRA…`, off the async workers.
        let deploy = |extra: &[&str]| {
            let args: Vec<String> =
                ["deploy"].iter().chain(base.iter()).chain(extra.iter()).map(|s| s.to_string()).collect();
            tokio::task::spawn_blocking(move || rpyc_cli(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        };

        let (ok, out, err) = deploy(&["--python", &with, "--eval", "1+1"]).await.unwrap();
        assert!(ok && out == "2\n", "stdout: {out}\nstderr: {err}");

        // --execute: the remote print()s come out on stderr, stdout stays empty.
        let (ok, out, err) =
            deploy(&["--python", &with, "--execute", "print('hello from', 'the remote side')"]).await.unwrap();
        assert!(ok && out.is_empty() && err.contains("hello from the remote side"), "stdout: {out}\nstderr: {err}");

        // A remote exception: exit status 1, its type in the message and the JSON.
        let (ok, out, err) = deploy(&["--python", &with, "--json", "--eval", "1/0"]).await.unwrap();
        assert!(!ok && out.contains(r#""ok": false"#) && out.contains("ZeroDivisionError"), "{out}\n{err}");
        assert!(err.contains("ZeroDivisionError"), "{err}");

        let eval = ["--json", "--eval", "__import__('sys').version_info[0]"];
        let (ok, out, err) =
            deploy(&[&["--python", bare.as_str(), "--upload-from", python6.as_str()][..], &eval[..]].concat())
                .await
                .unwrap();
        assert!(ok, "stdout: {out}\nstderr: {err}");
        assert_eq!(out.trim(), r#"{"ok": true, "type": "int", "repr": "3", "value": 3}"#, "{err}");

        // Waiting mode, then the client is killed (SIGKILL: no clean-up of its own).
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rpyc"));
        cmd.env_remove("RUST_LOG").arg("deploy").args(base).args(["--python", &with, "--json"]);
        let mut child = common::spawn(cmd);
        let line = child.wait_line("{", Duration::from_secs(60));
        let pid: u32 = json_field(&line, "pid").parse().unwrap();
        let dir = json_field(&line, "dir").trim_matches('"').to_string();
        assert!(dir.contains("rpyc-deploy."), "{line}");
        assert_eq!(setup.remains(pid, &dir).await, "alive dir");
        child.child.kill().unwrap();
        child.child.wait().unwrap();
        let took = setup.wait_cleaned_up(pid, &dir, Duration::from_secs(15)).await;
        eprintln!("cleaned up {took:?} after the client was killed");
    })
    .await;
}

/// The raw value of `"name": value` in a one-line JSON object.
fn json_field(line: &str, name: &str) -> String {
    let key = format!("\"{name}\": ");
    let rest = &line[line.find(&key).unwrap_or_else(|| panic!("no {name} in {line}")) + key.len()..];
    let end = match rest.strip_prefix('"') {
        Some(quoted) => quoted.find('"').unwrap() + 2,
        None => rest.find([',', '}']).unwrap(),
    };
    rest[..end].to_string()
}
