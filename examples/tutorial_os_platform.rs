//! Tutorial 10: the server's `os` and `sys` — where is it, what is it?
//!
//! ```text
//! cargo run --example tutorial_os_platform
//! cargo run --example tutorial_os_platform -- --connect 127.0.0.1:18812
//! ```
//!
//! Python:
//!
//! ```python
//! c.modules.os.getcwd()
//! c.modules.sys.platform
//! ```

#[path = "support/tutorial.rs"]
mod tutorial;

use rpyc::blocking::Classic;

fn main() -> rpyc::Result<()> {
    let server = tutorial::server();
    let c = Classic::connect(server.addr())?;

    let os = c.module("os")?;
    let sys = c.module("sys")?;
    let cwd: String = os.call_method("getcwd", ())?;
    let platform: String = sys.getattr("platform")?.extract()?;
    let version: String = sys.getattr("version")?.extract()?;
    println!("remote os.getcwd() = {cwd}");
    println!("remote sys.platform = {platform}");
    println!("remote sys.version = {}", version.lines().next().unwrap_or_default());
    println!("remote pid = {}", os.call_method::<i64>("getpid", ())?);
    c.close()
}
