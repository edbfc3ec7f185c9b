//! SSH exec channels: run a command on the SSH server and use its
//! stdin/stdout as a byte stream (what `ssh host command` does), the
//! transport under [`crate::deploy`].
//!
//! The channel is pumped by one task: data from the command becomes the
//! stream's input, the stream's output becomes the command's stdin, and its
//! stderr is logged (or passed through) and its tail kept for error
//! messages. When the command ends, reading the stream fails with how it
//! ended ("exited with status 127: sh: 1: python9: not found") instead of a
//! bare end of file. Dropping the stream sends end of file to the
//! command's stdin, and closes the channel 3 s later if the command is
//! still running.

use super::SshSession;
use crate::error::{Error, Result};
use russh::ChannelMsg;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

/// Where the remote command's stderr goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteStderr {
    /// Each line is logged at info level (target `rpyc::remote`). The default.
    #[default]
    Log,
    /// Written to this process's stderr as it arrives.
    Inherit,
    /// Dropped (its tail is still kept for error messages).
    Discard,
}

/// How long a command may run on after its stdin ended before the channel
/// is closed under it.
const EOF_GRACE: Duration = Duration::from_secs(3);

/// The most stderr kept for error messages.
const STDERR_TAIL: usize = 4096;

/// Shared between the pump task and the stream's users.
#[derive(Default)]
struct ExecState {
    /// How the command or channel ended, once it has.
    ended: Mutex<Option<String>>,
    exit_status: Mutex<Option<u32>>,
    stderr: Mutex<VecDeque<u8>>,
    done: tokio::sync::Notify,
}

impl ExecState {
    fn stderr_tail(&self) -> String {
        let tail = lock(&self.stderr);
        let bytes: Vec<u8> = tail.iter().copied().collect();
        String::from_utf8_lossy(&bytes).trim().to_string()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A handle on a running exec channel that outlives its stream (the
/// stream moves into a connection): how it ended, its stderr.
#[derive(Clone)]
pub struct ExecHandle {
    state: Arc<ExecState>,
}

impl fmt::Debug for ExecHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecHandle").field("ended", &self.ended()).finish()
    }
}

impl ExecHandle {
    /// How the command ended ("exited with status 0", "killed by signal
    /// KILL", "the SSH session ended: …"), or `None` while it runs.
    pub fn ended(&self) -> Option<String> {
        lock(&self.state.ended).clone()
    }

    /// The command's exit status, if it reported one.
    pub fn exit_status(&self) -> Option<u32> {
        *lock(&self.state.exit_status)
    }

    /// The last few KiB of the command's stderr.
    pub fn stderr_tail(&self) -> String {
        self.state.stderr_tail()
    }

    /// Waits until the channel has closed.
    pub async fn wait(&self) {
        loop {
            let notified = self.state.done.notified();
            if self.ended().is_some() {
                return;
            }
            notified.await;
        }
    }
}

/// The stdin/stdout of a remote command as one byte stream.
pub struct ExecStream {
    inner: DuplexStream,
    handle: ExecHandle,
}

impl fmt::Debug for ExecStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecStream").field("handle", &self.handle).finish()
    }
}

impl ExecStream {
    /// A handle that stays valid after the stream moved into a connection.
    pub fn handle(&self) -> ExecHandle {
        self.handle.clone()
    }
}

/// What [`SshSession::exec`] collected.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExecOutput {
    /// The exit status (`None` if the command was killed by a signal).
    pub status: Option<u32>,
    /// Everything it wrote to stdout (at most 1 MiB).
    pub stdout: String,
    /// The tail of its stderr.
    pub stderr: String,
}

