//! Netrefs: Rust proxies for objects that live on the peer
//! (mirrors `rpyc/core/netref.py`).
//!
//! A proxy is reference counted like Python's: every time the peer sends the
//! same object again, the existing proxy's count goes up, and when the last
//! clone of the proxy is dropped one `DEL(obj, count)` tells the peer to
//! release that many references.

use super::handler::{IntoArgs, Kwargs};
use super::object::Object;
use super::{Connection, Shared};
use crate::error::{Error, Result};
use crate::wire::message::Handler;
use crate::wire::{IdPack, Value};
use serde::de::DeserializeOwned;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub(crate) struct NetrefInner {
    pub(crate) conn: Arc<Shared>,
    pub(crate) id_pack: IdPack,
    pub(crate) refcount: AtomicU64,
}

impl Drop for NetrefInner {
    fn drop(&mut self) {
        let count = self.refcount.load(Ordering::Relaxed);
        self.conn.forget_proxy(&self.id_pack, count);
        // A proxy keeps its connection open, as in Python.
        self.conn.release_handle();
    }
}

/// A proxy for an object on the peer. Cloning is cheap; the peer's object is
/// released when the last clone is dropped. Like a [`Connection`] handle, a
/// live proxy keeps its connection open.
#[derive(Clone)]
pub struct Netref(pub(crate) Arc<NetrefInner>);

impl fmt::Debug for Netref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Netref({}, id {})", self.0.id_pack.class_name, self.0.id_pack.instance_id)
    }
}

fn kwargs_value(kwargs: Vec<(String, Object)>) -> Object {
    Object::Tuple(kwargs.into_iter().map(|(k, v)| Object::Tuple(vec![Object::Value(Value::Str(k)), v])).collect())
}

impl Netref {
    /// The remote class name from the id-pack (e.g. `"builtins.list"`).
    pub fn class_name(&self) -> &str {
        &self.0.id_pack.class_name
    }

    /// The id-pack the peer gave this object.
    pub fn id_pack(&self) -> &IdPack {
        &self.0.id_pack
    }

    /// The connection this proxy belongs to.
    pub fn connection(&self) -> Connection {
        Connection::from_shared(self.0.conn.clone())
    }

    async fn req(&self, handler: Handler, mut rest: Vec<Object>) -> Result<Object> {
        rest.insert(0, Object::Remote(self.clone()));
        self.0.conn.request(handler, rest).await
    }

    /// `getattr(obj, name)`.
    pub async fn getattr(&self, name: &str) -> Result<Object> {
        self.req(Handler::GetAttr, vec![Value::from(name).into()]).await
    }

    /// `setattr(obj, name, value)`.
    pub async fn setattr(&self, name: &str, value: impl super::handler::IntoObject) -> Result<()> {
        self.req(Handler::SetAttr, vec![Value::from(name).into(), value.into_object()?]).await.map(|_| ())
    }

    /// `delattr(obj, name)`.
    pub async fn delattr(&self, name: &str) -> Result<()> {
        self.req(Handler::DelAttr, vec![Value::from(name).into()]).await.map(|_| ())
    }

    /// `obj(*args)`.
    pub async fn call(&self, args: impl IntoArgs) -> Result<Object> {
        self.call_kw(args, Kwargs::new()).await
    }

    /// `obj(*args, **kwargs)`.
    pub async fn call_kw(&self, args: impl IntoArgs, kwargs: impl Into<Kwargs>) -> Result<Object> {
        let args = Object::Tuple(args.into_args()?);
        self.req(Handler::Call, vec![args, kwargs_value(kwargs.into().0)]).await
    }

    /// `obj.name(*args)` in one round trip.
    pub async fn callattr(&self, name: &str, args: impl IntoArgs) -> Result<Object> {
        self.callattr_kw(name, args, Kwargs::new()).await
    }

    /// `obj.name(*args, **kwargs)` in one round trip.
    pub async fn callattr_kw(&self, name: &str, args: impl IntoArgs, kwargs: impl Into<Kwargs>) -> Result<Object> {
        let args = Object::Tuple(args.into_args()?);
        self.req(Handler::CallAttr, vec![Value::from(name).into(), args, kwargs_value(kwargs.into().0)]).await
    }

    /// Calls a method and converts the result.
    pub async fn call_method<T: DeserializeOwned>(&self, name: &str, args: impl IntoArgs) -> Result<T> {
        self.callattr(name, args).await?.extract()
    }

    /// `repr(obj)`.
    pub async fn repr(&self) -> Result<String> {
        self.req(Handler::Repr, vec![]).await?.extract()
    }

    /// `str(obj)`.
    pub async fn str(&self) -> Result<String> {
        self.req(Handler::Str, vec![]).await?.extract()
    }

    /// `dir(obj)`.
    pub async fn dir(&self) -> Result<Vec<String>> {
        self.req(Handler::Dir, vec![]).await?.extract()
    }

    /// `hash(obj)`.
    pub async fn hash(&self) -> Result<i64> {
        self.req(Handler::Hash, vec![]).await?.extract()
    }

    /// A rich comparison: `op` is `"__eq__"`, `"__lt__"`, … (the result may be
    /// `NotImplemented`).
    pub async fn cmp(&self, other: impl super::handler::IntoObject, op: &str) -> Result<Object> {
        self.req(Handler::Cmp, vec![other.into_object()?, Value::from(op).into()]).await
    }

