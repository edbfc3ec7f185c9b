//! One client connection through the gateway: two pumps over frames.
//!
//! ```text
//! client ──frames──▶ client pump ──checked requests, callback replies──▶ upstream writer
//!   ▲                    │ denials (exception replies)
//!   └── client writer ◀──┴──────────── upstream pump ◀──frames── upstream
//! ```
//!
//! Every frame is read with the gateway's limits and decoded in full; a
//! request is checked against the identity's policy before it is
//! forwarded, byte for byte (compressed frames too, after inflating them to
//! check). Sequence numbers pass through unchanged: each side numbers its own
//! requests, and the gateway answers a denied request itself under the
//! client's number. Replies are matched to requests (bounded maps in both
//! directions) for the audit trail, latency, in-flight limits, and to fail
//! every pending call at once when the upstream goes away.
//!
//! The upstream's root object is fetched by the gateway itself before the
//! first client request is forwarded, so root-only rules know the root's
//! id-pack before any request could name it.

use super::config::{secs, Protocol};
use super::inspect::{inspect_request, remote_ref, Target};
use super::metrics::AuditRecord;
use super::policy::{Denial, GatewayPolicy};
use super::{IdentityLimiter, Shared};
use crate::channel::{finish_frame, ChannelConfig, ChannelError, FrameReader, HEADER_LEN};
use crate::transport::BoxStream;
use crate::wire::message::{decode_message, encode_message, Message, MSG_EXCEPTION, MSG_REPLY, MSG_REQUEST};
use crate::wire::{DecodeLimits, Dialect, Exception, Handler, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

/// Frames queued towards one side before the pumps wait.
const QUEUE: usize = 64;
/// Requests from the upstream awaiting the client's reply, per connection.
const MAX_CALLBACKS: usize = 65_536;
/// How long the gateway keeps flushing to a client after the upstream left.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// The sequence number of the gateway's own GETROOT.
const ROOT_SEQ: i64 = 0;
/// Frames the upstream may send before answering the gateway's GETROOT
/// (a server whose `on_connect` calls the client, like rpyc 6's
/// `rpyc_classic` with `ClassicService`); they are relayed afterwards.
const MAX_EARLY_FRAMES: usize = 64;

/// A frame as read: its exact bytes (forwarded unchanged) and, if it was
/// compressed, its inflated payload (what the checks read).
pub(crate) struct RawFrame {
    raw: Vec<u8>,
    inflated: Option<Vec<u8>>,
}

impl RawFrame {
    fn payload(&self) -> &[u8] {
        match &self.inflated {
            Some(p) => p,
            None => self.raw.get(HEADER_LEN..self.raw.len().saturating_sub(1)).unwrap_or_default(),
        }
    }
}

/// Reads frames keeping their bytes, with the channel's limits and checks
/// ([`FrameReader::read_raw_frame`]).
pub(crate) struct RawReader<R>(FrameReader<R>);

impl<R: AsyncRead + Unpin> RawReader<R> {
    pub(crate) fn new(inner: R, cfg: ChannelConfig) -> Self {
        RawReader(FrameReader::new(inner, cfg))
    }

    pub(crate) async fn read(&mut self) -> Result<Option<RawFrame>, ChannelError> {
        Ok(self.0.read_raw_frame().await?.map(|(raw, inflated)| RawFrame { raw, inflated }))
    }
}

/// Writes queued frames, batching what is already queued into one flush.
async fn writer<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Vec<u8>>) -> std::io::Result<()> {
    while let Some(buf) = rx.recv().await {
        w.write_all(&buf).await?;
        while let Ok(more) = rx.try_recv() {
            w.write_all(&more).await?;
        }
        w.flush().await?;
    }
    let _ = w.shutdown().await;
    Ok(())
}

fn frame_of(dialect: Dialect, kind: u8, seq: i64, args: &Value, ch: &ChannelConfig) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN];
    encode_message(dialect, kind, seq, args, &mut buf);
    finish_frame(buf, ch)
}

