//! DNS SRV discovery against a real authoritative DNS server (hickory-server,
//! in-process, see `common::DnsServer`) and real Python rpyc 6.0.2 servers:
//! lookups, RFC 2782 order statistics, TTL-driven re-resolution that sees a
//! changed record, dead targets skipped, TLS to a target by its host name,
//! classic mode, and errors that say what to check.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{self, DnsServer};
use rpyc::certs;
use rpyc::classic::Classic;
use rpyc::transport::srv::{SrvResolver, MIN_TTL};
use rpyc::transport::tls::TlsClientConfig;
use rpyc::ClientBuilder;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(15);
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

async fn bounded<F: std::future::Future<Output = ()>>(body: F) {
    tokio::time::timeout(DEADLINE, body).await.unwrap_or_else(|_| panic!("test did not finish within {DEADLINE:?}"));
}

async fn step<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f).await.unwrap_or_else(|_| panic!("{what}: no answer within {STEP:?}"))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// A TCP port nothing listens on (bound, then released).
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn resolver(dns: &DnsServer) -> SrvResolver {
    SrvResolver::with_nameservers(&[dns.addr()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_resolves_every_target_and_the_smallest_ttl() {
    bounded(async {
        let dns = DnsServer::start().await;
        dns.set_srv("_rpyc._tcp.svc", 30, &[(0, 5, 1001, "a"), (1, 0, 1002, "b")]);
        dns.set_a("a", LOCAL, 60);
        dns.set_a("b", IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 10);

        let before = Instant::now();
        let answer = step("lookup", resolver(&dns).lookup("_rpyc._tcp.svc.rpyc.test")).await.unwrap();
        let mut targets = answer.targets.clone();
        targets.sort_by_key(|t| t.priority);
        assert_eq!(targets.len(), 2, "{targets:?}");
        assert_eq!(
            (targets[0].host.as_str(), targets[0].port, targets[0].priority, targets[0].weight),
            ("a.rpyc.test", 1001, 0, 5)
        );
        assert_eq!(targets[0].addrs, vec![SocketAddr::new(LOCAL, 1001)]);
        assert_eq!(targets[1].host, "b.rpyc.test");
        assert_eq!(targets[1].addrs, vec!["[::1]:1002".parse::<SocketAddr>().unwrap()]);
        // The smallest TTL (b's AAAA record, 10 s) decides.
        let valid = answer.valid_until.duration_since(before);
        assert!(valid > Duration::from_secs(8) && valid <= Duration::from_secs(11), "{valid:?}");

        // A trailing dot (an absolute name) means the same.
        let again = step("lookup fqdn", resolver(&dns).lookup("_rpyc._tcp.svc.rpyc.test.")).await.unwrap();
        assert_eq!(again.targets.len(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_follows_priority_then_weight() {
    bounded(async {
        let dns = DnsServer::start().await;
        dns.set_srv(
            "_rpyc._tcp.weights",
            60,
            &[(10, 1, 2001, "light"), (10, 3, 2002, "heavy"), (10, 0, 2003, "spare"), (20, 100, 2004, "backup")],
        );
        for host in ["light", "heavy", "spare", "backup"] {
            dns.set_a(host, LOCAL, 60);
        }
        let answer = step("lookup", resolver(&dns).lookup("_rpyc._tcp.weights.rpyc.test")).await.unwrap();
        let n = 8000;
        let mut first: HashMap<String, u32> = HashMap::new();
        for _ in 0..n {
            let order = answer.ordered();
            assert_eq!(order.len(), 4);
            // Priority 20 is only a fallback, whatever its weight.
            assert_eq!(order[3].host, "backup.rpyc.test");
            *first.entry(order[0].host.clone()).or_default() += 1;
        }
        let share = |h: &str| f64::from(first.get(&format!("{h}.rpyc.test")).copied().unwrap_or(0)) / f64::from(n);
        // r in 0..=4: 0 → spare (weight 0, placed first), 1 → light, 2..=4 → heavy.
        assert!((share("heavy") - 0.6).abs() < 0.04, "{first:?}");
        assert!((share("light") - 0.2).abs() < 0.04, "{first:?}");
        assert!(share("spare") > 0.1 && share("spare") < share("heavy"), "weight 0 is chosen, least often: {first:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_record_is_seen_once_its_ttl_ran_out() {
    bounded(async {
        let dns = DnsServer::start().await;
        dns.set_a("one", LOCAL, 300);
        dns.set_a("two", LOCAL, 300);
        dns.set_srv("_rpyc._tcp.moving", 1, &[(0, 0, 3001, "one")]);
        let resolver = resolver(&dns);

        let first = step("lookup", resolver.lookup("_rpyc._tcp.moving.rpyc.test")).await.unwrap();
        assert_eq!(first.targets[0].port, 3001);
        let valid = first.valid_until.saturating_duration_since(Instant::now());
        assert!(valid <= MIN_TTL, "a 1 s record is valid for at most 1 s, not {valid:?}");

        // The registry moves the service; at valid_until the resolver asks
        // the server again instead of answering from its cache.
        dns.set_srv("_rpyc._tcp.moving", 1, &[(0, 0, 3002, "two")]);
        tokio::time::sleep_until(first.valid_until.into()).await;
        let second = step("lookup after TTL", resolver.lookup("_rpyc._tcp.moving.rpyc.test")).await.unwrap();
        assert_eq!(second.targets.len(), 1);
        assert_eq!((second.targets[0].host.as_str(), second.targets[0].port), ("two.rpyc.test", 3002));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_errors_say_what_to_check() {
    bounded(async {
        let dns = DnsServer::start().await;
        let resolver = resolver(&dns);

        let e = step("unknown", resolver.lookup("_rpyc._tcp.nope.rpyc.test")).await.unwrap_err().to_string();
        assert!(e.contains("no SRV records for _rpyc._tcp.nope.rpyc.test") && e.contains("check the name"), "{e}");

        // The name exists (it has an A record) but no SRV records.
        dns.set_a("plain", LOCAL, 60);
        let e = step("no srv", resolver.lookup("plain.rpyc.test")).await.unwrap_err().to_string();
        assert!(e.contains("no SRV records for plain.rpyc.test"), "{e}");

        // Targets without addresses.
        dns.set_srv("_rpyc._tcp.ghost", 60, &[(0, 0, 4001, "nowhere")]);
        let e = step("ghost", resolver.lookup("_rpyc._tcp.ghost.rpyc.test")).await.unwrap_err().to_string();
        assert!(e.contains("nowhere.rpyc.test:4001") && e.contains("A/AAAA"), "{e}");

        // RFC 2782: target "." means the service is not available.
        dns.set_srv("_rpyc._tcp.off", 60, &[(0, 0, 0, ".")]);
        let e = step("dot", resolver.lookup("_rpyc._tcp.off.rpyc.test")).await.unwrap_err().to_string();
        assert!(e.contains("not available"), "{e}");

        for bad in ["", "has space.rpyc.test", "x/y", &"a".repeat(400)] {
            let e = step("bad name", resolver.lookup(bad)).await.unwrap_err().to_string();
            assert!(e.contains("is not a DNS name"), "{bad:?}: {e}");
        }

        // A DNS server that is not there.
        let gone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let e = step("dead dns", SrvResolver::with_nameservers(&[gone]).lookup("_rpyc._tcp.svc.rpyc.test"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("DNS server {gone} did not answer")), "{e}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_skips_a_dead_priority_zero_target() {
    bounded(async {
        let dns = DnsServer::start().await;
        let (server, port) = blocking(|| common::python_server(&common::python6(), &["--kind", "service"])).await;
        let dead = dead_port();
        dns.set_a("dead", LOCAL, 60);
        dns.set_a("live", LOCAL, 60);
        dns.set_srv("_rpyc._tcp.svc", 60, &[(0, 10, dead, "dead"), (1, 10, port, "live")]);

        let conn =
            step("connect", ClientBuilder::new().dns(vec![dns.addr()]).connect("srv://_rpyc._tcp.svc.rpyc.test"))
                .await
                .unwrap();
        let answer: i64 =
            step("get_answer", async { conn.root().await?.call_method("get_answer", ()).await }).await.unwrap();
        assert_eq!(answer, 42);
        conn.close().await;

        // When every target is dead, the error names each with its reason.
        drop(server);
        let err = step(
            "connect to the dead",
            ClientBuilder::new().dns(vec![dns.addr()]).connect("srv://_rpyc._tcp.svc.rpyc.test"),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("no target of _rpyc._tcp.svc.rpyc.test accepted a connection"), "{err}");
        assert!(
            err.contains(&format!("dead.rpyc.test:{dead}")) && err.contains(&format!("live.rpyc.test:{port}")),
            "{err}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_connects_through_srv() {
    bounded(async {
        let dns = DnsServer::start().await;
        let (_server, port) = blocking(|| common::python_server(&common::python6(), &["--kind", "classic"])).await;
        dns.set_a("classic", LOCAL, 60);
        dns.set_srv("_rpyc._tcp.classic", 60, &[(0, 0, port, "classic")]);
        let builder = ClientBuilder::new().dns(vec![dns.addr()]);
        let c = step("connect", Classic::connect_with(builder, "srv://_rpyc._tcp.classic.rpyc.test")).await.unwrap();
        let two: i64 = step("eval", c.eval_as("1 + 1")).await.unwrap();
        assert_eq!(two, 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_target_checks_its_host_name() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        certs::init_dir(dir.path(), &["secure.rpyc.test".to_string()]).unwrap();
        certs::client_cert(dir.path(), "alice").unwrap();
        let arg = |f: &str| dir.path().join(f).display().to_string();
        let args = [
            "--kind".to_string(),
            "service".into(),
            "--ssl-key".into(),
            arg("server.key"),
            "--ssl-cert".into(),
            arg("server.pem"),
            "--ssl-ca".into(),
            arg("ca.pem"),
        ];
        let (_server, port) = blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            common::python_server(&common::python6(), &args)
        })
        .await;
        let dns = DnsServer::start().await;
        dns.set_a("secure", LOCAL, 60);
        dns.set_a("impostor", LOCAL, 60);
        dns.set_srv("_rpyc._tcp.tls", 60, &[(0, 0, port, "secure")]);
        dns.set_srv("_rpyc._tcp.wrong", 60, &[(0, 0, port, "impostor")]);
        let tls = || TlsClientConfig::from_dir(dir.path(), "alice").unwrap();

        let conn = step(
            "connect",
            ClientBuilder::new().dns(vec![dns.addr()]).tls(tls()).connect("srv://_rpyc._tcp.tls.rpyc.test"),
        )
        .await
        .unwrap();
        let who: Option<String> =
            step("whoami", async { conn.root().await?.call_method("whoami", ()).await }).await.unwrap();
        assert_eq!(who.as_deref(), Some("alice"));
        conn.close().await;

        // The certificate does not name impostor.rpyc.test: refused.
        let err = step(
            "connect to impostor",
            ClientBuilder::new().dns(vec![dns.addr()]).tls(tls()).connect("srv://_rpyc._tcp.wrong.rpyc.test"),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("impostor.rpyc.test"), "{err}");
    })
    .await;
}
