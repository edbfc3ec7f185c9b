//! One client connection through the gateway: two pumps over frames.
//!
//! ```text
//! client ──frames──▶ client pump ──granted requests, sanitized replies──▶ upstream writer
//!   ▲                    │ denials (exception replies)
//!   └── client writer ◀──┴──────────── upstream pump ◀──frames── upstream
//! ```
//!
//! Every frame is read with the gateway's limits and *read*, not built
//! ([`super::scan`]): envelope, handler, labels, references and the few
//! small arguments the checks need; everything else is relayed as the
//! bytes that arrived (compressed frames too, after inflating them to
//! check). A request is forwarded only if the identity's capabilities grant
//! it ([`super::capability`]): its handler, its target (an object the
//! upstream handed to this client, under a grant that still holds), the
//! member it names, and every object it passes along. Replies record the
//! objects they hand over, with the grant they were obtained under.
//! Replies the client sends to the upstream's callbacks are sanitized
//! (only granted references, exceptions as builtin classes).
//!
//! Sequence numbers pass through unchanged: each side numbers its own
//! requests, and the gateway answers a denied request itself under the
//! client's number. Replies are matched to requests (bounded maps in both
//! directions) for the audit trail, latency, in-flight limits, and to fail
//! every pending call at once when the upstream goes away. Frames queued
//! towards a slow reader are bounded in bytes in both directions.
//!
//! The upstream's root object is fetched by the gateway itself before the
//! first client request is forwarded, so the capability table starts with
//! the root's id-pack before any request could name it.

