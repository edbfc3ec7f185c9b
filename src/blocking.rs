//! Layer 6: a synchronous facade, for programs that would rather not be
//! async (the role `reqwest::blocking` plays for reqwest).
//!
//! ```no_run
//! use rpyc::blocking::Classic;
//!
//! fn main() -> rpyc::Result<()> {
//!     let c = Classic::connect("127.0.0.1:18812")?;
//!     let path: Vec<String> = c.module("sys")?.getattr("path")?.into_netref()?.get()?;
//!     c.execute("import math")?;
//!     let tau: f64 = c.eval_as("2*math.pi")?;
//!     println!("{path:?} {tau}");
//!     Ok(())
//! }
//! ```
//!
//! # How it works
//! Every type here wraps its async counterpart ([`crate::Connection`],
//! [`crate::Netref`], [`crate::classic::Classic`], …; `as_async()` gives it
//! back) and runs each call to completion on the calling thread. The
//! connections themselves — reader, writer, the handlers of requests from
//! the server — run on one multi-threaded tokio runtime that this module
//! starts on first use and shares between all blocking connections. So:
//!
//! * a callback from the server that arrives while a thread is blocked in a
//!   call is served by the runtime, not by the blocked thread: it cannot
//!   deadlock;
//! * any number of threads may use one connection at once (handles are
//!   `Clone + Send + Sync`; each call waits only for its own reply);
//! * callbacks made with [`function`] run on the runtime's blocking pool and
//!   may themselves make blocking calls (nested calls into the server).
//!   Callbacks made with [`crate::Object::function`] run inline on the
//!   connection's reader: fine for quick work, but a blocking call from one
//!   would wait for a reply that only its own reader could deliver, so it
//!   fails at once with an error instead of hanging.
//!
//! # Inside async code
//! Calling the blocking API never panics, even from inside a tokio runtime:
//! it blocks the calling thread until the reply arrives. On an async worker
//! that stalls the other tasks of that worker, as any blocking I/O does, so
//! in async code use the async API (`as_async()`) instead. The one case
//! that could never finish — a blocking call on the facade's own runtime
//! threads outside a [`function`] callback — returns an error.

use crate::classic::{self, RemoteStream};
/// Transfer settings and results, shared with the async API: a progress
/// callback set with [`TransferOptions::on_progress`] runs on the thread
/// that called [`Classic::upload_with`] / [`Classic::download_with`].
pub use crate::classic::{Direction, Progress, TransferOptions, Transferred};
use crate::client::ClientBuilder;
use crate::connection::handler::{Call, CallFn, FromCall, IntoArgs, IntoObject, Kwargs, SyncHandler};
use crate::connection::object::ClassBuilder;
use crate::connection::Instance;
use crate::error::{Error, Result};
use crate::policy::Visibility;
use crate::wire::{Exception, Value};
use serde::de::DeserializeOwned;
use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

// ---------------------------------------------------------------------------
// The runtime and the waiting loop
// ---------------------------------------------------------------------------

static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();

thread_local! {
    /// Set on every thread of the facade's runtime (workers and blocking pool).
    static FACADE_THREAD: Cell<bool> = const { Cell::new(false) };
    /// Set while a [`function`] callback runs.
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    let rt = RUNTIME.get_or_init(|| {
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 4);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("rpyc-blocking")
            .on_thread_start(|| FACADE_THREAD.with(|f| f.set(true)))
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    rt.as_ref().map_err(|e| Error::Io(std::io::Error::other(format!("cannot start the rpyc blocking runtime: {e}"))))
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

struct CallbackScope(bool);

impl CallbackScope {
    fn enter() -> CallbackScope {
        CallbackScope(IN_CALLBACK.with(|c| c.replace(true)))
    }
}

impl Drop for CallbackScope {
    fn drop(&mut self) {
        IN_CALLBACK.with(|c| c.set(self.0));
    }
}

/// Runs any future of this crate to completion on the calling thread, with
/// the facade's runtime as its context (tasks it spawns, its timers and
/// sockets live there). The escape hatch for what has no blocking wrapper,
/// e.g. opening an SSH or TLS stream by hand:
///
/// ```no_run
/// # fn demo() -> rpyc::Result<()> {
/// let conn = rpyc::blocking::block_on(async {
///     let (stream, creds) = rpyc::transport::connect_tcp("127.0.0.1:18812", &Default::default()).await?;
///     Ok::<_, rpyc::Error>(rpyc::ClientBuilder::new().start(stream, creds))
/// })??;
/// let conn = rpyc::blocking::Connection::from(conn);
/// # Ok(()) }
/// ```
///
/// Fails (instead of hanging) when called on the facade runtime's own
/// threads outside a [`function`] callback; see the module docs.
pub fn block_on<F: Future>(fut: F) -> Result<F::Output> {
    let rt = runtime()?;
    if FACADE_THREAD.with(Cell::get) && !IN_CALLBACK.with(Cell::get) {
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "blocking rpyc call on a thread of the connection's own runtime (a callback made with \
             rpyc::Object::function, or an AsyncResult callback) would wait for a reply only that thread \
             can read; make the callback with rpyc::blocking::function, or use the async API there",
        )));
    }
    let _context = rt.enter();
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return Ok(out);
        }
        std::thread::park();
    }
}

