//! Exceptions on the wire (mirrors `rpyc/core/vinegar.py`).
//!
//! An exception travels as `((module, class name), args, attrs, traceback
//! text)`; `StopIteration` travels as the bare integer 1. A Python client
//! re-raises classes from the `builtins` module as themselves, so a Rust
//! service that raises `Exception::new("ValueError", "…")` is caught by
//! `except ValueError` on the Python side.

use super::message::EXC_STOP_ITERATION;
use super::value::{Int, Value};
use std::fmt;

/// A Python exception: raised by a Rust service, or received from a peer.
///
/// It keeps everything the wire carries, so nothing is lost when a Rust
/// program re-raises an exception it received.
#[derive(Clone, Debug, PartialEq)]
pub struct Exception {
    /// The module of the class, `"builtins"` for the standard exceptions.
    pub module: String,
    /// The class name, e.g. `"ValueError"`.
    pub class: String,
    /// The exception's `args` (usually one message string).
    pub args: Vec<Value>,
    /// Public attributes as `(name, value)` (e.g. `_remote_version`).
    pub attrs: Vec<(String, Value)>,
    /// The remote traceback text (what Python prints under "Remote Traceback").
    pub traceback: String,
}

impl Exception {
    /// A builtin exception class (`module = "builtins"`) with one message argument.
    pub fn new(class: impl Into<String>, message: impl Into<String>) -> Exception {
        Exception {
            module: "builtins".into(),
            class: class.into(),
            args: vec![Value::Str(message.into())],
            attrs: Vec::new(),
            traceback: String::new(),
        }
    }

    /// An exception of any module and class with explicit args.
    pub fn with_args(module: impl Into<String>, class: impl Into<String>, args: Vec<Value>) -> Exception {
        Exception { module: module.into(), class: class.into(), args, attrs: Vec::new(), traceback: String::new() }
    }

    /// `ValueError(message)`.
    pub fn value_error(message: impl Into<String>) -> Exception {
        Exception::new("ValueError", message)
    }
    /// `TypeError(message)`.
    pub fn type_error(message: impl Into<String>) -> Exception {
        Exception::new("TypeError", message)
    }
    /// `KeyError(key)`.
    pub fn key_error(key: impl Into<Value>) -> Exception {
        Exception::with_args("builtins", "KeyError", vec![key.into()])
    }
    /// `IndexError(message)`.
    pub fn index_error(message: impl Into<String>) -> Exception {
        Exception::new("IndexError", message)
    }
    /// `AttributeError(message)`.
    pub fn attribute_error(message: impl Into<String>) -> Exception {
        Exception::new("AttributeError", message)
    }
    /// `ZeroDivisionError(message)`.
    pub fn zero_division_error(message: impl Into<String>) -> Exception {
        Exception::new("ZeroDivisionError", message)
    }
    /// `RuntimeError(message)`.
    pub fn runtime_error(message: impl Into<String>) -> Exception {
        Exception::new("RuntimeError", message)
    }
    /// `StopIteration()` — ends an iteration.
    pub fn stop_iteration() -> Exception {
        Exception::with_args("builtins", "StopIteration", Vec::new())
    }

    /// `"module.Class"`, or just `"Class"` for builtins.
    pub fn qualified_name(&self) -> String {
        if self.module == "builtins" || self.module.is_empty() {
            self.class.clone()
        } else {
            format!("{}.{}", self.module, self.class)
        }
    }

    /// True if this is `builtins.<class>`.
    pub fn is(&self, class: &str) -> bool {
        self.class == class && (self.module == "builtins" || self.module == "exceptions")
    }

    /// The message as Python's `str(exc)` would show it (without the traceback).
    pub fn message(&self) -> String {
        match self.args.as_slice() {
            [] => String::new(),
            [Value::Str(s)] if self.class != "KeyError" => s.clone(),
            [one] => one.repr(),
            many => Value::Tuple(many.to_vec()).repr(),
        }
    }

    /// Adds or replaces an attribute.
    pub fn with_attr(mut self, name: impl Into<String>, value: impl Into<Value>) -> Exception {
        let name = name.into();
        self.attrs.retain(|(n, _)| *n != name);
        self.attrs.push((name, value.into()));
        self
    }

