//! `Value`: everything brine can carry by value.
//!
//! Python's brine (`rpyc/core/brine.py`) serialises a closed set of immutable
//! types. Anything else crosses the connection *by reference* (see
//! [`crate::Object`]). `Value` mirrors that set one-to-one so that a value
//! loaded from Python bytes dumps back to the very same bytes.

use num_bigint::BigInt;
use std::fmt;

/// An integer as Python sees it: unbounded.
///
/// Small values stay in an `i64`; anything beyond falls back to a `BigInt`.
/// The representation is normalised (a `Big` never holds a value that fits in
/// `i64`), so derived equality is value equality.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Int {
    /// A value that fits in 64 bits.
    Small(i64),
    /// A value beyond the `i64` range.
    Big(BigInt),
}

impl Int {
    /// Builds a normalised integer from a `BigInt`.
    pub fn from_big(b: BigInt) -> Int {
        match i64::try_from(&b) {
            Ok(v) => Int::Small(v),
            Err(_) => Int::Big(b),
        }
    }

    /// The value as an `i64`, if it fits.
    pub fn to_i64(&self) -> Option<i64> {
        match self {
            Int::Small(v) => Some(*v),
            Int::Big(_) => None,
        }
    }

    /// The value as a `BigInt` (always possible).
    pub fn to_big(&self) -> BigInt {
        match self {
            Int::Small(v) => BigInt::from(*v),
            Int::Big(b) => b.clone(),
        }
    }
}

impl fmt::Display for Int {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Int::Small(v) => write!(f, "{v}"),
            Int::Big(b) => write!(f, "{b}"),
        }
    }
}

/// One brine value: the types Python rpyc sends by value.
///
/// `FrozenSet` keeps its members in wire order (brine dumps a frozenset as a
/// tuple of its members in Python's iteration order), so a decoded value
/// re-encodes to identical bytes. Equality of two `FrozenSet`s is order
/// sensitive for the same reason; use [`Value::set_eq`] for set semantics.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Python `None`.
    None,
    /// Python `bool`.
    Bool(bool),
    /// Python `int` (unbounded).
    Int(Int),
    /// Python `float`.
    Float(f64),
    /// Python `complex` (real, imaginary).
    Complex(f64, f64),
    /// Python `str`.
    Str(String),
    /// Python `bytes`.
    Bytes(Vec<u8>),
    /// Python `tuple` whose items are all values.
    Tuple(Vec<Value>),
    /// Python `frozenset`, members in wire order.
    FrozenSet(Vec<Value>),
    /// Python `slice(start, stop, step)`.
    Slice(Box<(Value, Value, Value)>),
    /// Python `Ellipsis` (`...`).
    Ellipsis,
    /// Python `NotImplemented`.
    NotImplemented,
}

impl Value {
    /// A Python-style name of the value's type (`"int"`, `"str"`, …), for
    /// error messages that a Python user recognises.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "NoneType",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Complex(..) => "complex",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::FrozenSet(_) => "frozenset",
            Value::Slice(_) => "slice",
            Value::Ellipsis => "ellipsis",
            Value::NotImplemented => "NotImplementedType",
        }
    }

    /// The string, if this is a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer as `i64`, if this is an `int` that fits (bools count, as in Python).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => i.to_i64(),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// The tuple items, if this is a tuple.
    pub fn as_tuple(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(t) => Some(t),
            _ => None,
        }
    }

    /// Python truthiness.
    pub fn truthy(&self) -> bool {
        match self {
            Value::None => false,
            Value::Bool(b) => *b,
            Value::Int(Int::Small(v)) => *v != 0,
            Value::Int(Int::Big(_)) => true,
            Value::Float(f) => *f != 0.0,
            Value::Complex(r, i) => *r != 0.0 || *i != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::Bytes(b) => !b.is_empty(),
            Value::Tuple(t) | Value::FrozenSet(t) => !t.is_empty(),
            Value::Slice(_) | Value::Ellipsis | Value::NotImplemented => true,
        }
    }

    /// Set equality for frozensets (order-insensitive), plain equality otherwise.
    pub fn set_eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::FrozenSet(a), Value::FrozenSet(b)) => {
                a.iter().all(|x| b.iter().any(|y| x.set_eq(y))) && b.iter().all(|y| a.iter().any(|x| x.set_eq(y)))
            }
            _ => self == other,
        }
    }

    /// The value as Python's `repr()` would print it.
    pub fn repr(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = write_repr(self, &mut s);
        s
    }
}

impl fmt::Display for Value {
    /// Formats as Python's `repr()`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_repr(self, f)
    }
}

