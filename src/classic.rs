//! Layer 5: driving a Python classic-mode server (`rpyc_classic`, the
//! `SlaveService`) from Rust (mirrors `rpyc/utils/classic.py`).
//!
//! A classic server is remote code execution by design: it imports modules,
//! evaluates and executes Python text on behalf of whoever connects. Use it
//! only with trusted peers, over an authenticated transport.
//!
//! [`Classic`] is the connection plus the helpers Python's `rpyc.classic`
//! adds on top of the four methods of the service (`getmodule`, `eval`,
//! `execute`, `namespace`):
//!
//! | Python (`rpyc.classic`) | Rust ([`Classic`]) |
//! |---|---|
//! | `conn.modules.sys`, `conn.modules["xml.dom.minidom"]` | [`Classic::module`] |
//! | `conn.builtins` / `conn.builtin` | [`Classic::builtins`] |
//! | `conn.eval(text)` / `conn.execute(text)` / `conn.namespace` | [`Classic::eval`], [`Classic::execute`], [`Classic::namespace`] |
//! | `teleport_function(conn, f)` | [`Classic::teleport`] (from source text) |
//! | `upload(conn, local, remote)` / `download(...)` | [`Classic::upload`], [`Classic::download`] |
//! | `with conn.builtins.open(p, "w") as f:` | [`Classic::open`] → [`RemoteFile`] |
//! | `with redirected_stdio(conn):` | [`Classic::redirect_stdio`] (stdin, stdout, stderr) → [`StdioRedirect`] |
//! | `with proxy as x:` (any context manager) | [`RemoteContext::enter`] |
//!
//! Python's context managers end where the `with` block ends; Rust has no
//! async drop, so the guards here ([`RemoteFile`], [`StdioRedirect`],
//! [`RemoteContext`]) end with an explicit `close()` / `restore()` /
//! `exit()` call that reports errors. A guard dropped without it still
//! cleans up, best effort, in the background (and logs a warning).
//!
//! Transfers ([`Classic::upload`], [`Classic::download`]) stream a file in
//! chunks of [`TransferOptions::chunk_size`] (one round trip each, so any
//! file size works without holding it in memory) and then compare the
//! SHA-256 computed on each side; Python's helpers do not check integrity.
//! [`TransferOptions::on_progress`] reports each chunk and each finished
//! file ([`Progress`]: bytes and files done, and the totals, known up
//! front because a directory is listed before anything is copied).
//! The remote half is a handful of small Python functions defined once per
//! connection in the server's namespace under `_rpyc_rs_*` names.

use crate::client::ClientBuilder;
use crate::connection::{Class, Connection, Netref, Object, This};
use crate::error::{Error, Result};
use crate::wire::Value;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use tokio::sync::OnceCell;

/// A connection to a classic server, with the helpers Python's
/// `rpyc.classic` adds (`modules`, `builtins`, `eval`, `execute`,
/// `teleport_function`, `upload`, `download`, `redirected_stdio`).
///
/// Cheap to clone; clones share the connection and its cached helpers.
#[derive(Clone)]
pub struct Classic {
    conn: Connection,
    root: Netref,
    cache: Arc<Cache>,
}

#[derive(Default)]
struct Cache {
    builtins: OnceCell<Netref>,
    helpers: OnceCell<Helpers>,
}

/// The remote halves of the transfer helpers (see [`HELPERS`]).
struct Helpers {
    kind: Netref,
    sha256: Netref,
    walk: Netref,
    mkdir: Netref,
    commit: Netref,
    discard: Netref,
    sep: String,
}

/// Defined once per connection in the server's namespace. Kept small and
/// dependency-free so it runs on any CPython 3 that runs rpyc 5 or 6.
const HELPERS: &str = r#"
def _rpyc_rs_kind(path):
    import os
    if os.path.isdir(path):
        return ("dir", 0)
    if os.path.isfile(path):
        return ("file", os.path.getsize(path))
    return None

def _rpyc_rs_sha256(path, chunk):
    import hashlib
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return (h.hexdigest(), n)
            h.update(b)
            n += len(b)

def _rpyc_rs_walk(top):
    import os
    out = []
    for root, dirs, files in os.walk(top):
        rel = os.path.relpath(root, top)
        parts = () if rel == os.curdir else tuple(rel.split(os.sep))
        for d in list(dirs):
            full = os.path.join(root, d)
            if os.path.islink(full):
                dirs.remove(d)
                continue
            out.append((parts + (d,), full, True, 0))
        for f in files:
            full = os.path.join(root, f)
            if os.path.isfile(full):
                try:
                    size = os.path.getsize(full)
                except OSError:
                    size = -1
                out.append((parts + (f,), full, False, size))
    return tuple(out)

def _rpyc_rs_mkdir(path):
    import os
    os.makedirs(path, exist_ok=True)

def _rpyc_rs_commit(part, dest):
    import os, shutil
    try:
        shutil.copymode(dest, part)
    except OSError:
        pass
    os.replace(part, dest)

def _rpyc_rs_discard(part):
    import os
    try:
        os.unlink(part)
    except OSError:
        pass
"#;

impl fmt::Debug for Classic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classic").field("conn", &self.conn).field("root", &self.root).finish()
    }
}

impl Classic {
    /// Connects to a classic server (`host:port`, `tcp://…`, `unix://…`,
    /// `srv://…` — the forms of [`crate::connect`]).
    /// Python: `rpyc.classic.connect(host, port)`.
    pub async fn connect(addr: &str) -> Result<Classic> {
        Classic::connect_with(ClientBuilder::new(), addr).await
    }

    /// Connects with client settings of your choice: a TLS configuration
    /// (Python's `rpyc.classic.ssl_connect`), the rpyc 5 dialect, a longer
    /// timeout, a local service the server may call into.
    pub async fn connect_with(builder: ClientBuilder, addr: &str) -> Result<Classic> {
        Classic::from_connection(builder.connect(addr).await?).await
    }

