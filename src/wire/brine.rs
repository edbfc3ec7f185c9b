//! Brine: the byte format of values (mirrors `rpyc/core/brine.py`).
//!
//! Encoding is byte-identical to Python's `brine.dump`. Decoding treats its
//! input as hostile: every claimed length is checked against the bytes that
//! are actually present *before* anything is allocated, nesting depth and
//! integer size are capped, and no input can make it panic.
//!
//! Two budgets apply to a whole message, because per-value limits alone do
//! not bound what one frame costs: a `None` is one byte on the wire (and a
//! thousand of them deflate to a few bytes) but a [`Value`] slot in memory,
//! so one 8 KB zlib frame of tuples of `None` once decoded to 256 MiB; and
//! integer text is parsed and printed in time quadratic in its length, so
//! 15,000 integers of 4300 digits took two seconds to echo. The memory
//! budget ([`DecodeLimits::max_decoded_bytes`]) charges every value its slot
//! plus its heap bytes *before* allocating them; the digit budget
//! ([`DecodeLimits::max_int_digits_total`]) bounds the big-integer work.

use super::value::{Int, Value};
use num_bigint::BigInt;
use thiserror::Error;

const TAG_NONE: u8 = 0x00;
const TAG_EMPTY_BYTES: u8 = 0x01;
const TAG_EMPTY_TUPLE: u8 = 0x02;
const TAG_TRUE: u8 = 0x03;
const TAG_FALSE: u8 = 0x04;
const TAG_NOT_IMPLEMENTED: u8 = 0x05;
const TAG_ELLIPSIS: u8 = 0x06;
const TAG_STR: u8 = 0x08;
const TAG_BYTES1: u8 = 0x0a;
const TAG_BYTES4: u8 = 0x0d;
const TAG_BYTES_L1: u8 = 0x0e;
const TAG_BYTES_L4: u8 = 0x0f;
const TAG_TUP1: u8 = 0x10;
const TAG_TUP4: u8 = 0x13;
const TAG_TUP_L1: u8 = 0x14;
pub(crate) const TAG_TUP_L4: u8 = 0x15;
const TAG_INT_L1: u8 = 0x16;
const TAG_INT_L4: u8 = 0x17;
const TAG_FLOAT: u8 = 0x18;
const TAG_SLICE: u8 = 0x19;
const TAG_FSET: u8 = 0x1a;
const TAG_COMPLEX: u8 = 0x1b;
/// Immediate ints: tag = value + 0x50 for -48 ..= 159.
const IMM_MIN: i64 = -0x30;
const IMM_MAX: i64 = 0x9f;
const IMM_BIAS: i64 = 0x50;

/// Limits applied while decoding untrusted brine.
///
/// Every field has a default that is safe for a server on the open network
/// and generous for legitimate RPyC traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecodeLimits {
    /// Deepest nesting of tuples/frozensets/slices accepted, counting the
    /// message's own envelope (about 5 levels). Default: 300, so values
    /// nested 256 deep and more pass, as they do between Python peers
    /// (CPython's recursion limit stops brine near 330 levels). Decoding,
    /// encoding and dropping recurse once per level, so this also bounds
    /// the stack they use.
    pub max_depth: usize,
    /// Most items in one tuple or frozenset. Default: 1,000,000.
    pub max_items: usize,
    /// Most decimal digits in one integer. Default: 4300, the same limit
    /// CPython applies to `int(str)` since 3.11.
    pub max_int_digits: usize,
    /// Memory one decoded message may take, in bytes: every value is
    /// charged its slot (`size_of::<Value>()`, charged for a whole tuple
    /// before its items are allocated) plus its heap bytes (the length of a
    /// `bytes`/`str`, the text length of a big integer). Default: 64 MiB +
    /// 64 KiB, so that any payload the channel's default `max_inflated`
    /// (64 MiB) lets through as one `bytes` or `str` still decodes, while a
    /// frame of a few kilobytes can no longer become gigabytes of values.
    /// Keep it at least [`ChannelConfig::max_inflated`](crate::channel::ChannelConfig::max_inflated)
    /// when raising that.
    pub max_decoded_bytes: usize,
    /// Most characters of integer text in one message, counting every
    /// integer longer than 18 characters (shorter ones are parsed as an
    /// `i64` at no cost worth counting). Each longer one is a `BigInt`
    /// allocation and a conversion quadratic in its length, to parse and
    /// again to print; this bounds the CPU one message can cost, measured
    /// at about 60 ns per digit (decode plus encode) for 20 to 4300 digits. Default: 250,000 (58 integers at the
    /// 4300-digit limit, or 12,500 of 20 digits), about 15 ms of work.
    pub max_int_digits_total: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_depth: 300,
            max_items: 1_000_000,
            max_int_digits: 4300,
            max_decoded_bytes: (64 << 20) + (64 << 10),
            max_int_digits_total: 250_000,
        }
    }
}

impl DecodeLimits {
    /// Sets [`DecodeLimits::max_decoded_bytes`].
    pub fn with_max_decoded_bytes(mut self, bytes: usize) -> Self {
        self.max_decoded_bytes = bytes;
        self
    }

