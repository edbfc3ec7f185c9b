//! Reading a message the way the upstream will (mirrors
//! `Connection._dispatch_request`, `_box` and `_unbox` in
//! `rpyc/core/protocol.py`), without building it.
//!
//! The gateway needs a message's kind, sequence number, handler, the
//! references it carries (id-packs, with their labels) and a few small
//! arguments (attribute names, counts). Everything else is relayed as the
//! bytes that arrived, so it is only *checked* here ([`Cursor::skip`]): a
//! frame that inflates to 64 MiB of `None`s costs the gateway no memory
//! beyond the frame itself.
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
use crate::wire::brine::{Cursor, SkipCost};
use crate::wire::message::{LABEL_LOCAL_REF, LABEL_REMOTE_REF, LABEL_TUPLE, LABEL_VALUE};
use crate::wire::{DecodeLimits, Dialect, Handler, IdPack, Int, Value};

/// Longest attribute name the gateway forwards (Python names are short;
/// a long one can only be an attack on whoever logs it).
const MAX_NAME: usize = 1024;

fn malformed(why: impl Into<String>) -> Denial {
    Denial::Malformed(why.into())
}

fn brine(e: crate::wire::BrineError) -> Denial {
    malformed(format!("not brine: {e}"))
}

/// A message's envelope: kind, sequence number and where its body starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub kind: u8,
    pub seq: i64,
    /// Offset of the body value (request `(handler, args)`, boxed reply, or
    /// dumped exception) in the payload.
    pub body: usize,
    /// What decoding the message would cost a Python peer.
    pub cost: SkipCost,
}

/// Reads and checks a whole message: the envelope is read, the body is
/// checked to be one brine value ending the payload.
pub(crate) fn head(dialect: Dialect, payload: &[u8], limits: &DecodeLimits) -> Result<Head, Denial> {
    let (kind, mut c) = match dialect {
        Dialect::V6 => {
            let kind = *payload.first().ok_or_else(|| malformed("empty message"))?;
            let mut c = Cursor::at(payload, 1, limits);
            if c.tuple().map_err(brine)? != Some(2) {
                return Err(malformed("expected (seq, args)"));
            }
            (kind, c)
        }
        Dialect::V5 => {
            let mut c = Cursor::at(payload, 0, limits);
            if c.tuple().map_err(brine)? != Some(3) {
                return Err(malformed("expected (msg, seq, args)"));
            }
            let kind = small_int(&mut c, 1)?.ok_or_else(|| malformed("message type is not an int"))?;
            (u8::try_from(kind).unwrap_or(0), c)
        }
    };
    if !(1..=3).contains(&kind) {
        return Err(malformed(format!("unknown message type {kind}")));
    }
    let seq = small_int(&mut c, 1)?.ok_or_else(|| malformed("sequence number is not a 64-bit int"))?;
    let before = c.cost();
    let body = c.skip(1).map_err(brine)?;
    if !c.at_end() {
        return Err(malformed("bytes after the message"));
    }
    let after = c.cost();
    let cost = SkipCost {
        values: after.values - before.values,
        set_work: after.set_work - before.set_work,
        digits: after.digits - before.digits,
    };
    Ok(Head { kind, seq, body, cost })
}

/// Reads the next value if it is an exact small int; `None` (value
/// consumed) if it is anything else.
fn small_int(c: &mut Cursor<'_>, depth: usize) -> Result<Option<i64>, Denial> {
    let start = c.pos();
    c.skip(depth).map_err(brine)?;
    // Ints are at most a few bytes; decode only those.
    if c.pos() - start > 24 {
        return Ok(None);
    }
    let mut again = Cursor::at_span(c, start);
    match again.value(depth).map_err(brine)? {
        Value::Int(Int::Small(i)) => Ok(Some(i)),
        _ => Ok(None),
    }
}

/// Which side an object referenced in a message lives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefLabel {
    /// `LABEL_LOCAL_REF`: an object of the receiver.
    Local,
    /// `LABEL_REMOTE_REF`: an object of the sender.
    Remote,
}