use super::capability::{Grant, Step, Table};
use super::config::{secs, Protocol};
use super::metrics::AuditRecord;
use super::policy::{Denial, GatewayPolicy, COMPARISONS};
use super::scan::{self, Arg, RefLabel, Request};
use super::{IdentityLimiter, Shared};
use crate::channel::{finish_frame, ChannelConfig, ChannelError, FrameReader, HEADER_LEN};
use crate::transport::BoxStream;
use crate::wire::message::{
    decode_message, encode_message, LABEL_REMOTE_REF, LABEL_VALUE, MSG_EXCEPTION, MSG_REPLY, MSG_REQUEST,
};
use crate::wire::{DecodeLimits, Dialect, Exception, Handler, IdPack, Int, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::watch;

/// Largest client reply the gateway decodes to rebuild it (exceptions,
/// INSPECT answers).
const MAX_REBUILT: usize = 1 << 20;
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

/// One side's write half, shared by the two pumps that send to it. A frame
/// is written and flushed by the task that read it — no hand-off to a
/// writer task, so a round trip through the gateway costs two task
/// wake-ups, not four — and nothing is queued: a side that does not read
/// holds back whoever sends to it (back-pressure), so a connection holds
/// at most one frame per direction in the gateway's memory.
struct Sink<W> {
    w: tokio::sync::Mutex<W>,
}

impl<W: AsyncWrite + Unpin> Sink<W> {
    fn new(w: W) -> Sink<W> {
        Sink { w: tokio::sync::Mutex::new(w) }
    }

    /// Writes and flushes one frame; false if the side is gone.
    async fn send(&self, frame: &[u8]) -> bool {
        let mut w = self.w.lock().await;
        w.write_all(frame).await.is_ok() && w.flush().await.is_ok()
    }

    async fn shutdown(&self) {
        let _ = self.w.lock().await.shutdown().await;
    }
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
/// dialect, else the message decoded and re-encoded.
fn reframe(frame: RawFrame, from: Dialect, to: Dialect, s: &Session) -> Result<Vec<u8>, String> {
    if from == to {
        return Ok(frame.raw);
    }
    let msg = decode_message(from, frame.payload(), &s.decode).map_err(|e| e.to_string())?;
    Ok(frame_of(to, msg.kind, msg.seq, &msg.args, &s.channel))
}

/// Everything a connection needs from the accept side.
pub(crate) struct ConnCtx {
    pub shared: Arc<Shared>,
    pub conn_id: u64,
    pub identity: String,
    pub groups: Vec<String>,
    pub peer: String,
    pub upstream_name: String,
    pub pool: Arc<super::pool::Pool>,
    pub limiter: Arc<IdentityLimiter>,
}

struct Pending {
    handler: Handler,
    name: Option<String>,
    start: Instant,
    /// Counted against the identity's in-flight limit.
    counted: bool,
    /// The grant under which objects in the reply are obtained.
    grant: Option<Arc<Grant>>,
}

struct State {
    pending: HashMap<i64, Pending>,
    /// Requests from the upstream awaiting the client: when, and which handler.
    callbacks: HashMap<i64, (Instant, Handler)>,
    /// (rules generation, policy name, policy).
    policy: (u64, String, Arc<GatewayPolicy>),
    /// The upstream objects this client holds, with their grants.
    table: Table,
    /// The client sent CLOSE: the upstream hanging up is the normal end,
    /// even once it has answered the CLOSE.
    closing: bool,
}

struct Session {
    ctx: ConnCtx,
    upstream_desc: String,
    client_dialect: Dialect,
    upstream_dialect: Dialect,
    channel: ChannelConfig,
    decode: DecodeLimits,
    max_pending: usize,
    /// What one client message may cost the upstream to decode.
    max_values: u64,
    max_set_work: u64,
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

/// What a granted request leaves behind: the name for the audit, the grant
/// for objects in its reply, and references it releases.
struct Admitted {
    name: Option<String>,
    grant: Option<Arc<Grant>>,
    release: Option<(IdPack, u64)>,
}

/// Class-name prefixes under which a client's own objects may reach the
/// upstream. Python turns the class name of a proxy into
/// `getattr(sys.modules[prefix], rest)` (`netref.class_factory`), and a
/// module-level `__getattr__` may import; `builtins` (functions, methods,
/// lambdas) and `rpyc.core.service` (a client's root service) have none.
const CLIENT_CLASS_MODULES: &[&str] = &["builtins", "rpyc.core.service"];

fn client_class_allowed(name: &str) -> bool {
    let ident = |s: &str| !s.is_empty() && s.chars().all(|c| c == '_' || c.is_ascii_alphanumeric());
    match name.rsplit_once('.') {
        None => ident(name),
        Some((module, class)) => CLIENT_CLASS_MODULES.contains(&module) && ident(class),
    }
}

/// Python's builtin exception classes (3.11); an exception a client sends
/// to the upstream is re-raised there as one of these or as `Exception`.
const BUILTIN_EXCEPTIONS: &[&str] = &[
    "ArithmeticError",
    "AssertionError",
    "AttributeError",
    "BaseException",
    "BlockingIOError",
    "BrokenPipeError",
    "BufferError",
    "ChildProcessError",
    "ConnectionAbortedError",
    "ConnectionError",
    "ConnectionRefusedError",
    "ConnectionResetError",
    "EOFError",
    "Exception",
    "FileExistsError",
    "FileNotFoundError",
    "FloatingPointError",
    "GeneratorExit",
    "ImportError",
    "IndexError",
    "InterruptedError",
    "IsADirectoryError",
    "KeyError",
    "LookupError",
    "MemoryError",
    "ModuleNotFoundError",
    "NameError",
    "NotADirectoryError",
    "NotImplementedError",
    "OSError",
    "OverflowError",
    "PermissionError",
    "ProcessLookupError",
    "RecursionError",
    "ReferenceError",
    "RuntimeError",
    "StopAsyncIteration",
    "StopIteration",
    "SyntaxError",
    "TimeoutError",
    "TypeError",
    "UnboundLocalError",
    "UnicodeDecodeError",
    "UnicodeEncodeError",
    "UnicodeError",
    "ValueError",
    "ZeroDivisionError",
];

type Refusal = (Denial, Option<Handler>, Option<String>);

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The identity's current policy and its generation (re-resolved after
    /// a reload).
    fn policy(&self) -> (u64, Arc<GatewayPolicy>) {
        let gen = self.ctx.shared.generation();
        let mut st = self.lock();
        if st.policy.0 != gen {
            let (gen, name, p) = self.ctx.shared.resolve_policy(&self.ctx.identity, &self.ctx.groups);
            if name != st.policy.1 || *p != *st.policy.2 {
                tracing::info!(conn = self.ctx.conn_id, identity = %self.ctx.identity, policy = %name, "policy reloaded");
            }
            st.policy = (gen, name, p);
        }
        (st.policy.0, st.policy.2.clone())
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
    fn admit(&self, seq: i64, payload: &[u8], body: usize) -> Result<(), Refusal> {
        let req = scan::request(payload, body, &self.decode).map_err(|d| (d, None, None))?;
        let first_name = |r: &Request| scan::audit_name(payload, r, &self.decode);
        if *self.draining.borrow() {
            return Err((Denial::Draining, Some(req.handler), first_name(&req)));
        }
        let (gen, policy) = self.policy();
        if !policy.handler_allowed(req.handler) {
            // Python refuses a disabled GETATTR/SETATTR/DELATTR with
            // AttributeError("cannot access 'name'"); so does the gateway.
            let name = first_name(&req);
            let by_name =
                matches!(req.handler, Handler::GetAttr | Handler::SetAttr | Handler::DelAttr | Handler::CallAttr);
            let d = match (&name, by_name) {
                (Some(n), true) => Denial::Name { name: n.clone(), rule: "handler" },
                _ => Denial::Handler(req.handler),
            };
            return Err((d, Some(req.handler), name));
        }
        let mut st = self.lock();
        let admitted =
            self.check(&st.table, &policy, gen, &req, payload).map_err(|d| (d, Some(req.handler), first_name(&req)))?;
        let fail = |d: Denial| (d, Some(req.handler), admitted.name.clone());
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
        if let Some((id, n)) = &admitted.release {
            st.table.release(id, *n);
        }
        st.closing |= req.handler == Handler::Close;
        st.pending.insert(
            seq,
            Pending {
                handler: req.handler,
                name: admitted.name,
                start: Instant::now(),
                counted,
                grant: admitted.grant,
            },
        );
        drop(st);
        self.ctx.shared.metrics.allowed(req.handler);
        Ok(())
    }

    /// The capability check of one request (its handler is granted).
    fn check(
        &self,
        table: &Table,
        p: &GatewayPolicy,
        gen: u64,
        req: &Request,
        payload: &[u8],
    ) -> Result<Admitted, Denial> {
        let lim = &self.decode;
        let h = req.handler;
        let mut out = Admitted { name: None, grant: None, release: None };
        if h == Handler::Del {
            // Releasing is always allowed, for objects the client holds.
            let Some(Arg::Local(id)) = req.args.first() else {
                return Err(Denial::Malformed("DEL of something that is not an upstream object".into()));
            };
            let count = match req.args.get(1) {
                Some(a) => scan::int_arg(payload, a, lim)?,
                None => 1,
            };
            if count < 1 {
                return Err(Denial::Malformed(format!("DEL of {count} references")));
            }
            if table.get(id).is_none() {
                return Err(Denial::Object("DEL of an object this connection does not hold".into()));
            }
            out.release = Some((id.clone(), count.unsigned_abs()));
            return Ok(out);
        }
        if p.classic {
            // Full trust: forwarded as is; what it hands over is valid only
            // while classic rights last.
            let root = Grant::new(None, Step::Root);
            out.grant = Some(if h == Handler::GetRoot { root } else { Grant::new(Some(&root), Step::Classic) });
            out.name = scan::audit_name(payload, req, lim);
            return Ok(out);
        }
        // Every object passed anywhere in the arguments: the upstream's must
        // be granted, the client's need `callbacks`.
        for arg in &req.args {
            scan::arg_refs(payload, arg, lim, &mut |label, id| self.check_ref(table, p, gen, label, &id))?;
        }
        let target = || -> Result<(&IdPack, &Arc<Grant>, bool), Denial> {
            match req.args.first() {
                Some(Arg::Local(id)) => {
                    let e = table.get(id).ok_or_else(unknown_object)?;
                    Ok((id, &e.grant, id == table.root()))
                }
                _ => Err(Denial::Object(format!(
                    "the target of {} must be an object the upstream handed to this connection",
                    h.name()
                ))),
            }
        };
        let member = |id: &IdPack, grant: &Arc<Grant>, is_root: bool, name: &str| -> Result<Arc<Grant>, Denial> {
            let step = if is_root {
                p.check_root_member(name)?;
                Step::RootMember(name.to_string())
            } else {
                p.check_member(&id.class_name, name)?;
                Step::Member { class: id.class_name.clone(), name: name.to_string() }
            };
            Grant::child(grant, step).map_err(|_| too_deep())
        };
        let derived = |grant: &Arc<Grant>, step: Step| Grant::child(grant, step).map_err(|_| too_deep());
        let name = |i: usize| -> Result<String, Denial> {
            scan::name_arg(payload, req.args.get(i).ok_or_else(|| Denial::Malformed("missing name".into()))?, lim)
        };
        let call_args = |i: usize, kw: usize| -> Result<(), Denial> {
            if let Some(a) = req.args.get(i) {
                scan::check_call_args(payload, a, lim)?;
            }
            if let Some(a) = req.args.get(kw) {
                scan::check_kwargs(payload, a, lim)?;
            }
            Ok(())
        };
        match h {
            Handler::Ping | Handler::Close => {}
            Handler::GetRoot => out.grant = Some(Grant::new(None, Step::Root)),
            Handler::Del => {}
            Handler::Inspect => {
                let a = req.args.first().ok_or_else(|| Denial::Malformed("INSPECT of nothing".into()))?;
                let id = scan::id_pack_arg(payload, a, lim)?;
                self.check_ref(table, p, gen, RefLabel::Local, &id)?;
            }
            Handler::GetAttr | Handler::CallAttr | Handler::SetAttr | Handler::DelAttr => {
                let (id, grant, is_root) = target()?;
                let n = name(1)?;
                let g = member(id, grant, is_root, &n)?;
                out.grant = Some(match h {
                    Handler::GetAttr => g,
                    Handler::CallAttr => {
                        call_args(2, 3)?;
                        derived(&g, Step::Call { callee: String::new() })?
                    }
                    _ => derived(grant, Step::Derived)?,
                });
                out.name = Some(n);
            }
            Handler::Call => {
                let (id, grant, is_root) = target()?;
                let e = table.get(id).ok_or_else(unknown_object)?;
                if is_root || !e.callable(&id.class_name, p) {
                    return Err(Denial::Object(format!(
                        "this identity may not call objects of class {:?} (grant \"__call__\" under [objects])",
                        id.class_name
                    )));
                }
                call_args(1, 2)?;
                out.grant = Some(derived(grant, Step::Call { callee: id.class_name.clone() })?);
            }
            Handler::Repr | Handler::Str | Handler::Hash | Handler::Dir | Handler::Pickle => {
                let (_, grant, _) = target()?;
                if h == Handler::Pickle {
                    scan::int_arg(payload, req.args.get(1).unwrap_or(&Arg::Value(0, 0)), lim)?;
                }
                out.grant = Some(derived(grant, Step::Derived)?);
            }
            Handler::InstanceCheck => {
                let (_, grant, _) = target()?;
                if let Some(a) = req.args.get(1) {
                    scan::id_pack_arg(payload, a, lim)?;
                }
                out.grant = Some(derived(grant, Step::Derived)?);
            }
            Handler::BuffIter => {
                let (_, grant, _) = target()?;
                let n = scan::int_arg(payload, req.args.get(1).unwrap_or(&Arg::Value(0, 0)), lim)?;
                if !(0..=1_000_000).contains(&n) {
                    return Err(Denial::Malformed(format!("BUFFITER of {n} items")));
                }
                out.grant = Some(derived(grant, Step::Derived)?);
            }
            Handler::Cmp => {
                let (_, grant, _) = target()?;
                let op = match req.args.get(2) {
                    Some(_) => name(2)?,
                    None => "__cmp__".to_string(),
                };
                // `getattr(type(obj), op)(obj, other)`: only the comparisons.
                if !COMPARISONS.contains(&op.as_str()) {
                    return Err(Denial::Name { name: op, rule: "member" });
                }
                out.grant = Some(derived(grant, Step::Derived)?);
                out.name = Some(op);
            }
            Handler::CtxExit => {
                let (id, grant, is_root) = target()?;
                let g = member(id, grant, is_root, "__exit__")?;
                out.grant = Some(derived(&g, Step::Call { callee: String::new() })?);
                out.name = Some("__exit__".into());
            }
            Handler::OldSlicing => {
                let (id, grant, is_root) = target()?;
                let attempt = name(1)?;
                let fallback = name(2)?;
                let g = member(id, grant, is_root, &attempt)?;
                member(id, grant, is_root, &fallback)?;
                call_args(5, usize::MAX)?;
                out.grant = Some(derived(&g, Step::Call { callee: String::new() })?);
                out.name = Some(attempt);
            }
        }
        Ok(out)
    }

    /// Checks one object a client message passes to the upstream: the
    /// upstream's own must be held under a grant that still holds; the
    /// client's own need `callbacks` and a class name the upstream resolves
    /// without importing.
    fn check_ref(
        &self,
        table: &Table,
        p: &GatewayPolicy,
        gen: u64,
        label: RefLabel,
        id: &IdPack,
    ) -> Result<(), Denial> {
        match label {
            RefLabel::Local => {
                let e = table.get(id).ok_or_else(unknown_object)?;
                if !e.grant.holds(p, gen) {
                    return Err(Denial::Object(
                        "this identity's policy no longer grants the object it obtained this reference through".into(),
                    ));
                }
                Ok(())
            }
            RefLabel::Remote => {
                if !p.callbacks {
                    return Err(Denial::Callbacks("this identity may not pass its own objects to the upstream".into()));
                }
                if !client_class_allowed(&id.class_name) {
                    return Err(Denial::Object(format!(
                        "objects of class {:?} cannot be passed through the gateway; pass functions or bound methods",
                        id.class_name
                    )));
                }
                Ok(())
            }
        }
    }

    /// A reply from the upstream for a client request: audit and release;
    /// the pending request, if it was one.
    fn finish(&self, seq: i64, outcome: &str) -> Option<Option<Arc<Grant>>> {
        let mut p = self.lock().pending.remove(&seq)?;
        let grant = p.grant.take();
        self.close_pending(seq, p, outcome);
        Some(grant)
    }

    /// Why a client message would cost the upstream too much to decode, if
    /// it would (values, frozenset work).
    fn too_costly(&self, head: &scan::Head) -> Option<String> {
        if head.cost.values > self.max_values {
            return Some(format!(
                "the message holds {} values; the gateway forwards at most {} (limits.max_values)",
                head.cost.values, self.max_values
            ));
        }
        if head.cost.digits > self.decode.max_int_digits_total as u64 {
            return Some(format!(
                "the message's big integers hold {} digits; the gateway forwards at most {}",
                head.cost.digits, self.decode.max_int_digits_total
            ));
        }
        if head.cost.set_work > self.max_set_work {
            return Some(format!(
                "the message's frozensets are too large for the upstream to build safely \
                 (work {} > limits.max_set_work {})",
                head.cost.set_work, self.max_set_work
            ));
        }
        None
    }

    /// Records the upstream objects a message hands to the client (its
    /// `REMOTE_REF`s), each under `grant`. Fails if the client would hold
    /// more than [`super::capability::MAX_OBJECTS`].
    fn record(&self, payload: &[u8], at: usize, depth: usize, grant: &Arc<Grant>) -> Result<(), String> {
        let mut st = self.lock();
        let table = &mut st.table;
        scan::walk_at(payload, at, depth, &self.decode, &mut |label, id| {
            if label == RefLabel::Remote && table.add(id, grant).is_err() {
                return Err(Denial::Limit(String::new()));
            }
            Ok(())
        })
        .map_err(|d| match d {
            Denial::Limit(_) => format!(
                "the client holds {} upstream objects (the limit); it must release some",
                super::capability::MAX_OBJECTS
            ),
            other => format!("sent a malformed message: {}", other.exception().message()),
        })
    }

    /// The client's reply (or exception) to a request of the upstream, as
    /// the frame to forward: only granted references, and exceptions as
    /// builtin classes. `Err` is the reason to refuse it.
    fn sanitize_reply(&self, kind: u8, handler: Handler, frame: RawFrame, body: usize) -> Result<Vec<u8>, String> {
        let (gen, p) = self.policy();
        let (from, to) = (self.client_dialect, self.upstream_dialect);
        if p.classic {
            return reframe(frame, from, to, self);
        }
        let payload = frame.payload();
        if kind == MSG_EXCEPTION || handler == Handler::Inspect {
            // These are rebuilt from their decoded values; an exception or
            // a method list is small, a value tree is ~30 bytes per byte.
            if payload.len() > MAX_REBUILT {
                return Err(format!("a reply of {} bytes where at most {MAX_REBUILT} are expected", payload.len()));
            }
        }
        if kind == MSG_EXCEPTION {
            let msg = decode_message(from, payload, &self.decode).map_err(|e| e.to_string())?;
            let exc = sanitize_exception(Exception::load(msg.args));
            return Ok(frame_of(
                to,
                MSG_EXCEPTION,
                msg.seq,
                &exc.dump(to.version(), "rpyc gateway client"),
                &self.channel,
            ));
        }
        {
            let st = self.lock();
            scan::walk_at(payload, body, 1, &self.decode, &mut |label, id| {
                self.check_ref(&st.table, &p, gen, label, &id)
            })
            .map_err(|d| d.exception().message())?;
        }
        if handler == Handler::Inspect {
            // The method names become the client object's proxy class on the
            // upstream; RPyC looks `_rpyc_getattr` and friends up there.
            let msg = decode_message(from, payload, &self.decode).map_err(|e| e.to_string())?;
            let methods = match msg.args.as_tuple() {
                Some([Value::Int(Int::Small(LABEL_VALUE)), Value::Tuple(items)]) => items
                    .iter()
                    .filter(|m| match m.as_tuple() {
                        Some([Value::Str(n), _]) => !n.starts_with("_rpyc_"),
                        _ => false,
                    })
                    .cloned()
                    .collect(),
                _ => return Err("an INSPECT reply that is not a tuple of (name, doc) pairs".into()),
            };
            let args = Value::Tuple(vec![Value::from(LABEL_VALUE), Value::Tuple(methods)]);
            return Ok(frame_of(to, MSG_REPLY, msg.seq, &args, &self.channel));
        }
        reframe(frame, from, to, self)
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

/// An exception from the client as the upstream may see it: a builtin
/// class of the same name, or `Exception`; args kept (they are values),
/// attributes dropped. A classic upstream imports the module an exception
/// names (`import_custom_exceptions`); it never sees one but `builtins`.
fn sanitize_exception(e: Exception) -> Exception {
    let class = if e.module == "builtins" && BUILTIN_EXCEPTIONS.contains(&e.class.as_str()) {
        e.class.clone()
    } else {
        "Exception".to_string()
    };
    let mut out = Exception::with_args("builtins", class, e.args);
    out.traceback = e.traceback;
    out
}

fn unknown_object() -> Denial {
    Denial::Object("the request names an object the upstream never handed to this connection".into())
}

fn too_deep() -> Denial {
    Denial::Limit(format!("object reached through more than {} steps from the root", super::capability::MAX_PATH))
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
        if let Some((sender, seq, kind)) = crate::wire::message::bind_threads_message(first.payload()) {
            tracing::info!(conn = ctx.conn_id, identity = %ctx.identity, "client uses bind_threads framing: refused");
            if kind == MSG_REQUEST {
                let exc = Exception::new("NotImplementedError", crate::wire::message::BIND_THREADS_REFUSAL);
                let mut buf = vec![0u8; HEADER_LEN];
                let dumped = exc.dump(Dialect::V6.version(), "rpyc gateway");
                buf.extend(crate::wire::message::bind_threads_refusal(sender, seq, &dumped));
                let _ = cw.write_all(&finish_frame(buf, &channel)).await;
                let _ = cw.flush().await;
            }
            let _ = cw.shutdown().await;
            return;
        }
        tracing::info!(conn = ctx.conn_id, identity = %ctx.identity, "client's first message is not RPyC");
        return;
    };
    let upstream_dialect = match ctx.pool.config.protocol {
        Protocol::Rpyc6 => Dialect::V6,
        Protocol::Rpyc5 => Dialect::V5,
        _ => client_dialect,
    };
    let timeout = secs(limits.upstream_timeout_secs);
    let opened = open_upstream(&ctx, upstream_dialect, &channel, &decode, timeout).await;
    let (upstream, lease, root, early) = match opened {
        Ok(x) => x,
        Err(e) => {
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
    let upstream_desc = lease.0.url.clone();
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
        channel: channel.clone(),
        decode,
        max_pending: limits.max_pending.max(1),
        max_values: limits.max_values,
        max_set_work: limits.max_set_work,
        draining: draining.clone(),
        state: Mutex::new(State {
            pending: HashMap::new(),
            callbacks: HashMap::new(),
            policy: (policy_gen, policy_name, policy),
            table: Table::new(root),
            closing: false,
        }),
        ctx,
    });

    let (ur, uw) = tokio::io::split(upstream);
    let ureader = RawReader::new(BufReader::new(ur), channel.clone());
    let client_sink = Sink::new(cw);
    let up_sink = Sink::new(uw);
    let mut cpump = Box::pin(client_pump(session.clone(), creader, Some(first), &up_sink, &client_sink));
    let mut upump = Box::pin(upstream_pump(session.clone(), ureader, early, &up_sink, &client_sink));
    let drain = drain_watch(session.clone(), draining, drain_timeout);
    tokio::pin!(drain);
    let end = tokio::select! {
        e = &mut cpump => e,
        e = &mut upump => e,
        timed_out = &mut drain => End::Drained { timed_out },
    };
    // Stop both pumps (and with them their senders) before answering.
    drop(cpump);
    drop(upump);
    up_sink.shutdown().await;
    let conn = session.ctx.conn_id;
    // A client that sent CLOSE expects the upstream to hang up.
    let closing = session.lock().closing;
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
            // Check the server now rather than at the next interval: if it
            // is gone, new clients stop being sent there at once.
            session.ctx.shared.pools.wake.notify_one();
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
                let _ = tokio::time::timeout(FLUSH_TIMEOUT, client_sink.send(&frame)).await;
            }
            session.close_pending(seq, p, "aborted");
        }
    }
    // A clean end for the client (TLS close_notify), unless it stopped reading.
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, client_sink.shutdown()).await;
    tracing::info!(conn, identity = %session.ctx.identity, reason = %why, "connection ended");
    drop(lease);
}