    /// Sets [`DecodeLimits::max_int_digits_total`].
    pub fn with_max_int_digits_total(mut self, digits: usize) -> Self {
        self.max_int_digits_total = digits;
        self
    }
}

/// What one decoded value slot costs (see [`DecodeLimits::max_decoded_bytes`]).
const VALUE_SLOT: usize = std::mem::size_of::<Value>();

/// Why bytes could not be decoded as brine.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrineError {
    /// The input ended in the middle of a value.
    #[error("brine value truncated: needed {needed} more bytes at offset {offset}")]
    Truncated {
        /// Byte offset where more data was needed.
        offset: usize,
        /// How many bytes were missing.
        needed: usize,
    },
    /// A tag byte that brine does not define.
    #[error("unknown brine tag 0x{tag:02x} at offset {offset}")]
    UnknownTag {
        /// The tag byte.
        tag: u8,
        /// Where it was found.
        offset: usize,
    },
    /// Nesting deeper than [`DecodeLimits::max_depth`].
    #[error("brine nesting deeper than the limit of {limit}")]
    TooDeep {
        /// The configured limit.
        limit: usize,
    },
    /// A tuple or frozenset longer than allowed or than the input can hold.
    #[error("brine tuple claims {claimed} items but at most {limit} are possible here")]
    TooManyItems {
        /// Claimed item count.
        claimed: u64,
        /// The effective limit.
        limit: usize,
    },
    /// An integer with more digits than [`DecodeLimits::max_int_digits`].
    #[error("brine integer of {digits} digits exceeds the limit of {limit}")]
    IntTooLong {
        /// Digits claimed.
        digits: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The message's values would take more memory than
    /// [`DecodeLimits::max_decoded_bytes`].
    #[error(
        "brine message would take more than {limit} bytes of memory once decoded \
         (max_decoded_bytes); send less per call or raise the limit"
    )]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The message's big integers have more digits in total than
    /// [`DecodeLimits::max_int_digits_total`].
    #[error(
        "brine message holds more than {limit} digits of big integers in total \
         (max_int_digits_total); send fewer or smaller integers, or raise the limit"
    )]
    IntsTooLong {
        /// The configured limit.
        limit: usize,
    },
    /// Integer text that is not a decimal number.
    #[error("brine integer is not decimal text")]
    BadInt,
    /// A `str` whose bytes are not UTF-8.
    #[error("brine str is not valid UTF-8: {0}")]
    BadUtf8(String),
    /// A structurally wrong value (e.g. a slice that is not a 3-tuple).
    #[error("malformed brine value: {0}")]
    Malformed(&'static str),
    /// Bytes left over after the top-level value.
    #[error("{0} trailing bytes after the brine value")]
    Trailing(usize),
}

/// Appends the brine encoding of `v` to `out`.
pub fn encode_into(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::None => out.push(TAG_NONE),
        Value::Bool(true) => out.push(TAG_TRUE),
        Value::Bool(false) => out.push(TAG_FALSE),
        Value::NotImplemented => out.push(TAG_NOT_IMPLEMENTED),
        Value::Ellipsis => out.push(TAG_ELLIPSIS),
        Value::Int(i) => encode_int(i, out),
        Value::Float(f) => {
            out.push(TAG_FLOAT);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::Complex(r, i) => {
            out.push(TAG_COMPLEX);
            out.extend_from_slice(&r.to_be_bytes());
            out.extend_from_slice(&i.to_be_bytes());
        }
        Value::Str(s) => {
            out.push(TAG_STR);
            encode_bytes(s.as_bytes(), out);
        }
        Value::Bytes(b) => encode_bytes(b, out),
        Value::Tuple(items) => {
            encode_tuple_header(items.len(), out);
            for item in items {
                encode_into(item, out);
            }
        }
        Value::FrozenSet(items) => {
            out.push(TAG_FSET);
            encode_tuple_header(items.len(), out);
            for item in items {
                encode_into(item, out);
            }
        }
        Value::Slice(parts) => {
            out.push(TAG_SLICE);
            out.push(TAG_TUP1 + 2);
            encode_into(&parts.0, out);
            encode_into(&parts.1, out);
            encode_into(&parts.2, out);
        }
    }
}

/// Encoder output in pieces: large `bytes`/`str` bodies handed over by
/// [`encode_taking`] stay in their own buffers instead of being copied, so
/// a 16 MiB argument is written to the socket straight from the buffer it
/// arrived in. Concatenating the pieces gives exactly [`encode`]'s bytes.
#[derive(Debug, Default)]
pub struct Pieces {
    /// Finished pieces, in order.
    pub done: Vec<Vec<u8>>,
    /// The piece being written.
    pub cur: Vec<u8>,
}

impl Pieces {
    /// Starts with `cur` (which may hold a reserved header).
    pub fn new(cur: Vec<u8>) -> Pieces {
        Pieces { done: Vec::new(), cur }
    }

