//! Tutorial 7: `rpyc.async_` — start a remote call, do something else,
//! collect the result later.
//!
//! ```text
//! cargo run --example tutorial_async_sleep
//! cargo run --example tutorial_async_sleep -- --connect 127.0.0.1:18812
//! ```
//!
//! Python:
//!
//! ```python
//! asleep = rpyc.async_(c.modules.time.sleep)
//! res = asleep(1)
//! res.ready      # False
//! res.wait()
//! res.ready      # True
//! res.value      # None
//! ```

#[path = "support/tutorial.rs"]
mod tutorial;

use rpyc::blocking::Classic;
use std::time::{Duration, Instant};

fn main() -> rpyc::Result<()> {
    let server = tutorial::server();
    let c = Classic::connect(server.addr())?;

    let sleep = c.module("time")?.getattr("sleep")?.into_netref()?;
    let started = Instant::now();
    let res = sleep.async_call((1,))?;
    println!("ready right after the call: {}", res.ready());
    println!("{res:?}");

    res.wait()?;
    println!("ready after wait(): {}", res.ready());
    println!("error: {}", res.error());
    println!("value is None: {}", res.value()?.is_none());
    println!("took at least 1 s: {}", started.elapsed() >= Duration::from_secs(1));

    // An expiry turns a slow call into a timeout, as Python's set_expiry does.
    let res = sleep.async_call((2,))?;
    res.set_expiry(Some(Duration::from_millis(100)));
    println!("with a 100 ms expiry: value is an error: {}", res.value().is_err());
    println!("expired: {}", res.expired());
    c.close()
}
