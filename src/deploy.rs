//! Layer 5: zero-deploy — start a Python RPyC server on a machine you can
//! SSH into, for the life of a handle, and leave nothing behind (mirrors
//! `rpyc/utils/zerodeploy.py`'s `DeployedServer(SshMachine(host))`).
//!
//! ```no_run
//! use rpyc::deploy::{DeployOptions, DeployedServer};
//! use rpyc::transport::ssh::SshConfig;
//! # async fn demo() -> rpyc::Result<()> {
//! let ssh = SshConfig::new("build-box", 22, "bob").with_key_file("/home/bob/.ssh/id_ed25519");
//! let server = DeployedServer::start(ssh, DeployOptions::new()).await?;
//! let c = server.classic().await?;
//! let host: String = c.eval_as("__import__('socket').gethostname()").await?;
//! server.close().await; // the remote process and its directory are gone
//! # let _ = host; Ok(()) }
//! ```
//!
//! # How: the server speaks RPyC on the SSH exec channel's stdin/stdout
//!
//! Python's zero-deploy copies rpyc into a temporary directory over SFTP,
//! starts `ThreadedServer(port=0)` there, reads the port the server prints
//! and forwards a local port to it with `ssh -L`. That leaves a TCP port
//! open on the remote host for the life of the server — any local user
//! there can connect to an unauthenticated classic server, i.e. run code as
//! you — and a local port on this machine too.
//!
//! Here the remote server reads and writes RPyC on the stdin/stdout of the
//! SSH exec channel that started it (Python's own `PipeStream`, as
//! `rpyc_classic.py -m stdio` does). Compared with the alternatives:
//!
//! * **no listening TCP port** anywhere: only our SSH channel reaches the
//!   server, so the SSH login is its authentication;
//! * **no Unix socket** either: a socket file plus a `streamlocal` forward
//!   (`direct-streamlocal@openssh.com`) would also avoid TCP, but needs
//!   `AllowStreamLocalForwarding` on the server, a file whose permissions
//!   are the only guard, and a second channel whose failure is separate
//!   from the server's;
//! * **it dies with the channel**: when the connection closes, the handle
//!   is dropped, the SSH session ends or this process is killed (its TCP
//!   connection drops, sshd closes the channel), the server reads end of
//!   file on stdin, `serve_all()` returns, Python exits, and the wrapper
//!   shell removes the temporary directory. A server busy in a long call
//!   does not read its stdin: a watchdog thread notices the closed channel
//!   on its stdout (`POLLERR`) and exits at once. After end of file the
//!   client closes the channel itself if the server has not exited within
//!   3 s, so even a dropped handle never leaves a server behind.
//!
//! # The remote side
//!
//! One exec command, run by the login user's shell:
//!
//! 1. `mktemp -d` makes a private (0700) directory; a `trap` and the
//!    script's last lines remove it however Python ends;
//! 2. `PYTHON -c BOOTSTRAP DIR SERVICE` starts. The bootstrap (about 60
//!    lines, [`BOOTSTRAP`]) keeps the channel's stdin/stdout for RPyC and
//!    points fd 0 at `/dev/null` and fd 1 at stderr, so `print()` — and
//!    any child process — cannot corrupt the stream;
//! 3. it says `RPYC-DEPLOY-HELLO pid dir`, then either
//!    `RPYC-DEPLOY-READY version` or, when `import rpyc` fails,
//!    `RPYC-DEPLOY-UPLOAD reason`: the client then sends the local rpyc
//!    package ([`DeployOptions::upload_from`]) as one length-prefixed zlib
//!    archive, unpacked into `DIR/lib` (paths checked, sizes capped) and
//!    put first on `sys.path`;
//! 4. it imports the service (`SlaveService`, or `module:Class`) and serves
//!    one connection until end of file.
//!
//! Anything else the login shell prints first (a noisy `.bashrc`) is
//! skipped, up to 64 KiB. The remote rpyc's version picks the wire dialect
//! (5.x or 6.x).

