//! SSH transport tests: the Rust client through a real OpenSSH `sshd` to
//! Python and Rust RPyC servers, and the embedded russh endpoint reached by
//! the Rust client and by a stock `ssh -N -L` plus Python rpyc.
//!
//! Needs `/usr/sbin/sshd`, `ssh`, `ssh-keygen`, `ssh-keyscan` (Debian:
//! `apt-get install -y openssh-server openssh-client`), root (sshd switches
//! to the login user) and a login user `rpyctest` whose password field is
//! not locked — sshd with `UsePAM no` refuses locked (`!`) accounts even for
//! key logins: `useradd -m -s /bin/bash -p '*' rpyctest`. Missing pieces
//! fail the tests with that instruction; nothing is skipped.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;
use rpyc::transport::ssh::{SshAcceptor, SshAuth, SshConfig, SshServerConfig, SshSession};
use rpyc::transport::{connect_endpoint, Endpoint, Listener, TcpOptions};
use rpyc::{ClientBuilder, Connection, Server, ServerConfig};
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";
pub(crate) const USER: &str = "rpyctest";
const DEADLINE: Duration = Duration::from_secs(180);

/// Runs a test body under one overall deadline.
pub(crate) async fn bounded<F: std::future::Future<Output = ()>>(body: F) {
    // RUST_LOG=rpyc=debug shows the library's logs with a failing test's output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    tokio::time::timeout(DEADLINE, body).await.unwrap_or_else(|_| panic!("test did not finish within {DEADLINE:?}"));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A port with nothing listening (bound, then released).
fn closed_port() -> u16 {
    free_port()
}

/// `ssh-keygen -t ed25519` into `dir/name` (mode 0600), optionally with a passphrase.
pub(crate) fn keygen(dir: &Path, name: &str, passphrase: &str) -> PathBuf {
    let path = dir.join(name);
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", "ed25519", "-N", passphrase, "-C", name, "-f"]).arg(&path);
    let (ok, out) = common::run_with_timeout(cmd, Duration::from_secs(30));
    assert!(ok, "ssh-keygen failed (is openssh-client installed?): {out}");
    path
}

pub(crate) fn public_key(private: &Path) -> String {
    fs::read_to_string(format!("{}.pub", private.display())).unwrap().trim().to_string()
}

fn write(path: &Path, contents: &str, mode: u32) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Fails (never skips) when the machine cannot run sshd for the tests.
fn require_sshd_prerequisites() {
    assert!(
        Path::new(SSHD).exists(),
        "{SSHD} is missing: the SSH tests need OpenSSH's server (apt-get install -y openssh-server)"
    );
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    assert!(
        passwd.lines().any(|l| l.starts_with(&format!("{USER}:"))),
        "user {USER} does not exist: the sshd tests log in as it (root logins are off). Create it with \
         `useradd -m -s /bin/bash -p '*' {USER}`"
    );
    if let Ok(shadow) = fs::read_to_string("/etc/shadow") {
        let locked =
            shadow.lines().find_map(|l| l.strip_prefix(&format!("{USER}:"))).is_some_and(|rest| rest.starts_with('!'));
        assert!(
            !locked,
            "user {USER} has a locked password ('!'), and sshd with UsePAM no refuses locked accounts even \
             for key logins: run `usermod -p '*' {USER}` (or create it with `useradd -m -s /bin/bash -p '*' {USER}`)"
        );
    }
    fs::create_dir_all("/run/sshd").unwrap_or_else(|e| panic!("cannot create /run/sshd (sshd needs it): {e}"));
}

/// A real OpenSSH server on a loopback port, killed on drop.
pub(crate) struct Sshd {
    child: Child,
    pub(crate) port: u16,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // sshd forks a process per connection; give them a moment to end
        // with their clients, then kill any left so none outlives the test.
        let pid = self.child.id();
        let deadline = Instant::now() + Duration::from_secs(2);
        while !descendants(pid).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for stray in descendants(pid).into_iter().rev() {
            let _ = Command::new("kill").arg("-9").arg(stray.to_string()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every process below `pid`, children before grandchildren (from /proc);
/// killed in reverse so none is orphaned first.
fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((child, ppid))
        })
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while let Some(&p) = found.get(i) {
        found.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

impl Sshd {
    /// Starts sshd accepting `authorized` public keys for every user.
    pub(crate) fn start(authorized: &[String]) -> Sshd {
        require_sshd_prerequisites();
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            // sshd reads authorized_keys as the login user.
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
            let host_key = keygen(dir.path(), "ssh_host_ed25519_key", "");
            let keys = dir.path().join("authorized_keys");
            write(&keys, &(authorized.join("\n") + "\n"), 0o644);
            let port = free_port();
            let config = dir.path().join("sshd_config");
            let d = dir.path().display();
            write(
                &config,
                &format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin no\nUsePAM no\n\
                     StrictModes no\nAllowTcpForwarding yes\nPidFile {d}/sshd.pid\nLogLevel VERBOSE\n",
                    host_key.display(),
                    keys.display()
                ),
                0o644,
            );
            let log = dir.path().join("sshd.log");
            let child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(fs::File::create(&log).unwrap()))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {SSHD}: {e}"));
            let mut sshd = Sshd { child, port, dir, log };
            if sshd.wait_ready() {
                return sshd;
            }
            let text = sshd.log_text();
            if !text.contains("Address already in use") {
                panic!("sshd did not start:\n{text}");
            }
            // The port was taken between releasing and sshd binding: retry.
        }
        panic!("sshd could not bind a free port in 3 attempts");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sshd did not listen on port {} within 15 s:\n{}", self.port, self.log_text());
    }

    pub(crate) fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ssh-ed25519 AAAA…` without the comment.
    fn host_public_key(&self) -> String {
        let full = public_key(&self.dir.path().join("ssh_host_ed25519_key"));
        full.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
    }

    /// A known_hosts file written by `ssh-keyscan -H` (hashed host names, as
    /// OpenSSH writes them with HashKnownHosts).
    pub(crate) fn known_hosts(&self, dir: &Path) -> PathBuf {
        let mut cmd = Command::new("ssh-keyscan");
        cmd.args(["-H", "-t", "ed25519", "-p", &self.port.to_string(), "127.0.0.1"]);
        let out_file = dir.join("known_hosts");
        let (ok, out) = common::run_with_timeout(cmd, Duration::from_secs(30));
        let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("|1|")).collect();
        assert!(ok && !lines.is_empty(), "ssh-keyscan failed: {out}");
        write(&out_file, &(lines.join("\n") + "\n"), 0o644);
        out_file
    }

    fn fingerprint(&self) -> String {
        fingerprint_of(&self.dir.path().join("ssh_host_ed25519_key.pub"))
    }
}

/// `SHA256:…` of a public key file, as `ssh-keygen -lf` prints it.
fn fingerprint_of(pub_file: &Path) -> String {
    let mut cmd = Command::new("ssh-keygen");
    cmd.arg("-lf").arg(pub_file);
    let (ok, out) = common::run_with_timeout(cmd, Duration::from_secs(30));
    assert!(ok, "ssh-keygen -lf failed: {out}");
    out.split_whitespace().nth(1).unwrap().to_string()
}

async fn add(conn: &Connection, x: i64, y: i64) -> i64 {
    conn.root().await.unwrap().call_method("add", (x, y)).await.unwrap()
}

fn err_text<T>(r: rpyc::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            eprintln!("expected error: {e}");
            e.to_string()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_tunnels_to_python_and_rust_servers_on_one_session() {
    bounded(async {
        let t0 = Instant::now();
        let step = |what: &str| eprintln!("[{:>6.2?}] {what}", t0.elapsed());
        let keys = tempfile::tempdir().unwrap();
        let key = keygen(keys.path(), "id_ed25519", "");
        let sshd = Sshd::start(&[public_key(&key)]);
        step("sshd up");
        let known_hosts = sshd.known_hosts(keys.path());

        let (_python, py_port) = common::python_server(&common::python6(), &["--kind", "service"]);
        let (rust_addr, stop) = common::serve(rpyc::conformance::service(), ServerConfig::default()).await;

        step("servers up");
        let config = SshConfig::new("127.0.0.1", sshd.port, USER).with_key_file(&key).with_known_hosts(&known_hosts);
        let ssh = SshSession::connect(&config).await.unwrap_or_else(|e| panic!("{e}\nsshd log:\n{}", sshd.log_text()));
        step("ssh session");
        assert_eq!(ssh.host_key_fingerprint(), sshd.fingerprint());

        // Two RPyC connections, one SSH session.
        let py = ClientBuilder::new().start(ssh.open_stream("127.0.0.1", py_port).await.unwrap(), ssh.credentials());
        let rs = ClientBuilder::new()
            .start(ssh.open_stream("localhost", rust_addr.port()).await.unwrap(), ssh.credentials());
        step("streams open");
        assert_eq!(add(&py, 5, 10).await, 15);
        assert_eq!(add(&rs, 20, 22).await, 42);
        let name: String = rs.root().await.unwrap().call_method("get_service_name", ()).await.unwrap();
        assert_eq!(name, "CONFORMANCE");
        let creds = py.credentials();
        assert_eq!(creds.transport, rpyc::identity::TransportKind::Ssh);
        assert_eq!(creds.ssh_user.as_deref(), Some(USER));
        step("calls done");
        // Interleaved calls on both connections.
        let (a, b) = tokio::join!(add(&py, 1, 2), add(&rs, 3, 4));
        assert_eq!((a, b), (3, 7));

        step("interleaved done");
        // The Endpoint form: a session of its own that lives with the stream.
        let ep = Endpoint::Ssh { target: format!("127.0.0.1:{}", rust_addr.port()), config: Arc::new(config.clone()) };
        let (stream, creds) = connect_endpoint(&ep, &TcpOptions::default()).await.unwrap();
        assert_eq!(creds.ssh_user.as_deref(), Some(USER));
        let own = ClientBuilder::new().start(stream, creds);
        assert_eq!(add(&own, 2, 2).await, 4);

        step("endpoint done");
        py.close().await;
        step("py closed");
        rs.close().await;
        step("rs closed");
        own.close().await;
        step("own closed");
        ssh.close().await;
        step("ssh closed");
        stop.shutdown();
    })
    .await;
}

/// Logs in with an authorized key and makes one call: the server still serves.
async fn good_client(sshd: &Sshd, base: &SshConfig, key: &Path, known_hosts: &Path, rpyc_port: u16) -> SshSession {
    let ssh = SshSession::connect(&base.clone().with_key_file(key).with_known_hosts(known_hosts))
        .await
        .unwrap_or_else(|e| panic!("good client refused: {e}\nsshd log:\n{}", sshd.log_text()));
    let conn = ClientBuilder::new().start(ssh.open_stream("127.0.0.1", rpyc_port).await.unwrap(), ssh.credentials());
    assert_eq!(add(&conn, 1, 1).await, 2);
    conn.close().await;
    ssh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_refusals_are_clear_and_the_server_keeps_serving() {
    bounded(async {
        let keys = tempfile::tempdir().unwrap();
        let good = keygen(keys.path(), "good", "");
        let stranger = keygen(keys.path(), "stranger", "");
        let locked = keygen(keys.path(), "locked", "correct horse");
        let sshd = Sshd::start(&[public_key(&good), public_key(&locked)]);
        let known_hosts = sshd.known_hosts(keys.path());
        let (rust_addr, stop) = common::serve(rpyc::conformance::service(), ServerConfig::default()).await;
        let server = format!("127.0.0.1:{}", sshd.port);
        let base = SshConfig::new("127.0.0.1", sshd.port, USER);

        // Unknown host key, strict: names the host, the key and what to do.
        let empty = keys.path().join("empty_known_hosts");
        write(&empty, "", 0o644);
        let e = err_text(SshSession::connect(&base.clone().with_key_file(&good).with_known_hosts(&empty)).await);
        assert!(e.contains(&server) && e.contains(&sshd.fingerprint()) && e.contains("unknown"), "{e}");
        assert!(e.contains("ssh-keyscan") && e.contains("AcceptNew"), "{e}");
        good_client(&sshd, &base, &good, &known_hosts, rust_addr.port()).await;

        // A different key on record: a mismatch, refused even with trust on first use.
        let other = keygen(keys.path(), "other_host", "");
        let wrong = keys.path().join("wrong_known_hosts");
        write(&wrong, &format!("[127.0.0.1]:{} {}\n", sshd.port, public_key(&other)), 0o644);
        let e = err_text(
            SshSession::connect(&base.clone().with_key_file(&good).with_known_hosts(&wrong).trust_on_first_use()).await,
        );
        assert!(
            e.contains("HOST KEY MISMATCH") && e.contains(&sshd.fingerprint()) && e.contains("ssh-keygen -R"),
            "{e}"
        );

        // Trust on first use records the key; strict checking then passes.
        let tofu = keys.path().join("tofu/known_hosts");
        let ssh = SshSession::connect(&base.clone().with_key_file(&good).with_known_hosts(&tofu).trust_on_first_use())
            .await
            .unwrap();
        ssh.close().await;
        let recorded = fs::read_to_string(&tofu).unwrap();
        assert!(recorded.contains(&format!("[127.0.0.1]:{} {}", sshd.port, sshd.host_public_key())), "{recorded}");
        SshSession::connect(&base.clone().with_key_file(&good).with_known_hosts(&tofu)).await.unwrap().close().await;

        // A key the server does not know.
        let e =
            err_text(SshSession::connect(&base.clone().with_key_file(&stranger).with_known_hosts(&known_hosts)).await);
        assert!(
            e.contains(&format!("{server} refused key {}", stranger.display()))
                && e.contains(&format!("for user {USER}"))
                && e.contains("not in the server's authorized_keys"),
            "{e}"
        );
        good_client(&sshd, &base, &good, &known_hosts, rust_addr.port()).await;

        // Passwords are off on this sshd: the error says so (after the key was refused).
        let e = err_text(
            SshSession::connect(
                &base.clone().with_key_file(&stranger).with_password("secret").with_known_hosts(&known_hosts),
            )
            .await,
        );
        assert!(e.contains("refused every login") && e.contains("does not accept password logins"), "{e}");
        assert!(!e.contains("secret"), "{e}");

        // A channel to a port where nothing listens; the session survives it.
        let ssh = good_client(&sshd, &base, &good, &known_hosts, rust_addr.port()).await;
        let dead = closed_port();
        let e = err_text(ssh.open_stream("127.0.0.1", dead).await);
        assert!(e.contains(&format!("channel to 127.0.0.1:{dead} refused by the server: connection refused")), "{e}");
        let conn = ClientBuilder::new()
            .start(ssh.open_stream("127.0.0.1", rust_addr.port()).await.unwrap(), ssh.credentials());
        assert_eq!(add(&conn, 2, 3).await, 5);
        conn.close().await;

        // A passphrase-protected key: needs its passphrase, and the right one.
        let e =
            err_text(SshSession::connect(&base.clone().with_key_file(&locked).with_known_hosts(&known_hosts)).await);
        assert!(e.contains("passphrase-protected"), "{e}");
        let e = err_text(
            SshSession::connect(&base.clone().with_encrypted_key_file(&locked, "wrong").with_known_hosts(&known_hosts))
                .await,
        );
        assert!(e.contains("wrong passphrase"), "{e}");
        let ssh = SshSession::connect(
            &base.clone().with_encrypted_key_file(&locked, "correct horse").with_known_hosts(&known_hosts),
        )
        .await
        .unwrap();
        let conn = ClientBuilder::new()
            .start(ssh.open_stream("127.0.0.1", rust_addr.port()).await.unwrap(), ssh.credentials());
        assert_eq!(add(&conn, 4, 4).await, 8);
        conn.close().await;
        ssh.close().await;
        good_client(&sshd, &base, &good, &known_hosts, rust_addr.port()).await.close().await;
        stop.shutdown();
    })
    .await;
}

/// An authorized_keys line binding `key`'s public key to `identity`.
fn bound(identity: &str, key: &Path) -> String {
    format!("identity=\"{identity}\" {}", public_key(key))
}

/// The CONFORMANCE service behind an embedded SSH endpoint (and nothing else).
struct Embedded {
    dir: tempfile::TempDir,
    port: u16,
    known_hosts: PathBuf,
    fingerprint: String,
    public_key: String,
    stop: rpyc::server::ShutdownHandle,
}

impl Embedded {
    async fn start(authorized: &[String], tweak: impl FnOnce(&mut SshServerConfig)) -> Embedded {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("authorized_keys");
        write(&keys, &(authorized.join("\n") + "\n"), 0o644);
        let mut config = SshServerConfig::new(dir.path().join("host_key"), &keys);
        tweak(&mut config);
        let acceptor = SshAcceptor::bind("127.0.0.1:0", config).await.unwrap();
        let port = acceptor.addr().port();
        let known_hosts = dir.path().join("known_hosts");
        write(&known_hosts, &(acceptor.known_hosts_line("127.0.0.1") + "\n"), 0o644);
        let fingerprint = acceptor.host_key_fingerprint();
        let public_key = acceptor.host_public_key();
        assert_eq!(fingerprint, fingerprint_of(&dir.path().join("host_key.pub")));
        let stop =
            Server::new(rpyc::conformance::service(), ServerConfig::default()).listen(Listener::new(acceptor)).spawn();
        Embedded { dir, port, known_hosts, fingerprint, public_key, stop }
    }

    fn config(&self, user: &str, key: &Path) -> SshConfig {
        SshConfig::new("127.0.0.1", self.port, user).with_key_file(key).with_known_hosts(&self.known_hosts)
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.stop.shutdown();
    }
}

async fn whoami(conn: &Connection) -> Option<String> {
    conn.root().await.unwrap().call_method("whoami", ()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_endpoint_serves_rust_clients_as_the_ssh_user() {
    bounded(async {
        let keys = tempfile::tempdir().unwrap();
        let alice = keygen(keys.path(), "alice", "");
        let stranger = keygen(keys.path(), "stranger", "");
        let server = Embedded::start(&[bound("alice", &alice)], |c| c.max_channels_per_session = 2).await;
        let host_key_mode = fs::metadata(server.dir.path().join("host_key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(host_key_mode, 0o600);

        let ssh = SshSession::connect(&server.config("alice", &alice)).await.unwrap();
        assert_eq!(ssh.host_key_fingerprint(), server.fingerprint);
        let a = ClientBuilder::new().start(ssh.open_stream("localhost", 18861).await.unwrap(), ssh.credentials());
        // Whatever host:port the client names, the endpoint serves its own service.
        let b = ClientBuilder::new().start(ssh.open_stream("nowhere.invalid", 1).await.unwrap(), ssh.credentials());
        assert_eq!(whoami(&a).await.as_deref(), Some("alice"));
        assert_eq!(whoami(&b).await.as_deref(), Some("alice"));
        assert_eq!(add(&b, 40, 2).await, 42);

        // The per-session channel limit.
        let e = err_text(ssh.open_stream("localhost", 18861).await);
        assert!(e.contains("out of resources"), "{e}");
        b.close().await;
        // The slot comes back once the channel is gone.
        let mut reopened = None;
        for _ in 0..100 {
            if let Ok(s) = ssh.open_stream("localhost", 18861).await {
                reopened = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let c = ClientBuilder::new().start(reopened.expect("channel slot freed"), ssh.credentials());
        assert_eq!(add(&c, 1, 2).await, 3);

        // Unknown host key (strict).
        let empty = keys.path().join("empty");
        write(&empty, "", 0o644);
        let e = err_text(
            SshSession::connect(
                &SshConfig::new("127.0.0.1", server.port, "alice").with_key_file(&alice).with_known_hosts(&empty),
            )
            .await,
        );
        assert!(e.contains(&format!("127.0.0.1:{}", server.port)) && e.contains(&server.fingerprint), "{e}");

        // A key not in authorized_keys.
        let e = err_text(SshSession::connect(&server.config("alice", &stranger)).await);
        assert!(e.contains("refused key") && e.contains("for user alice") && e.contains("authorized_keys"), "{e}");

        // Alice's key claiming another user name: refused, the key is
        // bound to alice (the attack of issue #12: bob's rights by name).
        for user in ["bob", "root", "ALICE"] {
            let e = err_text(SshSession::connect(&server.config(user, &alice)).await);
            assert!(e.contains("refused key"), "{user}: {e}");
        }
        // ...and the first session is still serving.
        assert_eq!(add(&a, 2, 2).await, 4);

        // Closing the session ends its connections with the reason.
        ssh.close().await;
        let closed = tokio::time::timeout(Duration::from_secs(10), a.closed()).await;
        assert!(closed.is_ok(), "connection outlived its SSH session");
    })
    .await;
}

/// A shared authorized_keys file where each key is bound: every key logs
/// in as its own identity only; a file that lets a key claim any identity
/// is refused at start, with the fix in the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_endpoint_identity_comes_from_the_key() {
    bounded(async {
        let keys = tempfile::tempdir().unwrap();
        let alice = keygen(keys.path(), "alice", "");
        let bob = keygen(keys.path(), "bob", "");
        // The README's mistake: a bare key in a shared file.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("authorized_keys");
        write(&file, &format!("{}\n{}\n", bound("alice", &alice), public_key(&bob)), 0o644);
        let e = err_text(SshAcceptor::bind("127.0.0.1:0", SshServerConfig::new(dir.path().join("hk"), &file)).await);
        assert!(e.contains("line 2") && e.contains("no identity binding") && e.contains("identity=\"alice\""), "{e}");
        // One key bound to two identities.
        write(&file, &format!("{}\n{}\n", bound("alice", &alice), bound("admin", &alice)), 0o644);
        let e = err_text(SshAcceptor::bind("127.0.0.1:0", SshServerConfig::new(dir.path().join("hk"), &file)).await);
        assert!(e.contains("two identities"), "{e}");

        let server = Embedded::start(&[bound("alice", &alice), bound("bob", &bob)], |_| {}).await;
        for (user, key) in [("alice", &alice), ("bob", &bob)] {
            let ssh = SshSession::connect(&server.config(user, key)).await.unwrap();
            let conn = ClientBuilder::new().start(ssh.open_stream("localhost", 1).await.unwrap(), ssh.credentials());
            assert_eq!(whoami(&conn).await.as_deref(), Some(user));
            conn.close().await;
            ssh.close().await;
        }
        // Bob's key as alice, alice's as bob: refused.
        for (user, key) in [("alice", &bob), ("bob", &alice)] {
            let e = err_text(SshSession::connect(&server.config(user, key)).await);
            assert!(e.contains("refused key"), "{user}: {e}");
        }
        // A bare key added while running is ignored, not trusted for anyone.
        let carol = keygen(keys.path(), "carol", "");
        let file = server.dir.path().join("authorized_keys");
        let text = fs::read_to_string(&file).unwrap() + &public_key(&carol) + "\n";
        write(&file, &text, 0o644);
        let e = err_text(SshSession::connect(&server.config("carol", &carol)).await);
        assert!(e.contains("refused key"), "{e}");
        // Alice still logs in.
        let ssh = SshSession::connect(&server.config("alice", &alice)).await.unwrap();
        ssh.close().await;
    })
    .await;
}

/// Pre-authentication limits, as an attacker on one host tries them: idle
/// TCP sockets (no SSH banner) from 127.0.0.2 take only that source's share
/// of the pre-auth slots, so a login from 127.0.0.1 still works, and each
/// idle socket is closed after the login grace time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_endpoint_idle_sockets_do_not_lock_out_logins() {
    use tokio::io::AsyncReadExt;
    bounded(async {
        let keys = tempfile::tempdir().unwrap();
        let alice = keygen(keys.path(), "alice", "");
        let server = Embedded::start(&[bound("alice", &alice)], |c| {
            c.max_startups = 8;
            c.max_startups_per_source = 4;
            c.login_grace_time = Duration::from_secs(2);
        })
        .await;
        // The attacker: more idle sockets than all the pre-auth slots.
        let mut idle = Vec::new();
        for _ in 0..12 {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            idle.push(sock.connect(([127, 0, 0, 1], server.port).into()).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        // A legitimate login is served meanwhile.
        let ssh = SshSession::connect(&server.config("alice", &alice)).await.unwrap();
        let conn = ClientBuilder::new().start(ssh.open_stream("localhost", 1).await.unwrap(), ssh.credentials());
        assert_eq!(add(&conn, 20, 22).await, 42);
        // Every idle socket ends: the ones over the per-source limit at
        // once, the others at the login grace time (2 s), not the old 30 s.
        let mut closed_at = Vec::new();
        for mut s in idle {
            let mut sink = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
            assert!(r.is_ok(), "an idle pre-auth socket was kept open for 10 s");
            closed_at.push(started.elapsed());
        }
        assert!(closed_at.iter().all(|t| *t < Duration::from_secs(6)), "{closed_at:?}");
        // The session that logged in is not subject to the grace time.
        assert_eq!(add(&conn, 1, 1).await, 2);
        conn.close().await;
        ssh.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_endpoint_per_user_authorized_keys() {
    bounded(async {
        let keys = tempfile::tempdir().unwrap();
        let alice = keygen(keys.path(), "alice", "");
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("keys")).unwrap();
        write(&dir.path().join("keys/alice"), &(public_key(&alice) + "\n"), 0o644);
        let mut config = SshServerConfig::new(dir.path().join("host_key"), dir.path().join("keys/%u"));
        config.login_grace_time = Duration::from_secs(5);
        let acceptor = SshAcceptor::bind("127.0.0.1:0", config).await.unwrap();
        let known_hosts = dir.path().join("known_hosts");
        write(&known_hosts, &(acceptor.known_hosts_line("127.0.0.1") + "\n"), 0o644);
        let port = acceptor.addr().port();
        let stop =
            Server::new(rpyc::conformance::service(), ServerConfig::default()).listen(Listener::new(acceptor)).spawn();
        let cfg =
            |user: &str| SshConfig::new("127.0.0.1", port, user).with_key_file(&alice).with_known_hosts(&known_hosts);

        let ssh = SshSession::connect(&cfg("alice")).await.unwrap();
        let conn = ClientBuilder::new().start(ssh.open_stream("localhost", 1).await.unwrap(), ssh.credentials());
        assert_eq!(whoami(&conn).await.as_deref(), Some("alice"));
        // Alice's key does not make her bob, and names cannot escape the directory.
        for user in ["bob", "../keys/alice"] {
            let e = err_text(SshSession::connect(&cfg(user)).await);
            assert!(e.contains("refused key"), "{user}: {e}");
        }
        // A peer that never logs in is dropped after the login grace time.
        let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut sink = Vec::new();
        let ended =
            tokio::time::timeout(Duration::from_secs(15), tokio::io::AsyncReadExt::read_to_end(&mut idle, &mut sink))
                .await;
        assert!(ended.is_ok(), "an idle unauthenticated peer was not dropped");
        assert_eq!(add(&conn, 1, 1).await, 2);
        conn.close().await;
        ssh.close().await;
        stop.shutdown();
    })
    .await;
}

/// `ssh -N -L` from OpenSSH's client, killed on drop.
struct Forward {
    child: Child,
    local: u16,
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_openssh_client_and_python_rpyc_through_the_embedded_endpoint() {
    bounded(async {
        let keys = tempfile::tempdir().unwrap();
        let key = keygen(keys.path(), "id_ed25519", "");
        let server = Embedded::start(&[bound(USER, &key)], |_| {}).await;
        let log = keys.path().join("ssh.log");
        let fwd = tokio::task::spawn_blocking({
            let (key, log) = (key.clone(), log.clone());
            let server_port = server.port;
            let known_hosts = server.known_hosts.clone();
            move || {
                let view = EmbeddedView { port: server_port, known_hosts };
                view.forward(USER, &key, &log)
            }
        })
        .await
        .unwrap();

        let mut cmd = Command::new(common::python6());
        cmd.arg(common::script("conformance_client.py")).args([
            "--port",
            &fwd.local.to_string(),
            "--only",
            "seeds,callbacks",
        ]);
        let (ok, out) =
            tokio::task::spawn_blocking(move || common::run_with_timeout(cmd, Duration::from_secs(120))).await.unwrap();
        assert!(ok, "conformance client through ssh -L failed:\n{out}");

        let mut cmd = Command::new(common::python6());
        cmd.args([
            "-c",
            &format!("import rpyc; c = rpyc.connect('127.0.0.1', {}); print('WHO', c.root.whoami())", fwd.local),
        ]);
        let (ok, out) =
            tokio::task::spawn_blocking(move || common::run_with_timeout(cmd, Duration::from_secs(60))).await.unwrap();
        assert!(ok && out.contains(&format!("WHO {USER}")), "{out}");

        // A stock client that does not know the host key is refused by ssh itself.
        let mut cmd = Command::new("ssh");
        cmd.args(["-F", "/dev/null", "-N", "-p", &server.port.to_string(), "-i"])
            .arg(&key)
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .arg(format!("{USER}@127.0.0.1"));
        let (ok, out) =
            tokio::task::spawn_blocking(move || common::run_with_timeout(cmd, Duration::from_secs(30))).await.unwrap();
        assert!(!ok && out.contains("Host key verification failed"), "{out}");
        drop(fwd);
    })
    .await;
}

/// What `Forward::start` needs of an [`Embedded`] server, movable to a
/// blocking thread.
struct EmbeddedView {
    port: u16,
    known_hosts: PathBuf,
}

impl EmbeddedView {
    fn forward(&self, user: &str, key: &Path, log: &Path) -> Forward {
        let local = free_port();
        let child = Command::new("ssh")
            .args(["-F", "/dev/null", "-N", "-L", &format!("127.0.0.1:{local}:localhost:18861")])
            .args(["-p", &self.port.to_string(), "-i"])
            .arg(key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args(["-o", "ExitOnForwardFailure=yes", "-o", "ConnectTimeout=10"])
            .arg(format!("{user}@127.0.0.1"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(fs::File::create(log).unwrap()))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run ssh (apt-get install -y openssh-client): {e}"));
        let mut fwd = Forward { child, local };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = fwd.child.try_wait() {
                panic!("ssh -L exited ({status}):\n{}", fs::read_to_string(log).unwrap_or_default());
            }
            if std::net::TcpStream::connect(("127.0.0.1", local)).is_ok() {
                return fwd;
            }
            assert!(
                Instant::now() < deadline,
                "ssh -L did not listen within 20 s:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A TCP relay that can be frozen: it stops moving bytes but keeps both
/// sockets open, like a network that silently drops everything. Send on the
/// returned channel to freeze it; the reply says it is frozen.
async fn freezable_relay(to: u16) -> (u16, tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (freeze, mut frozen) = tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>(1);
    tokio::spawn(async move {
        let (mut a, _) = listener.accept().await.unwrap();
        let mut b = tokio::net::TcpStream::connect(("127.0.0.1", to)).await.unwrap();
        let ack = tokio::select! {
            biased;
            ack = frozen.recv() => ack,
            _ = tokio::io::copy_bidirectional(&mut a, &mut b) => None,
        };
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
        // Hold both sockets open, silent, until the test ends.
        tokio::time::sleep(DEADLINE).await;
        drop((a, b));
    });
    (port, freeze)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_session_is_detected_by_keepalives_and_reported() {
    bounded(async {
        let keys = tempfile::tempdir().unwrap();
        let key = keygen(keys.path(), "id_ed25519", "");
        let server = Embedded::start(&[bound(USER, &key)], |_| {}).await;
        let (relay, freeze) = freezable_relay(server.port).await;
        let known_hosts = keys.path().join("known_hosts");
        write(&known_hosts, &format!("[127.0.0.1]:{relay} {}\n", server.public_key), 0o644);
        let mut config = SshConfig::new("127.0.0.1", relay, USER).with_key_file(&key).with_known_hosts(&known_hosts);
        config.keepalive_interval = Some(Duration::from_millis(300));
        config.keepalive_max = 2;
        let ssh = SshSession::connect(&config).await.unwrap();
        let conn = ClientBuilder::new().start(ssh.open_stream("localhost", 1).await.unwrap(), ssh.credentials());
        assert_eq!(add(&conn, 1, 2).await, 3);

        let root = conn.root().await.unwrap();
        let (ack, frozen) = tokio::sync::oneshot::channel();
        freeze.send(ack).await.unwrap();
        frozen.await.unwrap();
        let started = Instant::now();
        let e = err_text(root.call_method::<i64>("add", (3, 4)).await);
        assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
        assert!(e.contains("keepalive"), "{e}");
        assert!(ssh.is_closed());
        let e = err_text(ssh.open_stream("localhost", 1).await);
        assert!(e.contains("is closed") && e.contains("keepalive"), "{e}");
    })
    .await;
}

/// An `ssh-agent` on its own socket, killed on drop.
struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn start(dir: &Path) -> Agent {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run ssh-agent (apt-get install -y openssh-client): {e}"));
        let agent = Agent { child, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        // The socket file appears before ssh-agent listens on it.
        while std::os::unix::net::UnixStream::connect(&agent.socket).is_err() {
            assert!(Instant::now() < deadline, "ssh-agent did not listen within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    fn add(&self, key: &Path) {
        let mut cmd = Command::new("ssh-add");
        cmd.env("SSH_AUTH_SOCK", &self.socket).arg(key);
        let (ok, out) = common::run_with_timeout(cmd, Duration::from_secs(30));
        assert!(ok, "ssh-add failed: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_agent_logins() {
    bounded(async {
        let keys = tempfile::tempdir().unwrap();
        let key = keygen(keys.path(), "id_ed25519", "");
        let other = keygen(keys.path(), "other", "");
        let server = Embedded::start(&[bound("carol", &key)], |_| {}).await;
        let agent = Agent::start(keys.path());
        let via_agent = |user: &str| {
            let mut config = SshConfig::new("127.0.0.1", server.port, user).with_known_hosts(&server.known_hosts);
            config.auth.push(SshAuth::AgentSocket(agent.socket.clone()));
            config
        };

        let e = err_text(SshSession::connect(&via_agent("carol")).await);
        assert!(e.contains("ssh-agent") && e.contains("holds no keys"), "{e}");

        agent.add(&other);
        let e = err_text(SshSession::connect(&via_agent("carol")).await);
        assert!(e.contains("ssh-agent's 1 key(s)") && e.contains("authorized_keys"), "{e}");

        agent.add(&key);
        let ssh = SshSession::connect(&via_agent("carol")).await.unwrap();
        let conn = ClientBuilder::new().start(ssh.open_stream("localhost", 1).await.unwrap(), ssh.credentials());
        assert_eq!(whoami(&conn).await.as_deref(), Some("carol"));
        conn.close().await;
        ssh.close().await;
    })
    .await;
}
