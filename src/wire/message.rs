//! Messages and boxing labels (mirrors `rpyc/core/protocol.py` `_send`,
//! `_dispatch`, `_box`, `_unbox` and `rpyc/core/consts.py`).
//!
//! rpyc 6.x frames a message as one message-type byte followed by brine
//! `(seq, args)`; rpyc 5.x sends one brine 3-tuple `(msg, seq, args)`. The two
//! cannot be told apart by configuration alone, so a server detects the
//! dialect from the first byte of the first payload it receives (a 6.x
//! payload starts with 1–3, a 5.x payload with the 3-tuple tag 0x12) and
//! answers in kind.

use super::brine::{self, BrineError, DecodeLimits};
use super::value::{Int, Value};

/// A request.
pub const MSG_REQUEST: u8 = 1;
/// A successful reply.
pub const MSG_REPLY: u8 = 2;
/// An exception reply.
pub const MSG_EXCEPTION: u8 = 3;

/// A brine value sent by value.
pub const LABEL_VALUE: i64 = 1;
/// A tuple holding at least one reference.
pub const LABEL_TUPLE: i64 = 2;
/// An object that lives on the receiver (the sender hands it back).
pub const LABEL_LOCAL_REF: i64 = 3;
/// An object that lives on the sender (the receiver makes a proxy).
pub const LABEL_REMOTE_REF: i64 = 4;

/// The dumped form of `StopIteration` (vinegar's optimisation).
pub const EXC_STOP_ITERATION: i64 = 1;

/// The request handlers of the RPyC protocol (`consts.HANDLE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum Handler {
    Ping = 1,
    Close = 2,
    GetRoot = 3,
    GetAttr = 4,
    DelAttr = 5,
    SetAttr = 6,
    Call = 7,
    CallAttr = 8,
    Repr = 9,
    Str = 10,
    Cmp = 11,
    Hash = 12,
    Dir = 13,
    Pickle = 14,
    Del = 15,
    Inspect = 16,
    BuffIter = 17,
    OldSlicing = 18,
    CtxExit = 19,
    InstanceCheck = 20,
}

impl Handler {
    /// The handler for a wire id, if it is one RPyC defines.
    pub fn from_id(id: i64) -> Option<Handler> {
        use Handler::*;
        Some(match id {
            1 => Ping,
            2 => Close,
            3 => GetRoot,
            4 => GetAttr,
            5 => DelAttr,
            6 => SetAttr,
            7 => Call,
            8 => CallAttr,
            9 => Repr,
            10 => Str,
            11 => Cmp,
            12 => Hash,
            13 => Dir,
            14 => Pickle,
            15 => Del,
            16 => Inspect,
            17 => BuffIter,
            18 => OldSlicing,
            19 => CtxExit,
            20 => InstanceCheck,
            _ => return None,
        })
    }

    /// The wire id.
    pub fn id(self) -> i64 {
        self as u8 as i64
    }

    /// True for the handlers whose second argument is an attribute name
    /// (GETATTR, SETATTR, DELATTR, CALLATTR).
    pub fn names_attribute(self) -> bool {
        matches!(self, Handler::GetAttr | Handler::SetAttr | Handler::DelAttr | Handler::CallAttr)
    }

    /// The Python constant's name, for logs and audit lines.
    pub fn name(self) -> &'static str {
        use Handler::*;
        match self {
            Ping => "PING",
            Close => "CLOSE",
            GetRoot => "GETROOT",
            GetAttr => "GETATTR",
            DelAttr => "DELATTR",
            SetAttr => "SETATTR",
            Call => "CALL",
            CallAttr => "CALLATTR",
            Repr => "REPR",
            Str => "STR",
            Cmp => "CMP",
            Hash => "HASH",
            Dir => "DIR",
            Pickle => "PICKLE",
            Del => "DEL",
            Inspect => "INSPECT",
            BuffIter => "BUFFITER",
            OldSlicing => "OLDSLICING",
            CtxExit => "CTXEXIT",
            InstanceCheck => "INSTANCECHECK",
        }
    }
}

/// Which framing of messages a peer speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Dialect {
    /// rpyc 6.x: message-type byte, then brine `(seq, args)`.
    #[default]
    V6,
    /// rpyc 5.x: brine `(msg, seq, args)`.
    V5,
}

impl Dialect {
    /// Guesses the dialect from the first byte of a payload.
    pub fn detect(payload: &[u8]) -> Option<Dialect> {
        match payload.first() {
            Some(1..=3) => Some(Dialect::V6),
            Some(0x12) => Some(Dialect::V5),
            _ => None,
        }
    }