fn run<T>(fut: impl Future<Output = Result<T>>) -> Result<T> {
    block_on(fut)?
}

/// Drops an async guard inside the runtime's context, so its best-effort
/// background clean-up has somewhere to run.
fn drop_in_runtime<T>(value: T) {
    match runtime() {
        Ok(rt) => {
            let _context = rt.enter();
            drop(value);
        }
        Err(_) => drop(value),
    }
}

// ---------------------------------------------------------------------------
// Callbacks
// ---------------------------------------------------------------------------

/// Wraps a synchronous Rust closure as a callable object for the server
/// (a Python peer sees a function), like [`crate::Object::function`] but
/// run on the runtime's blocking pool: the closure may block, sleep, and
/// make blocking calls into the server (nested callbacks) without stalling
/// the connection.
///
/// Parameters are extracted as for service methods: any
/// `serde::Deserialize` type, [`Object`] or [`Netref`] (blocking proxies),
/// [`crate::Args`] for the rest.
///
/// ```no_run
/// # fn demo(c: rpyc::blocking::Classic) -> rpyc::Result<()> {
/// let square = rpyc::blocking::function(|x: i64| {
///     println!("executing locally");
///     Ok(x * x)
/// });
/// let squares: Vec<i64> = c.builtins()?.callattr("map", (square, (1, 2, 3)))?.into_netref()?.get()?;
/// # Ok(()) }
/// ```
pub fn function<M>(f: impl SyncHandler<M>) -> crate::Object {
    let f = Arc::new(f);
    let call: CallFn = Arc::new(move |call: Call| {
        let f = f.clone();
        Box::pin(async move {
            let job = tokio::task::spawn_blocking(move || {
                let _scope = CallbackScope::enter();
                SyncHandler::<M>::invoke(&*f, call)
            });
            match job.await {
                Ok(result) => result,
                Err(e) => Err(Error::Exception(Exception::runtime_error(format!("callback failed: {e}")))),
            }
        })
    });
    let mut b = ClassBuilder::<()>::new("builtins.function");
    b.insert_fn("__call__(*args)", Visibility::Plain, call);
    crate::Object::Local(Instance::new(b.build_def(), ()))
}

// ---------------------------------------------------------------------------
// Object and Netref
// ---------------------------------------------------------------------------

/// What a blocking call returns: a value, or a reference to a remote object
/// ([`Object::into_netref`] makes it a blocking [`Netref`]).
#[derive(Clone)]
pub struct Object(crate::Object);

impl fmt::Debug for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Object {
    /// Converts a value into a Rust type (see [`crate::Object::extract`]).
    pub fn extract<T: DeserializeOwned>(self) -> Result<T> {
        self.0.extract()
    }

    /// The remote object, or a `TypeError` naming what it was instead.
    pub fn into_netref(self) -> Result<Netref> {
        self.0.into_netref().map(Netref)
    }

    /// Borrows the value, if this is a plain value.
    pub fn as_value(&self) -> Option<&Value> {
        self.0.as_value()
    }