    /// `len(obj)`.
    pub async fn len(&self) -> Result<usize> {
        self.call_method("__len__", ()).await
    }

    /// `obj[key]`.
    pub async fn getitem(&self, key: impl super::handler::IntoObject) -> Result<Object> {
        self.callattr("__getitem__", (key,)).await
    }

    /// `obj[key] = value`.
    pub async fn setitem(
        &self,
        key: impl super::handler::IntoObject,
        value: impl super::handler::IntoObject,
    ) -> Result<()> {
        self.callattr("__setitem__", (key, value)).await.map(|_| ())
    }

    /// `key in obj`.
    pub async fn contains(&self, key: impl super::handler::IntoObject) -> Result<bool> {
        self.call_method("__contains__", (key,)).await
    }

    /// `iter(obj)`, consumed in batches of `batch` items per round trip
    /// (RPyC's BUFFITER).
    pub async fn iter(&self, batch: usize) -> Result<RemoteIter> {
        let it = self.callattr("__iter__", ()).await?.into_netref()?;
        Ok(RemoteIter { it, batch: batch.max(1), buffer: std::collections::VecDeque::new(), done: false, fetch: None })
    }

    /// Iterates the whole remote iterable and collects the items.
    pub async fn to_vec(&self) -> Result<Vec<Object>> {
        let mut it = self.iter(256).await?;
        let mut out = Vec::new();
        while let Some(item) = it.next().await? {
            out.push(item);
        }
        Ok(out)
    }

    /// Copies a remote iterable (list, tuple, set, generator, dict keys…)
    /// into a Rust collection `T`: `get::<Vec<String>>()`,
    /// `get::<Vec<(String, i64)>>()`, `get::<BTreeSet<i64>>()`. Items are
    /// fetched in batches (BUFFITER); each must convert to `T`'s item type.
    pub async fn get<T: DeserializeOwned>(&self) -> Result<T> {
        Object::Tuple(self.to_vec().await?).extract()
    }

    /// `obj.__exit__(exc)` — the context-manager exit (RPyC's CTXEXIT).
    pub async fn exit(&self, exc: Option<Object>) -> Result<Object> {
        self.req(Handler::CtxExit, vec![exc.unwrap_or_else(Object::none)]).await
    }

    /// The remote object's method names and docs (RPyC's INSPECT).
    pub async fn inspect(&self) -> Result<Vec<(String, Option<String>)>> {
        let v = self.0.conn.request(Handler::Inspect, vec![Object::Value(self.0.id_pack.to_value())]).await?;
        v.extract()
    }

    /// Starts `obj(*args)` without waiting: RPyC's `async_`.
    pub fn async_call(&self, args: impl IntoArgs) -> Result<super::AsyncResult> {
        let args = Object::Tuple(args.into_args()?);
        Ok(self.0.conn.async_request(Handler::Call, vec![Object::Remote(self.clone()), args, kwargs_value(vec![])]))
    }

    /// Starts `obj.name(*args)` without waiting.
    pub fn async_callattr(&self, name: &str, args: impl IntoArgs) -> Result<super::AsyncResult> {
        let args = Object::Tuple(args.into_args()?);
        Ok(self.0.conn.async_request(
            Handler::CallAttr,
            vec![Object::Remote(self.clone()), Value::from(name).into(), args, kwargs_value(vec![])],
        ))
    }
}

/// An iterator over a remote iterable, fetching items in batches
/// (BUFFITER). Use [`RemoteIter::next`], or use it as a
/// [`futures_core::Stream`] of `Result<Object>` (with `StreamExt` from
/// `futures` or `tokio-stream`: `.map`, `.take`, `.collect`…).
pub struct RemoteIter {
    it: Netref,
    batch: usize,
    buffer: std::collections::VecDeque<Object>,
    done: bool,
    /// The BUFFITER request in flight, while polled as a stream.
    fetch: Option<super::handler::BoxFuture<Result<Object>>>,
}

impl RemoteIter {
    /// The next item, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Object>> {
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut *self).poll_item(cx)).await.transpose()
    }

    fn poll_item(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<Object>>> {
        use std::task::Poll;
        loop {
            if let Some(x) = self.buffer.pop_front() {
                return Poll::Ready(Some(Ok(x)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            let fetch = self.fetch.get_or_insert_with(|| {
                let (it, batch) = (self.it.clone(), self.batch);
                Box::pin(async move {
                    let args = vec![Object::Remote(it.clone()), Value::from(batch).into()];
                    it.0.conn.request(Handler::BuffIter, args).await
                })
            });
            let got = match fetch.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r,
            };
            self.fetch = None;
            let items: Vec<Object> = match got {
                Ok(Object::Tuple(items)) => items,
                Ok(Object::Value(Value::Tuple(items))) => items.into_iter().map(Object::Value).collect(),
                Ok(other) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(Error::Protocol(format!("BUFFITER returned {}", other.describe())))));
                }
                Err(e) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            };
            if items.len() < self.batch {
                self.done = true;
            }
            self.buffer.extend(items);
        }
    }
}

impl futures_core::Stream for RemoteIter {
    type Item = Result<Object>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Object>>> {
        self.poll_item(cx)
    }
}
