//! `rpyc ping` and `rpyc call`: one server, any transport.

use super::support::{print_json, runtime, usage, ConnectArgs, JsonValue};
use super::CmdResult;
use clap::Args;
use rpyc::wire::literal;
use rpyc::{Connection, Kwargs, Object, Value};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct PingArgs {
    /// The server: tcp://host:port (or host:port), unix:///path,
    /// tls://host:port (with --ca), ssh://user@sshhost[:port]/host:port,
    /// srv://_service._proto.domain (DNS SRV; --dns names the DNS server).
    #[arg(value_name = "ADDR")]
    pub addr: String,
    /// How many pings to send over the one connection.
    #[arg(long, short = 'c', value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub count: u32,
    /// Print {"addr", "connect_ms", "rtt_ms": [...]} as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Args, Debug)]
pub struct CallArgs {
    /// The server: tcp://host:port (or host:port), unix:///path,
    /// tls://host:port (with --ca), ssh://user@sshhost[:port]/host:port,
    /// srv://_service._proto.domain (DNS SRV; --dns names the DNS server).
    #[arg(value_name = "ADDR")]
    pub addr: String,
    /// The method of the server's root object (Python's conn.root.METHOD);
    /// dots reach attributes first, e.g. service.method.
    #[arg(value_name = "METHOD")]
    pub method: String,
    /// Arguments as Python literals: 42, -1.5, 'text', b'bytes', (1, 2),
    /// None, True. NAME=LITERAL passes a keyword argument. Quote them for
    /// the shell: rpyc call ADDR echo "'hello'". Put -- before them if one
    /// starts with '-' and is not a plain number (-inf, -2j).
    #[arg(value_name = "ARGS", allow_negative_numbers = true)]
    pub args: Vec<String>,
    /// Print {"ok", "type", "repr", "value"} (or {"ok": false, "error": ...}) as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Milliseconds rounded to microseconds, for JSON.
fn millis3(d: Duration) -> f64 {
    (millis(d) * 1000.0).round() / 1000.0
}

pub fn run_ping(args: &PingArgs) -> CmdResult {
    args.connect.endpoint(&args.addr)?; // usage errors before the runtime starts
    runtime()?.block_on(ping(args))
}

async fn ping(args: &PingArgs) -> CmdResult {
    let start = Instant::now();
    let conn = args.connect.connect(&args.addr).await?;
    let connect_time = start.elapsed();
    super::support::notice(
        tracing::Level::INFO,
        format_args!("connected to {} in {:.3} ms", args.addr, millis(connect_time)),
    );
    let mut rtts = Vec::new();
    let mut result = Ok(());
    for _ in 0..args.count {
        match conn.ping().await {
            Ok(rtt) => {
                if !args.json {
                    println!("pong from {}: time={:.3} ms", args.addr, millis(rtt));
                }
                rtts.push(rtt);
            }
            Err(e) => {
                result = Err(format!("ping {} failed: {e}", args.addr).into());
                break;
            }
        }
    }
    conn.close().await;
    if args.json {
        #[derive(serde::Serialize)]
        struct Pings<'a> {
            addr: &'a str,
            connect_ms: f64,
            rtt_ms: Vec<f64>,
        }
        print_json(&Pings {
            addr: &args.addr,
            connect_ms: millis3(connect_time),
            rtt_ms: rtts.iter().map(|d| millis3(*d)).collect(),
        });
    }
    result
}

/// Call arguments: positional, then `(name, value)` keywords.
type CallArgsParsed = (Vec<Object>, Vec<(String, Object)>);

/// Positional and keyword arguments parsed from the command line.
fn parse_args(raw: &[String]) -> Result<CallArgsParsed, Box<dyn std::error::Error>> {
    let mut positional = Vec::new();
    let mut keywords: Vec<(String, Object)> = Vec::new();
    for (n, text) in raw.iter().enumerate() {
        let (name, literal_text) = match keyword_split(text) {
            Some((k, v)) => (Some(k), v),
            None => (None, text.as_str()),
        };
        let value = literal::parse(literal_text).map_err(|e| {
            let what = match name {
                Some(k) => format!("keyword argument {k}"),
                None => format!("argument {}", n + 1),
            };
            let caret: String = e.caret(literal_text).lines().map(|l| format!("\n    {l}")).collect();
            usage(format!("{what} is not a Python literal: {e}{caret}"))
        })?;
        match name {
            Some(k) => {
                if keywords.iter().any(|(seen, _)| seen == k) {
                    return Err(usage(format!("keyword argument {k} is given twice")));
                }
                keywords.push((k.to_string(), Object::Value(value)));
            }
            None if !keywords.is_empty() => {
                return Err(usage(format!("argument {} ({text}) is positional but follows a keyword argument", n + 1)))
            }
            None => positional.push(Object::Value(value)),
        }
    }
    Ok((positional, keywords))
}

/// `name=literal` when `name` is an identifier (a literal never looks like that).
fn keyword_split(text: &str) -> Option<(&str, &str)> {
    let (k, v) = text.split_once('=')?;
    let mut chars = k.chars();
    let first = chars.next()?;
    if (first.is_alphabetic() || first == '_') && chars.all(|c| c.is_alphanumeric() || c == '_') {
        Some((k, v))
    } else {
        None
    }
}

pub fn run_call(args: &CallArgs) -> CmdResult {
    args.connect.endpoint(&args.addr)?;
    if args.method.is_empty() || args.method.split('.').any(str::is_empty) {
        return Err(usage(format!("{:?} is not a method name", args.method)));
    }
    let (positional, keywords) = parse_args(&args.args)?;
    runtime()?.block_on(call(args, positional, keywords))
}

async fn call(args: &CallArgs, positional: Vec<Object>, keywords: Vec<(String, Object)>) -> CmdResult {
    let conn = args.connect.connect(&args.addr).await?;
    let outcome = invoke(&conn, &args.method, positional, keywords).await;
    let shown = match outcome {
        Ok(obj) => Ok((obj.describe(), show(obj).await)),
        Err(e) => Err(e),
    };
    conn.close().await;
    print_outcome(args.json, &args.method, shown)
}

/// Prints a call's result as `rpyc call` does (the repr, or JSON) and turns
/// a failure into the command's error.
pub fn print_outcome(json: bool, what: &str, shown: rpyc::Result<(String, (String, Option<Value>))>) -> CmdResult {
    #[derive(serde::Serialize)]
    struct Success<'a> {
        ok: bool,
        #[serde(rename = "type")]
        type_name: &'a str,
        repr: &'a str,
        value: Option<JsonValue<'a>>,
    }
    #[derive(serde::Serialize)]
    struct Failure<'a> {
        ok: bool,
        error: Raised<'a>,
    }
    #[derive(serde::Serialize)]
    struct Raised<'a> {
        #[serde(rename = "type")]
        type_name: Option<&'a str>,
        message: &'a str,
        traceback: &'a str,
    }
    match shown {
        Ok((type_name, (repr, value))) => {
            if json {
                print_json(&Success {
                    ok: true,
                    type_name: &type_name,
                    repr: &repr,
                    value: value.as_ref().map(JsonValue),
                });
            } else {
                println!("{repr}");
            }
            Ok(())
        }
        Err(rpyc::Error::Exception(exc)) => {
            if json {
                let (name, message) = (exc.qualified_name(), exc.message());
                print_json(&Failure {
                    ok: false,
                    error: Raised { type_name: Some(&name), message: &message, traceback: &exc.traceback },
                });
            }
            Err(format!("{what} raised {exc}").into())
        }
        Err(e) => {
            if json {
                let message = super::support::for_cli(&e.to_string());
                print_json(&Failure { ok: false, error: Raised { type_name: None, message: &message, traceback: "" } });
            }
            Err(format!("calling {what} failed: {e}").into())
        }
    }
}