    /// Starts a classic server as a child process and connects over its
    /// stdin/stdout (Python: `rpyc.classic.connect_subproc()`, which runs
    /// `rpyc_classic.py -m stdio`):
    /// `Classic::connect_command("python3", ["/path/to/rpyc_classic.py", "-q", "-m", "stdio"])`.
    /// The process ends with the connection (see [`crate::transport::pipe`]).
    pub async fn connect_command<I, S>(program: &str, args: I) -> Result<Classic>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = std::process::Command::new(program);
        command.args(args);
        Classic::connect_command_with(ClientBuilder::new(), command).await
    }

    /// [`Classic::connect_command`] with client settings and a command of
    /// your choice (environment, working directory).
    pub async fn connect_command_with(builder: ClientBuilder, command: std::process::Command) -> Result<Classic> {
        Classic::from_connection(builder.connect_command(command).await?).await
    }

    /// Wraps an existing connection to a classic server: any transport
    /// ([`crate::connect_stream`] over a stream you opened, SSH, TLS…).
    pub async fn from_connection(conn: Connection) -> Result<Classic> {
        let root = conn.root().await?;
        Ok(Classic { conn, root, cache: Arc::new(Cache::default()) })
    }

    /// The underlying connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The server's root (its `SlaveService`).
    pub fn root(&self) -> &Netref {
        &self.root
    }

    /// Imports a module by dotted name: `conn.modules.sys` is
    /// `module("sys")`, `conn.modules["xml.dom.minidom"]` is
    /// `module("xml.dom.minidom")`.
    pub async fn module(&self, dotted: &str) -> Result<Netref> {
        self.root.callattr("getmodule", (dotted,)).await?.into_netref()
    }

    /// The remote `builtins` module (`conn.builtins`). Fetched once per
    /// connection.
    pub async fn builtins(&self) -> Result<Netref> {
        self.cache.builtins.get_or_try_init(|| self.module("builtins")).await.cloned()
    }

    /// Evaluates an expression in the server's namespace (`conn.eval`).
    pub async fn eval(&self, expr: &str) -> Result<Object> {
        self.root.callattr("eval", (expr,)).await
    }

    /// Evaluates and converts the result (it must be a value, not a reference).
    pub async fn eval_as<T: serde::de::DeserializeOwned>(&self, expr: &str) -> Result<T> {
        self.eval(expr).await?.extract()
    }

    /// Executes statements in the server's namespace (`conn.execute`).
    pub async fn execute(&self, code: &str) -> Result<()> {
        self.root.callattr("execute", (code,)).await.map(|_| ())
    }

    /// The server's namespace dict (`conn.namespace`), where `execute` and
    /// `eval` run.
    pub async fn namespace(&self) -> Result<Netref> {
        self.root.getattr("namespace").await?.into_netref()
    }

    /// "Teleports" a function by source: runs `source` (a `def`, indented
    /// or not — common leading whitespace is removed) in the server's
    /// namespace and returns the function named `name` as a callable proxy.
    ///
    /// Python's `teleport_function` ships bytecode, which only works between
    /// identical Python versions; source text works with any server. As
    /// there, the function sees the server's namespace as its globals, so
    /// import what it needs inside its body.
    pub async fn teleport(&self, source: &str, name: &str) -> Result<Netref> {
        self.execute(&dedent(source)).await?;
        self.eval(name).await?.into_netref()
    }

    /// Closes the connection (see [`Connection::close`]).
    pub async fn close(&self) {
        self.conn.close().await
    }

    /// Opens a remote file with the remote `open(path, mode)`; close it with
    /// [`RemoteFile::close`] (the end of Python's `with` block).
    pub async fn open(&self, path: &str, mode: &str) -> Result<RemoteFile> {
        let file = self.builtins().await?.callattr("open", (path, mode)).await?.into_netref()?;
        Ok(RemoteFile { file: Some(file) })
    }

    /// Replaces the server's `sys.stdin`, `sys.stdout` and `sys.stderr` with
    /// proxies of local objects that read this process's stdin and write to
    /// its stdout and stderr (Python's `with rpyc.classic.redirected_stdio(conn):`),
    /// so `input()` and `print()` on the server talk to this terminal. Call
    /// [`StdioRedirect::restore`] to put the originals back.
    ///
    /// Like Python's, the redirection is process-wide on the server: every
    /// thread (and every other client) reads and writes here until
    /// restored, and if this connection dies first, `print()` and `input()`
    /// on the server fail until something restores the streams. Local stdin
    /// is read only when the server reads: a line at a time on a terminal.
    pub async fn redirect_stdio(&self) -> Result<StdioRedirect> {
        self.redirect_stdio_with(tokio::io::stdin(), |stream, text| {
            // Output that cannot be written locally is dropped, as print() to
            // a closed pipe would be; the remote program must not fail for it.
            let _ = match stream {
                RemoteStream::Stdout => io::stdout().lock().write_all(text.as_bytes()),
                RemoteStream::Stderr => io::stderr().lock().write_all(text.as_bytes()),
            };
        })
        .await
    }

    /// Redirects only the server's `sys.stdout` and `sys.stderr`, handing
    /// every remote write to `sink` (which stream, and the text); its
    /// `sys.stdin` stays as it is. The sink runs on the connection's
    /// reader, in order: keep it quick and non-blocking.
    pub async fn redirect_stdio_to(
        &self,
        sink: impl Fn(RemoteStream, &str) + Send + Sync + 'static,
    ) -> Result<StdioRedirect> {
        self.redirect(None, Arc::new(sink)).await
    }

    /// Redirects all three streams: the server's `sys.stdin` reads from
    /// `stdin` (`readline`, `read`, `readlines`, and so `input()`), and its
    /// `sys.stdout`/`sys.stderr` writes go to `sink`.
    pub async fn redirect_stdio_with(
        &self,
        stdin: impl tokio::io::AsyncRead + Send + Unpin + 'static,
        sink: impl Fn(RemoteStream, &str) + Send + Sync + 'static,
    ) -> Result<StdioRedirect> {
        let reader = Reader { input: tokio::sync::Mutex::new(tokio::io::BufReader::new(Box::new(stdin))) };
        self.redirect(Some(reader), Arc::new(sink)).await
    }

    async fn redirect(&self, stdin: Option<Reader>, sink: Sink) -> Result<StdioRedirect> {
        let sys = self.module("sys").await?;
        let saved_stdin = match stdin {
            Some(_) => Some(sys.getattr("stdin").await?),
            None => None,
        };
        let stdout = sys.getattr("stdout").await?;
        let stderr = sys.getattr("stderr").await?;
        // Saved before anything changes: if a step fails, restoring puts
        // back every stream (those not yet replaced get their own value).
        let mut guard = StdioRedirect { saved: Some(Saved { sys: sys.clone(), stdin: saved_stdin, stdout, stderr }) };
        let proxies = [
            ("stdout", Some(writer_class().instance(Writer { stream: RemoteStream::Stdout, sink: sink.clone() }))),
            ("stderr", Some(writer_class().instance(Writer { stream: RemoteStream::Stderr, sink }))),
            ("stdin", stdin.map(|r| reader_class().instance(r))),
        ];
        for (name, proxy) in proxies {
            let Some(proxy) = proxy else { continue };
            if let Err(e) = sys.setattr(name, proxy).await {
                let _ = guard.restore_inner().await;
                return Err(e);
            }
        }
        Ok(guard)
    }

    /// Uploads a file or a directory (recursively) to `remote` with the
    /// default [`TransferOptions`] (1 MiB chunks, SHA-256 verified).
    /// Python: `rpyc.classic.upload(conn, local, remote)`.
    pub async fn upload(&self, local: impl AsRef<Path>, remote: &str) -> Result<Transferred> {
        self.upload_with(local, remote, &TransferOptions::default()).await
    }

    /// Uploads with explicit options.
    pub async fn upload_with(
        &self,
        local: impl AsRef<Path>,
        remote: &str,
        opts: &TransferOptions,
    ) -> Result<Transferred> {
        let local = local.as_ref();
        let meta = std::fs::metadata(local)
            .map_err(|e| Error::value_error(format!("cannot upload {}: {e}", local.display())))?;
        let mut tracker = Tracker::new(Direction::Upload, opts);
        if meta.is_dir() {
            self.upload_dir(local, remote, opts, &mut tracker).await
        } else if meta.is_file() {
            tracker.totals(1, meta.len());
            let bytes = self.upload_file(local, remote, meta.len(), opts, &mut tracker).await?;
            Ok(Transferred { files: 1, bytes })
        } else {
            Err(Error::value_error(format!("cannot upload {}: not a file or a directory", local.display())))
        }
    }

    /// Downloads a file or a directory (recursively) from `remote` with the
    /// default [`TransferOptions`]. Python: `rpyc.classic.download(conn, remote, local)`.
    pub async fn download(&self, remote: &str, local: impl AsRef<Path>) -> Result<Transferred> {
        self.download_with(remote, local, &TransferOptions::default()).await
    }

    /// Downloads with explicit options.
    pub async fn download_with(
        &self,
        remote: &str,
        local: impl AsRef<Path>,
        opts: &TransferOptions,
    ) -> Result<Transferred> {
        let local = local.as_ref();
        let h = self.helpers().await?;
        let kind: Option<(String, u64)> = h.kind.call((remote,)).await?.extract()?;
        let mut tracker = Tracker::new(Direction::Download, opts);
        match kind.as_ref().map(|(k, size)| (k.as_str(), *size)) {
            Some(("dir", _)) => self.download_dir(remote, local, opts, &mut tracker).await,
            Some(("file", size)) => {
                tracker.totals(1, size);
                let bytes = self.download_file(remote, local, Some(size), opts, &mut tracker).await?;
                Ok(Transferred { files: 1, bytes })
            }
            _ => Err(Error::value_error(format!(
                "cannot download {}: not a file or a directory on the server",
                Value::from(remote).repr()
            ))),
        }
    }

    async fn helpers(&self) -> Result<&Helpers> {
        self.cache
            .helpers
            .get_or_try_init(|| async {
                self.execute(HELPERS).await?;
                let got = self
                    .eval(
                        "(_rpyc_rs_kind, _rpyc_rs_sha256, _rpyc_rs_walk, _rpyc_rs_mkdir, _rpyc_rs_commit, \
                         _rpyc_rs_discard, __import__('os').sep)",
                    )
                    .await?;
                let bad = || Error::Protocol("classic helpers: unexpected reply to the helper lookup".into());
                let Object::Tuple(items) = got else { return Err(bad()) };
                let mut it = items.into_iter();
                let mut next_ref = || it.next().ok_or_else(bad).and_then(Object::into_netref);
                let (kind, sha256, walk, mkdir) = (next_ref()?, next_ref()?, next_ref()?, next_ref()?);
                let (commit, discard) = (next_ref()?, next_ref()?);
                let sep = it.next().ok_or_else(bad)?.extract::<String>()?;
                Ok(Helpers { kind, sha256, walk, mkdir, commit, discard, sep })
            })
            .await
    }

    /// Compares the SHA-256 of the server's file at `path` with ours;
    /// errors name `remote`.
    async fn verify(
        &self,
        path: &str,
        remote: &str,
        local_hex: &str,
        local_len: u64,
        what: &str,
        opts: &TransferOptions,
    ) -> Result<()> {
        let h = self.helpers().await?;
        let (remote_hex, remote_len): (String, u64) = h.sha256.call((path, opts.chunk())).await?.extract()?;
        if remote_hex != local_hex || remote_len != local_len {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{what} of {remote}: integrity check failed: local SHA-256 {local_hex} ({local_len} bytes), \
                     remote SHA-256 {remote_hex} ({remote_len} bytes)"
                ),
            )));
        }
        Ok(())
    }

    async fn upload_file(
        &self,
        local: &Path,
        remote: &str,
        size: u64,
        opts: &TransferOptions,
        tracker: &mut Tracker,
    ) -> Result<u64> {
        let chunk = opts.chunk();
        let file = std::fs::File::open(local).map_err(|e| io_context(e, "cannot open", local))?;
        tracker.start_file(local, remote, Some(size));
        // Written beside the destination and renamed over it once complete
        // (and verified): a failed upload leaves the old file as it was, and
        // uploading a file onto itself cannot truncate it first.
        let part = part_name(remote);
        let rf = self.open(&part, "wb").await?;
        let mut file = Some(file);
        let mut hasher = Sha256::new();
        let mut sent = 0u64;
        let copied = async {
            loop {
                let Some(mut f) = file.take() else { break };
                let (f, buf) = blocking_io(move || read_chunk(&mut f, chunk).map(|b| (f, b)))
                    .await
                    .map_err(|e| io_context(e, "cannot read", local))?;
                file = Some(f);
                if buf.is_empty() {
                    break;
                }
                hasher.update(&buf);
                let n = buf.len() as u64;
                sent += n;
                rf.write_bytes(buf).await?;
                tracker.chunk(n);
            }
            Ok::<_, Error>(())
        }
        .await;
        // The remote file is closed whatever happened (not left to a
        // background clean-up); the first error wins.
        let closed = rf.close().await;
        let h = self.helpers().await?;
        let committed = async {
            copied.and(closed)?;
            if opts.verify {
                self.verify(&part, remote, &hex(&hasher.finalize()), sent, "upload", opts).await?;
            }
            h.commit.call((part.as_str(), remote)).await.map(drop)
        }
        .await;
        if committed.is_err() {
            let _ = h.discard.call((part.as_str(),)).await;
        }
        committed?;
        tracker.finish_file();
        Ok(sent)
    }

    async fn download_file(
        &self,
        remote: &str,
        local: &Path,
        size: Option<u64>,
        opts: &TransferOptions,
        tracker: &mut Tracker,
    ) -> Result<u64> {
        let chunk = opts.chunk();
        let rf = self.open(remote, "rb").await?;
        let mut file = None;
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        // As for uploads: written beside the destination, renamed over it
        // once complete and verified.
        let part = local_part_name(local);
        let copied = async {
            file = Some(std::fs::File::create(&part).map_err(|e| io_context(e, "cannot create", local))?);
            tracker.start_file(local, remote, size);
            loop {
                let buf = rf.read_bytes(chunk).await?;
                if buf.is_empty() {
                    break;
                }
                hasher.update(&buf);
                let n = buf.len() as u64;
                got += n;
                let Some(mut f) = file.take() else { break };
                let f = blocking_io(move || f.write_all(&buf).map(|_| f))
                    .await
                    .map_err(|e| io_context(e, "cannot write", local))?;
                file = Some(f);
                tracker.chunk(n);
            }
            Ok::<_, Error>(())
        }
        .await;
        // As for uploads: the remote file is closed whatever happened.
        let closed = rf.close().await;
        let committed = async {
            copied.and(closed)?;
            if let Some(f) = file.take() {
                blocking_io(move || f.sync_all()).await.map_err(|e| io_context(e, "cannot write", local))?;
            }
            if opts.verify {
                self.verify(remote, remote, &hex(&hasher.finalize()), got, "download", opts).await?;
            }
            let (from, to) = (part.clone(), local.to_path_buf());
            blocking_io(move || {
                if let Ok(meta) = std::fs::metadata(&to) {
                    let _ = std::fs::set_permissions(&from, meta.permissions());
                }
                std::fs::rename(&from, &to)
            })
            .await
            .map_err(|e| io_context(e, "cannot replace", local))
        }
        .await;
        if committed.is_err() {
            let _ = std::fs::remove_file(&part);
        }
        committed?;
        tracker.finish_file();
        Ok(got)
    }

    async fn upload_dir(
        &self,
        local: &Path,
        remote: &str,
        opts: &TransferOptions,
        tracker: &mut Tracker,
    ) -> Result<Transferred> {
        let h = self.helpers().await?;
        // The whole tree is listed first, so progress knows the totals.
        let plan = blocking_io({
            let (local, remote, sep) = (local.to_path_buf(), remote.to_string(), h.sep.clone());
            move || plan_upload(&local, &remote, &sep)
        })
        .await
        .map_err(Error::Io)??;
        let (files, bytes) = plan.iter().fold((0, 0), |(f, b), e| match e {
            UploadStep::File { size, .. } => (f + 1, b + size),
            UploadStep::Dir(_) => (f, b),
        });
        tracker.totals(files, bytes);
        let mut total = Transferred::default();
        for step in plan {
            match step {
                UploadStep::Dir(rdir) => {
                    h.mkdir.call((rdir.as_str(),)).await?;
                }
                UploadStep::File { local, remote, size } => {
                    total.bytes += self.upload_file(&local, &remote, size, opts, tracker).await?;
                    total.files += 1;
                }
            }
        }
        Ok(total)
    }

    async fn download_dir(
        &self,
        remote: &str,
        local: &Path,
        opts: &TransferOptions,
        tracker: &mut Tracker,
    ) -> Result<Transferred> {
        let h = self.helpers().await?;
        std::fs::create_dir_all(local).map_err(|e| io_context(e, "cannot create", local))?;
        // Sizes are as listed; -1: the file could not be measured.
        let entries: Vec<(Vec<String>, String, bool, i64)> = h.walk.call((remote,)).await?.extract()?;
        let files = entries.iter().filter(|e| !e.2).count() as u64;
        let sizes: Option<u64> =
            entries.iter().filter(|e| !e.2).map(|e| u64::try_from(e.3).ok()).try_fold(0u64, |a, s| Some(a + s?));
        tracker.totals_known(files, sizes);
        let mut total = Transferred::default();
        for (parts, full, is_dir, size) in entries {
            let path = safe_join(local, &parts)?;
            if is_dir {
                std::fs::create_dir_all(&path).map_err(|e| io_context(e, "cannot create", &path))?;
            } else {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io_context(e, "cannot create", parent))?;
                }
                let size = u64::try_from(size).ok();
                total.bytes += self.download_file(&full, &path, size, opts, tracker).await?;
                total.files += 1;
            }
        }
        Ok(total)
    }
}

