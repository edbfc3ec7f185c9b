//! Hand-made requests a Python client would never send, aimed at the
//! places where Python reads more into a message than it looks: names in
//! CMP and OLDSLICING, numbers that equal ints, arguments that get splatted.
//! Each is refused with an exception; the connection and the upstream stay
//! usable.

use crate::*;
use rpyc::channel::{encode_frame, ChannelConfig, FrameReader};
use rpyc::transport::tls::connect_tls;
use rpyc::transport::BoxStream;
use rpyc::wire::message::{decode_message, encode_message, Message, MSG_EXCEPTION, MSG_REPLY, MSG_REQUEST};
use rpyc::wire::{DecodeLimits, Dialect, Exception, Handler, Value};
use tokio::io::AsyncWriteExt;

struct Raw {
    stream: BoxStream,
    seq: i64,
}

fn val(v: Value) -> Value {
    Value::Tuple(vec![Value::from(1), v])
}
fn local(pack: Value) -> Value {
    Value::Tuple(vec![Value::from(3), pack])
}
fn tuple_args(items: Vec<Value>) -> Value {
    Value::Tuple(vec![Value::from(2), Value::Tuple(items)])
}

impl Raw {
    async fn connect(gw: &Gw, pki: &Pki) -> Raw {
        let (stream, _) = step("raw connect", connect_tls(&gw.addr.to_string(), &pki.client("bob"))).await.unwrap();
        Raw { stream, seq: 100 }
    }

    async fn send_payload(&mut self, payload: &[u8]) {
        let _ = self.stream.write_all(&encode_frame(payload, &ChannelConfig::default())).await;
        let _ = self.stream.flush().await;
    }

    /// Sends `(handler, boxed)` and returns the answer.
    async fn request(&mut self, handler: Value, boxed: Value) -> Message {
        self.seq += 1;
        let mut payload = Vec::new();
        encode_message(Dialect::V6, MSG_REQUEST, self.seq, &Value::Tuple(vec![handler, boxed]), &mut payload);
        self.send_payload(&payload).await;
        let seq = self.seq;
        loop {
            let m = self.read().await.expect("an answer");
            if m.kind != MSG_REQUEST && m.seq == seq {
                return m;
            }
        }
    }

    async fn read(&mut self) -> Option<Message> {
        let mut r = FrameReader::new(&mut self.stream, ChannelConfig::default());
        let frame = tokio::time::timeout(STEP, r.read_frame()).await.ok()?.ok()??;
        decode_message(Dialect::V6, &frame, &DecodeLimits::default()).ok()
    }
}

