//! Serving requests: the RPyC handlers (`Connection._handle_*` in
//! `rpyc/core/protocol.py`) applied to Rust objects under the access policy.

use super::handler::{BoxFuture, Call, CallFn, Signature};
use super::object::{ClassBuilder, ClassDef, Instance, Member, MemberKind, Object};
use super::{Ctx, Shared};
use crate::error::{Error, Result};
use crate::policy::{Access, Resolved, Visibility};
use crate::wire::message::{Handler, LABEL_LOCAL_REF, LABEL_TUPLE, LABEL_VALUE};
use crate::wire::{Exception, IdPack, Value};
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};

/// Most items one BUFFITER request may ask for.
const MAX_BUFFITER: usize = 10_000;

fn ready(r: Result<Object>) -> BoxFuture<Result<Object>> {
    Box::pin(std::future::ready(r))
}

pub(super) fn handle(ctx: Ctx, handler: Handler, args: Vec<Object>) -> BoxFuture<Result<Object>> {
    let mut args = args.into_iter();
    let mut next = move || args.next().unwrap_or_else(Object::none);
    match handler {
        Handler::Ping => ready(Ok(next())),
        Handler::Close => ready(Ok(Object::none())),
        Handler::GetRoot => ready(Ok(Object::Local(ctx.conn.shared.root.clone()))),
        Handler::GetAttr => {
            let obj = next();
            let name = next();
            ready(name_of(&name).and_then(|n| getattr(&ctx, &obj, &n)))
        }
        Handler::SetAttr => {
            let obj = next();
            let name = next();
            let value = next();
            ready(name_of(&name).and_then(|n| setattr(&ctx, &obj, &n, value)))
        }
        Handler::DelAttr => {
            let obj = next();
            let name = next();
            ready(name_of(&name).and_then(|n| delattr(&ctx, &obj, &n)))
        }
        Handler::Call => {
            let obj = next();
            let a = seq_of(next());
            let kw = kwargs_of(next());
            match (a, kw) {
                (Ok(a), Ok(kw)) => call(ctx, &obj, a, kw),
                (Err(e), _) | (_, Err(e)) => ready(Err(e)),
            }
        }
        Handler::CallAttr => {
            let obj = next();
            let name = next();
            let a = seq_of(next());
            let kw = kwargs_of(next());
            match (name_of(&name), a, kw) {
                (Ok(n), Ok(a), Ok(kw)) => callattr(ctx, &obj, &n, a, kw),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => ready(Err(e)),
            }
        }
        Handler::Repr => {
            let obj = next();
            text(ctx, obj, &["__repr__"])
        }
        Handler::Str => {
            let obj = next();
            text(ctx, obj, &["__str__", "__repr__"])
        }
        Handler::Hash => {
            let obj = next();
            hash(ctx, obj)
        }
        Handler::Cmp => {
            let obj = next();
            let other = next();
            let op = next();
            match name_of(&op) {
                Ok(op) => cmp(ctx, obj, other, &op),
                Err(e) => ready(Err(e)),
            }
        }
        Handler::Dir => {
            let obj = next();
            ready(dir(&ctx, &obj))
        }
        Handler::Inspect => {
            let pack = next();
            ready(inspect(&ctx, &pack))
        }
        Handler::BuffIter => {
            let obj = next();
            let count = next();
            buffiter(ctx, obj, count)
        }
        Handler::OldSlicing => {
            let obj = next();
            let attempt = next();
            let _fallback = next();
            let start = next();
            let stop = next();
            let extra = seq_of(next()).unwrap_or_default();
            match (target(&obj), name_of(&attempt)) {
                (Ok(inst), Ok(attempt)) => {
                    let slice = match (start.into_value(), stop.into_value()) {
                        (Ok(a), Ok(b)) => Value::Slice(Box::new((a, b, Value::None))),
                        _ => return ready(Err(Error::type_error("slice bounds must be values"))),
                    };
                    let mut a = vec![Object::Value(slice)];
                    a.extend(extra);
                    match resolve(&ctx, &inst, &attempt, Access::Get) {
                        Ok(m) => invoke_member(ctx, inst, m, &attempt, a, vec![]),
                        Err(e) => ready(Err(e)),
                    }
                }
                (Err(e), _) | (_, Err(e)) => ready(Err(e)),
            }
        }
        Handler::CtxExit => {
            let obj = next();
            let exc = next();
            match target(&obj) {
                Ok(inst) => match inst.class.member("__exit__").cloned() {
                    Some(m) => {
                        invoke_member(ctx, inst, m, "__exit__", vec![exc, Object::none(), Object::none()], vec![])
                    }
                    None => ready(Err(Error::attribute_error("__exit__"))),
                },
                Err(e) => ready(Err(e)),
            }
        }
        Handler::InstanceCheck => ready(Ok(Object::Value(Value::Bool(false)))),
        Handler::Pickle => {
            if ctx.policy().allow_pickle {
                ready(Err(Error::type_error("Rust objects cannot be pickled")))
            } else {
                ready(Err(Error::value_error("pickling is disabled")))
            }
        }
        // Served inline by the reader; never reaches here.
        Handler::Del => ready(Ok(Object::none())),
    }
}

