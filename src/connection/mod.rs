//! Layer 3: one symmetric RPyC connection over any byte stream
//! (mirrors `rpyc/core/protocol.py`).
//!
//! Each connection runs two tasks: a *reader* that decodes frames, routes
//! replies to the calls waiting for them and starts request handlers, and a
//! *writer* that owns the write half and coalesces queued frames into as few
//! writes as possible. A request handler is polled once inline — synchronous
//! handlers therefore run in request order, exactly like Python's
//! single-threaded dispatch — and is spawned as its own task only if it has
//! to wait. The reader never waits on a handler, so a handler may call back
//! into the peer (and the peer back into us) to any depth without deadlock.
//!
//! Every limit is per connection: a peer that breaks one loses its own
//! connection with a logged reason, and nobody else notices.
//!
//! What a peer can make us hold is bounded in bytes, not only in counts:
//! one frame at a time is read (at most `max_inflated` once inflated) and
//! decoded within `DecodeLimits::max_decoded_bytes`; and replies it has not
//! read yet are capped by [`ConnectionConfig::max_queued_reply_bytes`]. At
//! the cap the reader stops taking requests from that peer (back-pressure:
//! its requests wait in its socket, not in our memory) until its replies
//! drain; a peer that reads nothing for `sync_request_timeout` meanwhile is
//! cut off. Only *replies* count: our own requests never pause our reader,
//! so two engines pipelining large calls at each other cannot deadlock.
//! Arguments held by the peer's requests whose handlers are still running
//! are capped too ([`ConnectionConfig::max_pending_request_bytes`]): beyond
//! it a new request is answered `MemoryError` at once.

mod async_result;
pub mod builtin;
mod dispatch;
pub mod handler;
pub mod netref;
pub mod object;

pub use async_result::AsyncResult;
pub use handler::{Args, FromCall, IntoArgs, IntoObject, Kwargs, SelfObject, Signature, This};
pub use netref::{Netref, RemoteIter};
pub use object::{Class, ClassBuilder, ClassDef, Instance, Object};

use crate::channel::{finish_frame, finish_frame_pieces, ChannelConfig, FrameReader, HEADER_LEN};
use crate::error::{Error, Result};
use crate::identity::Credentials;
use crate::policy::AccessPolicy;
use crate::service::Service;
use crate::wire::brine::{self, DecodeLimits, Pieces};
use crate::wire::message::{
    self, Dialect, Handler, Message, LABEL_LOCAL_REF, LABEL_REMOTE_REF, LABEL_TUPLE, LABEL_VALUE,
};
use crate::wire::{Exception, IdPack, Int, Value};
use netref::NetrefInner;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{oneshot, watch};
use tracing::Instrument;

/// Numbers connections in log spans (`conn{id=…}`), process-wide.
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Settings of one connection.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConnectionConfig {
    /// Framing limits and compression.
    pub channel: ChannelConfig,
    /// Brine decoding limits.
    pub decode: DecodeLimits,
    /// How long a call waits for its reply. Default: 30 s (Python's
    /// `sync_request_timeout`).
    pub sync_request_timeout: Duration,
    /// Requests from the peer that may be unanswered at once; a peer that
    /// exceeds it (e.g. by never reading its replies) is disconnected.
    /// Default: 8192.
    pub max_requests_in_flight: usize,
    /// Bytes of replies waiting for the peer to read them. Once they reach
    /// this, no further request from the peer is read until they drain
    /// below it again (the peer's own socket buffers fill and it blocks);
    /// if the peer reads nothing for [`sync_request_timeout`](Self::sync_request_timeout)
    /// meanwhile, the connection is closed with that reason. One reply may
    /// overshoot it (a 64 MiB reply is still sent whole), so the bound is
    /// this plus the largest reply. Default: 64 MiB.
    pub max_queued_reply_bytes: usize,
    /// Bytes of decoded arguments held by the peer's requests whose
    /// handlers are still running (async methods waiting on a timer, a
    /// callback into the peer, …). A request arriving while they hold this
    /// much is answered `MemoryError` at once and its arguments dropped, so
    /// what such requests hold is at most this plus one message
    /// ([`DecodeLimits::max_decoded_bytes`]). Default: 64 MiB.
    pub max_pending_request_bytes: usize,
    /// Objects we may hold for the peer (its live proxies of ours). Boxing
    /// one more fails that request with `MemoryError`. Default: 100,000.
    pub max_local_objects: usize,
    /// Close the connection after this long without a frame from the peer.
    /// Default: `None` (RPyC clients keep idle connections open).
    pub idle_timeout: Option<Duration>,
    /// The message framing to speak. `None` (the default for servers)
    /// detects it from the peer's first message; clients speak
    /// [`Dialect::V6`] unless told otherwise.
    pub dialect: Option<Dialect>,
    /// Send a traceback text with exceptions. Default: true (as Python).
    pub include_traceback: bool,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            channel: ChannelConfig::default(),
            decode: DecodeLimits::default(),
            sync_request_timeout: Duration::from_secs(30),
            max_requests_in_flight: 8192,
            max_queued_reply_bytes: 64 << 20,
            max_pending_request_bytes: 64 << 20,
            max_local_objects: 100_000,
            idle_timeout: None,
            dialect: None,
            include_traceback: true,
        }
    }
}

impl ConnectionConfig {
    /// Sets [`ConnectionConfig::max_queued_reply_bytes`].
    pub fn with_max_queued_reply_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_reply_bytes = bytes;
        self
    }

    /// Sets [`ConnectionConfig::max_pending_request_bytes`].
    pub fn with_max_pending_request_bytes(mut self, bytes: usize) -> Self {
        self.max_pending_request_bytes = bytes;
        self
    }

    /// Sets the brine limits ([`ConnectionConfig::decode`]).
    pub fn with_decode_limits(mut self, limits: DecodeLimits) -> Self {
        self.decode = limits;
        self
    }
}

/// The context of a call: which connection it came from and who is on the
/// other end. Handlers receive it by taking a `Ctx` parameter.
#[derive(Clone)]
pub struct Ctx {
    conn: Connection,
}

impl Ctx {
    /// The connection the call arrived on (use it to call back into the peer).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The peer's credentials, as the authenticator established them.
    pub fn credentials(&self) -> &Credentials {
        &self.conn.shared.credentials
    }

    /// The access policy in force for this connection.
    pub fn policy(&self) -> &AccessPolicy {
        &self.conn.shared.policy
    }

