//! Reading a request the way the upstream will (mirrors
//! `Connection._dispatch_request` and `_unbox` in `rpyc/core/protocol.py`),
//! strictly enough that what the gateway checks is what the upstream runs.
//!
//! Python compares labels with `==` and looks handlers up in a dict, so
//! `4.0`, `True` or `complex(4, 0)` would mean "4" to it; and it calls
//! `handler(self, *args)`, so arguments that are not a tuple are iterated
//! (a reference would be iterated *on the other side*, out of our sight).
//! The gateway therefore accepts only the canonical shapes every RPyC peer
//! sends — exact small ints for handlers and labels, a tuple of arguments,
//! `(str, int, int)` id-packs — and refuses anything else as malformed
//! rather than guessing how Python would read it.

use super::policy::Denial;
use crate::wire::message::{LABEL_LOCAL_REF, LABEL_REMOTE_REF, LABEL_TUPLE, LABEL_VALUE};
use crate::wire::{Handler, Int, Value};

/// The object a request acts on, as far as policy is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// An object living on the upstream: (class id, instance id) of its id-pack.
    Upstream(i64, i64),
    /// A value, a tuple, the client's own object, or nothing.
    Other,
}

/// What policy needs to know about a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Inspected {
    pub handler: Handler,
    pub target: Target,
    /// Attribute names the upstream will look up on `target` (or its type).
    pub names: Vec<String>,
}

enum Arg<'a> {
    Value(&'a Value),
    LocalRef(&'a Value),
    Other,
}

fn malformed(why: impl Into<String>) -> Denial {
    Denial::Malformed(why.into())
}

fn exact_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(Int::Small(i)) => Some(*i),
        _ => None,
    }
}

/// Parses `(handler, boxed args)` of a request.
pub(crate) fn inspect_request(args: &Value) -> Result<Inspected, Denial> {
    let [handler, boxed] = args.as_tuple().unwrap_or_default() else {
        return Err(malformed("a request must be (handler, boxed arguments)"));
    };
    let id = exact_int(handler).ok_or_else(|| malformed(format!("handler {} is not an int", handler.repr())))?;
    let handler = Handler::from_id(id).ok_or_else(|| malformed(format!("unknown handler {id}")))?;
    let args = unbox_args(boxed)?;
    let target = match args.first() {
        Some(Arg::LocalRef(pack)) => id_pack(pack)?,
        _ => Target::Other,
    };
    let name_at = |i: usize| -> Result<Option<String>, Denial> {
        match args.get(i) {
            None => Ok(None),
            Some(Arg::Value(Value::Str(s))) => Ok(Some(s.clone())),
            // Python decodes bytes names as UTF-8.
            Some(Arg::Value(Value::Bytes(b))) => {
                String::from_utf8(b.clone()).map(Some).map_err(|_| malformed("attribute name is not UTF-8"))
            }
            Some(_) => Err(malformed(format!("{} attribute name is not a string", handler.name()))),
        }
    };
    let mut names = Vec::new();
    match handler {
        Handler::GetAttr | Handler::SetAttr | Handler::DelAttr | Handler::CallAttr => {
            names.extend(name_at(1)?);
        }
        // `getattr(type(obj), op)(obj, other)`: the op is an attribute name.
        Handler::Cmp => names.push(name_at(2)?.unwrap_or_else(|| "__cmp__".to_string())),
        // `getattr(obj, attempt)`, then `getattr(obj, fallback)`.
        Handler::OldSlicing => {
            names.extend(name_at(1)?);
            names.extend(name_at(2)?);
        }
        Handler::CtxExit => names.push("__exit__".to_string()),
        _ => {}
    }
    Ok(Inspected { handler, target, names })
}

fn unbox_args(boxed: &Value) -> Result<Vec<Arg<'_>>, Denial> {
    let [label, payload] = boxed.as_tuple().unwrap_or_default() else {
        return Err(malformed("arguments must be a boxed (label, value) pair"));
    };
    let items = payload.as_tuple().ok_or_else(|| malformed("arguments are not a tuple"))?;
    match exact_int(label) {
        Some(LABEL_VALUE) => Ok(items.iter().map(Arg::Value).collect()),
        Some(LABEL_TUPLE) => items.iter().map(unbox_one).collect(),
        _ => Err(malformed(format!("arguments carry label {}; expected 1 or 2", label.repr()))),
    }
}