use crate::classic::Classic;
use crate::client::ClientBuilder;
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::transport::ssh::{ExecHandle, ExecStream, RemoteStderr, SshConfig, SshSession};
use crate::wire::Dialect;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the remote server serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteService {
    /// rpyc's classic `SlaveService` (eval, execute, modules): the default,
    /// as Python's `DeployedServer.classic_connect()`.
    #[default]
    Classic,
    /// A service class by `module:Class`, importable by the remote Python
    /// (its `sys.path` starts with the deployment directory's `lib`).
    Named(String),
}

/// How to deploy: the remote interpreter, the service, where rpyc comes
/// from if the remote host lacks it, and the client's settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeployOptions {
    /// The remote Python interpreter (a command name or a path). Default:
    /// `python3`, found on the login user's `PATH`.
    pub python: String,
    /// The service to serve. Default: [`RemoteService::Classic`].
    pub service: RemoteService,
    /// Where to take rpyc from when the remote Python cannot import it: a
    /// local rpyc package directory (`…/site-packages/rpyc`), a
    /// `site-packages` directory holding one, or a local Python interpreter
    /// to ask where its rpyc is. Default: `None` — a remote Python without
    /// rpyc is an error that says so.
    pub upload_from: Option<PathBuf>,
    /// Where the remote server's stderr (its log, and whatever the served
    /// code prints) goes. Default: [`RemoteStderr::Log`].
    pub stderr: RemoteStderr,
    /// Deadline for everything up to a serving connection (login, upload,
    /// imports). Default: 60 s.
    pub startup_timeout: Duration,
    /// Client settings (local service for callbacks, timeouts). The dialect
    /// is chosen from the remote rpyc version. Default: [`ClientBuilder::new`].
    pub client: ClientBuilder,
}

impl Default for DeployOptions {
    fn default() -> Self {
        DeployOptions {
            python: "python3".into(),
            service: RemoteService::Classic,
            upload_from: None,
            stderr: RemoteStderr::Log,
            startup_timeout: Duration::from_secs(60),
            client: ClientBuilder::new(),
        }
    }
}

impl DeployOptions {
    /// The defaults above.
    pub fn new() -> DeployOptions {
        DeployOptions::default()
    }

    /// Uses this remote interpreter.
    pub fn python(mut self, python: impl Into<String>) -> Self {
        self.python = python.into();
        self
    }

    /// Serves `module:Class` instead of the classic service.
    pub fn service(mut self, module_class: impl Into<String>) -> Self {
        self.service = RemoteService::Named(module_class.into());
        self
    }

    /// Uploads rpyc from this local package directory or Python
    /// interpreter when the remote one lacks it.
    pub fn upload_from(mut self, path: impl Into<PathBuf>) -> Self {
        self.upload_from = Some(path.into());
        self
    }

    /// Where the remote stderr goes.
    pub fn stderr(mut self, stderr: RemoteStderr) -> Self {
        self.stderr = stderr;
        self
    }

    /// Client settings.
    pub fn client(mut self, client: ClientBuilder) -> Self {
        self.client = client;
        self
    }
}

/// Where and what the deployed server is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteInfo {
    /// `host:port` of the SSH server.
    pub server: String,
    /// The remote Python's process id.
    pub pid: u32,
    /// The private temporary directory, removed when the server ends.
    pub dir: String,
    /// The remote rpyc's version, e.g. `6.0.2`.
    pub rpyc_version: String,
    /// True when rpyc was uploaded into `dir` for this server.
    pub uploaded: bool,
}

/// A Python RPyC server running on an SSH host for the life of this handle
/// (see the module docs). Dropping it (or [`DeployedServer::close`]) ends
/// the connection; the remote server then exits and removes its directory.
pub struct DeployedServer {
    conn: Connection,
    session: SshSession,
    owns_session: bool,
    exec: ExecHandle,
    info: RemoteInfo,
}

impl fmt::Debug for DeployedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeployedServer").field("info", &self.info).field("conn", &self.conn).finish()
    }
}

/// Most bytes of shell chatter skipped before the bootstrap's hello.
const MAX_PREAMBLE: usize = 64 << 10;
/// Most bytes uploaded (compressed); the bootstrap enforces the same cap.
const MAX_UPLOAD: usize = 64 << 20;

