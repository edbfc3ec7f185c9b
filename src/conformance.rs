//! The CONFORMANCE service: a reference service that exercises every RPyC
//! feature a Python client relies on. `examples/conformance_server.rs` and
//! `rpyc serve` serve it; the interop tests call it from real Python clients.
//!
//! | member | behaviour |
//! |---|---|
//! | `line_length(line)`, `add(x, y)`, `test(num)`, `foo()`, `bar()`, `get_answer()` | the RPyC tutorial seeds |
//! | `the_real_answer_though` | attribute, 43 |
//! | `get_question()` | exists but is *not* exposed |
//! | `echo(x)` | returns `x` (values and references) |
//! | `call_back(func, *args)`, `map(func, seq)` | call the client back |
//! | `sleep(seconds)` | sleeps without blocking other calls |
//! | `fail(kind, message)` | raises the named builtin exception |
//! | `make_counter(start)`, `live_objects()` | a remote object; how many objects the peer holds |
//! | `subscribe(callback, count)` | calls `callback(i)` from the server, 10 ms apart |
//! | `numbers(n)`, `info()` | list-like and dict-like remote objects |
//! | `whoami()` | the authenticated identity, or `None` |
//! | `get_obj()`, `_private`, `secret()` | policy probes |

use crate::connection::builtin::{dict, list_of_values};
use crate::connection::{Args, Class, Ctx, Netref, Object, This};
use crate::error::{Error, Result};
use crate::service::Service;
use crate::wire::{Exception, Int, Value};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The longest `sleep()` accepted, so a peer cannot park tasks forever.
const MAX_SLEEP_SECS: f64 = 3600.0;
/// The most events one `subscribe()` may request.
const MAX_EVENTS: i64 = 100_000;

struct Counter {
    value: AtomicI64,
}

fn counter_class() -> &'static Class<Counter> {
    static C: OnceLock<Class<Counter>> = OnceLock::new();
    C.get_or_init(|| {
        Class::<Counter>::builder("conformance.Counter")
            .method("incr()", |c: This<Counter>| Ok(c.value.fetch_add(1, Ordering::SeqCst) + 1))
            .doc("Adds one and returns the new value.")
            .attr("value", |c: &Counter| c.value.load(Ordering::SeqCst))
            .plain_method("__repr__()", |c: This<Counter>| {
                Ok(format!("Counter(value={})", c.value.load(Ordering::SeqCst)))
            })
            .plain_method("__str__()", |c: This<Counter>| Ok(format!("Counter at {}", c.value.load(Ordering::SeqCst))))
            .build()
    })
}

struct Probe;

fn probe_class() -> &'static Class<Probe> {
    static C: OnceLock<Class<Probe>> = OnceLock::new();
    C.get_or_init(|| {
        Class::<Probe>::builder("conformance.PolicyProbe")
            .plain_attr("public", |_: &Probe| 1)
            .plain_attr("_private", |_: &Probe| "hidden")
            .build()
    })
}

/// Python's `x + y` for the by-value types.
pub fn py_add(x: &Value, y: &Value) -> Result<Value> {
    use Value::*;
    Ok(match (x, y) {
        (Int(_) | Bool(_), Int(_) | Bool(_)) => {
            let a = crate::wire::serde_bridge::to_bigint(x).unwrap_or_default();
            let b = crate::wire::serde_bridge::to_bigint(y).unwrap_or_default();
            Value::Int(crate::wire::Int::from_big(a + b))
        }
        (Float(a), Float(b)) => Float(a + b),
        (Float(a), other) | (other, Float(a)) if matches!(other, Int(_) | Bool(_)) => Float(
            a + num_traits::ToPrimitive::to_f64(&crate::wire::serde_bridge::to_bigint(other).unwrap_or_default())
                .unwrap_or(f64::NAN),
        ),
        (Complex(a, b), Complex(c, d)) => Complex(a + c, b + d),
        (Str(a), Str(b)) => Str(format!("{a}{b}")),
        (Bytes(a), Bytes(b)) => Bytes([a.as_slice(), b.as_slice()].concat()),
        (Tuple(a), Tuple(b)) => Tuple(a.iter().chain(b).cloned().collect()),
        _ => {
            return Err(Error::type_error(format!(
                "unsupported operand type(s) for +: '{}' and '{}'",
                x.type_name(),
                y.type_name()
            )))
        }
    })
}

