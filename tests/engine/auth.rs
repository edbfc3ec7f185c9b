//! Authenticators and identity-scoped policies.

use crate::common::serve;
use rpyc::auth::{AllOf, ChallengeResponse, FirstMatch, SshPublicKey, TlsClientCert};
use rpyc::policy::PolicySet;
use rpyc::wire::message::Handler;
use rpyc::{AccessPolicy, ClientBuilder, Connection, Object, ServerConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

fn secrets() -> ChallengeResponse {
    ChallengeResponse::new()
        .identity("alice", "alice-secret")
        .identity("bob", "bob-secret")
        .identity("calc", "calc-secret")
        .identity("writer", "writer-secret")
        .group("alice", &["ops"])
}

fn policies() -> PolicySet {
    PolicySet::from_toml(
        r#"
        [default]

        [policies.ops]
        allow_public_attrs = true

        [policies.calc]
        allow_methods = ["add", "get_service_name"]

        [policies.writer]
        allow_setattr = true
        allow_delattr = true
        allow_pickle = true

        [identities]
        calc = "calc"
        writer = "writer"

        [groups]
        ops = "ops"
        "#,
    )
    .expect("policy file")
}

async fn server() -> (SocketAddr, rpyc::server::ShutdownHandle) {
    let mut config = ServerConfig::default().with_authenticator(secrets()).with_policy_set(policies());
    config.auth_timeout = Duration::from_millis(500);
    serve(rpyc::conformance::service(), config).await
}

async fn login(addr: SocketAddr, who: &str, secret: &str) -> rpyc::Result<Connection> {
    ClientBuilder::new().challenge_response(who, secret).connect(&addr.to_string()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_response_identifies_the_caller() {
    let (addr, stop) = server().await;
    let conn = login(addr, "alice", "alice-secret").await.unwrap();
    let root = conn.root().await.unwrap();
    assert_eq!(root.call_method::<Option<String>>("whoami", ()).await.unwrap().as_deref(), Some("alice"));

    let e = login(addr, "alice", "wrong").await.unwrap_err();
    assert!(e.to_string().contains("refused identity \"alice\""), "{e}");
    assert!(e.is_auth() && !e.is_connect() && !e.is_remote(), "{e:?}");
    let e = login(addr, "mallory", "anything").await.unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");
    // A client that skips authentication never reaches the service.
    let plain = rpyc::connect(&addr.to_string()).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(3), plain.root()).await.expect("bounded").is_err());
    // Alice is unaffected.
    assert_eq!(root.call_method::<i64>("add", (1, 2)).await.unwrap(), 3);
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stalls_during_authentication_is_dropped() {
    let (addr, stop) = server().await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    let mut buf = vec![0u8; 1024];
    // Read the challenge, answer nothing, wait for the hang-up.
    let mut total = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("dropped in time") {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    assert_eq!(total, 44, "challenge is magic + nonce");
    assert!(start.elapsed() < Duration::from_secs(3), "stalled peer kept for {:?}", start.elapsed());
    assert!(login(addr, "bob", "bob-secret").await.unwrap().root().await.is_ok());
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_identity_gets_exactly_its_policy() {
    let (addr, stop) = server().await;
    let alice = login(addr, "alice", "alice-secret").await.unwrap().root().await.unwrap(); // ops group
    let bob = login(addr, "bob", "bob-secret").await.unwrap().root().await.unwrap(); // default
    let calc = login(addr, "calc", "calc-secret").await.unwrap().root().await.unwrap();
    let writer = login(addr, "writer", "writer-secret").await.unwrap().root().await.unwrap();

    // Public, non-exposed names: ops only.
    let alice_obj = alice.callattr("get_obj", ()).await.unwrap().into_netref().unwrap();
    assert_eq!(alice_obj.getattr("public").await.unwrap().extract::<i64>().unwrap(), 1);
    assert!(alice.callattr("secret", ()).await.is_ok());
    let bob_obj = bob.callattr("get_obj", ()).await.unwrap().into_netref().unwrap();
    let e = bob_obj.getattr("public").await.unwrap_err();
    assert_eq!(e.exception().unwrap().message(), "cannot access 'public'");
    assert!(bob.callattr("secret", ()).await.unwrap_err().is_exception("AttributeError"));
    // Private names: nobody.
    for root in [&alice, &bob] {
        assert!(root.getattr("_private").await.unwrap_err().is_exception("AttributeError"));
    }
    assert!(alice_obj.getattr("_private").await.unwrap_err().is_exception("AttributeError"));

    // Method allow-list: calc reaches add only; denials look like any other.
    assert_eq!(calc.call_method::<i64>("add", (2, 3)).await.unwrap(), 5);
    let e = calc.callattr("foo", ()).await.unwrap_err();
    assert_eq!(e.exception().unwrap().message(), "cannot access 'foo'");
    assert!(calc.getattr("the_real_answer_though").await.unwrap_err().is_exception("AttributeError"));

    // setattr/delattr/pickle: refused unless granted.
    let bob_counter = bob.callattr("make_counter", (1,)).await.unwrap().into_netref().unwrap();
    assert_eq!(
        bob_counter.setattr("value", 5).await.unwrap_err().exception().unwrap().message(),
        "cannot access 'value'"
    );
    assert_eq!(bob_counter.delattr("value").await.unwrap_err().exception().unwrap().message(), "cannot access 'value'");
    let w_counter = writer.callattr("make_counter", (1,)).await.unwrap().into_netref().unwrap();
    let e = w_counter.setattr("value", 5).await.unwrap_err();
    assert!(e.to_string().contains("can't set attribute"), "granted setattr reaches the object: {e}");
    let pickle = |root: &rpyc::Netref| {
        let conn = root.connection();
        let root = root.clone();
        async move { conn.request(Handler::Pickle, vec![Object::Remote(root), rpyc::Value::from(4).into()]).await }
    };
    assert!(pickle(&bob).await.unwrap_err().is_exception("ValueError"), "pickling is disabled");
    assert!(
        pickle(&writer).await.unwrap_err().is_exception("TypeError"),
        "granted, but Rust objects cannot be pickled"
    );
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combinators_try_in_order_and_require_all() {
    // TLS and SSH checks pass on plain TCP, so the challenge decides.
    let first = FirstMatch(vec![Arc::new(TlsClientCert::new()), Arc::new(SshPublicKey::new()), Arc::new(secrets())]);
    let (addr, stop) = serve(rpyc::conformance::service(), ServerConfig::default().with_authenticator(first)).await;
    let root = login(addr, "bob", "bob-secret").await.unwrap().root().await.unwrap();
    assert_eq!(root.call_method::<Option<String>>("whoami", ()).await.unwrap().as_deref(), Some("bob"));
    stop.shutdown();

    // AllOf with a TLS requirement refuses a plain TCP peer even with the right secret.
    let all = AllOf(vec![Arc::new(secrets()), Arc::new(TlsClientCert::new())]);
    let mut config = ServerConfig::default().with_authenticator(all);
    config.auth_timeout = Duration::from_secs(2);
    let (addr, stop) = serve(rpyc::conformance::service(), config).await;
    let conn = login(addr, "bob", "bob-secret").await;
    let refused = match conn {
        Err(_) => true,
        Ok(c) => tokio::time::timeout(Duration::from_secs(3), c.root()).await.map(|r| r.is_err()).unwrap_or(true),
    };
    assert!(refused);
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_policy_applies_without_identity() {
    let mut set = PolicySet::uniform(AccessPolicy::default());
    set.anonymous = Some(AccessPolicy::default().with_public_attrs(true));
    let (addr, stop) = serve(rpyc::conformance::service(), ServerConfig::default().with_policy_set(set)).await;
    let conn = rpyc::connect(&addr.to_string()).await.unwrap();
    let obj = conn.root().await.unwrap().callattr("get_obj", ()).await.unwrap().into_netref().unwrap();
    assert_eq!(obj.getattr("public").await.unwrap().extract::<i64>().unwrap(), 1);
    stop.shutdown();
}

/// A development PKI in a temporary directory, for the TLS cases below.
fn pki() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    rpyc::certs::init_dir(dir.path(), &[]).unwrap();
    dir
}

/// A TLS server (no client certificates) whose authenticator is
/// challenge–response.
async fn tls_challenge_server(dir: &std::path::Path) -> (SocketAddr, rpyc::server::ShutdownHandle) {
    use rpyc::transport::tls::{ClientAuth, TlsServerConfig};
    let tls = TlsServerConfig::from_dir(dir).unwrap().with_client_auth(ClientAuth::None);
    let listener = rpyc::transport::Listener::tls("127.0.0.1:0", &tls).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = ServerConfig::default().with_authenticator(secrets());
    config.auth_timeout = Duration::from_secs(3);
    let stop = rpyc::Server::new(rpyc::conformance::service(), config).listen(listener).spawn();
    (addr, stop)
}

fn tls_client(dir: &std::path::Path) -> rpyc::transport::tls::TlsClientConfig {
    rpyc::transport::tls::TlsClientConfig::new().with_ca_file(dir.join("ca.pem")).unwrap()
}

/// The relay attack on challenge–response: a man in the middle that holds
/// a certificate the client trusts terminates the client's TLS, opens its
/// own TLS session to the server and passes the bytes along. Bound to the
/// TLS session (RFC 9266 exporter), the client's answer does not verify on
/// the attacker's session, so the attacker gets nothing; a direct client is
/// still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_response_relayed_over_tls_is_refused() {
    use rpyc::transport::tls::{connect_tls, ClientAuth, TlsServerConfig};
    let dir = pki();
    let (server, stop) = tls_challenge_server(dir.path()).await;

    // The direct client: served, and the session is bound.
    let conn = ClientBuilder::new()
        .tls(tls_client(dir.path()))
        .challenge_response("alice", "alice-secret")
        .connect(&server.to_string())
        .await
        .unwrap();
    let root = conn.root().await.unwrap();
    assert_eq!(root.call_method::<Option<String>>("whoami", ()).await.unwrap().as_deref(), Some("alice"));

    // The relay: its own TLS endpoint (a server certificate from the same
    // CA, as a mis-issued or stolen certificate would be) in front of the server.
    let mitm_tls = TlsServerConfig::from_dir(dir.path()).unwrap().with_client_auth(ClientAuth::None);
    let mitm = rpyc::transport::Listener::tls("127.0.0.1:0", &mitm_tls).await.unwrap();
    let mitm_addr = mitm.local_addr().unwrap();
    let upstream_config = tls_client(dir.path());
    let relay = tokio::spawn(async move {
        let incoming = mitm.accept().await.unwrap();
        let (mut victim, _) = incoming.handshake().await.unwrap();
        let (mut upstream, _) = connect_tls(&server.to_string(), &upstream_config).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut victim, &mut upstream).await;
    });
    let relayed = ClientBuilder::new()
        .tls(tls_client(dir.path()))
        .challenge_response("alice", "alice-secret")
        .connect(&mitm_addr.to_string())
        .await;
    let Err(e) = relayed else { panic!("a relayed challenge-response must not authenticate") };
    let e = e.to_string();
    assert!(e.contains("refused identity \"alice\""), "{e}");
    let _ = tokio::time::timeout(Duration::from_secs(5), relay).await;

    // Alice's direct connection is unaffected.
    assert_eq!(root.call_method::<i64>("add", (2, 3)).await.unwrap(), 5);
    stop.shutdown();
}

/// An impostor server that does not know the secret: it sends a
/// challenge and says "OK" to anything. The client refuses to go on
/// because the server could not prove it knows the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_response_client_verifies_the_server() {
    use tokio::io::AsyncWriteExt;
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = fake.local_addr().unwrap();
    let impostor = tokio::spawn(async move {
        let (mut sock, _) = fake.accept().await.unwrap();
        let mut hello = b"RPYC-CHAL-2\n".to_vec();
        hello.extend_from_slice(&[7u8; 32]);
        sock.write_all(&hello).await.unwrap();
        let mut answer = vec![0u8; 1 + 5 + 32 + 32];
        sock.read_exact(&mut answer).await.unwrap();
        // "OK" and a made-up proof; then whatever the client sends.
        sock.write_all(b"OK\n").await.unwrap();
        sock.write_all(&[0u8; 32]).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), sock.read_to_end(&mut rest)).await;
        rest
    });
    let e = ClientBuilder::new().challenge_response("alice", "alice-secret").connect(&addr.to_string()).await;
    let Err(e) = e else { panic!("an impostor server must be refused") };
    let e = e.to_string();
    assert!(e.contains("did not prove it knows the secret"), "{e}");
    let sent_after = tokio::time::timeout(Duration::from_secs(5), impostor).await.unwrap().unwrap();
    assert!(sent_after.is_empty(), "the client sent {} bytes to an impostor", sent_after.len());

    // The real server proves itself, and the client goes on.
    let (addr, stop) = server().await;
    let conn = login(addr, "alice", "alice-secret").await.unwrap();
    assert_eq!(conn.root().await.unwrap().call_method::<i64>("add", (1, 1)).await.unwrap(), 2);
    stop.shutdown();
}

