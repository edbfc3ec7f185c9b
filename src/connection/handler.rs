//! Typed method handlers: closures whose parameters are extracted from a call.
//!
//! A handler is an ordinary closure; each parameter type says where its value
//! comes from ([`FromCall`]): `Ctx` is the calling connection, `This<T>` the
//! object's state, [`Netref`] / [`Object`] the next raw argument, [`Args`] all
//! remaining arguments, and any `serde::Deserialize` type the next argument
//! converted from its brine value (or the keyword argument of the same name).

use super::netref::Netref;
use super::object::{state_mismatch, Instance, Object};
use super::Ctx;
use crate::error::{Error, Result};
use crate::wire::{from_value, to_value, ConvertError, Value};
use serde::de::{self, DeserializeOwned, Visitor};
use serde::Serialize;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

pub(crate) type CallFn = Arc<dyn Fn(Call) -> BoxFuture<Result<Object>> + Send + Sync>;

/// A parsed Python-style signature: `name(a, b, *rest)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// The method name.
    pub name: String,
    /// Named parameters, in order.
    pub params: Vec<String>,
    /// Whether extra positional arguments are accepted (`*args`).
    pub varargs: bool,
}

impl Signature {
    /// Parses `"name"`, `"name()"` or `"name(a, b, *rest)"`.
    pub fn parse(text: &str) -> Signature {
        let text = text.trim();
        let (name, rest) = match text.split_once('(') {
            Some((n, r)) => (n.trim(), r.trim_end().trim_end_matches(')')),
            None => (text, ""),
        };
        let mut params = Vec::new();
        let mut varargs = false;
        for p in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if p.starts_with("**") {
                continue;
            } else if p.starts_with('*') {
                varargs = true;
            } else {
                params.push(p.split(['=', ':']).next().unwrap_or(p).trim().to_string());
            }
        }
        Signature { name: name.to_string(), params, varargs }
    }
}

impl Signature {
    /// Checks a signature string as Python would parse `def NAME(PARAMS)`:
    /// an identifier, then optionally one parenthesised list of identifiers
    /// (each with an optional `=default` or `: annotation`), at most one
    /// `*args` and one `**kwargs`, nothing after the `)`.
    pub(crate) fn check(text: &str) -> std::result::Result<(), String> {
        fn ident(s: &str) -> bool {
            let mut c = s.chars();
            c.next().is_some_and(|f| f.is_alphabetic() || f == '_') && c.all(|c| c.is_alphanumeric() || c == '_')
        }
        let text = text.trim();
        let (name, rest) = match text.split_once('(') {
            Some((n, r)) => (n.trim(), Some(r)),
            None => (text, None),
        };
        if !ident(name) {
            return Err(format!("{name:?} is not a method name (expected an identifier such as add or __len__)"));
        }
        let Some(rest) = rest else { return Ok(()) };
        let Some(inner) = rest.trim_end().strip_suffix(')') else {
            return Err("the parameter list does not end with ')'".into());
        };
        if inner.contains(['(', ')']) {
            return Err("parentheses inside the parameter list".into());
        }
        let (mut star, mut kw) = (false, false);
        for p in inner.split(',').map(str::trim) {
            if p.is_empty() {
                if inner.trim().is_empty() {
                    break;
                }
                return Err("an empty parameter (two commas, or a comma at an end)".into());
            }
            let bare = p.split(['=', ':']).next().unwrap_or(p).trim();
            let (what, bare) = match (bare.strip_prefix("**"), bare.strip_prefix('*')) {
                (Some(b), _) => {
                    if kw {
                        return Err("two **kwargs parameters".into());
                    }
                    kw = true;
                    ("**", b)
                }
                (None, Some(b)) => {
                    if star {
                        return Err("two *args parameters".into());
                    }
                    star = true;
                    ("*", b)
                }
                _ if star || kw => return Err(format!("parameter {bare:?} after *args or **kwargs")),
                _ => ("", bare),
            };
            if !ident(bare) {
                return Err(format!("{what}{bare:?} is not a parameter name"));
            }
        }
        Ok(())
    }
}

/// How a handler parameter uses the call's arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgUse {
    /// Takes none (`Ctx`, `This<T>`, `SelfObject`).
    None,
    /// Takes the next positional or keyword argument.
    One,
    /// Takes all that remain (`Args`).
    Rest,
}

