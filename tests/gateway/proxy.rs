//! The gateway behind a proxy: PROXY protocol headers exactly as HAProxy
//! writes them (`send-proxy`: v1 text; `send-proxy-v2`: the 12-byte
//! signature, PROXY and LOCAL commands, TCP4/TCP6, TLVs) in front of a real
//! TLS client, a Python rpyc 6.0.2 server behind. The audit trail and the
//! per-address limit must see the client's address; a connection without a
//! valid header is refused; a listener without the option trusts no header.

use crate::*;
use rpyc::transport::tls::connect_tls_stream;
use std::net::IpAddr;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// HAProxy's `send-proxy` line for a TCP4 client.
const V1_TCP4: &[u8] = b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 443\r\n";

/// HAProxy's `send-proxy-v2` header: signature, version 2 and `command`
/// (0 LOCAL, 1 PROXY), family/protocol byte, length, addresses, TLVs.
fn v2(command: u8, src: SocketAddr, dst: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    let mut body = Vec::new();
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.push(0x11); // AF_INET, STREAM
            body.extend(s.octets());
            body.extend(d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            h.push(0x21); // AF_INET6, STREAM
            body.extend(s.octets());
            body.extend(d.octets());
        }
        _ => panic!("mixed families"),
    }
    body.extend(src.port().to_be_bytes());
    body.extend(dst.port().to_be_bytes());
    body.extend(tlvs);
    h.extend(u16::try_from(body.len()).unwrap().to_be_bytes());
    h.extend(body);
    h
}

/// TLVs HAProxy adds with `send-proxy-v2-ssl` and `unique-id`: PP2_TYPE_SSL
/// (client flags, verify, a version sub-TLV) and PP2_TYPE_UNIQUE_ID.
const TLVS: &[u8] =
    &[0x20, 0x00, 0x0c, 0x01, 0, 0, 0, 0, 0x21, 0x00, 0x03, b'1', b'.', b'3', 0x05, 0x00, 0x02, b'i', b'd'];

/// A TCP connection to the gateway that sends `header`, then a real TLS
/// handshake presenting `name`'s certificate, then RPyC.
async fn via_proxy(gw: &Gw, pki: &Pki, name: &str, header: &[u8]) -> rpyc::Result<Connection> {
    let mut tcp = TcpStream::connect(gw.addr).await?;
    tcp.write_all(header).await?;
    let (stream, creds) = connect_tls_stream(tcp, "localhost", &pki.client(name)).await?;
    Ok(ClientBuilder::new().timeout(STEP).start(stream, creds))
}

/// Calls `get_service_name` on the (Python) upstream through `conn`.
async fn call(conn: &Connection) -> rpyc::Result<String> {
    step("call", async { conn.root().await?.call_method("get_service_name", ()).await }).await
}

fn proxied_config(pki: &Pki, port: u16, audit: &Path, limits: &str) -> String {
    format!(
        "[[listen]]\nurl = \"tls://127.0.0.1:0\"\ntls = {:?}\nproxy_protocol = true\n\n\
         [upstream.py]\nurl = \"tcp://127.0.0.1:{port}\"\n\n[audit]\nformat = \"json\"\nfile = {:?}\n\n[limits]\n{limits}\n",
        pki.dir.path().display().to_string(),
        audit.display().to_string()
    )
}