/// Plain TCP from another host has no channel binding: refused unless
/// allowed explicitly; loopback and TLS are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_response_refuses_plain_tcp_from_the_network_by_default() {
    use rpyc::auth::Authenticator;
    use rpyc::identity::{Credentials, PeerAddr, TransportKind};
    use tokio::io::AsyncWriteExt;
    let remote = PeerAddr::Ip("192.0.2.7:40000".parse().unwrap());
    let (ours, mut theirs) = tokio::io::duplex(4096);
    let creds = Credentials::anonymous(TransportKind::Tcp, remote.clone());
    let e = secrets().authenticate(Box::new(ours), creds).await.err().expect("refused").reason;
    assert!(e.contains("192.0.2.7") && e.contains("relayed") && e.contains("TLS"), "{e}");
    let mut nothing = Vec::new();
    let _ = theirs.shutdown().await;
    theirs.read_to_end(&mut nothing).await.unwrap();
    assert!(nothing.is_empty(), "a refused peer got a challenge");

    // Allowed knowingly: the challenge goes out.
    let (ours, mut theirs) = tokio::io::duplex(4096);
    let creds = Credentials::anonymous(TransportKind::Tcp, remote);
    let auth = secrets().allow_plain_tcp_from_network(true);
    let task = tokio::spawn(async move { auth.authenticate(Box::new(ours), creds).await.is_ok() });
    let mut hello = [0u8; 12];
    theirs.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"RPYC-CHAL-2\n");
    drop(theirs);
    assert!(!task.await.unwrap());
}

/// An SSH user name without the key that proved it is only a claim:
/// `SshPublicKey` refuses it; with the key's fingerprint it is the identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_user_without_a_proving_key_is_refused() {
    use rpyc::auth::Authenticator;
    use rpyc::identity::{Credentials, PeerAddr, TransportKind};
    let peer = PeerAddr::Ip("127.0.0.1:40000".parse().unwrap());
    let mut claim = Credentials::anonymous(TransportKind::Ssh, peer);
    claim.ssh_user = Some("alice".into());
    let (ours, _theirs) = tokio::io::duplex(64);
    let e = SshPublicKey::new().authenticate(Box::new(ours), claim.clone()).await.err().expect("refused").reason;
    assert!(e.contains("no public key proved it"), "{e}");
    claim.ssh_key_fingerprint = Some("SHA256:abc".into());
    let (ours, _theirs) = tokio::io::duplex(64);
    let Ok((_, creds)) = SshPublicKey::new().authenticate(Box::new(ours), claim).await else {
        panic!("a key-proven SSH user must be accepted")
    };
    assert_eq!(creds.identity.as_deref(), Some("alice"));
}
