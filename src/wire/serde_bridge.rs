//! serde ⇄ [`Value`]: service methods take and return plain Rust types.
//!
//! Brine has no list, dict or struct, so the mapping picks the closest thing
//! a Python peer can use:
//!
//! | Rust | brine / Python |
//! |---|---|
//! | integers, `bool`, `f32`/`f64`, `String`/`&str`, `char` | `int`, `bool`, `float`, `str` |
//! | `Option<T>` | `None` or the value |
//! | `()` and unit structs | `None` |
//! | tuples, `Vec<T>`, arrays, sets | `tuple` |
//! | `Vec<u8>` (non-empty), `serde_bytes` | `bytes` |
//! | maps and structs | a tuple of `(key, value)` pairs (`dict(x)` in Python) |
//! | enums | the variant name, or `(name, payload)` |
//!
//! Decoding is lenient where Python is: an `int` is accepted where a float is
//! expected, a `bytes` value fills a `Vec<u8>`, and a struct may arrive either
//! as `(name, value)` pairs or positionally.

use super::value::{Int, Value};
use num_bigint::BigInt;
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize};
use std::fmt;

// Marker names that let a `Value` pass through serde without losing the
// brine types serde has no notion of. Foreign serializers see the inner
// data (a newtype struct is transparent); ours restores the exact type.
const MARK_BIGINT: &str = "$rpyc::BigInt";
const MARK_FROZENSET: &str = "$rpyc::FrozenSet";
const MARK_SLICE: &str = "$rpyc::Slice";
const MARK_COMPLEX: &str = "$rpyc::Complex";
const MARK_ELLIPSIS: &str = "$rpyc::Ellipsis";
const MARK_NOT_IMPLEMENTED: &str = "$rpyc::NotImplemented";

/// A Rust value could not be converted to or from a [`Value`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConvertError(pub String);

impl ser::Error for ConvertError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ConvertError(msg.to_string())
    }
}
impl de::Error for ConvertError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ConvertError(msg.to_string())
    }
}

/// Converts any `Serialize` value into a brine [`Value`].
pub fn to_value<T: Serialize + ?Sized>(v: &T) -> Result<Value, ConvertError> {
    v.serialize(ValueSerializer)
}

/// Converts a brine [`Value`] into any `DeserializeOwned` type.
pub fn from_value<T: DeserializeOwned>(v: Value) -> Result<T, ConvertError> {
    T::deserialize(v)
}

struct ValueSerializer;

/// Collects sequence items; remembers whether every item was a `u8` so that
/// a `Vec<u8>` becomes `bytes`.
struct SeqCollector {
    items: Vec<Value>,
    all_u8: bool,
    is_seq: bool,
    variant: Option<&'static str>,
}

struct MapCollector {
    pairs: Vec<Value>,
    key: Option<Value>,
    variant: Option<&'static str>,
}

struct U8Probe;

impl ser::Serializer for ValueSerializer {
    type Ok = Value;
    type Error = ConvertError;
    type SerializeSeq = SeqCollector;
    type SerializeTuple = SeqCollector;
    type SerializeTupleStruct = SeqCollector;
    type SerializeTupleVariant = SeqCollector;
    type SerializeMap = MapCollector;
    type SerializeStruct = MapCollector;
    type SerializeStructVariant = MapCollector;