    /// True for Python `None`.
    pub fn is_none(&self) -> bool {
        self.0.is_none()
    }

    /// A short description (`"int"`, `"remote builtins.list"`…).
    pub fn describe(&self) -> String {
        self.0.describe()
    }

    /// The async object.
    pub fn as_async(&self) -> &crate::Object {
        &self.0
    }

    /// Into the async object.
    pub fn into_async(self) -> crate::Object {
        self.0
    }
}

impl From<crate::Object> for Object {
    fn from(o: crate::Object) -> Object {
        Object(o)
    }
}

impl From<Object> for crate::Object {
    fn from(o: Object) -> crate::Object {
        o.0
    }
}

impl IntoObject for Object {
    fn into_object(self) -> Result<crate::Object> {
        Ok(self.0)
    }
}

impl FromCall for Object {
    fn from_call(call: &mut Call) -> Result<Object> {
        <crate::Object as FromCall>::from_call(call).map(Object)
    }
}

/// A blocking proxy for an object on the server: [`crate::Netref`] with
/// every call run to completion.
#[derive(Clone)]
pub struct Netref(crate::Netref);

impl fmt::Debug for Netref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<crate::Netref> for Netref {
    fn from(n: crate::Netref) -> Netref {
        Netref(n)
    }
}

impl From<Netref> for crate::Netref {
    fn from(n: Netref) -> crate::Netref {
        n.0
    }
}

impl IntoObject for Netref {
    fn into_object(self) -> Result<crate::Object> {
        Ok(crate::Object::Remote(self.0))
    }
}

impl FromCall for Netref {
    fn from_call(call: &mut Call) -> Result<Netref> {
        <crate::Netref as FromCall>::from_call(call).map(Netref)
    }
}

impl Netref {
    /// The remote class name (e.g. `"builtins.list"`).
    pub fn class_name(&self) -> &str {
        self.0.class_name()
    }

    /// The async proxy.
    pub fn as_async(&self) -> &crate::Netref {
        &self.0
    }

    /// The connection this proxy belongs to.
    pub fn connection(&self) -> Connection {
        Connection(self.0.connection())
    }

    /// `getattr(obj, name)`.
    pub fn getattr(&self, name: &str) -> Result<Object> {
        run(self.0.getattr(name)).map(Object)
    }

    /// `setattr(obj, name, value)`.
    pub fn setattr(&self, name: &str, value: impl IntoObject) -> Result<()> {
        run(self.0.setattr(name, value))
    }

    /// `delattr(obj, name)`.
    pub fn delattr(&self, name: &str) -> Result<()> {
        run(self.0.delattr(name))
    }

    /// `obj(*args)`.
    pub fn call(&self, args: impl IntoArgs) -> Result<Object> {
        run(self.0.call(args)).map(Object)
    }

    /// `obj(*args, **kwargs)`.
    pub fn call_kw(&self, args: impl IntoArgs, kwargs: impl Into<Kwargs>) -> Result<Object> {
        run(self.0.call_kw(args, kwargs)).map(Object)
    }

    /// `obj.name(*args)` in one round trip.
    pub fn callattr(&self, name: &str, args: impl IntoArgs) -> Result<Object> {
        run(self.0.callattr(name, args)).map(Object)
    }

    /// `obj.name(*args, **kwargs)` in one round trip.
    pub fn callattr_kw(&self, name: &str, args: impl IntoArgs, kwargs: impl Into<Kwargs>) -> Result<Object> {
        run(self.0.callattr_kw(name, args, kwargs)).map(Object)
    }

    /// Calls a method and converts the result.
    pub fn call_method<T: DeserializeOwned>(&self, name: &str, args: impl IntoArgs) -> Result<T> {
        run(self.0.call_method(name, args))
    }

    /// `repr(obj)`.
    pub fn repr(&self) -> Result<String> {
        run(self.0.repr())
    }

    /// `str(obj)`.
    pub fn str(&self) -> Result<String> {
        run(self.0.str())
    }

    /// `dir(obj)`.
    pub fn dir(&self) -> Result<Vec<String>> {
        run(self.0.dir())
    }