/// Settings of [`Classic::upload_with`] and [`Classic::download_with`].
///
/// ```no_run
/// # async fn demo(c: rpyc::classic::Classic) -> rpyc::Result<()> {
/// use rpyc::classic::TransferOptions;
/// let mut opts = TransferOptions::default().on_progress(|p| {
///     if let Some(size) = p.total_size {
///         eprint!("\r{} / {size} bytes", p.total_bytes);
///     }
/// });
/// opts.chunk_size = 256 << 10;
/// c.upload_with("build/", "/srv/app/build", &opts).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct TransferOptions {
    /// Bytes per round trip. Default: 1 MiB (Python's `STREAM_CHUNK` is
    /// 8 KiB, which makes large files slow over a network). Clamped to
    /// 1 byte … 16 MiB so a chunk always fits the 64 MiB frame limit.
    pub chunk_size: usize,
    /// Compare the SHA-256 of each file on both sides after the transfer
    /// and fail on a mismatch. Default: true.
    pub verify: bool,
    /// Called as the transfer advances (see [`TransferOptions::on_progress`]).
    progress: Option<ProgressFn>,
}

/// A progress callback, shared by the clones of its [`TransferOptions`].
type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

impl fmt::Debug for TransferOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransferOptions")
            .field("chunk_size", &self.chunk_size)
            .field("verify", &self.verify)
            .field("progress", &self.progress.as_ref().map(|_| "Fn(&Progress)"))
            .finish()
    }
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions { chunk_size: 1 << 20, verify: true, progress: None }
    }
}

