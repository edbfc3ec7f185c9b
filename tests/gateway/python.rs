//! Python rpyc 6.0.2 clients (`rpyc.ssl_connect`, `rpyc.classic.ssl_connect`)
//! through the gateway to unmodified Python servers.

use crate::*;

/// One Python client; argv: scenario, port, cert, key, ca. Prints one line
/// per observation.
const CLIENT: &str = r#"
import pickle, sys, time
import rpyc
scenario, port, cert, key, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
cfg = {"sync_request_timeout": 20}

def connect(**kw):
    return rpyc.ssl_connect("127.0.0.1", port, keyfile=key, certfile=cert, ca_certs=ca, config=cfg, **kw)

def expect(cls, f, label):
    try:
        r = f()
    except cls as e:
        print(f"DENIED {label} {type(e).__name__}: {str(e).splitlines()[0]}", flush=True)
    except Exception as e:
        print(f"WRONG {label} {type(e).__name__}: {e}", flush=True)
    else:
        print(f"ALLOWED {label} {r!r}", flush=True)

if scenario == "noclassic":
    c = connect()
    for name in ["eval", "execute", "getmodule", "namespace", "getconn"]:
        expect(AttributeError, lambda: getattr(c.root, name), name)
    expect(AttributeError, lambda: c.root._conn, "_conn")
    expect(AttributeError, lambda: c.root.__globals__, "__globals__")
    print("HEALTHY", c.root.get_service_name(), flush=True)
    expect(AttributeError, lambda: rpyc.classic.ssl_connect("127.0.0.1", port, keyfile=key, certfile=cert, ca_certs=ca), "classic.ssl_connect")
elif scenario == "classic":
    c = rpyc.classic.ssl_connect("127.0.0.1", port, keyfile=key, certfile=cert, ca_certs=ca)
    print("EVAL", c.eval("6*7"), flush=True)
    c.execute("x = 5")
    print("NAMESPACE", c.namespace["x"], flush=True)
    print("GETPID", c.modules.os.getpid() > 0, flush=True)
    print("CLASS", c.eval("(1).__class__.__name__"), flush=True)
elif scenario == "refused":
    try:
        c = connect() if cert != "-" else rpyc.ssl_connect("127.0.0.1", port, ca_certs=ca, config=cfg)
        print("CONNECTED", c.root.get_service_name(), flush=True)
    except Exception as e:
        print(f"REFUSED {type(e).__name__}: {e}", flush=True)
elif scenario == "service":
    c = connect()
    print("ADD", c.root.add(2, 3), flush=True)
    print("ANSWER", c.root.get_answer(), flush=True)
    expect(AttributeError, lambda: c.root.echo(1), "echo")
    expect(AttributeError, lambda: c.root.exposed_echo(1), "exposed_echo")
    expect(AttributeError, lambda: setattr(c.root, "the_answer", 5), "setattr")
    lst = c.root.make_list(3)
    print("LIST", list(lst), flush=True)
    expect(PermissionError, lambda: pickle.dumps(lst), "pickle")
    print("STILL", c.root.add(1, 1), flush=True)
elif scenario == "bind_threads":
    cfg["bind_threads"] = True
    c = connect()
    expect(NotImplementedError, lambda: c.root.add(1, 2), "bind_threads")
elif scenario == "pending":
    c = connect()
    c.root.add(1, 1)
    print("CALLING", flush=True)
    t = time.time()
    try:
        c.root.sleep(30)
        print("RETURNED", flush=True)
    except Exception as e:
        print(f"FAILED after {time.time() - t:.1f}s {type(e).__name__}: {str(e).splitlines()[0]}", flush=True)