    /// Appends a buffer as its own piece.
    fn push_owned(&mut self, body: Vec<u8>) {
        let cur = std::mem::take(&mut self.cur);
        self.done.push(cur);
        self.done.push(body);
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.done.iter().map(Vec::len).sum::<usize>() + self.cur.len()
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pieces in order (the current one last).
    pub fn into_pieces(mut self) -> Vec<Vec<u8>> {
        self.done.push(self.cur);
        self.done
    }
}

/// Appends the brine encoding of `v` to `out`, moving every `bytes`/`str`
/// body of at least [`MOVE_OUT_MIN`] bytes out of `v` into a piece of its
/// own (leaving it empty) instead of copying it. For values the caller is
/// about to drop anyway: the bytes are the same as [`encode_into`]'s.
pub fn encode_taking(v: &mut Value, out: &mut Pieces) {
    match v {
        Value::Bytes(b) if b.len() >= MOVE_OUT_MIN => {
            out.cur.push(TAG_BYTES_L4);
            out.cur.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.push_owned(std::mem::take(b));
        }
        Value::Str(s) if s.len() >= MOVE_OUT_MIN => {
            out.cur.push(TAG_STR);
            out.cur.push(TAG_BYTES_L4);
            out.cur.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.push_owned(std::mem::take(s).into_bytes());
        }
        Value::Tuple(items) => {
            encode_tuple_header(items.len(), &mut out.cur);
            for item in items {
                encode_taking(item, out);
            }
        }
        Value::FrozenSet(items) => {
            out.cur.push(TAG_FSET);
            encode_tuple_header(items.len(), &mut out.cur);
            for item in items {
                encode_taking(item, out);
            }
        }
        Value::Slice(parts) => {
            out.cur.push(TAG_SLICE);
            out.cur.push(TAG_TUP1 + 2);
            encode_taking(&mut parts.0, out);
            encode_taking(&mut parts.1, out);
            encode_taking(&mut parts.2, out);
        }
        other => encode_into(other, &mut out.cur),
    }
}

/// Encodes a `str` without building a [`Value`].
pub(crate) fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.push(TAG_STR);
    encode_bytes(s.as_bytes(), out);
}

/// The brine encoding of `v`, as Python's `brine.dump(v)`.
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(v, &mut out);
    out
}

/// Encodes an `i64` without building a [`Value`].
pub(crate) fn encode_i64(v: i64, out: &mut Vec<u8>) {
    if (IMM_MIN..=IMM_MAX).contains(&v) {
        out.push((v + IMM_BIAS) as u8);
    } else {
        let text = v.to_string();
        out.push(TAG_INT_L1);
        out.push(text.len() as u8);
        out.extend_from_slice(text.as_bytes());
    }
}

fn encode_int(i: &Int, out: &mut Vec<u8>) {
    match i {
        Int::Small(v) => encode_i64(*v, out),
        Int::Big(b) => {
            let text = b.to_string();
            if text.len() < 256 {
                out.push(TAG_INT_L1);
                out.push(text.len() as u8);
            } else {
                out.push(TAG_INT_L4);
                out.extend_from_slice(&(text.len() as u32).to_be_bytes());
            }
            out.extend_from_slice(text.as_bytes());
        }
    }
}

pub(crate) fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    match b.len() {
        0 => out.push(TAG_EMPTY_BYTES),
        n @ 1..=4 => {
            out.push(TAG_BYTES1 + (n as u8 - 1));
            out.extend_from_slice(b);
        }
        n if n < 256 => {
            out.push(TAG_BYTES_L1);
            out.push(n as u8);
            out.extend_from_slice(b);
        }
        n => {
            out.push(TAG_BYTES_L4);
            out.extend_from_slice(&(n as u32).to_be_bytes());
            out.extend_from_slice(b);
        }
    }
}

