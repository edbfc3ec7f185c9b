//! The registry protocol against real Python peers, in every role.

use crate::common::{python5, python6, serve, ChildGuard};
use crate::{
    bounded, free_port, python, python_registered_server, python_registry, python_with, wait_discovered, Proto,
};
use rpyc::registry::{
    self, Registrar, RegistrarConfig, RegistryClient, RegistryConfig, RegistryError, RegistryHandle, RegistryServer,
    ServerAddr,
};
use rpyc::{ClientBuilder, Dialect, ServerConfig};
use std::time::Duration;

/// A registry under test: Python's script or ours, over UDP or TCP.
struct Registry {
    proto: Proto,
    port: u16,
    _python: Option<ChildGuard>,
    rust: Option<RegistryHandle>,
}

impl Registry {
    async fn python(proto: Proto, listing: bool, pruning_secs: u32) -> Registry {
        let (child, port) = python_registry(proto, listing, pruning_secs).await;
        Registry { proto, port, _python: Some(child), rust: None }
    }

    async fn rust(proto: Proto, config: RegistryConfig) -> Registry {
        let server = match proto {
            Proto::Udp => RegistryServer::bind_udp("127.0.0.1:0", config).await.unwrap(),
            Proto::Tcp => RegistryServer::bind_tcp("127.0.0.1:0", config).await.unwrap(),
        };
        let port = server.local_addr().port();
        Registry { proto, port, _python: None, rust: Some(server.spawn()) }
    }

    fn client(&self) -> RegistryClient {
        self.proto.client(self.port)
    }

    /// A client that registers from 127.0.0.1, as a server bound there does.
    fn registrar_client(&self) -> RegistryClient {
        self.client().bind_ip([127, 0, 0, 1].into())
    }