/// What a handler takes: the positional parameters it consumes, and
/// whether it takes the rest.
pub(crate) fn arity(uses: &[ArgUse]) -> (usize, bool) {
    (uses.iter().filter(|u| **u == ArgUse::One).count(), uses.contains(&ArgUse::Rest))
}

/// Checks a signature against what its closure takes; the error names
/// both.
pub(crate) fn check_against(text: &str, uses: &[ArgUse]) -> std::result::Result<(), String> {
    Signature::check(text)?;
    let sig = Signature::parse(text);
    let (takes, rest) = arity(uses);
    if sig.params.len() != takes {
        return Err(format!(
            "the signature names {} parameter{} ({}) but the closure takes {takes} argument{}",
            sig.params.len(),
            if sig.params.len() == 1 { "" } else { "s" },
            sig.params.join(", "),
            if takes == 1 { "" } else { "s" },
        ));
    }
    if rest && !sig.varargs {
        return Err("the closure takes Args (*args) but the signature has no *args parameter".into());
    }
    if sig.varargs && !rest {
        return Err("the signature has *args but the closure takes no Args to receive them".into());
    }
    Ok(())
}

/// One invocation of a method: its target, arguments and context.
pub struct Call {
    pub(crate) ctx: Ctx,
    pub(crate) target: Arc<Instance>,
    pub(crate) sig: Arc<Signature>,
    pub(crate) args: std::collections::VecDeque<Object>,
    pub(crate) kwargs: Vec<(String, Object)>,
    pub(crate) given: usize,
    pub(crate) param: usize,
}

impl Call {
    pub(crate) fn new(
        ctx: Ctx,
        target: Arc<Instance>,
        sig: Arc<Signature>,
        args: Vec<Object>,
        kwargs: Vec<(String, Object)>,
    ) -> Call {
        let given = args.len();
        Call { ctx, target, sig, args: args.into(), kwargs, given, param: 0 }
    }

    /// The method name (for error messages).
    pub fn name(&self) -> &str {
        &self.sig.name
    }

    /// Takes the next parameter: positional first, then the keyword argument
    /// of the parameter's name. Returns the parameter name too.
    fn next_arg(&mut self) -> (Option<Object>, String) {
        let pname = self.sig.params.get(self.param).cloned().unwrap_or_else(|| format!("arg{}", self.param));
        self.param += 1;
        if let Some(a) = self.args.pop_front() {
            return (Some(a), pname);
        }
        if let Some(pos) = self.kwargs.iter().position(|(k, _)| *k == pname) {
            return (Some(self.kwargs.remove(pos).1), pname);
        }
        (None, pname)
    }

    /// Checks that every argument was consumed (Python's arity TypeErrors).
    pub(crate) fn finish(&self) -> Result<()> {
        if !self.args.is_empty() {
            return Err(Error::type_error(format!(
                "{}() takes {} positional arguments but {} were given",
                self.sig.name,
                self.given - self.args.len(),
                self.given
            )));
        }
        if let Some((k, _)) = self.kwargs.first() {
            return Err(Error::type_error(format!("{}() got an unexpected keyword argument '{}'", self.sig.name, k)));
        }
        Ok(())
    }
}

/// Builds a handler parameter from a call.
pub trait FromCall: Sized {
    /// Which arguments it takes (checked against the method's signature
    /// when the class is built). Default: one.
    const USES: ArgUse = ArgUse::One;
    /// Extracts the value, consuming arguments as needed.
    fn from_call(call: &mut Call) -> Result<Self>;
}

impl<T: DeserializeOwned> FromCall for T {
    fn from_call(call: &mut Call) -> Result<T> {
        let (arg, pname) = call.next_arg();
        match arg {
            Some(obj) => match obj.into_value() {
                Ok(v) => from_value(v)
                    .map_err(|e| Error::type_error(format!("{}() argument '{}': {}", call.sig.name, pname, e.0))),
                Err(o) => Err(Error::type_error(format!(
                    "{}() argument '{}': expected a value, got {}",
                    call.sig.name,
                    pname,
                    o.describe()
                ))),
            },
            None => T::deserialize(Missing)
                .map_err(|_| Error::type_error(format!("{}() missing required argument: '{}'", call.sig.name, pname))),
        }
    }
}

/// Deserializes only into `Option` (as `None`): a missing optional argument.
struct Missing;

