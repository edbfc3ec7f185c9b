//! Tutorial 2: modules by dotted name — `modules["xml.dom.minidom"]`.
//!
//! ```text
//! cargo run --example tutorial_minidom
//! cargo run --example tutorial_minidom -- --connect 127.0.0.1:18812
//! ```
//!
//! Python:
//!
//! ```python
//! minidom = c.modules["xml.dom.minidom"]
//! doc = minidom.parseString("<greeting>hello</greeting>")
//! doc.toxml()
//! ```
//!
//! `module("xml.dom.minidom")` imports the module on the server (its
//! `getmodule`), and every object it returns stays there: `doc` is a proxy,
//! and `toxml()` runs remotely.

#[path = "support/tutorial.rs"]
mod tutorial;

use rpyc::blocking::Classic;

fn main() -> rpyc::Result<()> {
    let server = tutorial::server();
    let c = Classic::connect(server.addr())?;

    let minidom = c.module("xml.dom.minidom")?;
    let name: String = minidom.getattr("__name__")?.extract()?;
    println!("imported {name} on the server");

    let doc = minidom.callattr("parseString", ("<greeting>hello</greeting>",))?.into_netref()?;
    println!("doc is a remote {}", doc.class_name());
    let xml: String = doc.call_method("toxml", ())?;
    println!("doc.toxml() = {xml}");
    let root = doc.getattr("documentElement")?.into_netref()?;
    let tag: String = root.getattr("tagName")?.extract()?;
    println!("doc.documentElement.tagName = {tag}");
    c.close()
}
