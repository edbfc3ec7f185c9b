//! `AsyncResult`: RPyC's handle for a request whose reply is awaited later
//! (mirrors `rpyc/core/async_.py`).
//!
//! Every call is already a Rust future; this type exists for code ported from
//! Python that polls `ready`, sets an expiry, or registers callbacks.

use super::object::Object;
use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

type Callback = Box<dyn FnOnce(&Result<Object>) + Send>;

struct State {
    result: Option<Result<Object>>,
    callbacks: Vec<Callback>,
    deadline: Option<Instant>,
}

struct Inner {
    state: Mutex<State>,
    notify: Notify,
}

/// A pending or completed request.
#[derive(Clone)]
pub struct AsyncResult {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AsyncResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.ready() {
            "ready"
        } else if self.expired() {
            "expired"
        } else {
            "pending"
        };
        write!(f, "<AsyncResult ({state})>")
    }
}

fn clone_result(r: &Result<Object>) -> Result<Object> {
    match r {
        Ok(o) => Ok(o.clone()),
        Err(Error::Exception(e)) => Err(Error::Exception(e.clone())),
        Err(Error::Timeout { handler, timeout }) => Err(Error::Timeout { handler, timeout: *timeout }),
        Err(Error::Closed(s)) => Err(Error::Closed(s.clone())),
        Err(other) => Err(Error::Closed(other.to_string())),
    }
}

impl AsyncResult {
    pub(crate) fn pending() -> AsyncResult {
        AsyncResult {
            inner: Arc::new(Inner {
                state: Mutex::new(State { result: None, callbacks: Vec::new(), deadline: None }),
                notify: Notify::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn complete(&self, result: Result<Object>) {
        let callbacks = {
            let mut st = self.lock();
            if st.result.is_some() || st.deadline.is_some_and(|d| Instant::now() >= d) {
                // Like Python: a result arriving after expiry is dropped.
                return;
            }
            st.result = Some(result);
            std::mem::take(&mut st.callbacks)
        };
        let st = self.lock();
        if let Some(r) = &st.result {
            let r = clone_result(r);
            drop(st);
            for cb in callbacks {
                cb(&r);
            }
        }
        self.inner.notify.notify_waiters();
    }

    /// True once the reply has arrived.
    pub fn ready(&self) -> bool {
        self.lock().result.is_some()
    }

    /// True if the reply arrived and is an error.
    pub fn error(&self) -> bool {
        matches!(self.lock().result, Some(Err(_)))
    }

    /// True if the expiry passed before the reply arrived.
    pub fn expired(&self) -> bool {
        let st = self.lock();
        st.result.is_none() && st.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Sets the expiry relative to now (`None` waits forever).
    pub fn set_expiry(&self, timeout: Option<Duration>) {
        self.lock().deadline = timeout.map(|t| Instant::now() + t);
        self.inner.notify.notify_waiters();
    }

    /// Registers a callback, run when the reply arrives (at once if it has).
    pub fn add_callback(&self, f: impl FnOnce(&Result<Object>) + Send + 'static) {
        let mut st = self.lock();
        match &st.result {
            Some(r) => {
                let r = clone_result(r);
                drop(st);
                f(&r);
            }
            None => st.callbacks.push(Box::new(f)),
        }
    }

    /// Waits for the reply; fails with a timeout if the expiry passes first.
    pub async fn wait(&self) -> Result<()> {
        loop {
            let notified = self.inner.notify.notified();
            let deadline = {
                let st = self.lock();
                if st.result.is_some() {
                    return Ok(());
                }
                st.deadline
            };
            match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(Error::Timeout { handler: "async", timeout: Duration::ZERO });
                    }
                    let _ = tokio::time::timeout(d - now, notified).await;
                }
                None => notified.await,
            }
        }
    }

    /// Waits for and returns the result (RPyC's `.value`).
    pub async fn value(&self) -> Result<Object> {
        self.wait().await.map_err(|_| Error::Timeout { handler: "async", timeout: Duration::ZERO })?;
        match &self.lock().result {
            Some(r) => clone_result(r),
            None => Err(Error::Closed("result vanished".into())),
        }
    }
}