impl TransferOptions {
    /// Calls `callback` after every chunk and once more when each file is
    /// complete (written, closed and, with [`TransferOptions::verify`],
    /// checked), for uploads and downloads of files and directories alike.
    /// A file of zero bytes gets only the completion call.
    ///
    /// The callback runs inside the transfer, on the task (or, with
    /// [`crate::blocking`], the thread) that drives it, between two round
    /// trips: keep it quick (update a progress bar, note a number) and do
    /// not block in it. It replaces any callback set before.
    pub fn on_progress(mut self, callback: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(callback));
        self
    }

    fn chunk(&self) -> usize {
        self.chunk_size.clamp(1, 16 << 20)
    }
}

/// Which way a transfer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Direction {
    /// From this machine to the server ([`Classic::upload`]).
    Upload,
    /// From the server to this machine ([`Classic::download`]).
    Download,
}

impl Direction {
    /// `"upload"` or `"download"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
        }
    }
}

/// Where a transfer stands, as handed to the callback of
/// [`TransferOptions::on_progress`].
///
/// Byte counts only grow during a transfer. Sizes are measured when the
/// transfer starts (a directory is listed first, on this machine for an
/// upload and on the server for a download), so a file that changes while
/// it is copied can end with `file_bytes` different from `file_size`; the
/// counts are what was actually copied.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Upload or download.
    pub direction: Direction,
    /// The file being copied, on this machine.
    pub local: PathBuf,
    /// The same file on the server.
    pub remote: String,
    /// Bytes of this file copied so far.
    pub file_bytes: u64,
    /// This file's size, when known.
    pub file_size: Option<u64>,
    /// True on the call that reports this file complete (the last call for
    /// the file).
    pub file_done: bool,
    /// Bytes copied so far, all files together.
    pub total_bytes: u64,
    /// Bytes of the whole transfer, when known.
    pub total_size: Option<u64>,
    /// Files complete so far (counting this one on its `file_done` call).
    pub files_done: u64,
    /// Files in the whole transfer, when known.
    pub files_total: Option<u64>,
}