impl<'de> de::Deserializer<'de> for Missing {
    type Error = ConvertError;
    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> std::result::Result<V::Value, ConvertError> {
        Err(ConvertError("missing".into()))
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> std::result::Result<V::Value, ConvertError> {
        v.visit_none()
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

impl FromCall for Ctx {
    const USES: ArgUse = ArgUse::None;
    fn from_call(call: &mut Call) -> Result<Ctx> {
        Ok(call.ctx.clone())
    }
}

impl FromCall for Object {
    fn from_call(call: &mut Call) -> Result<Object> {
        match call.next_arg() {
            (Some(o), _) => Ok(o),
            (None, pname) => {
                Err(Error::type_error(format!("{}() missing required argument: '{}'", call.sig.name, pname)))
            }
        }
    }
}

impl FromCall for Netref {
    fn from_call(call: &mut Call) -> Result<Netref> {
        let name = call.sig.name.clone();
        match call.next_arg() {
            (Some(Object::Remote(n)), _) => Ok(n),
            (Some(o), pname) => Err(Error::type_error(format!(
                "{name}() argument '{pname}': expected a remote object, got {}",
                o.describe()
            ))),
            (None, pname) => Err(Error::type_error(format!("{name}() missing required argument: '{pname}'"))),
        }
    }
}

/// The state of the object a method was called on.
pub struct This<T>(pub Arc<T>);

impl<T> std::ops::Deref for This<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Send + Sync + 'static> FromCall for This<T> {
    const USES: ArgUse = ArgUse::None;
    fn from_call(call: &mut Call) -> Result<This<T>> {
        call.target.state.clone().downcast::<T>().map(This).map_err(|_| state_mismatch(&call.target))
    }
}

/// The object a method was called on, as an [`Object`] (e.g. to return `self`).
pub struct SelfObject(pub Object);

impl FromCall for SelfObject {
    const USES: ArgUse = ArgUse::None;
    fn from_call(call: &mut Call) -> Result<SelfObject> {
        Ok(SelfObject(Object::Local(call.target.clone())))
    }
}

/// All remaining positional and keyword arguments (Python's `*args, **kwargs`).
#[derive(Debug, Default, Clone)]
pub struct Args {
    /// Positional arguments.
    pub positional: Vec<Object>,
    /// Keyword arguments in call order.
    pub keywords: Vec<(String, Object)>,
}

impl FromCall for Args {
    const USES: ArgUse = ArgUse::Rest;
    fn from_call(call: &mut Call) -> Result<Args> {
        Ok(Args { positional: call.args.drain(..).collect(), keywords: std::mem::take(&mut call.kwargs) })
    }
}

/// Converts a handler's result into an [`Object`].
pub trait IntoObject {
    /// Performs the conversion.
    fn into_object(self) -> Result<Object>;
}

impl<T: Serialize> IntoObject for T {
    fn into_object(self) -> Result<Object> {
        Ok(Object::Value(to_value(&self)?))
    }
}
impl IntoObject for Object {
    fn into_object(self) -> Result<Object> {
        Ok(self)
    }
}
impl IntoObject for Netref {
    fn into_object(self) -> Result<Object> {
        Ok(Object::Remote(self))
    }
}

/// Keyword arguments for a call, built fluently:
/// `Kwargs::new().arg("x", 1).arg("y", "two")`.
#[derive(Debug, Default, Clone)]
pub struct Kwargs(pub Vec<(String, Object)>);

impl Kwargs {
    /// No keyword arguments.
    pub fn new() -> Kwargs {
        Kwargs(Vec::new())
    }

    /// Adds `name=value`. A value that cannot be converted becomes `None`
    /// and is reported by [`Kwargs::try_arg`] instead, for callers who care.
    pub fn arg(mut self, name: &str, value: impl IntoObject) -> Kwargs {
        let v = value.into_object().unwrap_or_else(|_| Object::none());
        self.0.push((name.to_string(), v));
        self
    }

    /// Adds `name=value`, failing if the value cannot be converted.
    pub fn try_arg(mut self, name: &str, value: impl IntoObject) -> Result<Kwargs> {
        self.0.push((name.to_string(), value.into_object()?));
        Ok(self)
    }
}

impl From<Vec<(String, Object)>> for Kwargs {
    fn from(v: Vec<(String, Object)>) -> Kwargs {
        Kwargs(v)
    }
}

/// Converts call arguments: tuples of [`IntoObject`] values, `Vec<Object>`, or [`Args`].
pub trait IntoArgs {
    /// Performs the conversion.
    fn into_args(self) -> Result<Vec<Object>>;
}

impl IntoArgs for Vec<Object> {
    fn into_args(self) -> Result<Vec<Object>> {
        Ok(self)
    }
}

impl IntoArgs for Vec<Value> {
    fn into_args(self) -> Result<Vec<Object>> {
        Ok(self.into_iter().map(Object::Value).collect())
    }
}

macro_rules! into_args_tuple {
    ($($t:ident),*) => {
        impl<$($t: IntoObject),*> IntoArgs for ($($t,)*) {
            #[allow(non_snake_case)]
            fn into_args(self) -> Result<Vec<Object>> {
                let ($($t,)*) = self;
                Ok(vec![$($t.into_object()?),*])
            }
        }
    };
}
impl IntoArgs for () {
    fn into_args(self) -> Result<Vec<Object>> {
        Ok(Vec::new())
    }
}
into_args_tuple!(A);
into_args_tuple!(A, B);
into_args_tuple!(A, B, C);
into_args_tuple!(A, B, C, D);
into_args_tuple!(A, B, C, D, E);
into_args_tuple!(A, B, C, D, E, F);
into_args_tuple!(A, B, C, D, E, F, G);
into_args_tuple!(A, B, C, D, E, F, G, H);

/// A synchronous method body. Implemented for closures
/// `Fn(A1, …, An) -> Result<R>` (n ≤ 8) whose parameters are [`FromCall`] and
/// whose result is [`IntoObject`].
pub trait SyncHandler<M>: Send + Sync + 'static {
    /// How each parameter uses the call's arguments.
    const USES: &'static [ArgUse];
    /// Runs the handler.
    fn invoke(&self, call: Call) -> Result<Object>;
}

/// An async method body. Implemented for closures
/// `Fn(A1, …, An) -> impl Future<Output = Result<R>>` (n ≤ 8).
pub trait AsyncHandler<M>: Send + Sync + 'static {
    /// How each parameter uses the call's arguments.
    const USES: &'static [ArgUse];
    /// Starts the handler.
    fn invoke(&self, call: Call) -> BoxFuture<Result<Object>>;
}

