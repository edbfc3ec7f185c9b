//! The blocking facade: script-style calls, 8 threads sharing one
//! connection while the server calls back into the client, nested calls
//! from callbacks, async results, and use from inside a tokio runtime.

use crate::common::{python6, python_server, ChildGuard};
use rpyc::blocking::{self, Classic};
use rpyc::Object;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn classic() -> (ChildGuard, Classic) {
    let (server, port) = python_server(&python6(), &["--kind", "classic"]);
    let builder = rpyc::ClientBuilder::new().timeout(Duration::from_secs(60));
    let c = Classic::connect_with(builder, &format!("127.0.0.1:{port}")).expect("connect");
    (server, c)
}

#[test]
fn eight_threads_share_one_connection_with_server_callbacks() {
    let (_server, c) = classic();
    let builtins = c.builtins().expect("builtins");
    let apply =
        c.teleport("def apply_all(f, xs):\n    return tuple(f(x) for x in xs)\n", "apply_all").expect("teleport");

    // A callback that itself calls back into the server (blocking) while
    // the server is in the middle of calling it.
    let nested_calls = Arc::new(AtomicUsize::new(0));
    let (n2, c2) = (nested_calls.clone(), c.clone());
    let nested = blocking::function(move |x: i64| {
        n2.fetch_add(1, Ordering::SeqCst);
        let doubled: i64 = c2.eval_as(&format!("{x} * 2"))?;
        Ok(doubled + 1)
    });
    // A plain inline callback.
    let inline_calls = Arc::new(AtomicUsize::new(0));
    let i2 = inline_calls.clone();
    let square = Object::function(move |x: i64| {
        i2.fetch_add(1, Ordering::SeqCst);
        Ok(x * x)
    });

    const THREADS: usize = 8;
    const ROUNDS: usize = 5;
    const ITEMS: i64 = 20;
    let started = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (c, builtins, apply) = (c.clone(), builtins.clone(), apply.clone());
            let (nested, square) = (nested.clone(), square.clone());
            std::thread::spawn(move || {
                let items: Vec<i64> = (0..ITEMS).map(|i| i + t as i64 * 1000).collect();
                for round in 0..ROUNDS {
                    // Remote map over a local callback, iterated from here.
                    let mapped = builtins.callattr("map", (square.clone(), items.clone())).expect("map");
                    let got: Vec<i64> = mapped.into_netref().expect("map object").get().expect("iterate");
                    assert_eq!(got, items.iter().map(|x| x * x).collect::<Vec<_>>(), "thread {t} round {round}");

                    // A teleported function calling a callback that calls back in.
                    let got: Vec<i64> =
                        apply.call((nested.clone(), items.clone())).expect("apply").extract().expect("tuple");
                    assert_eq!(got, items.iter().map(|x| 2 * x + 1).collect::<Vec<_>>(), "thread {t} round {round}");

                    // Iterating a remote iterable as a Rust Iterator.
                    let range =
                        builtins.callattr("range", (ITEMS,)).expect("range").into_netref().expect("range object");
                    let sum: i64 = range
                        .iter_batched(7)
                        .expect("iter")
                        .map(|item| item.and_then(|o| o.extract::<i64>()))
                        .sum::<rpyc::Result<i64>>()
                        .expect("sum");
                    assert_eq!(sum, (0..ITEMS).sum::<i64>());

                    // An async result waited on from this thread.
                    let res = builtins.async_callattr("pow", (t as i64 + 1, 2)).expect("async pow");
                    assert_eq!(res.value().expect("value").extract::<i64>().expect("int"), (t as i64 + 1).pow(2));
                    let _ = c.connection().ping().expect("ping");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker thread panicked");
    }
    let per_thread = ROUNDS * ITEMS as usize;
    assert_eq!(inline_calls.load(Ordering::SeqCst), THREADS * per_thread);
    assert_eq!(nested_calls.load(Ordering::SeqCst), THREADS * per_thread);
    assert!(started.elapsed() < Duration::from_secs(120));
    c.close().expect("close");
}

#[test]
fn script_style_proxies() {
    let (_server, c) = classic();
    let sys = c.module("sys").expect("sys");
    let path = sys.getattr("path").expect("path").into_netref().expect("list");
    let entries: Vec<String> = path.get().expect("strings");
    assert_eq!(entries.len(), path.len().expect("len"));
    let first: String = path.getitem(0).expect("[0]").extract().expect("str");
    assert_eq!(first, entries[0]);
    assert!(path.contains(entries[0].as_str()).expect("in"));

    // A remote dict: setitem, getitem, keyword arguments.
    let d = c.eval("{}").expect("dict").into_netref().expect("netref");
    d.setitem("answer", 42).expect("setitem");
    assert_eq!(d.getitem("answer").expect("getitem").extract::<i64>().expect("int"), 42);
    let sorted = c.builtins().expect("builtins").callattr_kw(
        "sorted",
        (vec![3, 1, 2],),
        rpyc::Kwargs::new().arg("reverse", true),
    );
    assert_eq!(sorted.expect("sorted").into_netref().expect("list").get::<Vec<i64>>().expect("ints"), vec![3, 2, 1]);

    // Errors carry class, message and traceback.
    let err = c.eval("int('this is not a valid number')").expect_err("ValueError");
    let exc = err.exception().expect("remote exception");
    assert_eq!(exc.qualified_name(), "ValueError");
    assert_eq!(exc.message(), "invalid literal for int() with base 10: 'this is not a valid number'");
    assert!(exc.traceback.contains("Traceback (most recent call last)"), "{}", exc.traceback);

    // Async result with an error.
    let res = c
        .builtins()
        .expect("b")
        .getattr("int")
        .expect("int")
        .into_netref()
        .expect("n")
        .async_call(("x",))
        .expect("async");
    res.wait().expect("wait");
    assert!(res.ready() && res.error());
    assert!(res.value().expect_err("ValueError").is_exception("ValueError"));

    // Remote file and context manager, blocking.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("b.txt").to_str().expect("utf-8").to_string();
    let f = c.open(&p, "w").expect("open");
    f.write_str("blocking").expect("write");
    drop(f); // the blocking guard closes synchronously on drop
    assert_eq!(std::fs::read_to_string(&p).expect("read"), "blocking");
    let lock = c.module("threading").expect("t").callattr("Lock", ()).expect("Lock").into_netref().expect("n");
    {
        let _held = blocking::RemoteContext::enter(&lock).expect("enter");
        assert!(lock.call_method::<bool>("locked", ()).expect("locked"));
    }
    assert!(!lock.call_method::<bool>("locked", ()).expect("locked"), "dropping the guard exits");

    // Redirected stdio, blocking.
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let s2 = seen.clone();
    let redirect = c.redirect_stdio_to(move |_, t| s2.lock().unwrap().push_str(t)).expect("redirect");
    c.execute("print('captured')").expect("print");
    redirect.restore().expect("restore");
    assert_eq!(*seen.lock().unwrap(), "captured\n");
    c.close().expect("close");
    assert!(c.connection().is_closed());
}

#[test]
fn blocking_call_from_an_inline_callback_fails_fast_instead_of_hanging() {
    let (_server, c) = classic();
    let c2 = c.clone();
    let message = Arc::new(std::sync::Mutex::new(String::new()));
    let m2 = message.clone();
    let inline = Object::function(move |x: i64| {
        match c2.eval("1") {
            Ok(_) => *m2.lock().unwrap() = "the nested call succeeded".into(),
            Err(e) => *m2.lock().unwrap() = e.to_string(),
        }
        Ok(x)
    });
    let started = Instant::now();
    let r: i64 = c.builtins().expect("b").callattr("abs", (-3,)).expect("abs").extract().expect("int");
    assert_eq!(r, 3);
    let r: Vec<i64> = c
        .builtins()
        .expect("b")
        .callattr("map", (inline, vec![7]))
        .expect("map")
        .into_netref()
        .expect("n")
        .get()
        .expect("iterate");
    assert_eq!(r, vec![7]);
    assert!(started.elapsed() < Duration::from_secs(10), "must not wait for a timeout");
    assert!(message.lock().unwrap().contains("rpyc::blocking::function"), "{}", message.lock().unwrap());
}

#[tokio::test(flavor = "current_thread")]
async fn blocking_api_inside_a_runtime_does_not_panic() {
    let (_server, port) = python_server(&python6(), &["--kind", "classic"]);
    // Connect and call from inside an async context (this blocks the test's
    // single thread, which is allowed; the connection runs elsewhere).
    let c = Classic::connect(&format!("127.0.0.1:{port}")).expect("connect");
    c.execute("import math").expect("execute");
    let tau: f64 = c.eval_as("2*math.pi").expect("eval");
    assert!((tau - std::f64::consts::TAU).abs() < 1e-12);
    c.close().expect("close");
}

#[test]
fn blocking_transfers_report_progress_on_the_calling_thread() {
    let (_server, c) = classic();
    let dir = tempfile::tempdir().expect("tempdir");
    let original = dir.path().join("blocking.bin");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&original, &data).expect("write");
    let caller = std::thread::current().id();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let mut opts = blocking::TransferOptions::default().on_progress(move |p: &blocking::Progress| {
        s2.lock().unwrap().push((std::thread::current().id(), p.direction, p.total_bytes, p.file_done));
    });
    opts.chunk_size = 32 << 10;
    let remote = dir.path().join("blocking-up.bin").to_str().expect("utf-8").to_string();
    let up = c.upload_with(&original, &remote, &opts).expect("upload");
    let back = dir.path().join("blocking-back.bin");
    let down = c.download_with(&remote, &back, &opts).expect("download");
    assert_eq!((up.bytes, down.bytes), (100_000, 100_000));
    assert_eq!(std::fs::read(&back).expect("read"), data);
    let seen = seen.lock().unwrap();
    // 4 chunks and the completion, each way.
    let totals: Vec<_> = seen.iter().map(|s| (s.1, s.2, s.3)).collect();
    let expect =
        |d| vec![(d, 32768, false), (d, 65536, false), (d, 98304, false), (d, 100_000, false), (d, 100_000, true)];
    let mut expected = expect(blocking::Direction::Upload);
    expected.extend(expect(blocking::Direction::Download));
    assert_eq!(totals, expected);
    assert!(seen.iter().all(|s| s.0 == caller), "the callback runs on the calling thread");
    c.close().expect("close");
}
