//! Upstream pools with real Python servers: balancing, active health
//! checks, passive ejection, an honest `/healthz`, per-server metrics.

use crate::*;
use std::time::Instant;

/// `(server, value)` of a per-server metric family.
fn per_server(metrics: &str, family: &str) -> Vec<(String, u64)> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter_map(|l| {
            let server = l.split("server=\"").nth(1)?.split('"').next()?.to_string();
            let v = l.rsplit(' ').next()?.parse().ok()?;
            Some((server, v))
        })
        .collect()
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Waits (bounded) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {STEP:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One connection through the gateway at `addr`: `add(20, 22)`, then close.
async fn add_through(addr: SocketAddr, pki: &Pki) -> Result<i64, rpyc::Error> {
    let addr = addr.to_string();
    let connect = ClientBuilder::new().tls(pki.client("bob")).timeout(STEP).connect(&addr);
    let conn = step("connect", connect).await?;
    let root = step("root", conn.root()).await?;
    let v = step("add", root.call_method::<i64>("add", (20, 22))).await;
    step("close", conn.close()).await;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_spreads_connections_and_routes_around_a_dead_server() {
    bounded(async {
        let pki = Pki::new();
        let mut servers = Vec::new();
        for _ in 0..3 {
            servers.push(blocking(|| common::python_server(&common::python6(), &["--kind", "service"])).await);
        }
        let urls: Vec<String> = servers.iter().map(|(_, p)| format!("\"tcp://127.0.0.1:{p}\"")).collect();
        let text = format!(
            "[[listen]]\nurl = \"tls://127.0.0.1:0\"\ntls = {:?}\n[upstream.py]\nurls = [{}]\n\
             [health]\ninterval_secs = 0.3\ntimeout_secs = 1.0\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            pki.dir.path().display().to_string(),
            urls.join(", ")
        );
        let gw = start_gateway(&text, pki.dir.path()).await;
        let metrics = gw.metrics.unwrap();
        assert!(http_get(metrics, "/healthz").await.starts_with("HTTP/1.1 200"));

        // Connections held open at once are spread over all three.
        let mut held = Vec::new();
        for _ in 0..12 {
            let conn = rust_client(&gw, &pki, "bob").await;
            let root = step("root", conn.root()).await.unwrap();
            assert_eq!(step("add", root.call_method::<i64>("add", (1, 2))).await.unwrap(), 3);
            held.push(conn);
        }
        let active = per_server(&gw.handle.metrics_text(), "rpyc_gateway_upstream_connections_active");
        assert_eq!(active.len(), 3, "{active:?}");
        assert!(active.iter().all(|(_, n)| (2..=6).contains(n)), "uneven spread: {active:?}");
        drop(held);

        // One server dies. New connections never fail: the first that
        // meets it ejects it and is retried elsewhere; the health check
        // notices within an interval.
        let (mut dead, dead_port) = servers.remove(0);
        blocking(move || {
            let _ = dead.child.kill();
            let _ = dead.child.wait();
        })
        .await;
        for _ in 0..10 {
            assert_eq!(add_through(gw.addr, &pki).await.unwrap(), 42);
        }
        let dead_url = format!("tcp://127.0.0.1:{dead_port}");
        until("the dead server is marked down", || {
            per_server(&gw.handle.metrics_text(), "rpyc_gateway_upstream_healthy").contains(&(dead_url.clone(), 0))
        })
        .await;
        let healthy = per_server(&gw.handle.metrics_text(), "rpyc_gateway_upstream_healthy");
        assert_eq!(healthy.iter().filter(|(_, v)| *v == 1).count(), 2, "{healthy:?}");
        assert!(http_get(metrics, "/healthz").await.starts_with("HTTP/1.1 200"));
        let before = per_server(&gw.handle.metrics_text(), "rpyc_gateway_upstream_connections_total");
        for _ in 0..6 {
            assert_eq!(add_through(gw.addr, &pki).await.unwrap(), 42);
        }
        let after = per_server(&gw.handle.metrics_text(), "rpyc_gateway_upstream_connections_total");
        assert_eq!(
            before.iter().find(|(s, _)| *s == dead_url),
            after.iter().find(|(s, _)| *s == dead_url),
            "no connection may go to a server known to be down"
        );

        // All gone: /healthz says 503 and why; a client learns why too.
        for (mut s, _) in servers.drain(..) {
            blocking(move || {
                let _ = s.child.kill();
                let _ = s.child.wait();
            })
            .await;
        }
        let mut health = String::new();
        let deadline = Instant::now() + STEP;
        while !health.starts_with("HTTP/1.1 503") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            health = http_get(metrics, "/healthz").await;
        }
        assert!(health.starts_with("HTTP/1.1 503"), "{health}");
        assert!(health.contains("upstream \"py\" has no healthy server") && health.contains(&dead_url), "{health}");
        let err = add_through(gw.addr, &pki).await.expect_err("no server is up");
        assert!(err.is_exception("ConnectionRefusedError") && err.to_string().contains("no healthy server"), "{err}");

        // A server comes back on its port: it passes a check and serves.
        let port = dead_port.to_string();
        let (_back, _) =
            blocking(move || common::python_server(&common::python6(), &["--kind", "service", "--port", &port])).await;
        let mut health = String::new();
        let deadline = Instant::now() + STEP;
        while !health.starts_with("HTTP/1.1 200") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            health = http_get(metrics, "/healthz").await;
        }
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert_eq!(add_through(gw.addr, &pki).await.unwrap(), 42);
    })
    .await;
}