    /// How many of our objects the peer currently holds proxies for.
    pub fn live_objects(&self) -> usize {
        self.conn.live_objects()
    }
}

enum Out {
    Frame(Vec<u8>),
    /// One frame in several buffers (a large body travels in the buffer
    /// it was handed over in; see [`brine::encode_taking`]).
    Pieces(Vec<Vec<u8>>),
}

type BoxWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// Small frames are coalesced into one buffer up to this size.
const COALESCE: usize = 256 << 10;

/// How long the writer keeps trying to deliver queued frames to a peer
/// that reads nothing once the connection is closing.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Frames waiting to be written, and the write half while nobody writes.
///
/// Whoever queues a frame while the write half is idle writes it at once,
/// in its own task, as far as the stream takes it without waiting: a
/// reply from the reader task, a request from the caller's task. No
/// hand-over to another task, so no scheduler round trip on the latency
/// path. What the stream does not take at once goes to the writer task,
/// which waits for the stream; frames queued meanwhile are written in
/// order by whoever holds the write half, small ones coalesced into one
/// write (a batch of pipelined replies is one `send`).
#[derive(Default)]
struct Outbox {
    batch: Batch,
    /// The write half when idle.
    idle: Option<BoxWrite>,
    /// The write half handed to the writer task.
    handed: Option<BoxWrite>,
    /// No frames are queued any more; the writer task writes what is
    /// queued, then shuts the stream down.
    closing: bool,
}

/// Buffers to write, in order: frames (small ones coalesced) and pieces of
/// large ones.
#[derive(Default)]
struct Batch {
    bufs: std::collections::VecDeque<Vec<u8>>,
    /// Bytes of the first buffer already written.
    offset: usize,
    /// Frames in `bufs`.
    frames: usize,
    /// The same bytes as runs of (unwritten length, are they replies), in
    /// order: what is written is taken off the front, and reply bytes off
    /// [`ReplyBytes`].
    runs: std::collections::VecDeque<(usize, bool)>,
}

/// Bytes of replies queued and not yet written to the peer (see
/// [`ConnectionConfig::max_queued_reply_bytes`]).
#[derive(Default)]
struct ReplyBytes {
    bytes: AtomicUsize,
    cap: usize,
    /// Signalled when the bytes fall below the cap.
    drained: tokio::sync::Notify,
}

impl ReplyBytes {
    fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::AcqRel);
    }

    fn written(&self, n: usize) {
        let before = self.bytes.fetch_sub(n, Ordering::AcqRel);
        if before >= self.cap && before - n < self.cap {
            self.drained.notify_one();
        }
    }
}

impl Batch {
    fn push(&mut self, frame: Out, reply: bool) {
        self.frames += 1;
        let len = match &frame {
            Out::Frame(f) => f.len(),
            Out::Pieces(p) => p.iter().map(Vec::len).sum(),
        };
        match self.runs.back_mut() {
            Some((n, r)) if *r == reply => *n += len,
            _ => self.runs.push_back((len, reply)),
        }
        match frame {
            Out::Frame(f) => match self.bufs.back_mut() {
                Some(last) if last.len() < (64 << 10) && last.len() + f.len() <= COALESCE && f.len() < (64 << 10) => {
                    last.extend_from_slice(&f)
                }
                _ => self.bufs.push_back(f),
            },
            Out::Pieces(pieces) => self.bufs.extend(pieces.into_iter().filter(|p| !p.is_empty())),
        }
    }

    /// Takes `n` written bytes off the runs, and the reply bytes among
    /// them off `replies`.
    fn wrote(&mut self, mut n: usize, replies: &ReplyBytes) {
        while n > 0 {
            let Some((len, reply)) = self.runs.front_mut() else { return };
            let k = n.min(*len);
            *len -= k;
            n -= k;
            if *reply {
                replies.written(k);
            }
            if *len == 0 {
                self.runs.pop_front();
            }
        }
    }

    /// Appends `later` (frames queued after these).
    fn append(&mut self, later: Batch) {
        self.frames += later.frames;
        self.bufs.extend(later.bufs);
        for (len, reply) in later.runs {
            match self.runs.back_mut() {
                Some((n, r)) if *r == reply => *n += len,
                _ => self.runs.push_back((len, reply)),
            }
        }
    }