    /// The rpyc version string this dialect corresponds to (sent as
    /// `_remote_version` in exceptions).
    pub fn version(self) -> &'static str {
        match self {
            Dialect::V6 => "6.0.2",
            Dialect::V5 => "5.3.1",
        }
    }
}

/// What a peer using rpyc 6's experimental `bind_threads` framing
/// (`bind_threads=True`, or `RPYC_BIND_THREADS=true` in its environment)
/// is told: that framing prefixes every message with two thread ids, which
/// this implementation does not speak.
pub const BIND_THREADS_REFUSAL: &str = "the peer uses rpyc's experimental bind_threads framing \
     (protocol config bind_threads=True or RPYC_BIND_THREADS=true), which is not supported here: \
     turn it off on the peer";

/// If `payload` is an rpyc 6.x message in `bind_threads` framing — two
/// big-endian 64-bit thread ids (`brine.I8I8`: the sender's thread, the
/// receiver's or 0), then the message — returns the sender's thread id and
/// the sequence number and kind of the message inside.
pub fn bind_threads_message(payload: &[u8]) -> Option<(u64, i64, u8)> {
    let (ids, rest) = (payload.get(..16)?, payload.get(16..)?);
    if Dialect::detect(rest) != Some(Dialect::V6) || Dialect::detect(payload).is_some() {
        return None;
    }
    let sender = u64::from_be_bytes(ids.get(..8)?.try_into().ok()?);
    let m = decode_message(Dialect::V6, rest, &DecodeLimits::default()).ok()?;
    Some((sender, m.seq, m.kind))
}

/// The payload answering a `bind_threads` request with
/// [`BIND_THREADS_REFUSAL`] as an exception, in the peer's framing, so
/// that its pending call raises the reason rather than hanging.
pub fn bind_threads_refusal(sender: u64, seq: i64, exc: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&1u64.to_be_bytes());
    out.extend_from_slice(&sender.to_be_bytes());
    encode_message(Dialect::V6, MSG_EXCEPTION, seq, exc, &mut out);
    out
}

/// A decoded message, before unboxing.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// One of [`MSG_REQUEST`], [`MSG_REPLY`], [`MSG_EXCEPTION`].
    pub kind: u8,
    /// The sender's sequence number.
    pub seq: i64,
    /// The message body: `(handler, boxed args)` for a request, a boxed value
    /// for a reply, a dumped exception for an exception.
    pub args: Value,
}