/// `rpyc gateway --upstream A --upstream B --health-interval`, and
/// `--check` on the deployment kit's configuration and on a broken one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_takes_a_pool_and_checks_configurations() {
    bounded(async {
        let pki = Pki::new();
        let (_a, pa) = blocking(|| common::python_server(&common::python6(), &["--kind", "service"])).await;
        let (_b, pb) = blocking(|| common::python_server(&common::python6(), &["--kind", "service"])).await;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rpyc"));
        cmd.args(["gateway", "--listen", "tls://127.0.0.1:0", "--tls"])
            .arg(pki.dir.path())
            .args(["--upstream", &format!("tcp://127.0.0.1:{pa}"), "--upstream", &format!("tcp://127.0.0.1:{pb}")])
            .args(["--health-interval", "0.5", "--metrics", "127.0.0.1:0"]);
        let child = common::spawn(cmd);
        let line = blocking({
            let out = child.wait_line("listening tls://", STEP);
            move || out
        })
        .await;
        let addr: SocketAddr = line.trim().parse().unwrap();
        for _ in 0..4 {
            assert_eq!(add_through(addr, &pki).await.unwrap(), 42);
        }
        drop(child);

        // --check on the shipped configuration: valid, files listed as missing.
        let repo = common::root();
        let out = blocking(move || {
            let mut c = Command::new(env!("CARGO_BIN_EXE_rpyc"));
            c.args(["gateway", "--check", "--config"]).arg(repo.join("deploy/gateway.toml"));
            common::run_with_timeout(c, STEP)
        })
        .await;
        assert!(out.0, "{}", out.1);
        assert_lines(&out.1, &["listeners:", "upstreams:", "routes", "policies:", "is valid"]);

        // The kit's files agree with each other (ports, paths, SRV name,
        // probes, hardening) …
        let repo = common::root();
        let out = blocking(move || {
            let mut c = Command::new(common::python6());
            c.arg(common::script("check_deploy.py")).arg(repo);
            common::run_with_timeout(c, STEP)
        })
        .await;
        assert!(out.0 && out.1.contains("deploy ok"), "{}", out.1);
        // … and with its certificates in place the configuration is complete.
        let kit = tempfile::tempdir().unwrap();
        std::fs::copy(common::root().join("deploy/gateway.toml"), kit.path().join("gateway.toml")).unwrap();
        certs::init_dir(&kit.path().join("tls"), &[]).unwrap();
        let kit_toml = kit.path().join("gateway.toml");
        let out = blocking(move || {
            let mut c = Command::new(env!("CARGO_BIN_EXE_rpyc"));
            c.args(["gateway", "--check", "--config"]).arg(kit_toml);
            common::run_with_timeout(c, STEP)
        })
        .await;
        assert!(out.0 && !out.1.contains("missing:") && out.1.contains("is valid"), "{}", out.1);

        // --check with the files present, then with a broken certificate.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("gw.toml"),
            config_text(&pki, &format!("tcp://127.0.0.1:{pa}"), "[health]\ninterval_secs = 2\n"),
        )
        .unwrap();
        let gw_toml = dir.path().join("gw.toml");
        let run_check = |p: PathBuf| {
            blocking(move || {
                let mut c = Command::new(env!("CARGO_BIN_EXE_rpyc"));
                c.args(["gateway", "--check", "-c"]).arg(p);
                common::run_with_timeout(c, STEP)
            })
        };
        let (ok, text) = run_check(gw_toml.clone()).await;
        assert!(ok && !text.contains("missing:") && text.contains("every 2 s"), "{text}");
        std::fs::write(pki.path("server.pem"), "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
        let (ok, text) = run_check(gw_toml).await;
        assert!(!ok && text.contains("error: listener") && text.contains("would stop the gateway"), "{text}");
    })
    .await;
}

