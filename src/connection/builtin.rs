//! Ready-made objects that Python peers treat like their builtin types.
//!
//! Brine cannot carry lists or dicts, so Python sends them by reference. These
//! helpers do the same from Rust: the class names are `builtins.list`,
//! `builtins.dict` and `builtins.list_iterator`, so a Python client builds its
//! proxy from its own builtin class (no INSPECT round trip) and `len()`,
//! indexing, `in`, iteration, `list(x)` and `dict(x)` just work.

use super::handler::{SelfObject, This};
use super::object::{Class, Object};
use crate::error::{Error, Result};
use crate::wire::{Exception, Value};
use std::sync::{Arc, Mutex, OnceLock};

struct ListState {
    items: Vec<Object>,
}

struct IterState {
    items: Mutex<std::collections::VecDeque<Object>>,
}

struct DictState {
    pairs: Vec<(Value, Object)>,
}

fn index_of(len: usize, i: i64) -> Result<usize> {
    let idx = if i < 0 { len as i64 + i } else { i };
    if idx < 0 || idx >= len as i64 {
        return Err(Exception::index_error("list index out of range").into());
    }
    Ok(idx as usize)
}

fn slice_bounds(len: usize, s: &(Value, Value, Value)) -> Result<Vec<usize>> {
    let len_i = len as i64;
    let get = |v: &Value| -> Result<Option<i64>> {
        match v {
            Value::None => Ok(None),
            other => {
                other.as_i64().map(Some).ok_or_else(|| Error::type_error("slice indices must be integers or None"))
            }
        }
    };
    let step = get(&s.2)?.unwrap_or(1);
    if step == 0 {
        return Err(Error::value_error("slice step cannot be zero"));
    }
    let clamp = |v: i64, lo: i64, hi: i64| v.max(lo).min(hi);
    let norm = |v: i64| if v < 0 { v + len_i } else { v };
    let mut out = Vec::new();
    if step > 0 {
        let start = clamp(get(&s.0)?.map(norm).unwrap_or(0), 0, len_i);
        let stop = clamp(get(&s.1)?.map(norm).unwrap_or(len_i), 0, len_i);
        let mut i = start;
        while i < stop {
            out.push(i as usize);
            i += step;
        }
    } else {
        let start = clamp(get(&s.0)?.map(norm).unwrap_or(len_i - 1), -1, len_i - 1);
        let stop = clamp(get(&s.1)?.map(norm).unwrap_or(-1), -1, len_i - 1);
        let mut i = start;
        while i > stop {
            out.push(i as usize);
            i += step;
        }
    }
    Ok(out)
}

fn obj_eq(a: &Object, b: &Object) -> bool {
    match (a, b) {
        (Object::Value(x), Object::Value(y)) => x == y || num_eq(x, y),
        (Object::Local(x), Object::Local(y)) => Arc::ptr_eq(x, y),
        _ => false,
    }
}

fn num_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(f), other) | (other, Value::Float(f)) => other.as_i64().is_some_and(|i| i as f64 == *f),
        (Value::Bool(_), _) | (_, Value::Bool(_)) => a.as_i64().is_some() && a.as_i64() == b.as_i64(),
        _ => false,
    }
}

fn list_class() -> &'static Class<ListState> {
    static C: OnceLock<Class<ListState>> = OnceLock::new();
    C.get_or_init(|| {
        Class::<ListState>::builder("builtins.list")
            .plain_method("__len__()", |s: This<ListState>| Ok(s.items.len()))
            .plain_method("__getitem__(index)", |s: This<ListState>, index: Value| match index {
                Value::Slice(sl) => {
                    let picked = slice_bounds(s.items.len(), &sl)?.into_iter().filter_map(|i| s.items.get(i).cloned());
                    Ok(list(picked.collect()))
                }
                other => {
                    let i = other.as_i64().ok_or_else(|| {
                        Error::type_error(format!("list indices must be integers or slices, not {}", other.type_name()))
                    })?;
                    let idx = index_of(s.items.len(), i)?;
                    Ok(s.items.get(idx).cloned().unwrap_or_else(Object::none))
                }
            })
            .plain_method("__contains__(value)", |s: This<ListState>, value: Object| {
                Ok(s.items.iter().any(|x| obj_eq(x, &value)))
            })
            .plain_method("__iter__()", |s: This<ListState>| Ok(iterator(s.items.clone())))
            .plain_method("__repr__()", |s: This<ListState>| Ok(repr_items("[", &s.items, "]")))
            .method("count(value)", |s: This<ListState>, value: Object| {
                Ok(s.items.iter().filter(|x| obj_eq(x, &value)).count())
            })
            .method("index(value)", |s: This<ListState>, value: Object| {
                s.items
                    .iter()
                    .position(|x| obj_eq(x, &value))
                    .ok_or_else(|| Error::value_error(format!("{} is not in list", describe(&value))))
            })
            .build()
    })
}