    /// Sets the traceback text.
    pub fn with_traceback(mut self, tb: impl Into<String>) -> Exception {
        self.traceback = tb.into();
        self
    }

    /// The dumped (wire) form, as `vinegar.dump` builds it. A missing
    /// traceback is filled with a Python-style one naming `origin`.
    pub fn dump(&self, remote_version: &str, origin: &str) -> Value {
        if self.is("StopIteration") && self.args.is_empty() {
            return Value::Int(Int::Small(EXC_STOP_ITERATION));
        }
        let traceback = if self.traceback.is_empty() {
            format!(
                "Traceback (most recent call last):\n  File \"<rust>\", in {origin}\n{}: {}\n",
                self.qualified_name(),
                self.message()
            )
        } else {
            self.traceback.clone()
        };
        let mut attrs: Vec<Value> = self
            .attrs
            .iter()
            .filter(|(n, _)| n != "_remote_version")
            .map(|(n, v)| Value::Tuple(vec![Value::Str(n.clone()), v.clone()]))
            .collect();
        attrs.push(Value::Tuple(vec!["_remote_version".into(), remote_version.into()]));
        Value::Tuple(vec![
            Value::Tuple(vec![Value::Str(self.module.clone()), Value::Str(self.class.clone())]),
            Value::Tuple(self.args.clone()),
            Value::Tuple(attrs),
            Value::Str(traceback),
        ])
    }

    /// Parses a dumped exception. Anything malformed still yields an
    /// exception (the peer did fail), described as such.
    pub fn load(v: Value) -> Exception {
        match v {
            Value::Int(Int::Small(EXC_STOP_ITERATION)) => Exception::stop_iteration(),
            Value::Str(s) => Exception::new("Exception", s),
            Value::Tuple(parts) if parts.len() == 4 => {
                let mut it = parts.into_iter();
                let names = it.next().unwrap_or(Value::None);
                let args = it.next().unwrap_or(Value::None);
                let attrs = it.next().unwrap_or(Value::None);
                let tb = it.next().unwrap_or(Value::None);
                let (module, class) = match names {
                    Value::Tuple(n) if n.len() == 2 => (text_of(&n[0]), text_of(&n[1])),
                    _ => ("builtins".into(), "Exception".into()),
                };
                let args = match args {
                    Value::Tuple(a) => a,
                    other => vec![other],
                };
                let attrs = match attrs {
                    Value::Tuple(a) => a
                        .into_iter()
                        .filter_map(|p| match p {
                            Value::Tuple(mut kv) if kv.len() == 2 => {
                                let v = kv.pop().unwrap_or(Value::None);
                                let k = kv.pop().unwrap_or(Value::None);
                                Some((text_of(&k), v))
                            }
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                Exception { module, class, args, attrs, traceback: text_of(&tb) }
            }
            other => Exception::new("Exception", format!("malformed exception from peer: {}", other.repr())),
        }
    }

    /// Looks up an attribute sent with the exception.
    pub fn attr(&self, name: &str) -> Option<&Value> {
        self.attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        other => other.repr(),
    }
}

impl fmt::Display for Exception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = self.message();
        if msg.is_empty() {
            write!(f, "{}", self.qualified_name())?;
        } else {
            write!(f, "{}: {}", self.qualified_name(), msg)?;
        }
        if !self.traceback.is_empty() {
            write!(f, "\n\n========= Remote Traceback (1) =========\n{}", self.traceback)?;
        }
        Ok(())
    }
}

impl std::error::Error for Exception {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_load_round_trip() {
        let e = Exception::value_error("bad").with_traceback("tb");
        let back = Exception::load(e.dump("6.0.2", "f"));
        assert_eq!(back.class, "ValueError");
        assert_eq!(back.message(), "bad");
        assert_eq!(back.attr("_remote_version"), Some(&Value::from("6.0.2")));
        assert_eq!(Exception::load(Exception::stop_iteration().dump("6.0.2", "f")).class, "StopIteration");
        assert_eq!(Exception::key_error("k").message(), "'k'");
    }
}