/// One argument of a request, as the upstream will unbox it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Arg {
    /// A by-value argument: its span in the payload.
    Value(usize, usize),
    /// A reference to an object of the upstream (the client's proxy).
    Local(IdPack),
    /// A reference to an object of the client.
    Remote(IdPack),
    /// A tuple holding references: the span of its boxed `(2, items)` pair.
    Tuple(usize, usize),
}

/// A request: handler and unboxed top-level arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub handler: Handler,
    pub args: Vec<Arg>,
}

/// How many arguments each handler takes (`handler(self, *args)`), as
/// (required, most).
fn arity(h: Handler) -> (usize, usize) {
    match h {
        Handler::Close | Handler::GetRoot => (0, 0),
        Handler::Ping | Handler::Repr | Handler::Str | Handler::Hash | Handler::Dir | Handler::Inspect => (1, 1),
        Handler::Del => (1, 2),
        Handler::GetAttr | Handler::DelAttr | Handler::BuffIter | Handler::CtxExit => (2, 2),
        Handler::Pickle | Handler::InstanceCheck => (2, 2),
        Handler::SetAttr => (3, 3),
        Handler::Call | Handler::Cmp => (2, 3),
        Handler::CallAttr => (3, 4),
        Handler::OldSlicing => (6, 6),
    }
}

/// Reads a request body: `(handler, boxed args)`.
pub(crate) fn request(payload: &[u8], body: usize, limits: &DecodeLimits) -> Result<Request, Denial> {
    let mut c = Cursor::at(payload, body, limits);
    if c.tuple().map_err(brine)? != Some(2) {
        return Err(malformed("a request must be (handler, boxed arguments)"));
    }
    let id = small_int(&mut c, 2)?.ok_or_else(|| malformed("the handler is not an int"))?;
    let handler = Handler::from_id(id).ok_or_else(|| malformed(format!("unknown handler {id}")))?;
    if c.tuple().map_err(brine)? != Some(2) {
        return Err(malformed("arguments must be a boxed (label, value) pair"));
    }
    let label = small_int(&mut c, 3)?;
    let n = c.tuple().map_err(brine)?.ok_or_else(|| malformed("arguments are not a tuple"))?;
    let (least, most) = arity(handler);
    if n < least || n > most {
        return Err(malformed(format!("{} takes {least} to {most} arguments, not {n}", handler.name())));
    }
    let mut args = Vec::with_capacity(n);
    match label {
        Some(LABEL_VALUE) => {
            for _ in 0..n {
                let start = c.skip(4).map_err(brine)?;
                args.push(Arg::Value(start, c.pos()));
            }
        }
        Some(LABEL_TUPLE) => {
            for _ in 0..n {
                args.push(boxed_arg(&mut c, 4)?);
            }
        }
        _ => return Err(malformed("arguments carry a label other than 1 or 2")),
    }
    Ok(Request { handler, args })
}

/// Reads one boxed `(label, payload)` at top level.
fn boxed_arg(c: &mut Cursor<'_>, depth: usize) -> Result<Arg, Denial> {
    let start = c.pos();
    if c.tuple().map_err(brine)? != Some(2) {
        return Err(malformed("an argument is not a boxed (label, value) pair"));
    }
    match small_int(c, depth + 1)? {
        Some(LABEL_VALUE) => {
            let s = c.skip(depth + 1).map_err(brine)?;
            Ok(Arg::Value(s, c.pos()))
        }
        Some(LABEL_LOCAL_REF) => Ok(Arg::Local(id_pack(c, depth + 1)?)),
        Some(LABEL_REMOTE_REF) => Ok(Arg::Remote(id_pack(c, depth + 1)?)),
        Some(LABEL_TUPLE) => {
            let n = c.tuple().map_err(brine)?.ok_or_else(|| malformed("a boxed tuple is not a tuple"))?;
            for _ in 0..n {
                walk_boxed(c, depth + 2, &mut |_, _| Ok(()))?;
            }
            Ok(Arg::Tuple(start, c.pos()))
        }
        _ => Err(malformed("an argument carries a label other than 1 to 4")),
    }
}

