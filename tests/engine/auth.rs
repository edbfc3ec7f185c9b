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