pub(crate) fn encode_tuple_header(n: usize, out: &mut Vec<u8>) {
    match n {
        0 => out.push(TAG_EMPTY_TUPLE),
        1..=4 => out.push(TAG_TUP1 + (n as u8 - 1)),
        n if n < 256 => {
            out.push(TAG_TUP_L1);
            out.push(n as u8);
        }
        n => {
            out.push(TAG_TUP_L4);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
}

/// Decodes exactly one brine value occupying all of `data`.
pub fn decode(data: &[u8], limits: &DecodeLimits) -> Result<Value, BrineError> {
    let mut d = Decoder::new(data, limits, None);
    let v = d.value(0)?;
    if d.pos != data.len() {
        return Err(BrineError::Trailing(data.len() - d.pos));
    }
    Ok(v)
}

/// Decodes with [`DecodeLimits::default`].
pub fn decode_default(data: &[u8]) -> Result<Value, BrineError> {
    decode(data, &DecodeLimits::default())
}

/// `bytes` or `str` values at least this long are moved out of the input
/// by [`decode_owned`] instead of copied into a new allocation.
pub const MOVE_OUT_MIN: usize = 64 << 10;

/// Decodes exactly one brine value occupying `buf[start..]`, consuming the
/// buffer: the first `bytes` or `str` value of at least [`MOVE_OUT_MIN`]
/// bytes becomes the buffer itself (its bytes moved to the front in place)
/// instead of a copy. A large transfer thus costs no second allocation —
/// on Linux, a fresh allocation of 16 MiB also costs 4096 page faults,
/// more than the copy. Same result and same errors as [`decode`].
pub fn decode_owned(buf: Vec<u8>, start: usize, limits: &DecodeLimits) -> Result<Value, BrineError> {
    decode_owned_sized(buf, start, limits).map(|(v, _)| v)
}

/// [`decode_owned`], also returning what the value was charged against
/// [`DecodeLimits::max_decoded_bytes`]: roughly the memory it holds.
pub fn decode_owned_sized(mut buf: Vec<u8>, start: usize, limits: &DecodeLimits) -> Result<(Value, usize), BrineError> {
    let data = buf.get(start..).unwrap_or_default();
    let mut d = Decoder::new(data, limits, Some(MoveOut::default()));
    let mut v = d.value(0)?;
    if d.pos != data.len() {
        return Err(BrineError::Trailing(data.len() - d.pos));
    }
    let size = d.used;
    let Some(MoveOut { chosen: Some((index, from, len, is_str)), .. }) = d.move_out else {
        return Ok((v, size));
    };
    let from = start + from;
    buf.copy_within(from..from + len, 0);
    buf.truncate(len);
    let moved = if is_str {
        Value::Str(String::from_utf8(buf).map_err(|e| BrineError::BadUtf8(e.utf8_error().to_string()))?)
    } else {
        Value::Bytes(buf)
    };
    let mut seen = 0;
    put_back(&mut v, index, &mut seen, &mut Some(moved));
    Ok((v, size))
}

/// Which large value [`decode_owned`] moves out of its buffer.
#[derive(Default)]
struct MoveOut {
    /// `bytes`/`str` values decoded so far (pre-order, as decoded).
    seen: usize,
    /// (pre-order index, offset, length, is str) of the chosen value.
    chosen: Option<(usize, usize, usize, bool)>,
}

/// Replaces the `index`-th `bytes`/`str` value (pre-order, the order of
/// decoding) — the empty placeholder — with `moved`.
fn put_back(v: &mut Value, index: usize, seen: &mut usize, moved: &mut Option<Value>) {
    if moved.is_none() {
        return;
    }
    match v {
        Value::Bytes(_) | Value::Str(_) => {
            if *seen == index {
                if let Some(m) = moved.take() {
                    *v = m;
                }
            }
            *seen += 1;
        }
        Value::Tuple(items) | Value::FrozenSet(items) => {
            for item in items {
                put_back(item, index, seen, moved);
            }
        }
        Value::Slice(parts) => {
            put_back(&mut parts.0, index, seen, moved);
            put_back(&mut parts.1, index, seen, moved);
            put_back(&mut parts.2, index, seen, moved);
        }
        _ => {}
    }
}

struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
    limits: &'a DecodeLimits,
    move_out: Option<MoveOut>,
    /// Bytes charged against [`DecodeLimits::max_decoded_bytes`].
    used: usize,
    /// Big-integer digits charged against [`DecodeLimits::max_int_digits_total`].
    digits: usize,
}

impl<'a> Decoder<'a> {
    fn new(data: &'a [u8], limits: &'a DecodeLimits, move_out: Option<MoveOut>) -> Self {
        // The top-level value's own slot.
        Decoder { data, pos: 0, limits, move_out, used: VALUE_SLOT, digits: 0 }
    }

    /// Charges `bytes` of memory against the message's budget, before they
    /// are allocated.
    fn charge(&mut self, bytes: usize) -> Result<(), BrineError> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.limits.max_decoded_bytes {
            return Err(BrineError::TooLarge { limit: self.limits.max_decoded_bytes });
        }
        Ok(())
    }

    /// Charges the slots of `n` values (a tuple's items) before they are allocated.
    fn charge_slots(&mut self, n: usize) -> Result<(), BrineError> {
        self.charge(n.saturating_mul(VALUE_SLOT))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], BrineError> {
        let remaining = self.data.len() - self.pos;
        if n > remaining {
            return Err(BrineError::Truncated { offset: self.pos, needed: n - remaining });
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.data[start..start + n])
    }

    fn u8(&mut self) -> Result<u8, BrineError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, BrineError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn f64(&mut self) -> Result<f64, BrineError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_be_bytes(a))
    }

    fn bytes_body(&mut self, tag: u8) -> Result<&'a [u8], BrineError> {
        match tag {
            TAG_EMPTY_BYTES => Ok(&[]),
            TAG_BYTES1..=TAG_BYTES4 => self.take(usize::from(tag - TAG_BYTES1) + 1),
            TAG_BYTES_L1 => {
                let n = self.u8()?;
                self.take(usize::from(n))
            }
            TAG_BYTES_L4 => {
                let n = self.u32()?;
                self.take(n as usize)
            }
            _ => Err(BrineError::Malformed("str payload is not bytes")),
        }
    }

    fn tuple_len(&mut self, tag: u8) -> Result<Option<usize>, BrineError> {
        let n = match tag {
            TAG_EMPTY_TUPLE => 0,
            TAG_TUP1..=TAG_TUP4 => usize::from(tag - TAG_TUP1) + 1,
            TAG_TUP_L1 => usize::from(self.u8()?),
            TAG_TUP_L4 => self.u32()? as usize,
            _ => return Ok(None),
        };
        // Every item takes at least one byte: a claim beyond the bytes present
        // is a lie, and must not size an allocation.
        let possible = (self.data.len() - self.pos).min(self.limits.max_items);
        if n > possible {
            return Err(BrineError::TooManyItems { claimed: n as u64, limit: possible });
        }
        Ok(Some(n))
    }

    fn items(&mut self, n: usize, depth: usize) -> Result<Vec<Value>, BrineError> {
        self.charge_slots(n)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(items)
    }

    fn int_text(&mut self, n: usize) -> Result<Value, BrineError> {
        if n > self.limits.max_int_digits + 1 {
            return Err(BrineError::IntTooLong { digits: n, limit: self.limits.max_int_digits });
        }
        // Up to 18 characters parse as an i64 in constant time; longer
        // text becomes a BigInt: an allocation, and work quadratic in its
        // length, to parse now and to print again.
        if n > 18 {
            self.digits = self.digits.saturating_add(n);
            if self.digits > self.limits.max_int_digits_total {
                return Err(BrineError::IntsTooLong { limit: self.limits.max_int_digits_total });
            }
            self.charge(n)?;
        }
        let text = self.take(n)?;
        parse_int(text).map(Value::Int)
    }

    /// Counts a `bytes`/`str` value of `len` bytes that just ended at
    /// `self.pos`; true if [`decode_owned`] is to move it out of the buffer
    /// (the caller then leaves an empty placeholder).
    fn move_out(&mut self, len: usize, is_str: bool) -> bool {
        let Some(m) = &mut self.move_out else { return false };
        let index = m.seen;
        m.seen += 1;
        if m.chosen.is_none() && len >= MOVE_OUT_MIN {
            m.chosen = Some((index, self.pos - len, len, is_str));
            return true;
        }
        false
    }

    fn value(&mut self, depth: usize) -> Result<Value, BrineError> {
        if depth > self.limits.max_depth {
            return Err(BrineError::TooDeep { limit: self.limits.max_depth });
        }
        let at = self.pos;
        let tag = self.u8()?;
        Ok(match tag {
            TAG_NONE => Value::None,
            TAG_TRUE => Value::Bool(true),
            TAG_FALSE => Value::Bool(false),
            TAG_NOT_IMPLEMENTED => Value::NotImplemented,
            TAG_ELLIPSIS => Value::Ellipsis,
            TAG_EMPTY_BYTES | TAG_BYTES1..=TAG_BYTES4 | TAG_BYTES_L1 | TAG_BYTES_L4 => {
                let raw = self.bytes_body(tag)?;
                self.charge(raw.len())?;
                if self.move_out(raw.len(), false) {
                    Value::Bytes(Vec::new())
                } else {
                    Value::Bytes(raw.to_vec())
                }
            }
            TAG_STR => {
                let inner = self.u8()?;
                let raw = self.bytes_body(inner)?;
                self.charge(raw.len())?;
                if self.move_out(raw.len(), true) {
                    // Checked once moved (`decode_owned`).
                    Value::Str(String::new())
                } else {
                    match std::str::from_utf8(raw) {
                        Ok(s) => Value::Str(s.to_string()),
                        Err(e) => return Err(BrineError::BadUtf8(e.to_string())),
                    }
                }
            }
            TAG_EMPTY_TUPLE | TAG_TUP1..=TAG_TUP4 | TAG_TUP_L1 | TAG_TUP_L4 => {
                let n = self.tuple_len(tag)?.unwrap_or(0);
                Value::Tuple(self.items(n, depth)?)
            }
            TAG_INT_L1 => {
                let n = self.u8()?;
                self.int_text(usize::from(n))?
            }
            TAG_INT_L4 => {
                let n = self.u32()?;
                self.int_text(n as usize)?
            }
            TAG_FLOAT => Value::Float(self.f64()?),
            TAG_COMPLEX => {
                let r = self.f64()?;
                let i = self.f64()?;
                Value::Complex(r, i)
            }
            TAG_SLICE => {
                let inner = self.u8()?;
                match self.tuple_len(inner)? {
                    Some(3) => {
                        self.charge_slots(3)?;
                        let a = self.value(depth + 1)?;
                        let b = self.value(depth + 1)?;
                        let c = self.value(depth + 1)?;
                        Value::Slice(Box::new((a, b, c)))
                    }
                    _ => return Err(BrineError::Malformed("slice is not a 3-tuple")),
                }
            }
            TAG_FSET => {
                let inner = self.u8()?;
                match self.tuple_len(inner)? {
                    Some(n) => Value::FrozenSet(self.items(n, depth)?),
                    None => return Err(BrineError::Malformed("frozenset body is not a tuple")),
                }
            }
            t if t >= (IMM_MIN + IMM_BIAS) as u8 && t <= (IMM_MAX + IMM_BIAS) as u8 => {
                Value::Int(Int::Small(i64::from(t) - IMM_BIAS))
            }
            t => return Err(BrineError::UnknownTag { tag: t, offset: at }),
        })
    }
}