fn exception_frame(dialect: Dialect, seq: i64, exc: &Exception, ch: &ChannelConfig) -> Vec<u8> {
    frame_of(dialect, MSG_EXCEPTION, seq, &exc.dump(dialect.version(), "rpyc gateway"), ch)
}

/// The frame to send on: the original bytes if both sides speak the same
/// dialect, else the message re-encoded.
fn reframe(frame: RawFrame, msg: &Message, from: Dialect, to: Dialect, ch: &ChannelConfig) -> Vec<u8> {
    if from == to {
        frame.raw
    } else {
        frame_of(to, msg.kind, msg.seq, &msg.args, ch)
    }
}

/// Everything a connection needs from the accept side.
pub(crate) struct ConnCtx {
    pub shared: Arc<Shared>,
    pub conn_id: u64,
    pub identity: String,
    pub groups: Vec<String>,
    pub peer: String,
    pub upstream_name: String,
    pub upstream: super::config::UpstreamConfig,
    pub limiter: Arc<IdentityLimiter>,
}

struct Pending {
    handler: Handler,
    name: Option<String>,
    start: Instant,
    /// Counted against the identity's in-flight limit.
    counted: bool,
}

struct State {
    pending: HashMap<i64, Pending>,
    callbacks: HashMap<i64, Instant>,
    /// (rules generation, policy name, policy).
    policy: (u64, String, Arc<GatewayPolicy>),
}

struct Session {
    ctx: ConnCtx,
    upstream_desc: String,
    client_dialect: Dialect,
    upstream_dialect: Dialect,
    root: (i64, i64),
    channel: ChannelConfig,
    decode: DecodeLimits,
    max_pending: usize,
    draining: watch::Receiver<bool>,
    state: Mutex<State>,
}

/// How a relay ended.
enum End {
    ClientClosed,
    Client(String),
    Upstream(String),
    Drained { timed_out: bool },
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The identity's current policy (re-resolved after a reload).
    fn policy(&self) -> Arc<GatewayPolicy> {
        let gen = self.ctx.shared.generation();
        let mut st = self.lock();
        if st.policy.0 != gen {
            let (gen, name, p) = self.ctx.shared.resolve_policy(&self.ctx.identity, &self.ctx.groups);
            if name != st.policy.1 || *p != *st.policy.2 {
                tracing::info!(conn = self.ctx.conn_id, identity = %self.ctx.identity, policy = %name, "policy reloaded");
            }
            st.policy = (gen, name, p);
        }
        st.policy.2.clone()
    }

    fn audit(
        &self,
        handler: &str,
        name: Option<&str>,
        seq: i64,
        decision: &'static str,
        outcome: &str,
        latency: Duration,
    ) {
        self.ctx.shared.audit.record(&AuditRecord {
            conn: self.ctx.conn_id,
            identity: &self.ctx.identity,
            peer: &self.ctx.peer,
            upstream: &self.ctx.upstream_name,
            handler,
            name,
            seq,
            decision,
            outcome,
            latency,
        });
    }

    /// Checks a client request; on success it is recorded as pending.
    fn admit(&self, seq: i64, args: &Value) -> Result<(), (Denial, Option<Handler>, Option<String>)> {
        let req = inspect_request(args).map_err(|d| (d, None, None))?;
        let name = req.names.first().cloned();
        let fail = |d: Denial| (d, Some(req.handler), name.clone());
        if *self.draining.borrow() {
            return Err(fail(Denial::Draining));
        }
        let policy = self.policy();
        if !policy.handler_allowed(req.handler) {
            // Python refuses a disabled GETATTR/SETATTR/DELATTR with
            // AttributeError("cannot access 'name'"); so does the gateway.
            let by_name =
                matches!(req.handler, Handler::GetAttr | Handler::SetAttr | Handler::DelAttr | Handler::CallAttr);
            return Err(fail(match (&name, by_name) {
                (Some(n), true) => Denial::Name { name: n.clone(), rule: "handler" },
                _ => Denial::Handler(req.handler),
            }));
        }
        let on_root = req.target == Target::Upstream(self.root.0, self.root.1);
        for n in &req.names {
            policy.check_name(n, on_root).map_err(fail)?;
        }
        let mut st = self.lock();
        if st.pending.contains_key(&seq) {
            return Err(fail(Denial::Malformed(format!("sequence number {seq} is already awaiting a reply"))));
        }
        if st.pending.len() >= self.max_pending {
            return Err(fail(Denial::Limit(format!(
                "{} requests are already awaiting replies on this connection",
                self.max_pending
            ))));
        }
        // Reference drops and goodbyes are never limited: refusing them
        // would only leak objects on the upstream.
        let counted = !matches!(req.handler, Handler::Del | Handler::Close);
        if counted {
            self.ctx.limiter.acquire(&policy).map_err(fail)?;
        }
        st.pending.insert(seq, Pending { handler: req.handler, name, start: Instant::now(), counted });
        drop(st);
        self.ctx.shared.metrics.allowed(req.handler);
        Ok(())
    }