    /// Writes as much as the stream takes; `Ready(Ok)` once all is written.
    fn poll_write(
        &mut self,
        io: &mut BoxWrite,
        cx: &mut Context<'_>,
        replies: &ReplyBytes,
    ) -> Poll<std::io::Result<()>> {
        while let Some(front) = self.bufs.front() {
            let rest = front.get(self.offset..).unwrap_or_default();
            if rest.is_empty() {
                self.bufs.pop_front();
                self.offset = 0;
                continue;
            }
            match io.as_mut().poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.offset += n;
                    self.wrote(n, replies);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

struct Slot {
    obj: Arc<Instance>,
    refs: u64,
}

#[derive(Default)]
struct ObjectTable {
    by_id: HashMap<i64, Slot>,
    by_ptr: HashMap<usize, i64>,
    next_id: i64,
}

type Pending = HashMap<i64, (Handler, oneshot::Sender<Result<Object>>)>;

pub(crate) struct Shared {
    cfg: Arc<ConnectionConfig>,
    /// `conn{id peer identity service}`: every event of this connection's
    /// tasks and handlers is logged inside it, so the logs of concurrent
    /// connections can be told apart.
    span: tracing::Span,
    dialect: AtomicU8,
    seq: AtomicI64,
    pending: Mutex<Pending>,
    outbox: Mutex<Outbox>,
    wake_writer: tokio::sync::Notify,
    /// Set by the reader while more frames are already buffered: replies
    /// wait in the outbox and leave together, in one write, once the
    /// reader has caught up (a batch of pipelined requests gets one `send`
    /// of replies instead of one each).
    corked: AtomicBool,
    queued: AtomicUsize,
    /// Replies queued and not yet written, in bytes.
    replies: ReplyBytes,
    /// Decoded bytes of the peer's requests whose handlers still run.
    pending_bytes: AtomicUsize,
    in_flight: AtomicUsize,
    objects: Mutex<ObjectTable>,
    proxies: Mutex<HashMap<IdPack, Weak<NetrefInner>>>,
    root: Arc<Instance>,
    service: Service,
    credentials: Credentials,
    policy: AccessPolicy,
    remote_root: Mutex<Weak<NetrefInner>>,
    closed: AtomicBool,
    close_reason: Mutex<Option<String>>,
    shutdown: watch::Sender<bool>,
    done: watch::Sender<bool>,
    handles: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

const DIALECT_UNKNOWN: u8 = 0;
const DIALECT_V6: u8 = 6;
const DIALECT_V5: u8 = 5;

/// A handle to one RPyC connection. Cheap to clone; the connection closes when
/// the last handle (including proxies and call contexts) is dropped, or when
/// [`Connection::close`] is called, or when the peer goes away.
pub struct Connection {
    shared: Arc<Shared>,
}

impl Clone for Connection {
    fn clone(&self) -> Self {
        Connection::from_shared(self.shared.clone())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.release_handle();
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("service", &self.shared.service.name())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Connection {
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Connection {
        shared.handles.fetch_add(1, Ordering::AcqRel);
        Connection { shared }
    }

    /// Starts a connection over a stream: our side serves `service`, the
    /// peer is described by `credentials`, and `policy` decides what it may
    /// reach. Must be called inside a tokio runtime.
    pub fn start<S>(
        stream: S,
        service: Service,
        config: ConnectionConfig,
        credentials: Credentials,
        policy: AccessPolicy,
    ) -> Connection
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(stream);
        let wr: BoxWrite = Box::pin(wr);
        let (shutdown, _) = watch::channel(false);
        let (done, _) = watch::channel(false);
        let dialect = match config.dialect {
            Some(Dialect::V6) => DIALECT_V6,
            Some(Dialect::V5) => DIALECT_V5,
            None => DIALECT_UNKNOWN,
        };
        let root = service.make_root();
        let reply_cap = config.max_queued_reply_bytes;
        let span = tracing::info_span!(
            "conn",
            id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            peer = %credentials.peer,
            identity = credentials.display_identity(),
            service = service.name(),
        );
        let shared = Arc::new(Shared {
            cfg: Arc::new(config),
            span,
            dialect: AtomicU8::new(dialect),
            seq: AtomicI64::new(0),
            pending: Mutex::new(HashMap::new()),
            outbox: Mutex::new(Outbox { idle: Some(wr), ..Outbox::default() }),
            wake_writer: tokio::sync::Notify::new(),
            corked: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            replies: ReplyBytes { cap: reply_cap, ..ReplyBytes::default() },
            pending_bytes: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            objects: Mutex::new(ObjectTable { next_id: 1, ..ObjectTable::default() }),
            proxies: Mutex::new(HashMap::new()),
            root,
            service,
            credentials,
            policy,
            remote_root: Mutex::new(Weak::new()),
            closed: AtomicBool::new(false),
            close_reason: Mutex::new(None),
            shutdown,
            done,
            handles: AtomicUsize::new(0),
        });
        let conn = Connection::from_shared(shared.clone());
        tokio::spawn(writer_loop(shared.clone()).instrument(shared.span.clone()));
        // Small: every idle connection holds it; large frames bypass it.
        let reader = BufReader::with_capacity(16 << 10, rd);
        tokio::spawn(reader_loop(reader, shared.clone()).instrument(shared.span.clone()));
        if let Some(hook) = shared.service.on_connect_hook() {
            shared.span.in_scope(|| hook(&Ctx { conn: conn.clone() }));
        }
        conn
    }

    /// The peer's root object (its service), fetched once and cached.
    pub async fn root(&self) -> Result<Netref> {
        // Cached weakly: a strong cache would keep the connection open forever.
        if let Some(inner) = lock(&self.shared.remote_root).upgrade() {
            return Ok(Netref(inner));
        }
        let root = self.shared.request(Handler::GetRoot, vec![]).await?.into_netref()?;
        *lock(&self.shared.remote_root) = Arc::downgrade(&root.0);
        Ok(root)
    }

    /// Sends a raw request and waits for the reply (with the configured timeout).
    pub async fn request(&self, handler: Handler, args: Vec<Object>) -> Result<Object> {
        self.shared.request(handler, args).await
    }

    /// Sends a raw request and returns an [`AsyncResult`] at once.
    pub fn async_request(&self, handler: Handler, args: Vec<Object>) -> AsyncResult {
        self.shared.async_request(handler, args)
    }

    /// Checks the peer is alive: sends data and expects it echoed back.
    pub async fn ping(&self) -> Result<Duration> {
        let data = "abcdefghijklmnopqrstuvwxyz".repeat(20);
        let start = std::time::Instant::now();
        let back = self.shared.request(Handler::Ping, vec![Value::from(data.as_str()).into()]).await?;
        if back.as_value() != Some(&Value::Str(data)) {
            return Err(Error::Protocol("ping: echo mismatches sent data".into()));
        }
        Ok(start.elapsed())
    }

    /// Closes the connection in an orderly way: tells the peer (CLOSE),
    /// waits briefly for it, then shuts the stream down.
    pub async fn close(&self) {
        if self.is_closed() {
            return;
        }
        let shared = self.shared.clone();
        let seq = shared.next_seq();
        let (tx, rx) = oneshot::channel();
        lock(&shared.pending).insert(seq, (Handler::Close, tx));
        if shared
            .send_message(
                message::MSG_REQUEST,
                seq,
                &request_value(Handler::Close, Value::Tuple(vec![Value::from(LABEL_VALUE), Value::Tuple(vec![])])),
            )
            .is_ok()
        {
            // A Python server closes without replying; its EOF also ends the wait.
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        }
        shared.begin_close("closed by the local side");
        self.closed().await;
    }

    /// Closes at once without telling the peer; pending calls fail with
    /// `reason`.
    pub fn abort(&self, reason: &str) {
        self.shared.begin_close(reason);
    }

    /// Waits until the connection is closed and its tasks have finished.
    pub async fn closed(&self) {
        let mut rx = self.shared.done.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// True once the connection is closed or closing.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Why the connection closed, if it has.
    pub fn close_reason(&self) -> Option<String> {
        lock(&self.shared.close_reason).clone()
    }

    /// The peer's credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.shared.credentials
    }

    /// The message framing in use (`None` until a server has heard from its peer).
    pub fn dialect(&self) -> Option<Dialect> {
        match self.shared.dialect.load(Ordering::Acquire) {
            DIALECT_V6 => Some(Dialect::V6),
            DIALECT_V5 => Some(Dialect::V5),
            _ => None,
        }
    }

    /// How many of our objects the peer holds proxies for.
    pub fn live_objects(&self) -> usize {
        lock(&self.shared.objects).by_id.len()
    }

    /// The local service this connection serves.
    pub fn service(&self) -> &Service {
        &self.shared.service
    }

    /// The configuration.
    pub fn config(&self) -> &ConnectionConfig {
        &self.shared.cfg
    }
}

/// Roughly how many bytes boxing `obj` writes into the frame's first
/// piece (bodies moved into pieces of their own excluded), so that the
/// buffer is allocated once at the right size.
fn boxed_size_hint(obj: &Object, depth: usize) -> usize {
    if depth > 8 {
        return 0;
    }
    match obj {
        Object::Value(v) => value_size_hint(v, depth),
        Object::Tuple(items) => 8 + items.iter().map(|i| boxed_size_hint(i, depth + 1)).sum::<usize>(),
        Object::Remote(_) | Object::Local(_) => 64,
    }
}

fn value_size_hint(v: &Value, depth: usize) -> usize {
    if depth > 8 {
        return 0;
    }
    match v {
        Value::Bytes(b) if b.len() < brine::MOVE_OUT_MIN => 8 + b.len(),
        Value::Str(s) if s.len() < brine::MOVE_OUT_MIN => 8 + s.len(),
        Value::Tuple(items) | Value::FrozenSet(items) => {
            8 + items.iter().map(|i| value_size_hint(i, depth + 1)).sum::<usize>()
        }
        _ => 12,
    }
}

fn request_value(handler: Handler, boxed_args: Value) -> Value {
    Value::Tuple(vec![Value::Int(Int::Small(handler.id())), boxed_args])
}

impl Shared {
    fn next_seq(&self) -> i64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn dialect(&self) -> Dialect {
        match self.dialect.load(Ordering::Acquire) {
            DIALECT_V5 => Dialect::V5,
            _ => Dialect::V6,
        }
    }

    fn closed_error(&self) -> Error {
        let reason = lock(&self.close_reason).clone().unwrap_or_else(|| "connection is closed".into());
        Error::Closed(reason)
    }

    /// Encodes and queues one message.
    fn send_message(&self, kind: u8, seq: i64, args: &Value) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.closed_error());
        }
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&[0; HEADER_LEN]);
        message::encode_message(self.dialect(), kind, seq, args, &mut buf);
        let reply = kind != message::MSG_REQUEST;
        self.queue(Out::Frame(finish_frame(buf, &self.cfg.channel)), true, reply)
    }

    /// Encodes a request or reply whose body is the boxed `obj` into a
    /// frame. `obj` is the caller's to give away: large `bytes`/`str` values
    /// are moved into the frame, everything else is left in place (a proxy
    /// must outlive the queueing of the message that references it).
    fn encode_boxed_frame(&self, kind: u8, seq: i64, handler: Option<Handler>, obj: &mut Object) -> Result<Out> {
        let mut head = Vec::with_capacity(64 + boxed_size_hint(obj, 0));
        head.extend_from_slice(&[0; HEADER_LEN]);
        message::encode_head(self.dialect(), kind, seq, &mut head);
        if let Some(h) = handler {
            brine::encode_tuple_header(2, &mut head);
            brine::encode_i64(h.id(), &mut head);
        }
        let mut out = Pieces::new(head);
        self.encode_boxed(obj, &mut out)?;
        if out.done.is_empty() {
            return Ok(Out::Frame(finish_frame(out.cur, &self.cfg.channel)));
        }
        let mut pieces = finish_frame_pieces(out.into_pieces(), &self.cfg.channel);
        Ok(match pieces.len() {
            1 => Out::Frame(pieces.pop().unwrap_or_default()),
            _ => Out::Pieces(pieces),
        })
    }

    /// Queues an encoded frame, and writes it at once if nobody is writing
    /// (see [`Outbox`]).
    /// A frame that is not `eager` (a request while others are in flight)
    /// is left to the writer task, which coalesces the frames that pile up
    /// meanwhile into one write. A `reply` counts against
    /// [`ConnectionConfig::max_queued_reply_bytes`] until it is written.
    fn queue(&self, frame: Out, eager: bool, reply: bool) -> Result<()> {
        let mut ob = lock(&self.outbox);
        if ob.closing || self.closed.load(Ordering::Acquire) {
            drop(ob);
            return Err(self.closed_error());
        }
        if reply {
            self.replies.add(match &frame {
                Out::Frame(f) => f.len(),
                Out::Pieces(p) => p.iter().map(Vec::len).sum(),
            });
        }
        ob.batch.push(frame, reply);
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self.corked.load(Ordering::Acquire) {
            return Ok(());
        }
        let Some(io) = ob.idle.take() else { return Ok(()) };
        if !eager {
            ob.handed = Some(io);
            drop(ob);
            self.wake_writer.notify_one();
            return Ok(());
        }
        let batch = std::mem::take(&mut ob.batch);
        drop(ob);
        self.write_now(io, batch);
        Ok(())
    }

    /// Sets or lifts the cork (see [`Shared::corked`]); lifting it writes
    /// what waited.
    fn set_corked(&self, corked: bool) {
        if self.corked.swap(corked, Ordering::AcqRel) == corked || corked {
            return;
        }
        let mut ob = lock(&self.outbox);
        if ob.batch.bufs.is_empty() {
            return;
        }
        let Some(io) = ob.idle.take() else { return };
        let batch = std::mem::take(&mut ob.batch);
        drop(ob);
        self.write_now(io, batch);
    }

    /// Writes without waiting: whatever the stream does not take at once
    /// (and frames queued meanwhile, after a few rounds) goes to the writer
    /// task.
    fn write_now(&self, mut io: BoxWrite, mut batch: Batch) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for _ in 0..4 {
            let done = match batch.poll_write(&mut io, &mut cx, &self.replies) {
                Poll::Ready(Ok(())) => io.as_mut().poll_flush(&mut cx),
                other => other,
            };
            match done {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    self.begin_close(&format!("write failed: {e}"));
                    return;
                }
                Poll::Pending => break,
            }
            self.queued.fetch_sub(batch.frames, Ordering::AcqRel);
            let mut ob = lock(&self.outbox);
            if ob.batch.bufs.is_empty() {
                if ob.closing {
                    ob.handed = Some(io);
                    drop(ob);
                    self.wake_writer.notify_one();
                } else {
                    ob.idle = Some(io);
                }
                return;
            }
            batch = std::mem::take(&mut ob.batch);
        }
        self.hand_over(io, batch);
    }

    /// Gives the write half and the unwritten rest of `batch` (ahead of
    /// anything queued since) to the writer task.
    fn hand_over(&self, io: BoxWrite, mut batch: Batch) {
        let mut ob = lock(&self.outbox);
        let later = std::mem::take(&mut ob.batch);
        batch.append(later);
        ob.batch = batch;
        ob.handed = Some(io);
        drop(ob);
        self.wake_writer.notify_one();
    }

    /// Encodes the boxed form of `obj` (Python's `_box`) straight into
    /// `out`: byte for byte the brine encoding of the boxed value, without
    /// building that value (and so without copying payloads into it).
    fn encode_boxed(&self, obj: &mut Object, out: &mut Pieces) -> Result<()> {
        match obj {
            Object::Value(v) => {
                brine::encode_tuple_header(2, &mut out.cur);
                brine::encode_i64(LABEL_VALUE, &mut out.cur);
                brine::encode_taking(v, out);
            }
            Object::Tuple(items) => {
                brine::encode_tuple_header(2, &mut out.cur);
                if items.iter().all(|i| matches!(i, Object::Value(_))) {
                    brine::encode_i64(LABEL_VALUE, &mut out.cur);
                    brine::encode_tuple_header(items.len(), &mut out.cur);
                    for item in items.iter_mut() {
                        if let Object::Value(v) = item {
                            brine::encode_taking(v, out);
                        }
                    }
                } else {
                    brine::encode_i64(LABEL_TUPLE, &mut out.cur);
                    brine::encode_tuple_header(items.len(), &mut out.cur);
                    for item in items.iter_mut() {
                        self.encode_boxed(item, out)?;
                    }
                }
            }
            Object::Remote(n) => {
                if !std::ptr::eq(Arc::as_ptr(&n.0.conn), self) {
                    return Err(Error::type_error(
                        "cannot pass a proxy that belongs to another connection (RPyC-over-RPyC is not supported)",
                    ));
                }
                brine::encode_tuple_header(2, &mut out.cur);
                brine::encode_i64(LABEL_LOCAL_REF, &mut out.cur);
                n.0.id_pack.encode_into(&mut out.cur);
            }
            Object::Local(inst) => {
                let id = self.register_local(inst)?;
                brine::encode_tuple_header(2, &mut out.cur);
                brine::encode_i64(LABEL_REMOTE_REF, &mut out.cur);
                brine::encode_tuple_header(3, &mut out.cur);
                brine::encode_str(&inst.class.name, &mut out.cur);
                brine::encode_i64(inst.class.id, &mut out.cur);
                brine::encode_i64(id, &mut out.cur);
            }
        }
        Ok(())
    }

    async fn request(self: &Arc<Self>, handler: Handler, args: Vec<Object>) -> Result<Object> {
        let rx = self.start_request(handler, args)?;
        let timeout = self.cfg.sync_request_timeout;
        match tokio::time::timeout(timeout, rx.1).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => {
                lock(&self.pending).remove(&rx.0);
                Err(Error::Timeout { handler: handler.name(), timeout })
            }
        }
    }

    fn start_request(
        self: &Arc<Self>,
        handler: Handler,
        args: Vec<Object>,
    ) -> Result<(i64, oneshot::Receiver<Result<Object>>)> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.closed_error());
        }
        let mut args = Object::Tuple(args);
        let seq = self.next_seq();
        let frame = self.encode_boxed_frame(message::MSG_REQUEST, seq, Some(handler), &mut args)?;
        let (tx, rx) = oneshot::channel();
        let eager = {
            let mut pending = lock(&self.pending);
            pending.insert(seq, (handler, tx));
            pending.len() == 1
        };
        if let Err(e) = self.queue(frame, eager, false) {
            lock(&self.pending).remove(&seq);
            return Err(e);
        }
        // Only now may proxies among the arguments go (and send DEL).
        drop(args);
        Ok((seq, rx))
    }

    fn async_request(self: &Arc<Self>, handler: Handler, args: Vec<Object>) -> AsyncResult {
        let res = AsyncResult::pending();
        match self.start_request(handler, args) {
            Ok((_, rx)) => {
                let r2 = res.clone();
                let me = self.clone();
                tokio::spawn(async move {
                    let out = match rx.await {
                        Ok(r) => r,
                        Err(_) => Err(me.closed_error()),
                    };
                    r2.complete(out);
                });
            }
            Err(e) => res.complete(Err(e)),
        }
        res
    }

    /// A user-facing handle (connection, context or proxy) went away; the
    /// last one closes the connection.
    pub(crate) fn release_handle(&self) {
        if self.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.begin_close("every handle to the connection (connections, proxies) was dropped");
        }
    }

    /// Called when the last clone of a proxy is dropped.
    pub(crate) fn forget_proxy(&self, id_pack: &IdPack, count: u64) {
        {
            let mut proxies = lock(&self.proxies);
            if proxies.get(id_pack).is_some_and(|w| w.strong_count() == 0) {
                proxies.remove(id_pack);
            }
        }
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        // DEL(obj, count): obj boxed as the peer's own object.
        let args = Value::Tuple(vec![
            Value::from(LABEL_TUPLE),
            Value::Tuple(vec![
                Value::Tuple(vec![Value::from(LABEL_LOCAL_REF), id_pack.to_value()]),
                Value::Tuple(vec![Value::from(LABEL_VALUE), Value::from(count)]),
            ]),
        ]);
        let seq = self.next_seq();
        let _ = self.send_message(message::MSG_REQUEST, seq, &request_value(Handler::Del, args));
    }

    fn register_local(&self, inst: &Arc<Instance>) -> Result<i64> {
        let key = Arc::as_ptr(inst) as *const () as usize;
        let mut table = lock(&self.objects);
        if let Some(&id) = table.by_ptr.get(&key) {
            if let Some(slot) = table.by_id.get_mut(&id) {
                slot.refs += 1;
                return Ok(id);
            }
        }
        if table.by_id.len() >= self.cfg.max_local_objects {
            tracing::warn!(limit = self.cfg.max_local_objects, "local object limit reached");
            return Err(Error::Exception(Exception::new(
                "MemoryError",
                format!(
                    "this connection already holds {} objects for the peer (the limit); release proxies before creating more",
                    self.cfg.max_local_objects
                ),
            )));
        }
        let id = table.next_id;
        table.next_id += 1;
        table.by_id.insert(id, Slot { obj: inst.clone(), refs: 1 });
        table.by_ptr.insert(key, id);
        Ok(id)
    }

    fn local_object(&self, id_pack: &IdPack) -> Result<Arc<Instance>> {
        lock(&self.objects).by_id.get(&id_pack.instance_id).map(|s| s.obj.clone()).ok_or_else(|| {
            Error::Exception(Exception::key_error(Value::Tuple(vec![
                Value::Str(id_pack.class_name.clone()),
                Value::from(id_pack.class_id),
                Value::from(id_pack.instance_id),
            ])))
        })
    }

    fn decref(&self, id: i64, count: u64) {
        let mut table = lock(&self.objects);
        let remove = match table.by_id.get_mut(&id) {
            Some(slot) if slot.refs > count => {
                slot.refs -= count;
                false
            }
            Some(_) => true,
            None => false,
        };
        if remove {
            if let Some(slot) = table.by_id.remove(&id) {
                let key = Arc::as_ptr(&slot.obj) as *const () as usize;
                table.by_ptr.remove(&key);
            }
        }
    }

    /// Unboxes a value from the wire (Python's `_unbox`).
    fn unbox(self: &Arc<Self>, v: Value) -> Result<Object> {
        let bad = || Error::Protocol("malformed boxed value".into());
        let Value::Tuple(mut pair) = v else { return Err(bad()) };
        if pair.len() != 2 {
            return Err(bad());
        }
        let payload = pair.pop().unwrap_or(Value::None);
        let label = pair.pop().and_then(|l| l.as_i64()).ok_or_else(bad)?;
        match label {
            LABEL_VALUE => Ok(Object::Value(payload)),
            LABEL_TUPLE => match payload {
                Value::Tuple(items) => {
                    Ok(Object::Tuple(items.into_iter().map(|i| self.unbox(i)).collect::<Result<Vec<_>>>()?))
                }
                _ => Err(bad()),
            },
            LABEL_LOCAL_REF => {
                let pack = IdPack::from_value(&payload).ok_or_else(bad)?;
                Ok(Object::Local(self.local_object(&pack)?))
            }
            LABEL_REMOTE_REF => {
                let pack = IdPack::from_value(&payload).ok_or_else(bad)?;
                Ok(Object::Remote(self.proxy(pack)))
            }
            _ => Err(Error::Protocol(format!("unknown boxing label {label}"))),
        }
    }

    fn proxy(self: &Arc<Self>, pack: IdPack) -> Netref {
        let mut proxies = lock(&self.proxies);
        if let Some(inner) = proxies.get(&pack).and_then(Weak::upgrade) {
            inner.refcount.fetch_add(1, Ordering::AcqRel);
            return Netref(inner);
        }
        self.handles.fetch_add(1, Ordering::AcqRel);
        let inner = Arc::new(NetrefInner {
            conn: self.clone(),
            id_pack: pack.clone(),
            refcount: std::sync::atomic::AtomicU64::new(1),
        });
        proxies.insert(pack, Arc::downgrade(&inner));
        Netref(inner)
    }

    /// Sends the outcome of a request.
    fn reply(&self, seq: i64, result: Result<Object>) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        let encoded = result.and_then(|mut obj| {
            let frame = self.encode_boxed_frame(message::MSG_REPLY, seq, None, &mut obj)?;
            Ok((frame, obj))
        });
        let sent = match encoded {
            Ok((frame, obj)) => {
                let r = self.queue(frame, true, true);
                // Only now may proxies in the result go (and send DEL).
                drop(obj);
                r
            }
            Err(e) => {
                let exc = e.into_exception();
                let origin = self.service.name().to_string();
                let mut dumped = exc.dump(self.dialect().version(), &origin);
                if !self.cfg.include_traceback {
                    if let Value::Tuple(parts) = &mut dumped {
                        if let Some(tb) = parts.get_mut(3) {
                            *tb = Value::from("<traceback denied>");
                        }
                    }
                }
                self.send_message(message::MSG_EXCEPTION, seq, &dumped)
            }
        };
        if let Err(e) = sent {
            tracing::debug!(seq, error = %e, "reply dropped: connection closing");
        }
    }

    /// Why a peer may close on our first message without a word: Python
    /// rpyc 6.x drops a connection whose first message is in 5.x framing
    /// (`invalid message type`), and 5.x one in 6.x framing.
    fn version_hint(&self) -> &'static str {
        if self.dialect.load(Ordering::Acquire) == DIALECT_V5 {
            "a Python rpyc 6.x server answers rpyc 5.x messages this way: if it runs rpyc 6, connect \
             without Dialect::V5 (--rpyc5)"
        } else {
            "a Python rpyc 5.x server answers rpyc 6.x messages this way: if it runs rpyc 5, connect \
             with Dialect::V5 (--rpyc5)"
        }
    }

    pub(crate) fn begin_close(&self, reason: &str) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        *lock(&self.close_reason) = Some(reason.to_string());
        tracing::debug!(service = self.service.name(), reason, "connection closing");
        self.shutdown.send_replace(true);
        {
            let mut ob = lock(&self.outbox);
            ob.closing = true;
            if let Some(io) = ob.idle.take() {
                ob.handed = Some(io);
            }
        }
        self.wake_writer.notify_one();
        self.fail_pending();
    }

    fn fail_pending(&self) {
        let pending: Vec<_> = lock(&self.pending).drain().collect();
        let reason = lock(&self.close_reason).clone().unwrap_or_else(|| "connection lost".into());
        for (_, (_, tx)) in pending {
            let _ = tx.send(Err(Error::Closed(reason.clone())));
        }
    }

    fn finish(&self) {
        self.fail_pending();
        let objects = std::mem::take(&mut *lock(&self.objects));
        drop(objects);
        lock(&self.proxies).clear();
        self.done.send_replace(true);
    }
}

