//! Hostile input: each test breaks the rules on one connection and checks
//! that the server gives a clear answer (an exception or a close), keeps its
//! memory bounded, and keeps serving a well-behaved second client.

use crate::common::compressed_frame;
use crate::common::serve;
use crate::raw::{boxed, callattr_args, local_ref, request_frame, rss, Raw};
use rpyc::channel::{encode_frame, ChannelConfig};
use rpyc::wire::message::{Handler, MSG_EXCEPTION, MSG_REPLY};
use rpyc::wire::Value;
use rpyc::ServerConfig;
use std::net::SocketAddr;
use std::time::Duration;

const MB: u64 = 1 << 20;

async fn server() -> (SocketAddr, rpyc::server::ShutdownHandle) {
    serve(rpyc::conformance::service(), ServerConfig::default()).await
}

/// A well-behaved client still gets served.
async fn still_serving(addr: SocketAddr) {
    let conn = tokio::time::timeout(Duration::from_secs(5), rpyc::connect(&addr.to_string()))
        .await
        .expect("connect in time")
        .expect("connect");
    let root = conn.root().await.expect("root");
    assert_eq!(root.call_method::<i64>("add", (20, 22)).await.expect("add"), 42);
}

fn exception_class(m: &rpyc::wire::message::Message) -> String {
    assert_eq!(m.kind, MSG_EXCEPTION, "expected an exception, got {m:?}");
    rpyc::Exception::load(m.args.clone()).class
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_lengths_close_at_once() {
    let _heavy = crate::raw::HEAVY.lock().await;
    let (addr, stop) = server().await;
    let before = rss();
    for first_bytes in [
        vec![0xff, 0xff, 0xff, 0xff, 0x00],            // a 4 GiB frame
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), // HTTP to a plain listener
        vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01],      // a TLS ClientHello
    ] {
        let mut raw = Raw::connect(addr).await;
        raw.send(&first_bytes).await;
        assert!(raw.closed_within(Duration::from_secs(2)).await, "not closed for {first_bytes:?}");
    }
    assert!(rss() < before + 64 * MB, "memory grew");
    still_serving(addr).await;
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_then_silence_costs_little_and_blocks_nobody() {
    let _heavy = crate::raw::HEAVY.lock().await;
    let (addr, stop) = server().await;
    let before = rss();
    let mut idle = Vec::new();
    for _ in 0..50 {
        let mut raw = Raw::connect(addr).await;
        // Claims 60 MB, sends 10 bytes, then goes quiet.
        let mut header = (60u32 << 20).to_be_bytes().to_vec();
        header.push(0);
        header.extend_from_slice(&[1; 10]);
        raw.send(&header).await;
        idle.push(raw);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rss() < before + 64 * MB, "lying length claims reserved memory");
    still_serving(addr).await;
    drop(idle);
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_dropped_after_the_idle_timeout() {
    let mut config = ServerConfig::default();
    config.connection.idle_timeout = Some(Duration::from_millis(300));
    let (addr, stop) = serve(rpyc::conformance::service(), config).await;
    let mut raw = Raw::connect(addr).await;
    raw.send(&[0, 0, 0, 9]).await; // half a header
    assert!(raw.closed_within(Duration::from_secs(3)).await);
    still_serving(addr).await;
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zlib_bomb_is_refused() {
    let _heavy = crate::raw::HEAVY.lock().await;
    let (addr, stop) = server().await;
    let before = rss();
    let zeros = vec![0u8; 200 << 20];
    let mut e = flate2_compress(&zeros);
    let mut frame = (e.len() as u32).to_be_bytes().to_vec();
    frame.push(1);
    frame.append(&mut e);
    frame.push(b'\n');
    drop(zeros);
    let mut raw = Raw::connect(addr).await;
    raw.send(&frame).await;
    assert!(raw.closed_within(Duration::from_secs(5)).await);
    assert!(rss() < before + 128 * MB, "inflation was not bounded");
    still_serving(addr).await;
    stop.shutdown();
}

fn flate2_compress(data: &[u8]) -> Vec<u8> {
    // Reuse the channel's own compressor: a 256 MiB limit lets it compress.
    let mut cfg = ChannelConfig::default();
    cfg.compress_up_to = usize::MAX;
    let frame = encode_frame(data, &cfg);
    frame[5..frame.len() - 1].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_close_only_that_connection() {
    let (addr, stop) = server().await;
    let mut deep = vec![2u8]; // v6 message type 2 then (seq, deep nesting)
    deep.extend([0x11, 0x51]);
    deep.extend(std::iter::repeat_n(0x10, 100_000));
    deep.push(0x00);
    let bad_utf8 = {
        let mut p = vec![1u8, 0x11, 0x51, 0x11, 0x53, 0x11, 0x51, 0x08, 0x0b, 0xff, 0xfe];
        p.truncate(p.len());
        p
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("deep nesting", deep),
        ("invalid utf-8", bad_utf8),
        ("unknown message type", vec![9, 0x02]),
        ("not brine", vec![1, 0xfe, 0xfe]),
        ("huge tuple claim", vec![1, 0x15, 0xff, 0xff, 0xff, 0xff]),
        ("huge bytes claim", vec![1, 0x0f, 0xff, 0xff, 0xff, 0x00]),
        ("first byte is neither dialect", vec![0x42]),
    ];
    for (what, payload) in cases {
        let mut raw = Raw::connect(addr).await;
        raw.send(&encode_frame(&payload, &ChannelConfig::default())).await;
        assert!(raw.closed_within(Duration::from_secs(3)).await, "{what}: connection not closed");
    }
    still_serving(addr).await;
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_exceptions_and_the_connection_lives_on() {
    let (addr, stop) = server().await;
    let mut raw = Raw::connect(addr).await;
    let root = raw.root().await;

    // Unknown handler.
    let frame = {
        let mut payload = Vec::new();
        rpyc::wire::message::encode_message(
            rpyc::Dialect::V6,
            1,
            77,
            &Value::Tuple(vec![Value::from(99), boxed(Value::Tuple(vec![]))]),
            &mut payload,
        );
        encode_frame(&payload, &ChannelConfig::default())
    };
    raw.send(&frame).await;
    let m = raw.reply_to(77, Duration::from_secs(3)).await.expect("reply");
    assert_eq!(exception_class(&m), "KeyError");

    // A forged object reference.
    let forged = Value::Tuple(vec![Value::from("rpyc_rust.ConformanceService"), Value::from(1), Value::from(999_999)]);
    let seq = 78;
    raw.send(&request_frame(seq, Handler::CallAttr, callattr_args(&forged, "add", vec![1.into(), 2.into()]))).await;
    let m = raw.reply_to(seq, Duration::from_secs(3)).await.expect("reply");
    assert_eq!(exception_class(&m), "KeyError");

    // DEL underflow: release the root far more times than it was handed out.
    let del = Value::Tuple(vec![Value::from(2), Value::Tuple(vec![local_ref(&root), boxed(Value::from(1_000_000))])]);
    raw.send(&request_frame(79, Handler::Del, del.clone())).await;
    raw.send(&request_frame(80, Handler::Del, del)).await;
    let m = raw.reply_to(80, Duration::from_secs(3)).await.expect("reply");
    assert_eq!(m.kind, MSG_REPLY);

    // Replies to sequence numbers we never used are ignored.
    let mut payload = Vec::new();
    rpyc::wire::message::encode_message(rpyc::Dialect::V6, MSG_REPLY, 123_456, &boxed(Value::None), &mut payload);
    raw.send(&encode_frame(&payload, &ChannelConfig::default())).await;

    // The connection still works: fetch the root again and call.
    let root = raw.root().await;
    raw.send(&request_frame(81, Handler::CallAttr, callattr_args(&root, "add", vec![1.into(), 2.into()]))).await;
    let m = raw.reply_to(81, Duration::from_secs(3)).await.expect("reply");
    assert_eq!(m.kind, MSG_REPLY);
    assert_eq!(m.args, boxed(Value::from(3)));

    // A frozenset of 100,000 equal members decodes in linear time.
    let fset = Value::FrozenSet(vec![Value::from("same"); 100_000]);
    raw.send(&request_frame(82, Handler::CallAttr, callattr_args(&root, "echo", vec![fset]))).await;
    let m = raw.reply_to(82, Duration::from_secs(10)).await.expect("reply");
    assert_eq!(m.kind, MSG_REPLY);
    still_serving(addr).await;
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_pipelined_requests_in_one_write_are_all_answered() {
    let (addr, stop) = server().await;
    let mut raw = Raw::connect(addr).await;
    let root = raw.root().await;
    let mut batch = Vec::new();
    for i in 0..500i64 {
        batch.extend(request_frame(
            10_000 + i,
            Handler::CallAttr,
            callattr_args(&root, "add", vec![i.into(), 1.into()]),
        ));
    }
    raw.send(&batch).await;
    let mut answered = std::collections::HashSet::new();
    while answered.len() < 500 {
        let m = raw.read(Duration::from_secs(10)).await.expect("reply");
        assert_eq!(m.kind, MSG_REPLY);
        let i = m.seq - 10_000;
        assert_eq!(m.args, boxed(Value::from(i + 1)));
        answered.insert(m.seq);
    }
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_its_replies_is_cut_off() {
    let _heavy = crate::raw::HEAVY.lock().await;
    let mut config = ServerConfig::default();
    config.connection.max_requests_in_flight = 1000;
    let (addr, stop) = serve(rpyc::conformance::service(), config).await;
    let mut raw = Raw::connect(addr).await;
    let root = raw.root().await;
    // Each request asks for a 64 KiB reply; nothing is read back. The bytes
    // are incompressible, so the replies cannot shrink into the socket
    // buffers and really pile up.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise = (0..64 << 10)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let blob = Value::Bytes(noise);
    let frame = request_frame(5, Handler::CallAttr, callattr_args(&root, "echo", vec![blob]));
    let before = rss();
    let writer = tokio::spawn(async move {
        for _ in 0..20_000 {
            if raw.send_checked(&frame).await.is_err() {
                return (true, raw, frame);
            }
        }
        (false, raw, frame)
    });
    let (cut_off, mut raw, frame) =
        tokio::time::timeout(Duration::from_secs(30), writer).await.expect("bounded").unwrap();
    assert!(cut_off, "the server kept accepting requests from a peer that reads nothing");
    assert!(rss() < before + 512 * MB, "unread replies piled up");
    still_serving(addr).await;
    // The server stopped reading; it must also let go of the socket (a
    // reset then fails our blocked write) instead of waiting forever for
    // us to read its replies.
    let released = tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncWriteExt;
        while raw.stream.write_all(&frame).await.is_ok() {}
    })
    .await
    .is_ok();
    assert!(released, "the server still holds the socket of a peer that reads nothing");
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_distinct_exception_classes_grow_nothing() {
    let _heavy = crate::raw::HEAVY.lock().await;
    // The server raises whatever class name the client asks for; each
    // arrives intact and nothing is cached per name.
    let (addr, stop) = server().await;
    let conn = rpyc::connect(&addr.to_string()).await.unwrap();
    let root = conn.root().await.unwrap();
    let before = rss();
    for i in 0..3000 {
        let class = format!("Custom{i}Error");
        let e = root.callattr("fail", (class.as_str(), "x")).await.unwrap_err();
        assert_eq!(e.exception().unwrap().class, class);
    }
    assert!(rss() < before + 32 * MB);
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_refuse_only_the_excess() {
    let mut config = ServerConfig::default();
    config.max_connections_per_peer = 5;
    let (addr, stop) = serve(rpyc::conformance::service(), config).await;
    let mut conns = Vec::new();
    for _ in 0..5 {
        let c = rpyc::connect(&addr.to_string()).await.unwrap();
        c.root().await.unwrap();
        conns.push(c);
    }
    let mut extra = Raw::connect(addr).await;
    assert!(extra.closed_within(Duration::from_secs(3)).await, "the sixth connection was accepted");
    // The first five are unaffected.
    for c in &conns {
        assert_eq!(c.root().await.unwrap().call_method::<i64>("add", (1, 1)).await.unwrap(), 2);
    }
    drop(conns);
    tokio::time::sleep(Duration::from_millis(300)).await;
    still_serving(addr).await;
    stop.shutdown();
}

impl Raw {
    async fn send_checked(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        tokio::time::timeout(Duration::from_secs(5), self.stream.write_all(bytes))
            .await
            .map_err(|_| std::io::Error::other("write stalled: the server stopped reading"))?
    }
}

/// `rpyc serve` as a child process (killed on drop), for tests that
/// measure the server's own peak memory.
struct ServeProcess {
    guard: crate::common::ChildGuard,
    addr: SocketAddr,
}

impl ServeProcess {
    fn start() -> ServeProcess {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rpyc"));
        cmd.env_remove("RUST_LOG").args(["serve", "--host", "127.0.0.1", "--port", "0"]);
        let guard = crate::common::spawn(cmd);
        let listening = guard.wait_line("listening on tcp://", Duration::from_secs(30));
        ServeProcess { addr: listening.parse().expect("listening address"), guard }
    }

    /// Peak resident memory so far (VmHWM), in bytes.
    fn peak_rss(&self) -> u64 {
        self.guard.peak_rss()
    }
}

/// A request payload (v6) for CALLATTR `name(*args)` on the root, with the
/// encoding of the argument `@@` replaced by `raw` brine bytes.
fn callattr_payload_with(root: &Value, name: &str, raw: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    rpyc::wire::message::encode_message(
        rpyc::Dialect::V6,
        rpyc::wire::message::MSG_REQUEST,
        7,
        &Value::Tuple(vec![Value::from(Handler::CallAttr.id()), callattr_args(root, name, vec![Value::from("@@")])]),
        &mut payload,
    );
    let marker = rpyc::wire::brine::encode(&Value::from("@@"));
    let at = payload.windows(marker.len()).position(|w| w == marker).expect("marker");
    [&payload[..at], raw, &payload[at + marker.len()..]].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_frame_cannot_decode_into_hundreds_of_megabytes() {
    let _heavy = crate::raw::HEAVY.lock().await;
    let server = ServeProcess::start();
    still_serving(server.addr).await;
    let mut raw = Raw::connect(server.addr).await;
    let root = raw.root().await;
    let base = server.peak_rss();
    // The frame of the report (8 tuples of a million None, 8 KB deflated;
    // it used to raise the server's RSS by 252 MiB), then the worst a
    // 64 KB frame can inflate to: 60 such tuples, 60 MB.
    for tuples in [8, 60] {
        let frame = compressed_frame(&callattr_payload_with(&root, "echo", &crate::common::tuples_of_none(tuples)));
        assert!(frame.len() <= 64 << 10, "{} bytes on the wire", frame.len());
        let mut raw = Raw::connect(server.addr).await;
        raw.send(&frame).await;
        assert!(raw.closed_within(Duration::from_secs(10)).await, "{tuples} tuples: connection not closed");
        let grown = server.peak_rss().saturating_sub(base);
        eprintln!("{tuples} tuples of None, {} bytes on the wire: peak RSS +{} MiB", frame.len(), grown / MB);
        assert!(grown <= 128 * MB, "a {}-byte frame raised the peak RSS by {} MiB", frame.len(), grown / MB);
    }
    // The connection that behaved is unaffected, and new ones are served.
    raw.send(&request_frame(8, Handler::CallAttr, callattr_args(&root, "add", vec![1.into(), 2.into()]))).await;
    assert_eq!(raw.reply_to(8, Duration::from_secs(5)).await.expect("reply").args, boxed(Value::from(3)));
    still_serving(server.addr).await;
    // Legitimate large payloads still work: a 60 MiB bytes echo.
    let conn = rpyc::connect(&server.addr.to_string()).await.expect("connect");
    let blob = vec![0x5a_u8; 60 << 20];
    let back = conn.root().await.expect("root").callattr("echo", (Value::Bytes(blob.clone()),)).await.expect("echo");
    assert_eq!(back.as_value(), Some(&Value::Bytes(blob)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_replies_are_capped_in_bytes_not_only_in_count() {
    let _heavy = crate::raw::HEAVY.lock().await;
    let server = ServeProcess::start();
    still_serving(server.addr).await;
    let mut raw = Raw::connect(server.addr).await;
    let root = raw.root().await;
    let base = server.peak_rss();
    // 16 requests of ~64 KB each (1 MB sent), each echoing 64 MiB of zeros
    // back; the replies are never read. They used to pile up to 1 GiB.
    let body = (64 << 20) - (4 << 10);
    let mut brine = vec![0x0f];
    brine.extend_from_slice(&(body as u32).to_be_bytes());
    brine.resize(5 + body, 0);
    let frame = compressed_frame(&callattr_payload_with(&root, "echo", &brine));
    drop(brine);
    for _ in 0..16 {
        tokio::time::timeout(Duration::from_secs(10), raw.send(&frame)).await.expect("1 MB fits the socket buffers");
    }
    // Bounded wait for the server to do all it will do.
    let mut grown = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = server.peak_rss().saturating_sub(base);
        if now == grown && now > 0 {
            break;
        }
        grown = now;
    }
    eprintln!("16 unread 64 MiB replies ({} bytes sent each): peak RSS +{} MiB", frame.len(), grown / MB);
    // The cap (64 MiB) plus one reply of 64 MiB plus one frame being read.
    assert!(grown <= 200 * MB, "unread replies raised the peak RSS by {} MiB", grown / MB);
    still_serving(server.addr).await;
    // Back-pressure, not loss: once the peer reads, the server goes on.
    for _ in 0..4 {
        let m = raw.read(Duration::from_secs(30)).await.expect("a reply once we read");
        assert_eq!(m.kind, MSG_REPLY);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_at_the_reply_cap_that_reads_nothing_is_cut_off() {
    let mut config = ServerConfig::default();
    config.connection = config.connection.with_max_queued_reply_bytes(4 << 20);
    config.connection.sync_request_timeout = Duration::from_millis(500);
    let (addr, stop) = serve(rpyc::conformance::service(), config).await;
    let mut raw = Raw::connect(addr).await;
    let root = raw.root().await;
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Vec<u8> = (0..1 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let frame = request_frame(5, Handler::CallAttr, callattr_args(&root, "echo", vec![Value::Bytes(noise)]));
    let started = std::time::Instant::now();
    let mut sent = 0;
    while raw.send_checked(&frame).await.is_ok() {
        sent += 1;
        assert!(sent < 1000, "the server kept reading requests of a peer that reads nothing");
    }
    assert!(raw.closed_within(Duration::from_secs(10)).await, "not cut off");
    eprintln!("cut off after {sent} requests, {:?}", started.elapsed());
    still_serving(addr).await;
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_integers_cannot_buy_seconds_of_cpu() {
    let _heavy = crate::raw::HEAVY.lock().await;
    let (addr, stop) = server().await;
    let mut raw = Raw::connect(addr).await;
    let root = raw.root().await;
    let int = |digits: usize| {
        let mut b = vec![0x17];
        b.extend_from_slice(&(digits as u32).to_be_bytes());
        b.resize(5 + digits, b'7');
        b
    };
    let tuple = |count: usize, digits: usize| {
        let mut b = vec![0x15];
        b.extend_from_slice(&(count as u32).to_be_bytes());
        b.extend(int(digits).repeat(count));
        b
    };
    // The attack of the report: a 96 KB frame of 15,000 integers of 4300
    // digits took 2 s to answer. Now it is refused.
    let frame = compressed_frame(&callattr_payload_with(&root, "echo", &tuple(15_000, 4300)));
    let mut hostile = Raw::connect(addr).await;
    let started = std::time::Instant::now();
    hostile.send(&frame).await;
    assert!(hostile.closed_within(Duration::from_secs(5)).await, "not refused");
    let refused = started.elapsed();
    // The most a message may hold (58 integers at the 4300-digit limit) is
    // echoed quickly.
    let allowed = rpyc::wire::DecodeLimits::default().max_int_digits_total / 4300;
    let started = std::time::Instant::now();
    raw.send(&compressed_frame(&callattr_payload_with(&root, "echo", &tuple(allowed, 4300)))).await;
    let m = raw.reply_to(7, Duration::from_secs(5)).await.expect("echo of the largest accepted integers");
    let answered = started.elapsed();
    assert_eq!(m.kind, MSG_REPLY);
    // For the record: how much of the refusal is inflating the frame.
    let started = std::time::Instant::now();
    let inflated = rpyc::channel::inflate(&frame[5..frame.len() - 1], 64 << 20).map(|p| p.len());
    let inflating = started.elapsed();
    eprintln!(
        "{} KB frame refused in {refused:?} (inflating its {inflated:?} bytes alone: {inflating:?}); \
         {allowed} integers echoed in {answered:?}",
        frame.len() >> 10
    );
    // Generous bounds for a loaded shared machine; the figures are ~10x lower.
    assert!(refused < Duration::from_secs(1) && answered < Duration::from_secs(1), "{refused:?} / {answered:?}");
    still_serving(addr).await;
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_held_by_unfinished_handlers_are_capped_in_bytes() {
    let mut config = ServerConfig::default();
    config.connection = config.connection.with_max_pending_request_bytes(3 << 20);
    config.connection.sync_request_timeout = Duration::from_secs(1);
    let (addr, stop) = serve(rpyc::conformance::service(), config).await;
    let mut raw = Raw::connect(addr).await;
    let root = raw.root().await;
    // call_back(func, blob) with `func` one of "our" objects: the server
    // calls it, we never answer, and the handler holds its 2 MiB argument.
    let call_back = |seq: i64| {
        let func = Value::Tuple(vec![Value::from(4), Value::Tuple(vec!["Fn".into(), 1.into(), seq.into()])]);
        let args =
            Value::Tuple(vec![Value::from(2), Value::Tuple(vec![func, boxed(Value::Bytes(vec![seq as u8; 2 << 20]))])]);
        let boxed_args = Value::Tuple(vec![
            Value::from(2),
            Value::Tuple(vec![local_ref(&root), boxed("call_back".into()), args, boxed(Value::Tuple(vec![]))]),
        ]);
        request_frame(seq, Handler::CallAttr, boxed_args)
    };
    raw.send(&call_back(1)).await;
    raw.send(&call_back(2)).await;
    raw.send(&call_back(3)).await;
    let m = raw.reply_to(3, Duration::from_secs(5)).await.expect("an answer to the third");
    assert_eq!(exception_class(&m), "MemoryError");
    assert!(rpyc::Exception::load(m.args).message().contains("max_pending_request_bytes"));
    still_serving(addr).await;
    // Once the two handlers give up on us, their bytes are released: the
    // next call_back runs (the server calls us back) instead of being refused.
    let (mut first, mut second) = (false, false);
    while !(first && second) {
        let m = raw.read(Duration::from_secs(10)).await.expect("the held calls end");
        first |= m.kind != rpyc::wire::message::MSG_REQUEST && m.seq == 1;
        second |= m.kind != rpyc::wire::message::MSG_REQUEST && m.seq == 2;
    }
    raw.send(&call_back(4)).await;
    loop {
        let m = raw.read(Duration::from_secs(5)).await.expect("a call back");
        assert!(m.kind == rpyc::wire::message::MSG_REQUEST || m.seq != 4, "refused: {m:?}");
        let handler = m.args.as_tuple().and_then(|t| t.first()).and_then(Value::as_i64);
        if m.kind == rpyc::wire::message::MSG_REQUEST && handler == Some(Handler::Call.id()) {
            break;
        }
    }
    stop.shutdown();
}