    /// `hash(obj)`.
    pub fn hash(&self) -> Result<i64> {
        run(self.0.hash())
    }

    /// A rich comparison: `op` is `"__eq__"`, `"__lt__"`, … (the result may
    /// be `NotImplemented`).
    pub fn cmp(&self, other: impl IntoObject, op: &str) -> Result<Object> {
        run(self.0.cmp(other, op)).map(Object)
    }

    /// `len(obj)`.
    pub fn len(&self) -> Result<usize> {
        run(self.0.len())
    }

    /// `len(obj) == 0`.
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|n| n == 0)
    }

    /// `obj[key]`.
    pub fn getitem(&self, key: impl IntoObject) -> Result<Object> {
        run(self.0.getitem(key)).map(Object)
    }

    /// `obj[key] = value`.
    pub fn setitem(&self, key: impl IntoObject, value: impl IntoObject) -> Result<()> {
        run(self.0.setitem(key, value))
    }

    /// `key in obj`.
    pub fn contains(&self, key: impl IntoObject) -> Result<bool> {
        run(self.0.contains(key))
    }

    /// `iter(obj)` as a Rust [`Iterator`], fetching 256 items per round trip.
    pub fn iter(&self) -> Result<RemoteIter> {
        self.iter_batched(256)
    }

    /// `iter(obj)`, fetching `batch` items per round trip (RPyC's
    /// BUFFITER). Use 1 for iterators whose items are produced slowly or
    /// with side effects you want to see one at a time.
    pub fn iter_batched(&self, batch: usize) -> Result<RemoteIter> {
        run(self.0.iter(batch)).map(|inner| RemoteIter { inner, done: false })
    }

    /// Iterates the whole remote iterable and collects the items.
    pub fn to_vec(&self) -> Result<Vec<Object>> {
        run(self.0.to_vec()).map(|v| v.into_iter().map(Object).collect())
    }

    /// Copies a remote iterable (list, tuple, set, generator, map object…)
    /// into a Rust collection `T`: `let path: Vec<String> = sys_path.get()?`
    /// copies a remote list of str; `get::<BTreeSet<i64>>()` a set.
    pub fn get<T: DeserializeOwned>(&self) -> Result<T> {
        run(self.0.get())
    }

    /// `obj.__exit__(None, None, None)` — see [`RemoteContext`].
    pub fn exit(&self) -> Result<Object> {
        run(self.0.exit(None)).map(Object)
    }

    /// Starts `obj(*args)` without waiting: `rpyc.async_(obj)(*args)`.
    pub fn async_call(&self, args: impl IntoArgs) -> Result<AsyncResult> {
        let _context = runtime()?.enter();
        self.0.async_call(args).map(AsyncResult)
    }

    /// Starts `obj.name(*args)` without waiting.
    pub fn async_callattr(&self, name: &str, args: impl IntoArgs) -> Result<AsyncResult> {
        let _context = runtime()?.enter();
        self.0.async_callattr(name, args).map(AsyncResult)
    }
}

/// A remote iterator as a Rust [`Iterator`]; each item is a `Result`
/// because fetching it is a network call. Ends after the first error.
pub struct RemoteIter {
    inner: crate::connection::RemoteIter,
    done: bool,
}

impl fmt::Debug for RemoteIter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteIter").field("done", &self.done).finish()
    }
}

impl Iterator for RemoteIter {
    type Item = Result<Object>;