/// Writes what the stream did not take at once (see [`Outbox`]), and
/// shuts the stream down once the connection closes.
async fn writer_loop(shared: Arc<Shared>) {
    let mut closing = shared.shutdown.subscribe();
    loop {
        shared.wake_writer.notified().await;
        // Let the tasks that are ready queue their frames too: pipelined
        // requests then leave in one write instead of one each.
        tokio::task::yield_now().await;
        loop {
            let (mut io, mut batch) = {
                let mut ob = lock(&shared.outbox);
                match ob.handed.take() {
                    Some(io) => {
                        let batch = std::mem::take(&mut ob.batch);
                        (io, batch)
                    }
                    // Idle, or a sender is writing (and hands over when
                    // it sees `closing`).
                    None => break,
                }
            };
            let write = async {
                std::future::poll_fn(|cx| batch.poll_write(&mut io, cx, &shared.replies)).await?;
                io.flush().await
            };
            // Once the connection is closing, a peer that does not read
            // gets a short grace, not a task and a socket held forever.
            let give_up = async {
                wait_true(&mut closing).await;
                tokio::time::sleep(CLOSE_GRACE).await;
            };
            let flushed = tokio::select! {
                r = write => r,
                () = give_up => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the peer read nothing for {CLOSE_GRACE:?} after the connection began closing"),
                )),
            };
            if let Err(e) = flushed {
                shared.begin_close(&format!("write failed: {e}"));
                return;
            }
            shared.queued.fetch_sub(batch.frames, Ordering::AcqRel);
            let closing = {
                let mut ob = lock(&shared.outbox);
                if !ob.batch.bufs.is_empty() {
                    ob.handed = Some(io);
                    continue;
                }
                if !ob.closing {
                    ob.idle = Some(io);
                    break;
                }
                io
            };
            let mut io = closing;
            let _ = tokio::time::timeout(Duration::from_secs(2), io.shutdown()).await;
            return;
        }
    }
}