/// Reads an id-pack `(str, int, int)`.
fn id_pack(c: &mut Cursor<'_>, depth: usize) -> Result<IdPack, Denial> {
    let start = c.pos();
    c.skip(depth).map_err(brine)?;
    if c.pos() - start > MAX_NAME + 64 {
        return Err(malformed("object reference is too long to be an id-pack"));
    }
    let v = Cursor::at_span(c, start).value(depth).map_err(brine)?;
    // Python's lookup is exact: `("x", 1, 2) != (b"x", 1, 2)`, so a bytes
    // name would name nothing on the upstream while matching here.
    match v.as_tuple() {
        Some([Value::Str(_), Value::Int(Int::Small(_)), Value::Int(Int::Small(_))]) => {
            IdPack::from_value(&v).ok_or_else(|| malformed("object reference is not an id-pack"))
        }
        _ => Err(malformed(format!("object reference {} is not an id-pack", short(&v)))),
    }
}

/// Walks one boxed value (a request argument inside a boxed tuple, a reply),
/// checking its boxing and calling `f` for every reference in it.
pub(crate) fn walk_boxed(
    c: &mut Cursor<'_>,
    depth: usize,
    f: &mut dyn FnMut(RefLabel, IdPack) -> Result<(), Denial>,
) -> Result<(), Denial> {
    if c.tuple().map_err(brine)? != Some(2) {
        return Err(malformed("a value is not a boxed (label, value) pair"));
    }
    match small_int(c, depth + 1)? {
        Some(LABEL_VALUE) => {
            c.skip(depth + 1).map_err(brine)?;
            Ok(())
        }
        Some(LABEL_LOCAL_REF) => f(RefLabel::Local, id_pack(c, depth + 1)?),
        Some(LABEL_REMOTE_REF) => f(RefLabel::Remote, id_pack(c, depth + 1)?),
        Some(LABEL_TUPLE) => {
            let n = c.tuple().map_err(brine)?.ok_or_else(|| malformed("a boxed tuple is not a tuple"))?;
            for _ in 0..n {
                walk_boxed(c, depth + 2, f)?;
            }
            Ok(())
        }
        _ => Err(malformed("a value carries a label other than 1 to 4")),
    }
}

/// Walks the boxed value starting at `at` (see [`walk_boxed`]); checks that
/// it is exactly one value.
pub(crate) fn walk_at(
    payload: &[u8],
    at: usize,
    depth: usize,
    limits: &DecodeLimits,
    f: &mut dyn FnMut(RefLabel, IdPack) -> Result<(), Denial>,
) -> Result<(), Denial> {
    let mut c = Cursor::at(payload, at, limits);
    walk_boxed(&mut c, depth, f)
}

/// The references inside an argument, with their labels.
pub(crate) fn arg_refs(
    payload: &[u8],
    arg: &Arg,
    limits: &DecodeLimits,
    f: &mut dyn FnMut(RefLabel, IdPack) -> Result<(), Denial>,
) -> Result<(), Denial> {
    match arg {
        Arg::Value(..) => Ok(()),
        Arg::Local(p) => f(RefLabel::Local, p.clone()),
        Arg::Remote(p) => f(RefLabel::Remote, p.clone()),
        Arg::Tuple(start, _) => walk_at(payload, *start, 4, limits, f),
    }
}

/// An argument that must be a short string (an attribute name; Python
/// decodes bytes names as UTF-8).
pub(crate) fn name_arg(payload: &[u8], arg: &Arg, limits: &DecodeLimits) -> Result<String, Denial> {
    let Arg::Value(s, e) = arg else {
        return Err(malformed("an attribute name is not a string"));
    };
    if e - s > MAX_NAME + 8 {
        return Err(malformed(format!("an attribute name longer than {MAX_NAME} bytes")));
    }
    match Cursor::at(payload, *s, limits).value(4).map_err(brine)? {
        Value::Str(n) => Ok(n),
        Value::Bytes(b) => String::from_utf8(b).map_err(|_| malformed("attribute name is not UTF-8")),
        _ => Err(malformed("an attribute name is not a string")),
    }
}