    fn next(&mut self) -> Option<Result<Object>> {
        if self.done {
            return None;
        }
        match run(self.inner.next()) {
            Ok(Some(item)) => Some(Ok(Object(item))),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl std::iter::FusedIterator for RemoteIter {}

/// A pending or completed request: `rpyc.async_` results, with Python's
/// `ready`, `error`, `expired`, `set_expiry`, `wait` and `value`.
#[derive(Clone)]
pub struct AsyncResult(crate::AsyncResult);

impl fmt::Debug for AsyncResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl AsyncResult {
    /// True once the reply has arrived.
    pub fn ready(&self) -> bool {
        self.0.ready()
    }

    /// True if the reply arrived and is an error.
    pub fn error(&self) -> bool {
        self.0.error()
    }

    /// True if the expiry passed before the reply arrived.
    pub fn expired(&self) -> bool {
        self.0.expired()
    }

    /// Sets the expiry relative to now (`None` waits forever).
    pub fn set_expiry(&self, timeout: Option<Duration>) {
        self.0.set_expiry(timeout)
    }

    /// Registers a callback, run when the reply arrives (at once if it has).
    /// It runs on the connection's runtime: keep it short, and make no
    /// blocking calls from it.
    pub fn add_callback(&self, f: impl FnOnce(&Result<crate::Object>) + Send + 'static) {
        self.0.add_callback(f)
    }

    /// Blocks until the reply arrives (or the expiry passes: a timeout error).
    pub fn wait(&self) -> Result<()> {
        run(self.0.wait())
    }

    /// Blocks for the result (Python's `.value`): the remote exception, if
    /// the call raised one.
    pub fn value(&self) -> Result<Object> {
        run(self.0.value()).map(Object)
    }

    /// The async handle.
    pub fn as_async(&self) -> &crate::AsyncResult {
        &self.0
    }
}

// ---------------------------------------------------------------------------
// Connection
// ---------------------------------------------------------------------------

/// A blocking handle to one connection. Cheap to clone; share it between
/// threads freely.
#[derive(Clone, Debug)]
pub struct Connection(crate::Connection);

/// Connects to `addr` (`host:port`, `tcp://…`, `unix://…`, `srv://…`) with default
/// settings: Python's `rpyc.connect(host, port)`.
pub fn connect(addr: &str) -> Result<Connection> {
    Connection::connect(addr)
}

impl From<crate::Connection> for Connection {
    fn from(c: crate::Connection) -> Connection {
        Connection(c)
    }
}

impl Connection {
    /// Connects with default settings.
    pub fn connect(addr: &str) -> Result<Connection> {
        Connection::connect_with(ClientBuilder::new(), addr)
    }

    /// Connects with client settings of your choice (TLS, dialect, timeout,
    /// a local service for the server to call).
    pub fn connect_with(builder: ClientBuilder, addr: &str) -> Result<Connection> {
        run(builder.connect(addr)).map(Connection)
    }

    /// Starts `program` and connects over its stdin/stdout (see
    /// [`crate::connect_command`]); the program ends with the connection.
    pub fn connect_command<I, S>(program: &str, args: I) -> Result<Connection>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = std::process::Command::new(program);
        command.args(args);
        run(ClientBuilder::new().connect_command(command)).map(Connection)
    }

    /// The async connection.
    pub fn as_async(&self) -> &crate::Connection {
        &self.0
    }

    /// The server's root object (`conn.root`).
    pub fn root(&self) -> Result<Netref> {
        run(self.0.root()).map(Netref)
    }

    /// Checks the peer is alive; returns the round-trip time.
    pub fn ping(&self) -> Result<Duration> {
        run(self.0.ping())
    }

    /// Closes the connection in an orderly way.
    pub fn close(&self) -> Result<()> {
        block_on(self.0.close())
    }

    /// True once the connection is closed or closing.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// Why the connection closed, if it has.
    pub fn close_reason(&self) -> Option<String> {
        self.0.close_reason()
    }
}

// ---------------------------------------------------------------------------
// Classic
// ---------------------------------------------------------------------------

/// A blocking [`classic::Classic`]: drive a Python classic server
/// (`rpyc_classic`) from synchronous code.
#[derive(Clone, Debug)]
pub struct Classic(classic::Classic);

impl From<classic::Classic> for Classic {
    fn from(c: classic::Classic) -> Classic {
        Classic(c)
    }
}

impl Classic {
    /// Connects to a classic server: `rpyc.classic.connect(host, port)`.
    pub fn connect(addr: &str) -> Result<Classic> {
        run(classic::Classic::connect(addr)).map(Classic)
    }

    /// Connects with client settings of your choice (e.g. TLS:
    /// `rpyc.classic.ssl_connect`).
    pub fn connect_with(builder: ClientBuilder, addr: &str) -> Result<Classic> {
        run(classic::Classic::connect_with(builder, addr)).map(Classic)
    }

    /// Starts a classic server as a child process and connects over its
    /// stdin/stdout: `rpyc.classic.connect_subproc()` (see
    /// [`classic::Classic::connect_command`]).
    pub fn connect_command<I, S>(program: &str, args: I) -> Result<Classic>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = std::process::Command::new(program);
        command.args(args);
        run(classic::Classic::connect_command_with(ClientBuilder::new(), command)).map(Classic)
    }

    /// Wraps a connection to a classic server.
    pub fn from_connection(conn: Connection) -> Result<Classic> {
        run(classic::Classic::from_connection(conn.0)).map(Classic)
    }

    /// The async classic client.
    pub fn as_async(&self) -> &classic::Classic {
        &self.0
    }

    /// The connection.
    pub fn connection(&self) -> Connection {
        Connection(self.0.connection().clone())
    }

    /// The server's root (its `SlaveService`).
    pub fn root(&self) -> Netref {
        Netref(self.0.root().clone())
    }

    /// `conn.modules[dotted]`.
    pub fn module(&self, dotted: &str) -> Result<Netref> {
        run(self.0.module(dotted)).map(Netref)
    }

    /// `conn.builtins`.
    pub fn builtins(&self) -> Result<Netref> {
        run(self.0.builtins()).map(Netref)
    }

    /// `conn.eval(expr)`.
    pub fn eval(&self, expr: &str) -> Result<Object> {
        run(self.0.eval(expr)).map(Object)
    }

    /// `conn.eval(expr)`, converted.
    pub fn eval_as<T: DeserializeOwned>(&self, expr: &str) -> Result<T> {
        run(self.0.eval_as(expr))
    }

    /// `conn.execute(code)`.
    pub fn execute(&self, code: &str) -> Result<()> {
        run(self.0.execute(code))
    }

    /// `conn.namespace`.
    pub fn namespace(&self) -> Result<Netref> {
        run(self.0.namespace()).map(Netref)
    }

    /// Defines a function from source on the server and returns it (see
    /// [`classic::Classic::teleport`]).
    pub fn teleport(&self, source: &str, name: &str) -> Result<Netref> {
        run(self.0.teleport(source, name)).map(Netref)
    }

    /// The remote `open(path, mode)`; see [`RemoteFile`].
    pub fn open(&self, path: &str, mode: &str) -> Result<RemoteFile> {
        run(self.0.open(path, mode)).map(|f| RemoteFile(Some(f)))
    }

    /// Redirects the server's stdin, stdout and stderr to this process
    /// (`with redirected_stdio(conn):`) until the guard is restored or dropped.
    pub fn redirect_stdio(&self) -> Result<StdioRedirect> {
        run(self.0.redirect_stdio()).map(|r| StdioRedirect(Some(r)))
    }

    /// Redirects the server's stdout/stderr (not stdin) to `sink`.
    pub fn redirect_stdio_to(
        &self,
        sink: impl Fn(RemoteStream, &str) + Send + Sync + 'static,
    ) -> Result<StdioRedirect> {
        run(self.0.redirect_stdio_to(sink)).map(|r| StdioRedirect(Some(r)))
    }

    /// Redirects the server's stdin to read `stdin` (for instance a
    /// `std::io::Cursor` of prepared input) and its stdout/stderr to `sink`.
    pub fn redirect_stdio_with(
        &self,
        stdin: impl tokio::io::AsyncRead + Send + Unpin + 'static,
        sink: impl Fn(RemoteStream, &str) + Send + Sync + 'static,
    ) -> Result<StdioRedirect> {
        run(self.0.redirect_stdio_with(stdin, sink)).map(|r| StdioRedirect(Some(r)))
    }

    /// Uploads a file or directory (chunked, SHA-256 verified).
    pub fn upload(&self, local: impl AsRef<Path>, remote: &str) -> Result<Transferred> {
        run(self.0.upload(local, remote))
    }

    /// Uploads with explicit options: chunk size, verification, a progress
    /// callback ([`TransferOptions::on_progress`], called on this thread
    /// after every chunk and finished file).
    pub fn upload_with(&self, local: impl AsRef<Path>, remote: &str, opts: &TransferOptions) -> Result<Transferred> {
        run(self.0.upload_with(local, remote, opts))
    }

    /// Downloads a file or directory (chunked, SHA-256 verified).
    pub fn download(&self, remote: &str, local: impl AsRef<Path>) -> Result<Transferred> {
        run(self.0.download(remote, local))
    }

    /// Downloads with explicit options: chunk size, verification, a
    /// progress callback ([`TransferOptions::on_progress`], called on this
    /// thread after every chunk and finished file).
    pub fn download_with(&self, remote: &str, local: impl AsRef<Path>, opts: &TransferOptions) -> Result<Transferred> {
        run(self.0.download_with(remote, local, opts))
    }

    /// Closes the connection.
    pub fn close(&self) -> Result<()> {
        block_on(self.0.close())
    }
}

/// A file open on the server ([`Classic::open`]). [`RemoteFile::close`]
/// ends it like the end of a `with` block; dropping it closes it too
/// (synchronously, errors ignored).
pub struct RemoteFile(Option<classic::RemoteFile>);

impl fmt::Debug for RemoteFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteFile").field("open", &self.0.is_some()).finish()
    }
}

