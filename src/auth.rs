//! Layer 2: the authenticator hook.
//!
//! An [`Authenticator`] runs on every accepted stream before a single RPyC
//! frame is read (Python: `rpyc/utils/authenticators.py`). It may wrap the
//! stream and returns the peer's [`Credentials`], or refuses the connection;
//! the reason is logged, never sent. The server enforces a deadline, so a
//! peer that stalls during authentication is dropped.

use crate::connection::handler::BoxFuture;
use crate::identity::Credentials;
use crate::transport::BoxStream;
use std::sync::Arc;
use thiserror::Error;

/// Why a peer was refused.
#[derive(Debug, Error)]
#[error("authentication failed: {0}")]
pub struct AuthError(pub String);

/// Decides who the peer is before the RPC connection starts.
pub trait Authenticator: Send + Sync + 'static {
    /// Inspects (and possibly wraps) the stream; `creds` holds what the
    /// transport already established (peer address, TLS certificate…).
    fn authenticate(&self, stream: BoxStream, creds: Credentials) -> BoxFuture<Result<(BoxStream, Credentials), AuthError>>;
}

/// Accepts everyone with the transport's credentials. For development and
/// for transports that authenticate by themselves.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate(&self, stream: BoxStream, creds: Credentials) -> BoxFuture<Result<(BoxStream, Credentials), AuthError>> {
        Box::pin(std::future::ready(Ok((stream, creds))))
    }
}

impl<A: Authenticator + ?Sized> Authenticator for Arc<A> {
    fn authenticate(&self, stream: BoxStream, creds: Credentials) -> BoxFuture<Result<(BoxStream, Credentials), AuthError>> {
        (**self).authenticate(stream, creds)
    }
}
