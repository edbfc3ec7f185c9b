//! Tutorial 8: a remote exception through `rpyc.async_`.
//!
//! ```text
//! cargo run --example tutorial_async_error
//! cargo run --example tutorial_async_error -- --connect 127.0.0.1:18812
//! ```
//!
//! Python:
//!
//! ```python
//! aint = rpyc.async_(c.builtins.int)
//! x = aint("this is not a valid number")
//! x.error        # True
//! x.value        # raises ValueError, with the remote traceback
//! ```
//!
//! The error is data: the Python class, its message and the remote
//! traceback are all there to inspect.

#[path = "support/tutorial.rs"]
mod tutorial;

use rpyc::blocking::Classic;

fn main() -> rpyc::Result<()> {
    let server = tutorial::server();
    let c = Classic::connect(server.addr())?;

    let int = c.builtins()?.getattr("int")?.into_netref()?;
    let x = int.async_call(("this is not a valid number",))?;
    x.wait()?;
    println!("ready: {}, error: {}", x.ready(), x.error());
    match x.value() {
        Ok(v) => println!("unexpected value {v:?}"),
        Err(e) => match e.exception() {
            Some(exc) => {
                println!("raised {}: {}", exc.qualified_name(), exc.message());
                println!("is a ValueError: {}", e.is_exception("ValueError"));
                println!("remote traceback:\n{}", exc.traceback.trim_end());
            }
            None => println!("unexpected error: {e}"),
        },
    }

    // The same exception, synchronously.
    match int.call(("this is not a valid number",)) {
        Err(e) => println!("synchronously: {}", e.exception().map(|x| x.qualified_name()).unwrap_or_default()),
        Ok(v) => println!("unexpected value {v:?}"),
    }
    c.close()
}