async fn reader_loop<R: AsyncRead + Unpin>(rd: BufReader<R>, shared: Arc<Shared>) {
    let mut frames = FrameReader::new(rd, shared.cfg.channel.clone());
    let mut shutdown = shared.shutdown.subscribe();
    let mut heard = false;
    let reason = loop {
        if shared.replies.bytes.load(Ordering::Acquire) >= shared.replies.cap {
            match tokio::select! {
                biased;
                _ = crate::connection::wait_true(&mut shutdown) => break None,
                r = wait_for_replies_to_drain(&shared) => r,
            } {
                Ok(()) => {}
                Err(reason) => {
                    tracing::warn!(%reason, "closing connection: peer does not read its replies");
                    break Some(reason);
                }
            }
        }
        let read = frames.read_frame();
        let frame = tokio::select! {
            biased;
            _ = crate::connection::wait_true(&mut shutdown) => break None,
            r = with_idle_timeout(shared.cfg.idle_timeout, read) => r,
        };
        let payload = match frame {
            Ok(Ok(Some(p))) => p,
            Ok(Ok(None)) if !heard && shared.seq.load(Ordering::Acquire) > 0 => {
                break Some(format!("peer closed the connection without answering anything; {}", shared.version_hint()))
            }
            Ok(Ok(None)) => break Some("peer closed the connection".to_string()),
            Ok(Err(crate::channel::ChannelError::Io(e))) => {
                // The stream broke (reset, TLS failure): not the peer's bytes.
                tracing::info!(error = %e, "connection lost");
                if !heard && shared.seq.load(Ordering::Acquire) > 0 {
                    break Some(format!(
                        "connection lost before the peer answered anything ({e}); {}",
                        shared.version_hint()
                    ));
                }
                break Some(format!("connection lost: {e}"));
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "closing connection: bad frame from peer");
                break Some(format!("bad frame from peer: {e}"));
            }
            Err(idle) => {
                tracing::info!(idle = ?idle, "closing idle connection");
                break Some(format!("no traffic for {idle:?} (idle timeout)"));
            }
        };
        // The next frame is already here in full: hold replies back until
        // it is handled too, then send them together.
        let more = crate::channel::frame_complete(frames.get_ref().buffer());
        if more {
            shared.set_corked(true);
        }
        if let Err(reason) = handle_payload(&shared, payload, !heard) {
            if heard {
                tracing::warn!(%reason, "closing connection: protocol violation by peer");
            } else {
                // Most often a peer of the other rpyc version or not RPyC at
                // all; whoever started the connection gets the reason as its
                // error.
                tracing::info!(%reason, "closing connection: the peer's first message is unusable");
            }
            break Some(reason);
        }
        heard = true;
        if !more {
            shared.set_corked(false);
        }
    };
    if let Some(reason) = reason {
        shared.begin_close(&reason);
    }
    // Give queued replies (e.g. the answer to CLOSE) a moment to go out.
    if let Some(hook) = shared.service.on_disconnect_hook() {
        let conn = Connection::from_shared(shared.clone());
        hook(&Ctx { conn: conn.clone() });
        // Avoid re-triggering close from this temporary handle.
        shared.handles.fetch_add(1, Ordering::AcqRel);
        drop(conn);
    }
    shared.finish();
}

