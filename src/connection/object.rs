//! Objects that cross a connection, and Rust objects served by reference.
//!
//! [`Object`] is what a call takes and returns: a brine [`Value`], a tuple
//! that holds references, a proxy for an object on the peer ([`Netref`]), or
//! one of our own objects ([`Instance`]) that the peer will see as a proxy.
//!
//! A Rust object served by reference is an [`Instance`]: some state plus a
//! [`Class`] that lists its members. Members are *exposed* (reachable by
//! default, like Python's `exposed_` names) or *plain* (reachable only as the
//! [`AccessPolicy`](crate::policy::AccessPolicy) allows; dunders such as
//! `__len__` are plain and reachable through `safe_attrs`).

use super::handler::{AsyncHandler, Call, CallFn, Signature, SyncHandler};
use super::netref::Netref;
use crate::error::{Error, Result};
use crate::policy::Visibility;
use crate::wire::{from_value, Value};
use serde::de::DeserializeOwned;
use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Anything that crosses a connection.
#[derive(Clone)]
pub enum Object {
    /// Sent by value.
    Value(Value),
    /// A tuple holding at least one reference.
    Tuple(Vec<Object>),
    /// A proxy for an object living on the peer.
    Remote(Netref),
    /// One of our objects, sent by reference.
    Local(Arc<Instance>),
}

impl fmt::Debug for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Value(v) => write!(f, "Value({})", v.repr()),
            Object::Tuple(t) => f.debug_tuple("Tuple").field(t).finish(),
            Object::Remote(n) => write!(f, "Remote({})", n.class_name()),
            Object::Local(i) => write!(f, "Local({})", i.class.name),
        }
    }
}

impl Object {
    /// Python `None`.
    pub fn none() -> Object {
        Object::Value(Value::None)
    }

    /// Converts into a Rust type. A tuple holding references converts only
    /// when the target is built from values.
    pub fn extract<T: DeserializeOwned>(self) -> Result<T> {
        match self.into_value() {
            Ok(v) => Ok(from_value(v)?),
            Err(o) => Err(Error::type_error(format!("expected a value, got {}", o.describe()))),
        }
    }

    /// The value, if this is one (tuples of plain values included).
    pub fn into_value(self) -> std::result::Result<Value, Object> {
        match self {
            Object::Value(v) => Ok(v),
            Object::Tuple(items) => {
                if items.iter().all(|i| matches!(i, Object::Value(_) | Object::Tuple(_))) {
                    let mut out = Vec::with_capacity(items.len());
                    let mut iter = items.into_iter();
                    while let Some(item) = iter.next() {
                        match item.into_value() {
                            Ok(v) => out.push(v),
                            Err(bad) => {
                                // Rebuild the tuple we were consuming.
                                let mut rest: Vec<Object> = out.into_iter().map(Object::Value).collect();
                                rest.push(bad);
                                rest.extend(iter);
                                return Err(Object::Tuple(rest));
                            }
                        }
                    }
                    Ok(Value::Tuple(out))
                } else {
                    Err(Object::Tuple(items))
                }
            }
            other => Err(other),
        }
    }

    /// Borrows the value, if this is a plain value.
    pub fn as_value(&self) -> Option<&Value> {
        match self {
            Object::Value(v) => Some(v),
            _ => None,
        }
    }

    /// Borrows the proxy, if this is a remote object.
    pub fn as_netref(&self) -> Option<&Netref> {
        match self {
            Object::Remote(n) => Some(n),
            _ => None,
        }
    }

    /// The proxy, or a `TypeError` naming what it was instead.
    pub fn into_netref(self) -> Result<Netref> {
        match self {
            Object::Remote(n) => Ok(n),
            other => Err(Error::type_error(format!("expected a remote object, got {}", other.describe()))),
        }
    }

    /// True for Python `None`.
    pub fn is_none(&self) -> bool {
        matches!(self, Object::Value(Value::None))
    }

    /// A short description for error messages (`"int"`, `"remote builtins.list"` …).
    pub fn describe(&self) -> String {
        match self {
            Object::Value(v) => v.type_name().to_string(),
            Object::Tuple(_) => "tuple".to_string(),
            Object::Remote(n) => format!("remote {}", n.class_name()),
            Object::Local(i) => format!("local {}", i.class.name),
        }
    }