/// The Python run on the remote host (`python -c BOOTSTRAP DIR SERVICE`).
/// Works on CPython 3.6+ with rpyc 5 or 6.
pub const BOOTSTRAP: &str = r#"
import os, sys
def _rpyc_deploy():
    d, svc = sys.argv[1], sys.argv[2]
    cin, cout = os.dup(0), os.dup(1)
    nul = os.open(os.devnull, os.O_RDONLY)
    os.dup2(nul, 0)
    os.close(nul)
    os.dup2(2, 1)
    sys.stdin = open(os.devnull)
    sys.stdout = sys.stderr
    def say(text):
        data = (text + "\n").encode("utf-8", "replace")
        while data:
            data = data[os.write(cout, data):]
    def read_exact(n):
        parts, left = [], n
        while left:
            b = os.read(cin, min(left, 1 << 16))
            if not b:
                sys.exit(0)
            parts.append(b)
            left -= len(b)
        return b"".join(parts)
    lib = os.path.join(d, "lib")
    os.makedirs(lib, exist_ok=True)
    sys.path.insert(0, lib)
    say("RPYC-DEPLOY-HELLO %d %s" % (os.getpid(), d))
    uploaded = False
    try:
        import rpyc
    except ImportError as e:
        say("RPYC-DEPLOY-UPLOAD %s" % (str(e).replace("\n", " "),))
        n = int.from_bytes(read_exact(8), "big")
        if n == 0 or n > MAX_UPLOAD:
            sys.exit(3)
        import zlib
        blob, off = zlib.decompress(read_exact(n)), 0
        while off < len(blob):
            plen = int.from_bytes(blob[off:off + 4], "big")
            path = blob[off + 4:off + 4 + plen].decode("utf-8")
            off += 4 + plen
            dlen = int.from_bytes(blob[off:off + 4], "big")
            data = blob[off + 4:off + 4 + dlen]
            off += 4 + dlen
            parts = path.split("/")
            if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
                raise SystemExit("rpyc deploy: refusing archive path %r" % (path,))
            full = os.path.join(lib, *parts)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(data)
        import importlib
        importlib.invalidate_caches()
        import rpyc
        uploaded = True
    if svc == "classic":
        from rpyc.core.service import SlaveService as service
    else:
        import importlib
        mod, _, cls = svc.partition(":")
        service = getattr(importlib.import_module(mod), cls)
    def watchdog():
        # The channel closed under a long call: do not wait for it to end.
        # A write end reports POLLERR/POLLHUP once its reader is gone.
        import select
        try:
            p = select.poll()
            p.register(cout, 0)
            while True:
                for _fd, ev in p.poll():
                    if ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                        os._exit(0)
        except Exception:
            pass
    import threading
    threading.Thread(target=watchdog, daemon=True).start()
    from rpyc.core.stream import PipeStream
    from rpyc.utils.factory import connect_stream
    stream = PipeStream(os.fdopen(cin, "rb", 0), os.fdopen(cout, "wb", 0))
    say("RPYC-DEPLOY-READY %s %s" % (rpyc.__version__, "uploaded" if uploaded else "installed"))
    conn = connect_stream(stream, service=service)
    try:
        conn.serve_all()
    except Exception:
        pass
    finally:
        try:
            conn.close()
        except Exception:
            pass
_rpyc_deploy()
"#;

/// Quotes `s` for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The exec command: a private directory, the bootstrap, clean-up however
/// Python ends (the trap covers signals to the shell itself).
fn remote_command(options: &DeployOptions) -> String {
    let service = match &options.service {
        RemoteService::Classic => "classic".to_string(),
        RemoteService::Named(s) => s.clone(),
    };
    let boot = BOOTSTRAP.replace("MAX_UPLOAD", &MAX_UPLOAD.to_string());
    format!(
        "umask 077; d=$(mktemp -d \"${{TMPDIR:-/tmp}}/rpyc-deploy.XXXXXXXXXX\") || {{ echo 'rpyc deploy: mktemp -d \
         failed' >&2; exit 125; }}; trap 'rm -rf \"$d\"' EXIT; trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit \
         143' TERM; {python} -c {boot} \"$d\" {service}; exit $?",
        python = sh_quote(&options.python),
        boot = sh_quote(&boot),
        service = sh_quote(&service),
    )
}