impl SshSession {
    /// Runs `command` on the SSH server (through the login user's shell, as
    /// `ssh host command` does) and returns its stdin/stdout as a stream.
    pub async fn exec_stream(&self, command: &str, stderr: RemoteStderr) -> Result<ExecStream> {
        let inner = &self.inner;
        if let Some(reason) = inner.state.close_reason() {
            return Err(self.closed_error(&reason));
        }
        let opened = tokio::time::timeout(inner.open_timeout, async {
            let channel = inner.handle.channel_open_session().await?;
            channel.exec(true, command).await?;
            Ok::<_, russh::Error>(channel)
        })
        .await;
        let channel = match opened {
            Ok(Ok(ch)) => ch,
            Ok(Err(russh::Error::SendError | russh::Error::Disconnect | russh::Error::RecvError)) => {
                let reason = inner.state.close_reason().unwrap_or_else(|| "the connection ended".into());
                return Err(self.closed_error(&reason));
            }
            Ok(Err(e)) => {
                return Err(Error::Ssh(format!("ssh: cannot run a command on {}: {e}", inner.server)));
            }
            Err(_) => {
                return Err(Error::Ssh(format!(
                    "ssh: {} did not open a session channel within {:?}",
                    inner.server, inner.open_timeout
                )))
            }
        };
        let (ours, theirs) = tokio::io::duplex(256 << 10);
        let state = Arc::new(ExecState::default());
        let (mut read_half, write_half) = channel.split();
        let (mut from_engine, mut to_engine) = tokio::io::split(theirs);
        // Engine → command's stdin; end of file when the engine lets go.
        let up = tokio::spawn(async move {
            let mut writer = write_half.make_writer();
            let _ = tokio::io::copy(&mut from_engine, &mut writer).await;
            let _ = writer.shutdown().await;
            let _ = write_half.eof().await;
            // A command that has not ended a while after its end of file
            // (busy, or ignoring stdin) gets the channel closed under it;
            // sshd then closes its pipes. The pump aborts this task first
            // when the command ends in time, so its exit status is kept.
            tokio::time::sleep(EOF_GRACE).await;
            let _ = write_half.close().await;
            // Keep the write half until the pump ends.
            std::future::pending::<()>().await;
        });
        let session = self.clone();
        let pump_state = state.clone();
        let server = inner.server.clone();
        tokio::spawn(async move {
            let mut exit: Option<String> = None;
            let mut line = Vec::new();
            let mut engine_gone = false;
            while let Some(msg) = read_half.wait().await {
                match msg {
                    // After the connection is gone, keep draining until the command ends.
                    ChannelMsg::Data { data } if !engine_gone => {
                        engine_gone = to_engine.write_all(&data).await.is_err();
                    }
                    ChannelMsg::ExtendedData { data, .. } => {
                        {
                            let mut tail = lock(&pump_state.stderr);
                            tail.extend(data.iter().copied());
                            let excess = tail.len().saturating_sub(STDERR_TAIL);
                            tail.drain(..excess);
                        }
                        match stderr {
                            RemoteStderr::Inherit => {
                                use std::io::Write;
                                let _ = std::io::stderr().lock().write_all(&data);
                            }
                            RemoteStderr::Log => {
                                line.extend_from_slice(&data);
                                while let Some(pos) = line.iter().position(|b| *b == b'\n') {
                                    let text: Vec<u8> = line.drain(..=pos).collect();
                                    let text = String::from_utf8_lossy(&text);
                                    tracing::info!(target: "rpyc::remote", server = %server, "{}", text.trim_end());
                                }
                                if line.len() > STDERR_TAIL {
                                    line.clear();
                                }
                            }
                            RemoteStderr::Discard => {}
                        }
                    }
                    ChannelMsg::ExitStatus { exit_status } => {
                        *lock(&pump_state.exit_status) = Some(exit_status);
                        exit = Some(format!("exited with status {exit_status}"));
                    }
                    ChannelMsg::ExitSignal { signal_name, error_message, .. } => {
                        let msg = if error_message.is_empty() { String::new() } else { format!(" ({error_message})") };
                        exit = Some(format!("was killed by signal {signal_name:?}{msg}"));
                    }
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            let mut reason = match exit {
                Some(how) => format!("the remote command {how}"),
                None => match session.close_reason() {
                    Some(why) => format!("the SSH session to {server} ended: {why}"),
                    None => format!("the SSH channel to {server} closed"),
                },
            };
            let failed = *lock(&pump_state.exit_status) != Some(0);
            let tail = pump_state.stderr_tail();
            if failed && !tail.is_empty() {
                let last: Vec<&str> = tail.lines().map(str::trim).filter(|l| !l.is_empty()).rev().take(5).collect();
                let last: Vec<&str> = last.into_iter().rev().collect();
                reason.push_str(&format!("; its stderr ended with: {}", last.join(" | ")));
            }
            tracing::debug!(%server, %reason, "ssh exec channel ended");
            *lock(&pump_state.ended) = Some(reason);
            pump_state.done.notify_waiters();
            let _ = to_engine.shutdown().await;
            up.abort();
            drop(session);
        });
        Ok(ExecStream { inner: ours, handle: ExecHandle { state } })
    }

    /// Runs `command` to completion (bounded by `timeout`) and returns its
    /// exit status, stdout and the tail of its stderr. Its stdin is empty.
    pub async fn exec(&self, command: &str, timeout: Duration) -> Result<ExecOutput> {
        use tokio::io::AsyncReadExt;
        let mut stream = self.exec_stream(command, RemoteStderr::Discard).await?;
        let handle = stream.handle();
        let run = async {
            let _ = stream.inner.shutdown().await;
            let mut out = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                match stream.inner.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if out.len() < (1 << 20) {
                            out.extend_from_slice(buf.get(..n).unwrap_or_default());
                        }
                    }
                }
            }
            handle.wait().await;
            out
        };
        let out = tokio::time::timeout(timeout, run).await.map_err(|_| {
            Error::Ssh(format!("ssh: {command:?} on {} did not finish within {timeout:?}", self.server()))
        })?;
        Ok(ExecOutput {
            status: handle.exit_status(),
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: handle.stderr_tail(),
        })
    }
}

impl AsyncRead for ExecStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                // The pump records how the command ended before closing.
                match this.handle.ended() {
                    Some(reason) => Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, reason))),
                    None => Poll::Ready(Ok(())),
                }
            }
            other => other,
        }
    }
}

impl AsyncWrite for ExecStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