/// The running [`Progress`] of one transfer and its callback.
struct Tracker {
    callback: Option<ProgressFn>,
    state: Progress,
}

impl Tracker {
    fn new(direction: Direction, opts: &TransferOptions) -> Tracker {
        Tracker {
            callback: opts.progress.clone(),
            state: Progress {
                direction,
                local: PathBuf::new(),
                remote: String::new(),
                file_bytes: 0,
                file_size: None,
                file_done: false,
                total_bytes: 0,
                total_size: None,
                files_done: 0,
                files_total: None,
            },
        }
    }

    fn totals(&mut self, files: u64, bytes: u64) {
        self.totals_known(files, Some(bytes));
    }

    fn totals_known(&mut self, files: u64, bytes: Option<u64>) {
        self.state.files_total = Some(files);
        self.state.total_size = bytes;
    }

    fn start_file(&mut self, local: &Path, remote: &str, size: Option<u64>) {
        if self.callback.is_none() {
            return;
        }
        let s = &mut self.state;
        local.clone_into(&mut s.local);
        remote.clone_into(&mut s.remote);
        s.file_bytes = 0;
        s.file_size = size;
        s.file_done = false;
    }

    fn chunk(&mut self, n: u64) {
        self.state.file_bytes += n;
        self.state.total_bytes += n;
        self.report();
    }

