//! Layer 4: declaring a service (mirrors `rpyc/core/service.py`).
//!
//! A service is the root object a peer reaches with `conn.root`: a class of
//! exposed methods and attributes plus a name, aliases and connect/disconnect
//! hooks. Its state is created per connection by a factory closure; share
//! state across connections by returning a clone of an `Arc` from it.
//!
//! ```
//! use rpyc::{Service, Exception};
//! let svc = Service::builder("calculator", || ())
//!     .method("add(x, y)", |x: i64, y: i64| Ok(x + y))
//!     .method("div(x, y)", |x: f64, y: f64| {
//!         if y == 0.0 {
//!             return Err(Exception::zero_division_error("float division by zero").into());
//!         }
//!         Ok(x / y)
//!     })
//!     .build();
//! assert_eq!(svc.name(), "CALCULATOR");
//! ```

use crate::connection::handler::{AsyncHandler, IntoObject, SyncHandler};
use crate::connection::{ClassBuilder, ClassDef, Ctx, Instance};
use serde::de::DeserializeOwned;
use std::sync::Arc;

type Hook = Arc<dyn Fn(&Ctx) + Send + Sync>;

struct Inner {
    aliases: Vec<String>,
    class: Arc<ClassDef>,
    make_state: Box<dyn Fn(Arc<ClassDef>) -> Arc<Instance> + Send + Sync>,
    on_connect: Option<Hook>,
    on_disconnect: Option<Hook>,
}

/// A service definition, shared by every connection that serves it.
#[derive(Clone)]
pub struct Service(Arc<Inner>);

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("aliases", &self.0.aliases).finish()
    }
}

impl Service {
    /// Starts a service named `name` (upper-cased, as Python does with
    /// `ALIASES`). `state` creates the root object's state for each new
    /// connection.
    pub fn builder<T: Send + Sync + 'static>(
        name: &str,
        state: impl Fn() -> T + Send + Sync + 'static,
    ) -> ServiceBuilder<T> {
        let title: String = {
            let mut c = name.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c.flat_map(|x| x.to_lowercase())).collect(),
                None => String::new(),
            }
        };
        ServiceBuilder {
            class: ClassBuilder::new(&format!("rpyc_rust.{title}Service")),
            aliases: vec![name.to_uppercase()],
            make_state: Box::new(move |class| Instance::new(class, state())),
            on_connect: None,
            on_disconnect: None,
        }
    }

    /// A service that exposes nothing (Python's `VoidService`); what a plain
    /// client serves to its server.
    pub fn void() -> Service {
        Service::builder("void", || ()).build()
    }

    /// The canonical name (first alias).
    pub fn name(&self) -> &str {
        self.0.aliases.first().map(String::as_str).unwrap_or("")
    }

    /// All aliases, upper-cased.
    pub fn aliases(&self) -> &[String] {
        &self.0.aliases
    }

    pub(crate) fn make_root(&self) -> Arc<Instance> {
        (self.0.make_state)(self.0.class.clone())
    }

    pub(crate) fn on_connect_hook(&self) -> Option<&Hook> {
        self.0.on_connect.as_ref()
    }

    pub(crate) fn on_disconnect_hook(&self) -> Option<&Hook> {
        self.0.on_disconnect.as_ref()
    }
}

/// Builds a [`Service`]; the member methods mirror [`ClassBuilder`]'s.
pub struct ServiceBuilder<T> {
    class: ClassBuilder<T>,
    aliases: Vec<String>,
    make_state: Box<dyn Fn(Arc<ClassDef>) -> Arc<Instance> + Send + Sync>,
    on_connect: Option<Hook>,
    on_disconnect: Option<Hook>,
}

