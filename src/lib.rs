//! # rpyc — RPyC (Remote Python Call) for Rust
//!
//! A native implementation of [RPyC](https://rpyc.readthedocs.io) that speaks
//! its wire protocol byte for byte: an unmodified Python `rpyc` 6.x (or 5.x)
//! client can call services served from Rust, and Rust programs can drive
//! Python `rpyc` servers.
//!
//! ```no_run
//! use rpyc::{Server, ServerConfig, Service};
//!
//! # async fn demo() -> rpyc::Result<()> {
//! // Serve:
//! let svc = Service::builder("calculator", || ())
//!     .method("add(x, y)", |x: i64, y: i64| Ok(x + y))
//!     .build();
//! let server = Server::new(svc, ServerConfig::default()).bind_tcp("127.0.0.1:18861").await?;
//! let stop = server.spawn();
//!
//! // Call (Python: `rpyc.connect("127.0.0.1", 18861).root.add(5, 10)`):
//! let conn = rpyc::connect("127.0.0.1:18861").await?;
//! let sum: i64 = conn.root().await?.call_method("add", (5, 10)).await?;
//! assert_eq!(sum, 15);
//! stop.shutdown();
//! # Ok(()) }
//! ```
//!
//! Driving a Python classic server (`rpyc_classic`), script style, without
//! `async` (Python: `c = rpyc.classic.connect("localhost")`):
//!
//! ```no_run
//! # fn demo() -> rpyc::Result<()> {
//! let c = rpyc::blocking::Classic::connect("localhost:18812")?;
//! c.execute("import math")?;
//! let tau: f64 = c.eval_as("2*math.pi")?;
//! let cwd: String = c.module("os")?.call_method("getcwd", ())?;
//! # let _ = (tau, cwd); Ok(()) }
//! ```
//!
//! Coming from Python rpyc? `docs/coming-from-python.md` maps each idiom
//! (`conn.root.x`, `rpyc.async_`, `conn.modules.os`, `BgServingThread`,
//! `ThreadedServer`, `ssl_connect`, `ssh_connect`…) to its counterpart here;
//! [`classic`] has the classic-mode helpers (upload, download, remote files,
//! redirected stdio, teleport) and [`blocking`] the synchronous facade.
//!
//! The crate is layered from bytes upward; each module's docs say which
//! Python file it mirrors:
//!
//! | layer | modules |
//! |---|---|
//! | values and messages (no I/O) | [`wire`], [`identity`] |
//! | frames and streams | [`channel`], [`transport`], [`certs`] |
//! | access | [`auth`], [`policy`] |
//! | the engine | [`connection`] |
//! | faces | [`service`], [`client`] |
//! | applications | [`server`], [`classic`], [`registry`], [`deploy`] (a Python server started over SSH, zero-deploy) |
//! | tools | [`blocking`] (a synchronous facade), [`gateway`] (a protocol-aware TLS/SSH gateway in front of existing servers) |

#![forbid(unsafe_code)]

pub mod auth;
pub mod blocking;
pub mod certs;
pub mod channel;
pub mod classic;
pub mod client;
pub mod conformance;
pub mod connection;
pub mod deploy;
mod error;
pub mod gateway;
pub mod identity;
pub mod policy;
pub mod registry;
pub mod server;
pub mod service;
pub mod transport;
pub mod wire;

pub use client::{connect, connect_command, connect_stream, ClientBuilder};
pub use connection::builtin as objects;
pub use connection::{
    Args, AsyncResult, Class, Connection, ConnectionConfig, Ctx, IntoObject, Kwargs, Netref, Object, SelfObject, This,
};
pub use error::{Error, Result};
pub use identity::Credentials;
pub use policy::AccessPolicy;
pub use server::{Server, ServerConfig};
pub use service::{Service, ServiceBuilder};
pub use wire::{Dialect, Exception, Value};

/// The Rust code in SECURITY.md compiles (checked as doc tests).
#[cfg(doctest)]
#[doc = include_str!("../SECURITY.md")]
struct SecurityRecipe;
