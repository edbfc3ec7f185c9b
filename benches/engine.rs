//! Micro-benchmarks of the layers under a call: brine encode/decode, frame
//! encode/decode with and without zlib, and one request dispatched through
//! a client and a server connection joined in memory.
//!
//! ```text
//! cargo bench --bench engine                 # all
//! cargo bench --bench engine -- brine        # one group
//! ```
//!
//! Under `cargo test --all-targets` each benchmark runs once, as a test.
//! End-to-end figures over real sockets come from `scripts/bench.sh`
//! (BENCHMARKS.md).

// criterion_main! generates an undocumented `main`.
#![allow(missing_docs)]
// A benchmark that cannot set up has nothing to measure: failing loudly is right.
#![allow(clippy::panic)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rpyc::channel::{encode_frame, ChannelConfig, FrameReader};
use rpyc::wire::brine::{self, DecodeLimits};
use rpyc::wire::message::{self, Dialect, Handler};
use rpyc::wire::{Int, Value};
use rpyc::{ConnectionConfig, Service};
use std::hint::black_box;

/// Incompressible bytes (xorshift).
fn random_bytes(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Text-like bytes that zlib shrinks several times over.
fn compressible_bytes(n: usize) -> Vec<u8> {
    b"the quick brown fox jumps over the lazy dog; ".iter().copied().cycle().take(n).collect()
}

/// What a Python client sends for `root.add(5, 10)`: CALLATTR(root, "add", (5, 10), ()).
fn add_request() -> Value {
    let root =
        Value::Tuple(vec![Value::from("rpyc_rust.BenchService"), Value::from(94_000_000_123i64), Value::from(1)]);
    let boxed_args = Value::Tuple(vec![
        Value::from(2),
        Value::Tuple(vec![
            Value::Tuple(vec![Value::from(3), root]),
            Value::Tuple(vec![Value::from(1), Value::from("add")]),
            Value::Tuple(vec![Value::from(1), Value::Tuple(vec![Value::from(5), Value::from(10)])]),
            Value::Tuple(vec![Value::from(1), Value::Tuple(vec![])]),
        ]),
    ]);
    Value::Tuple(vec![Value::Int(Int::Small(Handler::CallAttr.id())), boxed_args])
}

fn brine_benches(c: &mut Criterion) {
    let limits = DecodeLimits::default();
    let mut g = c.benchmark_group("brine");
    let req = add_request();
    let mut wire = Vec::new();
    message::encode_message(Dialect::V6, message::MSG_REQUEST, 7, &req, &mut wire);
    g.bench_function("encode add request", |b| {
        let mut out = Vec::with_capacity(128);
        b.iter(|| {
            out.clear();
            message::encode_message(Dialect::V6, message::MSG_REQUEST, 7, black_box(&req), &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("decode add request", |b| {
        b.iter(|| message::decode_message(Dialect::V6, black_box(&wire), &limits).map(|m| m.seq))
    });
    let ints = Value::Tuple((0..1000).map(|i| Value::from(i * 1000)).collect());
    let ints_wire = brine::encode(&ints);
    g.throughput(Throughput::Elements(1000));
    g.bench_function("encode tuple of 1000 ints", |b| b.iter(|| brine::encode(black_box(&ints)).len()));
    g.bench_function("decode tuple of 1000 ints", |b| b.iter(|| brine::decode(black_box(&ints_wire), &limits).is_ok()));
    let big = Value::Bytes(random_bytes(1 << 20));
    let big_wire = brine::encode(&big);
    g.throughput(Throughput::Bytes(1 << 20));
    g.bench_function("encode 1 MiB bytes", |b| b.iter(|| brine::encode(black_box(&big)).len()));
    g.bench_function("decode 1 MiB bytes", |b| b.iter(|| brine::decode(black_box(&big_wire), &limits).is_ok()));
    g.finish();
}

fn frame_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|e| panic!("runtime: {e}"));
    let compressing = ChannelConfig::default();
    let mut plain = ChannelConfig::default();
    plain.compression_threshold = None;
    let mut g = c.benchmark_group("frame");
    for (name, data) in [
        ("64 KiB random", random_bytes(64 << 10)),
        ("64 KiB text", compressible_bytes(64 << 10)),
        ("1 MiB random", random_bytes(1 << 20)),
    ] {
        g.throughput(Throughput::Bytes(data.len() as u64));
        for (mode, cfg) in [("zlib", &compressing), ("plain", &plain)] {
            let mut always = cfg.clone();
            always.compress_up_to = usize::MAX;
            g.bench_function(format!("encode {name} {mode}"), |b| {
                b.iter(|| encode_frame(black_box(&data), &always).len())
            });
            let wire = encode_frame(&data, &always);
            g.bench_function(format!("decode {name} {mode}"), |b| {
                b.iter(|| {
                    let mut r = FrameReader::new(black_box(&wire[..]), always.clone());
                    rt.block_on(r.read_frame()).ok().flatten().map(|p| p.len())
                })
            });
        }
    }
    g.finish();
}

fn dispatch_benches(c: &mut Criterion) {
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("runtime: {e}"));
    let service = Service::builder("bench", || ())
        .method("add(a, b)", |a: i64, b: i64| Ok(a + b))
        .method("echo(x)", |x: rpyc::Object| Ok(x))
        .build();
    let (root, _conns) = rt.block_on(async {
        let (a, b) = tokio::io::duplex(256 << 10);
        let server = rpyc::Connection::start(
            b,
            service,
            ConnectionConfig::default(),
            rpyc::Credentials::default(),
            rpyc::AccessPolicy::default(),
        );
        let client = rpyc::connect_stream(a, Service::void(), ConnectionConfig::default());
        let root = client.root().await.unwrap_or_else(|e| panic!("root: {e}"));
        (root, (client, server))
    });
    let mut g = c.benchmark_group("dispatch");
    g.bench_function("add(5, 10) in memory, one task", |b| {
        b.iter(|| rt.block_on(root.call_method::<i64>("add", (5i64, 10i64))).ok())
    });
    let data = random_bytes(64 << 10);
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("echo 64 KiB in memory", |b| {
        b.iter_batched(
            || rpyc::Object::Value(Value::Bytes(data.clone())),
            |arg| rt.block_on(root.callattr("echo", (arg,))).is_ok(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, brine_benches, frame_benches, dispatch_benches);
criterion_main!(benches);