/// DEL(obj, count): parsed straight from the boxed form, so a forged or
/// already released reference is simply ignored.
pub(super) fn handle_del(shared: &Shared, boxed: &Value) {
    let parse = || -> Option<(IdPack, u64)> {
        let t = boxed.as_tuple()?;
        if t.first()?.as_i64()? != LABEL_TUPLE {
            return None;
        }
        let items = t.get(1)?.as_tuple()?;
        let obj = items.first()?.as_tuple()?;
        if obj.first()?.as_i64()? != LABEL_LOCAL_REF {
            return None;
        }
        let pack = IdPack::from_value(obj.get(1)?)?;
        let count = match items.get(1).and_then(Value::as_tuple) {
            Some(c) if c.first().and_then(Value::as_i64) == Some(LABEL_VALUE) => {
                c.get(1).and_then(Value::as_i64).unwrap_or(1)
            }
            _ => 1,
        };
        Some((pack, u64::try_from(count).unwrap_or(0)))
    };
    match parse() {
        Some((pack, count)) if count > 0 => shared.decref(pack.instance_id, count),
        Some(_) => {}
        None => tracing::debug!("malformed DEL ignored"),
    }
}

fn name_of(o: &Object) -> Result<String> {
    match o.as_value() {
        Some(Value::Str(s)) => Ok(s.clone()),
        Some(Value::Bytes(b)) => String::from_utf8(b.clone()).map_err(|_| Error::type_error("name must be a string")),
        _ => Err(Error::type_error("name must be a string")),
    }
}

fn seq_of(o: Object) -> Result<Vec<Object>> {
    match o {
        Object::Tuple(items) => Ok(items),
        Object::Value(Value::Tuple(items)) => Ok(items.into_iter().map(Object::Value).collect()),
        Object::Value(Value::None) => Ok(Vec::new()),
        other => Err(Error::type_error(format!("arguments must be a tuple, not {}", other.describe()))),
    }
}

fn kwargs_of(o: Object) -> Result<Vec<(String, Object)>> {
    let mut out = Vec::new();
    for pair in seq_of(o)? {
        let mut kv = seq_of(pair)?;
        if kv.len() != 2 {
            return Err(Error::type_error("keyword arguments must be (name, value) pairs"));
        }
        let value = kv.pop().unwrap_or_else(Object::none);
        let key = kv.pop().unwrap_or_else(Object::none);
        out.push((name_of(&key).map_err(|_| Error::type_error("keywords must be strings"))?, value));
    }
    Ok(out)
}

fn target(obj: &Object) -> Result<Arc<Instance>> {
    match obj {
        Object::Local(i) => Ok(i.clone()),
        other => Err(Error::type_error(format!("expected one of this side's objects, got {}", other.describe()))),
    }
}

fn is_root(ctx: &Ctx, inst: &Arc<Instance>) -> bool {
    Arc::ptr_eq(inst, &ctx.conn.shared.root)
}

/// Applies the policy to `name` on `inst`. `Err` is the AttributeError the
/// peer gets: "cannot access" for a denial (same text whether or not the
/// name exists), Python's "has no attribute" for an allowed but missing name.
fn resolve(ctx: &Ctx, inst: &Arc<Instance>, name: &str, access: Access) -> Result<Member> {
    let policy = ctx.policy();
    match policy.resolve(name, access, |n| inst.class.visibility(n)) {
        None => {
            tracing::info!(
                identity = ctx.credentials().display_identity(),
                peer = %ctx.credentials().peer,
                attribute = name,
                ?access,
                "policy denied attribute access"
            );
            Err(Error::cannot_access(name))
        }
        Some(Resolved::Member(m)) => {
            if is_root(ctx, inst) && !policy.method_allowed(&m) {
                tracing::info!(
                    identity = ctx.credentials().display_identity(),
                    method = %m,
                    "policy denied root method"
                );
                return Err(Error::cannot_access(name));
            }
            inst.class.member(&m).cloned().ok_or_else(|| Error::cannot_access(name))
        }
        Some(Resolved::Missing(n)) if policy.allow_safe_attrs && policy.safe_attrs.contains(n) => {
            implicit(n).ok_or_else(|| missing(inst, n))
        }
        Some(Resolved::Missing(n)) => Err(missing(inst, n)),
    }
}