impl<T: Send + Sync + 'static> ServiceBuilder<T> {
    /// Adds an alias (upper-cased).
    pub fn alias(mut self, alias: &str) -> Self {
        self.aliases.push(alias.to_uppercase());
        self
    }

    /// An exposed synchronous method, e.g. `.method("add(x, y)", |x: i64, y: i64| Ok(x + y))`.
    pub fn method<M>(mut self, sig: &str, f: impl SyncHandler<M>) -> Self {
        self.class = self.class.method(sig, f);
        self
    }

    /// An exposed async method.
    pub fn async_method<M>(mut self, sig: &str, f: impl AsyncHandler<M>) -> Self {
        self.class = self.class.async_method(sig, f);
        self
    }

    /// A plain (non-exposed) method: hidden under the default policy.
    pub fn plain_method<M>(mut self, sig: &str, f: impl SyncHandler<M>) -> Self {
        self.class = self.class.plain_method(sig, f);
        self
    }

    /// A plain async method.
    pub fn plain_async_method<M>(mut self, sig: &str, f: impl AsyncHandler<M>) -> Self {
        self.class = self.class.plain_async_method(sig, f);
        self
    }

    /// An exposed read-only attribute.
    pub fn attr<R: IntoObject>(mut self, name: &str, get: impl Fn(&T) -> R + Send + Sync + 'static) -> Self {
        self.class = self.class.attr(name, get);
        self
    }

    /// A plain read-only attribute (hidden under the default policy).
    pub fn plain_attr<R: IntoObject>(mut self, name: &str, get: impl Fn(&T) -> R + Send + Sync + 'static) -> Self {
        self.class = self.class.plain_attr(name, get);
        self
    }

    /// An exposed attribute the peer may set when the policy allows SETATTR.
    pub fn settable_attr<R: IntoObject, V: DeserializeOwned>(
        mut self,
        name: &str,
        get: impl Fn(&T) -> R + Send + Sync + 'static,
        set: impl Fn(&T, V) -> crate::Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.class = self.class.settable_attr(name, get, set);
        self
    }

    /// The service's docstring: what a peer reads as `conn.root.__doc__`
    /// (default: `None`).
    pub fn docstring(mut self, text: &str) -> Self {
        self.class = self.class.docstring(text);
        self
    }

    /// Docstring of the last added member.
    pub fn doc(mut self, text: &str) -> Self {
        self.class = self.class.doc(text);
        self
    }

    /// Runs when a connection starts (Python's `on_connect`).
    pub fn on_connect(mut self, f: impl Fn(&Ctx) + Send + Sync + 'static) -> Self {
        self.on_connect = Some(Arc::new(f));
        self
    }

    /// Runs when a connection has ended (Python's `on_disconnect`); the
    /// connection can no longer be used for I/O.
    pub fn on_disconnect(mut self, f: impl Fn(&Ctx) + Send + Sync + 'static) -> Self {
        self.on_disconnect = Some(Arc::new(f));
        self
    }

    /// Finishes the service. `get_service_name()` and
    /// `get_service_aliases()` are added as exposed methods, as in Python.
    ///
    /// # Panics
    ///
    /// If a method's signature string is malformed or does not match its
    /// closure (see [`ClassBuilder::build`]); [`ServiceBuilder::try_build`]
    /// returns that as an error instead.
    #[allow(clippy::panic)]
    pub fn build(self) -> Service {
        match self.try_build() {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// Finishes the service, or says which method signatures are malformed
    /// or do not match their closures (naming each method).
    pub fn try_build(self) -> crate::Result<Service> {
        let name = self.aliases.first().cloned().unwrap_or_default();
        let aliases = self.aliases.clone();
        let class = self
            .class
            .method("get_service_name()", move || Ok(name.clone()))
            .method("get_service_aliases()", move || Ok(aliases.clone()))
            .try_build()?;
        Ok(Service(Arc::new(Inner {
            aliases: self.aliases,
            class: class.def().clone(),
            make_state: self.make_state,
            on_connect: self.on_connect,
            on_disconnect: self.on_disconnect,
        })))
    }
}