elif scenario == "callback":
    c = connect()
    print("CALLBACK", c.root.call_back(lambda x: x * 2, 21), flush=True)
    got = []
    bg = rpyc.BgServingThread(c)
    c.root.subscribe(got.append, 3)
    deadline = time.time() + 10
    while len(got) < 3 and time.time() < deadline:
        time.sleep(0.02)
    print("SUBSCRIBED", got, flush=True)
    bg.stop()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_rights_are_per_identity() {
    bounded(async {
        let pki = Pki::new();
        let policy = "[policy.policies.admin]\nclassic = true\n[policy.identities]\nalice = \"admin\"\n";
        let (_server, _port, gw) = python_behind_gateway("classic", &pki, policy).await;
        // bob has the safe default: every classic root is an AttributeError,
        // the connection stays usable, and rpyc.classic cannot even connect.
        let (_, out) = python(CLIENT, py_args(&gw, pki.dir.path(), "bob", "noclassic")).await;
        for name in ["eval", "execute", "getmodule", "namespace", "getconn"] {
            assert_lines(&out, &[&format!("DENIED {name} AttributeError: cannot access '{name}'")]);
        }
        assert_lines(
            &out,
            &[
                "DENIED _conn AttributeError: cannot access '_conn'",
                "DENIED __globals__ AttributeError: cannot access '__globals__'",
                "HEALTHY SLAVE",
                "DENIED classic.ssl_connect AttributeError: cannot access 'getmodule'",
            ],
        );
        // alice is granted classic mode.
        let (ok, out) = python(CLIENT, py_args(&gw, pki.dir.path(), "alice", "classic")).await;
        assert!(ok, "{out}");
        assert_lines(&out, &["EVAL 42", "NAMESPACE 5", "GETPID True", "CLASS int"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_certificates_are_refused() {
    bounded(async {
        let pki = Pki::new();
        let (_server, _port, gw) = python_behind_gateway("classic", &pki, "").await;
        let ca = pki.path("ca.pem").display().to_string();
        let rogue = |f: &str| pki.rogue.path().join(f).display().to_string();
        let port = gw.addr.port().to_string();
        // A certificate from another CA, and no certificate at all.
        for (cert, key) in [(rogue("mallory.pem"), rogue("mallory.key")), ("-".to_string(), "-".to_string())] {
            let (_, out) = python(CLIENT, vec!["refused".into(), port.clone(), cert, key, ca.clone()]).await;
            assert_lines(&out, &["REFUSED"]);
            assert!(!out.contains("CONNECTED"), "{out}");
        }
        // The gateway counted them and still serves a known identity.
        let metrics = gw.handle.metrics_text();
        assert!(metrics.contains("rpyc_gateway_auth_failures_total 2"), "{metrics}");
        let (_, out) = python(CLIENT, py_args(&gw, pki.dir.path(), "carol", "noclassic")).await;
        assert_lines(&out, &["HEALTHY SLAVE"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_listed_methods_only() {
    bounded(async {
        let pki = Pki::new();
        let policy = "[policy.default]\nroot_allow = [\"add\", \"get_answer\", \"make_list\"]\n\
                      [policy.default.objects]\nlist = [\"__iter__\", \"__len__\"]\n\
                      list_iterator = [\"__next__\", \"__iter__\", \"__length_hint__\"]\n";
        let (_server, _port, gw) = python_behind_gateway("service", &pki, policy).await;
        let (ok, out) = python(CLIENT, py_args(&gw, pki.dir.path(), "bob", "service")).await;
        assert!(ok, "{out}");
        assert_lines(
            &out,
            &[
                "ADD 5",
                "ANSWER 42",
                "DENIED echo AttributeError: cannot access 'echo'",
                "DENIED exposed_echo AttributeError: cannot access 'exposed_echo'",
                "DENIED setattr AttributeError: cannot access 'the_answer'",
                "LIST [0, 1, 2]",
                "DENIED pickle PermissionError: the gateway does not allow PICKLE requests",
                "STILL 2",
            ],
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_pass_through() {
    bounded(async {
        let pki = Pki::new();
        // Passing its own functions needs `callbacks`; without it they are refused.
        let policy = "[policy.policies.cb]\ncallbacks = true\n[policy.identities]\nbob = \"cb\"\n";
        let (_server, _port, gw) = python_behind_gateway("service", &pki, policy).await;
        let (ok, out) = python(CLIENT, py_args(&gw, pki.dir.path(), "carol", "callback")).await;
        assert!(!ok && out.contains("PermissionError") && out.contains("callbacks = false"), "{out}");
        let (ok, out) = python(CLIENT, py_args(&gw, pki.dir.path(), "bob", "callback")).await;
        assert!(ok, "{out}");
        assert_lines(&out, &["CALLBACK 42", "SUBSCRIBED [0, 1, 2]"]);
        let metrics = gw.handle.metrics_text();
        assert!(metrics.contains("rpyc_gateway_callbacks_total"), "{metrics}");
    })
    .await;
}

/// rpyc 6's own `rpyc_classic` serves `rpyc.utils.classic.SlaveService`,
/// which is `ClassicService`: its `on_connect` calls the client (GETROOT,
/// then `getmodule` on the client's root) before it answers anything — so
/// the upstream speaks first, before the gateway has its root.
const CLASSIC_SERVICE_SERVER: &str = r#"
import sys, threading, time, os
from rpyc.utils.classic import SlaveService
from rpyc.utils.server import ThreadedServer
server = ThreadedServer(SlaveService, hostname="127.0.0.1", port=0, auto_register=False)
server._listen()
print("PORT", server.listener.getsockname()[1], flush=True)
threading.Thread(target=lambda: (time.sleep(300), os._exit(0)), daemon=True).start()
server.start()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_service_server_that_calls_first() {
    bounded(async {
        let pki = Pki::new();
        let (_server, port) = blocking(|| {
            let mut cmd = Command::new(common::python6());
            cmd.arg("-c").arg(CLASSIC_SERVICE_SERVER);
            let child = common::spawn(cmd);
            let port: u16 = child.wait_line("PORT ", STEP).parse().unwrap();
            (child, port)
        })
        .await;
        // The server calls the client while connecting: identities that
        // reach it need `callbacks` (or `classic`).
        let policy = "[policy.default]\ncallbacks = true\n\
                      [policy.policies.admin]\nclassic = true\n[policy.identities]\nalice = \"admin\"\n";
        let gw = start_gateway(&config_text(&pki, &format!("tcp://127.0.0.1:{port}"), policy), pki.dir.path()).await;
        let (ok, out) = python(CLIENT, py_args(&gw, pki.dir.path(), "alice", "classic")).await;
        assert!(ok, "{out}");
        assert_lines(&out, &["EVAL 42", "NAMESPACE 5", "GETPID True"]);
        let (_, out) = python(CLIENT, py_args(&gw, pki.dir.path(), "bob", "noclassic")).await;
        assert_lines(&out, &["DENIED eval AttributeError: cannot access 'eval'"]);
    })
    .await;
}

/// The Python conformance client (every check group) against the Rust
/// CONFORMANCE server, through the gateway with a policy granting all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_through_the_gateway() {
    bounded(async {
        let pki = Pki::new();
        let (addr, stop) = common::serve(rpyc::conformance::service(), rpyc::ServerConfig::default()).await;
        // Every handler and member, callbacks: the gateway must not break
        // any of the protocol when the policy grants it.
        let any: Vec<String> = rpyc::policy::SAFE_ATTRS.iter().map(|a| format!("{a:?}")).collect();
        let policy = format!(
            "[policy.default]\ncallbacks = true\nallow_handlers = [\"*\"]\n\
             [policy.default.objects]\nany = [\"*\", {}]\n",
            any.join(", ")
        );
        let gw = start_gateway(&config_text(&pki, &format!("tcp://{addr}"), &policy), pki.dir.path()).await;
        let d = pki.dir.path().to_path_buf();
        let port = gw.addr.port().to_string();
        let (ok, out) = blocking(move || {
            let mut cmd = Command::new(common::python6());
            cmd.arg(common::script("conformance_client.py"))
                .args(["--port", &port, "--ssl-key"])
                .arg(d.join("alice.key"))
                .arg("--ssl-cert")
                .arg(d.join("alice.pem"))
                .arg("--ssl-ca")
                .arg(d.join("ca.pem"));
            common::run_with_timeout(cmd, Duration::from_secs(100))
        })
        .await;
        stop.shutdown();
        assert!(ok, "{out}");
        assert!(out.lines().any(|l| l.starts_with("checks: ") && l.ends_with(" ok")), "{out}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_pending_call_fails_when_the_upstream_dies() {
    bounded(async {
        let pki = Pki::new();
        let (mut server, _port, gw) = python_behind_gateway("service", &pki, "").await;
        let args = py_args(&gw, pki.dir.path(), "bob", "pending");
        let line = blocking(move || {
            let mut cmd = Command::new(common::python6());
            cmd.arg("-c").arg(CLIENT).args(args);
            let client = common::spawn(cmd);
            client.wait_line("CALLING", STEP);
            std::thread::sleep(Duration::from_millis(500));
            let _ = server.child.kill();
            let _ = server.child.wait();
            client.wait_line("FAILED", STEP)
        })
        .await;
        assert!(line.contains("EOFError") && line.contains("went away"), "{line}");
        let secs: f64 = line.trim_start_matches("after ").split('s').next().unwrap().parse().unwrap();
        assert!(secs < 3.0, "{line}");
    })
    .await;
}

/// rpyc's experimental `bind_threads` framing is refused with a reason the
/// Python client raises, not a hang or a bare disconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_threads_clients_are_told_why_they_are_refused() {
    bounded(async {
        let pki = Pki::new();
        let (_server, _port, gw) = python_behind_gateway("service", &pki, "").await;
        let (_, out) = python(CLIENT, py_args(&gw, pki.dir.path(), "bob", "bind_threads")).await;
        assert_lines(
            &out,
            &["DENIED bind_threads NotImplementedError: the peer uses rpyc's experimental bind_threads"],
        );
    })
    .await;
}