    fn serialize_bool(self, v: bool) -> Result<Value, ConvertError> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_i128(self, v: i128) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_u8(self, v: u8) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_u128(self, v: u128) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_f32(self, v: f32) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<Value, ConvertError> {
        Ok(v.into())
    }
    fn serialize_char(self, v: char) -> Result<Value, ConvertError> {
        Ok(Value::Str(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, ConvertError> {
        Ok(Value::Str(v.to_string()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, ConvertError> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn serialize_none(self) -> Result<Value, ConvertError> {
        Ok(Value::None)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<Value, ConvertError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, ConvertError> {
        Ok(Value::None)
    }
    fn serialize_unit_struct(self, name: &'static str) -> Result<Value, ConvertError> {
        Ok(match name {
            MARK_ELLIPSIS => Value::Ellipsis,
            MARK_NOT_IMPLEMENTED => Value::NotImplemented,
            _ => Value::None,
        })
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<Value, ConvertError> {
        Ok(Value::Str(variant.to_string()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, name: &'static str, v: &T) -> Result<Value, ConvertError> {
        let inner = v.serialize(self)?;
        Ok(match (name, inner) {
            (MARK_BIGINT, Value::Str(digits)) => match digits.parse::<BigInt>() {
                Ok(b) => Value::Int(Int::from_big(b)),
                Err(_) => return Err(ConvertError(format!("bad integer text {digits:?}"))),
            },
            (MARK_FROZENSET, Value::Tuple(items)) => Value::FrozenSet(items),
            (MARK_FROZENSET, Value::Bytes(b)) => Value::FrozenSet(b.into_iter().map(Value::from).collect()),
            (MARK_SLICE, Value::Tuple(mut p)) if p.len() == 3 => {
                let c = p.pop().unwrap_or(Value::None);
                let b = p.pop().unwrap_or(Value::None);
                let a = p.pop().unwrap_or(Value::None);
                Value::Slice(Box::new((a, b, c)))
            }
            (MARK_COMPLEX, Value::Tuple(p)) if p.len() == 2 => match (&p[0], &p[1]) {
                (Value::Float(r), Value::Float(i)) => Value::Complex(*r, *i),
                _ => Value::Tuple(p),
            },
            (_, inner) => inner,
        })
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<Value, ConvertError> {
        Ok(Value::Tuple(vec![Value::Str(variant.to_string()), v.serialize(self)?]))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqCollector, ConvertError> {
        Ok(SeqCollector::new(len, true, None))
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqCollector, ConvertError> {
        Ok(SeqCollector::new(Some(len), false, None))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<SeqCollector, ConvertError> {
        Ok(SeqCollector::new(Some(len), false, None))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<SeqCollector, ConvertError> {
        Ok(SeqCollector::new(Some(len), false, Some(variant)))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<MapCollector, ConvertError> {
        Ok(MapCollector { pairs: Vec::with_capacity(len.unwrap_or(0).min(1024)), key: None, variant: None })
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<MapCollector, ConvertError> {
        Ok(MapCollector { pairs: Vec::with_capacity(len), key: None, variant: None })
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<MapCollector, ConvertError> {
        Ok(MapCollector { pairs: Vec::with_capacity(len), key: None, variant: Some(variant) })
    }
}

impl SeqCollector {
    fn new(len: Option<usize>, is_seq: bool, variant: Option<&'static str>) -> Self {
        SeqCollector { items: Vec::with_capacity(len.unwrap_or(0).min(4096)), all_u8: true, is_seq, variant }
    }
    fn push<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ConvertError> {
        if self.all_u8 && self.is_seq && v.serialize(U8Probe).is_err() {
            self.all_u8 = false;
        }
        self.items.push(v.serialize(ValueSerializer)?);
        Ok(())
    }
    fn finish(self) -> Value {
        let value = if self.is_seq && self.all_u8 && !self.items.is_empty() {
            Value::Bytes(self.items.iter().filter_map(|v| v.as_i64()).map(|b| b as u8).collect())
        } else {
            Value::Tuple(self.items)
        };
        match self.variant {
            Some(name) => Value::Tuple(vec![Value::Str(name.to_string()), value]),
            None => value,
        }
    }
}

macro_rules! seq_impl {
    ($tr:ident, $m:ident) => {
        impl ser::$tr for SeqCollector {
            type Ok = Value;
            type Error = ConvertError;
            fn $m<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ConvertError> {
                self.push(v)
            }
            fn end(self) -> Result<Value, ConvertError> {
                Ok(self.finish())
            }
        }
    };
}
seq_impl!(SerializeSeq, serialize_element);
seq_impl!(SerializeTuple, serialize_element);
seq_impl!(SerializeTupleStruct, serialize_field);
seq_impl!(SerializeTupleVariant, serialize_field);

impl MapCollector {
    fn finish(self) -> Value {
        let value = Value::Tuple(self.pairs);
        match self.variant {
            Some(name) => Value::Tuple(vec![Value::Str(name.to_string()), value]),
            None => value,
        }
    }
}

impl ser::SerializeMap for MapCollector {
    type Ok = Value;
    type Error = ConvertError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), ConvertError> {
        self.key = Some(k.serialize(ValueSerializer)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ConvertError> {
        let key = self.key.take().unwrap_or(Value::None);
        self.pairs.push(Value::Tuple(vec![key, v.serialize(ValueSerializer)?]));
        Ok(())
    }
    fn end(self) -> Result<Value, ConvertError> {
        Ok(self.finish())
    }
}

macro_rules! struct_impl {
    ($tr:ident) => {
        impl ser::$tr for MapCollector {
            type Ok = Value;
            type Error = ConvertError;
            fn serialize_field<T: Serialize + ?Sized>(&mut self, k: &'static str, v: &T) -> Result<(), ConvertError> {
                self.pairs.push(Value::Tuple(vec![Value::Str(k.to_string()), v.serialize(ValueSerializer)?]));
                Ok(())
            }
            fn end(self) -> Result<Value, ConvertError> {
                Ok(self.finish())
            }
        }
    };
}
struct_impl!(SerializeStruct);
struct_impl!(SerializeStructVariant);

/// A serializer that succeeds only for `u8`: used to spot `Vec<u8>`.
impl ser::Serializer for U8Probe {
    type Ok = ();
    type Error = ConvertError;
    type SerializeSeq = ser::Impossible<(), ConvertError>;
    type SerializeTuple = ser::Impossible<(), ConvertError>;
    type SerializeTupleStruct = ser::Impossible<(), ConvertError>;
    type SerializeTupleVariant = ser::Impossible<(), ConvertError>;
    type SerializeMap = ser::Impossible<(), ConvertError>;
    type SerializeStruct = ser::Impossible<(), ConvertError>;
    type SerializeStructVariant = ser::Impossible<(), ConvertError>;
    fn serialize_u8(self, _: u8) -> Result<(), ConvertError> {
        Ok(())
    }
    fn serialize_bool(self, _: bool) -> Result<(), ConvertError> {
        Err(not_u8())
    }
    fn serialize_i8(self, _: i8) -> Result<(), ConvertError> {
        Err(not_u8())
    }
    fn serialize_i16(self, _: i16) -> Result<(), ConvertError> {
        Err(not_u8())
    }
    fn serialize_i32(self, _: i32) -> Result<(), ConvertError> {
        Err(not_u8())
    }
    fn serialize_i64(self, _: i64) -> Result<(), ConvertError> {
        Err(not_u8())
    }
    fn serialize_u16(self, _: u16) -> Result<(), ConvertError> {
        Err(not_u8())
    }
    fn serialize_u32(self, _: u32) -> Result<(), ConvertError> {
        Err(not_u8())
    }
    fn serialize_u64(self, _: u64) -> Result<(), ConvertError> {
        Err(not_u8())
    }
    fn serialize_f32(self, _: f32) -> Result<(), ConvertError> {
        Err(not_u8())
    }
    fn serialize_f64(self, _: f64) -> Result<(), ConvertError> {
        Err(not_u8())
    }
    fn serialize_char(self, _: char) -> Result<(), ConvertError> {
        Err(not_u8())
    }
    fn serialize_str(self, _: &str) -> Result<(), ConvertError> {
        Err(not_u8())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), ConvertError> {
        Err(not_u8())
    }
    fn serialize_none(self) -> Result<(), ConvertError> {
        Err(not_u8())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), ConvertError> {
        Err(not_u8())
    }
    fn serialize_unit(self) -> Result<(), ConvertError> {
        Err(not_u8())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), ConvertError> {
        Err(not_u8())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), ConvertError> {
        Err(not_u8())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, _: &T) -> Result<(), ConvertError> {
        Err(not_u8())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), ConvertError> {
        Err(not_u8())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, ConvertError> {
        Err(not_u8())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, ConvertError> {
        Err(not_u8())
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, ConvertError> {
        Err(not_u8())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, ConvertError> {
        Err(not_u8())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, ConvertError> {
        Err(not_u8())
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, ConvertError> {
        Err(not_u8())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, ConvertError> {
        Err(not_u8())
    }
}

fn not_u8() -> ConvertError {
    ConvertError(String::new())
}

struct Items<'a>(&'a [Value]);

impl Serialize for Items<'_> {
    fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use ser::SerializeTuple;
        let mut t = s.serialize_tuple(self.0.len())?;
        for i in self.0 {
            t.serialize_element(i)?;
        }
        t.end()
    }
}

impl Serialize for Value {
    fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::None => s.serialize_unit(),
            Value::Ellipsis => s.serialize_unit_struct(MARK_ELLIPSIS),
            Value::NotImplemented => s.serialize_unit_struct(MARK_NOT_IMPLEMENTED),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(Int::Small(v)) => s.serialize_i64(*v),
            Value::Int(Int::Big(b)) => s.serialize_newtype_struct(MARK_BIGINT, &b.to_string()),
            Value::Float(f) => s.serialize_f64(*f),
            Value::Complex(r, i) => s.serialize_newtype_struct(MARK_COMPLEX, &(r, i)),
            Value::Str(v) => s.serialize_str(v),
            Value::Bytes(b) => s.serialize_bytes(b),
            Value::Tuple(items) => Items(items).serialize(s),
            Value::FrozenSet(items) => s.serialize_newtype_struct(MARK_FROZENSET, &Items(items)),
            Value::Slice(p) => s.serialize_newtype_struct(MARK_SLICE, &(&p.0, &p.1, &p.2)),
        }
    }
}

impl<'de> de::Deserialize<'de> for Value {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any brine value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(v))
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::None)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::None)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Tuple(items))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some((k, v)) = map.next_entry::<Value, Value>()? {
            items.push(Value::Tuple(vec![k, v]));
        }
        // A single-entry map keyed by a marker is how our own deserializer
        // hands over the brine types serde cannot express.
        if let [Value::Tuple(kv)] = items.as_slice() {
            if let (Some(Value::Str(k)), Some(v)) = (kv.first(), kv.get(1)) {
                if let Some(restored) = restore_marked(k, v) {
                    return Ok(restored);
                }
            }
        }
        Ok(Value::Tuple(items))
    }
}

fn restore_marked(mark: &str, v: &Value) -> Option<Value> {
    Some(match (mark, v) {
        (MARK_BIGINT, Value::Str(d)) => Value::Int(Int::from_big(d.parse::<BigInt>().ok()?)),
        (MARK_FROZENSET, Value::Tuple(items)) => Value::FrozenSet(items.clone()),
        (MARK_SLICE, Value::Tuple(p)) if p.len() == 3 => {
            Value::Slice(Box::new((p[0].clone(), p[1].clone(), p[2].clone())))
        }
        (MARK_COMPLEX, Value::Tuple(p)) if p.len() == 2 => match (&p[0], &p[1]) {
            (Value::Float(r), Value::Float(i)) => Value::Complex(*r, *i),
            _ => return None,
        },
        (MARK_ELLIPSIS, Value::None) => Value::Ellipsis,
        (MARK_NOT_IMPLEMENTED, Value::None) => Value::NotImplemented,
        _ => return None,
    })
}

fn marked<'de, V: Visitor<'de>>(mark: &'static str, inner: Value, v: V) -> Result<V::Value, ConvertError> {
    v.visit_map(de::value::MapDeserializer::new(std::iter::once((Value::Str(mark.to_string()), inner))))
}

fn invalid(v: &Value, exp: &dyn de::Expected) -> ConvertError {
    let unexp = match v {
        Value::None => de::Unexpected::Option,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Int(Int::Small(i)) => de::Unexpected::Signed(*i),
        Value::Int(Int::Big(_)) => de::Unexpected::Other("a large int"),
        Value::Float(f) => de::Unexpected::Float(*f),
        Value::Str(s) => de::Unexpected::Str(s),
        Value::Bytes(b) => de::Unexpected::Bytes(b),
        Value::Tuple(_) => de::Unexpected::Other("tuple"),
        Value::FrozenSet(_) => de::Unexpected::Other("frozenset"),
        Value::Complex(..) => de::Unexpected::Other("complex"),
        Value::Slice(_) => de::Unexpected::Other("slice"),
        Value::Ellipsis => de::Unexpected::Other("Ellipsis"),
        Value::NotImplemented => de::Unexpected::Other("NotImplemented"),
    };
    de::Error::invalid_type(unexp, exp)
}

/// Tuple items that are all `(str, value)` pairs: the map form of a struct.
fn is_pair_list(items: &[Value]) -> bool {
    items.iter().all(|i| matches!(i, Value::Tuple(p) if p.len() == 2 && matches!(p[0], Value::Str(_))))
}

impl<'de> de::Deserializer<'de> for Value {
    type Error = ConvertError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConvertError> {
        match self {
            Value::None => v.visit_unit(),
            Value::Ellipsis => marked(MARK_ELLIPSIS, Value::None, v),
            Value::NotImplemented => marked(MARK_NOT_IMPLEMENTED, Value::None, v),
            Value::Bool(b) => v.visit_bool(b),
            Value::Int(Int::Small(i)) => v.visit_i64(i),
            Value::Int(Int::Big(b)) => marked(MARK_BIGINT, Value::Str(b.to_string()), v),
            Value::Float(f) => v.visit_f64(f),
            Value::Complex(r, i) => marked(MARK_COMPLEX, Value::Tuple(vec![Value::Float(r), Value::Float(i)]), v),
            Value::Str(s) => v.visit_string(s),
            Value::Bytes(b) => v.visit_byte_buf(b),
            Value::Tuple(items) => v.visit_seq(de::value::SeqDeserializer::new(items.into_iter())),
            Value::FrozenSet(items) => marked(MARK_FROZENSET, Value::Tuple(items), v),
            Value::Slice(p) => {
                let (a, b, c) = *p;
                marked(MARK_SLICE, Value::Tuple(vec![a, b, c]), v)
            }
        }
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConvertError> {
        match self {
            Value::Float(f) => v.visit_f64(f),
            Value::Int(Int::Small(i)) => v.visit_f64(i as f64),
            Value::Int(Int::Big(b)) => v.visit_f64(num_traits::ToPrimitive::to_f64(&b).unwrap_or(f64::INFINITY)),
            Value::Bool(b) => v.visit_f64(if b { 1.0 } else { 0.0 }),
            other => Err(invalid(&other, &v)),
        }
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConvertError> {
        self.deserialize_f64(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConvertError> {
        match self {
            Value::None => v.visit_none(),
            other => v.visit_some(other),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConvertError> {
        match self {
            Value::None => v.visit_unit(),
            other => Err(invalid(&other, &v)),
        }
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, ConvertError> {
        self.deserialize_unit(v)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, ConvertError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConvertError> {
        match self {
            Value::Bytes(b) => v.visit_seq(de::value::SeqDeserializer::new(b.into_iter())),
            Value::Tuple(items) | Value::FrozenSet(items) => {
                v.visit_seq(de::value::SeqDeserializer::new(items.into_iter()))
            }
            other => Err(invalid(&other, &v)),
        }
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, ConvertError> {
        self.deserialize_seq(v)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        v: V,
    ) -> Result<V::Value, ConvertError> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConvertError> {
        match self {
            Value::Tuple(items) => {
                let mut pairs = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::Tuple(mut p) if p.len() == 2 => {
                            let val = p.pop().unwrap_or(Value::None);
                            let key = p.pop().unwrap_or(Value::None);
                            pairs.push((key, val));
                        }
                        other => {
                            return Err(ConvertError(format!("expected a (key, value) pair, got {}", other.repr())))
                        }
                    }
                }
                v.visit_map(de::value::MapDeserializer::new(pairs.into_iter()))
            }
            other => Err(invalid(&other, &v)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, ConvertError> {
        match self {
            Value::Tuple(items) if !items.is_empty() && is_pair_list(&items) => Value::Tuple(items).deserialize_map(v),
            Value::Tuple(items) => v.visit_seq(de::value::SeqDeserializer::new(items.into_iter())),
            other => Err(invalid(&other, &v)),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, ConvertError> {
        match self {
            Value::Str(s) => v.visit_enum(s.into_deserializer()),
            Value::Tuple(mut items) if items.len() == 2 => {
                let payload = items.pop().unwrap_or(Value::None);
                match items.pop() {
                    Some(Value::Str(name)) => v.visit_enum(EnumAccess { name, payload }),
                    _ => Err(ConvertError("enum variant name must be a str".into())),
                }
            }
            other => Err(invalid(&other, &v)),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConvertError> {
        match self {
            Value::Bytes(b) => v.visit_byte_buf(b),
            Value::Str(s) => v.visit_byte_buf(s.into_bytes()),
            Value::Tuple(items) => v.visit_seq(de::value::SeqDeserializer::new(items.into_iter())),
            other => Err(invalid(&other, &v)),
        }
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConvertError> {
        self.deserialize_bytes(v)
    }

    fn deserialize_i128<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConvertError> {
        match self {
            Value::Int(Int::Big(b)) => match i128::try_from(&b) {
                Ok(x) => v.visit_i128(x),
                Err(_) => Err(ConvertError(format!("integer {b} does not fit in i128"))),
            },
            other => other.deserialize_any(v),
        }
    }

    fn deserialize_u128<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConvertError> {
        match self {
            Value::Int(Int::Big(b)) => match u128::try_from(&b) {
                Ok(x) => v.visit_u128(x),
                Err(_) => Err(ConvertError(format!("integer {b} does not fit in u128"))),
            },
            other => other.deserialize_any(v),
        }
    }

    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConvertError> {
        match self {
            Value::Int(Int::Big(b)) => match u64::try_from(&b) {
                Ok(x) => v.visit_u64(x),
                Err(_) => Err(ConvertError(format!("integer {b} does not fit in u64"))),
            },
            other => other.deserialize_any(v),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 u8 u16 u32 char str string identifier ignored_any
    }
}

impl IntoDeserializer<'_, ConvertError> for Value {
    type Deserializer = Value;
    fn into_deserializer(self) -> Value {
        self
    }
}

struct EnumAccess {
    name: String,
    payload: Value,
}

impl<'de> de::EnumAccess<'de> for EnumAccess {
    type Error = ConvertError;
    type Variant = Value;
    fn variant_seed<S: de::DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Value), ConvertError> {
        let name: de::value::StringDeserializer<ConvertError> = self.name.into_deserializer();
        Ok((seed.deserialize(name)?, self.payload))
    }
}

impl<'de> de::VariantAccess<'de> for Value {
    type Error = ConvertError;
    fn unit_variant(self) -> Result<(), ConvertError> {
        Ok(())
    }
    fn newtype_variant_seed<S: de::DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, ConvertError> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, ConvertError> {
        de::Deserializer::deserialize_seq(self, v)
    }
    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], v: V) -> Result<V::Value, ConvertError> {
        de::Deserializer::deserialize_struct(self, "", fields, v)
    }
}

/// Keeps `BigInt` reachable for callers converting huge ints by hand.
pub fn to_bigint(v: &Value) -> Option<BigInt> {
    match v {
        Value::Int(i) => Some(i.to_big()),
        Value::Bool(b) => Some(BigInt::from(u8::from(*b))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Info {
        name: String,
        version: u32,
        tags: Vec<String>,
        blob: Vec<u8>,
        parent: Option<Box<Info>>,
    }

    #[test]
    fn struct_round_trip() {
        let i = Info { name: "x".into(), version: 3, tags: vec!["a".into()], blob: vec![1, 2], parent: None };
        let v = to_value(&i).ok();
        let back: Option<Info> = v.clone().and_then(|v| from_value(v).ok());
        assert_eq!(back, Some(i));
        // Vec<u8> travels as bytes.
        let v = v.unwrap_or(Value::None);
        let blob = v.as_tuple().and_then(|t| t.get(3)).cloned();
        assert_eq!(blob, Some(Value::Tuple(vec!["blob".into(), Value::Bytes(vec![1, 2])])));
    }

    #[test]
    fn values_pass_through_serde_unchanged() {
        let v = Value::Tuple(vec![
            Value::Int(Int::from_big("1".repeat(50).parse().unwrap_or_default())),
            Value::FrozenSet(vec![1.into(), 2.into()]),
            Value::Slice(Box::new((Value::None, 3.into(), Value::None))),
            Value::Complex(1.0, 2.0),
            Value::Ellipsis,
            Value::NotImplemented,
            Value::Bytes(vec![1, 2]),
        ]);
        assert_eq!(to_value(&v).ok(), Some(v.clone()));
        assert_eq!(from_value::<Value>(v.clone()).ok(), Some(v.clone()));
        assert_eq!(from_value::<Vec<Value>>(v.clone()).ok().map(Value::Tuple), Some(v));
        assert_eq!(from_value::<u64>(Value::from(u64::MAX)).ok(), Some(u64::MAX));
    }

    #[test]
    fn lenient_numbers() {
        assert_eq!(from_value::<f64>(Value::from(2)).ok(), Some(2.0));
        assert_eq!(
            from_value::<(i64, String)>(Value::Tuple(vec![1.into(), "a".into()])).ok(),
            Some((1, "a".to_string()))
        );
        assert!(from_value::<u8>(Value::from(300)).is_err());
        assert!(from_value::<i64>(Value::from("x")).is_err());
    }
}
