//! Rust clients through the gateway: the upstream going away, an
//! unreachable upstream, the challenge–response listener.

use crate::*;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_going_away_fails_pending_calls_promptly() {
    bounded(async {
        let pki = Pki::new();
        let (mut server, _port, gw) = python_behind_gateway("service", &pki, "").await;
        let conn = rust_client(&gw, &pki, "bob").await;
        let root = step("root", conn.root()).await.unwrap();
        assert_eq!(step("add", root.call_method::<i64>("add", (1, 2))).await.unwrap(), 3);
        let a = root.async_callattr("sleep", (30,)).unwrap();
        let b = root.async_callattr("sleep", (30,)).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        blocking(move || {
            let _ = server.child.kill();
            let _ = server.child.wait();
        })
        .await;
        for pending in [a, b] {
            let err = step("pending call", pending.value()).await.expect_err("the call must fail");
            let text = err.to_string();
            assert!(err.is_exception("EOFError"), "{text}");
            assert!(text.contains("upstream \"py\"") && text.contains("went away"), "{text}");
        }
        assert!(t0.elapsed() < Duration::from_secs(3), "failing took {:?}", t0.elapsed());
        // The gateway closes the client connection afterwards.
        step("closed", conn.closed()).await;
        let metrics = gw.handle.metrics_text();
        assert!(metrics.contains("rpyc_gateway_upstream_failures_total 1"), "{metrics}");
    })
    .await;
}

