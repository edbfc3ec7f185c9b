//! The error of the connection layer and everything above it.

use crate::channel::ChannelError;
use crate::wire::{ConvertError, Exception, Value};
use std::io;
use std::time::Duration;
use thiserror::Error;

/// Everything that can go wrong with an RPyC call or connection.
///
/// A failure on the other side is data: [`Error::Exception`] carries the
/// Python class, args and remote traceback. Programs branch on kinds with
/// [`Error::is_connect`], [`Error::is_timeout`], [`Error::is_tls`],
/// [`Error::is_ssh`], [`Error::is_auth`], [`Error::is_closed`],
/// [`Error::is_remote`] and [`Error::is_conversion`]; the text says what
/// went wrong and what to do.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer raised an exception (or a local service handler raises one).
    #[error("{0}")]
    Exception(Exception),
    /// No reply arrived in time.
    #[error(
        "{handler} request got no reply within {timeout:?}; the peer may be busy or stuck \
         (raise sync_request_timeout if the call is expected to take longer)"
    )]
    Timeout {
        /// The handler name, e.g. `CALLATTR`.
        handler: &'static str,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// The connection is closed (locally, by the peer, or lost).
    #[error("connection closed: {0}")]
    Closed(String),
    /// Framing failed (oversized frame, bad compression…).
    #[error("channel error: {0}")]
    Channel(#[from] ChannelError),
    /// The peer sent something that is not valid RPyC.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// An I/O operation failed outside connecting (see [`Error::Connect`]).
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// A transport layer failed in another way (a malformed address, a
    /// listener that cannot bind, a pipe or deploy step).
    #[error("{0}")]
    Transport(String),
    /// The peer could not be reached: connection refused or reset, no
    /// route, a name that does not resolve, a program that cannot start.
    #[error("{0}")]
    Connect(String),
    /// Connecting (TCP, TLS or SSH handshake, authentication exchange) took
    /// longer than its deadline.
    #[error("{0}")]
    ConnectTimeout(String),
    /// TLS failed: a certificate file, the handshake, or the peer's
    /// certificate.
    #[error("{0}")]
    Tls(String),
    /// SSH failed: the session, host key checking, a channel.
    #[error("{0}")]
    Ssh(String),
    /// Authentication was refused: a client certificate, an SSH key, a
    /// challenge–response secret.
    #[error("{0}")]
    Auth(String),
    /// A value received could not be converted to the Rust type asked for
    /// (`call_method::<String>` on an `int`): a local error, not the
    /// peer's.
    #[error("cannot convert the result: {0}")]
    Conversion(String),
    /// A service or class definition is wrong (a malformed method
    /// signature, or one that does not match its closure); found when it
    /// is built.
    #[error("invalid service definition: {0}")]
    Definition(String),
}

impl Error {
    /// The remote exception, if this error is one.
    pub fn exception(&self) -> Option<&Exception> {
        match self {
            Error::Exception(e) => Some(e),
            _ => None,
        }
    }

    /// True if this is a remote exception of the given builtin class.
    pub fn is_exception(&self, class: &str) -> bool {
        self.exception().is_some_and(|e| e.is(class))
    }

    /// True if the peer could not be reached (refused, unresolvable,
    /// timed out while connecting) — worth retrying elsewhere.
    pub fn is_connect(&self) -> bool {
        match self {
            Error::Connect(_) | Error::ConnectTimeout(_) => true,
            Error::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::NotFound
                    | io::ErrorKind::AddrNotAvailable
                    | io::ErrorKind::TimedOut
            ),
            _ => false,
        }
    }

    /// True if a deadline passed: a request without a reply in time, or a
    /// connection attempt.
    pub fn is_timeout(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::ConnectTimeout(_) => true,
            Error::Io(e) => e.kind() == io::ErrorKind::TimedOut,
            _ => false,
        }
    }

    /// True if TLS failed (certificates, handshake, verification).
    pub fn is_tls(&self) -> bool {
        matches!(self, Error::Tls(_))
    }

    /// True if SSH failed (session, host key, channel).
    pub fn is_ssh(&self) -> bool {
        matches!(self, Error::Ssh(_))
    }

    /// True if authentication was refused (by either side).
    pub fn is_auth(&self) -> bool {
        matches!(self, Error::Auth(_))
    }

    /// True if the connection is closed (locally, by the peer, or lost).
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Closed(_))
    }

    /// True if the peer raised an exception (see [`Error::exception`]).
    pub fn is_remote(&self) -> bool {
        matches!(self, Error::Exception(_))
    }

    /// True if a received value did not convert to the Rust type asked for.
    pub fn is_conversion(&self) -> bool {
        matches!(self, Error::Conversion(_))
    }

    /// The error as the exception a peer should see when a handler fails.
    pub fn into_exception(self) -> Exception {
        match self {
            Error::Exception(e) => e,
            Error::Timeout { .. } => Exception::new("TimeoutError", self.to_string()),
            Error::Closed(_) => Exception::new("EOFError", self.to_string()),
            Error::Conversion(m) => Exception::type_error(m),
            other => Exception::new("RuntimeError", other.to_string()),
        }
    }

    /// A `TypeError` with a message.
    pub fn type_error(msg: impl Into<String>) -> Error {
        Error::Exception(Exception::type_error(msg))
    }

    /// An `AttributeError` with a message.
    pub fn attribute_error(msg: impl Into<String>) -> Error {
        Error::Exception(Exception::attribute_error(msg))
    }

    /// A `ValueError` with a message.
    pub fn value_error(msg: impl Into<String>) -> Error {
        Error::Exception(Exception::value_error(msg))
    }

    /// Python's refusal for a name the policy hides: the same text whether or
    /// not the name exists.
    pub fn cannot_access(name: &str) -> Error {
        Error::attribute_error(format!("cannot access {}", Value::from(name).repr()))
    }
}

impl From<Exception> for Error {
    fn from(e: Exception) -> Error {
        Error::Exception(e)
    }
}

impl From<ConvertError> for Error {
    fn from(e: ConvertError) -> Error {
        Error::Conversion(e.0)
    }
}

/// `Result` with [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