/// Checks integer text the way Python's `int(bytes)` reads what brine
/// produces: optional sign, ASCII digits, optional surrounding whitespace and
/// single underscores between digits. Returns (negative, digits).
fn int_syntax(text: &[u8]) -> Result<(bool, &str), BrineError> {
    let s = std::str::from_utf8(text).map_err(|_| BrineError::BadInt)?.trim();
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.bytes().all(|c| c.is_ascii_digit() || c == b'_')
    {
        return Err(BrineError::BadInt);
    }
    Ok((neg, digits))
}

/// Parses integer text (see [`int_syntax`]).
fn parse_int(text: &[u8]) -> Result<Int, BrineError> {
    let (neg, digits) = int_syntax(text)?;
    let clean: String = digits.chars().filter(|c| *c != '_').collect();
    if clean.len() <= 18 {
        let v: i64 = clean.parse().map_err(|_| BrineError::BadInt)?;
        return Ok(Int::Small(if neg { -v } else { v }));
    }
    let big = BigInt::parse_bytes(clean.as_bytes(), 10).ok_or(BrineError::BadInt)?;
    Ok(Int::from_big(if neg { -big } else { big }))
}

/// A read position in brine bytes, for a reader that needs only parts of a
/// value: the gateway reads a message's handler, labels, id-packs and names
/// and relays the rest as bytes. [`Cursor::skip`] checks a value exactly as
/// [`decode`] would (tags, lengths, UTF-8, integer text, depth, item counts)
/// without building it, so what is relayed unread is still valid brine, and
/// reading costs no memory however many values a frame holds.
#[cfg(feature = "gateway")]
pub(crate) struct Cursor<'a> {
    d: Decoder<'a>,
    cost: SkipCost,
}