    fn finish_file(&mut self) {
        self.state.files_done += 1;
        self.state.file_done = true;
        self.report();
    }

    fn report(&self) {
        if let Some(callback) = &self.callback {
            callback(&self.state);
        }
    }
}

/// One step of a directory upload, in order: a directory to create on the
/// server, or a file to copy.
enum UploadStep {
    Dir(String),
    File { local: PathBuf, remote: String, size: u64 },
}

/// Lists a local tree for upload (depth first, names sorted; symlinked
/// directories skipped, as they may form cycles; entries that are neither
/// files nor directories skipped).
fn plan_upload(local: &Path, remote: &str, sep: &str) -> io::Result<Result<Vec<UploadStep>>> {
    let mut plan = Vec::new();
    let mut stack = vec![(local.to_path_buf(), remote.to_string())];
    while let Some((ldir, rdir)) = stack.pop() {
        let mut entries = match std::fs::read_dir(&ldir).and_then(|rd| rd.collect::<io::Result<Vec<_>>>()) {
            Ok(e) => e,
            Err(e) => return Ok(Err(io_context(e, "cannot list", &ldir))),
        };
        plan.push(UploadStep::Dir(rdir.clone()));
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Ok(Err(Error::value_error(format!("cannot upload {}: the name is not UTF-8", path.display()))));
            };
            let rpath = format!("{rdir}{sep}{name}");
            let link = entry.file_type().map(|t| t.is_symlink()).unwrap_or(false);
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if !link {
                    stack.push((path, rpath));
                }
            } else if meta.is_file() {
                plan.push(UploadStep::File { local: path, remote: rpath, size: meta.len() });
            }
        }
    }
    Ok(Ok(plan))
}

/// What a transfer moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transferred {
    /// Files copied.
    pub files: u64,
    /// Bytes copied (file contents).
    pub bytes: u64,
}

/// A file open on the server (the object `open()` returned there).
///
/// Close it with [`RemoteFile::close`], which runs the file's `__exit__`
/// exactly as the end of a Python `with` block does. If it is dropped open,
/// the close happens in the background (when a tokio runtime is at hand)
/// and a warning is logged; failing that, the server closes the file when it
/// releases the object.
pub struct RemoteFile {
    file: Option<Netref>,
}

impl fmt::Debug for RemoteFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteFile").field("open", &self.file.is_some()).finish()
    }
}

fn bytes_of(obj: Object) -> Result<Vec<u8>> {
    match obj {
        Object::Value(Value::Bytes(b)) => Ok(b),
        Object::Value(Value::Str(s)) => Ok(s.into_bytes()),
        other => Err(Error::type_error(format!("expected bytes or str from read(), got {}", other.describe()))),
    }
}

impl RemoteFile {
    fn netref_or_closed(&self) -> Result<&Netref> {
        self.file.as_ref().ok_or_else(|| Error::value_error("I/O operation on closed file."))
    }

    /// The proxy, for the methods not wrapped here (`seek`, `tell`,
    /// `readline`, `truncate`…).
    pub fn netref(&self) -> Option<&Netref> {
        self.file.as_ref()
    }

    /// `f.read(max)`: up to `max` bytes (a binary-mode file; a text-mode
    /// file yields up to `max` characters, UTF-8 encoded). Empty at the end.
    pub async fn read_bytes(&self, max: usize) -> Result<Vec<u8>> {
        bytes_of(self.netref_or_closed()?.callattr("read", (max,)).await?)
    }

    /// `f.read()`: the rest of the file, in one reply (use
    /// [`RemoteFile::read_bytes`] in a loop, or [`Classic::download`], for
    /// big files).
    pub async fn read_to_end(&self) -> Result<Vec<u8>> {
        bytes_of(self.netref_or_closed()?.callattr("read", ()).await?)
    }

    /// `f.read()` as text: a text-mode file's `str`, or a binary-mode
    /// file's bytes decoded as UTF-8.
    pub async fn read_to_string(&self) -> Result<String> {
        String::from_utf8(self.read_to_end().await?).map_err(|e| Error::value_error(format!("file is not UTF-8: {e}")))
    }

    /// `f.write(data)` for a binary-mode file; returns the count written.
    pub async fn write_bytes(&self, data: impl Into<Vec<u8>>) -> Result<usize> {
        let data = Object::Value(Value::Bytes(data.into()));
        self.netref_or_closed()?.callattr("write", (data,)).await?.extract()
    }

    /// `f.write(text)` for a text-mode file; returns the count written.
    pub async fn write_str(&self, text: &str) -> Result<usize> {
        self.netref_or_closed()?.callattr("write", (text,)).await?.extract()
    }

    /// Closes the file through its `__exit__` (RPyC's CTXEXIT), flushing
    /// what was written; errors of the close (e.g. a full disk) are reported.
    pub async fn close(mut self) -> Result<()> {
        match self.file.take() {
            Some(f) => f.exit(None).await.map(|_| ()),
            None => Ok(()),
        }
    }
}

impl Drop for RemoteFile {
    fn drop(&mut self) {
        if let Some(f) = self.file.take() {
            tracing::warn!("remote file dropped without close(); closing it in the background");
            in_background(async move {
                let _ = f.exit(None).await;
            });
        }
    }
}

/// An entered remote context manager: Python's `with manager as value:`.
///
/// ```no_run
/// # async fn demo(c: rpyc::classic::Classic) -> rpyc::Result<()> {
/// use rpyc::classic::RemoteContext;
/// let lock = c.module("threading").await?.callattr("Lock", ()).await?.into_netref()?;
/// let ctx = RemoteContext::enter(lock).await?; // lock.__enter__()
/// // ... the body of the `with` block ...
/// ctx.exit().await?; // lock.__exit__(None, None, None)
/// # Ok(()) }
/// ```
pub struct RemoteContext {
    manager: Option<Netref>,
    value: Object,
}