/// Connects to a server of the client's upstream pool and fetches its
/// root. A server that cannot be reached is ejected from the pool and
/// another one is tried (at most [`super::pool`]'s attempt limit), all
/// within `timeout`.
async fn open_upstream(
    ctx: &ConnCtx,
    dialect: Dialect,
    channel: &ChannelConfig,
    decode: &DecodeLimits,
    timeout: Duration,
) -> Result<(BoxStream, super::pool::Lease, IdPack, Vec<RawFrame>), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tried = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    loop {
        let lease = match ctx.pool.pick(&tried) {
            Ok(l) => l,
            Err(e) if errors.is_empty() => return Err(e),
            Err(_) => return Err(errors.join("; ")),
        };
        let member = lease.0.clone();
        let attempt = tokio::time::timeout_at(deadline, async {
            let mut up = member.connect(timeout).await?;
            let (root, early) = fetch_root(&mut up, dialect, channel, decode).await?;
            Ok::<_, String>((up, root, early))
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
        match attempt {
            Ok((up, root, early)) => return Ok((up, lease, root, early)),
            Err(e) => {
                ctx.shared.metrics.upstream_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                member.eject(&ctx.upstream_name, &e);
                ctx.shared.pools.wake.notify_one();
                errors.push(format!("{}: {e}", member.url));
                tried.push(member);
                if tried.len() >= super::pool::MAX_ATTEMPTS || tokio::time::Instant::now() >= deadline {
                    return Err(errors.join("; "));
                }
            }
        }
    }
}

/// Sends an RPyC PING on a fresh stream and waits for its echo: what a
/// health check asks of an upstream server.
pub(crate) async fn ping(
    up: &mut BoxStream,
    dialect: Dialect,
    channel: &ChannelConfig,
    decode: &DecodeLimits,
) -> Result<(), String> {
    const DATA: &[u8] = b"rpyc-gateway-health";
    let data = Value::Tuple(vec![Value::from(LABEL_VALUE), Value::Tuple(vec![Value::Bytes(DATA.to_vec())])]);
    let (reply, _) = own_request(up, dialect, Handler::Ping, data, channel, decode).await?;
    match reply.as_tuple() {
        Some([_, Value::Bytes(b)]) if b == DATA => Ok(()),
        _ => Err(format!("answered PING with {}", reply.repr())),
    }
}

/// Asks the upstream for its root (GETROOT under the gateway's own
/// sequence number) and returns the root's id-pack, with any frames the
/// upstream sent before its answer.
async fn fetch_root(
    up: &mut BoxStream,
    dialect: Dialect,
    channel: &ChannelConfig,
    decode: &DecodeLimits,
) -> Result<(IdPack, Vec<RawFrame>), String> {
    let empty = Value::Tuple(vec![Value::from(LABEL_VALUE), Value::Tuple(vec![])]);
    let (reply, early) = own_request(up, dialect, Handler::GetRoot, empty, channel, decode).await?;
    let root = match reply.as_tuple() {
        Some([Value::Int(Int::Small(LABEL_REMOTE_REF)), pack]) => IdPack::from_value(pack),
        _ => None,
    };
    let root = root.ok_or_else(|| format!("answered GETROOT with {} instead of a reference", reply.repr()))?;
    Ok((root, early))
}

/// Sends one request of the gateway's own (under [`ROOT_SEQ`]) and reads
/// until its answer: the reply's boxed value, with the frames the upstream
/// sent before it (at most [`MAX_EARLY_FRAMES`]). Unbuffered on purpose:
/// whatever follows the answer stays in the stream for the upstream pump.
async fn own_request(
    up: &mut BoxStream,
    dialect: Dialect,
    handler: Handler,
    boxed_args: Value,
    channel: &ChannelConfig,
    decode: &DecodeLimits,
) -> Result<(Value, Vec<RawFrame>), String> {
    let what = handler.name();
    let args = Value::Tuple(vec![Value::from(handler.id()), boxed_args]);
    up.write_all(&frame_of(dialect, MSG_REQUEST, ROOT_SEQ, &args, channel)).await.map_err(|e| e.to_string())?;
    up.flush().await.map_err(|e| e.to_string())?;
    let mut reader = RawReader::new(&mut *up, channel.clone());
    let mut early = Vec::new();
    loop {
        let frame = match reader.read().await {
            Ok(Some(f)) => f,
            Ok(None) => return Err(format!("closed the connection before answering {what}")),
            Err(e) => return Err(e.to_string()),
        };
        let msg = decode_message(dialect, frame.payload(), decode)
            .map_err(|e| format!("answered {what} with something that is not RPyC {dialect:?}: {e}"))?;
        match msg.kind {
            MSG_REPLY if msg.seq == ROOT_SEQ => return Ok((msg.args, early)),
            MSG_EXCEPTION if msg.seq == ROOT_SEQ => {
                return Err(format!("refused {what}: {}", Exception::load(msg.args)))
            }
            _ if early.len() < MAX_EARLY_FRAMES => early.push(frame),
            _ => return Err(format!("sent {MAX_EARLY_FRAMES} messages without answering {what}")),
        }
    }
}

async fn client_pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    s: Arc<Session>,
    mut reader: RawReader<R>,
    mut first: Option<RawFrame>,
    up_tx: &Sink<W>,
    cl_tx: &Sink<W>,
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
        let head = match scan::head(s.client_dialect, frame.payload(), &s.decode) {
            Ok(h) => h,
            Err(d) => return End::Client(format!("sent a message that is not RPyC: {}", d.exception().message())),
        };
        let too_costly = s.too_costly(&head);
        if head.kind == MSG_REQUEST {
            let admitted = match too_costly {
                Some(why) => Err((Denial::Limit(why), None, None)),
                None => s.admit(head.seq, frame.payload(), head.body),
            };
            match admitted {
                Ok(()) => {
                    let out = match reframe(frame, s.client_dialect, s.upstream_dialect, &s) {
                        Ok(o) => o,
                        Err(e) => return End::Client(format!("sent a message that cannot be translated: {e}")),
                    };
                    if !up_tx.send(&out).await {
                        return End::Upstream("the upstream writer stopped".into());
                    }
                }
                Err((denial, handler, name)) => {
                    let hname = handler.map_or("INVALID", Handler::name);
                    s.ctx.shared.metrics.denied(handler, denial.reason());
                    s.audit(hname, name.as_deref(), head.seq, "denied", denial.reason(), Duration::ZERO);
                    if let Denial::Malformed(why) = &denial {
                        tracing::info!(conn = s.ctx.conn_id, identity = %s.ctx.identity, %why, "malformed request refused");
                    }
                    let frame = exception_frame(s.client_dialect, head.seq, &denial.exception(), &s.channel);
                    if !cl_tx.send(&frame).await {
                        return End::Client("the client writer stopped".into());
                    }
                }
            }
        } else {
            // A reply to one of the upstream's callbacks: forwarded only if
            // the upstream is waiting for it, and only as granted.
            let Some((_, handler)) = s.lock().callbacks.remove(&head.seq) else {
                tracing::debug!(conn = s.ctx.conn_id, seq = head.seq, "client reply to no pending callback dropped");
                continue;
            };
            let sanitized = match too_costly {
                Some(why) => Err(why),
                None => s.sanitize_reply(head.kind, handler, frame, head.body),
            };
            let out = match sanitized {
                Ok(out) => out,
                Err(why) => {
                    tracing::info!(conn = s.ctx.conn_id, identity = %s.ctx.identity, %why, "client reply to a callback refused");
                    s.ctx.shared.metrics.denied(Some(handler), "callbacks");
                    let exc =
                        Exception::new("PermissionError", format!("the gateway refused the client's reply: {why}"));
                    exception_frame(s.upstream_dialect, head.seq, &exc, &s.channel)
                }
            };
            if !up_tx.send(&out).await {
                return End::Upstream("the upstream writer stopped".into());
            }
        }
    }
}