/// Why a payload is not a valid message.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageError {
    /// The payload is not brine.
    #[error(transparent)]
    Brine(#[from] BrineError),
    /// The message type is not request, reply or exception.
    #[error("unknown message type {0} (expected 1 request, 2 reply or 3 exception)")]
    UnknownKind(i64),
    /// The payload was empty.
    #[error("empty message payload")]
    Empty,
    /// The structure around the brine value is wrong.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

/// Encodes a message in the given dialect, appending to `out`.
pub fn encode_message(dialect: Dialect, kind: u8, seq: i64, args: &Value, out: &mut Vec<u8>) {
    encode_head(dialect, kind, seq, out);
    brine::encode_into(args, out);
}

/// Encodes everything of a message before its args; the brine encoding of
/// the args must follow.
pub fn encode_head(dialect: Dialect, kind: u8, seq: i64, out: &mut Vec<u8>) {
    match dialect {
        Dialect::V6 => {
            out.push(kind);
            brine::encode_tuple_header(2, out);
            brine::encode_i64(seq, out);
        }
        Dialect::V5 => {
            brine::encode_tuple_header(3, out);
            brine::encode_i64(i64::from(kind), out);
            brine::encode_i64(seq, out);
        }
    }
}

/// Decodes a payload in the given dialect.
pub fn decode_message(dialect: Dialect, payload: &[u8], limits: &DecodeLimits) -> Result<Message, MessageError> {
    decode_message_with(dialect, payload, |start| brine::decode(payload.get(start..).unwrap_or_default(), limits))
}

/// [`decode_message`], consuming the payload: a large `bytes`/`str`
/// argument or result becomes the payload buffer itself instead of a copy
/// (see [`brine::decode_owned`]).
pub fn decode_message_owned(
    dialect: Dialect,
    payload: Vec<u8>,
    limits: &DecodeLimits,
) -> Result<Message, MessageError> {
    decode_message_owned_sized(dialect, payload, limits).map(|(m, _)| m)
}

/// [`decode_message_owned`], also returning the memory its values were
/// charged (see [`DecodeLimits::max_decoded_bytes`]).
pub fn decode_message_owned_sized(
    dialect: Dialect,
    payload: Vec<u8>,
    limits: &DecodeLimits,
) -> Result<(Message, usize), MessageError> {
    let head: [u8; 1] = [payload.first().copied().unwrap_or(0)];
    let empty = payload.is_empty();
    let mut size = 0;
    let msg = decode_message_with(dialect, if empty { &[] } else { &head }, |start| {
        brine::decode_owned_sized(payload, start, limits).map(|(v, n)| {
            size = n;
            v
        })
    })?;
    Ok((msg, size))
}

/// The framing around the brine value; `decode(start)` decodes the brine
/// value at `start` of the payload. `payload` needs only its first byte.
fn decode_message_with(
    dialect: Dialect,
    payload: &[u8],
    decode: impl FnOnce(usize) -> Result<Value, BrineError>,
) -> Result<Message, MessageError> {
    match dialect {
        Dialect::V6 => {
            let &kind = payload.first().ok_or(MessageError::Empty)?;
            if !(MSG_REQUEST..=MSG_EXCEPTION).contains(&kind) {
                return Err(MessageError::UnknownKind(i64::from(kind)));
            }
            match decode(1)? {
                Value::Tuple(mut t) if t.len() == 2 => {
                    let args = t.pop().unwrap_or(Value::None);
                    let seq = seq_of(t.pop())?;
                    Ok(Message { kind, seq, args })
                }
                _ => Err(MessageError::Malformed("expected (seq, args)")),
            }
        }
        Dialect::V5 => match decode(0)? {
            Value::Tuple(mut t) if t.len() == 3 => {
                let args = t.pop().unwrap_or(Value::None);
                let seq = seq_of(t.pop())?;
                let kind = match t.pop() {
                    Some(Value::Int(Int::Small(k))) if (1..=3).contains(&k) => k as u8,
                    Some(Value::Int(Int::Small(k))) => return Err(MessageError::UnknownKind(k)),
                    _ => return Err(MessageError::Malformed("message type is not an int")),
                };
                Ok(Message { kind, seq, args })
            }
            _ => Err(MessageError::Malformed("expected (msg, seq, args)")),
        },
    }
}

fn seq_of(v: Option<Value>) -> Result<i64, MessageError> {
    match v {
        Some(Value::Int(Int::Small(s))) => Ok(s),
        _ => Err(MessageError::Malformed("sequence number is not a 64-bit int")),
    }
}

/// An id-pack: `(qualified class name, class id, instance id)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdPack {
    /// E.g. `"builtins.list"`; Python picks proxy classes by this name.
    pub class_name: String,
    /// Identifies the class on its home side.
    pub class_id: i64,
    /// Identifies the instance on its home side (0 for a class object).
    pub instance_id: i64,
}

impl IdPack {
    /// Appends the brine encoding of [`IdPack::to_value`] (without building it).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        brine::encode_tuple_header(3, out);
        brine::encode_str(&self.class_name, out);
        brine::encode_i64(self.class_id, out);
        brine::encode_i64(self.instance_id, out);
    }

    /// The id-pack as a brine tuple.
    pub fn to_value(&self) -> Value {
        Value::Tuple(vec![
            Value::Str(self.class_name.clone()),
            Value::Int(Int::Small(self.class_id)),
            Value::Int(Int::Small(self.instance_id)),
        ])
    }

    /// Parses an id-pack; the name may arrive as str or bytes.
    pub fn from_value(v: &Value) -> Option<IdPack> {
        let t = v.as_tuple()?;
        if t.len() != 3 {
            return None;
        }
        let class_name = match &t[0] {
            Value::Str(s) => s.clone(),
            Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            _ => return None,
        };
        // Python ids are machine words; anything else cannot name one of our objects.
        let class_id = match &t[1] {
            Value::Int(Int::Small(v)) => *v,
            Value::Int(Int::Big(_)) => -1,
            _ => return None,
        };
        let instance_id = match &t[2] {
            Value::Int(Int::Small(v)) => *v,
            Value::Int(Int::Big(_)) => -1,
            _ => return None,
        };
        Some(IdPack { class_name, class_id, instance_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialects_round_trip() {
        let args = Value::Tuple(vec![Value::from(3), Value::Tuple(vec![])]);
        for d in [Dialect::V6, Dialect::V5] {
            let mut buf = Vec::new();
            encode_message(d, MSG_REQUEST, 7, &args, &mut buf);
            assert_eq!(Dialect::detect(&buf), Some(d));
            let m = decode_message(d, &buf, &DecodeLimits::default());
            assert_eq!(m.ok(), Some(Message { kind: MSG_REQUEST, seq: 7, args: args.clone() }));
        }
    }
}