fn missing(inst: &Arc<Instance>, n: &str) -> Error {
    Error::attribute_error(format!("'{}' object has no attribute {}", short_name(&inst.class), Value::from(n).repr()))
}

/// The safe dunders every Python object has (from `object`), for Rust
/// objects whose class does not define them: what a Python server answers
/// for `obj.__doc__`, `format(obj, "")`, `obj.__hash__()`, `obj.__eq__(x)`…
fn implicit(name: &str) -> Option<Member> {
    fn method(sig: &str, f: impl Fn(Call) -> BoxFuture<Result<Object>> + Send + Sync + 'static) -> Member {
        Member {
            vis: crate::policy::Visibility::Plain,
            kind: MemberKind::Method { f: Arc::new(f), sig: Arc::new(Signature::parse(sig)) },
            doc: String::new(),
        }
    }
    fn args(call: &Call, n: usize) -> Result<Vec<Object>> {
        if call.args.len() != n || !call.kwargs.is_empty() {
            return Err(Error::type_error(format!(
                "{}() takes exactly {n} argument{} ({} given)",
                call.sig.name,
                if n == 1 { "" } else { "s" },
                call.args.len() + call.kwargs.len()
            )));
        }
        Ok(call.args.iter().cloned().collect())
    }
    Some(match name {
        "__doc__" => Member {
            vis: crate::policy::Visibility::Plain,
            kind: MemberKind::Attr {
                get: Arc::new(|call: &Call| {
                    Ok(Object::Value(call.target.class.doc.clone().map_or(Value::None, Value::Str)))
                }),
                set: None,
            },
            doc: String::new(),
        },
        "__repr__" | "__str__" => {
            let names: &'static [&'static str] =
                if name == "__repr__" { &["__repr__"] } else { &["__str__", "__repr__"] };
            method(&format!("{name}()"), move |call| match args(&call, 0) {
                Ok(_) => text(call.ctx.clone(), Object::Local(call.target.clone()), names),
                Err(e) => ready(Err(e)),
            })
        }
        "__format__" => method("__format__(format_spec)", |call| {
            let spec = match args(&call, 1).map(|a| a.into_iter().next().map(Object::into_value)) {
                Ok(Some(Ok(Value::Str(s)))) => s,
                Ok(_) => return ready(Err(Error::type_error("__format__() argument must be str"))),
                Err(e) => return ready(Err(e)),
            };
            if !spec.is_empty() {
                // object.__format__ accepts only the empty format spec.
                return ready(Err(Error::type_error(format!(
                    "unsupported format string passed to {}.__format__",
                    short_name(&call.target.class)
                ))));
            }
            text(call.ctx.clone(), Object::Local(call.target.clone()), &["__str__", "__repr__"])
        }),
        "__hash__" => method("__hash__()", |call| match args(&call, 0) {
            Ok(_) => ready(Ok(Object::Value(Value::from(object_hash(&call.target))))),
            Err(e) => ready(Err(e)),
        }),
        "__eq__" | "__ne__" | "__lt__" | "__le__" | "__gt__" | "__ge__" => {
            let op = name.to_string();
            method(&format!("{name}(other)"), move |call| match args(&call, 1) {
                Ok(a) => {
                    let other = a.into_iter().next().unwrap_or_else(Object::none);
                    cmp(call.ctx.clone(), Object::Local(call.target.clone()), other, &op)
                }
                Err(e) => ready(Err(e)),
            })
        }
        _ => return None,
    })
}

fn short_name(c: &ClassDef) -> &str {
    c.name.rsplit('.').next().unwrap_or(&c.name)
}

fn attr_call(ctx: &Ctx, inst: &Arc<Instance>, name: &str) -> Call {
    Call::new(ctx.clone(), inst.clone(), Arc::new(Signature::parse(name)), Vec::new(), Vec::new())
}