impl fmt::Debug for RemoteContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteContext").field("manager", &self.manager).field("value", &self.value).finish()
    }
}

impl RemoteContext {
    /// Calls `manager.__enter__()` and keeps what it returned.
    pub async fn enter(manager: Netref) -> Result<RemoteContext> {
        let value = manager.callattr("__enter__", ()).await?;
        Ok(RemoteContext { manager: Some(manager), value })
    }

    /// What `__enter__` returned (the `as` target).
    pub fn value(&self) -> &Object {
        &self.value
    }

    /// Calls `manager.__exit__(None, None, None)` (RPyC's CTXEXIT) and
    /// returns its truth value.
    pub async fn exit(mut self) -> Result<bool> {
        match self.manager.take() {
            Some(m) => Ok(m.exit(None).await?.as_value().is_some_and(Value::truthy)),
            None => Ok(false),
        }
    }
}

impl Drop for RemoteContext {
    fn drop(&mut self) {
        if let Some(m) = self.manager.take() {
            tracing::warn!("remote context manager dropped without exit(); exiting it in the background");
            in_background(async move {
                let _ = m.exit(None).await;
            });
        }
    }
}

/// Which remote stream a redirected write came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteStream {
    /// `sys.stdout` on the server.
    Stdout,
    /// `sys.stderr` on the server.
    Stderr,
}

type Sink = Arc<dyn Fn(RemoteStream, &str) + Send + Sync>;

struct Writer {
    stream: RemoteStream,
    sink: Sink,
}

/// The local object the server sees as `sys.stdout` / `sys.stderr`: the
/// part of the text-file interface that `print`, `logging` and
/// `traceback` use.
fn writer_class() -> &'static Class<Writer> {
    static C: OnceLock<Class<Writer>> = OnceLock::new();
    C.get_or_init(|| {
        Class::<Writer>::builder("rpyc.classic.RedirectedStream")
            .method("write(text)", |w: This<Writer>, text: String| {
                (w.sink)(w.stream, &text);
                Ok(text.chars().count())
            })
            .method("flush()", |_: This<Writer>| Ok(()))
            .method("isatty()", |_: This<Writer>| Ok(false))
            .method("writable()", |_: This<Writer>| Ok(true))
            .attr("encoding", |_| "utf-8")
            .attr("errors", |_| "strict")
            .attr("closed", |_| false)
            .build()
    })
}

/// The most one `read()`/`readline()` of the redirected stdin returns: the
/// server chooses the call, so a `read()` with `/dev/zero` (or an endless
/// pipe) on our stdin must not grow this process without bound.
const MAX_STDIN_READ: usize = 16 << 20;

/// The local object the server sees as `sys.stdin`.
struct Reader {
    input: tokio::sync::Mutex<tokio::io::BufReader<Box<dyn tokio::io::AsyncRead + Send + Unpin>>>,
}

impl Reader {
    /// One line (with its newline), at most `limit` bytes; empty at the end.
    async fn line(&self, limit: Option<usize>) -> io::Result<String> {
        use tokio::io::AsyncBufReadExt;
        // Reading one byte past the cap tells a line that is too long.
        let cap = limit.map_or(MAX_STDIN_READ + 1, |l| l.min(MAX_STDIN_READ + 1));
        let mut input = self.input.lock().await;
        let mut out = Vec::new();
        while out.len() < cap {
            let chunk = input.fill_buf().await?;
            if chunk.is_empty() {
                break;
            }
            let room = cap - out.len();
            let (take, newline) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) if i < room => (i + 1, true),
                _ => (chunk.len().min(room), false),
            };
            out.extend_from_slice(chunk.get(..take).unwrap_or_default());
            input.consume(take);
            if newline {
                break;
            }
        }
        if out.len() > MAX_STDIN_READ {
            return Err(too_long("readline()"));
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Up to `limit` bytes, or everything up to the end.
    async fn read(&self, limit: Option<usize>) -> io::Result<String> {
        use tokio::io::AsyncReadExt;
        let mut input = self.input.lock().await;
        let mut out = Vec::new();
        let cap = limit.unwrap_or(MAX_STDIN_READ + 1).min(MAX_STDIN_READ + 1);
        (&mut *input).take(cap as u64).read_to_end(&mut out).await?;
        if out.len() > MAX_STDIN_READ {
            return Err(too_long("read()"));
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

fn too_long(what: &str) -> io::Error {
    io::Error::other(format!(
        "more than {} MiB of stdin in one {what}; read it in pieces (read(n))",
        MAX_STDIN_READ >> 20
    ))
}

/// A Python size argument: negative or None means "no limit".
fn size_limit(size: Option<i64>) -> Option<usize> {
    size.and_then(|n| usize::try_from(n).ok())
}

fn read_error(e: io::Error) -> Error {
    Error::Exception(crate::wire::Exception::new("OSError", format!("reading the client's stdin failed: {e}")))
}

/// The part of the text-file interface that `input()`, `sys.stdin.readline()`
/// and `sys.stdin.read()` use.
fn reader_class() -> &'static Class<Reader> {
    static C: OnceLock<Class<Reader>> = OnceLock::new();
    C.get_or_init(|| {
        Class::<Reader>::builder("rpyc.classic.RedirectedStdin")
            .async_method("readline(size=-1)", |r: This<Reader>, size: Option<i64>| async move {
                r.line(size_limit(size)).await.map_err(read_error)
            })
            .async_method("read(size=-1)", |r: This<Reader>, size: Option<i64>| async move {
                r.read(size_limit(size)).await.map_err(read_error)
            })
            .async_method("readlines()", |r: This<Reader>| async move {
                let (mut lines, mut total) = (Vec::new(), 0);
                loop {
                    let line = r.line(None).await.map_err(read_error)?;
                    if line.is_empty() {
                        return Ok(lines);
                    }
                    total += line.len();
                    if total > MAX_STDIN_READ {
                        return Err(read_error(too_long("readlines()")));
                    }
                    lines.push(line);
                }
            })
            .method("isatty()", |_: This<Reader>| Ok(false))
            .method("readable()", |_: This<Reader>| Ok(true))
            .attr("encoding", |_| "utf-8")
            .attr("errors", |_| "strict")
            .attr("closed", |_| false)
            .build()
    })
}

struct Saved {
    sys: Netref,
    stdin: Option<Object>,
    stdout: Object,
    stderr: Object,
}

/// Remote stdio redirected here; [`StdioRedirect::restore`] puts the
/// server's original streams back (the end of Python's
/// `with redirected_stdio(conn):`). Dropped without it, the restore runs in
/// the background, best effort.
pub struct StdioRedirect {
    saved: Option<Saved>,
}

impl fmt::Debug for StdioRedirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StdioRedirect").field("active", &self.saved.is_some()).finish()
    }
}