fn unbox_one(item: &Value) -> Result<Arg<'_>, Denial> {
    let [label, payload] = item.as_tuple().unwrap_or_default() else {
        return Err(malformed("an argument is not a boxed (label, value) pair"));
    };
    match exact_int(label) {
        Some(LABEL_VALUE) => Ok(Arg::Value(payload)),
        Some(LABEL_LOCAL_REF) => Ok(Arg::LocalRef(payload)),
        Some(LABEL_TUPLE | LABEL_REMOTE_REF) => Ok(Arg::Other),
        _ => Err(malformed(format!("an argument carries label {}; expected 1 to 4", label.repr()))),
    }
}

fn id_pack(v: &Value) -> Result<Target, Denial> {
    match v.as_tuple() {
        Some([Value::Str(_) | Value::Bytes(_), Value::Int(Int::Small(c)), Value::Int(Int::Small(i))]) => {
            Ok(Target::Upstream(*c, *i))
        }
        _ => Err(malformed(format!("object reference {} is not an id-pack", short(v)))),
    }
}

/// The (class id, instance id) of the object in a reply's boxed value, if it
/// is a reference to an upstream object (how GETROOT answers).
pub(crate) fn remote_ref(boxed: &Value) -> Option<(i64, i64)> {
    match boxed.as_tuple()? {
        [label, pack] if exact_int(label) == Some(LABEL_REMOTE_REF) => match id_pack(pack) {
            Ok(Target::Upstream(c, i)) => Some((c, i)),
            _ => None,
        },
        _ => None,
    }
}

fn short(v: &Value) -> String {
    let mut s = v.repr();
    if s.len() > 80 {
        let mut cut = 77;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack() -> Value {
        Value::Tuple(vec!["SlaveService".into(), Value::from(11), Value::from(22)])
    }
    fn req(handler: Value, boxed: Value) -> Value {
        Value::Tuple(vec![handler, boxed])
    }
    fn tuple_args(items: Vec<Value>) -> Value {
        Value::Tuple(vec![Value::from(LABEL_TUPLE), Value::Tuple(items)])
    }
    fn local(v: Value) -> Value {
        Value::Tuple(vec![Value::from(LABEL_LOCAL_REF), v])
    }
    fn val(v: Value) -> Value {
        Value::Tuple(vec![Value::from(LABEL_VALUE), v])
    }

    #[test]
    fn getattr_on_an_upstream_object() {
        let r = inspect_request(&req(Value::from(4), tuple_args(vec![local(pack()), val("eval".into())])));
        let r = r.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(r.handler, Handler::GetAttr);
        assert_eq!(r.target, Target::Upstream(11, 22));
        assert_eq!(r.names, vec!["eval".to_string()]);
    }

    #[test]
    fn cmp_op_and_bytes_names_are_names() {
        let r = inspect_request(&req(
            Value::from(11),
            tuple_args(vec![local(pack()), val(Value::from(1)), val(Value::Bytes(b"eval".to_vec()))]),
        ));
        assert_eq!(r.map(|r| r.names).ok(), Some(vec!["eval".to_string()]));
        // A value target (e.g. `().__class__`) is still checked by name.
        let r =
            inspect_request(&req(Value::from(4), val(Value::Tuple(vec![Value::Tuple(vec![]), "__class__".into()]))));
        assert_eq!(r.map(|r| (r.target, r.names)).ok(), Some((Target::Other, vec!["__class__".to_string()])));
    }

    #[test]
    fn non_canonical_shapes_are_refused() {
        let ok_args = tuple_args(vec![local(pack()), val("x".into())]);
        for bad in [
            req(Value::Float(4.0), ok_args.clone()),
            req(Value::Bool(true), ok_args.clone()),
            req(Value::from(99), ok_args.clone()),
            req(Value::from(4), Value::Tuple(vec![Value::from(LABEL_LOCAL_REF), pack()])),
            req(Value::from(4), Value::Tuple(vec![Value::from(LABEL_VALUE), "ab".into()])),
            req(Value::from(4), Value::Tuple(vec![Value::Float(2.0), Value::Tuple(vec![])])),
            req(
                Value::from(4),
                tuple_args(vec![
                    local(Value::Tuple(vec!["S".into(), Value::Float(11.0), Value::from(22)])),
                    val("x".into()),
                ]),
            ),
            req(Value::from(4), tuple_args(vec![Value::Tuple(vec![Value::Float(3.0), pack()]), val("x".into())])),
            req(Value::from(4), tuple_args(vec![local(pack()), local(pack())])),
        ] {
            assert!(matches!(inspect_request(&bad), Err(Denial::Malformed(_))), "{} was accepted", bad.repr());
        }
    }

    #[test]
    fn root_reference_from_a_reply() {
        let boxed = Value::Tuple(vec![Value::from(LABEL_REMOTE_REF), pack()]);
        assert_eq!(remote_ref(&boxed), Some((11, 22)));
        assert_eq!(remote_ref(&val(pack())), None);
    }
}