fn exception(m: &Message) -> Exception {
    assert_eq!(m.kind, MSG_EXCEPTION, "expected an exception, got {:?}", m.args);
    Exception::load(m.args.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_and_the_connection_survives() {
    bounded(async {
        let pki = Pki::new();
        let (_server, _port, gw) = python_behind_gateway("classic", &pki, "").await;
        let mut raw = Raw::connect(&gw, &pki).await;
        let h = |h: Handler| Value::from(h.id());
        let root = raw.request(h(Handler::GetRoot), val(Value::Tuple(vec![]))).await;
        assert_eq!(root.kind, MSG_REPLY);
        let pack = root.args.as_tuple().unwrap()[1].clone();
        let [name, cid, iid] = pack.as_tuple().unwrap() else { panic!("id-pack {pack:?}") };
        let root_ref = local(pack.clone());

        // CMP looks the op up on type(root) and calls it: `eval` by another door.
        let m = raw
            .request(h(Handler::Cmp), tuple_args(vec![root_ref.clone(), val("6*7".into()), val("eval".into())]))
            .await;
        let e = exception(&m);
        assert!(e.is("AttributeError") && e.message() == "cannot access 'eval'", "{e}");
        // OLDSLICING's attempt and fallback names.
        let m = raw
            .request(
                h(Handler::OldSlicing),
                tuple_args(vec![
                    root_ref.clone(),
                    val("__getitem__".into()),
                    val("execute".into()),
                    val("x = 1".into()),
                    val(Value::None),
                    val(Value::Tuple(vec![])),
                ]),
            )
            .await;
        // OLDSLICING is not granted by default.
        assert!(exception(&m).is("PermissionError"));
        // The root's id-pack with float ids (Python: 1.0 == 1, same hash).
        let as_float = |v: &Value| Value::Float(v.as_i64().unwrap() as f64);
        let alias = local(Value::Tuple(vec![name.clone(), as_float(cid), as_float(iid)]));
        let m = raw.request(h(Handler::GetAttr), tuple_args(vec![alias, val("eval".into())])).await;
        let e = exception(&m);
        assert!(e.is("TypeError") && e.message().contains("malformed"), "{e}");
        // A handler number that is a float (4.0 is GETATTR to Python).
        let m = raw.request(Value::Float(4.0), tuple_args(vec![root_ref.clone(), val("eval".into())])).await;
        assert!(exception(&m).is("TypeError"));
        // Arguments as a reference: Python would iterate it on the server.
        let m = raw.request(h(Handler::GetAttr), local(pack.clone())).await;
        assert!(exception(&m).is("TypeError"));
        // A by-value target: the first step of ().__class__.__base__…
        let m =
            raw.request(h(Handler::GetAttr), val(Value::Tuple(vec![Value::Tuple(vec![]), "__class__".into()]))).await;
        assert!(exception(&m).is("PermissionError"));
        // PICKLE and SETATTR handlers.
        let m = raw.request(h(Handler::Pickle), tuple_args(vec![root_ref.clone(), val(Value::from(2))])).await;
        assert!(exception(&m).is("PermissionError"));
        // A DEL naming the root with a bytes class name: Python's lookup is
        // exact, so it would release nothing there while the gateway's count
        // dropped.
        let bytes_pack =
            Value::Tuple(vec![Value::Bytes(name.as_str().unwrap().as_bytes().to_vec()), cid.clone(), iid.clone()]);
        let m = raw.request(h(Handler::Del), tuple_args(vec![local(bytes_pack), val(Value::from(1))])).await;
        assert!(exception(&m).is("TypeError"));
        // Values that are cheap to relay but costly for Python to build: a
        // frozenset of colliding ints (quadratic), a flood of small values.
        // (Python ints hash to themselves: an attacker picks colliding ones;
        // the gateway bounds the worst case by size.)
        let colliding: Vec<Value> = (0..5_000i64).map(|i| Value::from(i.wrapping_mul((1 << 61) - 1))).collect();
        let m = raw.request(h(Handler::Ping), val(Value::Tuple(vec![Value::FrozenSet(colliding)]))).await;
        let e = exception(&m);
        assert!(e.is("RuntimeError") && e.message().contains("max_set_work"), "{e}");
        let flood = Value::Tuple((0..3).map(|_| Value::Tuple(vec![Value::None; 400_000])).collect());
        let m = raw.request(h(Handler::Ping), val(Value::Tuple(vec![flood]))).await;
        let e = exception(&m);
        assert!(e.is("RuntimeError") && e.message().contains("max_values"), "{e}");
        // Big integers: Python's decimal conversion is what they cost.
        let big: num_bigint::BigInt = "7".repeat(4000).parse().unwrap();
        let bigs = Value::Tuple((0..100).map(|_| Value::Int(rpyc::wire::Int::Big(big.clone()))).collect());
        let m = raw.request(h(Handler::Ping), val(Value::Tuple(vec![bigs]))).await;
        let e = exception(&m);
        assert!(e.is("RuntimeError") && e.message().contains("digits"), "{e}");
        // …and after all that, the connection still works.
        let m = raw
            .request(
                h(Handler::CallAttr),
                tuple_args(vec![
                    root_ref.clone(),
                    val("get_service_name".into()),
                    val(Value::Tuple(vec![])),
                    val(Value::Tuple(vec![])),
                ]),
            )
            .await;
        assert_eq!(m.kind, MSG_REPLY, "{:?}", m.args);
        assert_eq!(m.args, val("SLAVE".into()));
        let metrics = gw.handle.metrics_text();
        for (reason, n) in [("malformed", 4), ("member", 1), ("handler", 2), ("object", 1), ("limit", 3)] {
            let line = format!("rpyc_gateway_denials_total{{reason=\"{reason}\"}} {n}");
            assert!(metrics.contains(&line), "{line} missing in {metrics}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_only_that_connection() {
    bounded(async {
        let pki = Pki::new();
        let (_server, _port, gw) = python_behind_gateway("classic", &pki, "").await;
        // Not RPyC at all.
        let mut raw = Raw::connect(&gw, &pki).await;
        raw.send_payload(b"\xff\xfe not a message").await;
        assert!(raw.read().await.is_none(), "the gateway must hang up");
        // A frame header claiming 1 GiB.
        let mut raw = Raw::connect(&gw, &pki).await;
        let _ = raw.stream.write_all(&[0x40, 0, 0, 0, 0]).await;
        assert!(raw.read().await.is_none(), "the gateway must hang up");
        // A valid first message, then a truncated brine value.
        let mut raw = Raw::connect(&gw, &pki).await;
        let m = raw.request(Value::from(Handler::Ping.id()), val(Value::Tuple(vec!["hi".into()]))).await;
        assert_eq!(m.args, val("hi".into()));
        raw.send_payload(&[1, 0x11, 0x51, 0x0f, 0xff]).await;
        assert!(raw.read().await.is_none(), "the gateway must hang up");
        // Everyone else is served.
        let conn = rust_client(&gw, &pki, "carol").await;
        let root = step("root", conn.root()).await.unwrap();
        let name: String = step("call", root.call_method("get_service_name", ())).await.unwrap();
        assert_eq!(name, "SLAVE");
    })
    .await;
}

/// One request whose last argument is `tuples` tuples of a million Nones,
/// compressed: a few KB on the wire, `tuples` MB inflated, ~32 bytes per
/// None if decoded into values.
fn bomb(handler: Handler, seq: i64, root: &Value, tuples: u8) -> Vec<u8> {
    // (1, (seq, (handler, (2, ((3, root), (1, "x"), (1, <tuples>))))))
    let mut head = Vec::new();
    let tuple = |items: Vec<Value>| Value::Tuple(items);
    let args = tuple(vec![
        Value::from(handler.id()),
        tuple(vec![
            Value::from(2),
            tuple(vec![local(root.clone()), val("x".into()), Value::Tuple(vec![Value::from(1), Value::None])]),
        ]),
    ]);
    encode_message(Dialect::V6, MSG_REQUEST, seq, &args, &mut head);
    // Replace the trailing None (1 byte) with the tuples.
    assert_eq!(head.pop(), Some(0x00));
    head.extend_from_slice(&common::tuples_of_none(tuples));
    common::compressed_frame(&head)
}

/// Compressed frames that inflate to 60 MB of `None`s, in requests the
/// gateway refuses: its memory grows by about the inflated size, not by the
/// ~2 GB their values would take, and the connection keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_amplification_is_bounded_in_the_gateway() {
    bounded(async {
        let pki = Pki::new();
        let (_server, port) = blocking(|| common::python_server(&common::python6(), &["--kind", "classic"])).await;
        let dir = pki.dir.path().display().to_string();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rpyc"));
        cmd.args(["-q", "gateway", "--listen", "tls://127.0.0.1:0", "--tls", &dir, "--upstream"])
            .arg(format!("tcp://127.0.0.1:{port}"));
        let child = common::spawn(cmd);
        let (child, url) = blocking(move || {
            let l = child.wait_line("listening ", STEP);
            (child, l)
        })
        .await;
        let addr = url.trim_start_matches("tls://").to_string();
        let connect = || async {
            let (stream, _) = step("connect", connect_tls(&addr, &pki.client("bob"))).await.unwrap();
            let mut raw = Raw { stream, seq: 100 };
            let root = raw.request(Value::from(Handler::GetRoot.id()), val(Value::Tuple(vec![]))).await;
            let pack = root.args.as_tuple().unwrap()[1].clone();
            (raw, pack)
        };
        let (mut raw, pack) = connect().await;
        let before = child.peak_rss();
        const N: u8 = 60;
        for (i, h) in [Handler::Pickle, Handler::GetAttr, Handler::Pickle, Handler::GetAttr].into_iter().enumerate() {
            let frame = bomb(h, 1000 + i as i64, &pack, N);
            assert!(frame.len() < 64 << 10, "the bomb is {} bytes on the wire", frame.len());
            raw.stream.write_all(&frame).await.unwrap();
            let m = loop {
                let m = raw.read().await.expect("an answer to the bomb");
                if m.seq == 1000 + i as i64 {
                    break m;
                }
            };
            let e = exception(&m);
            assert!(e.is("RuntimeError") && e.message().contains("max_values"), "{e}");
        }
        let sequential = child.peak_rss().saturating_sub(before);
        assert!(
            sequential < 256 << 20,
            "four 64 KB frames, one after another, raised the gateway's peak by {} MiB",
            sequential >> 20
        );
        // Four at once, on four connections.
        let mut tasks = Vec::new();
        for i in 0..4 {
            let (mut raw, pack) = connect().await;
            tasks.push(tokio::spawn(async move {
                raw.stream.write_all(&bomb(Handler::Pickle, 2000 + i, &pack, N)).await.unwrap();
                loop {
                    let m = raw.read().await.expect("an answer to the bomb");
                    if m.seq == 2000 + i {
                        return m.kind;
                    }
                }
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), MSG_EXCEPTION);
        }
        let parallel = child.peak_rss().saturating_sub(before);
        assert!(parallel < 512 << 20, "four 64 KB frames at once raised the gateway's peak by {} MiB", parallel >> 20);
        // Still serving.
        let m = raw
            .request(
                Value::from(Handler::CallAttr.id()),
                tuple_args(vec![
                    local(pack.clone()),
                    val("get_service_name".into()),
                    val(Value::Tuple(vec![])),
                    val(Value::Tuple(vec![])),
                ]),
            )
            .await;
        assert_eq!(m.args, val("SLAVE".into()));
        eprintln!("gateway peak RSS growth: sequential {} MiB, parallel {} MiB", sequential >> 20, parallel >> 20);
    })
    .await;
}
