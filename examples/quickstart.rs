//! The quickstart: a server and a client in one process, over loopback.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! It serves a small calculator service on 127.0.0.1 (a free port), then
//! connects to it the way a Python `rpyc.connect()` would and prints a few
//! calls: a plain call, keyword arguments, a remote exception with its
//! Python class, a callback from the server into the client, and a remote
//! object reference.

use rpyc::{Exception, Kwargs, Object, Server, ServerConfig, Service};
use std::sync::atomic::{AtomicI64, Ordering};

#[tokio::main]
async fn main() -> rpyc::Result<()> {
    let service = Service::builder("calculator", || AtomicI64::new(0))
        .method("add(x, y)", |x: i64, y: i64| Ok(x + y))
        .method("div(x, y)", |x: f64, y: f64| {
            if y == 0.0 {
                return Err(Exception::zero_division_error("float division by zero").into());
            }
            Ok(x / y)
        })
        .async_method("apply(func, x)", |func: rpyc::Netref, x: i64| async move {
            // Calls back into the client while the client waits for us.
            func.call((x,)).await
        })
        .method("count(n)", |state: rpyc::This<AtomicI64>, n: i64| Ok(state.fetch_add(n, Ordering::SeqCst) + n))
        .method("squares(n)", |n: i64| Ok(rpyc::objects::list_of_values((0..n).map(|i| (i * i).into()))))
        .build();

    let server = Server::new(service, ServerConfig::default()).bind_tcp("127.0.0.1:0").await?;
    let addr = server.local_addrs()[0];
    let stop = server.spawn();
    println!("serving CALCULATOR on {addr}");

    let conn = rpyc::connect(&addr.to_string()).await?;
    let root = conn.root().await?;

    let sum: i64 = root.call_method("add", (5, 10)).await?;
    println!("add(5, 10)               = {sum}");

    let sum: i64 = root.callattr_kw("add", (), Kwargs::new().arg("x", 2).arg("y", 40)).await?.extract()?;
    println!("add(x=2, y=40)           = {sum}");

    match root.callattr("div", (1.0, 0.0)).await {
        Err(e) => println!("div(1, 0)                raised {}", e.exception().map(|x| x.qualified_name()).unwrap_or_default()),
        Ok(v) => println!("div(1, 0)                = {v:?} (unexpected)"),
    }

    let triple = Object::function(|x: i64| Ok(3 * x));
    let r: i64 = root.callattr("apply", (triple, 14)).await?.extract()?;
    println!("apply(lambda x: 3*x, 14) = {r}  (the server called back into the client)");

    root.callattr("count", (5,)).await?;
    let total: i64 = root.call_method("count", (2,)).await?;
    println!("count(5); count(2)       = {total}  (per-connection state)");

    let squares = root.callattr("squares", (6,)).await?.into_netref()?;
    println!(
        "squares(6)               = {:?}  (a remote list: len {}, [-1] = {})",
        squares.get::<i64>().await?,
        squares.len().await?,
        squares.getitem(-1).await?.extract::<i64>()?
    );

    println!("ping                     = {:?}", conn.ping().await?);
    conn.close().await;
    stop.shutdown();
    Ok(())
}