impl StdioRedirect {
    /// Restores the server's original streams.
    pub async fn restore(mut self) -> Result<()> {
        self.restore_inner().await
    }

    async fn restore_inner(&mut self) -> Result<()> {
        match self.saved.take() {
            Some(s) => s.restore().await,
            None => Ok(()),
        }
    }
}

impl Saved {
    async fn restore(self) -> Result<()> {
        let a = self.sys.setattr("stdout", self.stdout).await;
        let b = self.sys.setattr("stderr", self.stderr).await;
        let c = match self.stdin {
            Some(stdin) => self.sys.setattr("stdin", stdin).await,
            None => Ok(()),
        };
        a.and(b).and(c)
    }
}

impl Drop for StdioRedirect {
    fn drop(&mut self) {
        if let Some(s) = self.saved.take() {
            tracing::warn!("stdio redirection dropped without restore(); restoring in the background");
            in_background(async move {
                let _ = s.restore().await;
            });
        }
    }
}

/// Runs a clean-up future on the current tokio runtime, if there is one.
/// Without a runtime the clean-up is skipped: the proxies involved are
/// still released, so the server frees the objects.
fn in_background(fut: impl std::future::Future<Output = ()> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn(fut);
        }
        Err(_) => tracing::warn!("no tokio runtime to run the clean-up on; skipped"),
    }
}

/// Runs blocking file I/O off the async workers.
async fn blocking_io<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(io::Error::other(format!("file I/O task failed: {e}"))),
    }
}

/// Reads until `buf` is full or the file ends.
fn read_chunk(f: &mut std::fs::File, size: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; size];
    let mut filled = 0;
    while filled < size {
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// A name beside `path` for a transfer in progress: unique per transfer, so
/// two clients writing the same destination do not share a partial file.
fn part_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    format!(".rpyc-{:016x}.part", h.finish())
}

fn part_name(remote: &str) -> String {
    format!("{remote}{}", part_suffix())
}

fn local_part_name(local: &Path) -> PathBuf {
    let mut name = local.as_os_str().to_os_string();
    name.push(part_suffix());
    PathBuf::from(name)
}

fn io_context(e: io::Error, what: &str, path: &Path) -> Error {
    Error::Io(io::Error::new(e.kind(), format!("{what} {}: {e}", path.display())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Joins names the server sent below `base`, refusing anything that could
/// leave it (`..`, separators, absolute paths): the server is a peer, not
/// an authority over the local file system.
fn safe_join(base: &Path, parts: &[String]) -> Result<PathBuf> {
    let mut path = base.to_path_buf();
    if parts.is_empty() {
        return Err(Error::Protocol("download: the server listed an empty path".into()));
    }
    for p in parts {
        if p.is_empty() || p == "." || p == ".." || p.contains(['/', '\\', '\0']) || Path::new(p).is_absolute() {
            return Err(Error::Protocol(format!(
                "download: refusing unsafe remote name {}",
                Value::from(p.as_str()).repr()
            )));
        }
        path.push(p);
    }
    Ok(path)
}

/// Removes the common leading whitespace of the non-blank lines (Python's
/// `textwrap.dedent`), so a `def` can be written indented in a Rust string.
fn dedent(src: &str) -> String {
    let indent = src
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| &l[..l.len() - l.trim_start().len()])
        .reduce(|a, b| {
            let common = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
            &a[..common]
        })
        .unwrap_or("");
    let mut out = String::with_capacity(src.len());
    for line in src.lines() {
        out.push_str(line.strip_prefix(indent).unwrap_or(line.trim_start()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedent_strips_common_indentation() {
        let src = "\n    def f(x):\n        return x\n\n    g = 1\n";
        assert_eq!(dedent(src), "\ndef f(x):\n    return x\n\ng = 1\n");
        assert_eq!(dedent("def f():\n  pass"), "def f():\n  pass\n");
    }

    #[test]
    fn safe_join_refuses_escapes() {
        let base = Path::new("/tmp/x");
        assert_eq!(safe_join(base, &["a".into(), "b".into()]).unwrap(), Path::new("/tmp/x/a/b"));
        for bad in ["..", ".", "", "a/b", "a\\b", "/etc"] {
            assert!(safe_join(base, &[bad.to_string()]).is_err(), "{bad}");
        }
        assert!(safe_join(base, &[]).is_err());
    }

    #[test]
    fn chunk_is_clamped() {
        let mut o = TransferOptions { chunk_size: 0, ..TransferOptions::default() };
        assert_eq!(o.chunk(), 1);
        o.chunk_size = usize::MAX;
        assert_eq!(o.chunk(), 16 << 20);
    }
}
