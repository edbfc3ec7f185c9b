//! Pipes: RPyC over a child process's stdin/stdout, and over our own
//! (mirrors `rpyc/core/stream.py`'s `PipeStream` and
//! `rpyc/utils/factory.py`'s `connect_subproc` / `connect_stdpipes`).
//!
//! # Why
//!
//! A server that speaks RPyC on its standard streams needs no port, no
//! socket file and no authentication: only the process that started it can
//! talk to it, and it ends with its parent. That is how Python's
//! `rpyc.classic.connect_subproc()` runs `rpyc_classic.py -m stdio`, and how
//! [`crate::deploy`] runs a server at the far end of an SSH exec channel.
//!
//! [`spawn`] starts a program and returns a [`ChildStream`] over its
//! stdin/stdout; its stderr stays a log channel (inherited by default).
//! [`stdio`] is this process's own stdin/stdout (what `rpyc serve --stdio`
//! serves on). Both are ordinary [`Stream`](super::Stream)s: the frame and
//! connection limits are the same as over sockets.
//!
//! # Lifetime
//!
//! * The program exiting ends the connection, and the reason carries its
//!   exit status (`"… exited with exit status: 3"`), not a bare end of file.
//! * Dropping the stream (the connection closing) closes the program's
//!   stdin, gives it [`PipeOptions::exit_grace`] to exit on its own, then
//!   kills it, and reaps it either way: no zombie, no orphan.

use crate::error::{Error, Result};
use crate::identity::{Credentials, PeerAddr, TransportKind};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::{oneshot, watch};

/// How a child process is run and ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PipeOptions {
    /// After the connection closes (the child's stdin is closed), how long
    /// the child may take to exit by itself before it is killed. Default:
    /// 2 s — a server that sees end of file exits at once; one that does
    /// not must not outlive its client by more than that.
    pub exit_grace: Duration,
    /// Pass the child's stderr through to ours. Default: true (stderr is
    /// its log channel). False discards it.
    pub inherit_stderr: bool,
}

impl Default for PipeOptions {
    fn default() -> Self {
        PipeOptions { exit_grace: Duration::from_secs(2), inherit_stderr: true }
    }
}

/// The stdin/stdout of a child process as one byte stream (see the module
/// docs). Cheap to move into a connection; the child dies with it.
pub struct ChildStream {
    stdout: ChildStdout,
    stdin: Option<ChildStdin>,
    exit: ExitWatch,
    /// Dropped with the stream: tells the reaper to end the child.
    _hangup: oneshot::Sender<()>,
}

impl fmt::Debug for ChildStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildStream").field("program", &self.exit.program).field("pid", &self.exit.pid).finish()
    }
}

/// What the reaper found, shared with the stream.
struct ExitWatch {
    program: String,
    pid: Option<u32>,
    status: watch::Receiver<Option<String>>,
    /// Set at end of file: waits (bounded) for the exit status.
    waiting: Option<Pin<Box<dyn Future<Output = String> + Send>>>,
    /// The exit status once reported (end of file repeats it).
    reported: Arc<Mutex<Option<String>>>,
}

/// Spawns `command` with piped stdin/stdout and returns the stream over
/// them, with credentials naming the program (transport
/// [`TransportKind::Other`], attribute `command`). Must be called inside a
/// tokio runtime.
pub fn spawn(command: std::process::Command, options: &PipeOptions) -> Result<(ChildStream, Credentials)> {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut command = tokio::process::Command::from(command);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(if options.inherit_stderr { Stdio::inherit() } else { Stdio::null() })
        // The last resort if the runtime ends before the reaper runs.
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| {
        Error::Connect(format!(
            "cannot start {program}: {e}{}",
            if e.kind() == io::ErrorKind::NotFound { " (is it installed and on PATH?)" } else { "" }
        ))
    })?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(Error::Connect(format!("cannot start {program}: its stdin/stdout were not piped")));
    };
    let pid = child.id();
    let (status_tx, status_rx) = watch::channel(None);
    let (hangup_tx, hangup_rx) = oneshot::channel::<()>();
    let grace = options.exit_grace;
    let name = program.clone();
    tokio::spawn(async move {
        let status = tokio::select! {
            st = child.wait() => st,
            _ = hangup_rx => {
                // The connection is gone and stdin is closed: a server
                // exits by itself; wait a little, then make sure.
                match tokio::time::timeout(grace, child.wait()).await {
                    Ok(st) => st,
                    Err(_) => {
                        tracing::debug!(program = %name, ?grace, "child did not exit after its stdin closed: killing it");
                        let _ = child.start_kill();
                        child.wait().await
                    }
                }
            }
        };
        let text = match status {
            Ok(st) => format!("{name} exited with {st}"),
            Err(e) => format!("{name} ended, but waiting for it failed: {e}"),
        };
        tracing::debug!(status = %text, "child process reaped");
        let _ = status_tx.send(Some(text));
    });
    let mut creds = Credentials::anonymous(TransportKind::Other, PeerAddr::Unknown);
    creds.attributes.insert("command".into(), program.clone());
    if let Some(pid) = pid {
        creds.attributes.insert("pid".into(), pid.to_string());
    }
    let exit = ExitWatch { program, pid, status: status_rx, waiting: None, reported: Arc::default() };
    Ok((ChildStream { stdout, stdin: Some(stdin), exit, _hangup: hangup_tx }, creds))
}

impl ChildStream {
    /// The child's process id (None once it has been reaped by the OS).
    pub fn pid(&self) -> Option<u32> {
        self.exit.pid
    }
}

impl AsyncRead for ChildStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stdout).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                // End of file: report how the program ended instead.
                let exit = &mut this.exit;
                if let Some(reason) = exit.reported.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, reason)));
                }
                let waiting = exit.waiting.get_or_insert_with(|| {
                    let mut rx = exit.status.clone();
                    let program = exit.program.clone();
                    Box::pin(async move {
                        let got = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(Option::is_some)).await;
                        match got {
                            Ok(Ok(st)) => st.clone().unwrap_or_default(),
                            _ => format!("{program} closed its stdout (and has not exited)"),
                        }
                    })
                });
                match waiting.as_mut().poll(cx) {
                    Poll::Ready(reason) => {
                        *exit.reported.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, reason)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            other => other,
        }
    }
}

impl AsyncWrite for ChildStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut().stdin.as_mut() {
            Some(stdin) => Pin::new(stdin).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stdin.as_mut() {
            Some(stdin) => Pin::new(stdin).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Closing stdin is the child's end of file.
        self.get_mut().stdin = None;
        Poll::Ready(Ok(()))
    }
}

/// This process's stdin and stdout as one stream (Python's
/// `PipeStream.from_std()`), for serving over pipes. Nothing else may
/// write to stdout while it is in use: log to stderr.
pub fn stdio() -> (tokio::io::Join<tokio::io::Stdin, tokio::io::Stdout>, Credentials) {
    let mut creds = Credentials::anonymous(TransportKind::Other, PeerAddr::Unknown);
    creds.attributes.insert("command".into(), "stdio".into());
    (tokio::io::join(tokio::io::stdin(), tokio::io::stdout()), creds)
}
