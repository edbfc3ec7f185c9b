//! Tutorial 6: a remote `map` that calls back into a local closure — with
//! the async API.
//!
//! ```text
//! cargo run --example tutorial_callback_map
//! cargo run --example tutorial_callback_map -- --connect 127.0.0.1:18812
//! ```
//!
//! Python:
//!
//! ```python
//! def square(x):
//!     print("executing locally")
//!     return x * x
//! list(c.builtins.map(square, range(5)))
//! ```
//!
//! `map` runs on the server; for each item it calls `square`, which is a
//! proxy of our closure, so each call crosses back to this process.

#[path = "support/tutorial.rs"]
mod tutorial;

use rpyc::classic::Classic;
use rpyc::Object;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[tokio::main]
async fn main() -> rpyc::Result<()> {
    let server = tutorial::server();
    let c = Classic::connect(server.addr()).await?;

    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let square = Object::function(move |x: i64| {
        println!("executing locally: square({x})");
        counter.fetch_add(1, Ordering::SeqCst);
        Ok(x * x)
    });

    let items: Vec<i64> = (0..5).collect();
    let mapped = c.builtins().await?.callattr("map", (square, items)).await?.into_netref()?;
    println!("map is lazy: no call yet ({} so far)", calls.load(Ordering::SeqCst));
    let squares: Vec<i64> = mapped.get().await?;
    println!("list(map(square, range(5))) = {squares:?}");
    println!("the callback ran locally {} times", calls.load(Ordering::SeqCst));
    c.close().await;
    Ok(())
}
