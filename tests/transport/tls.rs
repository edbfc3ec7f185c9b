//! TLS transport tests: Rust ↔ Rust and Rust ↔ Python rpyc 6.0.2 over
//! mutual TLS, the TLS 1.3 session-ticket trap, every refusal with a clear
//! message (on the side that can say it) and a server that keeps serving
//! afterwards, and certificate reload.
//!
//! Certificates are generated at test time (`rpyc::certs`) into temporary
//! directories; servers bind 127.0.0.1 port 0; every wait is bounded.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;
use rpyc::certs::{self, CertKeyPem, DevCa};
use rpyc::identity::TransportKind;
use rpyc::transport::tls::{connect_tls, ClientAuth, TlsAcceptor, TlsClientConfig, TlsIdentity, TlsServerConfig};
use rpyc::transport::Listener;
use rpyc::{ClientBuilder, Connection, Server, ServerConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Deadline for a whole test.
const DEADLINE: Duration = Duration::from_secs(120);
/// Deadline for one step (a connect, a call, an accept).
const STEP: Duration = Duration::from_secs(15);

async fn bounded<F: std::future::Future<Output = ()>>(body: F) {
    tokio::time::timeout(DEADLINE, body).await.unwrap_or_else(|_| panic!("test did not finish within {DEADLINE:?}"));
}

async fn step<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f).await.unwrap_or_else(|_| panic!("{what}: no answer within {STEP:?}"))
}

/// A development PKI on disk: `rpyc certs init` plus client `alice`.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        certs::init_dir(dir.path(), &[]).unwrap();
        certs::client_cert(dir.path(), "alice").unwrap();
        Pki { dir }
    }
    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
    fn arg(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }
    fn ca(&self) -> DevCa {
        DevCa::load(self.dir.path()).unwrap()
    }
    fn server_config(&self) -> TlsServerConfig {
        TlsServerConfig::from_dir(self.dir.path()).unwrap()
    }
    /// Trusts this CA and presents `name`'s certificate.
    fn client(&self, name: &str) -> TlsClientConfig {
        TlsClientConfig::from_dir(self.dir.path(), name).unwrap()
    }
    /// Trusts this CA, presents no certificate.
    fn anonymous_client(&self) -> TlsClientConfig {
        TlsClientConfig::new().with_ca_file(self.path("ca.pem")).unwrap()
    }
    /// Trusts this CA and presents an in-memory certificate.
    fn client_with(&self, cert: &CertKeyPem) -> TlsClientConfig {
        self.anonymous_client()
            .with_identity(TlsIdentity::from_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap())
    }
}

/// Serves CONFORMANCE on a TLS listener.
async fn serve_tls(listener: Listener) -> (SocketAddr, rpyc::server::ShutdownHandle) {
    let addr = listener.local_addr().unwrap();
    let server = Server::new(rpyc::conformance::service(), ServerConfig::default()).listen(listener);
    (addr, server.spawn())
}

async fn tls_conn(addr: SocketAddr, config: TlsClientConfig) -> rpyc::Result<Connection> {
    ClientBuilder::new().tls(config).connect(&addr.to_string()).await
}

async fn whoami(conn: &Connection) -> rpyc::Result<Option<String>> {
    conn.root().await?.call_method("whoami", ()).await
}

/// Connects, asks `whoami()` and closes: the good client every negative
/// test runs after the bad one.
async fn assert_serves(addr: SocketAddr, config: TlsClientConfig, expect: &str) {
    let conn = step("good client connect", tls_conn(addr, config)).await.unwrap();
    let who = step("good client whoami", whoami(&conn)).await.unwrap();
    assert_eq!(who.as_deref(), Some(expect));
    conn.close().await;
}

/// Runs a blocking child-process helper off the runtime threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn assert_mentions(err: &str, needles: &[&str]) {
    for n in needles {
        assert!(err.contains(n), "error does not mention {n:?}: {err}");
    }
}