async fn invoke(
    conn: &Connection,
    method: &str,
    positional: Vec<Object>,
    keywords: Vec<(String, Object)>,
) -> rpyc::Result<Object> {
    let mut target = conn.root().await?;
    let mut parts: Vec<&str> = method.split('.').collect();
    let last = parts.pop().unwrap_or(method);
    for attr in parts {
        target = target.getattr(attr).await?.into_netref()?;
    }
    if keywords.is_empty() {
        target.callattr(last, positional).await
    } else {
        target.callattr_kw(last, positional, Kwargs(keywords)).await
    }
}

/// The Python repr of a result, and the value if it is one (references are
/// shown by asking the server for their repr).
pub fn show(obj: Object) -> Pin<Box<dyn Future<Output = (String, Option<Value>)> + Send>> {
    Box::pin(async move {
        match obj.into_value() {
            Ok(v) => (v.repr(), Some(v)),
            Err(Object::Remote(n)) => match n.repr().await {
                Ok(r) => (r, None),
                Err(e) => (format!("<remote {} (repr failed: {e})>", n.class_name()), None),
            },
            Err(Object::Tuple(items)) => {
                let mut parts = Vec::with_capacity(items.len());
                for item in items {
                    parts.push(show(item).await.0);
                }
                let comma = if parts.len() == 1 { "," } else { "" };
                (format!("({}{comma})", parts.join(", ")), None)
            }
            Err(other) => (format!("<{}>", other.describe()), None),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_identifiers() {
        assert_eq!(keyword_split("x=1"), Some(("x", "1")));
        assert_eq!(keyword_split("_a1='='"), Some(("_a1", "'='")));
        assert_eq!(keyword_split("'a=b'"), None);
        assert_eq!(keyword_split("=1"), None);
        assert!(parse_args(&["x=1".into(), "2".into()]).is_err());
        assert!(parse_args(&["x=1".into(), "x=2".into()]).is_err());
        let (p, k) = parse_args(&["1".into(), "'a'".into(), "y=None".into()]).unwrap();
        assert_eq!((p.len(), k.len()), (2, 1));
    }
}
