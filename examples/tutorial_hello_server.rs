//! Tutorial 3: output on the server, and the server's output here.
//!
//! ```text
//! cargo run --example tutorial_hello_server
//! cargo run --example tutorial_hello_server -- --connect 127.0.0.1:18812   # watch the server's terminal
//! ```
//!
//! Python:
//!
//! ```python
//! print("hello world", file=c.modules.sys.stdout)   # appears on the server
//! with rpyc.classic.redirected_stdio(c):
//!     c.execute("print('hello from the server, printed here')")   # appears here
//! ```
//!
//! The first call passes the server's own `sys.stdout` back to it as a
//! keyword argument of the remote `print`. The second replaces the server's
//! `sys.stdout`/`sys.stderr` with proxies of local objects until the guard
//! is restored.

#[path = "support/tutorial.rs"]
mod tutorial;

use rpyc::blocking::Classic;
use rpyc::Kwargs;
use std::time::Duration;

fn main() -> rpyc::Result<()> {
    let server = tutorial::server();
    let c = Classic::connect(server.addr())?;

    let stdout = c.module("sys")?.getattr("stdout")?;
    c.builtins()?.callattr_kw("print", ("hello world",), Kwargs::new().arg("file", stdout).arg("flush", true))?;
    if server.started_here() {
        match server.wait_stdout("hello world", Duration::from_secs(10)) {
            Some(line) => println!("the server printed on its stdout: {line}"),
            None => println!("the server did not print \"hello world\" (unexpected)"),
        }
    } else {
        println!("look at the server's terminal: it printed \"hello world\"");
    }

    let redirect = c.redirect_stdio()?;
    c.execute("print('hello from the server, printed here')")?;
    c.execute("import sys; print('and its stderr too', file=sys.stderr)")?;
    redirect.restore()?;
    println!("stdio restored");
    c.close()
}