/// Back-pressure: called while the peer's unread replies are at the cap
/// ([`ConnectionConfig::max_queued_reply_bytes`]); returns once they drain
/// below it, or an error if the peer read none of them for
/// `sync_request_timeout`.
async fn wait_for_replies_to_drain(shared: &Shared) -> std::result::Result<(), String> {
    let cap = shared.replies.cap;
    let patience = shared.cfg.sync_request_timeout;
    // Replies held back for a batch must go out, or nothing ever drains.
    shared.set_corked(false);
    let mut last = shared.replies.bytes.load(Ordering::Acquire);
    tracing::debug!(unread = last, cap, "peer's replies at the cap: reading no more requests until they drain");
    loop {
        let woken = tokio::time::timeout(patience, shared.replies.drained.notified()).await.is_ok();
        let now = shared.replies.bytes.load(Ordering::Acquire);
        if now < cap {
            return Ok(());
        }
        if !woken && now >= last {
            return Err(format!(
                "peer read none of its {now} bytes of unread replies for {patience:?}; at most {cap} may wait \
                 (max_queued_reply_bytes), so its further requests were not read"
            ));
        }
        last = now;
    }
}

/// Waits until a watch flag becomes true (or its sender is gone).
pub(crate) async fn wait_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

async fn with_idle_timeout<F: Future>(idle: Option<Duration>, f: F) -> std::result::Result<F::Output, Duration> {
    match idle {
        Some(d) => tokio::time::timeout(d, f).await.map_err(|_| d),
        None => Ok(f.await),
    }
}