// ---------------------------------------------------------------------------
// happy paths
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_rust_server_mutual_tls() {
    bounded(async {
        let pki = Pki::new();
        let (addr, stop) = serve_tls(Listener::tls("127.0.0.1:0", &pki.server_config()).await.unwrap()).await;

        // ClientBuilder::tls + an IP address (the dev server cert names 127.0.0.1).
        let conn = step("connect", tls_conn(addr, pki.client("alice"))).await.unwrap();
        assert_eq!(step("whoami", whoami(&conn)).await.unwrap().as_deref(), Some("alice"));
        let sum: i64 = step("add", async { conn.root().await?.call_method("add", (5, 10)).await }).await.unwrap();
        assert_eq!(sum, 15);
        let creds = conn.credentials();
        assert_eq!(creds.transport, TransportKind::Tls);
        let server_cert = creds.certificate.as_ref().expect("server certificate");
        assert!(server_cert.subject_alt_names.iter().any(|n| n == "127.0.0.1"));
        assert_eq!(server_cert.sha256_fingerprint.len(), 64);
        conn.close().await;

        // connect_tls + ClientBuilder::start, by name, with the default client certificate.
        let localhost = format!("localhost:{}", addr.port());
        let (stream, creds) = step("connect_tls", connect_tls(&localhost, &pki.client("client"))).await.unwrap();
        let conn = ClientBuilder::new().start(stream, creds);
        assert_eq!(step("whoami", whoami(&conn)).await.unwrap().as_deref(), Some("client"));
        conn.close().await;
        stop.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_conformance_over_mutual_tls() {
    bounded(async {
        let pki = Pki::new();
        let (addr, stop) = serve_tls(Listener::tls("127.0.0.1:0", &pki.server_config()).await.unwrap()).await;
        let mut cmd = Command::new(common::python6());
        cmd.arg(common::script("conformance_client.py"))
            .args(["--port", &addr.port().to_string()])
            .args(["--ssl-key", &pki.arg("alice.key")])
            .args(["--ssl-cert", &pki.arg("alice.pem")])
            .args(["--ssl-ca", &pki.arg("ca.pem")])
            .args(["--expect-identity", "alice"])
            .args(["--only", "seeds,identity,callbacks,events,counter"]);
        let (ok, out) = blocking(move || common::run_with_timeout(cmd, Duration::from_secs(90))).await;
        assert!(ok, "conformance_client.py over TLS failed:\n{out}");
        assert!(out.contains("checks:"), "{out}");
        stop.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_python_ssl_server() {
    bounded(async {
        let pki = Pki::new();
        let args = [
            "--kind".to_string(),
            "service".into(),
            "--ssl-key".into(),
            pki.arg("server.key"),
            "--ssl-cert".into(),
            pki.arg("server.pem"),
            "--ssl-ca".into(),
            pki.arg("ca.pem"),
        ];
        let (child, port) = blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            common::python_server(&common::python6(), &args)
        })
        .await;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

        let conn = step("connect to Python", tls_conn(addr, pki.client("alice"))).await.unwrap();
        let root = step("root", conn.root()).await.unwrap();
        let sum: i64 = step("add", root.call_method("add", (2, 3))).await.unwrap();
        assert_eq!(sum, 5);
        let who: Option<String> = step("whoami", root.call_method("whoami", ())).await.unwrap();
        assert_eq!(who.as_deref(), Some("alice"));
        conn.close().await;

        // The Python server refuses a client without a certificate, and the
        // refusal reads well on our side.
        let err = match step("connect without cert", tls_conn(addr, pki.anonymous_client())).await {
            Err(e) => e.to_string(),
            Ok(conn) => step("call without cert", whoami(&conn))
                .await
                .expect_err("a Python SSLAuthenticator server must refuse a client without certificate")
                .to_string(),
        };
        assert_mentions(&err, &["client certificate"]);
        drop(child);
    })
    .await;
}

/// The TLS 1.3 session-ticket trap (see `rpyc::transport::tls`): a Python
/// client that starts `BgServingThread` right after `ssl_connect` must get
/// the reply to its first call, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_first_call_after_bg_serving_thread() {
    bounded(async {
        let pki = Pki::new();
        let config = pki.server_config();
        assert_eq!(config.send_tls13_tickets, 0, "the default must send no tickets");
        let (addr, stop) = serve_tls(Listener::tls("127.0.0.1:0", &config).await.unwrap()).await;
        let mut cmd = Command::new(common::python6());
        cmd.arg(common::script("tls_first_call.py"))
            .args(["--port", &addr.port().to_string()])
            .args(["--ssl-key", &pki.arg("client.key")])
            .args(["--ssl-cert", &pki.arg("client.pem")])
            .args(["--ssl-ca", &pki.arg("ca.pem")])
            .args(["--rounds", "20", "--timeout", "5"]);
        let (ok, out) = blocking(move || common::run_with_timeout(cmd, Duration::from_secs(100))).await;
        assert!(ok, "first call after BgServingThread lost its reply:\n{out}");
        assert!(out.contains("checks: 20 ok"), "{out}");
        stop.shutdown();
    })
    .await;
}

/// One request frame, built by hand: boxed args are `(LABEL_TUPLE, (...))`.
fn raw_request(seq: i64, handler: rpyc::wire::message::Handler, args: Vec<rpyc::wire::Value>) -> Vec<u8> {
    use rpyc::wire::{message, Value};
    let boxed = |v: Value| Value::Tuple(vec![Value::from(1), v]);
    let body = Value::Tuple(vec![Value::from(handler.id()), boxed(Value::Tuple(args))]);
    let mut payload = Vec::new();
    message::encode_message(message::Dialect::V6, message::MSG_REQUEST, seq, &body, &mut payload);
    rpyc::channel::encode_frame(&payload, &rpyc::channel::ChannelConfig::default())
}

/// Reads and decodes one message from a raw TLS client stream.
async fn read_message(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> rpyc::wire::message::Message {
    use rpyc::channel::{ChannelConfig, FrameReader};
    let mut reader = FrameReader::new(tls, ChannelConfig::default());
    let frame = step("reply", reader.read_frame()).await.unwrap().expect("a reply, not EOF");
    rpyc::wire::message::decode_message(rpyc::wire::message::Dialect::V6, &frame, &rpyc::wire::DecodeLimits::default())
        .unwrap()
}

/// Hundreds of requests inside one TLS record (a client that batches its
/// writes, unlike our own one-frame-per-record writer): the server must
/// answer every one, not just the first frame of each record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_requests_pipelined_in_one_tls_record_are_all_answered() {
    use rpyc::channel::ChannelConfig;
    use rpyc::wire::message::{Dialect, Handler, MSG_REPLY};
    use rpyc::wire::Value;
    bounded(async {
        let pki = Pki::new();
        let (addr, stop) = serve_tls(Listener::tls("127.0.0.1:0", &pki.server_config()).await.unwrap()).await;
        // A plain tokio-rustls client: its writes become records as they are.
        let client = pki.client("alice");
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = client.server_name_for(&addr.to_string()).unwrap();
        let mut tls =
            step("handshake", tokio_rustls::TlsConnector::from(client.to_rustls().unwrap()).connect(name, tcp))
                .await
                .unwrap();

        tls.write_all(&raw_request(1, Handler::GetRoot, vec![])).await.unwrap();
        tls.flush().await.unwrap();
        let root = read_message(&mut tls).await;
        let root_pack = match root.args {
            Value::Tuple(t) if t.len() == 2 => t[1].clone(),
            other => panic!("unexpected root reply {other:?}"),
        };

        const N: i64 = 200;
        let mut batch = Vec::new();
        for i in 0..N {
            let target = Value::Tuple(vec![Value::from(3), root_pack.clone()]);
            let call = vec![
                target,
                Value::Tuple(vec![Value::from(1), Value::from("add")]),
                Value::Tuple(vec![Value::from(1), Value::Tuple(vec![Value::from(i), Value::from(1)])]),
                Value::Tuple(vec![Value::from(1), Value::Tuple(vec![])]),
            ];
            let mut payload = Vec::new();
            let body = Value::Tuple(vec![
                Value::from(Handler::CallAttr.id()),
                Value::Tuple(vec![Value::from(2), Value::Tuple(call)]),
            ]);
            rpyc::wire::message::encode_message(
                Dialect::V6,
                rpyc::wire::message::MSG_REQUEST,
                100 + i,
                &body,
                &mut payload,
            );
            batch.extend(rpyc::channel::encode_frame(&payload, &ChannelConfig::default()));
        }
        // rustls seals up to 16 KiB of plaintext per record.
        assert!(batch.len() < 16 << 10, "the batch must fit one record: {} bytes", batch.len());
        tls.write_all(&batch).await.unwrap();
        tls.flush().await.unwrap();

        let mut answered = std::collections::HashSet::new();
        while answered.len() < N as usize {
            let m = read_message(&mut tls).await;
            assert_eq!(m.kind, MSG_REPLY, "{m:?}");
            let i = m.seq - 100;
            assert_eq!(m.args, Value::Tuple(vec![Value::from(1), Value::from(i + 1)]));
            answered.insert(m.seq);
        }
        stop.shutdown();
    })
    .await;
}

// ---------------------------------------------------------------------------
// refusals: a clear error, then the next good client is served
// ---------------------------------------------------------------------------

/// Accepts one peer by hand on a TLS listener and returns the server-side
/// handshake error, while `bad_client` runs against it and returns its own
/// error; then serves the listener and checks a good client gets in.
async fn refused_then_served<F, Fut>(pki: &Pki, bad_client: F) -> (String, String)
where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = String> + Send + 'static,
{
    let listener = Listener::tls("127.0.0.1:0", &pki.server_config()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(bad_client(addr));
    let incoming = step("accept", listener.accept()).await.unwrap();
    let server_err = match step("server handshake", incoming.handshake()).await {
        Ok((_, creds)) => panic!("server accepted the bad client as {creds:?}"),
        Err(e) => e.to_string(),
    };
    let client_err = step("bad client", client).await.unwrap();
    let (addr2, stop) = serve_tls(listener).await;
    assert_eq!(addr, addr2);
    assert_serves(addr, pki.client("alice"), "alice").await;
    stop.shutdown();
    (server_err, client_err)
}

/// A Rust TLS client's error: from connecting, or (TLS 1.3 refusals of the
/// client certificate arrive after the client's handshake) from the first call.
async fn rust_client_error(addr: SocketAddr, config: TlsClientConfig) -> String {
    match tls_conn(addr, config).await {
        Err(e) => e.to_string(),
        Ok(conn) => match tokio::time::timeout(STEP, whoami(&conn)).await {
            Ok(Ok(who)) => panic!("bad client was served as {who:?}"),
            Ok(Err(e)) => e.to_string(),
            Err(_) => panic!("bad client's first call neither failed nor succeeded"),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_client_without_certificate() {
    bounded(async {
        let pki = Pki::new();
        let config = pki.anonymous_client();
        let (server, client) = refused_then_served(&pki, move |a| rust_client_error(a, config)).await;
        assert_mentions(&server, &["presented no certificate", "requires one"]);
        assert_mentions(&client, &["requires a client certificate"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_certificate_from_another_ca() {
    bounded(async {
        let pki = Pki::new();
        let other = DevCa::generate().unwrap().client_cert("mallory").unwrap();
        let config = pki.client_with(&other);
        let (server, client) = refused_then_served(&pki, move |a| rust_client_error(a, config)).await;
        assert_mentions(&server, &["client certificate", "not signed by a trusted CA"]);
        assert_mentions(&client, &["does not trust our client certificate"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_expired_certificate() {
    bounded(async {
        let pki = Pki::new();
        let expired = pki.ca().expired_client_cert("old").unwrap();
        let config = pki.client_with(&expired);
        let (server, client) = refused_then_served(&pki, move |a| rust_client_error(a, config)).await;
        assert_mentions(&server, &["client certificate expired", "rpyc certs client"]);
        assert_mentions(&client, &["expired"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_wrong_server_name() {
    bounded(async {
        let pki = Pki::new();
        let config = pki.client("alice").with_server_name("wrong.example");
        let (server, client) = refused_then_served(&pki, move |a| rust_client_error(a, config)).await;
        assert_mentions(&client, &["TLS handshake", "not valid for 'wrong.example'", "localhost", "127.0.0.1"]);
        assert_mentions(&server, &["client rejected this server's certificate"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_plain_tcp_bytes() {
    bounded(async {
        let pki = Pki::new();
        // An HTTP request: the connection is closed (possibly after an alert),
        // never answered with data.
        let (server, client) = refused_then_served(&pki, |addr| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            format!("closed after {} bytes", buf.len())
        })
        .await;
        assert_mentions(&server, &["does not speak TLS", "rpyc.ssl_connect"]);
        assert!(client.starts_with("closed"), "{client}");

        // A plain RPyC client: its first call fails, the server says why.
        let (server, client) = refused_then_served(&pki, |addr| async move {
            match rpyc::connect(&addr.to_string()).await {
                Err(e) => e.to_string(),
                Ok(conn) => match tokio::time::timeout(STEP, conn.root()).await {
                    Ok(Ok(_)) => panic!("a plain RPyC client was served by the TLS listener"),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => panic!("plain client's first call hung"),
                },
            }
        })
        .await;
        assert_mentions(&server, &["does not speak TLS"]);
        assert!(!client.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_to_plain_tcp_server() {
    bounded(async {
        let pki = Pki::new();
        // A Rust RPyC server: closes on the TLS hello (it reads as an
        // oversized frame).
        let (addr, stop) = common::serve(rpyc::conformance::service(), ServerConfig::default()).await;
        let err = step("TLS to plain Rust server", tls_conn(addr, pki.client("alice")))
            .await
            .map(|_| ())
            .expect_err("TLS handshake with a plain TCP server must fail")
            .to_string();
        assert_mentions(&err, &["TLS handshake", "plain TCP server"]);
        let conn = step("plain client", rpyc::connect(&addr.to_string())).await.unwrap();
        let who = step("plain whoami", whoami(&conn)).await.unwrap();
        assert_eq!(who, None);
        conn.close().await;
        stop.shutdown();

        // A Python RPyC server waits for the rest of the "frame": the
        // handshake timeout ends the wait with a clear message.
        let (child, port) = blocking(|| common::python_server(&common::python6(), &["--kind", "service"])).await;
        let mut config = pki.client("alice");
        config.handshake_timeout = Duration::from_secs(2);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let err = step("TLS to plain Python server", tls_conn(addr, config))
            .await
            .map(|_| ())
            .expect_err("TLS handshake with a plain Python server must fail")
            .to_string();
        assert_mentions(&err, &["plain TCP server"]);
        let conn = step("plain client to Python", rpyc::connect(&addr.to_string())).await.unwrap();
        let sum: i64 = step("add", async { conn.root().await?.call_method("add", (1, 1)).await }).await.unwrap();
        assert_eq!(sum, 2);
        conn.close().await;
        drop(child);
    })
    .await;
}

// ---------------------------------------------------------------------------
// reload
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_switches_to_new_ca() {
    bounded(async {
        let old = Pki::new();
        let acceptor = TlsAcceptor::bind("127.0.0.1:0", &old.server_config()).await.unwrap();
        let reload = acceptor.reload_handle();
        let (addr, stop) = serve_tls(Listener::new(acceptor)).await;

        let before = step("connect before reload", tls_conn(addr, old.client("alice"))).await.unwrap();
        assert_eq!(step("whoami", whoami(&before)).await.unwrap().as_deref(), Some("alice"));

        // A bad directory leaves the old configuration in force.
        let empty = tempfile::tempdir().unwrap();
        let err = reload.reload_from_dir(empty.path()).unwrap_err().to_string();
        assert_mentions(&err, &["server.pem"]);
        assert_serves(addr, old.client("client"), "client").await;

        let new = Pki::new();
        reload.reload_from_dir(new.dir.path()).unwrap();

        // New clients with the new CA get in.
        assert_serves(addr, new.client("alice"), "alice").await;
        // Old clients are refused: they do not trust the new server certificate…
        let err = rust_client_error(addr, old.client("alice")).await;
        assert_mentions(&err, &["server certificate is not signed by a trusted CA"]);
        // …and their certificate is no longer trusted by the server.
        let mixed = new.client_with(&read_pair(old.dir.path(), "alice"));
        let err = rust_client_error(addr, mixed).await;
        assert_mentions(&err, &["client certificate"]);
        // The connection made before the reload keeps working.
        assert_eq!(step("whoami after reload", whoami(&before)).await.unwrap().as_deref(), Some("alice"));
        before.close().await;
        stop.shutdown();
    })
    .await;
}

fn read_pair(dir: &Path, name: &str) -> CertKeyPem {
    CertKeyPem {
        cert_pem: std::fs::read_to_string(dir.join(format!("{name}.pem"))).unwrap(),
        key_pem: std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap(),
    }
}

// ---------------------------------------------------------------------------
// client-certificate modes and the `rpyc certs` command
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_and_no_client_auth() {
    bounded(async {
        let pki = Pki::new();
        let optional = pki.server_config().with_client_auth(ClientAuth::Optional);
        let (addr, stop) = serve_tls(Listener::tls("127.0.0.1:0", &optional).await.unwrap()).await;
        // Optional: anonymous clients get in without identity, certificates still count…
        let conn = step("anonymous", tls_conn(addr, pki.anonymous_client())).await.unwrap();
        assert_eq!(step("whoami", whoami(&conn)).await.unwrap(), None);
        conn.close().await;
        assert_serves(addr, pki.client("alice"), "alice").await;
        // …and must verify when presented.
        let other = DevCa::generate().unwrap().client_cert("mallory").unwrap();
        let err = rust_client_error(addr, pki.client_with(&other)).await;
        assert_mentions(&err, &["does not trust our client certificate"]);
        stop.shutdown();

        // None: no certificate is asked for; everyone is anonymous.
        let none = TlsServerConfig::from_pem_files(pki.path("server.pem"), pki.path("server.key"))
            .unwrap()
            .with_client_auth(ClientAuth::None);
        let (addr, stop) = serve_tls(Listener::tls("127.0.0.1:0", &none).await.unwrap()).await;
        let conn = step("with cert, not asked", tls_conn(addr, pki.client("alice"))).await.unwrap();
        assert_eq!(step("whoami", whoami(&conn)).await.unwrap(), None);
        conn.close().await;
        stop.shutdown();

        // Required without a CA is a configuration error, said before binding.
        let no_ca = TlsServerConfig::from_pem_files(pki.path("server.pem"), pki.path("server.key")).unwrap();
        let err = Listener::tls("127.0.0.1:0", &no_ca).await.err().unwrap().to_string();
        assert_mentions(&err, &["no CA"]);
        // A key that does not belong to the certificate, too.
        let mixed = TlsServerConfig::from_pem_files(pki.path("server.pem"), pki.path("client.key"));
        let err = mixed.unwrap().with_client_ca_file(pki.path("ca.pem")).unwrap().to_rustls();
        assert_mentions(&err.err().unwrap().to_string(), &["does not belong"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpyc_certs_command() {
    bounded(async {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let rpyc = |args: &[&str]| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_rpyc"));
            cmd.args(args);
            let out = cmd.output().unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            (out.status.code(), text)
        };
        let d = dir.to_str().unwrap();
        let (code, out) = rpyc(&["certs", "init", "--dir", d, "--san", "rpyc.test"]);
        assert_eq!(code, Some(0), "{out}");
        for f in certs::INIT_FILES {
            assert!(dir.join(f).exists(), "{f} missing: {out}");
        }
        let (code, out) = rpyc(&["certs", "init", "--dir", d]);
        assert_eq!(code, Some(1), "{out}");
        assert_mentions(&out, &["already exists", "--force"]);
        let (code, out) = rpyc(&["certs", "client", "bob", "--dir", d]);
        assert_eq!(code, Some(0), "{out}");
        let (code, out) = rpyc(&["certs", "client", "../evil", "--dir", d, "--force"]);
        assert_eq!(code, Some(1), "{out}");
        let (code, out) = rpyc(&["certs", "bogus"]);
        assert_eq!(code, Some(2), "{out}");
        let (code, out) = rpyc(&["certs", "init", "--help"]);
        assert_eq!(code, Some(0), "{out}");
        assert_mentions(&out, &["--san", "--dir"]);

        // The files work: a server from the directory, `bob` as client, by
        // the extra name.
        let config = TlsServerConfig::from_dir(&dir).unwrap();
        let (addr, stop) = serve_tls(Listener::tls("127.0.0.1:0", &config).await.unwrap()).await;
        let client = TlsClientConfig::from_dir(&dir, "bob").unwrap().with_server_name("rpyc.test");
        assert_serves(addr, client, "bob").await;
        stop.shutdown();
    })
    .await;
}

/// A CA-signed client certificate with two common names, `alice` then
/// `admin` (rcgen keeps one value per attribute type, so the second CN is
/// written under its OID). Python's `dict(subject)` would read `admin`, a
/// first-CN reader `alice`: such a certificate has no identity here.
fn two_cn_cert(pki: &Pki) -> CertKeyPem {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(pki.path("ca.key")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&std::fs::read_to_string(pki.path("ca.pem")).unwrap(), ca_key).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "alice");
    params.distinguished_name.push(DnType::CustomDnType(vec![2, 5, 4, 3]), "admin");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    CertKeyPem { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_certificate_with_two_common_names() {
    use rpyc::auth::{Authenticator, TlsClientCert};
    bounded(async {
        let pki = Pki::new();
        let forged = two_cn_cert(&pki);
        let info = rpyc::transport::tls::certificate_info(&pem_der(&forged.cert_pem));
        assert_eq!((info.common_name_count, info.common_name), (2, None));

        // The transport's view: a verified certificate, but no identity.
        let listener = Listener::tls("127.0.0.1:0", &pki.server_config()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = pki.client_with(&forged);
        let client = tokio::spawn(async move { tls_conn(addr, config).await.map(|c| c.credentials().clone()) });
        let incoming = step("accept", listener.accept()).await.unwrap();
        let (stream, creds) = step("server handshake", incoming.handshake()).await.unwrap();
        assert_eq!(creds.identity, None);
        let refused = match TlsClientCert::new().authenticate(stream, creds).await {
            Ok((_, c)) => panic!("two-CN certificate accepted as {:?}", c.identity),
            Err(e) => e.reason,
        };
        assert_mentions(&refused, &["2 common names", "ambiguous", "exactly one CN"]);
        let _ = step("bad client", client).await;

        // A server that authenticates by certificate refuses it and keeps
        // serving a legitimate client.
        let (addr, stop) = {
            let server = Server::new(
                rpyc::conformance::service(),
                ServerConfig::default().with_authenticator(TlsClientCert::new()),
            )
            .listen(listener);
            (addr, server.spawn())
        };
        let err = rust_client_error(addr, pki.client_with(&forged)).await;
        assert!(!err.is_empty());
        assert_serves(addr, pki.client("alice"), "alice").await;
        stop.shutdown();
    })
    .await;
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

// ---------------------------------------------------------------------------
// behind a proxy: PROXY protocol headers (what `rpyc serve --proxy-protocol` runs)
// ---------------------------------------------------------------------------

/// A service that says where the connection came from.
fn peer_service() -> rpyc::Service {
    rpyc::Service::builder("peer", || ())
        .method("peer()", |ctx: rpyc::Ctx| Ok(ctx.credentials().peer.to_string()))
        .method("whoami()", |ctx: rpyc::Ctx| Ok(ctx.credentials().identity.clone()))
        .build()
}

/// Sends `header`, then runs TLS and RPyC; returns what `peer()` says.
async fn peer_via_proxy(addr: SocketAddr, header: &[u8], config: &TlsClientConfig) -> rpyc::Result<String> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(header).await?;
    let (stream, creds) = rpyc::transport::tls::connect_tls_stream(tcp, "localhost", config).await?;
    let conn = ClientBuilder::new().timeout(STEP).start(stream, creds);
    let peer = conn.root().await?.call_method("peer", ()).await;
    conn.close().await;
    peer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_behind_a_proxy_sees_the_client_and_limits_it() {
    bounded(async {
        let pki = Pki::new();
        let acceptor = TlsAcceptor::bind("127.0.0.1:0", &pki.server_config()).await.unwrap().with_proxy_protocol(true);
        let addr = acceptor.addr().unwrap();
        let mut config = ServerConfig::default();
        config.max_connections_per_peer = 1;
        config.auth_timeout = Duration::from_secs(1);
        let stop = Server::new(peer_service(), config).listen(Listener::new(acceptor)).spawn();
        let alice = pki.client("alice");

        let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 443\r\n";
        assert_eq!(step("v1", peer_via_proxy(addr, v1, &alice)).await.unwrap(), "203.0.113.7:56324");
        let mut v2 = b"\r\n\r\n\x00\r\nQUIT\n\x21\x21\x00\x24".to_vec();
        v2.extend("2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap().octets());
        v2.extend(std::net::Ipv6Addr::LOCALHOST.octets());
        v2.extend([0x9c, 0x40, 0x01, 0xbb]);
        assert_eq!(step("v2", peer_via_proxy(addr, &v2, &alice)).await.unwrap(), "[2001:db8::7]:40000");

        // One connection per client address: a second from 203.0.113.7 is
        // refused while the first is open; another client is not.
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(v1).await.unwrap();
        let (stream, creds) =
            step("held", rpyc::transport::tls::connect_tls_stream(tcp, "localhost", &alice)).await.unwrap();
        let held = ClientBuilder::new().timeout(STEP).start(stream, creds);
        let _: String = step("held call", async { held.root().await?.call_method("peer", ()).await }).await.unwrap();
        let again = b"PROXY TCP4 203.0.113.7 127.0.0.1 56325 443\r\n";
        assert!(step("same client", peer_via_proxy(addr, again, &alice)).await.is_err());
        let other = b"PROXY TCP4 198.51.100.1 127.0.0.1 1 443\r\n";
        assert_eq!(step("other client", peer_via_proxy(addr, other, &alice)).await.unwrap(), "198.51.100.1:1");
        held.close().await;

        // No header: refused, and the server keeps serving.
        let err = rust_client_error(addr, alice.clone()).await;
        assert!(!err.is_empty());
        assert_eq!(step("after", peer_via_proxy(addr, other, &alice)).await.unwrap(), "198.51.100.1:1");
        stop.shutdown();
    })
    .await;
}