/// A Rust upstream answers CLOSE, then hangs up: a normal end, not an
/// upstream failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_close_is_not_an_upstream_failure() {
    bounded(async {
        let pki = Pki::new();
        let (addr, stop) = common::serve(rpyc::conformance::service(), rpyc::ServerConfig::default()).await;
        let gw = start_gateway(&config_text(&pki, &format!("tcp://{addr}"), ""), pki.dir.path()).await;
        for _ in 0..3 {
            let conn = rust_client(&gw, &pki, "bob").await;
            let root = step("root", conn.root()).await.unwrap();
            assert_eq!(step("add", root.call_method::<i64>("add", (2, 3))).await.unwrap(), 5);
            step("close", conn.close()).await;
        }
        let deadline = Instant::now() + STEP;
        while !gw.handle.metrics_text().contains("rpyc_gateway_connections_active 0") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let metrics = gw.handle.metrics_text();
        assert!(metrics.contains("rpyc_gateway_connections_active 0"), "{metrics}");
        assert!(metrics.contains("rpyc_gateway_upstream_failures_total 0"), "{metrics}");
        stop.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_a_clear_error() {
    bounded(async {
        let pki = Pki::new();
        // A port nobody listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let gw = start_gateway(&config_text(&pki, &format!("tcp://127.0.0.1:{port}"), ""), pki.dir.path()).await;
        let conn = rust_client(&gw, &pki, "bob").await;
        let err = step("root", conn.root()).await.expect_err("no upstream, no root");
        let text = err.to_string();
        assert!(err.is_exception("ConnectionRefusedError"), "{text}");
        assert!(text.contains("cannot reach upstream \"py\""), "{text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_response_listener() {
    bounded(async {
        let pki = Pki::new();
        let (_server, port) = blocking(|| common::python_server(&common::python6(), &["--kind", "service"])).await;
        std::fs::write(pki.path("secrets.toml"), "dave = \"correct horse\"\n").unwrap();
        let text = format!(
            "[[listen]]\nname = \"cr\"\nurl = \"tcp://127.0.0.1:0\"\nsecrets = \"secrets.toml\"\n\
             [upstream.py]\nurl = \"tcp://127.0.0.1:{port}\"\n\
             [policy.policies.dave]\nroot_allow = [\"get_answer\"]\n[policy.identities]\ndave = \"dave\"\n"
        );
        let gw = start_gateway(&text, pki.dir.path()).await;
        let addr = gw.addr.to_string();
        let conn = step("connect", ClientBuilder::new().challenge_response("dave", "correct horse").connect(&addr))
            .await
            .unwrap();
        let root = step("root", conn.root()).await.unwrap();
        assert_eq!(step("get_answer", root.call_method::<i64>("get_answer", ())).await.unwrap(), 42);
        let err = step("add", root.call_method::<i64>("add", (1, 2))).await.expect_err("add is not allowed");
        assert!(err.is_exception("AttributeError") && err.to_string().contains("cannot access 'add'"), "{err}");
        // A wrong secret never gets a connection.
        let bad = step("connect", ClientBuilder::new().challenge_response("dave", "wrong").connect(&addr)).await;
        let refused = match bad {
            Err(e) => e.to_string(),
            Ok(c) => step("root", c.root()).await.err().map(|e| e.to_string()).unwrap_or_default(),
        };
        assert!(!refused.is_empty(), "a wrong secret must be refused");
    })
    .await;
}

/// The gateway config doc's SSH listener with a shared authorized_keys file
/// holding a key without `identity=`: that key could log in as anyone (and
/// so be any identity, with its policy), so the gateway refuses to start and
/// says how to fix it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_listener_with_an_unbound_shared_key_does_not_start() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("eve_ed25519");
        let (ok, out) = blocking({
            let key = key.clone();
            move || {
                let mut cmd = Command::new("ssh-keygen");
                cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", "eve", "-f"]).arg(&key);
                common::run_with_timeout(cmd, Duration::from_secs(30))
            }
        })
        .await;
        assert!(ok, "ssh-keygen failed: {out}");
        std::fs::copy(dir.path().join("eve_ed25519.pub"), dir.path().join("authorized_keys")).unwrap();
        let text = "[[listen]]\nurl = \"ssh://127.0.0.1:0\"\nhost_key = \"host_key\"\n\
                    authorized_keys = \"authorized_keys\"\n[upstream.py]\nurl = \"tcp://127.0.0.1:1\"\n";
        let config = GatewayConfig::from_toml(text, dir.path()).unwrap();
        let e = match Gateway::bind(config).await {
            Ok(_) => panic!("a gateway with an unbound shared SSH key started"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("no identity binding") && e.contains("identity=\"alice\"") && e.contains("%u"), "{e}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_listener_identity_is_the_ssh_user() {
    bounded(async {
        let pki = Pki::new();
        let dir = pki.dir.path().to_path_buf();
        let key = dir.join("dave_ed25519");
        let (ok, out) = blocking({
            let key = key.clone();
            move || {
                let mut cmd = Command::new("ssh-keygen");
                cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", "dave", "-f"]).arg(&key);
                common::run_with_timeout(cmd, Duration::from_secs(30))
            }
        })
        .await;
        assert!(ok, "ssh-keygen failed (is openssh-client installed?): {out}");
        let public = std::fs::read_to_string(dir.join("dave_ed25519.pub")).unwrap();
        std::fs::write(dir.join("authorized_keys"), format!("identity=\"dave\" {public}")).unwrap();
        let (_server, port) = blocking(|| common::python_server(&common::python6(), &["--kind", "service"])).await;
        let text = format!(
            "[[listen]]\nurl = \"ssh://127.0.0.1:0\"\nhost_key = \"host_key\"\nauthorized_keys = \"authorized_keys\"\n\
             [upstream.py]\nurl = \"tcp://127.0.0.1:{port}\"\n\
             [policy.policies.dave]\nroot_allow = [\"get_answer\"]\n[policy.identities]\ndave = \"dave\"\n"
        );
        let gw = start_gateway(&text, &dir).await;
        let config = rpyc::transport::ssh::SshConfig::new("127.0.0.1", gw.addr.port(), "dave")
            .with_key_file(&key)
            .with_known_hosts(dir.join("known_hosts"))
            .trust_on_first_use();
        let endpoint =
            rpyc::transport::Endpoint::Ssh { target: "127.0.0.1:1".into(), config: std::sync::Arc::new(config) };
        let conn =
            step("connect over ssh", ClientBuilder::new().timeout(STEP).connect_endpoint(&endpoint)).await.unwrap();
        let root = step("root", conn.root()).await.unwrap();
        assert_eq!(step("get_answer", root.call_method::<i64>("get_answer", ())).await.unwrap(), 42);
        let err = step("add", root.call_method::<i64>("add", (1, 2))).await.expect_err("add is not allowed for dave");
        assert!(err.is_exception("AttributeError"), "{err}");
    })
    .await;
}

/// The gateway reaches a Python `SSLAuthenticator` server over TLS with its
/// own client certificate: behind the gateway, that certificate is who calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstream_sees_the_gateways_certificate() {
    bounded(async {
        let pki = Pki::new();
        let p = |f: &str| pki.path(f).display().to_string();
        let args = [
            "--kind",
            "service",
            "--ssl-key",
            &p("server.key"),
            "--ssl-cert",
            &p("server.pem"),
            "--ssl-ca",
            &p("ca.pem"),
        ]
        .map(str::to_string);
        let (_server, port) = blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            common::python_server(&common::python6(), &args)
        })
        .await;
        let upstream = format!("tls://127.0.0.1:{port}");
        let text = config_text(&pki, &upstream, "")
            .replace("[upstream.py]\n", "[upstream.py]\nca = \"ca.pem\"\ncert = \"carol.pem\"\nkey = \"carol.key\"\n");
        let gw = start_gateway(&text, pki.dir.path()).await;
        let conn = rust_client(&gw, &pki, "bob").await;
        let root = step("root", conn.root()).await.unwrap();
        let who: Option<String> = step("whoami", root.call_method("whoami", ())).await.unwrap();
        assert_eq!(who.as_deref(), Some("carol"));
        assert_eq!(step("add", root.call_method::<i64>("add", (2, 3))).await.unwrap(), 5);
    })
    .await;
}

/// `service = "PYTEST"`: the upstream is looked up in a registry per connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_found_through_the_registry() {
    bounded(async {
        let pki = Pki::new();
        let (_server, port) = blocking(|| common::python_server(&common::python6(), &["--kind", "service"])).await;
        let registry = rpyc::registry::RegistryServer::bind_udp("127.0.0.1:0", Default::default()).await.unwrap();
        let raddr = registry.local_addr();
        let stop = registry.spawn();
        let client = rpyc::registry::RegistryClient::udp(&raddr.to_string()).unwrap();
        step("register", client.register(&["PYTEST".to_string()], port)).await.unwrap();
        let text = format!(
            "[[listen]]\nurl = \"tls://127.0.0.1:0\"\ntls = {:?}\n[upstream.py]\nservice = \"pytest\"\nregistry = \"{raddr}\"\n",
            pki.dir.path().display().to_string()
        );
        let gw = start_gateway(&text, pki.dir.path()).await;
        let conn = rust_client(&gw, &pki, "bob").await;
        let root = step("root", conn.root()).await.unwrap();
        assert_eq!(step("add", root.call_method::<i64>("add", (2, 3))).await.unwrap(), 5);
        // A name nobody registered is a clear error on the first call.
        let text = text.replace("service = \"pytest\"", "service = \"NOBODY\"");
        let gw2 = start_gateway(&text, pki.dir.path()).await;
        let conn = rust_client(&gw2, &pki, "bob").await;
        let err = step("root", conn.root()).await.expect_err("no server registered");
        assert!(err.is_exception("ConnectionRefusedError") && err.to_string().contains("NOBODY"), "{err}");
        stop.shutdown();
    })
    .await;
}

/// Values nested 256 deep pass the gateway both ways, as between Python
/// peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_values_pass_the_gateway() {
    bounded(async {
        let pki = Pki::new();
        let (_server, _port, gw) = python_behind_gateway("service", &pki, "").await;
        let conn = rust_client(&gw, &pki, "bob").await;
        let root = step("root", conn.root()).await.unwrap();
        let deep = (0..256).fold(rpyc::Value::Tuple(vec![]), |v, _| rpyc::Value::Tuple(vec![v]));
        let back: rpyc::Value =
            step("echo", root.call_method("echo", (rpyc::Object::Value(deep.clone()),))).await.unwrap();
        assert_eq!(back, deep);
    })
    .await;
}