/// Processes one payload; `Err` closes the connection with that reason.
fn handle_payload(shared: &Arc<Shared>, payload: Vec<u8>, first: bool) -> std::result::Result<(), String> {
    let mut dialect = shared.dialect();
    if shared.dialect.load(Ordering::Acquire) == DIALECT_UNKNOWN {
        if let Some((sender, seq, kind)) = message::bind_threads_message(&payload) {
            // Tell the peer why, in its own framing, then hang up.
            if kind == message::MSG_REQUEST {
                let exc = Exception::new("NotImplementedError", message::BIND_THREADS_REFUSAL);
                let mut buf = vec![0; HEADER_LEN];
                buf.extend(message::bind_threads_refusal(sender, seq, &exc.dump(Dialect::V6.version(), "rpyc")));
                let _ = shared.queue(Out::Frame(finish_frame(buf, &shared.cfg.channel)), true, true);
            }
            return Err(message::BIND_THREADS_REFUSAL.to_string());
        }
        dialect = Dialect::detect(&payload).ok_or_else(|| {
            format!(
                "first message starts with byte 0x{:02x}; expected an rpyc 6.x (1-3) or 5.x (0x12) message",
                payload.first().copied().unwrap_or(0)
            )
        })?;
        shared.dialect.store(if dialect == Dialect::V5 { DIALECT_V5 } else { DIALECT_V6 }, Ordering::Release);
        tracing::debug!(?dialect, "peer dialect detected");
    }
    // A first message in the other version's framing: say which version
    // the peer speaks rather than what failed to decode.
    let other = (first && Dialect::detect(&payload).is_some_and(|d| d != dialect)).then(|| shared.version_hint());
    let (msg, size) =
        message::decode_message_owned_sized(dialect, payload, &shared.cfg.decode).map_err(|e| match other {
            Some(hint) => format!("the peer's first message is not in our rpyc framing ({e}); {hint}"),
            None => e.to_string(),
        })?;
    let Message { kind, seq, args } = msg;
    match kind {
        message::MSG_REQUEST => handle_request(shared, seq, args, size),
        message::MSG_REPLY | message::MSG_EXCEPTION => {
            let waiter = lock(&shared.pending).remove(&seq);
            let Some((_, tx)) = waiter else {
                tracing::debug!(seq, "reply to an unknown or expired request ignored");
                return Ok(());
            };
            let result = if kind == message::MSG_REPLY {
                shared.unbox(args)
            } else {
                Err(Error::Exception(Exception::load(args)))
            };
            let _ = tx.send(result);
            Ok(())
        }
        other => Err(format!("unknown message type {other}")),
    }
}

