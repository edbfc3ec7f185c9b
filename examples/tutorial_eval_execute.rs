//! Tutorial 4: `execute` and `eval` in the server's namespace.
//!
//! ```text
//! cargo run --example tutorial_eval_execute
//! cargo run --example tutorial_eval_execute -- --connect 127.0.0.1:18812
//! ```
//!
//! Python:
//!
//! ```python
//! c.execute("import math")
//! c.eval("2*math.pi")
//! ```
//!
//! Plain values (numbers, strings, tuples…) come back by value and convert
//! to Rust types; everything else comes back as a proxy.

#[path = "support/tutorial.rs"]
mod tutorial;

use rpyc::blocking::Classic;

fn main() -> rpyc::Result<()> {
    let server = tutorial::server();
    let c = Classic::connect(server.addr())?;

    c.execute("import math")?;
    let tau: f64 = c.eval_as("2*math.pi")?;
    println!("2*math.pi = {tau}");

    // What execute defined lives on in the namespace.
    c.execute("x = 6 * 7")?;
    let x: i64 = c.namespace()?.getitem("x")?.extract()?;
    println!("namespace['x'] = {x}");

    // A non-value result is a proxy.
    let squares = c.eval("[i * i for i in range(5)]")?.into_netref()?;
    println!("eval of a list gives a remote {} with len {}", squares.class_name(), squares.len()?);
    let items: Vec<i64> = squares.get()?;
    println!("its items: {items:?}");
    c.close()
}
