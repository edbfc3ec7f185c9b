//! Tutorial 1: connect to a classic server and read `modules.sys.path`.
//!
//! ```text
//! cargo run --example tutorial_sys_path                          # starts rpyc_classic itself
//! cargo run --example tutorial_sys_path -- --connect 127.0.0.1:18812
//! ```
//!
//! Python:
//!
//! ```python
//! import rpyc
//! c = rpyc.classic.connect("localhost")
//! c.modules.sys.path
//! ```
//!
//! A script-style program: the blocking API, no `async` anywhere. The list
//! lives on the server; `get()` copies its items (a remote list crosses by
//! reference, so they are fetched in batches) into a `Vec<String>`.

#[path = "support/tutorial.rs"]
mod tutorial;

use rpyc::blocking::Classic;

fn main() -> rpyc::Result<()> {
    let server = tutorial::server();
    let c = Classic::connect(server.addr())?;

    let sys_path = c.module("sys")?.getattr("path")?.into_netref()?;
    println!("modules.sys.path is a remote {} of {} entries:", sys_path.class_name(), sys_path.len()?);
    let path: Vec<String> = sys_path.get()?;
    for entry in &path {
        println!("  {entry}");
    }
    // Indexing works on the proxy too.
    let first: String = sys_path.getitem(0)?.extract()?;
    println!("modules.sys.path[0] = {first:?}");
    c.close()
}