impl RemoteFile {
    fn inner(&self) -> Result<&classic::RemoteFile> {
        self.0.as_ref().ok_or_else(|| Error::value_error("I/O operation on closed file."))
    }

    /// The proxy, for the methods not wrapped here (`seek`, `readline`…).
    pub fn netref(&self) -> Option<Netref> {
        self.0.as_ref().and_then(|f| f.netref()).cloned().map(Netref)
    }

    /// `f.read(max)`; empty at the end.
    pub fn read_bytes(&self, max: usize) -> Result<Vec<u8>> {
        run(self.inner()?.read_bytes(max))
    }

    /// `f.read()` as bytes.
    pub fn read_to_end(&self) -> Result<Vec<u8>> {
        run(self.inner()?.read_to_end())
    }

    /// `f.read()` as text.
    pub fn read_to_string(&self) -> Result<String> {
        run(self.inner()?.read_to_string())
    }

    /// `f.write(data)` (binary mode).
    pub fn write_bytes(&self, data: impl Into<Vec<u8>>) -> Result<usize> {
        run(self.inner()?.write_bytes(data))
    }

    /// `f.write(text)` (text mode).
    pub fn write_str(&self, text: &str) -> Result<usize> {
        run(self.inner()?.write_str(text))
    }

    /// Closes the file (its `__exit__`), reporting errors.
    pub fn close(mut self) -> Result<()> {
        match self.0.take() {
            Some(f) => run(f.close()),
            None => Ok(()),
        }
    }
}

