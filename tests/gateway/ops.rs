//! Operations: audit trail, metrics and health endpoint, reload, graceful
//! shutdown, per-identity limits, and the `rpyc gateway` command.

use crate::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = step("http connect", tokio::net::TcpStream::connect(addr)).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    step("http read", s.read_to_string(&mut out)).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_and_metrics_endpoint() {
    bounded(async {
        let pki = Pki::new();
        let audit = pki.path("audit.jsonl");
        let extra = format!(
            "[audit]\nformat = \"json\"\nfile = {:?}\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            audit.display().to_string()
        );
        let (_server, _port, gw) = python_behind_gateway("classic", &pki, &extra).await;
        let conn = rust_client(&gw, &pki, "bob").await;
        let root = step("root", conn.root()).await.unwrap();
        let _: String = step("call", root.call_method("get_service_name", ())).await.unwrap();
        let err = step("eval", root.call_method::<i64>("eval", ("1",))).await.err().unwrap();
        assert!(err.is_exception("AttributeError"), "{err}");
        let text = std::fs::read_to_string(&audit).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for line in &lines {
            let record: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {line}"));
            assert!(record["ts"].as_f64().is_some_and(|t| t > 1e9), "{line}");
            assert!(record["latency_us"].is_u64() && record["seq"].is_i64(), "{line}");
        }
        assert!(
            lines.iter().any(|l| l.contains("\"identity\":\"bob\"")
                && l.contains("\"handler\":\"CALLATTR\"")
                && l.contains("\"name\":\"get_service_name\"")
                && l.contains("\"upstream\":\"py\"")
                && l.contains("\"decision\":\"allowed\"")
                && l.contains("\"outcome\":\"reply\"")),
            "{text}"
        );
        assert!(
            lines.iter().any(|l| l.contains("\"name\":\"eval\"")
                && l.contains("\"decision\":\"denied\"")
                && l.contains("\"outcome\":\"classic\"")),
            "{text}"
        );
        let metrics = gw.metrics.unwrap();
        let body = http_get(metrics, "/metrics").await;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        for family in [
            "rpyc_gateway_connections_total 1",
            "rpyc_gateway_connections_active 1",
            "rpyc_gateway_requests_total{handler=\"CALLATTR\",decision=\"denied\"} 1",
            "rpyc_gateway_denials_total{reason=\"classic\"} 1",
            "rpyc_gateway_request_duration_seconds_count",
        ] {
            assert!(body.contains(family), "{family} missing in\n{body}");
        }
        assert!(http_get(metrics, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(http_get(metrics, "/nope").await.starts_with("HTTP/1.1 404"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_policies_for_open_connections() {
    bounded(async {
        let pki = Pki::new();
        let (_server, port, gw) = python_behind_gateway("classic", &pki, "").await;
        let conn = rust_client(&gw, &pki, "bob").await;
        let root = step("root", conn.root()).await.unwrap();
        let err = step("eval", root.call_method::<i64>("eval", ("6*7",))).await.err().unwrap();
        assert!(err.is_exception("AttributeError"), "{err}");
        // Grant bob classic mode: the open connection gets it from its next request.
        let granted = config_text(
            &pki,
            &format!("tcp://127.0.0.1:{port}"),
            "[policy.policies.ops]\nclassic = true\n[policy.identities]\nbob = \"ops\"\n",
        );
        let report = gw.handle.reload(GatewayConfig::from_toml(&granted, pki.dir.path()).unwrap()).unwrap();
        assert_eq!(report.reloaded.len(), 1, "{report:?}");
        assert!(report.needs_restart.is_empty(), "{report:?}");
        assert_eq!(step("eval", root.call_method::<i64>("eval", ("6*7",))).await.unwrap(), 42);
        // A broken configuration changes nothing.
        let broken = granted.replace("bob = \"ops\"", "bob = \"missing\"");
        assert!(GatewayConfig::from_toml(&broken, pki.dir.path()).is_err());
        let mut bad = GatewayConfig::from_toml(&granted, pki.dir.path()).unwrap();
        bad.listeners[0].tls = Some(pki.path("no-such-dir"));
        assert!(gw.handle.reload(bad).is_err());
        assert_eq!(step("eval", root.call_method::<i64>("eval", ("1+1",))).await.unwrap(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_calls_in_flight() {
    bounded(async {
        let pki = Pki::new();
        let extra = "[metrics]\nlisten = \"127.0.0.1:0\"\n";
        let (_server, _port, gw) = python_behind_gateway("service", &pki, extra).await;
        let conn = rust_client(&gw, &pki, "bob").await;
        let root = step("root", conn.root()).await.unwrap();
        let slow = root.async_callattr("sleep", (2,)).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        gw.handle.shutdown();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Health checks see the drain (load balancers stop sending clients)…
        let health = http_get(gw.metrics.unwrap(), "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 503"), "{health}");
        // New requests are refused while draining…
        let err = step("during drain", root.call_method::<i64>("add", (1, 2))).await.err().unwrap();
        assert!(err.is_exception("EOFError"), "{err}");
        // …the call in flight completes…
        step("slow call", slow.value()).await.unwrap();
        // …then the connection closes and the gateway stops.
        step("closed", conn.closed()).await;
        step("stopped", gw.handle.stopped()).await;
        assert!(ClientBuilder::new().tls(pki.client("bob")).connect(&gw.addr.to_string()).await.is_err());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_identity_limits() {
    bounded(async {
        let pki = Pki::new();
        let extra = "[policy.policies.one]\nmax_in_flight = 1\n[policy.policies.slow]\nrate_per_sec = 2\nburst = 2\n\
                     [policy.identities]\nbob = \"one\"\ncarol = \"slow\"\n";
        let (_server, _port, gw) = python_behind_gateway("service", &pki, extra).await;
        // bob: one request at a time, over all his connections.
        let a = rust_client(&gw, &pki, "bob").await;
        let b = rust_client(&gw, &pki, "bob").await;
        let root_a = step("root", a.root()).await.unwrap();
        let root_b = step("root", b.root()).await.unwrap();
        let slow = root_a.async_callattr("sleep", (1,)).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let err = step("second", root_b.call_method::<i64>("add", (1, 2))).await.err().unwrap();
        assert!(err.is_exception("RuntimeError") && err.to_string().contains("in flight"), "{err}");
        step("slow", slow.value()).await.unwrap();
        assert_eq!(step("after", root_b.call_method::<i64>("add", (1, 2))).await.unwrap(), 3);
        // carol: 2 requests per second (GETROOT was one of them).
        let c = rust_client(&gw, &pki, "carol").await;
        let root_c = step("root", c.root()).await.unwrap();
        let mut refused = 0;
        for _ in 0..4 {
            if let Err(e) = step("add", root_c.call_method::<i64>("add", (1, 1))).await {
                assert!(e.to_string().contains("rate limit"), "{e}");
                refused += 1;
            }
        }
        assert!(refused >= 2, "{refused} refused");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpyc5_client_is_translated_for_an_rpyc6_server() {
    bounded(async {
        let pki = Pki::new();
        let (_server, port) = blocking(|| common::python_server(&common::python6(), &["--kind", "service"])).await;
        // The callback needs `callbacks`.
        let text = config_text(&pki, &format!("tcp://127.0.0.1:{port}"), "[policy.default]\ncallbacks = true\n")
            .replace("[upstream.py]\n", "[upstream.py]\nprotocol = \"rpyc6\"\n");
        let gw = start_gateway(&text, pki.dir.path()).await;
        let dir = pki.dir.path().to_path_buf();
        let port = gw.addr.port();
        let (ok, out) = blocking(move || {
            let mut cmd = std::process::Command::new(common::python5());
            cmd.arg("-c")
                .arg(
                    "import sys, rpyc\n\
                     d = sys.argv[2]\n\
                     c = rpyc.ssl_connect('127.0.0.1', int(sys.argv[1]), keyfile=d + '/bob.key', certfile=d + '/bob.pem', ca_certs=d + '/ca.pem')\n\
                     print('VERSION', rpyc.__version__, 'ADD', c.root.add(2, 3), 'CALLBACK', c.root.call_back(lambda x: x + 1, 41))\n\
                     try:\n    c.root._conn\nexcept AttributeError as e:\n    print('DENIED', str(e).splitlines()[0])\n",
                )
                .arg(port.to_string())
                .arg(dir.display().to_string());
            common::run_with_timeout(cmd, Duration::from_secs(60))
        })
        .await;
        assert!(ok, "{out}");
        assert_lines(&out, &["VERSION 5.3.1 ADD 5 CALLBACK 42", "DENIED cannot access '_conn'"]);
    })
    .await;
}

/// `rpyc` as a user runs it: the gateway command with a policy file, `rpyc
/// ping` and `rpyc call` through it, SIGHUP to grant a right, SIGTERM to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rpyc_gateway_command() {
    bounded(async {
        let pki = Pki::new();
        let (_server, port) = blocking(|| common::python_server(&common::python6(), &["--kind", "classic"])).await;
        let dir = pki.dir.path().display().to_string();
        let policy = pki.path("policy.toml");
        std::fs::write(&policy, "[default]\n").unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rpyc"));
        cmd.args(["-q", "gateway", "--listen", "tls://127.0.0.1:0", "--tls", &dir, "--upstream"])
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--policy")
            .arg(&policy);
        let child = common::spawn(cmd);
        let (mut child, url) = blocking(move || {
            let l = child.wait_line("listening ", STEP);
            (child, l)
        })
        .await;
        assert!(url.starts_with("tls://127.0.0.1:"), "{url}");
        let rpyc = |args: Vec<String>| {
            let dir = dir.clone();
            blocking(move || {
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_rpyc"));
                cmd.args(&args).arg("--ca").arg(format!("{dir}/ca.pem")).args([
                    "--cert",
                    &format!("{dir}/bob.pem"),
                    "--key",
                    &format!("{dir}/bob.key"),
                ]);
                common::run_with_timeout(cmd, Duration::from_secs(30))
            })
        };
        let ping = rpyc(vec!["ping".into(), url.clone()]).await;
        assert!(ping.0, "rpyc ping through the gateway failed: {}", ping.1);
        let eval = vec!["call".to_string(), url.clone(), "eval".into(), "'6*7'".into()];
        let denied = rpyc(eval.clone()).await;
        assert!(!denied.0 && denied.1.contains("cannot access 'eval'"), "{}", denied.1);
        // Grant bob classic mode and send SIGHUP.
        std::fs::write(&policy, "[policies.ops]\nclassic = true\n[identities]\nbob = \"ops\"\n").unwrap();
        let pid = child.child.id().to_string();
        let hup = blocking(move || Command::new("kill").args(["-HUP", &pid]).status().unwrap()).await;
        assert!(hup.success());
        let mut granted = (false, String::new());
        for _ in 0..50 {
            granted = rpyc(eval.clone()).await;
            if granted.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(granted.0 && granted.1.trim() == "42", "{}", granted.1);
        // SIGTERM: drain (nothing in flight) and exit 0.
        let pid = child.child.id().to_string();
        let status = blocking(move || {
            Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            let deadline = std::time::Instant::now() + STEP;
            loop {
                if let Some(st) = child.child.try_wait().unwrap() {
                    return Some(st);
                }
                if std::time::Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await;
        assert!(status.is_some_and(|s| s.success()), "rpyc gateway did not stop cleanly on SIGTERM: {status:?}");
    })
    .await;
}