/// Reads one `\n`-terminated line, byte by byte (nothing after it may be
/// consumed: RPyC follows), within `budget` bytes in total.
async fn read_line(stream: &mut ExecStream, budget: &mut usize) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if *budget == 0 {
            return Ok(None);
        }
        let n = stream.read(&mut byte).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        *budget -= 1;
        if byte[0] == b'\n' {
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
        line.push(byte[0]);
    }
}

impl DeployedServer {
    /// Logs in with `ssh` (host key checking and login methods as for
    /// tunnels, see [`crate::transport::ssh`]), starts the server and
    /// connects. The SSH session is closed with the server.
    pub async fn start(ssh: SshConfig, options: DeployOptions) -> Result<DeployedServer> {
        let deadline = options.startup_timeout;
        let session = SshSession::connect(&ssh).await?;
        match tokio::time::timeout(deadline, Self::deploy(&session, options)).await {
            Ok(Ok(mut server)) => {
                server.owns_session = true;
                Ok(server)
            }
            Ok(Err(e)) => {
                session.close().await;
                Err(e)
            }
            Err(_) => {
                session.close().await;
                Err(Error::Transport(format!(
                    "deploy: the server on {} did not start within {deadline:?}",
                    session.server()
                )))
            }
        }
    }

    /// Like [`DeployedServer::start`] on a session you opened (and keep: it
    /// stays open after the server ends).
    pub async fn start_on(session: &SshSession, options: DeployOptions) -> Result<DeployedServer> {
        let deadline = options.startup_timeout;
        tokio::time::timeout(deadline, Self::deploy(session, options)).await.map_err(|_| {
            Error::Transport(format!("deploy: the server on {} did not start within {deadline:?}", session.server()))
        })?
    }

    async fn deploy(session: &SshSession, options: DeployOptions) -> Result<DeployedServer> {
        let server = session.server().to_string();
        let mut stream = session.exec_stream(&remote_command(&options), options.stderr).await?;
        let exec = stream.handle();
        let failed = |what: &str, e: &dyn fmt::Display| {
            let ended = exec.ended().unwrap_or_default();
            let tail = exec.stderr_tail();
            let detail = if !ended.is_empty() {
                ended
            } else if !tail.is_empty() {
                format!("{e}; its stderr: {tail}")
            } else {
                e.to_string()
            };
            Error::Transport(format!(
                "deploy: {what} on {server} failed: {detail} (the remote command was `{} -c <bootstrap>`; check the \
                 interpreter exists for that user)",
                options.python
            ))
        };
        let mut budget = MAX_PREAMBLE;
        // Skip shell chatter until the hello.
        let (pid, dir) = loop {
            match read_line(&mut stream, &mut budget).await {
                Ok(Some(line)) => {
                    if let Some(rest) = line.strip_prefix("RPYC-DEPLOY-HELLO ") {
                        let (pid, dir) = rest.split_once(' ').unwrap_or((rest, ""));
                        let pid: u32 = pid.parse().map_err(|_| failed("starting Python", &"a garbled hello"))?;
                        break (pid, dir.to_string());
                    }
                    tracing::debug!(%server, %line, "skipping remote shell output");
                }
                Ok(None) => {
                    return Err(failed(
                        "starting Python",
                        &format!("{MAX_PREAMBLE} bytes of output and no hello from the bootstrap"),
                    ))
                }
                Err(e) => return Err(failed("starting Python", &e)),
            }
        };
        let mut uploaded = false;
        let version = loop {
            let line = match read_line(&mut stream, &mut budget).await {
                Ok(Some(line)) => line,
                Ok(None) => return Err(failed("starting the server", &"too much output")),
                Err(e) => return Err(failed("starting the server", &e)),
            };
            if let Some(why) = line.strip_prefix("RPYC-DEPLOY-UPLOAD ") {
                let Some(from) = &options.upload_from else {
                    let _ = stream.write_all(&0u64.to_be_bytes()).await;
                    return Err(Error::Transport(format!(
                        "deploy: the remote {} on {server} cannot import rpyc ({why}): install rpyc there (python3 -m \
                         pip install --user rpyc), choose another interpreter (DeployOptions::python / --python), or \
                         upload a local copy (DeployOptions::upload_from / --upload-from PATH to a site-packages/rpyc \
                         directory or a local python that has rpyc)",
                        options.python
                    )));
                };
                let archive = pack_rpyc(from).await?;
                tracing::info!(%server, bytes = archive.len(), from = %from.display(), "uploading rpyc");
                let sent = async {
                    stream.write_all(&(archive.len() as u64).to_be_bytes()).await?;
                    stream.write_all(&archive).await?;
                    stream.flush().await
                };
                sent.await.map_err(|e| failed("uploading rpyc", &e))?;
                uploaded = true;
                continue;
            }
            if let Some(rest) = line.strip_prefix("RPYC-DEPLOY-READY ") {
                break rest.split_whitespace().next().unwrap_or_default().to_string();
            }
            tracing::debug!(%server, %line, "unexpected bootstrap output");
        };
        let dialect = if version.starts_with("5.") { Dialect::V5 } else { Dialect::V6 };
        let mut creds = session.credentials();
        creds.attributes.insert("deploy_pid".into(), pid.to_string());
        creds.attributes.insert("deploy_dir".into(), dir.clone());
        let conn = options.client.dialect(dialect).start(stream, creds);
        tracing::info!(%server, pid, %dir, %version, uploaded, "deployed server ready");
        Ok(DeployedServer {
            conn,
            session: session.clone(),
            owns_session: false,
            exec,
            info: RemoteInfo { server, pid, dir, rpyc_version: version, uploaded },
        })
    }