impl Drop for RemoteFile {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            let mut slot = Some(f);
            let closed = block_on(async {
                if let Some(f) = slot.take() {
                    let _ = f.close().await;
                }
            });
            if closed.is_err() {
                drop_in_runtime(slot);
            }
        }
    }
}

/// Remote stdio redirected to this process ([`Classic::redirect_stdio`]).
/// [`StdioRedirect::restore`] (or dropping the guard) puts the server's
/// streams back.
pub struct StdioRedirect(Option<classic::StdioRedirect>);

impl fmt::Debug for StdioRedirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StdioRedirect").field("active", &self.0.is_some()).finish()
    }
}

impl StdioRedirect {
    /// Restores the server's original `sys.stdout` and `sys.stderr`.
    pub fn restore(mut self) -> Result<()> {
        match self.0.take() {
            Some(r) => run(r.restore()),
            None => Ok(()),
        }
    }
}

impl Drop for StdioRedirect {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            let mut slot = Some(r);
            let restored = block_on(async {
                if let Some(r) = slot.take() {
                    let _ = r.restore().await;
                }
            });
            if restored.is_err() {
                drop_in_runtime(slot);
            }
        }
    }
}

/// An entered remote context manager: `with manager as value:`.
pub struct RemoteContext(Option<classic::RemoteContext>);

impl fmt::Debug for RemoteContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RemoteContext").field(&self.0).finish()
    }
}

impl RemoteContext {
    /// Calls `manager.__enter__()`.
    pub fn enter(manager: &Netref) -> Result<RemoteContext> {
        run(classic::RemoteContext::enter(manager.0.clone())).map(|c| RemoteContext(Some(c)))
    }