async fn upstream_pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    s: Arc<Session>,
    mut reader: RawReader<R>,
    early: Vec<RawFrame>,
    up_tx: &Sink<W>,
    cl_tx: &Sink<W>,
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
        let head = match scan::head(s.upstream_dialect, frame.payload(), &s.decode) {
            Ok(h) => h,
            Err(d) => return End::Upstream(format!("sent a message that is not RPyC: {}", d.exception().message())),
        };
        match head.kind {
            MSG_REQUEST => {
                // A callback into the client. Objects of the upstream among
                // its arguments become usable by the client only as the
                // policy grants their class.
                let req = match scan::request(frame.payload(), head.body, &s.decode) {
                    Ok(r) => r,
                    Err(d) => return End::Upstream(format!("sent a malformed request: {}", d.exception().message())),
                };
                let (_, policy) = s.policy();
                let refused = if req.handler == Handler::Pickle && !policy.classic {
                    // The upstream would unpickle the client's answer.
                    Some("the gateway does not relay PICKLE requests to this client".to_string())
                } else if s.lock().callbacks.len() >= MAX_CALLBACKS {
                    Some(format!("{MAX_CALLBACKS} callbacks are already awaiting the client"))
                } else {
                    None
                };
                if let Some(why) = refused {
                    let exc = Exception::new("PermissionError", format!("the gateway refused the callback: {why}"));
                    if !up_tx.send(&exception_frame(s.upstream_dialect, head.seq, &exc, &s.channel)).await {
                        return End::Upstream("the upstream writer stopped".into());
                    }
                    continue;
                }
                let grant = Grant::new(None, if policy.classic { Step::Classic } else { Step::CallbackArg });
                let recorded = {
                    let mut st = s.lock();
                    req.args.iter().try_for_each(|arg| {
                        scan::arg_refs(frame.payload(), arg, &s.decode, &mut |label, id| {
                            if label == RefLabel::Remote && st.table.add(id, &grant).is_err() {
                                return Err(Denial::Limit(String::new()));
                            }
                            Ok(())
                        })
                    })
                };
                if recorded.is_err() {
                    return End::Client(format!(
                        "the client holds {} upstream objects (the limit)",
                        super::capability::MAX_OBJECTS
                    ));
                }
                s.lock().callbacks.insert(head.seq, (Instant::now(), req.handler));
                s.ctx.shared.metrics.callbacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let out = match reframe(frame, s.upstream_dialect, s.client_dialect, &s) {
                    Ok(o) => o,
                    Err(e) => return End::Upstream(format!("sent a message that cannot be translated: {e}")),
                };
                if !cl_tx.send(&out).await {
                    return End::Client("the client writer stopped".into());
                }
            }
            kind => {
                let outcome = if kind == MSG_REPLY { "reply" } else { "exception" };
                let Some(grant) = s.finish(head.seq, outcome) else {
                    tracing::debug!(
                        conn = s.ctx.conn_id,
                        seq = head.seq,
                        "upstream reply to no pending request dropped"
                    );
                    continue;
                };
                if kind == MSG_REPLY {
                    let grant = grant.unwrap_or_else(|| Grant::new(None, Step::Derived));
                    if let Err(e) = s.record(frame.payload(), head.body, 1, &grant) {
                        return End::Client(e);
                    }
                }
                let out = match reframe(frame, s.upstream_dialect, s.client_dialect, &s) {
                    Ok(o) => o,
                    Err(e) => return End::Upstream(format!("sent a message that cannot be translated: {e}")),
                };
                if !cl_tx.send(&out).await {
                    return End::Client("the client writer stopped".into());
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