fn write_repr(v: &Value, out: &mut dyn fmt::Write) -> fmt::Result {
    match v {
        Value::None => out.write_str("None"),
        Value::Bool(true) => out.write_str("True"),
        Value::Bool(false) => out.write_str("False"),
        Value::Int(i) => write!(out, "{i}"),
        Value::Float(f) => out.write_str(&float_repr(*f)),
        Value::Complex(r, i) => out.write_str(&complex_repr(*r, *i)),
        Value::Str(s) => out.write_str(&str_repr(s)),
        Value::Bytes(b) => out.write_str(&bytes_repr(b)),
        Value::Tuple(items) => {
            out.write_char('(')?;
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.write_str(", ")?;
                }
                write_repr(item, out)?;
            }
            if items.len() == 1 {
                out.write_char(',')?;
            }
            out.write_char(')')
        }
        Value::FrozenSet(items) => {
            if items.is_empty() {
                return out.write_str("frozenset()");
            }
            out.write_str("frozenset({")?;
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.write_str(", ")?;
                }
                write_repr(item, out)?;
            }
            out.write_str("})")
        }
        Value::Slice(parts) => {
            out.write_str("slice(")?;
            write_repr(&parts.0, out)?;
            out.write_str(", ")?;
            write_repr(&parts.1, out)?;
            out.write_str(", ")?;
            write_repr(&parts.2, out)?;
            out.write_char(')')
        }
        Value::Ellipsis => out.write_str("Ellipsis"),
        Value::NotImplemented => out.write_str("NotImplemented"),
    }
}

/// Python's `repr(float)`: shortest round-trip digits, scientific notation
/// outside `1e-4 <= |x| < 1e16`.
pub(crate) fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // `{:e}` gives the shortest round-trip mantissa, e.g. "1.5e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m.to_string(), e.parse::<i32>().unwrap_or(0)),
        None => (sci.clone(), 0),
    };
    if (-4..16).contains(&exp) {
        let plain = format!("{f}");
        if plain.contains('.') {
            plain
        } else {
            format!("{plain}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

fn complex_repr(r: f64, i: f64) -> String {
    // Python drops the real part when it is +0.0 and prints integral parts without ".0".
    let part = |x: f64| {
        let s = float_repr(x);
        match s.strip_suffix(".0") {
            Some(t) => t.to_string(),
            None => s,
        }
    };
    let imag = part(i);
    if r == 0.0 && !r.is_sign_negative() {
        return format!("{imag}j");
    }
    let sign = if imag.starts_with('-') { "" } else { "+" };
    format!("({}{sign}{imag}j)", part(r))
}

fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if (0x80..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

fn bytes_repr(b: &[u8]) -> String {
    let quote = if b.contains(&b'\'') && !b.contains(&b'"') { '"' } else { '\'' };
    let mut out = String::with_capacity(b.len() + 3);
    out.push('b');
    out.push(quote);
    for &c in b {
        match c {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            c if c as char == quote => {
                out.push('\\');
                out.push(c as char);
            }
            0x20..=0x7e => out.push(c as char),
            c => out.push_str(&format!("\\x{c:02x}")),
        }
    }
    out.push(quote);
    out
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value { Value::Int(Int::Small(i64::from(v))) }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32);

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        match i64::try_from(v) {
            Ok(s) => Value::Int(Int::Small(s)),
            Err(_) => Value::Int(Int::Big(BigInt::from(v))),
        }
    }
}
impl From<i128> for Value {
    fn from(v: i128) -> Value {
        Value::Int(Int::from_big(BigInt::from(v)))
    }
}
impl From<u128> for Value {
    fn from(v: u128) -> Value {
        Value::Int(Int::from_big(BigInt::from(v)))
    }
}
impl From<usize> for Value {
    fn from(v: usize) -> Value {
        Value::from(v as u64)
    }
}
impl From<isize> for Value {
    fn from(v: isize) -> Value {
        Value::from(v as i64)
    }
}
impl From<BigInt> for Value {
    fn from(v: BigInt) -> Value {
        Value::Int(Int::from_big(v))
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}
impl From<f32> for Value {
    fn from(v: f32) -> Value {
        Value::Float(f64::from(v))
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Str(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Str(v)
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Value {
        Value::Bytes(v.to_vec())
    }
}
impl From<()> for Value {
    fn from(_: ()) -> Value {
        Value::None
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        match v {
            Some(v) => v.into(),
            None => Value::None,
        }
    }
}
impl From<Vec<Value>> for Value {
    /// A vector of values becomes a tuple.
    fn from(v: Vec<Value>) -> Value {
        Value::Tuple(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        assert_eq!(float_repr(1.5), "1.5");
        assert_eq!(float_repr(1.0), "1.0");
        assert_eq!(float_repr(1e16), "1e+16");
        assert_eq!(float_repr(1e15), "1000000000000000.0");
        assert_eq!(float_repr(0.0001), "0.0001");
        assert_eq!(float_repr(0.00001), "1e-05");
        assert_eq!(float_repr(1e300), "1e+300");
        assert_eq!(float_repr(5e-324), "5e-324");
        assert_eq!(float_repr(-0.0), "-0.0");
        assert_eq!(float_repr(1.7976931348623157e308), "1.7976931348623157e+308");
    }

    #[test]
    fn repr_of_containers() {
        let v = Value::Tuple(vec![Value::from(1), Value::from("a'b"), Value::Bytes(vec![0, b'x'])]);
        assert_eq!(v.repr(), "(1, \"a'b\", b'\\x00x')");
        assert_eq!(Value::Tuple(vec![Value::None]).repr(), "(None,)");
        assert_eq!(Value::Complex(1.5, -2.25).repr(), "(1.5-2.25j)");
        assert_eq!(Value::Complex(0.0, 0.0).repr(), "0j");
    }
}