    /// A reply from the upstream for a client request: audit and release.
    fn finish(&self, seq: i64, outcome: &str) -> bool {
        let Some(p) = self.lock().pending.remove(&seq) else {
            return false;
        };
        self.close_pending(seq, p, outcome);
        true
    }

    fn close_pending(&self, seq: i64, p: Pending, outcome: &str) {
        if p.counted {
            self.ctx.limiter.release();
        }
        let latency = p.start.elapsed();
        self.ctx.shared.metrics.observe(latency);
        self.audit(p.handler.name(), p.name.as_deref(), seq, "allowed", outcome, latency);
    }

    fn idle(&self) -> bool {
        let st = self.lock();
        st.pending.is_empty() && st.callbacks.is_empty()
    }

    fn take_all_pending(&self) -> Vec<(i64, Pending)> {
        self.lock().pending.drain().collect()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Whatever is still pending was never answered.
        for (seq, p) in self.take_all_pending() {
            let outcome = if p.handler == Handler::Close { "closed" } else { "aborted" };
            self.close_pending(seq, p, outcome);
        }
    }
}

/// Serves one authenticated client until either side leaves.
pub(crate) async fn relay(ctx: ConnCtx, client: BoxStream) {
    let rules = ctx.shared.rules();
    let limits = rules.config.limits.clone();
    drop(rules);
    let channel =
        ChannelConfig { max_frame: limits.max_frame, max_inflated: limits.max_inflated, ..ChannelConfig::default() };
    let decode = DecodeLimits { max_depth: limits.max_depth, ..DecodeLimits::default() };
    let mut draining = ctx.shared.draining.subscribe();

    let (cr, mut cw) = tokio::io::split(client);
    let mut creader = RawReader::new(BufReader::new(cr), channel.clone());
    // Nothing happens upstream until the client speaks: its first message
    // tells the dialect, and idle clients cost no upstream connection.
    let first = tokio::select! {
        f = creader.read() => f,
        _ = draining.wait_for(|d| *d) => return,
    };
    let first = match first {
        Ok(Some(f)) => f,
        Ok(None) => return,
        Err(e) => {
            tracing::info!(conn = ctx.conn_id, identity = %ctx.identity, error = %e, "client sent an unreadable frame");
            return;
        }
    };
    let Some(client_dialect) = Dialect::detect(first.payload()) else {
        tracing::info!(conn = ctx.conn_id, identity = %ctx.identity, "client's first message is not RPyC");
        return;
    };
    let upstream_dialect = match ctx.upstream.protocol {
        Protocol::Rpyc6 => Dialect::V6,
        Protocol::Rpyc5 => Dialect::V5,
        _ => client_dialect,
    };
    let timeout = secs(limits.upstream_timeout_secs);
    let opened = tokio::time::timeout(timeout, async {
        let (mut up, desc) = super::connect_upstream(&ctx.upstream, timeout).await?;
        let (root, early) =
            fetch_root(&mut up, upstream_dialect, &channel, &decode).await.map_err(|e| format!("{desc}: {e}"))?;
        Ok::<_, String>((up, desc, root, early))
    })
    .await
    .unwrap_or_else(|_| Err(format!("{}: no answer within {timeout:?}", ctx.upstream.describe())));
    let (upstream, upstream_desc, root, early) = match opened {
        Ok(x) => x,
        Err(e) => {
            ctx.shared.metrics.upstream_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(conn = ctx.conn_id, identity = %ctx.identity, upstream = %ctx.upstream_name, error = %e, "cannot reach the upstream");
            // Answer the request that is waiting, so the client learns why.
            if let Ok(msg) = decode_message(client_dialect, first.payload(), &decode) {
                if msg.kind == MSG_REQUEST {
                    let exc = Exception::new(
                        "ConnectionRefusedError",
                        format!("the gateway cannot reach upstream {:?}: {e}", ctx.upstream_name),
                    );
                    let _ = cw.write_all(&exception_frame(client_dialect, msg.seq, &exc, &channel)).await;
                    let _ = cw.flush().await;
                }
            }
            let _ = cw.shutdown().await;
            return;
        }
    };
    tracing::info!(
        conn = ctx.conn_id,
        identity = %ctx.identity,
        upstream = %ctx.upstream_name,
        address = %upstream_desc,
        dialect = ?client_dialect,
        "relaying"
    );
    let (policy_gen, policy_name, policy) = ctx.shared.resolve_policy(&ctx.identity, &ctx.groups);
    let drain_timeout = secs(limits.drain_timeout_secs);
    let session = Arc::new(Session {
        upstream_desc,
        client_dialect,
        upstream_dialect,
        root,
        channel: channel.clone(),
        decode,
        max_pending: limits.max_pending.max(1),
        draining: draining.clone(),
        state: Mutex::new(State {
            pending: HashMap::new(),
            callbacks: HashMap::new(),
            policy: (policy_gen, policy_name, policy),
        }),
        ctx,
    });

    let (ur, uw) = tokio::io::split(upstream);
    let ureader = RawReader::new(BufReader::new(ur), channel.clone());
    let (cl_tx, cl_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let (up_tx, up_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let mut cpump = Box::pin(client_pump(session.clone(), creader, Some(first), up_tx.clone(), cl_tx.clone()));
    let mut upump = Box::pin(upstream_pump(session.clone(), ureader, early, up_tx, cl_tx.clone()));
    let mut cwriter = Box::pin(writer(cw, cl_rx));
    let mut uwriter = Box::pin(writer(uw, up_rx));
    let drain = drain_watch(session.clone(), draining, drain_timeout);
    tokio::pin!(drain);
    let end = tokio::select! {
        e = &mut cpump => e,
        e = &mut upump => e,
        r = &mut cwriter => End::Client(match r { Ok(()) => "writer stopped".into(), Err(e) => e.to_string() }),
        r = &mut uwriter => End::Upstream(match r { Ok(()) => "writer stopped".into(), Err(e) => e.to_string() }),
        timed_out = &mut drain => End::Drained { timed_out },
    };
    // Stop both pumps (and with them their senders) before answering.
    drop(cpump);
    drop(upump);
    drop(uwriter);
    let conn = session.ctx.conn_id;
    // A client that sent CLOSE expects the upstream to hang up.
    let closing = session.lock().pending.values().any(|p| p.handler == Handler::Close);
    let end = match end {
        End::Upstream(_) if closing => End::ClientClosed,
        other => other,
    };
    let why = match &end {
        End::ClientClosed => "the client closed the connection".to_string(),
        End::Client(e) => format!("client: {e}"),
        End::Upstream(e) => format!("upstream {}: {e}", session.upstream_desc),
        End::Drained { timed_out: false } => "gateway shutdown (drained)".to_string(),
        End::Drained { timed_out: true } => "gateway shutdown (drain timeout)".to_string(),
    };
    let tell_client = match &end {
        End::Upstream(e) => {
            session.ctx.shared.metrics.upstream_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(conn, identity = %session.ctx.identity, upstream = %session.upstream_desc, error = %e, "upstream connection lost");
            Some(format!("upstream {:?} ({}) went away: {e}", session.ctx.upstream_name, session.upstream_desc))
        }
        End::Drained { .. } => Some("the gateway shut down before the upstream answered".to_string()),
        _ => None,
    };
    if let Some(text) = tell_client {
        // Fail every pending call at once, with the reason.
        for (seq, p) in session.take_all_pending() {
            if p.handler != Handler::Close {
                let exc = Exception::new("EOFError", text.clone());
                let frame = exception_frame(session.client_dialect, seq, &exc, &session.channel);
                let _ = tokio::time::timeout(FLUSH_TIMEOUT, cl_tx.send(frame)).await;
            }
            session.close_pending(seq, p, "aborted");
        }
        drop(cl_tx);
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, &mut cwriter).await;
    }
    tracing::info!(conn, identity = %session.ctx.identity, reason = %why, "connection ended");
}

/// Asks the upstream for its root (GETROOT under the gateway's own
/// sequence number) and returns the root's (class id, instance id), with
/// any frames the upstream sent before its answer.
async fn fetch_root(
    up: &mut BoxStream,
    dialect: Dialect,
    channel: &ChannelConfig,
    decode: &DecodeLimits,
) -> Result<((i64, i64), Vec<RawFrame>), String> {
    let args = Value::Tuple(vec![
        Value::from(Handler::GetRoot.id()),
        Value::Tuple(vec![Value::from(crate::wire::message::LABEL_VALUE), Value::Tuple(vec![])]),
    ]);
    up.write_all(&frame_of(dialect, MSG_REQUEST, ROOT_SEQ, &args, channel)).await.map_err(|e| e.to_string())?;
    up.flush().await.map_err(|e| e.to_string())?;
    // Unbuffered on purpose: whatever follows the answer stays in the stream
    // for the upstream pump.
    let mut reader = RawReader::new(&mut *up, channel.clone());
    let mut early = Vec::new();
    loop {
        let frame = match reader.read().await {
            Ok(Some(f)) => f,
            Ok(None) => return Err("closed the connection before answering GETROOT".into()),
            Err(e) => return Err(e.to_string()),
        };
        let msg = decode_message(dialect, frame.payload(), decode)
            .map_err(|e| format!("answered GETROOT with something that is not RPyC {dialect:?}: {e}"))?;
        match msg.kind {
            MSG_REPLY if msg.seq == ROOT_SEQ => {
                let root = remote_ref(&msg.args)
                    .ok_or_else(|| format!("answered GETROOT with {} instead of a reference", msg.args.repr()))?;
                return Ok((root, early));
            }
            MSG_EXCEPTION if msg.seq == ROOT_SEQ => {
                return Err(format!("refused GETROOT: {}", Exception::load(msg.args)))
            }
            _ if early.len() < MAX_EARLY_FRAMES => early.push(frame),
            _ => return Err(format!("sent {MAX_EARLY_FRAMES} messages without answering GETROOT")),
        }
    }
}

async fn client_pump<R: AsyncRead + Unpin>(
    s: Arc<Session>,
    mut reader: RawReader<R>,
    mut first: Option<RawFrame>,
    up_tx: mpsc::Sender<Vec<u8>>,
    cl_tx: mpsc::Sender<Vec<u8>>,
) -> End {
    loop {
        let frame = match first.take() {
            Some(f) => f,
            None => match reader.read().await {
                Ok(Some(f)) => f,
                Ok(None) => return End::ClientClosed,
                Err(e) => return End::Client(e.to_string()),
            },
        };
        let msg = match decode_message(s.client_dialect, frame.payload(), &s.decode) {
            Ok(m) => m,
            Err(e) => return End::Client(format!("sent a message that is not RPyC: {e}")),
        };
        if msg.kind == MSG_REQUEST {
            match s.admit(msg.seq, &msg.args) {
                Ok(()) => {
                    let out = reframe(frame, &msg, s.client_dialect, s.upstream_dialect, &s.channel);
                    if up_tx.send(out).await.is_err() {
                        return End::Upstream("the upstream writer stopped".into());
                    }
                }
                Err((denial, handler, name)) => {
                    let hname = handler.map_or("INVALID", Handler::name);
                    s.ctx.shared.metrics.denied(handler, denial.reason());
                    s.audit(hname, name.as_deref(), msg.seq, "denied", denial.reason(), Duration::ZERO);
                    if let Denial::Malformed(why) = &denial {
                        tracing::info!(conn = s.ctx.conn_id, identity = %s.ctx.identity, %why, "malformed request refused");
                    }
                    let frame = exception_frame(s.client_dialect, msg.seq, &denial.exception(), &s.channel);
                    if cl_tx.send(frame).await.is_err() {
                        return End::Client("the client writer stopped".into());
                    }
                }
            }
        } else {
            // A reply to one of the upstream's callbacks: forwarded only if
            // the upstream is waiting for it.
            let known = s.lock().callbacks.remove(&msg.seq).is_some();
            if known {
                let out = reframe(frame, &msg, s.client_dialect, s.upstream_dialect, &s.channel);
                if up_tx.send(out).await.is_err() {
                    return End::Upstream("the upstream writer stopped".into());
                }
            } else {
                tracing::debug!(conn = s.ctx.conn_id, seq = msg.seq, "client reply to no pending callback dropped");
            }
        }
    }
}

async fn upstream_pump<R: AsyncRead + Unpin>(
    s: Arc<Session>,
    mut reader: RawReader<R>,
    early: Vec<RawFrame>,
    up_tx: mpsc::Sender<Vec<u8>>,
    cl_tx: mpsc::Sender<Vec<u8>>,
) -> End {
    let mut early = early.into_iter();
    loop {
        let frame = match early.next() {
            Some(f) => f,
            None => match reader.read().await {
                Ok(Some(f)) => f,
                Ok(None) => return End::Upstream("closed the connection".into()),
                Err(e) => return End::Upstream(e.to_string()),
            },
        };
        let msg = match decode_message(s.upstream_dialect, frame.payload(), &s.decode) {
            Ok(m) => m,
            Err(e) => return End::Upstream(format!("sent a message that is not RPyC: {e}")),
        };
        match msg.kind {
            MSG_REQUEST => {
                // A callback into the client: forwarded as is (the client's
                // own policy applies to it).
                let admitted = {
                    let mut st = s.lock();
                    if st.callbacks.len() < MAX_CALLBACKS {
                        st.callbacks.insert(msg.seq, Instant::now());
                        true
                    } else {
                        false
                    }
                };
                if admitted {
                    s.ctx.shared.metrics.callbacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let out = reframe(frame, &msg, s.upstream_dialect, s.client_dialect, &s.channel);
                    if cl_tx.send(out).await.is_err() {
                        return End::Client("the client writer stopped".into());
                    }
                } else {
                    let exc = Exception::runtime_error(format!(
                        "the gateway refused the callback: {MAX_CALLBACKS} callbacks are already awaiting the client"
                    ));
                    if up_tx.send(exception_frame(s.upstream_dialect, msg.seq, &exc, &s.channel)).await.is_err() {
                        return End::Upstream("the upstream writer stopped".into());
                    }
                }
            }
            kind => {
                let outcome = if kind == MSG_REPLY { "reply" } else { "exception" };
                if s.finish(msg.seq, outcome) {
                    let out = reframe(frame, &msg, s.upstream_dialect, s.client_dialect, &s.channel);
                    if cl_tx.send(out).await.is_err() {
                        return End::Client("the client writer stopped".into());
                    }
                } else {
                    tracing::debug!(
                        conn = s.ctx.conn_id,
                        seq = msg.seq,
                        "upstream reply to no pending request dropped"
                    );
                }
            }
        }
    }
}

/// Once shutdown begins, waits until nothing is in flight either way (or
/// the drain timeout passes); `true` if it timed out.
async fn drain_watch(s: Arc<Session>, mut draining: watch::Receiver<bool>, timeout: Duration) -> bool {
    if draining.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await;
    }
    let deadline = Instant::now() + timeout;
    loop {
        if s.idle() {
            return false;
        }
        if Instant::now() >= deadline {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