/// Charges a running handler's arguments against
/// [`ConnectionConfig::max_pending_request_bytes`] until it finishes (or
/// is dropped).
struct PendingCharge {
    shared: Arc<Shared>,
    bytes: usize,
}

impl Drop for PendingCharge {
    fn drop(&mut self) {
        self.shared.pending_bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Starts a request whose decoded arguments take `size` bytes.
fn handle_request(shared: &Arc<Shared>, seq: i64, args: Value, size: usize) -> std::result::Result<(), String> {
    let in_flight = shared.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
    let queued = shared.queued.load(Ordering::Acquire);
    if in_flight > shared.cfg.max_requests_in_flight || queued > shared.cfg.max_requests_in_flight {
        return Err(format!(
            "peer has {} requests in flight and {queued} replies unread; the limit is {} \
             (max_requests_in_flight)",
            in_flight, shared.cfg.max_requests_in_flight
        ));
    }
    let (handler_id, boxed) = match args {
        Value::Tuple(mut t) if t.len() == 2 => {
            let boxed = t.pop().unwrap_or(Value::None);
            (t.pop().and_then(|h| h.as_i64()), boxed)
        }
        _ => (None, Value::None),
    };
    let handler = match handler_id.and_then(Handler::from_id) {
        Some(h) => h,
        None => {
            shared.reply(
                seq,
                Err(Error::Exception(Exception::new("KeyError", format!("unknown request handler {handler_id:?}")))),
            );
            return Ok(());
        }
    };
    if handler == Handler::Del {
        // Inline and in order: DEL must never overtake the requests before it.
        dispatch::handle_del(shared, &boxed);
        shared.reply(seq, Ok(Object::none()));
        return Ok(());
    }
    let held = shared.pending_bytes.load(Ordering::Acquire);
    let cap = shared.cfg.max_pending_request_bytes;
    if held >= cap {
        drop(boxed);
        tracing::warn!(held, cap, "request refused: the peer's unfinished requests hold too much");
        let msg = format!(
            "the peer's unfinished requests on this connection already hold {held} bytes of arguments \
             (max_pending_request_bytes is {cap}); wait for their replies before sending more"
        );
        shared.reply(seq, Err(Error::Exception(Exception::new("MemoryError", msg))));
        return Ok(());
    }
    let args = match shared.unbox(boxed) {
        Ok(Object::Tuple(items)) => items,
        Ok(Object::Value(Value::Tuple(items))) => items.into_iter().map(Object::Value).collect(),
        Ok(other) => vec![other],
        Err(e) => {
            shared.reply(seq, Err(e));
            return Ok(());
        }
    };
    // `request{seq handler name}` inside the connection's span (the reader
    // task runs in it): a handler's own log lines say which call they serve.
    let span = tracing::debug_span!("request", seq, handler = handler.name(), name = tracing::field::Empty);
    if !span.is_disabled() && handler.names_attribute() {
        if let Some(name) = args.get(1).and_then(Object::as_value).and_then(Value::as_str) {
            span.record("name", name);
        }
    }
    let entered = span.enter();
    let conn = Connection::from_shared(shared.clone());
    // Synchronous handlers run while the future is built: catch their panics too.
    let fut = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        dispatch::handle(Ctx { conn }, handler, args)
    })) {
        Ok(f) => f,
        Err(panic) => Box::pin(std::future::ready(Err(panic_error(panic)))),
    };
    let me = shared.clone();
    let task = async move {
        let result = CatchPanic { inner: fut }.await;
        let close_after = handler == Handler::Close && result.is_ok();
        me.reply(seq, result);
        if close_after {
            me.begin_close("peer closed the connection (CLOSE)");
        }
    };
    let mut task = Box::pin(task);
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let pending = task.as_mut().poll(&mut cx).is_pending();
    drop(entered);
    if pending {
        shared.pending_bytes.fetch_add(size, Ordering::AcqRel);
        let charge = PendingCharge { shared: shared.clone(), bytes: size };
        tokio::spawn(
            async move {
                task.await;
                drop(charge);
            }
            .instrument(span),
        );
    }
    Ok(())
}

fn panic_error(panic: Box<dyn std::any::Any + Send>) -> Error {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    tracing::error!(%msg, "service handler panicked");
    Error::Exception(Exception::runtime_error(format!("service handler panicked: {msg}")))
}

/// Turns a panic inside a handler into a `RuntimeError` reply instead of a
/// lost reply (and, when polled inline, a dead reader).
struct CatchPanic<F> {
    inner: F,
}

impl<F: Future<Output = Result<Object>> + Unpin> Future for CatchPanic<F> {
    type Output = Result<Object>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.inner;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Pin::new(&mut *inner).poll(cx))) {
            Ok(p) => p,
            Err(panic) => Poll::Ready(Err(panic_error(panic))),
        }
    }
}
