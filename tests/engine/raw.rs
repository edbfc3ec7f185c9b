//! A raw RPyC peer for hostile-input tests: it writes whatever bytes a test
//! wants and reads frames back with hard deadlines.

use rpyc::channel::{encode_frame, ChannelConfig, FrameReader};
use rpyc::wire::message::{decode_message, encode_message, Dialect, Handler, Message, MSG_REQUEST};
use rpyc::wire::{DecodeLimits, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Raw {
    pub stream: TcpStream,
    seq: i64,
}

pub fn boxed(v: Value) -> Value {
    Value::Tuple(vec![Value::from(1), v])
}

pub fn request_frame(seq: i64, handler: Handler, boxed_args: Value) -> Vec<u8> {
    let mut payload = Vec::new();
    encode_message(
        Dialect::V6,
        MSG_REQUEST,
        seq,
        &Value::Tuple(vec![Value::from(handler.id()), boxed_args]),
        &mut payload,
    );
    encode_frame(&payload, &ChannelConfig::default())
}

impl Raw {
    pub async fn connect(addr: std::net::SocketAddr) -> Raw {
        Raw { stream: TcpStream::connect(addr).await.expect("connect"), seq: 1000 }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        // The server may already have hung up; that is what some tests expect.
        let _ = self.stream.write_all(bytes).await;
    }

    pub async fn request(&mut self, handler: Handler, args: Vec<Value>) -> i64 {
        self.seq += 1;
        let frame = request_frame(self.seq, handler, boxed(Value::Tuple(args)));
        self.send(&frame).await;
        self.seq
    }

    /// Reads one message, or `None` on EOF/error/timeout.
    pub async fn read(&mut self, timeout: Duration) -> Option<Message> {
        let mut r = FrameReader::new(&mut self.stream, ChannelConfig::default());
        let frame = tokio::time::timeout(timeout, r.read_frame()).await.ok()?.ok()??;
        decode_message(Dialect::V6, &frame, &DecodeLimits::default()).ok()
    }

    /// Reads until the reply for `seq` arrives (answering nothing else).
    pub async fn reply_to(&mut self, seq: i64, timeout: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = self.read(left).await?;
            if m.kind != MSG_REQUEST && m.seq == seq {
                return Some(m);
            }
        }
    }

    /// True if the server closed the connection within `timeout`.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// GETROOT, returning the root's id-pack.
    pub async fn root(&mut self) -> Value {
        let seq = self.request(Handler::GetRoot, vec![]).await;
        let m = self.reply_to(seq, Duration::from_secs(5)).await.expect("root reply");
        match m.args {
            Value::Tuple(t) if t.len() == 2 => t[1].clone(),
            other => panic!("unexpected root reply {other:?}"),
        }
    }
}

/// Boxes a reference to the receiver's own object (LABEL_LOCAL_REF).
pub fn local_ref(id_pack: &Value) -> Value {
    Value::Tuple(vec![Value::from(3), id_pack.clone()])
}

/// Builds a CALLATTR request's boxed args by hand: (obj, name, args, kwargs).
pub fn callattr_args(root_pack: &Value, name: &str, args: Vec<Value>) -> Value {
    Value::Tuple(vec![
        Value::from(2),
        Value::Tuple(vec![
            local_ref(root_pack),
            boxed(Value::from(name)),
            boxed(Value::Tuple(args)),
            boxed(Value::Tuple(vec![])),
        ]),
    ])
}

/// Tests that measure or move a lot of memory take this lock, so their
/// RSS readings do not see each other.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Resident memory of this process in bytes (Linux).
pub fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}