fn getattr(ctx: &Ctx, obj: &Object, name: &str) -> Result<Object> {
    let inst = target(obj).map_err(|_| Error::cannot_access(name))?;
    let member = resolve(ctx, &inst, name, Access::Get)?;
    match member.kind {
        MemberKind::Attr { get, .. } => get(&attr_call(ctx, &inst, name)),
        MemberKind::Method { f, sig } => Ok(bound_method(inst, f, sig)),
    }
}

fn setattr(ctx: &Ctx, obj: &Object, name: &str, value: Object) -> Result<Object> {
    let inst = target(obj).map_err(|_| Error::cannot_access(name))?;
    let member = resolve(ctx, &inst, name, Access::Set)?;
    match member.kind {
        MemberKind::Attr { set: Some(set), .. } => set(&attr_call(ctx, &inst, name), value).map(|_| Object::none()),
        _ => Err(Error::attribute_error(format!("can't set attribute {}", Value::from(name).repr()))),
    }
}

fn delattr(ctx: &Ctx, obj: &Object, name: &str) -> Result<Object> {
    let inst = target(obj).map_err(|_| Error::cannot_access(name))?;
    resolve(ctx, &inst, name, Access::Del)?;
    Err(Error::attribute_error(format!("can't delete attribute {}", Value::from(name).repr())))
}

fn invoke_member(
    ctx: Ctx,
    inst: Arc<Instance>,
    member: Member,
    name: &str,
    args: Vec<Object>,
    kwargs: Vec<(String, Object)>,
) -> BoxFuture<Result<Object>> {
    match member.kind {
        MemberKind::Method { f, sig } => f(Call::new(ctx, inst, sig, args, kwargs)),
        MemberKind::Attr { get, .. } => match get(&attr_call(&ctx, &inst, name)) {
            Ok(value) => call(ctx, &value, args, kwargs),
            Err(e) => ready(Err(e)),
        },
    }
}

fn call(ctx: Ctx, obj: &Object, args: Vec<Object>, kwargs: Vec<(String, Object)>) -> BoxFuture<Result<Object>> {
    let inst = match obj {
        Object::Local(i) => i.clone(),
        other => return ready(Err(Error::type_error(format!("'{}' object is not callable", other.describe())))),
    };
    match inst.class.member("__call__").cloned() {
        Some(m) => invoke_member(ctx, inst, m, "__call__", args, kwargs),
        None => ready(Err(Error::type_error(format!("'{}' object is not callable", short_name(&inst.class))))),
    }
}

fn callattr(
    ctx: Ctx,
    obj: &Object,
    name: &str,
    args: Vec<Object>,
    kwargs: Vec<(String, Object)>,
) -> BoxFuture<Result<Object>> {
    let inst = match target(obj) {
        Ok(i) => i,
        Err(_) => return ready(Err(Error::cannot_access(name))),
    };
    match resolve(&ctx, &inst, name, Access::Get) {
        Ok(m) => invoke_member(ctx, inst, m, name, args, kwargs),
        Err(e) => ready(Err(e)),
    }
}

struct BoundMethod {
    target: Arc<Instance>,
    f: CallFn,
    sig: Arc<Signature>,
}

fn bound_method_class() -> Arc<ClassDef> {
    static CLASS: OnceLock<Arc<ClassDef>> = OnceLock::new();
    CLASS
        .get_or_init(|| {
            let mut b = ClassBuilder::<BoundMethod>::new("builtins.method");
            let f: CallFn = Arc::new(|mut call: Call| match call.target.state.clone().downcast::<BoundMethod>() {
                Ok(bm) => {
                    call.target = bm.target.clone();
                    call.sig = bm.sig.clone();
                    (bm.f)(call)
                }
                Err(_) => ready(Err(Error::type_error("bound method state is broken"))),
            });
            b.insert_fn("__call__(*args)", Visibility::Plain, f);
            b.build_def()
        })
        .clone()
}

fn bound_method(target: Arc<Instance>, f: CallFn, sig: Arc<Signature>) -> Object {
    Object::Local(Instance::new(bound_method_class(), BoundMethod { target, f, sig }))
}

/// REPR / STR: the first of `names` the object defines, else Python's default.
fn text(ctx: Ctx, obj: Object, names: &[&str]) -> BoxFuture<Result<Object>> {
    let inst = match obj {
        Object::Local(i) => i,
        Object::Value(v) => return ready(Ok(Object::Value(Value::Str(v.repr())))),
        other => return ready(Ok(Object::Value(Value::Str(format!("<{}>", other.describe()))))),
    };
    for name in names {
        if let Some(m) = inst.class.member(name).cloned() {
            return invoke_member(ctx, inst, m, name, vec![], vec![]);
        }
    }
    let id = object_hash(&inst);
    ready(Ok(Object::Value(Value::Str(format!(
        "<{} object at 0x{:x}>",
        inst.class.name,
        id as u64 & 0xffff_ffff_ffff
    )))))
}

