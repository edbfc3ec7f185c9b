//! Tutorial 5: "teleporting" a function — defined here, run there.
//!
//! ```text
//! cargo run --example tutorial_teleport
//! cargo run --example tutorial_teleport -- --connect 127.0.0.1:18812
//! ```
//!
//! Python:
//!
//! ```python
//! def square(x):
//!     return x ** 2
//! fn = rpyc.classic.teleport_function(c, square)
//! fn(2)
//! ```
//!
//! Python ships the function's bytecode; from Rust we ship its source, which
//! works whatever the server's Python version is.

#[path = "support/tutorial.rs"]
mod tutorial;

use rpyc::blocking::Classic;

const SQUARE: &str = r#"
    def square(x):
        return x ** 2
"#;

const WHERE_AM_I: &str = r#"
    def where_am_i():
        import os
        return os.getpid()
"#;

fn main() -> rpyc::Result<()> {
    let server = tutorial::server();
    let c = Classic::connect(server.addr())?;

    let square = c.teleport(SQUARE, "square")?;
    for x in [2, 3, 12] {
        let y: i64 = square.call((x,))?.extract()?;
        println!("square({x}) = {y}");
    }
    // Python integers are unbounded: so are the results.
    let big = square.call((1u64 << 40,))?;
    println!("square(2**40) = {}", big.as_value().map(|v| v.repr()).unwrap_or_default());

    let where_am_i = c.teleport(WHERE_AM_I, "where_am_i")?;
    let pid: u32 = where_am_i.call(())?.extract()?;
    println!("teleported code runs in the server process: {}", pid != std::process::id());
    c.close()
}