fn audit_peers(audit: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(audit).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split("\"peer\":\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
}

/// `name` once it reaches `want` (the gateway counts a refusal just after
/// the client sees it), or its value after 5 s.
async fn metric_at(gw: &Gw, name: &str, want: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v = metric(gw, name);
        if v >= want || std::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric(gw: &Gw, name: &str) -> u64 {
    let text = gw.handle.metrics_text();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
}

async fn python_server() -> (common::ChildGuard, u16) {
    blocking(|| common::python_server(&common::python6(), &["--kind", "classic"])).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_shows_the_client_behind_the_proxy() {
    bounded(async {
        let pki = Pki::new();
        let audit = pki.path("audit.jsonl");
        let (_server, port) = python_server().await;
        let gw = start_gateway(&proxied_config(&pki, port, &audit, ""), pki.dir.path()).await;
        let gw_addr = gw.addr;

        // send-proxy (v1, TCP4)
        let conn = step("v1 connect", via_proxy(&gw, &pki, "alice", V1_TCP4)).await.unwrap();
        assert_eq!(call(&conn).await.unwrap(), "SLAVE");
        // send-proxy-v2, TCP6, with TLVs (ignored)
        let v6 = v2(1, "[2001:db8::7]:40000".parse().unwrap(), "[::1]:443".parse().unwrap(), TLVS);
        let conn6 = step("v2 connect", via_proxy(&gw, &pki, "bob", &v6)).await.unwrap();
        assert_eq!(call(&conn6).await.unwrap(), "SLAVE");
        // send-proxy-v2, TCP4
        let v4 = v2(1, "198.51.100.20:61000".parse().unwrap(), gw_addr, &[]);
        let conn4 = step("v2 tcp4 connect", via_proxy(&gw, &pki, "carol", &v4)).await.unwrap();
        assert_eq!(call(&conn4).await.unwrap(), "SLAVE");
        // LOCAL (HAProxy's health check, `check-send-proxy`): the socket's address.
        let local = v2(0, "127.0.0.1:1".parse().unwrap(), gw_addr, &[]);
        let conn_local = step("v2 local connect", via_proxy(&gw, &pki, "alice", &local)).await.unwrap();
        assert_eq!(call(&conn_local).await.unwrap(), "SLAVE");

        let peers = audit_peers(&audit);
        for want in ["203.0.113.7:56324", "[2001:db8::7]:40000", "198.51.100.20:61000"] {
            assert!(peers.iter().any(|p| p == want), "{want} not in the audit trail: {peers:?}");
        }
        assert!(peers.iter().any(|p| p.starts_with("127.0.0.1:") && p != "127.0.0.1:1"), "{peers:?}");
        assert_eq!(metric(&gw, "rpyc_gateway_refused_connections_total"), 0);
        for c in [conn, conn6, conn4, conn_local] {
            c.close().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_address_limit_counts_the_client_not_the_proxy() {
    bounded(async {
        let pki = Pki::new();
        let audit = pki.path("audit.jsonl");
        let (_server, port) = python_server().await;
        let text = proxied_config(&pki, port, &audit, "max_connections_per_peer = 1");
        let gw = start_gateway(&text, pki.dir.path()).await;

        // Every connection comes from 127.0.0.1 (the "proxy"): counted by
        // socket address, the second would already be refused.
        let first = step("first", via_proxy(&gw, &pki, "alice", V1_TCP4)).await.unwrap();
        assert_eq!(call(&first).await.unwrap(), "SLAVE");
        let other = v2(1, "198.51.100.9:1234".parse().unwrap(), gw.addr, &[]);
        let second = step("another client", via_proxy(&gw, &pki, "bob", &other)).await.unwrap();
        assert_eq!(call(&second).await.unwrap(), "SLAVE");

        // The same client again (another source port): over its limit.
        let again = b"PROXY TCP4 203.0.113.7 127.0.0.1 56325 443\r\n";
        let refused = step("same client again", async {
            match via_proxy(&gw, &pki, "alice", again).await {
                Ok(c) => call(&c).await.map(|_| ()),
                Err(e) => Err(e),
            }
        })
        .await;
        assert!(refused.is_err(), "a second connection from 203.0.113.7 was served");
        assert_eq!(metric_at(&gw, "rpyc_gateway_refused_connections_total", 1).await, 1);

        // Once the first closes, the client may connect again.
        first.close().await;
        let deadline = std::time::Instant::now() + STEP;
        loop {
            let r = match via_proxy(&gw, &pki, "alice", again).await {
                Ok(c) => call(&c).await,
                Err(e) => Err(e),
            };
            if r.is_ok() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "203.0.113.7 still refused after closing: {r:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        second.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_valid_header_are_refused() {
    bounded(async {
        let pki = Pki::new();
        let audit = pki.path("audit.jsonl");
        let (_server, port) = python_server().await;
        let gw = start_gateway(&proxied_config(&pki, port, &audit, "auth_timeout_secs = 1"), pki.dir.path()).await;

        // A peer that sends nothing must not hold up anyone else.
        let _stalled = TcpStream::connect(gw.addr).await.unwrap();
        let mut refused = 0;
        for (what, header) in [
            ("no header (a TLS ClientHello first)", b"".as_slice()),
            ("v1 with a bad address", b"PROXY TCP4 203.0.113.999 127.0.0.1 56324 443\r\n".as_slice()),
            ("v1 without CRLF", b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 443\n".as_slice()),
            (
                "v2 with a bad version",
                b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c\x01\x02\x03\x04\x05\x06\x07\x08\x00\x01\x00\x02".as_slice(),
            ),
        ] {
            let r = step(what, async {
                match via_proxy(&gw, &pki, "alice", header).await {
                    Ok(c) => call(&c).await.map(|_| ()),
                    Err(e) => Err(e),
                }
            })
            .await;
            assert!(r.is_err(), "{what}: served");
            refused += 1;
        }
        let good = step("good client while one stalls", via_proxy(&gw, &pki, "alice", V1_TCP4)).await.unwrap();
        assert_eq!(call(&good).await.unwrap(), "SLAVE");
        // The stalled peer is refused at the deadline; all are counted as refused.
        let deadline = std::time::Instant::now() + STEP;
        while metric(&gw, "rpyc_gateway_refused_connections_total") < refused + 1 {
            assert!(std::time::Instant::now() < deadline, "{}", gw.handle.metrics_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(metric(&gw, "rpyc_gateway_refused_connections_total"), refused + 1);
        assert_eq!(metric(&gw, "rpyc_gateway_auth_failures_total"), 0);
        assert_eq!(audit_peers(&audit).iter().filter(|p| p.as_str() != "203.0.113.7:56324").count(), 0);
        good.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_option_a_header_is_not_trusted() {
    bounded(async {
        let pki = Pki::new();
        let audit = pki.path("audit.jsonl");
        let (_server, port) = python_server().await;
        let text = proxied_config(&pki, port, &audit, "").replace("proxy_protocol = true\n", "");
        let gw = start_gateway(&text, pki.dir.path()).await;

        let v2_header = v2(1, "203.0.113.7:56324".parse().unwrap(), gw.addr, &[]);
        for header in [V1_TCP4, v2_header.as_slice()] {
            let r = step("spoofing client", async {
                match via_proxy(&gw, &pki, "alice", header).await {
                    Ok(c) => call(&c).await.map(|_| ()),
                    Err(e) => Err(e),
                }
            })
            .await;
            let e = r.err().map(|e| e.to_string()).unwrap_or_else(|| panic!("a PROXY header was accepted"));
            assert!(e.contains("TLS"), "{e}");
        }
        // The gateway counted two failed handshakes and serves a direct client,
        // under its real address.
        assert_eq!(metric_at(&gw, "rpyc_gateway_auth_failures_total", 2).await, 2);
        let direct = rust_client(&gw, &pki, "alice").await;
        assert_eq!(call(&direct).await.unwrap(), "SLAVE");
        let peers = audit_peers(&audit);
        assert!(!peers.is_empty() && peers.iter().all(|p| p.starts_with("127.0.0.1:")), "{peers:?}");
        direct.close().await;
    })
    .await;
}