fn object_hash(inst: &Arc<Instance>) -> i64 {
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    (KEYS.get_or_init(Default::default).hash_one(Arc::as_ptr(inst) as *const () as usize) >> 1) as i64
}

fn hash(ctx: Ctx, obj: Object) -> BoxFuture<Result<Object>> {
    let inst = match target(&obj) {
        Ok(i) => i,
        Err(e) => return ready(Err(e)),
    };
    match inst.class.member("__hash__").cloned() {
        Some(m) => invoke_member(ctx, inst, m, "__hash__", vec![], vec![]),
        None => ready(Ok(Object::Value(Value::from(object_hash(&inst))))),
    }
}

fn cmp(ctx: Ctx, obj: Object, other: Object, op: &str) -> BoxFuture<Result<Object>> {
    let inst = match target(&obj) {
        Ok(i) => i,
        Err(e) => return ready(Err(e)),
    };
    if inst.class.member(op).is_some() {
        return match resolve(&ctx, &inst, op, Access::Get) {
            Ok(m) => invoke_member(ctx, inst, m, op, vec![other], vec![]),
            Err(e) => ready(Err(e)),
        };
    }
    let same = matches!(&other, Object::Local(o) if Arc::ptr_eq(o, &inst));
    ready(Ok(Object::Value(match op {
        "__eq__" => Value::Bool(same),
        "__ne__" => Value::Bool(!same),
        _ => Value::NotImplemented,
    })))
}

fn visible(ctx: &Ctx, inst: &Arc<Instance>, name: &str) -> bool {
    matches!(
        ctx.policy().resolve(name, Access::Get, |n| inst.class.visibility(n)),
        Some(Resolved::Member(m)) if m == name && (!is_root(ctx, inst) || ctx.policy().method_allowed(&m))
    )
}

fn dir(ctx: &Ctx, obj: &Object) -> Result<Object> {
    let inst = target(obj)?;
    let mut names: Vec<String> =
        inst.class.member_names().filter(|n| visible(ctx, &inst, n)).map(str::to_string).collect();
    names.sort();
    Ok(Object::Value(Value::Tuple(names.into_iter().map(Value::Str).collect())))
}

fn inspect(ctx: &Ctx, pack: &Object) -> Result<Object> {
    let pack =
        pack.as_value().and_then(IdPack::from_value).ok_or_else(|| Error::type_error("INSPECT needs an id-pack"))?;
    let inst = ctx.conn.shared.local_object(&pack)?;
    let mut methods = Vec::new();
    for name in inst.class.member_names() {
        let Some(m) = inst.class.member(name) else { continue };
        if !matches!(m.kind, MemberKind::Method { .. }) {
            continue;
        }
        let dunder = name.starts_with("__") && name.ends_with("__");
        if dunder || visible(ctx, &inst, name) {
            let doc = if m.doc.is_empty() { Value::None } else { Value::Str(m.doc.clone()) };
            methods.push(Value::Tuple(vec![Value::Str(name.to_string()), doc]));
        }
    }
    Ok(Object::Value(Value::Tuple(methods)))
}

fn buffiter(ctx: Ctx, obj: Object, count: Object) -> BoxFuture<Result<Object>> {
    let inst = match target(&obj) {
        Ok(i) => i,
        Err(e) => return ready(Err(e)),
    };
    let count = count.as_value().and_then(Value::as_i64).unwrap_or(0).clamp(0, MAX_BUFFITER as i64) as usize;
    let Some(next) = inst.class.member("__next__").cloned() else {
        return ready(Err(Error::type_error(format!("'{}' object is not an iterator", short_name(&inst.class)))));
    };
    Box::pin(async move {
        let mut items = Vec::new();
        for _ in 0..count {
            match invoke_member(ctx.clone(), inst.clone(), next.clone(), "__next__", vec![], vec![]).await {
                Ok(item) => items.push(item),
                Err(Error::Exception(e)) if e.is("StopIteration") => break,
                Err(e) => return Err(e),
            }
        }
        Ok(Object::Tuple(items))
    })
}

/// For tests of the handler table: the exception a peer gets for an unknown handler.
#[allow(dead_code)]
pub(super) fn unknown_handler(id: i64) -> Exception {
    Exception::new("KeyError", format!("unknown request handler {id}"))
}