/// What the values skipped so far would cost a Python peer that decodes
/// them: how many values (each a Python object), and the worst case of
/// building their frozensets (a set of `n` members whose hashes collide
/// costs `n²` comparisons; Python ints hash to themselves).
#[cfg(feature = "gateway")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SkipCost {
    /// Values skipped (every int, str, tuple … counts one).
    pub values: u64,
    /// Sum of the squared sizes of the frozensets skipped.
    pub set_work: u64,
    /// Characters of integers longer than an `i64` (decimal conversion is
    /// what big integers cost).
    pub digits: u64,
}

#[cfg(feature = "gateway")]
impl<'a> Cursor<'a> {
    /// A cursor at `pos` of `data`.
    pub(crate) fn at(data: &'a [u8], pos: usize, limits: &'a DecodeLimits) -> Cursor<'a> {
        let mut d = Decoder::new(data, limits, None);
        d.pos = pos.min(data.len());
        Cursor { d, cost: SkipCost::default() }
    }

    /// What the values skipped by this cursor so far would cost a Python
    /// peer (see [`SkipCost`]).
    pub(crate) fn cost(&self) -> SkipCost {
        self.cost
    }

    /// A cursor on the same bytes as `other`, at `pos`.
    pub(crate) fn at_span(other: &Cursor<'a>, pos: usize) -> Cursor<'a> {
        Cursor::at(other.d.data, pos, other.d.limits)
    }

    /// The current offset.
    pub(crate) fn pos(&self) -> usize {
        self.d.pos
    }

    /// True once every byte has been read.
    pub(crate) fn at_end(&self) -> bool {
        self.d.pos == self.d.data.len()
    }

    /// If the next value is a tuple, reads its header and returns its length
    /// (the items follow); otherwise reads nothing and returns `None`.
    pub(crate) fn tuple(&mut self) -> Result<Option<usize>, BrineError> {
        let start = self.d.pos;
        let tag = self.d.u8()?;
        match self.d.tuple_len(tag)? {
            Some(n) => Ok(Some(n)),
            None => {
                self.d.pos = start;
                Ok(None)
            }
        }
    }

    /// Skips the next value (checked, not built) at nesting `depth`;
    /// returns where it started.
    pub(crate) fn skip(&mut self, depth: usize) -> Result<usize, BrineError> {
        let start = self.d.pos;
        self.d.skip(depth, &mut self.cost)?;
        Ok(start)
    }

    /// Decodes the next value at nesting `depth`.
    pub(crate) fn value(&mut self, depth: usize) -> Result<Value, BrineError> {
        self.d.value(depth)
    }
}