    /// Wraps a Rust closure as a callable object (a Python peer sees a
    /// function). Typical use: callbacks passed to a remote call.
    pub fn function<M>(f: impl SyncHandler<M>) -> Object {
        Object::function_named("function", "function(*args)", f)
    }

    /// Like [`Object::function`] for an async closure.
    pub fn async_function<M>(f: impl AsyncHandler<M>) -> Object {
        let mut b = ClassBuilder::<()>::new("builtins.function");
        b.insert_async("__call__(*args)", Visibility::Plain, f);
        Object::Local(Instance::new(b.build_def(), ()))
    }

    fn function_named<M>(name: &str, sig: &str, f: impl SyncHandler<M>) -> Object {
        let mut b = ClassBuilder::<()>::new(&format!("builtins.{name}"));
        let sig = sig.replacen(name, "__call__", 1);
        b.insert_sync(&sig, Visibility::Plain, f);
        Object::Local(Instance::new(b.build_def(), ()))
    }
}

impl From<Value> for Object {
    fn from(v: Value) -> Object {
        Object::Value(v)
    }
}
impl From<Netref> for Object {
    fn from(n: Netref) -> Object {
        Object::Remote(n)
    }
}
impl From<Arc<Instance>> for Object {
    fn from(i: Arc<Instance>) -> Object {
        Object::Local(i)
    }
}

pub(crate) type GetterFn = Arc<dyn Fn(&Call) -> Result<Object> + Send + Sync>;
pub(crate) type SetterFn = Arc<dyn Fn(&Call, Object) -> Result<()> + Send + Sync>;

#[derive(Clone)]
pub(crate) enum MemberKind {
    Method { f: CallFn, sig: Arc<Signature> },
    Attr { get: GetterFn, set: Option<SetterFn> },
}

#[derive(Clone)]
pub(crate) struct Member {
    pub vis: Visibility,
    pub kind: MemberKind,
    pub doc: String,
}

static NEXT_CLASS_ID: AtomicI64 = AtomicI64::new(1_000_001);

/// The type-erased description of a class: its Python-visible name and members.
pub struct ClassDef {
    pub(crate) name: String,
    pub(crate) id: i64,
    pub(crate) members: HashMap<String, Member>,
    pub(crate) order: Vec<String>,
    /// The class docstring (`__doc__`); `None` as for a Python class without one.
    pub(crate) doc: Option<String>,
}

impl ClassDef {
    /// The qualified class name a peer sees (e.g. `"builtins.list"`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn member(&self, name: &str) -> Option<&Member> {
        self.members.get(name)
    }

    pub(crate) fn visibility(&self, name: &str) -> Option<Visibility> {
        self.members.get(name).map(|m| m.vis)
    }

    /// Member names in declaration order.
    pub fn member_names(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }
}

/// A class with typed state `T`: create instances with [`Class::instance`].
pub struct Class<T> {
    def: Arc<ClassDef>,
    _t: PhantomData<fn(T)>,
}

impl<T> Clone for Class<T> {
    fn clone(&self) -> Self {
        Class { def: self.def.clone(), _t: PhantomData }
    }
}

impl<T: Send + Sync + 'static> Class<T> {
    /// Starts describing a class. `qualified_name` is what Python peers see as
    /// the class (`"module.Name"`); use a `builtins.*` name (`builtins.list`,
    /// `builtins.dict`, `builtins.function`) to make Python treat the proxy
    /// like that builtin type without an INSPECT round trip.
    pub fn builder(qualified_name: &str) -> ClassBuilder<T> {
        ClassBuilder::new(qualified_name)
    }

    /// A new object of this class, ready to return from a call.
    pub fn instance(&self, state: T) -> Object {
        Object::Local(Instance::new(self.def.clone(), state))
    }

    /// The erased description.
    pub fn def(&self) -> &Arc<ClassDef> {
        &self.def
    }
}