/// The attribute name a request names, for the audit trail (GETATTR,
/// SETATTR, DELATTR, CALLATTR, and OLDSLICING's first attempt).
pub(crate) fn audit_name(payload: &[u8], req: &Request, limits: &DecodeLimits) -> Option<String> {
    match (req.handler, req.args.get(1)) {
        (Handler::GetAttr | Handler::SetAttr | Handler::DelAttr | Handler::CallAttr | Handler::OldSlicing, Some(a)) => {
            name_arg(payload, a, limits).ok()
        }
        _ => None,
    }
}

/// An argument that must be an exact int (a count, a protocol number).
pub(crate) fn int_arg(payload: &[u8], arg: &Arg, limits: &DecodeLimits) -> Result<i64, Denial> {
    let Arg::Value(s, _) = arg else {
        return Err(malformed("expected an int argument"));
    };
    small_int(&mut Cursor::at(payload, *s, limits), 4)?.ok_or_else(|| malformed("expected an int argument"))
}

/// An argument that must be a by-value id-pack (INSPECT, INSTANCECHECK).
pub(crate) fn id_pack_arg(payload: &[u8], arg: &Arg, limits: &DecodeLimits) -> Result<IdPack, Denial> {
    let Arg::Value(s, _) = arg else {
        return Err(malformed("expected an id-pack argument"));
    };
    id_pack(&mut Cursor::at(payload, *s, limits), 4)
}

/// Checks that CALL's positional arguments are a tuple (Python runs
/// `obj(*args)`: anything else would be iterated on the upstream).
pub(crate) fn check_call_args(payload: &[u8], arg: &Arg, limits: &DecodeLimits) -> Result<(), Denial> {
    match arg {
        Arg::Tuple(..) => Ok(()),
        Arg::Value(s, _) if Cursor::at(payload, *s, limits).tuple().map_err(brine)?.is_some() => Ok(()),
        _ => Err(malformed("call arguments are not a tuple")),
    }
}