#[cfg(feature = "gateway")]
impl Decoder<'_> {
    /// [`Decoder::value`] without building the value.
    fn skip(&mut self, depth: usize, cost: &mut SkipCost) -> Result<(), BrineError> {
        if depth > self.limits.max_depth {
            return Err(BrineError::TooDeep { limit: self.limits.max_depth });
        }
        cost.values += 1;
        let at = self.pos;
        let tag = self.u8()?;
        match tag {
            TAG_NONE | TAG_TRUE | TAG_FALSE | TAG_NOT_IMPLEMENTED | TAG_ELLIPSIS => {}
            TAG_EMPTY_BYTES | TAG_BYTES1..=TAG_BYTES4 | TAG_BYTES_L1 | TAG_BYTES_L4 => {
                self.bytes_body(tag)?;
            }
            TAG_STR => {
                let inner = self.u8()?;
                let raw = self.bytes_body(inner)?;
                std::str::from_utf8(raw).map_err(|e| BrineError::BadUtf8(e.to_string()))?;
            }
            TAG_EMPTY_TUPLE | TAG_TUP1..=TAG_TUP4 | TAG_TUP_L1 | TAG_TUP_L4 => {
                let n = self.tuple_len(tag)?.unwrap_or(0);
                for _ in 0..n {
                    self.skip(depth + 1, cost)?;
                }
            }
            TAG_INT_L1 | TAG_INT_L4 => {
                let n = if tag == TAG_INT_L1 { usize::from(self.u8()?) } else { self.u32()? as usize };
                if n > self.limits.max_int_digits + 1 {
                    return Err(BrineError::IntTooLong { digits: n, limit: self.limits.max_int_digits });
                }
                int_syntax(self.take(n)?)?;
                if n > 18 {
                    cost.digits = cost.digits.saturating_add(n as u64);
                }
            }
            TAG_FLOAT => {
                self.take(8)?;
            }
            TAG_COMPLEX => {
                self.take(16)?;
            }
            TAG_SLICE => {
                let inner = self.u8()?;
                if self.tuple_len(inner)? != Some(3) {
                    return Err(BrineError::Malformed("slice is not a 3-tuple"));
                }
                for _ in 0..3 {
                    self.skip(depth + 1, cost)?;
                }
            }
            TAG_FSET => {
                let inner = self.u8()?;
                let Some(n) = self.tuple_len(inner)? else {
                    return Err(BrineError::Malformed("frozenset body is not a tuple"));
                };
                cost.set_work = cost.set_work.saturating_add((n as u64).saturating_mul(n as u64));
                for _ in 0..n {
                    self.skip(depth + 1, cost)?;
                }
            }
            t if t >= (IMM_MIN + IMM_BIAS) as u8 && t <= (IMM_MAX + IMM_BIAS) as u8 => {}
            t => return Err(BrineError::UnknownTag { tag: t, offset: at }),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn python_doc_example() {
        // The example in brine.py's module docstring.
        let x = Value::Tuple(vec![
            Value::Bytes(b"he".to_vec()),
            7.into(),
            "llo".into(),
            8.into(),
            Value::Tuple(vec![]),
            900.into(),
            Value::None,
            true.into(),
            Value::Ellipsis,
            18.2.into(),
            Value::Complex(13.0, 18.2),
            Value::Slice(Box::new((1.into(), 2.into(), 3.into()))),
            Value::FrozenSet(vec![5.into(), 6.into(), 7.into()]),
            Value::NotImplemented,
        ]);
        assert_eq!(
            hex(&encode(&x)),
            "140e0b686557080c6c6c6f580216033930300003061840323333333333331b402a000000000000403233333333333319125152531a1255565705"
        );
        assert_eq!(decode_default(&encode(&x)).ok(), Some(x));
    }

    #[test]
    fn hostile_lengths_do_not_allocate() {
        // A tuple claiming 4 billion items in 6 bytes.
        let r = decode_default(&[TAG_TUP_L4, 0xff, 0xff, 0xff, 0xff, 0x00]);
        assert!(matches!(r, Err(BrineError::TooManyItems { .. })));
        let r = decode_default(&[TAG_BYTES_L4, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(r, Err(BrineError::Truncated { .. })));
        let r = decode_default(&[TAG_INT_L4, 0x00, 0x10, 0x00, 0x00]);
        assert!(matches!(r, Err(BrineError::IntTooLong { .. })));
    }

    #[test]
    fn one_message_is_charged_the_memory_its_values_take() {
        // 8 tuples of a million `None`: 8 MB of brine (a few KB deflated),
        // 256 MiB of values. Refused after ~64 MiB.
        let mut wire = vec![TAG_TUP_L1, 8];
        for _ in 0..8 {
            wire.push(TAG_TUP_L4);
            wire.extend_from_slice(&1_000_000u32.to_be_bytes());
            wire.extend(std::iter::repeat_n(TAG_NONE, 1_000_000));
        }
        let limits = DecodeLimits::default();
        assert_eq!(decode(&wire, &limits), Err(BrineError::TooLarge { limit: limits.max_decoded_bytes }));
        let msg = BrineError::TooLarge { limit: 5 }.to_string();
        assert!(msg.contains("max_decoded_bytes") && msg.contains("raise the limit"), "{msg}");
        // Two of them fit in a bigger budget and decode as before.
        let two = [&[TAG_TUP_L1, 2][..], &wire[2..2 + 2 * 1_000_005]].concat();
        let big = DecodeLimits::default().with_max_decoded_bytes(65_000_000);
        assert!(matches!(decode(&two, &big), Ok(Value::Tuple(t)) if t.len() == 2));
        assert!(decode(&two, &big.with_max_decoded_bytes(64_000_000)).is_err());
        // A payload as large as the channel lets through still decodes,
        // copied or moved out of its buffer.
        let blob = Value::Tuple(vec![Value::from(1), Value::Bytes(vec![7; 64 << 20])]);
        let enc = encode(&blob);
        assert_eq!(decode(&enc, &limits).as_ref(), Ok(&blob));
        assert_eq!(decode_owned(enc, 0, &limits), Ok(blob));
        // Strings and big integers are charged their bytes too.
        let strs = encode(&Value::Tuple(vec![Value::from("x".repeat(600)); 100]));
        assert!(decode(&strs, &limits.clone().with_max_decoded_bytes(70_000)).is_ok());
        assert!(decode(&strs, &limits.clone().with_max_decoded_bytes(60_000)).is_err());
    }

    #[test]
    fn big_integer_digits_are_bounded_per_message() {
        let big = |digits: usize| Value::Int(parse_int("9".repeat(digits).as_bytes()).unwrap_or(Int::Small(0)));
        let limits = DecodeLimits::default();
        let per_message = limits.max_int_digits_total / 4300;
        let fits = encode(&Value::Tuple(vec![big(4300); per_message]));
        let started = std::time::Instant::now();
        let back = decode(&fits, &limits);
        assert_eq!(back.as_ref().map(encode).ok(), Some(fits));
        // Generous for a loaded 2-core machine; the work is ~15 ms here.
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        let over = encode(&Value::Tuple(vec![big(4300); per_message + 1]));
        assert_eq!(decode(&over, &limits), Err(BrineError::IntsTooLong { limit: limits.max_int_digits_total }));
        // Integers that fit an i64 cost nothing against the budget.
        let small = encode(&Value::Tuple(vec![Value::from(-99_999_999_999_999_999i64); 100_000]));
        assert!(decode(&small, &limits.clone().with_max_int_digits_total(0)).is_ok());
        assert!(decode(&encode(&big(20)), &limits.with_max_int_digits_total(19)).is_err());
    }

    #[test]
    fn depth_is_bounded() {
        let mut deep = vec![TAG_TUP1; 10_000];
        deep.push(TAG_NONE);
        assert!(matches!(decode_default(&deep), Err(BrineError::TooDeep { .. })));
    }

    #[test]
    fn ints_at_the_edges() {
        for v in [-49i64, -48, 159, 160, i64::MIN, i64::MAX] {
            let enc = encode(&v.into());
            assert_eq!(decode_default(&enc).ok(), Some(v.into()));
        }
        assert_eq!(encode(&(-48).into()), vec![0x20]);
        assert_eq!(encode(&159.into()), vec![0xef]);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::None),
            Just(Value::Ellipsis),
            Just(Value::NotImplemented),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<i128>().prop_map(Value::from),
            any::<f64>().prop_filter("NaN never equals itself", |f| !f.is_nan()).prop_map(Value::Float),
            (any::<f64>(), any::<f64>())
                .prop_filter("no NaN", |(a, b)| !a.is_nan() && !b.is_nan())
                .prop_map(|(a, b)| Value::Complex(a, b)),
            ".{0,40}".prop_map(Value::Str),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Tuple),
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::FrozenSet),
                (inner.clone(), inner.clone(), inner).prop_map(|(a, b, c)| Value::Slice(Box::new((a, b, c)))),
            ]
        })
    }

    proptest! {
        #[test]
        fn round_trip(v in value()) {
            let bytes = encode(&v);
            let back = decode_default(&bytes);
            prop_assert_eq!(back.as_ref().ok(), Some(&v));
            prop_assert_eq!(encode(&back.unwrap_or(Value::None)), bytes);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_default(&bytes);
        }

        #[test]
        fn mutated_encodings_never_panic(v in value(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut bytes = encode(&v);
            for (i, b) in flips {
                if !bytes.is_empty() {
                    let n = bytes.len();
                    bytes[i % n] = b;
                }
            }
            let _ = decode_default(&bytes);
        }

        /// The gateway relays what `Cursor::skip` accepted: it must accept
        /// exactly what `decode` accepts, and end where `decode` ends.
        #[test]
        #[cfg(feature = "gateway")]
        fn skip_agrees_with_decode(v in value(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4)) {
            let mut bytes = encode(&v);
            for (i, b) in flips {
                if !bytes.is_empty() {
                    let n = bytes.len();
                    bytes[i % n] = b;
                }
            }
            let limits = DecodeLimits::default();
            let mut c = Cursor::at(&bytes, 0, &limits);
            let skipped = c.skip(0).map(|_| c.pos());
            let decoded = decode(&bytes, &limits);
            let mut d = Decoder::new(&bytes, &limits, None);
            let prefix = d.value(0).map(|_| d.pos);
            prop_assert_eq!(skipped.as_ref().ok(), prefix.as_ref().ok());
            prop_assert_eq!(skipped.is_ok() && skipped.ok() == Some(bytes.len()), decoded.is_ok());
        }
    }
}
