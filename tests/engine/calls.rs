//! Rust client against Rust server, over loopback TCP.

use crate::common::serve;
use rpyc::{ClientBuilder, Connection, Dialect, Error, Kwargs, Netref, Object, ServerConfig, Service, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn conformance() -> (Connection, Netref, rpyc::server::ShutdownHandle) {
    let (addr, stop) = serve(rpyc::conformance::service(), ServerConfig::default()).await;
    let conn = rpyc::connect(&addr.to_string()).await.expect("connect");
    let root = conn.root().await.expect("root");
    (conn, root, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_calls_kwargs_and_python_style_type_errors() {
    let (_conn, root, stop) = conformance().await;
    assert_eq!(root.call_method::<i64>("add", (5, 10)).await.unwrap(), 15);
    assert_eq!(
        root.callattr_kw("add", (), Kwargs::new().arg("x", 1).arg("y", 2)).await.unwrap().extract::<i64>().unwrap(),
        3
    );
    assert_eq!(root.call_method::<String>("add", ("a", "b")).await.unwrap(), "ab");
    assert_eq!(root.getattr("the_real_answer_though").await.unwrap().extract::<i64>().unwrap(), 43);
    assert_eq!(root.call_method::<String>("get_service_name", ()).await.unwrap(), "CONFORMANCE");

    let e = root.callattr("add", (1,)).await.unwrap_err();
    assert!(e.is_exception("TypeError"), "{e}");
    assert!(e.to_string().contains("missing required argument: 'y'"), "{e}");
    let e = root.callattr("add", (1, 2, 3)).await.unwrap_err();
    assert!(e.to_string().contains("takes 2 positional arguments but 3 were given"), "{e}");
    let e = root.callattr_kw("add", (1, 2), Kwargs::new().arg("z", 3)).await.unwrap_err();
    assert!(e.to_string().contains("unexpected keyword argument 'z'"), "{e}");
    let e = root.callattr("line_length", (5,)).await.unwrap_err();
    assert!(e.is_exception("TypeError") && e.to_string().contains("'line'"), "{e}");
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_denials_do_not_reveal_whether_a_name_exists() {
    let (_conn, root, stop) = conformance().await;
    for name in ["secret", "_private", "get_question", "no_such_name", "__dict__"] {
        let e = root.getattr(name).await.unwrap_err();
        let exc = e.exception().expect("exception");
        assert_eq!(exc.class, "AttributeError");
        assert_eq!(exc.message(), format!("cannot access '{name}'"));
    }
    let e = root.setattr("the_real_answer_though", 1).await.unwrap_err();
    assert!(e.is_exception("AttributeError"));
    let e = root.delattr("foo").await.unwrap_err();
    assert!(e.is_exception("AttributeError"));
    // The exposed_ spelling of a name works like the bare one.
    assert_eq!(root.call_method::<String>("exposed_foo", ()).await.unwrap(), "foo");
    // DIR lists only what the policy lets us see.
    let names = root.dir().await.unwrap();
    assert!(names.contains(&"add".to_string()) && !names.iter().any(|n| n == "secret" || n == "_private"), "{names:?}");
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_callbacks_many_levels_deep() {
    // Client callback -> server -> client callback -> ... 16 levels.
    let (conn, root, stop) = conformance().await;
    fn level(root: Netref, depth: i64) -> Object {
        Object::async_function(move |n: i64| {
            let root = root.clone();
            async move {
                if n >= depth {
                    return Ok(Object::from(Value::from(n)));
                }
                let next = level(root.clone(), depth);
                root.callattr("call_back", (next, n + 1)).await
            }
        })
    }
    let r: i64 = root.callattr("call_back", (level(root.clone(), 16), 0)).await.unwrap().extract().unwrap();
    assert_eq!(r, 16);
    // An exception deep inside comes back out with its class.
    let bad =
        Object::function(|| -> rpyc::Result<()> { Err(rpyc::Exception::new("ZeroDivisionError", "deep").into()) });
    let e = root.callattr("call_back", (bad,)).await.unwrap_err();
    assert!(e.is_exception("ZeroDivisionError"), "{e}");
    drop(conn);
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_requests_in_flight_on_one_connection() {
    let (_conn, root, stop) = conformance().await;
    let mut tasks = Vec::new();
    for i in 0..2000i64 {
        let root = root.clone();
        tasks.push(tokio::spawn(async move { root.call_method::<i64>("add", (i, 1)).await }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().unwrap(), i as i64 + 1);
    }
    // Slow calls do not hold up fast ones on the same connection.
    let slow = root.async_callattr("sleep", (1.0,)).unwrap();
    let start = Instant::now();
    assert_eq!(root.call_method::<i64>("add", (1, 1)).await.unwrap(), 2);
    assert!(start.elapsed() < Duration::from_millis(900));
    slow.set_expiry(Some(Duration::from_secs(10)));
    slow.value().await.unwrap();
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_is_clear_and_the_connection_survives() {
    let (addr, stop) = serve(rpyc::conformance::service(), ServerConfig::default()).await;
    let conn = ClientBuilder::new().timeout(Duration::from_millis(200)).connect(&addr.to_string()).await.unwrap();
    let root = conn.root().await.unwrap();
    let e = root.callattr("sleep", (2.0,)).await.unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("sync_request_timeout"), "{e}");
    assert_eq!(root.call_method::<i64>("add", (2, 2)).await.unwrap(), 4);
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanishing_peer_fails_pending_calls_promptly() {
    let (addr, stop) = serve(rpyc::conformance::service(), ServerConfig::default()).await;
    let conn = rpyc::connect(&addr.to_string()).await.unwrap();
    let root = conn.root().await.unwrap();
    let pending = tokio::spawn({
        let root = root.clone();
        async move { root.callattr("sleep", (20.0,)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    stop.shutdown(); // the server closes every connection
    let r = tokio::time::timeout(Duration::from_secs(5), pending).await.expect("failed promptly").unwrap();
    assert!(matches!(r, Err(Error::Closed(_))), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
    let e = root.callattr("add", (1, 2)).await.unwrap_err();
    assert!(matches!(e, Error::Closed(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_orderly_close() {
    let (conn, root, stop) = conformance().await;
    conn.ping().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), conn.close()).await.expect("close is prompt");
    assert!(conn.is_closed());
    assert!(matches!(root.callattr("foo", ()).await, Err(Error::Closed(_))));
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_objects_are_released_when_proxies_drop() {
    let (_conn, root, stop) = conformance().await;
    let live = || async { root.call_method::<i64>("live_objects", ()).await.unwrap() };
    let base = live().await;
    for round in 0..2000 {
        let c = root.callattr("make_counter", (round,)).await.unwrap().into_netref().unwrap();
        assert_eq!(c.call_method::<i64>("incr", ()).await.unwrap(), round + 1);
    }
    // Proxies are gone; their DELs are processed in order before this call.
    assert_eq!(live().await, base);

    // The same object returned several times is one proxy, released once.
    let c = root.callattr("make_counter", (0,)).await.unwrap().into_netref().unwrap();
    let again = root.callattr("echo", (Object::Remote(c.clone()),)).await.unwrap().into_netref().unwrap();
    let thrice = root.callattr("echo", (Object::Remote(c.clone()),)).await.unwrap().into_netref().unwrap();
    again.callattr("incr", ()).await.unwrap();
    assert_eq!(thrice.getattr("value").await.unwrap().extract::<i64>().unwrap(), 1);
    assert_eq!(live().await, base + 1);
    drop((c, again, thrice));
    assert_eq!(live().await, base);
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_served_containers_behave_like_python_ones() {
    let (_conn, root, stop) = conformance().await;
    let n = root.callattr("numbers", (10,)).await.unwrap().into_netref().unwrap();
    assert_eq!(n.class_name(), "builtins.list");
    assert_eq!(n.len().await.unwrap(), 10);
    assert_eq!(n.getitem(-1).await.unwrap().extract::<i64>().unwrap(), 9);
    assert!(n.contains(5).await.unwrap() && !n.contains(42).await.unwrap());
    assert_eq!(n.get::<Vec<i64>>().await.unwrap(), (0..10).collect::<Vec<_>>());
    // A remote iterator is a Stream too (batches of 3: several BUFFITERs).
    use futures::StreamExt;
    let items: Vec<i64> = n.iter(3).await.unwrap().map(|r| r.unwrap().extract::<i64>().unwrap()).collect().await;
    assert_eq!(items, (0..10).collect::<Vec<_>>());
    let e = n.getitem(10).await.unwrap_err();
    assert!(e.is_exception("IndexError"));
    let d = root.callattr("info", ()).await.unwrap().into_netref().unwrap();
    assert_eq!(d.getitem("name").await.unwrap().extract::<String>().unwrap(), "conformance");
    assert!(d.getitem("missing").await.unwrap_err().is_exception("KeyError"));
    let keys: Vec<String> = d.call_method("keys", ()).await.unwrap();
    assert_eq!(keys, vec!["name", "version"]);
    let counter = root.callattr("make_counter", (7,)).await.unwrap().into_netref().unwrap();
    assert_eq!(counter.repr().await.unwrap(), "Counter(value=7)");
    assert_eq!(counter.str().await.unwrap(), "Counter at 7");
    assert_eq!(counter.hash().await.unwrap(), counter.hash().await.unwrap());
    let eq = counter.cmp(Object::Remote(counter.clone()), "__eq__").await.unwrap();
    assert_eq!(eq.as_value(), Some(&Value::Bool(true)));
    let methods = counter.inspect().await.unwrap();
    assert!(methods.iter().any(|(m, _)| m == "incr"), "{methods:?}");
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_results_follow_rpyc_semantics() {
    let (_conn, root, stop) = conformance().await;
    let r = root.async_callattr("add", (2, 3)).unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let s2 = seen.clone();
    r.add_callback(move |res| {
        if res.is_ok() {
            s2.fetch_add(1, Ordering::SeqCst);
        }
    });
    r.set_expiry(Some(Duration::from_secs(10)));
    assert_eq!(r.value().await.unwrap().extract::<i64>().unwrap(), 5);
    assert!(r.ready() && !r.error() && !r.expired());
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    let bad = root.async_callattr("fail", ("ValueError", "x")).unwrap();
    bad.set_expiry(Some(Duration::from_secs(10)));
    bad.wait().await.unwrap();
    assert!(bad.error());
    assert!(bad.value().await.unwrap_err().is_exception("ValueError"));
    let slow = root.async_callattr("sleep", (2.0,)).unwrap();
    slow.set_expiry(Some(Duration::from_millis(100)));
    assert!(slow.value().await.is_err());
    assert!(slow.expired() && !slow.ready());
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_disconnect_hooks_run() {
    let connects = Arc::new(AtomicUsize::new(0));
    let disconnects = Arc::new(AtomicUsize::new(0));
    let (c2, d2) = (connects.clone(), disconnects.clone());
    let svc = Service::builder("hooks", || ())
        .method("ping()", || Ok("pong"))
        .on_connect(move |_| {
            c2.fetch_add(1, Ordering::SeqCst);
        })
        .on_disconnect(move |_| {
            d2.fetch_add(1, Ordering::SeqCst);
        })
        .build();
    let (addr, stop) = serve(svc, ServerConfig::default()).await;
    for _ in 0..3 {
        let conn = rpyc::connect(&addr.to_string()).await.unwrap();
        assert_eq!(conn.root().await.unwrap().call_method::<String>("ping", ()).await.unwrap(), "pong");
        conn.close().await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while disconnects.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(connects.load(Ordering::SeqCst), 3);
    assert_eq!(disconnects.load(Ordering::SeqCst), 3);
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_client_can_speak_the_rpyc5_dialect() {
    let (addr, stop) = serve(rpyc::conformance::service(), ServerConfig::default()).await;
    let conn = ClientBuilder::new().dialect(Dialect::V5).connect(&addr.to_string()).await.unwrap();
    let root = conn.root().await.unwrap();
    assert_eq!(root.call_method::<i64>("add", (40, 2)).await.unwrap(), 42);
    assert_eq!(conn.dialect(), Some(Dialect::V5));
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_becomes_an_exception_not_a_dead_server() {
    let svc = Service::builder("panicky", || ())
        .method("boom()", || -> rpyc::Result<()> { panic!("kaboom") })
        .method("ok()", || Ok(1))
        .build();
    let (addr, stop) = serve(svc, ServerConfig::default()).await;
    let conn = rpyc::connect(&addr.to_string()).await.unwrap();
    let root = conn.root().await.unwrap();
    let e = root.callattr("boom", ()).await.unwrap_err();
    assert!(e.is_exception("RuntimeError") && e.to_string().contains("kaboom"), "{e}");
    assert_eq!(root.call_method::<i64>("ok", ()).await.unwrap(), 1);
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_values_round_trip() {
    let _heavy = crate::raw::HEAVY.lock().await;
    let (_conn, root, stop) = conformance().await;
    let blob: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let back = root.callattr("echo", (Value::Bytes(blob.clone()),)).await.unwrap();
    assert_eq!(back.as_value(), Some(&Value::Bytes(blob)));
    let big = Value::Int(rpyc::wire::Int::from_big(format!("-{}", "7".repeat(2000)).parse().unwrap()));
    assert_eq!(root.callattr("echo", (big.clone(),)).await.unwrap().as_value(), Some(&big));
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_and_unix_sockets_work_too() {
    let server =
        rpyc::Server::new(rpyc::conformance::service(), ServerConfig::default()).bind_tcp("[::1]:0").await.unwrap();
    let addr = server.local_addrs()[0];
    let stop = server.spawn();
    let conn = rpyc::connect(&format!("tcp://{addr}")).await.unwrap();
    assert_eq!(conn.root().await.unwrap().call_method::<i64>("add", (1, 2)).await.unwrap(), 3);
    stop.shutdown();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let server = rpyc::Server::new(rpyc::conformance::service(), ServerConfig::default())
        .listen(rpyc::transport::Listener::unix(&path).await.unwrap());
    let stop = server.spawn();
    let conn = rpyc::connect(&format!("unix://{}", path.display())).await.unwrap();
    assert_eq!(conn.root().await.unwrap().call_method::<String>("foo", ()).await.unwrap(), "foo");
    stop.shutdown();
}

/// A signature that is malformed, or that names a different number of
/// parameters than its closure takes, fails when the service is built,
/// naming the method — not on the first call.
#[test]
fn signatures_are_checked_when_the_service_is_built() {
    let err = |b: rpyc::ServiceBuilder<()>| b.try_build().err().map(|e| e.to_string()).unwrap_or_default();
    let e = err(Service::builder("s", || ()).method("add(x)", |x: i64, y: i64| Ok(x + y)));
    assert!(e.contains("\"add(x)\"") && e.contains("names 1 parameter (x) but the closure takes 2 arguments"), "{e}");
    let e = err(Service::builder("s", || ()).method("bad sig((", || Ok(1)));
    assert!(e.contains("\"bad sig((\"") && e.contains("is not a method name"), "{e}");
    let e = err(Service::builder("s", || ()).method("f((x)", |x: i64| Ok(x)));
    assert!(e.contains("parentheses inside the parameter list"), "{e}");
    let e = err(Service::builder("s", || ()).method("f(x,, y)", |x: i64, y: i64| Ok(x + y)));
    assert!(e.contains("an empty parameter"), "{e}");
    let e = err(Service::builder("s", || ()).method("f(x, *rest)", |x: i64| Ok(x)));
    assert!(e.contains("*args but the closure takes no Args"), "{e}");
    let e = err(Service::builder("s", || ()).method("f(x)", |x: i64, _rest: rpyc::Args| Ok(x)));
    assert!(e.contains("the closure takes Args"), "{e}");
    // Every problem is reported at once.
    let e = err(Service::builder("s", || ()).method("a(x)", || Ok(1)).method("b()", |y: i64| Ok(y)));
    assert!(e.contains("\"a(x)\"") && e.contains("\"b()\""), "{e}");
    // Context parameters take no argument; defaults, *args and **kwargs parse.
    let ok = Service::builder("s", || ())
        .method("f(a, b=1, *args, **kw)", |a: i64, b: Option<i64>, _c: rpyc::Ctx, rest: rpyc::Args| {
            Ok(a + b.unwrap_or(1) + rest.positional.len() as i64)
        })
        .method("g(x: int)", |x: i64| Ok(x))
        .method("h", || Ok(0))
        .try_build();
    assert!(ok.is_ok(), "{:?}", ok.err());
    let panicked =
        std::panic::catch_unwind(|| Service::builder("s", || ()).method("add(x)", |x: i64, y: i64| Ok(x + y)).build());
    assert!(panicked.is_err(), "build() must refuse a wrong signature");
}

/// Errors have kinds a program can branch on, and keep their text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_kinds() {
    // Nobody listens: a connect error, retryable elsewhere.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = rpyc::connect(&format!("127.0.0.1:{port}")).await.unwrap_err();
    assert!(e.is_connect() && !e.is_timeout() && !e.is_tls(), "{e:?}");
    assert!(e.to_string().contains("cannot connect to 127.0.0.1"), "{e}");

    let (addr, stop) = serve(rpyc::conformance::service(), ServerConfig::default()).await;
    // TLS to a plain server: a TLS error (the server hangs up on the hello).
    let dir = tempfile::tempdir().unwrap();
    rpyc::certs::init_dir(dir.path(), &[]).unwrap();
    let tls = rpyc::transport::tls::TlsClientConfig::from_dir(dir.path(), "client").unwrap();
    let e = ClientBuilder::new().tls(tls).connect(&addr.to_string()).await.unwrap_err();
    assert!(e.is_tls() && !e.is_connect(), "{e:?}");

    let conn = ClientBuilder::new().timeout(Duration::from_millis(300)).connect(&addr.to_string()).await.unwrap();
    let root = conn.root().await.unwrap();
    // The peer's exception is remote; a result of the wrong type is a local
    // conversion error, not a TypeError from the peer.
    let e = root.call_method::<i64>("fail", ("ValueError", "bad")).await.unwrap_err();
    assert!(e.is_remote() && e.is_exception("ValueError") && !e.is_conversion(), "{e:?}");
    let e = root.call_method::<String>("add", (1, 2)).await.unwrap_err();
    assert!(e.is_conversion() && !e.is_remote() && e.exception().is_none(), "{e:?}");
    assert!(e.to_string().starts_with("cannot convert the result:"), "{e}");
    // No reply in time.
    let e = root.call_method::<()>("sleep", (2,)).await.unwrap_err();
    assert!(e.is_timeout() && !e.is_closed(), "{e:?}");
    // Closed.
    conn.close().await;
    let e = root.call_method::<i64>("add", (1, 2)).await.unwrap_err();
    assert!(e.is_closed(), "{e:?}");
    stop.shutdown();
}

/// A `Write` into a shared buffer, for capturing log lines.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Log lines written by a handler carry the connection (`conn{id peer
/// identity service}`) and the request (`request{seq handler name}`) they
/// serve, so interleaved logs of concurrent connections can be told apart —
/// on the inline path (a synchronous method) and on the spawned one (an
/// async method that sleeps).
#[tokio::test]
async fn handler_logs_carry_connection_and_request_spans() {
    let buf = LogBuffer::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let svc = Service::builder("spans", || ())
        .method("greet(who)", |who: String| {
            tracing::info!("greeting {who}");
            Ok(format!("hello {who}"))
        })
        .async_method("slow(who)", |who: String| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tracing::info!("slowly greeting {who}");
            Ok(who)
        })
        .build();
    let (addr, stop) = serve(svc, ServerConfig::default()).await;
    let a = rpyc::connect(&addr.to_string()).await.unwrap();
    let b = rpyc::connect(&addr.to_string()).await.unwrap();
    let (ra, rb) = (a.root().await.unwrap(), b.root().await.unwrap());
    let (x, y) =
        tokio::join!(ra.call_method::<String>("greet", ("alice",)), rb.call_method::<String>("slow", ("bob",)));
    assert_eq!((x.unwrap().as_str(), y.unwrap().as_str()), ("hello alice", "bob"));
    stop.shutdown();
    drop(_guard);

    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let line = |needle: &str| {
        text.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no log line with {needle:?} in:\n{text}"))
    };
    let conn_id = |l: &str| {
        let at = l.find("conn{id=").unwrap_or_else(|| panic!("no connection span in {l:?}"));
        l[at + 8..].split(|c: char| !c.is_ascii_digit()).next().unwrap().to_string()
    };
    let (alice, bob) = (line("greeting alice"), line("slowly greeting bob"));
    for (l, method) in [(alice, "greet"), (bob, "slow")] {
        assert!(l.contains("peer=127.0.0.1:") && l.contains("service=\"SPANS\""), "{l}");
        assert!(l.contains("request{seq=") && l.contains("handler=\"CALLATTR\""), "{l}");
        assert!(l.contains(&format!("name=\"{method}\"")), "{l}");
    }
    assert_ne!(conn_id(alice), conn_id(bob), "two connections, one id:\n{alice}\n{bob}");
}