/// Checks that CALL's keyword arguments are a tuple of `(str, value)`
/// pairs (Python runs `dict(kwargs)`: keys are hashed and compared there).
pub(crate) fn check_kwargs(payload: &[u8], arg: &Arg, limits: &DecodeLimits) -> Result<(), Denial> {
    let bad = || malformed("keyword arguments are not a tuple of (str, value) pairs");
    let is_str = |c: &mut Cursor<'_>, depth: usize| -> Result<bool, Denial> {
        let start = c.pos();
        c.skip(depth).map_err(brine)?;
        if c.pos() - start > MAX_NAME + 8 {
            return Ok(false);
        }
        Ok(matches!(Cursor::at_span(c, start).value(depth).map_err(brine)?, Value::Str(_)))
    };
    match arg {
        Arg::Value(s, _) => {
            let mut c = Cursor::at(payload, *s, limits);
            let n = c.tuple().map_err(brine)?.ok_or_else(bad)?;
            for _ in 0..n {
                if c.tuple().map_err(brine)? != Some(2) || !is_str(&mut c, 6)? {
                    return Err(bad());
                }
                c.skip(6).map_err(brine)?;
            }
            Ok(())
        }
        Arg::Tuple(s, _) => {
            let mut c = Cursor::at(payload, *s, limits);
            // (2, (boxed pair, ...))
            c.tuple().map_err(brine)?;
            c.skip(5).map_err(brine)?;
            let n = c.tuple().map_err(brine)?.ok_or_else(bad)?;
            for _ in 0..n {
                if c.tuple().map_err(brine)? != Some(2) {
                    return Err(bad());
                }
                match small_int(&mut c, 7)? {
                    Some(LABEL_VALUE) => {
                        if c.tuple().map_err(brine)? != Some(2) || !is_str(&mut c, 8)? {
                            return Err(bad());
                        }
                        c.skip(8).map_err(brine)?;
                    }
                    Some(LABEL_TUPLE) => {
                        if c.tuple().map_err(brine)? != Some(2) {
                            return Err(bad());
                        }
                        // The key, boxed by value; then any boxed value.
                        if c.tuple().map_err(brine)? != Some(2) || small_int(&mut c, 9)? != Some(LABEL_VALUE) {
                            return Err(bad());
                        }
                        if !is_str(&mut c, 9)? {
                            return Err(bad());
                        }
                        walk_boxed(&mut c, 8, &mut |_, _| Ok(()))?;
                    }
                    _ => return Err(bad()),
                }
            }
            Ok(())
        }
        _ => Err(bad()),
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
    use crate::wire::message::{encode_message, MSG_REQUEST};

    fn pack() -> Value {
        Value::Tuple(vec!["SlaveService".into(), Value::from(11), Value::from(22)])
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
    fn msg(handler: Value, boxed: Value) -> Vec<u8> {
        let mut out = Vec::new();
        encode_message(Dialect::V6, MSG_REQUEST, 7, &Value::Tuple(vec![handler, boxed]), &mut out);
        out
    }
    fn parse(payload: &[u8]) -> Result<Request, Denial> {
        let limits = DecodeLimits::default();
        let h = head(Dialect::V6, payload, &limits)?;
        assert_eq!((h.kind, h.seq), (MSG_REQUEST, 7));
        request(payload, h.body, &limits)
    }

    #[test]
    fn getattr_on_an_upstream_object() {
        let p = msg(Value::from(4), tuple_args(vec![local(pack()), val("eval".into())]));
        let r = parse(&p).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(r.handler, Handler::GetAttr);
        assert!(matches!(&r.args[0], Arg::Local(id) if id.instance_id == 22));
        assert_eq!(name_arg(&p, &r.args[1], &DecodeLimits::default()).ok().as_deref(), Some("eval"));
    }

    #[test]
    fn non_canonical_shapes_are_refused() {
        let ok_args = tuple_args(vec![local(pack()), val("x".into())]);
        for (handler, boxed) in [
            (Value::Float(4.0), ok_args.clone()),
            (Value::Bool(true), ok_args.clone()),
            (Value::from(99), ok_args.clone()),
            (Value::from(4), Value::Tuple(vec![Value::from(LABEL_LOCAL_REF), pack()])),
            (Value::from(4), Value::Tuple(vec![Value::from(LABEL_VALUE), "ab".into()])),
            (Value::from(4), Value::Tuple(vec![Value::Float(2.0), Value::Tuple(vec![])])),
            (
                Value::from(4),
                tuple_args(vec![
                    local(Value::Tuple(vec!["S".into(), Value::Float(11.0), Value::from(22)])),
                    val("x".into()),
                ]),
            ),
            (Value::from(4), tuple_args(vec![Value::Tuple(vec![Value::Float(3.0), pack()]), val("x".into())])),
            // GETATTR takes two arguments.
            (Value::from(4), tuple_args(vec![local(pack()), val("x".into()), val("y".into())])),
        ] {
            let p = msg(handler, boxed);
            assert!(matches!(parse(&p), Err(Denial::Malformed(_))), "{p:?} was accepted");
        }
    }

    #[test]
    fn references_inside_tuples_are_found() {
        let remote = Value::Tuple(vec![Value::from(LABEL_REMOTE_REF), pack()]);
        let inner = tuple_args(vec![val(Value::from(1)), remote, tuple_args(vec![local(pack())])]);
        let p = msg(Value::from(7), tuple_args(vec![local(pack()), inner, val(Value::Tuple(vec![]))]));
        let r = parse(&p).unwrap_or_else(|e| panic!("{e:?}"));
        let mut seen = Vec::new();
        for a in &r.args {
            arg_refs(&p, a, &DecodeLimits::default(), &mut |l, id| {
                seen.push((l, id.instance_id));
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e:?}"));
        }
        assert_eq!(seen, vec![(RefLabel::Local, 22), (RefLabel::Remote, 22), (RefLabel::Local, 22)]);
        assert!(check_call_args(&p, &r.args[1], &DecodeLimits::default()).is_ok());
        assert!(check_kwargs(&p, &r.args[2], &DecodeLimits::default()).is_ok());
        assert!(check_call_args(&p, &r.args[0], &DecodeLimits::default()).is_err());
    }
}