/// `srv://` upstreams: the gateway resolves the record on a real DNS
/// server, sends clients only to the best priority's healthy targets,
/// re-resolves at the TTL (a target added, one removed), and falls back to
/// the next priority when the best one is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_upstreams_follow_the_dns_records() {
    bounded(async {
        let pki = Pki::new();
        let dns = common::DnsServer::start().await;
        let mut ports = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..4 {
            let (s, p) = blocking(|| common::python_server(&common::python6(), &["--kind", "service"])).await;
            servers.push(s);
            ports.push(p);
        }
        for host in ["a", "b", "c", "d"] {
            dns.set_a(host, "127.0.0.1".parse().unwrap(), 1);
        }
        // a and b at priority 10, c at priority 20 (a backup).
        dns.set_srv("_rpyc._tcp.calc", 1, &[(10, 1, ports[0], "a"), (10, 1, ports[1], "b"), (20, 1, ports[2], "c")]);
        let text = format!(
            "[[listen]]\nurl = \"tls://127.0.0.1:0\"\ntls = {:?}\n[upstream.calc]\nurl = \"srv://_rpyc._tcp.calc.rpyc.test\"\n\
             [health]\ninterval_secs = 0.3\ntimeout_secs = 1.0\n[dns]\nnameservers = [\"{}\"]\n",
            pki.dir.path().display().to_string(),
            dns.addr()
        );
        let gw = start_gateway(&text, pki.dir.path()).await;
        let url = |i: usize| format!("tcp://127.0.0.1:{}", ports[i]);
        let totals = |gw: &Gw| per_server(&gw.handle.metrics_text(), "rpyc_gateway_upstream_connections_total");
        for _ in 0..8 {
            assert_eq!(add_through(gw.addr, &pki).await.unwrap(), 42);
        }
        let t = totals(&gw);
        let of = |t: &[(String, u64)], i: usize| t.iter().find(|(s, _)| *s == url(i)).map_or(0, |(_, n)| *n);
        assert_eq!(of(&t, 0) + of(&t, 1), 8, "only priority 10 serves: {t:?}");
        assert!(of(&t, 0) > 0 && of(&t, 1) > 0, "both priority-10 targets serve: {t:?}");
        assert_eq!(of(&t, 2), 0, "{t:?}");

        // The record changes: b leaves, d joins. Seen after the TTL (1 s).
        dns.set_srv("_rpyc._tcp.calc", 1, &[(10, 1, ports[0], "a"), (10, 1, ports[3], "d"), (20, 1, ports[2], "c")]);
        until("the gateway re-resolves the record", || {
            let t = totals(&gw);
            t.iter().any(|(s, _)| *s == url(3)) && !t.iter().any(|(s, _)| *s == url(1))
        })
        .await;
        for _ in 0..8 {
            assert_eq!(add_through(gw.addr, &pki).await.unwrap(), 42);
        }
        let t = totals(&gw);
        assert!(of(&t, 3) > 0, "the new target serves: {t:?}");

        // Priority 10 down (a and d killed): the backup at priority 20 serves.
        for i in [3usize, 0] {
            let mut s = servers.remove(i);
            blocking(move || {
                let _ = s.child.kill();
                let _ = s.child.wait();
            })
            .await;
        }
        for _ in 0..4 {
            assert_eq!(add_through(gw.addr, &pki).await.unwrap(), 42);
        }
        assert!(of(&totals(&gw), 2) >= 4, "the backup serves: {:?}", totals(&gw));
    })
    .await;
}

/// A secrets file with a syntax error is reported by line, without the
/// line: it holds a secret (and `--check` runs on every start and reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_never_prints_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secrets.toml"), "bob = \"ok\"\nalice = \"SUPERSECRET-unterminated\n").unwrap();
    std::fs::write(dir.path().join("dup.toml"), "alice = \"SUPERSECRET-1\"\nalice = \"SUPERSECRET-2\"\n").unwrap();
    for file in ["secrets.toml", "dup.toml"] {
        let toml = dir.path().join(format!("{file}.gw.toml"));
        std::fs::write(
            &toml,
            format!("[[listen]]\nurl = \"tcp://127.0.0.1:0\"\nsecrets = \"{file}\"\n[upstream.a]\nurl = \"tcp://127.0.0.1:1\"\n"),
        )
        .unwrap();
        let (ok, out) = blocking(move || {
            let mut c = Command::new(env!("CARGO_BIN_EXE_rpyc"));
            c.args(["gateway", "--check", "-c"]).arg(toml);
            common::run_with_timeout(c, STEP)
        })
        .await;
        assert!(!ok && out.contains("line 2 is not identity = \"secret\""), "{out}");
        assert!(!out.contains("SUPERSECRET"), "a secret was printed:\n{out}");
    }
}
