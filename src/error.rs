//! The error of the connection layer and everything above it.

use crate::channel::ChannelError;
use crate::wire::{ConvertError, Exception, Value};
use std::io;
use std::time::Duration;
use thiserror::Error;

/// Everything that can go wrong with an RPyC call or connection.
///
/// A failure on the other side is data: [`Error::Exception`] carries the
/// Python class, args and remote traceback.
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
    /// Connecting or another I/O operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// A transport or security layer failed (TLS, SSH, authentication).
    #[error("{0}")]
    Transport(String),
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

    /// The error as the exception a peer should see when a handler fails.
    pub fn into_exception(self) -> Exception {
        match self {
            Error::Exception(e) => e,
            Error::Timeout { .. } => Exception::new("TimeoutError", self.to_string()),
            Error::Closed(_) => Exception::new("EOFError", self.to_string()),
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
        Error::type_error(e.0)
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