    /// What `__enter__` returned.
    pub fn value(&self) -> Option<Object> {
        self.0.as_ref().map(|c| Object(c.value().clone()))
    }

    /// Calls `manager.__exit__(None, None, None)`; returns its truth value.
    pub fn exit(mut self) -> Result<bool> {
        match self.0.take() {
            Some(c) => run(c.exit()),
            None => Ok(false),
        }
    }
}

impl Drop for RemoteContext {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            let mut slot = Some(c);
            let exited = block_on(async {
                if let Some(c) = slot.take() {
                    let _ = c.exit().await;
                }
            });
            if exited.is_err() {
                drop_in_runtime(slot);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Zero-deploy
// ---------------------------------------------------------------------------

/// A blocking [`crate::deploy::DeployedServer`]: a Python RPyC server
/// started over SSH for the life of this handle (Python:
/// `DeployedServer(SshMachine(host))`).
///
/// ```no_run
/// # fn demo() -> rpyc::Result<()> {
/// use rpyc::deploy::DeployOptions;
/// use rpyc::transport::ssh::SshConfig;
/// let ssh = SshConfig::new("build-box", 22, "bob").with_key_file("/home/bob/.ssh/id_ed25519");
/// let server = rpyc::blocking::DeployedServer::start(ssh, DeployOptions::new())?;
/// let c = server.classic()?;
/// let two: i64 = c.eval_as("1+1")?;
/// server.close()?; // or drop it: the remote process and directory go either way
/// # let _ = two; Ok(()) }
/// ```
#[cfg(feature = "deploy")]
#[cfg_attr(docsrs, doc(cfg(feature = "deploy")))]
pub struct DeployedServer {
    inner: Option<crate::deploy::DeployedServer>,
    info: crate::deploy::RemoteInfo,
}

#[cfg(feature = "deploy")]
impl fmt::Debug for DeployedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeployedServer").field("info", &self.info).finish()
    }
}

#[cfg(feature = "deploy")]
impl DeployedServer {
    /// Logs in, starts the remote server and connects (see
    /// [`crate::deploy::DeployedServer::start`]).
    pub fn start(
        ssh: crate::transport::ssh::SshConfig,
        options: crate::deploy::DeployOptions,
    ) -> Result<DeployedServer> {
        let inner = run(crate::deploy::DeployedServer::start(ssh, options))?;
        let info = inner.info().clone();
        Ok(DeployedServer { inner: Some(inner), info })
    }

    fn inner(&self) -> Result<&crate::deploy::DeployedServer> {
        self.inner.as_ref().ok_or_else(|| Error::Closed("the deployed server was closed".into()))
    }

    /// The classic helpers over the connection (`classic_connect()`).
    pub fn classic(&self) -> Result<Classic> {
        let inner = self.inner()?;
        run(inner.classic()).map(Classic)
    }

    /// The connection (`connect()`).
    pub fn connect(&self) -> Result<Connection> {
        Ok(Connection(self.inner()?.connect()))
    }

    /// Where and what the server is.
    pub fn info(&self) -> &crate::deploy::RemoteInfo {
        &self.info
    }

    /// The remote temporary directory.
    pub fn remote_dir(&self) -> &str {
        &self.info.dir
    }

    /// The remote Python's process id.
    pub fn remote_pid(&self) -> u32 {
        self.info.pid
    }

    /// The async handle.
    pub fn as_async(&self) -> Option<&crate::deploy::DeployedServer> {
        self.inner.as_ref()
    }

    /// Closes the connection, waits (bounded) for the remote side to exit
    /// and clean up; returns how the remote command ended.
    pub fn close(mut self) -> Result<Option<String>> {
        match self.inner.take() {
            Some(inner) => block_on(inner.close()),
            None => Ok(None),
        }
    }
}

#[cfg(feature = "deploy")]
impl Drop for DeployedServer {
    fn drop(&mut self) {
        // Its clean-up task needs a runtime to run on.
        if let Some(inner) = self.inner.take() {
            drop_in_runtime(inner);
        }
    }
}