    /// The connection to the remote server (its root is the service).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The connection, as Python's `DeployedServer.connect()` (there is one
    /// per server: the channel's stdin/stdout carry exactly one).
    pub fn connect(&self) -> Connection {
        self.conn.clone()
    }

    /// The classic helpers over the connection
    /// (`DeployedServer.classic_connect()`); needs [`RemoteService::Classic`].
    pub async fn classic(&self) -> Result<Classic> {
        Classic::from_connection(self.conn.clone()).await
    }

    /// Where and what the server is.
    pub fn info(&self) -> &RemoteInfo {
        &self.info
    }

    /// The remote temporary directory (removed when the server ends).
    pub fn remote_dir(&self) -> &str {
        &self.info.dir
    }

    /// The remote Python's process id.
    pub fn remote_pid(&self) -> u32 {
        self.info.pid
    }

    /// The SSH session the server runs under.
    pub fn session(&self) -> &SshSession {
        &self.session
    }

    /// How the remote command ended, once it has.
    pub fn ended(&self) -> Option<String> {
        self.exec.ended()
    }

    /// Closes the connection, waits (up to 10 s) for the remote server to
    /// exit and clean up, and closes the SSH session if `start` opened it.
    /// Returns how the remote command ended.
    pub async fn close(self) -> Option<String> {
        self.conn.close().await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.exec.wait()).await;
        if self.owns_session {
            self.session.close().await;
        }
        self.exec.ended()
    }
}

impl Drop for DeployedServer {
    fn drop(&mut self) {
        // End of file for the remote server, even if clones of the
        // connection are still held.
        self.conn.abort("the deployed server's handle was dropped");
        if self.owns_session {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let (exec, session) = (self.exec.clone(), self.session.clone());
                rt.spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), exec.wait()).await;
                    session.close().await;
                });
            }
        }
    }
}

