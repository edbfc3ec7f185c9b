//! Request dispatch against a live CONFORMANCE service: the input is cut
//! into messages that are framed correctly, so the fuzzer spends its time
//! in message decoding, unboxing, the handlers and the policy — not in
//! framing. The server must never panic, and must either answer or close.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpyc::channel::{encode_frame, ChannelConfig};
use rpyc::{AccessPolicy, Connection, ConnectionConfig, Credentials, Service};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"))
}

fn service() -> &'static Service {
    static S: OnceLock<Service> = OnceLock::new();
    S.get_or_init(rpyc::conformance::service)
}

/// A GETROOT request, so most inputs can reference the root as id 1.
const GETROOT: &[u8] = &[1, 0x11, 0x50, 0x11, 0x53, 0x11, 0x51, 0x02];

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let (client, server) = tokio::io::duplex(1 << 20);
        let conn = Connection::start(
            server,
            service().clone(),
            ConnectionConfig::default(),
            Credentials::default(),
            AccessPolicy::default(),
        );
        let (mut rd, mut wr) = tokio::io::split(client);
        let mut wire = encode_frame(GETROOT, &ChannelConfig::default());
        // Input: [len u8][payload]… — each payload becomes one frame.
        let mut rest = data;
        while let Some((&n, tail)) = rest.split_first() {
            let n = usize::from(n).min(tail.len());
            let (payload, tail) = tail.split_at(n);
            wire.extend(encode_frame(payload, &ChannelConfig::default()));
            rest = tail;
        }
        let _ = wr.write_all(&wire).await;
        let _ = wr.shutdown().await;
        // Drain replies until the server closes (bounded).
        let mut sink = vec![0u8; 64 << 10];
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(n) = rd.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        conn.abort("fuzz case done");
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    });
});
