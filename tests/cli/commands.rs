//! The `rpyc` binary, run as a process: each subcommand's happy path and
//! its errors (exit status 1 when the command failed, 2 for usage errors).

use crate::common::{python5, python6, spawn, ChildGuard};
use crate::{bounded, free_port, python, python_registered_server, python_registry, Proto};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_rpyc");

/// One bounded `rpyc …` run.
pub(crate) fn rpyc() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(BIN);
    cmd.env_remove("RUST_LOG").timeout(Duration::from_secs(60));
    cmd
}

/// Output of a finished run.
pub(crate) struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub(crate) fn run(args: &[&str]) -> Run {
    let out = rpyc().args(args).output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub(crate) fn ok(args: &[&str]) -> String {
    let r = run(args);
    assert_eq!(r.code, Some(0), "rpyc {args:?} failed:\n{}\n{}", r.stdout, r.stderr);
    r.stdout
}

pub(crate) fn fails(args: &[&str], code: i32, stderr_has: &str) -> Run {
    let r = run(args);
    assert_eq!(r.code, Some(code), "rpyc {args:?}: expected exit {code}:\nstdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert!(r.stderr.contains(stderr_has), "rpyc {args:?}: stderr lacks {stderr_has:?}:\n{}", r.stderr);
    r
}

/// A long-running `rpyc …` (registry, serve) and the address it printed.
fn start(args: &[&str]) -> (ChildGuard, String) {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("RUST_LOG").args(args);
    let child = spawn(cmd);
    let listening = child.wait_line("listening on ", Duration::from_secs(30));
    (child, listening)
}

fn port_of(listening: &str) -> u16 {
    listening.rsplit(':').next().unwrap().parse().unwrap()
}

/// Polls `rpyc discover` until it succeeds (registration is asynchronous).
fn discover_until_found(args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = run(args);
        if r.code == Some(0) {
            return r.stdout;
        }
        assert!(Instant::now() < deadline, "rpyc {args:?} never succeeded: {}", r.stderr);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn interrupt(child: &mut ChildGuard) {
    let status = Command::new("kill").args(["-INT", &child.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.child.try_wait().unwrap() {
            assert!(st.success(), "exit status after SIGINT: {st}");
            return;
        }
        assert!(Instant::now() < deadline, "did not stop after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_subcommand_explains_itself() {
    let top = ok(&["--help"]);
    for sub in ["certs", "registry", "discover", "list", "ping", "call", "serve", "deploy"] {
        assert!(top.contains(sub), "{sub} missing from --help:\n{top}");
        let help = ok(&[sub, "--help"]);
        assert!(help.contains(&format!("Usage: rpyc {sub}")), "{help}");
    }
    let call = ok(&["call", "--help"]);
    for word in ["Python literals", "--ca", "--identity", "--known-hosts", "--json", "unix:///path"] {
        assert!(call.contains(word), "call --help lacks {word}:\n{call}");
    }
    let registry = ok(&["registry", "--help"]);
    for word in ["--udp", "--tcp", "--allow-listing", "--pruning-timeout", "--port", "--host"] {
        assert!(registry.contains(word), "registry --help lacks {word}");
    }
    // Missing arguments print the help and exit 2.
    for sub in ["discover", "ping", "call"] {
        let r = run(&[sub]);
        assert_eq!(r.code, Some(2), "{sub}: {}", r.stderr);
        assert!(r.stderr.contains("Usage:"), "{}", r.stderr);
    }
    assert_eq!(run(&["frobnicate"]).code, Some(2));
    let deploy = ok(&["deploy", "--help"]);
    for word in ["--upload-from", "--python", "--eval", "--execute", "--known-hosts", "--accept-new", "--json"] {
        assert!(deploy.contains(word), "deploy --help lacks {word}:\n{deploy}");
    }
    fails(&["deploy", "tcp://127.0.0.1:1"], 2, "bad SSH address");
    fails(&["deploy", "ssh://bob@127.0.0.1/localhost:18861"], 2, "deploy needs only the host");
    fails(&["deploy", "ssh://bob@127.0.0.1", "--eval", "1", "--execute", "x=1"], 2, "cannot be used with");
}

#[test]
fn registry_serve_discover_list_ping_and_call_over_udp() {
    let (_registry, reg_addr) =
        start(&["registry", "--host", "127.0.0.1", "--port", "0", "--allow-listing", "--pruning-timeout", "30"]);
    assert!(reg_addr.starts_with("udp://127.0.0.1:"), "{reg_addr}");
    let registry = format!("127.0.0.1:{}", port_of(&reg_addr));
    let (mut server, srv_addr) = start(&["serve", "--port", "0", "--registry", &registry, "--register-interval", "1"]);
    assert!(srv_addr.starts_with("tcp://127.0.0.1:"), "{srv_addr}");
    let port = port_of(&srv_addr);
    let addr = format!("127.0.0.1:{port}");

    // discover: one host:port per line; JSON for scripts.
    let found = discover_until_found(&["discover", "conformance", "--registry", &registry]);
    assert_eq!(found, format!("{addr}\n"));
    let json = ok(&["discover", "CONFORMANCE", "--registry", &registry, "--json"]);
    assert_eq!(json.trim(), format!("[{{\"host\": \"127.0.0.1\", \"port\": {port}}}]"));

    // list
    assert_eq!(ok(&["list", "--registry", &registry]), "CONFORMANCE\n");
    assert_eq!(ok(&["list", "--registry", &registry, "--json"]).trim(), "[\"CONFORMANCE\"]");
    let r = run(&["list", "--registry", &registry, "--filter-host", "10.9.9.9"]);
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), ""));
    assert!(r.stderr.contains("knows no services"), "{}", r.stderr);

    // ping over tcp:// and a bare host:port
    let pings = ok(&["ping", &format!("tcp://{addr}"), "--count", "2"]);
    assert_eq!(
        pings.lines().filter(|l| l.starts_with(&format!("pong from tcp://{addr}: time="))).count(),
        2,
        "{pings}"
    );
    let json = ok(&["ping", &addr, "--json"]);
    assert!(
        json.starts_with(&format!("{{\"addr\": \"{addr}\", \"connect_ms\": ")) && json.contains("\"rtt_ms\": ["),
        "{json}"
    );

    // call: arguments are Python literals; results are printed as repr().
    assert_eq!(ok(&["call", &addr, "add", "1", "2"]), "3\n");
    assert_eq!(ok(&["call", &addr, "add", "'a'", "\"b\""]), "'ab'\n");
    assert_eq!(ok(&["call", &addr, "add", "123456789012345678901234567890", "1"]), "123456789012345678901234567891\n");
    assert_eq!(ok(&["call", &addr, "add", "x=-1.5", "y=2"]), "0.5\n");
    assert_eq!(ok(&["call", &addr, "echo", "-7"]), "-7\n");
    assert_eq!(ok(&["call", &addr, "echo", "--", "-inf"]), "-inf\n");
    let tuple = "(1, -2.5, b'\\x00\\xff', None, True, 'é', (), (1,), frozenset({2}), 1+2j)";
    assert_eq!(
        ok(&["call", &addr, "echo", tuple]),
        "(1, -2.5, b'\\x00\\xff', None, True, 'é', (), (1,), frozenset({2}), (1+2j))\n"
    );
    assert_eq!(ok(&["call", &addr, "numbers", "3"]), "[0, 1, 2]\n", "a remote list is shown by its repr");
    assert_eq!(ok(&["call", &addr, "get_answer"]), "42\n");
    let json = ok(&["call", "--json", &addr, "echo", "(1, 'x', b'y')"]);
    assert_eq!(json.trim(), r#"{"ok": true, "type": "tuple", "repr": "(1, 'x', b'y')", "value": [1, "x", "b'y'"]}"#);

    // A remote exception: message and traceback on stderr, exit 1.
    let r = fails(&["call", &addr, "fail", "'ValueError'", "'boom'"], 1, "ValueError: boom");
    assert!(r.stderr.contains("Remote Traceback"), "{}", r.stderr);
    assert!(r.stdout.is_empty());
    let r = fails(&["call", &addr, "fail", "'KeyError'", "'k'", "--json"], 1, "KeyError");
    assert!(
        r.stdout.starts_with(r#"{"ok": false, "error": {"type": "KeyError", "message": "'k'", "traceback": "#),
        "{}",
        r.stdout
    );
    fails(&["call", &addr, "no_such_method"], 1, "AttributeError");
    fails(&["call", &addr, "add", "1"], 1, "TypeError");

    // Bad literals are usage errors, with the column shown.
    let r = fails(&["call", &addr, "add", "(1,", "2"], 2, "argument 1 is not a Python literal");
    assert!(r.stderr.contains("    (1,\n       ^"), "{}", r.stderr);
    fails(&["call", &addr, "echo", "hello"], 2, "quote it: 'hello'");
    fails(&["call", &addr, "echo", "[1, 2]"], 2, "lists are not supported");
    fails(&["call", &addr, "echo", "x=1", "2"], 2, "follows a keyword argument");

    // Unknown service, and a registry that refuses listing.
    fails(&["discover", "nope", "--registry", &registry], 1, "no servers exposing 'nope' were found");
    let r = run(&["discover", "nope", "--registry", &registry, "--json"]);
    assert_eq!((r.code, r.stdout.trim()), (Some(1), "[]"));
    let (_quiet, quiet_addr) = start(&["registry", "--host", "127.0.0.1", "--port", "0"]);
    fails(&["list", "--registry", &format!("127.0.0.1:{}", port_of(&quiet_addr))], 1, "does not allow listing");

    // Ctrl-C: the server unregisters before it exits.
    interrupt(&mut server);
    fails(&["discover", "conformance", "--registry", &registry], 1, "no servers exposing");
    fails(&["ping", &addr], 1, "Connection refused");
}

#[test]
fn tcp_registry_round_trip() {
    let (_registry, reg_addr) = start(&["registry", "--tcp", "--host", "127.0.0.1", "--port", "0", "--allow-listing"]);
    assert!(reg_addr.starts_with("tcp://127.0.0.1:"), "{reg_addr}");
    let registry = format!("127.0.0.1:{}", port_of(&reg_addr));
    let (_server, srv_addr) = start(&["serve", "--port", "0", "--registry", &registry, "--registry-tcp"]);
    let port = port_of(&srv_addr);
    let found = discover_until_found(&["discover", "conformance", "--registry", &registry, "--registry-tcp"]);
    assert_eq!(found, format!("127.0.0.1:{port}\n"));
    assert_eq!(ok(&["list", "--registry", &registry, "--registry-tcp"]), "CONFORMANCE\n");
    // UDP to a TCP registry: nobody answers.
    fails(
        &["discover", "conformance", "--registry", &registry, "--registry-timeout", "0.5"],
        1,
        "no registry answered",
    );
}

#[test]
fn json_listening_lines() {
    let mut cmd = Command::new(BIN);
    cmd.args(["registry", "--host", "127.0.0.1", "--port", "0", "--json"]);
    let child = spawn(cmd);
    let line = child.wait_line("{\"listening\": ", Duration::from_secs(30));
    assert!(line.starts_with("\"udp://127.0.0.1:") && line.contains("\"port\": "), "{line}");
}

#[test]
fn usage_and_connection_errors() {
    let closed = free_port(Proto::Tcp).to_string();
    let refused = format!("127.0.0.1:{closed}");
    fails(&["ping", &refused], 1, "Connection refused");
    fails(&["call", &format!("tcp://{refused}"), "get_answer"], 1, "Connection refused");
    fails(&["discover", "x", "--registry", &format!("127.0.0.1:{}", free_port(Proto::Udp))], 1, "no registry answered");
    fails(&["discover", "x", "--registry", &refused, "--registry-tcp"], 1, "cannot reach the registry");
    fails(&["ping", "http://127.0.0.1:1"], 2, "unsupported address scheme http://");
    fails(&["ping", "nohost"], 2, "has no port");
    fails(&["ping", "127.0.0.1:abc"], 2, "invalid port \"abc\"");
    fails(&["call", "127.0.0.1:99999", "get_answer"], 2, "invalid port \"99999\"");
    let r = fails(&["ping", &refused], 1, "Connection refused");
    assert_eq!(r.stderr.matches("cannot connect to").count(), 1, "said once: {}", r.stderr);
    fails(&["ping", "tls://127.0.0.1:1"], 2, "needs --ca FILE");
    fails(&["ping", &refused, "--ca", "ca.pem"], 2, "apply to tls:// addresses");
    fails(&["ping", &refused, "--identity", "id"], 2, "apply to ssh:// addresses");
    fails(&["ping", "ssh://127.0.0.1:22"], 2, "bad ssh address");
    fails(&["ping", &refused, "--count", "0"], 2, "--count");
    fails(&["ping", &refused, "--timeout", "0"], 2, "positive number of seconds");
    fails(&["discover", "x", "--registry-tcp"], 2, "--registry");
    fails(&["discover", "x", "--registry", "127.0.0.1:99999"], 2, "bad registry address");
    fails(&["call", &refused, "a..b"], 2, "is not a method name");
    fails(&["serve", "--unix", "/tmp/x.sock", "--register"], 2, "cannot be used with");
}

#[test]
fn unix_socket_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rpyc.sock");
    let (_server, listening) = start(&["serve", "--unix", path.to_str().unwrap()]);
    let addr = format!("unix://{}", path.display());
    assert_eq!(listening, addr);
    assert!(ok(&["ping", &addr]).starts_with(&format!("pong from {addr}: time=")));
    assert_eq!(ok(&["call", &addr, "get_answer"]), "42\n");
}

#[test]
fn tls_server_and_clients() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let d = certs.to_str().unwrap();
    ok(&["certs", "init", "--dir", d]);
    let (_server, listening) = start(&["serve", "--port", "0", "--tls", d]);
    assert!(listening.starts_with("tls://127.0.0.1:"), "{listening}");
    let addr = format!("tls://localhost:{}", port_of(&listening));
    let file = |n: &str| certs.join(n).to_str().unwrap().to_string();
    let (ca, cert, key) = (file("ca.pem"), file("client.pem"), file("client.key"));
    let with_cert = |extra: &[&str]| {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend(["--ca".into(), ca.clone(), "--cert".into(), cert.clone(), "--key".into(), key.clone()]);
        v
    };
    let args = with_cert(&["ping", &addr]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(ok(&args).starts_with(&format!("pong from {addr}")));
    let args = with_cert(&["call", &addr, "whoami"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(ok(&args), "'client'\n", "the client certificate's name is the identity");
    // No client certificate: the server refuses (the error shows up by the first call).
    let r = run(&["call", &addr, "whoami", "--ca", &ca]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    // An unrelated CA: the server certificate is not trusted.
    let other = dir.path().join("other");
    ok(&["certs", "init", "--dir", other.to_str().unwrap()]);
    let other_ca = other.join("ca.pem");
    fails(&["ping", &addr, "--ca", other_ca.to_str().unwrap()], 1, "cannot connect");
    // A plain client on the TLS port is told the server speaks TLS, not
    // "frame of 352518912 bytes exceeds the limit".
    let plain = format!("tcp://127.0.0.1:{}", port_of(&listening));
    let r = fails(&["call", &plain, "get_answer"], 1, "speaks TLS, so use TLS on both ends");
    assert!(!r.stderr.contains("max_frame"), "{}", r.stderr);
}

/// Shell completions for bash, zsh and fish name every subcommand; the
/// bash script is valid bash.
#[test]
fn shell_completions() {
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(&["completions", shell]);
        for sub in ["gateway", "deploy", "certs", "call", "serve"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rpyc.bash");
    std::fs::write(&file, ok(&["completions", "bash"])).unwrap();
    let status = std::process::Command::new("bash").arg("-n").arg(&file).status().unwrap();
    assert!(status.success(), "bash -n rejects the completion script");
    fails(&["completions", "powershell-7"], 2, "invalid value");
}

/// `-q` silences banners and logs, not results or errors.
#[test]
fn quiet_silences_banners() {
    let loud = run(&["serve", "--stdio"]);
    assert!(loud.stderr.contains("rpyc serve: CONFORMANCE on stdin/stdout"), "{}", loud.stderr);
    let quiet = run(&["-q", "serve", "--stdio"]);
    assert_eq!(quiet.code, Some(0), "{}", quiet.stderr);
    assert_eq!(quiet.stderr, "", "-q printed on stderr");
    fails(&["-q", "ping", "127.0.0.1:abc"], 2, "invalid port");
}

/// `rpyc certs server --san` reissues only the server certificate: the CA
/// and the client certificates it signed keep working.
#[test]
fn certs_server_reissues_the_server_certificate_only() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let d = certs.to_str().unwrap();
    ok(&["certs", "init", "--dir", d]);
    let ca_before = std::fs::read(certs.join("ca.pem")).unwrap();
    let file = |n: &str| certs.join(n).to_str().unwrap().to_string();
    let ping = |port: u16| {
        run(&[
            "ping",
            &format!("tls://127.0.0.1:{port}"),
            "--server-name",
            "rpyc.example.test",
            "--ca",
            &file("ca.pem"),
            "--cert",
            &file("client.pem"),
            "--key",
            &file("client.key"),
        ])
    };
    {
        let (_server, listening) = start(&["serve", "--port", "0", "--tls", d]);
        let r = ping(port_of(&listening));
        assert_eq!(r.code, Some(1), "the name is not in the certificate yet: {}", r.stderr);
    }
    let out = ok(&["certs", "server", "--dir", d, "--san", "rpyc.example.test"]);
    assert!(out.contains("rpyc.example.test") && out.contains("CA unchanged"), "{out}");
    assert_eq!(std::fs::read(certs.join("ca.pem")).unwrap(), ca_before, "the CA must not change");
    let (_server, listening) = start(&["serve", "--port", "0", "--tls", d]);
    let r = ping(port_of(&listening));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    fails(&["certs", "server", "--dir", dir.path().join("nothing").to_str().unwrap()], 1, "no development CA");
}

/// `rpyc certs init` under `umask 000`: the modes are explicit, not the
/// umask's (a world-writable directory would let anyone swap `ca.pem`).
#[cfg(unix)]
#[test]
fn certs_init_modes_do_not_depend_on_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("umask 000; exec '{BIN}' certs init --dir '{}'", certs.display()));
    let (done, out) = crate::common::run_with_timeout(cmd, Duration::from_secs(60));
    assert!(done, "rpyc certs init failed: {out}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&certs), 0o700, "the certificate directory");
    for f in rpyc::certs::INIT_FILES {
        let want = if f.ends_with(".key") { 0o600 } else { 0o644 };
        assert_eq!(mode(&certs.join(f)), want, "{f}");
    }
    // A client certificate added later follows the same rules.
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("umask 000; exec '{BIN}' certs client bob --dir '{}'", certs.display()));
    let (done, out) = crate::common::run_with_timeout(cmd, Duration::from_secs(60));
    assert!(done, "rpyc certs client failed: {out}");
    assert_eq!(mode(&certs.join("bob.pem")), 0o644);
    assert_eq!(mode(&certs.join("bob.key")), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_addresses_through_the_embedded_endpoint() {
    use rpyc::transport::ssh::{SshAcceptor, SshServerConfig};
    use rpyc::transport::Listener;
    use rpyc::{Server, ServerConfig};
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("alice");
        let (done, out) = tokio::task::spawn_blocking({
            let key = key.clone();
            move || {
                let mut cmd = Command::new("ssh-keygen");
                cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", "alice", "-f"]).arg(&key);
                crate::common::run_with_timeout(cmd, Duration::from_secs(30))
            }
        })
        .await
        .unwrap();
        assert!(done, "ssh-keygen failed (is openssh-client installed?): {out}");
        let authorized = dir.path().join("authorized_keys");
        let public = std::fs::read_to_string(format!("{}.pub", key.display())).unwrap();
        std::fs::write(&authorized, format!("identity=\"alice\" {public}")).unwrap();
        let config = SshServerConfig::new(dir.path().join("host_key"), &authorized);
        let acceptor = SshAcceptor::bind("127.0.0.1:0", config).await.unwrap();
        let ssh_port = acceptor.addr().port();
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(&known_hosts, acceptor.known_hosts_line("127.0.0.1") + "\n").unwrap();
        let empty_known_hosts = dir.path().join("empty_known_hosts");
        std::fs::write(&empty_known_hosts, "").unwrap();
        let stop =
            Server::new(rpyc::conformance::service(), ServerConfig::default()).listen(Listener::new(acceptor)).spawn();

        let addr = format!("ssh://alice@127.0.0.1:{ssh_port}/localhost:18861");
        let run_args = |args: Vec<String>| {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run(&args)
            })
        };
        let creds = |known: &Path| {
            vec![
                "--identity".to_string(),
                key.display().to_string(),
                "--known-hosts".into(),
                known.display().to_string(),
            ]
        };
        let mut args = vec!["call".to_string(), addr.clone(), "whoami".into()];
        args.extend(creds(&known_hosts));
        let r = run_args(args).await.unwrap();
        assert_eq!((r.code, r.stdout.as_str()), (Some(0), "'alice'\n"), "{}", r.stderr);
        let mut args = vec!["ping".to_string(), addr.clone()];
        args.extend(creds(&known_hosts));
        let r = run_args(args).await.unwrap();
        assert!(r.code == Some(0) && r.stdout.starts_with("pong from ssh://"), "{}", r.stderr);
        // An SSH server key nobody vouched for is refused.
        let mut args = vec!["ping".to_string(), addr.clone()];
        args.extend(creds(&empty_known_hosts));
        let r = run_args(args).await.unwrap();
        assert_eq!(r.code, Some(1));
        assert!(r.stderr.contains("host key") && r.stderr.contains("unknown"), "{}", r.stderr);
        // The advice names the flag, not the library's type.
        assert!(r.stderr.contains("--accept-new-host-key"), "{}", r.stderr);
        assert_no_library_names(&r.stderr);
        // A passphrase-protected key: the CLI way out is ssh-agent.
        let locked = dir.path().join("locked");
        let (done, out) = tokio::task::spawn_blocking({
            let locked = locked.clone();
            move || {
                let mut cmd = Command::new("ssh-keygen");
                cmd.args(["-q", "-t", "ed25519", "-N", "secret words", "-f"]).arg(&locked);
                crate::common::run_with_timeout(cmd, Duration::from_secs(30))
            }
        })
        .await
        .unwrap();
        assert!(done, "{out}");
        let args = vec![
            "ping".to_string(),
            addr.clone(),
            "--identity".into(),
            locked.display().to_string(),
            "--known-hosts".into(),
            known_hosts.display().to_string(),
        ];
        let r = run_args(args).await.unwrap();
        assert_eq!(r.code, Some(1), "{}", r.stderr);
        assert!(r.stderr.contains("passphrase") && r.stderr.contains("ssh-add"), "{}", r.stderr);
        assert_no_library_names(&r.stderr);
        stop.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_python_share_registries() {
    bounded(async {
        // Python's rpyc_registry; `rpyc serve` registers, Python discovers it.
        let (_py_registry, reg_port) = python_registry(Proto::Udp, true, 240).await;
        let registry = format!("127.0.0.1:{reg_port}");
        let reg = registry.clone();
        let (server, srv_addr) =
            tokio::task::spawn_blocking(move || start(&["serve", "--port", "0", "--registry", &reg])).await.unwrap();
        let port = port_of(&srv_addr);
        let code = format!(
            "import rpyc, time\nfrom rpyc.utils.registry import UDPRegistryClient\n\
             reg = UDPRegistryClient(ip='127.0.0.1', port={reg_port})\n\
             for _ in range(100):\n    found = reg.discover('CONFORMANCE')\n    if found: break\n    time.sleep(0.1)\n\
             print('FOUND', found)\n\
             print('ANSWER', rpyc.connect_by_service('conformance', registrar=reg).root.get_answer())\n"
        );
        let (ok_, out) = python(&code, &[]).await;
        assert!(ok_ && out.contains(&format!("FOUND (('127.0.0.1', {port}),)")) && out.contains("ANSWER 42"), "{out}");

        // A Python server registers; `rpyc discover` and `rpyc call` reach it.
        let (_py_server, py_port) = python_registered_server(python6(), Proto::Udp, reg_port);
        let reg = registry.clone();
        let (found, listed, answer) = tokio::task::spawn_blocking(move || {
            let found = discover_until_found(&["discover", "pyecho", "--registry", &reg]);
            let listed = ok(&["list", "--registry", &reg]);
            let answer = ok(&["call", &format!("127.0.0.1:{py_port}"), "get_answer"]);
            (found, listed, answer)
        })
        .await
        .unwrap();
        assert!(found.contains(&format!("127.0.0.1:{py_port}")), "{found}");
        assert!(listed.contains("PYECHO") && listed.contains("CONFORMANCE"), "{listed}");
        assert_eq!(answer, "42\n");
        drop(server);

        // `rpyc registry` takes registrations from Python servers too.
        let (_rust_registry, reg_addr) = tokio::task::spawn_blocking(|| {
            start(&["registry", "--host", "127.0.0.1", "--port", "0", "--allow-listing"])
        })
        .await
        .unwrap();
        let rust_port = port_of(&reg_addr);
        let (_py_server2, py_port2) = python_registered_server(python6(), Proto::Udp, rust_port);
        let found = tokio::task::spawn_blocking(move || {
            discover_until_found(&["discover", "PYECHO", "--registry", &format!("127.0.0.1:{rust_port}")])
        })
        .await
        .unwrap();
        assert_eq!(found, format!("127.0.0.1:{py_port2}\n"));
    })
    .await;
}

/// `srv://` addresses: the DNS server is in-process (common::DnsServer, its
/// own thread), the RPyC servers are Python rpyc 6.0.2.
#[test]
fn call_and_ping_through_dns_srv() {
    let dns = crate::common::DnsServer::start_blocking();
    let dns_addr = dns.addr().to_string();
    let (_py, port) = crate::common::python_server(&python6(), &["--kind", "service"]);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let local = std::net::IpAddr::from([127, 0, 0, 1]);
    dns.set_a("py", local, 60);
    dns.set_a("gone", local, 60);
    // The priority-0 target is dead: the CLI goes on to the next one.
    dns.set_srv("_rpyc._tcp.py", 60, &[(0, 1, dead, "gone"), (5, 1, port, "py")]);
    let addr = "srv://_rpyc._tcp.py.rpyc.test";

    assert_eq!(ok(&["call", addr, "add", "2", "40", "--dns", &dns_addr]), "42\n");
    let json = ok(&["call", addr, "echo", "'srv'", "--dns", &dns_addr, "--json"]);
    assert!(json.contains("\"value\": \"srv\""), "{json}");
    let pong = ok(&["ping", addr, "--dns", &dns_addr, "-c", "2"]);
    assert_eq!(pong.matches("pong from srv://_rpyc._tcp.py.rpyc.test").count(), 2, "{pong}");
    // A second --dns that is dead first: the resolver falls back to the next.
    let gone_dns = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    assert_eq!(ok(&["call", addr, "get_answer", "--dns", &gone_dns, "--dns", &dns_addr]), "42\n");

    // An unknown name: exit 1, and the message says what to check.
    let r = fails(&["call", "srv://_rpyc._tcp.nope.rpyc.test", "get_answer", "--dns", &dns_addr], 1, "no SRV records");
    assert!(r.stderr.contains("_rpyc._tcp.nope.rpyc.test") && r.stderr.contains("check the name"), "{}", r.stderr);
    // Every target dead: each named with its error.
    dns.set_srv("_rpyc._tcp.dead", 60, &[(0, 1, dead, "gone")]);
    let r = fails(&["ping", "srv://_rpyc._tcp.dead.rpyc.test", "--dns", &dns_addr], 1, "accepted a connection");
    assert!(r.stderr.contains(&format!("gone.rpyc.test:{dead}")), "{}", r.stderr);
    // A DNS server that does not answer.
    let r = fails(&["ping", addr, "--dns", &gone_dns], 1, "did not answer");
    assert!(r.stderr.contains(&format!("DNS server {gone_dns}")), "{}", r.stderr);

    // Usage errors (exit 2).
    fails(&["call", addr, "x", "--dns", "nonsense"], 2, "invalid --dns");
    fails(&["call", addr, "x", "--dns", "127.0.0.1:http"], 2, "expected HOST:PORT");
    fails(&["ping", "127.0.0.1:1", "--dns", &dns_addr], 2, "--dns applies to srv://");
    fails(&["ping", "srv://", "--dns", &dns_addr], 2, "names no service");
    let help = ok(&["call", "--help"]);
    assert!(help.contains("--dns") && help.contains("srv://"), "{help}");
}

/// CLI errors name flags, never the library's types (`HostKeyPolicy::AcceptNew`,
/// `SshConfig::auth`): no `Type::member` path in what the user reads.
fn assert_no_library_names(stderr: &str) {
    let words: Vec<&str> = stderr.split(|c: char| c.is_whitespace() || "()[],;'\"".contains(c)).collect();
    for w in words {
        let mut parts = w.split("::");
        if let (Some(head), Some(_)) = (parts.next(), parts.next()) {
            assert!(
                !head.starts_with(|c: char| c.is_ascii_uppercase()),
                "a library type in a CLI error: {w:?} in:\n{stderr}"
            );
        }
    }
}

/// A client speaking the other rpyc version's framing is dropped by a Python
/// server without a word; the CLI says which flag fixes it instead of
/// "peer closed the connection".
#[test]
fn the_wrong_rpyc_version_is_named() {
    let (_py6, port6) = crate::common::python_server(&python6(), &["--kind", "service"]);
    let r = fails(&["call", &format!("127.0.0.1:{port6}"), "get_answer", "--rpyc5"], 1, "without --rpyc5");
    assert!(r.stderr.contains("rpyc 6"), "{}", r.stderr);
    assert_no_library_names(&r.stderr);
    let (_py5, port5) = crate::common::python_server(&python5(), &["--kind", "service"]);
    let r = fails(&["ping", &format!("127.0.0.1:{port5}")], 1, "with --rpyc5");
    assert!(r.stderr.contains("rpyc 5"), "{}", r.stderr);
    assert_no_library_names(&r.stderr);
    // And with the right flags both answer.
    assert_eq!(ok(&["call", &format!("127.0.0.1:{port5}"), "get_answer", "--rpyc5"]), "42\n");
    assert_eq!(ok(&["call", &format!("127.0.0.1:{port6}"), "get_answer"]), "42\n");
}