async fn call_remote(func: &Object, args: Vec<Object>) -> Result<Object> {
    match func {
        Object::Remote(f) => f.call(args).await,
        other => Err(Error::type_error(format!("'{}' object is not callable here", other.describe()))),
    }
}

async fn items_of(seq: Object) -> Result<Vec<Object>> {
    match seq {
        Object::Tuple(items) => Ok(items),
        Object::Value(Value::Tuple(items) | Value::FrozenSet(items)) => {
            Ok(items.into_iter().map(Object::Value).collect())
        }
        Object::Remote(n) => n.to_vec().await,
        other => Err(Error::type_error(format!("'{}' object is not iterable", other.describe()))),
    }
}

/// Options of the CONFORMANCE service.
#[derive(Clone, Debug, Default)]
pub struct Options {}

/// Builds the CONFORMANCE service.
pub fn service() -> Service {
    Service::builder("conformance", || ())
        .docstring("The CONFORMANCE service: what every rpyc implementation must answer alike.")
        .method("line_length(line)", |line: String| Ok(line.chars().count()))
        .method("add(x, y)", |x: Value, y: Value| py_add(&x, &y))
        .method("test(num)", |num: Value| py_add(&Value::Int(Int::Small(1)), &num))
        .method("foo()", || Ok("foo"))
        .method("bar()", || Ok("bar"))
        .method("get_answer()", || Ok(42))
        .attr("the_real_answer_though", |_| 43)
        .plain_method("get_question()", || Ok("what is the airspeed velocity of an unladen swallow?"))
        .method("echo(x)", |x: Object| Ok(x))
        .async_method("call_back(func, *args)", |func: Object, args: Args| async move {
            if !args.keywords.is_empty() {
                return Err(Error::type_error("call_back() passes positional arguments only"));
            }
            call_remote(&func, args.positional).await
        })
        .async_method("map(func, seq)", |func: Object, seq: Object| async move {
            let mut out = Vec::new();
            for item in items_of(seq).await? {
                out.push(call_remote(&func, vec![item]).await?);
            }
            Ok(Object::Tuple(out))
        })
        .async_method("sleep(seconds)", |seconds: f64| async move {
            if !(0.0..=MAX_SLEEP_SECS).contains(&seconds) {
                return Err(Error::value_error(format!("sleep length must be between 0 and {MAX_SLEEP_SECS} seconds")));
            }
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            Ok(())
        })
        .method("fail(kind, message)", |kind: String, message: String| -> Result<()> {
            let valid = !kind.is_empty() && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(Error::value_error(format!("not an exception class name: {kind:?}")));
            }
            Err(Exception::new(kind, message).into())
        })
        .method("make_counter(start)", |start: Option<i64>| {
            Ok(counter_class().instance(Counter { value: AtomicI64::new(start.unwrap_or(0)) }))
        })
        .method("live_objects()", |ctx: Ctx| Ok(ctx.live_objects()))
        .method("subscribe(callback, count)", |callback: Netref, count: i64| {
            if !(0..=MAX_EVENTS).contains(&count) {
                return Err(Error::value_error(format!("count must be between 0 and {MAX_EVENTS}")));
            }
            tokio::spawn(async move {
                for i in 0..count {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    if let Err(e) = callback.call((i,)).await {
                        tracing::debug!(error = %e, "subscriber callback failed; stopping events");
                        break;
                    }
                }
            });
            Ok(())
        })
        .method("numbers(n)", |n: i64| {
            if !(0..=1_000_000).contains(&n) {
                return Err(Error::value_error("n must be between 0 and 1000000"));
            }
            Ok(list_of_values((0..n).map(Value::from)))
        })
        .method("info()", || {
            Ok(dict(vec![
                (Value::from("name"), Object::Value(Value::from("conformance"))),
                (Value::from("version"), Object::Value(Value::from(1))),
            ]))
        })
        .method("whoami()", |ctx: Ctx| Ok(ctx.credentials().identity.clone()))
        .method("get_obj()", || Ok(probe_class().instance(Probe)))
        .plain_attr("_private", |_| "root secret")
        .plain_method("secret()", || Ok("the root's secret"))
        .build()
}