macro_rules! handlers {
    ($($a:ident),*) => {
        impl<F, R, $($a,)*> SyncHandler<($($a,)*)> for F
        where
            F: Fn($($a),*) -> Result<R> + Send + Sync + 'static,
            R: IntoObject,
            $($a: FromCall,)*
        {
            const USES: &'static [ArgUse] = &[$($a::USES),*];
            #[allow(non_snake_case, unused_mut, unused_variables)]
            fn invoke(&self, mut call: Call) -> Result<Object> {
                $(let $a = $a::from_call(&mut call)?;)*
                call.finish()?;
                (self)($($a),*)?.into_object()
            }
        }

        impl<F, Fut, R, $($a,)*> AsyncHandler<(Fut, $($a,)*)> for F
        where
            F: Fn($($a),*) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = Result<R>> + Send + 'static,
            R: IntoObject,
            $($a: FromCall,)*
        {
            const USES: &'static [ArgUse] = &[$($a::USES),*];
            #[allow(non_snake_case, unused_mut, unused_variables)]
            fn invoke(&self, mut call: Call) -> BoxFuture<Result<Object>> {
                let prepared = (|| -> Result<_> {
                    $(let $a = $a::from_call(&mut call)?;)*
                    call.finish()?;
                    Ok(($($a,)*))
                })();
                match prepared {
                    Ok(($($a,)*)) => {
                        let fut = (self)($($a),*);
                        Box::pin(async move { fut.await?.into_object() })
                    }
                    Err(e) => Box::pin(std::future::ready(Err(e))),
                }
            }
        }
    };
}

handlers!();
handlers!(A1);
handlers!(A1, A2);
handlers!(A1, A2, A3);
handlers!(A1, A2, A3, A4);
handlers!(A1, A2, A3, A4, A5);
handlers!(A1, A2, A3, A4, A5, A6);
handlers!(A1, A2, A3, A4, A5, A6, A7);
handlers!(A1, A2, A3, A4, A5, A6, A7, A8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let s = Signature::parse("call_back(func, *args)");
        assert_eq!(s.name, "call_back");
        assert_eq!(s.params, vec!["func".to_string()]);
        assert!(s.varargs);
        assert_eq!(Signature::parse("foo").params.len(), 0);
        assert_eq!(Signature::parse("greet(name, greeting='hi')").params, vec!["name", "greeting"]);
    }
}
