//! Where a Python peer notices the difference: values nested as deep as
//! Python peers nest them (256 levels pass both ways; Python's own brine
//! stops near 330, deeper ones are refused without harming the server),
//! the safe dunders every Python object has, and rpyc's experimental
//! `bind_threads` framing (refused with a reason the peer raises).

use crate::common::{self, python6, run_with_timeout};
use rpyc::{Object, ServerConfig, Value};
use std::process::Command;
use std::time::Duration;

fn nested(depth: usize) -> Value {
    (0..depth).fold(Value::Tuple(vec![]), |v, _| Value::Tuple(vec![v]))
}

fn depth_of(v: &Value) -> usize {
    let mut d = 0;
    let mut v = v;
    while let Value::Tuple(items) = v {
        match items.first() {
            Some(inner) => {
                d += 1;
                v = inner;
            }
            None => break,
        }
    }
    d
}

const PY_ECHO_DEEP: &str = r#"
import sys, rpyc
c = rpyc.connect("127.0.0.1", int(sys.argv[1]))
for n in (64, 256, 290):
    v = ()
    for _ in range(n):
        v = (v,)
    r = c.root.echo(v)
    d = 0
    while r:
        r = r[0]
        d += 1
    print("depth", n, "echoed", d)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_echoes_deep_tuples_through_a_rust_server() {
    let (addr, stop) = common::serve(rpyc::conformance::service(), ServerConfig::default()).await;
    let port = addr.port().to_string();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(python6());
        cmd.arg("-c").arg(PY_ECHO_DEEP).arg(port);
        run_with_timeout(cmd, Duration::from_secs(60))
    })
    .await
    .unwrap();
    for n in [64, 256, 290] {
        assert!(out.contains(&format!("depth {n} echoed {n}")), "{out}");
    }
    assert!(ok, "{out}");
    // Deeper than any Python peer can send: refused, and the server keeps
    // serving (tests/engine/hostile.rs sends 10,000 levels as raw bytes).
    let conn = rpyc::connect(&addr.to_string()).await.unwrap();
    let root = conn.root().await.unwrap();
    let err = root.call_method::<Value>("echo", (Object::Value(nested(400)),)).await;
    assert!(err.is_err(), "a 400-deep value must not pass");
    let conn = rpyc::connect(&addr.to_string()).await.unwrap();
    let v: i64 = conn.root().await.unwrap().call_method("add", (2, 3)).await.unwrap();
    assert_eq!(v, 5);
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_echoes_deep_tuples_through_a_python_server() {
    let (_server, port) =
        tokio::task::spawn_blocking(|| common::python_server(&python6(), &["--kind", "service"])).await.unwrap();
    let conn = rpyc::connect(&format!("127.0.0.1:{port}")).await.unwrap();
    let root = conn.root().await.unwrap();
    for n in [64, 256, 290] {
        let back: Value = root.call_method("echo", (Object::Value(nested(n)),)).await.unwrap();
        assert_eq!(depth_of(&back), n);
    }
}

/// The dunders of RPyC's `safe_attrs` that every Python object has work on
/// Rust objects as on a Python server's.
const PY_SAFE_ATTRS: &str = r#"
import sys, rpyc
c = rpyc.connect("127.0.0.1", int(sys.argv[1]))
r = c.root
print("doc", repr(r.__doc__))
print("format-empty", format(r, "") == str(r), r.__format__("") == str(r), "{}".format(r) == str(r))
try:
    format(r, "x")
    print("format-x no error")
except TypeError as e:
    print("format-x TypeError", "unsupported format string" in str(e))
print("hash", r.__hash__() == hash(r))
print("eq", r.__eq__(r), r.__ne__(r))
print("lt", r.__lt__(r) is NotImplemented)
print("repr-str", r.__repr__() == repr(r), r.__str__() == str(r))
try:
    r.__bool__
    print("bool present")
except AttributeError:
    print("bool AttributeError")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_attrs_on_rust_objects_behave_as_on_python_objects() {
    let (addr, stop) = common::serve(rpyc::conformance::service(), ServerConfig::default()).await;
    let port = addr.port().to_string();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(python6());
        cmd.arg("-c").arg(PY_SAFE_ATTRS).arg(port);
        run_with_timeout(cmd, Duration::from_secs(60))
    })
    .await
    .unwrap();
    stop.shutdown();
    assert!(ok, "{out}");
    for want in [
        "doc 'The CONFORMANCE service: what every rpyc implementation must answer alike.'",
        "format-empty True True True",
        "format-x TypeError True",
        "hash True",
        "eq True False",
        "lt True",
        "repr-str True True",
        "bool AttributeError",
    ] {
        assert!(out.lines().any(|l| l == want), "expected {want:?} in:\n{out}");
    }
}

/// A Python client using rpyc's experimental `bind_threads` framing gets
/// an exception naming it, and the server keeps serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_threads_clients_are_told_why_they_are_refused() {
    let (addr, stop) = common::serve(rpyc::conformance::service(), ServerConfig::default()).await;
    let port = addr.port().to_string();
    let script = r#"
import sys, rpyc
c = rpyc.connect("127.0.0.1", int(sys.argv[1]), config={"bind_threads": True, "sync_request_timeout": 10})
try:
    c.root.get_answer()
    print("ANSWERED")
except NotImplementedError as e:
    print("REFUSED", str(e).splitlines()[0])
"#;
    let (_, out) = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(python6());
        cmd.arg("-c").arg(script).arg(port);
        run_with_timeout(cmd, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert!(out.contains("REFUSED the peer uses rpyc's experimental bind_threads framing"), "{out}");
    let conn = rpyc::connect(&addr.to_string()).await.unwrap();
    let v: i64 = conn.root().await.unwrap().call_method("get_answer", ()).await.unwrap();
    assert_eq!(v, 42);
    stop.shutdown();
}