fn describe(o: &Object) -> String {
    match o {
        Object::Value(v) => v.repr(),
        other => format!("<{}>", other.describe()),
    }
}

fn repr_items(open: &str, items: &[Object], close: &str) -> String {
    let inner: Vec<String> = items.iter().map(describe).collect();
    format!("{open}{}{close}", inner.join(", "))
}

fn iter_class() -> &'static Class<IterState> {
    static C: OnceLock<Class<IterState>> = OnceLock::new();
    C.get_or_init(|| {
        Class::<IterState>::builder("builtins.list_iterator")
            .plain_method("__next__()", |s: This<IterState>| {
                let mut q = s.items.lock().unwrap_or_else(|p| p.into_inner());
                q.pop_front().ok_or_else(|| Exception::stop_iteration().into())
            })
            .plain_method("__iter__()", |me: SelfObject| Ok(me.0))
            .plain_method("__length_hint__()", |s: This<IterState>| {
                Ok(s.items.lock().unwrap_or_else(|p| p.into_inner()).len())
            })
            .build()
    })
}

fn dict_class() -> &'static Class<DictState> {
    static C: OnceLock<Class<DictState>> = OnceLock::new();
    C.get_or_init(|| {
        Class::<DictState>::builder("builtins.dict")
            .plain_method("__len__()", |s: This<DictState>| Ok(s.pairs.len()))
            .plain_method("__getitem__(key)", |s: This<DictState>, key: Value| {
                s.pairs
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| Exception::key_error(key).into())
            })
            .plain_method("__contains__(key)", |s: This<DictState>, key: Value| {
                Ok(s.pairs.iter().any(|(k, _)| *k == key))
            })
            .plain_method("__iter__()", |s: This<DictState>| {
                Ok(iterator(s.pairs.iter().map(|(k, _)| Object::Value(k.clone())).collect()))
            })
            .plain_method("__repr__()", |s: This<DictState>| {
                let inner: Vec<String> =
                    s.pairs.iter().map(|(k, v)| format!("{}: {}", k.repr(), describe(v))).collect();
                Ok(format!("{{{}}}", inner.join(", ")))
            })
            .method("keys()", |s: This<DictState>| Ok(Value::Tuple(s.pairs.iter().map(|(k, _)| k.clone()).collect())))
            .method("values()", |s: This<DictState>| {
                Ok(Object::Tuple(s.pairs.iter().map(|(_, v)| v.clone()).collect()))
            })
            .method("items()", |s: This<DictState>| {
                Ok(Object::Tuple(
                    s.pairs.iter().map(|(k, v)| Object::Tuple(vec![Object::Value(k.clone()), v.clone()])).collect(),
                ))
            })
            .method("get(key, default)", |s: This<DictState>, key: Value, default: Option<Value>| {
                Ok(s.pairs
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| Object::Value(default.unwrap_or(Value::None))))
            })
            .build()
    })
}

/// A list-like object (Python sees a `builtins.list` proxy).
pub fn list(items: Vec<Object>) -> Object {
    list_class().instance(ListState { items })
}

/// A list-like object of plain values.
pub fn list_of_values(items: impl IntoIterator<Item = Value>) -> Object {
    list(items.into_iter().map(Object::Value).collect())
}

/// A one-shot iterator object (Python sees a `builtins.list_iterator`).
pub fn iterator(items: Vec<Object>) -> Object {
    iter_class().instance(IterState { items: Mutex::new(items.into()) })
}

/// A read-only dict-like object (Python sees a `builtins.dict` proxy with
/// `keys()`, `values()`, `items()` and `get()` exposed).
pub fn dict(pairs: Vec<(Value, Object)>) -> Object {
    dict_class().instance(DictState { pairs })
}