    fn py_registrar(&self) -> String {
        self.proto.py_registrar(self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(h) = &self.rust {
            h.shutdown();
        }
    }
}

fn listing_config() -> RegistryConfig {
    let mut c = RegistryConfig::default();
    c.allow_listing = true;
    c
}

fn fast_registrar() -> RegistrarConfig {
    let mut c = RegistrarConfig::default();
    c.interval = Duration::from_millis(300);
    c.retry = Duration::from_millis(100);
    c
}

const PY_IMPORTS: &str = "import sys, rpyc\nfrom rpyc.utils.registry import UDPRegistryClient, TCPRegistryClient\n";

/// Both directions through one registry:
/// a Rust server registers and Python discovers, connects and lists it;
/// a Python server registers and Rust discovers and connects to it.
async fn both_directions(reg: Registry) {
    // Rust server → Python client.
    let service = rpyc::conformance::service();
    let (addr, stop) = serve(service.clone(), ServerConfig::default()).await;
    let registrar =
        Registrar::start_with(reg.registrar_client(), service.aliases().to_vec(), addr.port(), fast_registrar());
    assert!(registrar.wait_registered(Duration::from_secs(10)).await, "the registry never acknowledged");

    let code = format!(
        "{PY_IMPORTS}reg = {}\n\
         print('FOUND', sorted(rpyc.discover('conformance', registrar=reg)))\n\
         c = rpyc.connect_by_service('Conformance', registrar=reg)\n\
         print('ANSWER', c.root.get_answer())\n\
         print('LIST', sorted(rpyc.list_services(registrar=reg)))\n",
        reg.py_registrar()
    );
    let (ok, out) = python(&code, &[]).await;
    assert!(ok, "{out}");
    assert!(out.contains(&format!("FOUND [('127.0.0.1', {})]", addr.port())), "{out}");
    assert!(out.contains("ANSWER 42"), "{out}");
    assert!(out.contains("'CONFORMANCE'"), "{out}");

    // Python server → Rust client.
    let (_py_server, py_port) = python_registered_server(python6(), reg.proto, reg.port);
    let client = reg.client();
    wait_discovered(&client, "pyecho", py_port).await;
    assert_eq!(client.discover("ECHO2").await.unwrap(), vec![ServerAddr::new("127.0.0.1", py_port)]);
    let conn = registry::connect_by_service(&client, "PyEcho", ClientBuilder::new()).await.unwrap();
    let answer: i64 = conn.root().await.unwrap().call_method("get_answer", ()).await.unwrap();
    assert_eq!(answer, 42);
    conn.close().await;

    // Listing, with and without a host filter.
    let names = registry::list_services(&client, None).await.unwrap();
    for n in ["CONFORMANCE", "PYECHO", "ECHO2"] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
    assert_eq!(client.list(Some("127.0.0.1")).await.unwrap().len(), names.len());
    assert!(client.list(Some("10.99.99.99")).await.unwrap().is_empty());

    // Unregistering on stop: Python no longer finds the Rust server.
    registrar.stop().await;
    let code = format!(
        "{PY_IMPORTS}from rpyc.utils.factory import DiscoveryError\nreg = {}\n\
         try:\n    print('FOUND', rpyc.discover('CONFORMANCE', registrar=reg))\n\
         except DiscoveryError as e:\n    print('NOTFOUND', e)\n",
        reg.py_registrar()
    );
    let (ok, out) = python(&code, &[]).await;
    assert!(ok && out.contains("NOTFOUND"), "{out}");
    assert!(matches!(registry::discover(&client, "conformance").await, Err(RegistryError::NotFound { .. })));
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_registry_udp_serves_rust_and_python_in_both_roles() {
    bounded(async { both_directions(Registry::python(Proto::Udp, true, 240).await).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_registry_tcp_serves_rust_and_python_in_both_roles() {
    bounded(async { both_directions(Registry::python(Proto::Tcp, true, 240).await).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_registry_udp_serves_rust_and_python_in_both_roles() {
    bounded(async { both_directions(Registry::rust(Proto::Udp, listing_config()).await).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_registry_tcp_serves_rust_and_python_in_both_roles() {
    bounded(async { both_directions(Registry::rust(Proto::Tcp, listing_config()).await).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_5_peers_and_the_rust_registry() {
    bounded(async {
        let reg = Registry::rust(Proto::Udp, listing_config()).await;
        // An rpyc 5.3.1 server registers; Rust finds it and speaks 5.x to it.
        let (_py, py_port) = python_registered_server(python5(), Proto::Udp, reg.port);
        let client = reg.client();
        wait_discovered(&client, "PYECHO", py_port).await;
        let conn =
            registry::connect_by_service(&client, "pyecho", ClientBuilder::new().dialect(Dialect::V5)).await.unwrap();
        let answer: i64 = conn.root().await.unwrap().call_method("get_answer", ()).await.unwrap();
        assert_eq!(answer, 42);
        // rpyc 5.3.1's discover finds a Rust-registered server.
        let registrar = Registrar::start(reg.registrar_client(), vec!["RUSTY".into()], 4242);
        assert!(registrar.wait_registered(Duration::from_secs(10)).await);
        let code = format!("{PY_IMPORTS}print('FOUND', rpyc.discover('rusty', registrar={}))", reg.py_registrar());
        let (ok, out) = python_with(python5(), &code, &[]).await;
        assert!(ok && out.contains("FOUND (('127.0.0.1', 4242),)"), "{out}");
        registrar.stop().await;
    })
    .await;
}

/// LIST is refused unless allowed: `None` on the wire, `ForbiddenError` in
/// Python, [`RegistryError::ListingDisabled`] in Rust.
async fn listing_refused(reg: Registry) {
    let client = reg.client();
    client.register(&["HIDDEN".into()], 1234).await.unwrap();
    match client.list(None).await {
        Err(RegistryError::ListingDisabled { registry }) => {
            assert!(registry.contains(&reg.port.to_string()))
        }
        other => panic!("expected ListingDisabled, got {other:?}"),
    }
    // QUERY still works.
    assert_eq!(client.discover("hidden").await.unwrap().len(), 1);
    let code = format!(
        "{PY_IMPORTS}from rpyc.utils.factory import ForbiddenError\n\
         try:\n    print('LIST', rpyc.list_services(registrar={}))\n\
         except ForbiddenError as e:\n    print('FORBIDDEN', e)\n",
        reg.py_registrar()
    );
    let (ok, out) = python(&code, &[]).await;
    assert!(ok && out.contains("FORBIDDEN"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_is_refused_unless_allowed() {
    bounded(async {
        listing_refused(Registry::python(Proto::Udp, false, 240).await).await;
        listing_refused(Registry::rust(Proto::Udp, RegistryConfig::default()).await).await;
        listing_refused(Registry::rust(Proto::Tcp, RegistryConfig::default()).await).await;
    })
    .await;
}

/// A registration that is not refreshed disappears after the pruning
/// timeout; one that is refreshed stays.
async fn pruning(reg: Registry) {
    let client = reg.registrar_client();
    client.register(&["ONCE".into()], 1111).await.unwrap();
    let registrar = Registrar::start_with(client.clone(), vec!["KEPT".into()], 2222, fast_registrar());
    assert!(registrar.wait_registered(Duration::from_secs(10)).await);
    assert_eq!(client.discover("once").await.unwrap(), vec![ServerAddr::new("127.0.0.1", 1111)]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(client.discover("once").await.unwrap().is_empty(), "ONCE should have been pruned");
    assert_eq!(client.discover("kept").await.unwrap(), vec![ServerAddr::new("127.0.0.1", 2222)]);
    // Python's discover agrees.
    let code = format!(
        "{PY_IMPORTS}from rpyc.utils.factory import DiscoveryError\nreg = {}\n\
         print('KEPT', rpyc.discover('KEPT', registrar=reg))\n\
         try:\n    print('ONCE', rpyc.discover('ONCE', registrar=reg))\n\
         except DiscoveryError:\n    print('ONCE pruned')\n",
        reg.py_registrar()
    );
    let (ok, out) = python(&code, &[]).await;
    assert!(ok && out.contains("KEPT (('127.0.0.1', 2222),)") && out.contains("ONCE pruned"), "{out}");
    registrar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_pruned_after_the_timeout() {
    bounded(async {
        let mut config = RegistryConfig::default();
        config.pruning_timeout = Duration::from_secs(1);
        pruning(Registry::rust(Proto::Udp, config).await).await;
        pruning(Registry::python(Proto::Udp, false, 1).await).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_by_service_skips_dead_servers() {
    bounded(async {
        let reg = Registry::rust(Proto::Udp, listing_config()).await;
        let client = reg.registrar_client();
        let (addr, stop) = serve(rpyc::conformance::service(), ServerConfig::default()).await;
        let dead1 = free_port(Proto::Tcp);
        let dead2 = free_port(Proto::Tcp);
        // Python tries the oldest registration first, Rust the newest: a dead
        // server on either side of the live one is skipped by both.
        client.register(&["MIXED".into()], dead1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.register(&["MIXED".into()], addr.port()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.register(&["MIXED".into()], dead2).await.unwrap();
        let conn = registry::connect_by_service(&client, "mixed", ClientBuilder::new()).await.unwrap();
        let answer: i64 = conn.root().await.unwrap().call_method("get_answer", ()).await.unwrap();
        assert_eq!(answer, 42);
        let code = format!(
            "{PY_IMPORTS}c = rpyc.connect_by_service('MIXED', registrar={})\nprint('ANSWER', c.root.get_answer())\n",
            reg.py_registrar()
        );
        let (ok, out) = python(&code, &[]).await;
        assert!(ok && out.contains("ANSWER 42"), "{out}");

        // All dead: the error names every server tried.
        client.register(&["DEAD".into()], dead1).await.unwrap();
        client.register(&["DEAD".into()], dead2).await.unwrap();
        match registry::connect_by_service(&client, "dead", ClientBuilder::new()).await {
            Err(e @ RegistryError::AllDown { .. }) => {
                let text = e.to_string();
                assert!(text.contains(&dead1.to_string()) && text.contains(&dead2.to_string()), "{text}");
            }
            Err(e) => panic!("expected AllDown, got {e}"),
            Ok(_) => panic!("expected AllDown, got a connection"),
        }
        stop.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_report_missing_registries_and_services() {
    bounded(async {
        // Nothing listens: UDP reports "no registry answered" (fast, thanks
        // to the ICMP port-unreachable on loopback), TCP the refusal.
        let nobody = free_port(Proto::Udp);
        let started = std::time::Instant::now();
        let err = Proto::Udp.client(nobody).discover("x").await.unwrap_err();
        assert!(matches!(err, RegistryError::NoReply { .. }), "{err}");
        assert!(err.to_string().contains("no registry answered"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
        let err = Proto::Tcp.client(free_port(Proto::Tcp)).discover("x").await.unwrap_err();
        assert!(matches!(err, RegistryError::Io { .. }), "{err}");

        let reg = Registry::rust(Proto::Udp, RegistryConfig::default()).await;
        let err = registry::discover(&reg.client(), "nothing-here").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no servers exposing 'nothing-here' were found (registry udp://127.0.0.1:{})", reg.port)
        );
        assert!(RegistryClient::udp("host:notaport").is_err());
        assert!(RegistryClient::tcp("tcp://host:1").is_err());
    })
    .await;
}

/// Sends raw datagrams to the registry.
async fn send_raw(port: u16, datagrams: &[Vec<u8>]) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for d in datagrams {
        sock.send_to(d, ("127.0.0.1", port)).await.unwrap();
    }
}

fn request(cmd: &str, args: rpyc::Value) -> Vec<u8> {
    use rpyc::Value;
    rpyc::wire::brine::encode(&Value::Tuple(vec![Value::from("RPYC"), Value::from(cmd), args]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_datagrams_are_dropped_and_floods_are_bounded() {
    use rpyc::Value;
    bounded(async {
        let mut config = listing_config();
        config.max_entries = 50;
        config.max_entries_per_host = 20;
        let reg = Registry::rust(Proto::Udp, config).await;
        let handle = reg.rust.clone().unwrap();
        let t = Value::Tuple;
        let deep = (0..30).fold(Value::None, |v, _| t(vec![v]));
        let junk = vec![
            vec![],
            b"\xff\xfe\xfd".to_vec(),
            vec![0x41; 3000], // larger than a registry datagram
            rpyc::wire::brine::encode(&t(vec!["XXXX".into(), "QUERY".into(), t(vec!["a".into()])])),
            request("BOGUS", t(vec![])),
            request("QUERY", t(vec![1.into()])),
            request("REGISTER", t(vec!["NOTATUPLE".into(), 1.into()])),
            request("REGISTER", t(vec![t((0..100).map(|i| Value::from(format!("A{i}"))).collect()), 1.into()])),
            request("REGISTER", t(vec![t(vec![Value::from("N".repeat(500))]), 1.into()])),
            request("REGISTER", t(vec![t(vec!["X".into()]), 70000.into()])),
            request("REGISTER", t(vec![t(vec!["X".into()]), Value::from("/tmp/unix.sock")])),
            request("QUERY", deep),
        ];
        send_raw(reg.port, &junk).await;
        // Still serving, nothing registered.
        let client = reg.client();
        assert!(client.discover("X").await.unwrap().is_empty());
        assert!(handle.services().is_empty(), "{:?}", handle.services());

        // A flood of registrations from one address fills its share only.
        let flood: Vec<Vec<u8>> =
            (0..1000).map(|i| request("REGISTER", t(vec![t(vec![Value::from(format!("F{i}"))]), 1.into()]))).collect();
        send_raw(reg.port, &flood).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let total: usize = handle.services().iter().map(|(_, s)| s.len()).sum();
        assert_eq!(total, 20, "entries from one host");
        // Refreshing an existing entry still works; a new one is refused
        // without a reply, so the client reports no answer.
        let first = handle.services()[0].0.clone();
        client.register(&[first], 1).await.unwrap();
        let refused = client.clone().timeout(Duration::from_millis(300)).register(&["ONE_MORE".into()], 1).await;
        assert!(matches!(refused, Err(RegistryError::NoReply { .. })), "{refused:?}");
        assert!(client.list(None).await.unwrap().len() <= 20);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_registry_drops_silent_and_oversized_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    bounded(async {
        let mut config = listing_config();
        config.tcp_timeout = Duration::from_millis(300);
        config.max_tcp_connections = 4;
        let reg = Registry::rust(Proto::Tcp, config).await;
        // Silent clients occupy every slot, then time out.
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(tokio::net::TcpStream::connect(("127.0.0.1", reg.port)).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for s in &mut idle {
            let mut buf = [0u8; 16];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap_or(0);
            assert_eq!(n, 0, "a silent client gets no answer, just the close");
        }
        // An oversized request is cut off unanswered.
        let mut big = tokio::net::TcpStream::connect(("127.0.0.1", reg.port)).await.unwrap();
        let _ = big.write_all(&vec![0x15; 5000]).await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), big.read_to_end(&mut buf)).await.unwrap();
        assert!(buf.is_empty());
        // And the registry still serves.
        let client = reg.client();
        client.register(&["AFTER".into()], 7).await.unwrap();
        assert_eq!(client.discover("after").await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_registrar_unregisters() {
    bounded(async {
        let reg = Registry::rust(Proto::Udp, RegistryConfig::default()).await;
        let registrar = Registrar::start(reg.registrar_client(), vec!["DROPPED".into()], 5555);
        assert!(registrar.wait_registered(Duration::from_secs(10)).await);
        assert_eq!(registrar.registrations(), 1);
        drop(registrar);
        let client = reg.client();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !client.discover("dropped").await.unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never unregistered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// One raw request, one reply (or `None` after a short wait).
async fn exchange_raw(port: u16, datagram: &[u8]) -> Option<Vec<u8>> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(datagram, ("127.0.0.1", port)).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await.ok()?.ok()?;
    Some(buf[..n].to_vec())
}

/// The amplification an attacker gets from a spoofed datagram: the reply a
/// UDP registry sends is at most 3 times the request, or 128 bytes, however
/// much it knows; a Python client still loads the (cut) answer, and a TCP
/// registry, which a spoofer cannot use, still answers in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_replies_do_not_amplify_spoofed_requests() {
    use rpyc::Value;
    bounded(async {
        let t = Value::Tuple;
        let names: Vec<String> = (0..60).map(|i| format!("SERVICE_NUMBER_{i:02}")).collect();
        let fill = |client: RegistryClient| {
            let names = names.clone();
            async move {
                for chunk in names.chunks(10) {
                    client.register(chunk, 1).await.unwrap();
                }
                for p in 2..40u16 {
                    client.register(&["BIG".into()], p).await.unwrap();
                }
            }
        };
        let reg = Registry::rust(Proto::Udp, listing_config()).await;
        fill(reg.client()).await;

        // LIST: 16 bytes in (what Python's client sends), at most 128 out
        // (it was 4,015: 250x).
        let list = request("LIST", t(vec![t(vec![Value::None])]));
        assert_eq!(list.len(), 16);
        let reply = exchange_raw(reg.port, &list).await.expect("LIST answered");
        assert!(reply.len() <= 128, "LIST reply of {} bytes to a 16-byte request", reply.len());
        let kept = rpyc::wire::brine::decode_default(&reply).unwrap();
        let kept = kept.as_tuple().unwrap().len();
        assert!(kept > 0 && kept < 60, "{kept}");

        // QUERY: a long (143-byte) request gets at most 3x back.
        let long_name = "Q".repeat(124);
        let query = request("QUERY", t(vec![Value::from(long_name.as_str())]));
        assert_eq!(query.len(), 143);
        let reply = exchange_raw(reg.port, &query).await.expect("QUERY answered");
        assert!(reply.len() <= 3 * 143);
        let query = request("QUERY", t(vec![Value::from("BIG")]));
        let reply = exchange_raw(reg.port, &query).await.expect("QUERY answered");
        assert!(reply.len() <= 128.max(3 * query.len()), "QUERY reply of {} bytes", reply.len());

        // The Rust client gets what fits (the newest servers), Python too.
        let found = reg.client().discover("big").await.unwrap();
        assert!(!found.is_empty() && found.len() < 38, "{}", found.len());
        assert!(found.iter().any(|s| s.port == 39), "the newest registration is kept: {found:?}");
        let code = format!(
            "{PY_IMPORTS}reg = {}\nprint('FOUND', len(reg.discover('BIG')))\nprint('LISTED', len(reg.list()))\n",
            reg.py_registrar()
        );
        let (ok, out) = python(&code, &[]).await;
        assert!(ok, "{out}");
        assert!(out.contains(&format!("FOUND {}", found.len())), "{out}");
        assert!(out.contains(&format!("LISTED {kept}")), "{out}");

        // Over TCP the whole answer comes back.
        let tcp = Registry::rust(Proto::Tcp, listing_config()).await;
        let client = tcp.client();
        fill(client.clone()).await;
        assert_eq!(client.list(None).await.unwrap().len(), 61);
        assert_eq!(client.discover("big").await.unwrap().len(), 38);
    })
    .await;
}