/// One of our objects: state plus its class.
pub struct Instance {
    pub(crate) class: Arc<ClassDef>,
    pub(crate) state: Arc<dyn Any + Send + Sync>,
}

impl Instance {
    /// Wraps state in a class.
    pub fn new<T: Send + Sync + 'static>(class: Arc<ClassDef>, state: T) -> Arc<Instance> {
        Arc::new(Instance { class, state: Arc::new(state) })
    }

    /// The class.
    pub fn class(&self) -> &ClassDef {
        &self.class
    }

    /// The state, if it is a `T`.
    pub fn state<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.state.clone().downcast::<T>().ok()
    }
}

/// Describes the members of a [`Class`].
///
/// Method signatures are written like Python's: `"add(x, y)"`,
/// `"call_back(func, *args)"`, `"incr()"`. The parameter names let Python
/// callers pass keyword arguments (`add(x=1, y=2)`). Names that start and
/// end with `__` are protocol methods and are always plain.
pub struct ClassBuilder<T> {
    def: ClassDef,
    /// Signatures that are malformed or do not fit their closures, found
    /// as methods are added; reported by `build`.
    problems: Vec<String>,
    _t: PhantomData<fn(T)>,
}

impl<T: Send + Sync + 'static> ClassBuilder<T> {
    pub(crate) fn new(qualified_name: &str) -> Self {
        ClassBuilder {
            def: ClassDef {
                name: qualified_name.to_string(),
                id: NEXT_CLASS_ID.fetch_add(1, Ordering::Relaxed),
                members: HashMap::new(),
                order: Vec::new(),
                doc: None,
            },
            problems: Vec::new(),
            _t: PhantomData,
        }
    }

    fn vis_for(name: &str, requested: Visibility) -> Visibility {
        if name.starts_with("__") && name.ends_with("__") {
            Visibility::Plain
        } else {
            requested
        }
    }

    fn insert(&mut self, name: String, member: Member) {
        if self.def.members.insert(name.clone(), member).is_none() {
            self.def.order.push(name);
        }
    }

    pub(crate) fn insert_fn(&mut self, sig: &str, vis: Visibility, f: CallFn) {
        let sig = Arc::new(Signature::parse(sig));
        let name = sig.name.clone();
        let vis = Self::vis_for(&name, vis);
        self.insert(name, Member { vis, kind: MemberKind::Method { f, sig }, doc: String::new() });
    }

    fn check_sig(&mut self, sig: &str, uses: &[super::handler::ArgUse]) {
        if let Err(e) = super::handler::check_against(sig, uses) {
            self.problems.push(format!("{}: method {sig:?}: {e}", self.def.name));
        }
    }

    pub(crate) fn insert_sync<M, F: SyncHandler<M>>(&mut self, sig: &str, vis: Visibility, f: F) {
        self.check_sig(sig, F::USES);
        let f = Arc::new(f);
        let call: CallFn = Arc::new(move |call: Call| {
            let r = f.invoke(call);
            Box::pin(std::future::ready(r))
        });
        self.insert_fn(sig, vis, call);
    }

    pub(crate) fn insert_async<M, F: AsyncHandler<M>>(&mut self, sig: &str, vis: Visibility, f: F) {
        self.check_sig(sig, F::USES);
        let f = Arc::new(f);
        let call: CallFn = Arc::new(move |call: Call| f.invoke(call));
        self.insert_fn(sig, vis, call);
    }

    /// An exposed method backed by a synchronous closure. It runs inline, in
    /// request order; use [`ClassBuilder::async_method`] for anything that
    /// waits (sleeps, I/O, calls back into the peer).
    pub fn method<M>(mut self, sig: &str, f: impl SyncHandler<M>) -> Self {
        self.insert_sync(sig, Visibility::Exposed, f);
        self
    }

    /// An exposed method backed by an async closure.
    pub fn async_method<M>(mut self, sig: &str, f: impl AsyncHandler<M>) -> Self {
        self.insert_async(sig, Visibility::Exposed, f);
        self
    }

    /// A plain (not exposed) method: reachable only when the policy allows
    /// public (or all) attributes, or through `safe_attrs` for dunders.
    pub fn plain_method<M>(mut self, sig: &str, f: impl SyncHandler<M>) -> Self {
        self.insert_sync(sig, Visibility::Plain, f);
        self
    }

    /// A plain async method.
    pub fn plain_async_method<M>(mut self, sig: &str, f: impl AsyncHandler<M>) -> Self {
        self.insert_async(sig, Visibility::Plain, f);
        self
    }

    fn insert_attr<R, G>(&mut self, name: &str, vis: Visibility, get: G, set: Option<SetterFn>)
    where
        G: Fn(&T) -> R + Send + Sync + 'static,
        R: super::handler::IntoObject,
    {
        let getter: GetterFn = Arc::new(move |call: &Call| {
            let state = call.target.state.downcast_ref::<T>().ok_or_else(|| state_mismatch(&call.target))?;
            get(state).into_object()
        });
        let vis = Self::vis_for(name, vis);
        self.insert(name.to_string(), Member { vis, kind: MemberKind::Attr { get: getter, set }, doc: String::new() });
    }

    /// An exposed read-only attribute computed from the state.
    pub fn attr<R: super::handler::IntoObject>(
        mut self,
        name: &str,
        get: impl Fn(&T) -> R + Send + Sync + 'static,
    ) -> Self {
        self.insert_attr(name, Visibility::Exposed, get, None);
        self
    }

    /// A plain read-only attribute (public if the name has no leading `_`).
    pub fn plain_attr<R: super::handler::IntoObject>(
        mut self,
        name: &str,
        get: impl Fn(&T) -> R + Send + Sync + 'static,
    ) -> Self {
        self.insert_attr(name, Visibility::Plain, get, None);
        self
    }

    /// An exposed attribute that the peer may also set, when the policy
    /// allows SETATTR.
    pub fn settable_attr<R, V>(
        mut self,
        name: &str,
        get: impl Fn(&T) -> R + Send + Sync + 'static,
        set: impl Fn(&T, V) -> Result<()> + Send + Sync + 'static,
    ) -> Self
    where
        R: super::handler::IntoObject,
        V: DeserializeOwned,
    {
        let setter: SetterFn = Arc::new(move |call: &Call, value: Object| {
            let state = call.target.state.downcast_ref::<T>().ok_or_else(|| state_mismatch(&call.target))?;
            set(state, value.extract::<V>()?)
        });
        self.insert_attr(name, Visibility::Exposed, get, Some(setter));
        self
    }

    /// Sets the class docstring: what a peer reads as `obj.__doc__`
    /// (default: `None`, as for a Python class without one).
    pub fn docstring(mut self, text: &str) -> Self {
        self.def.doc = Some(text.to_string());
        self
    }

    /// Sets the docstring of the most recently added member (shown by INSPECT).
    pub fn doc(mut self, text: &str) -> Self {
        if let Some(last) = self.def.order.last().cloned() {
            if let Some(m) = self.def.members.get_mut(&last) {
                m.doc = text.to_string();
            }
        }
        self
    }

    pub(crate) fn build_def(self) -> Arc<ClassDef> {
        Arc::new(self.def)
    }

    /// Finishes the class, or says which method signatures are malformed
    /// or do not match their closures.
    pub fn try_build(self) -> std::result::Result<Class<T>, crate::Error> {
        if !self.problems.is_empty() {
            return Err(crate::Error::Definition(self.problems.join("; ")));
        }
        Ok(Class { def: Arc::new(self.def), _t: PhantomData })
    }

    /// Finishes the class.
    ///
    /// # Panics
    ///
    /// If a method's signature string is malformed or names a different
    /// number of parameters than its closure takes (`.method("add(x)", |x:
    /// i64, y: i64| …)`): a programming error, reported when the class is
    /// built rather than on the first call. [`ClassBuilder::try_build`]
    /// returns it instead.
    #[allow(clippy::panic)]
    pub fn build(self) -> Class<T> {
        match self.try_build() {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }
}

pub(crate) fn state_mismatch(target: &Instance) -> Error {
    Error::type_error(format!("internal: state of {} has an unexpected type", target.class.name))
}
