//! Rust clients against real Python rpyc servers (a service server and a
//! classic `SlaveService` server), in both wire dialects.

use crate::common::{python5, python6, python_server};
use rpyc::classic::Classic;
use rpyc::{ClientBuilder, Dialect, Object, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

async fn connect(port: u16, dialect: Dialect) -> rpyc::Connection {
    ClientBuilder::new()
        .dialect(dialect)
        .timeout(Duration::from_secs(20))
        .connect(&format!("127.0.0.1:{port}"))
        .await
        .expect("connect")
}

async fn service_checks(dialect: Dialect) {
    let python = if dialect == Dialect::V5 { python5() } else { python6() };
    let (_server, port) = python_server(&python, &["--kind", "service"]);
    let conn = connect(port, dialect).await;
    let root = conn.root().await.expect("root");

    let name: String = root.call_method("get_service_name", ()).await.expect("name");
    assert_eq!(name, "PYTEST");
    let sum: i64 = root.call_method("add", (5, 10)).await.expect("add");
    assert_eq!(sum, 15);
    let answer: i64 = root.getattr("the_answer").await.expect("attr").extract().expect("int");
    assert_eq!(answer, 42);

    // Keyword arguments and defaults.
    let kw = rpyc::Kwargs::new().arg("greeting", "hi");
    let g: String = root.callattr_kw("greet", ("bob",), kw).await.expect("greet").extract().expect("str");
    assert_eq!(g, "hi bob");

    // Values beyond 64 bits and nested tuples round-trip.
    let big = Value::Int(rpyc::wire::Int::from_big("1".repeat(40).parse().expect("big")));
    let nested = Value::Tuple(vec![big.clone(), Value::Tuple(vec![Value::from("x"), Value::Bytes(vec![0, 1])])]);
    let back = root.callattr("echo", (nested.clone(),)).await.expect("echo");
    assert_eq!(back.as_value(), Some(&nested));

    // A Python list by reference: len, indexing, iteration, typed extraction.
    let list = root.callattr("make_list", (5,)).await.expect("make_list").into_netref().expect("netref");
    assert_eq!(list.class_name(), "builtins.list");
    assert_eq!(list.len().await.expect("len"), 5);
    assert_eq!(list.getitem(-1).await.expect("getitem").extract::<i64>().expect("int"), 4);
    assert!(list.contains(3).await.expect("contains"));
    assert_eq!(list.get::<Vec<i64>>().await.expect("get"), vec![0, 1, 2, 3, 4]);
    let set: std::collections::BTreeSet<i64> = list.get().await.expect("get as a set");
    assert_eq!(set.len(), 5);
    let d = root.callattr("make_dict", ()).await.expect("make_dict").into_netref().expect("netref");
    let keys: Vec<String> = d.get().await.expect("a dict's keys");
    assert_eq!(keys, ["a", "b"]);
    assert_eq!(d.getitem("b").await.expect("getitem").extract::<i64>().expect("int"), 2);

    // Exceptions keep class, message and the remote traceback.
    let err = root.callattr("fail", ("ValueError", "bad value")).await.expect_err("must fail");
    let exc = err.exception().expect("remote exception");
    assert_eq!((exc.module.as_str(), exc.class.as_str()), ("builtins", "ValueError"));
    assert_eq!(exc.message(), "bad value");
    assert!(exc.traceback.contains("ValueError: bad value"), "{}", exc.traceback);
    let err = root.callattr("fail", ("KeyError", "k")).await.expect_err("must fail");
    assert!(err.is_exception("KeyError"));

    // A Rust closure as a callback, called by the Python server.
    let calls = Arc::new(Mutex::new(0));
    let c2 = calls.clone();
    let double = Object::function(move |x: i64| {
        *c2.lock().unwrap() += 1;
        Ok(x * 2)
    });
    let r: i64 = root.callattr("call_back", (double, 21)).await.expect("call_back").extract().expect("int");
    assert_eq!(r, 42);
    assert_eq!(*calls.lock().unwrap(), 1);

    // An exception raised in our callback reaches Python and comes back.
    let failing =
        Object::function(|| -> rpyc::Result<()> { Err(rpyc::Exception::new("KeyError", "from rust").into()) });
    let err = root.callattr("call_back", (failing,)).await.expect_err("must fail");
    assert!(err.is_exception("KeyError"), "{err}");

    // Events: the Python server calls us from its own thread.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let cb = Object::function(move |i: i64| {
        s2.lock().unwrap().push(i);
        Ok(())
    });
    root.callattr("subscribe", (cb, 5)).await.expect("subscribe");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < 5 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*seen.lock().unwrap(), vec![0, 1, 2, 3, 4]);

    // Async results, Python-style.
    let res = root.async_callattr("sleep", (0.2,)).expect("async");
    res.set_expiry(Some(Duration::from_secs(15)));
    assert!(!res.ready());
    res.value().await.expect("value");
    assert!(res.ready() && !res.error());
    let res = root.async_callattr("sleep", (2,)).expect("async");
    res.set_expiry(Some(Duration::from_millis(100)));
    assert!(res.value().await.is_err());
    assert!(res.expired());

    conn.ping().await.expect("ping");
    conn.close().await;
    assert!(conn.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_drives_python6_service() {
    service_checks(Dialect::V6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_drives_python5_service() {
    service_checks(Dialect::V5).await;
}

async fn classic_checks(dialect: Dialect) {
    let python = if dialect == Dialect::V5 { python5() } else { python6() };
    let (_server, port) = python_server(&python, &["--kind", "classic"]);
    let conn = connect(port, dialect).await;
    let c = Classic::from_connection(conn).await.expect("classic");

    // modules.sys.path
    let sys = c.module("sys").await.expect("sys");
    let path: Vec<String> =
        sys.getattr("path").await.expect("path").into_netref().expect("list").get().await.expect("strings");
    assert!(!path.is_empty());
    // modules["xml.dom.minidom"]
    let minidom = c.module("xml.dom.minidom").await.expect("minidom");
    assert_eq!(minidom.getattr("__name__").await.expect("name").extract::<String>().expect("str"), "xml.dom.minidom");

    // execute("import math"); eval("2*math.pi")
    c.execute("import math").await.expect("execute");
    let tau: f64 = c.eval_as("2*math.pi").await.expect("eval");
    assert!((tau - std::f64::consts::TAU).abs() < 1e-12);

    // builtins.open to write and read back a temp file
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("hello.txt");
    let builtins = c.builtins().await.expect("builtins");
    let f =
        builtins.callattr("open", (file.display().to_string(), "w")).await.expect("open").into_netref().expect("file");
    f.callattr("write", ("hello from rust",)).await.expect("write");
    f.callattr("close", ()).await.expect("close");
    let f = builtins.callattr("open", (file.display().to_string(),)).await.expect("open").into_netref().expect("file");
    let text: String = f.call_method("read", ()).await.expect("read");
    f.callattr("close", ()).await.expect("close");
    assert_eq!(text, "hello from rust");

    // A local closure as the callback of the remote map().
    let local_calls = Arc::new(Mutex::new(0));
    let lc = local_calls.clone();
    let square = Object::function(move |x: i64| {
        *lc.lock().unwrap() += 1;
        Ok(x * x)
    });
    let mapped =
        builtins.callattr("map", (square, (1, 2, 3, 4))).await.expect("map").into_netref().expect("map object");
    let values: Vec<i64> = mapped.get().await.expect("iterate");
    assert_eq!(values, vec![1, 4, 9, 16]);
    assert_eq!(*local_calls.lock().unwrap(), 4);

    // Teleport by source.
    let cube = c.teleport("def cube(x):\n    return x ** 3\n", "cube").await.expect("teleport");
    assert_eq!(cube.call((3,)).await.expect("call").extract::<i64>().expect("int"), 27);

    // A Python error in eval arrives as its class.
    let err = c.eval("int('this is not a valid number')").await.expect_err("must fail");
    assert!(err.is_exception("ValueError"), "{err}");
    c.connection().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_drives_python6_classic_server() {
    classic_checks(Dialect::V6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_drives_python5_classic_server() {
    classic_checks(Dialect::V5).await;
}