/// Finds the rpyc package `from` names: a package directory, a directory
/// holding `rpyc/`, or a Python interpreter to ask.
async fn locate_rpyc(from: &Path) -> Result<PathBuf> {
    let shown = from.display();
    let meta = std::fs::metadata(from)
        .map_err(|e| Error::Transport(format!("deploy: cannot use {shown} as the rpyc to upload: {e}")))?;
    if meta.is_dir() {
        if from.join("__init__.py").is_file() && from.join("core").is_dir() {
            return Ok(from.to_path_buf());
        }
        if from.join("rpyc/__init__.py").is_file() {
            return Ok(from.join("rpyc"));
        }
        return Err(Error::Transport(format!(
            "deploy: {shown} is neither an rpyc package directory (with __init__.py and core/) nor a \
             site-packages directory holding one"
        )));
    }
    let mut ask = tokio::process::Command::new(from);
    ask.args(["-c", "import os, rpyc; print(os.path.dirname(os.path.abspath(rpyc.__file__)))"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), ask.output())
        .await
        .map_err(|_| Error::Transport(format!("deploy: {shown} did not say where its rpyc is within 30 s")))?
        .map_err(|e| Error::Transport(format!("deploy: cannot run {shown} to find its rpyc: {e}")))?;
    if !out.status.success() {
        return Err(Error::Transport(format!(
            "deploy: {shown} cannot import rpyc ({}): give a Python that has it, or the package directory",
            String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("no message")
        )));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The rpyc package as the bootstrap's archive: zlib over records of
/// (u32 path length, path, u32 data length, data), paths `rpyc/…`.
async fn pack_rpyc(from: &Path) -> Result<Vec<u8>> {
    let package = locate_rpyc(from).await?;
    tokio::task::spawn_blocking(move || {
        let mut files = Vec::new();
        collect(&package, "rpyc", &mut files)?;
        if files.is_empty() {
            return Err(Error::Transport(format!("deploy: {} holds no Python files", package.display())));
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        for (name, path) in files {
            let data = std::fs::read(&path)
                .map_err(|e| Error::Transport(format!("deploy: cannot read {}: {e}", path.display())))?;
            let too_big = || Error::Transport(format!("deploy: {} is too large to upload", path.display()));
            let name_len = u32::try_from(name.len()).map_err(|_| too_big())?;
            let data_len = u32::try_from(data.len()).map_err(|_| too_big())?;
            z.write_all(&name_len.to_be_bytes())?;
            z.write_all(name.as_bytes())?;
            z.write_all(&data_len.to_be_bytes())?;
            z.write_all(&data)?;
        }
        let archive = z.finish()?;
        if archive.len() > MAX_UPLOAD {
            return Err(Error::Transport(format!(
                "deploy: the rpyc package at {} compresses to {} bytes, over the {MAX_UPLOAD}-byte upload limit",
                package.display(),
                archive.len()
            )));
        }
        Ok(archive)
    })
    .await
    .map_err(|e| Error::Transport(format!("deploy: packing rpyc failed: {e}")))?
}

/// Regular files under `dir` as (archive name, path); no `__pycache__`,
/// no compiled files, no symbolic links.
fn collect(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::Transport(format!("deploy: cannot read {}: {e}", dir.display())))?;
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let Ok(name) = entry.file_name().into_string() else { continue };
        let Ok(kind) = entry.file_type() else { continue };
        if name == "__pycache__" || name.ends_with(".pyc") || name.starts_with('.') {
            continue;
        }
        let archive_name = format!("{prefix}/{name}");
        if kind.is_dir() {
            collect(&entry.path(), &archive_name, out)?;
        } else if kind.is_file() {
            out.push((archive_name, entry.path()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        let cmd = remote_command(&DeployOptions::new().python("/opt/py thon/bin/python3"));
        assert!(cmd.contains("'/opt/py thon/bin/python3' -c '"), "{cmd}");
        assert!(cmd.contains("mktemp -d") && cmd.contains("rm -rf"), "{cmd}");
        assert!(!BOOTSTRAP.contains('\''), "the bootstrap is quoted with single quotes; keep it free of them");
    }

    #[test]
    fn the_archive_skips_compiled_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("core/__pycache__")).unwrap();
        std::fs::write(dir.path().join("__init__.py"), "x = 1\n").unwrap();
        std::fs::write(dir.path().join("core/stream.py"), "y = 2\n").unwrap();
        std::fs::write(dir.path().join("core/__pycache__/stream.cpython-311.pyc"), "junk").unwrap();
        let mut files = Vec::new();
        collect(dir.path(), "rpyc", &mut files).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["rpyc/__init__.py", "rpyc/core/stream.py"]);
    }
}
