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
//! | frames and streams | [`channel`], [`transport`], `certs` |
//! | access | [`auth`], [`policy`] |
//! | the engine | [`connection`] |
//! | faces | [`service`], [`client`] |
//! | applications | [`server`], [`classic`], [`registry`], `deploy` (a Python server started over SSH, zero-deploy) |
//! | tools | [`blocking`] (a synchronous facade), `gateway` (a protocol-aware TLS/SSH gateway in front of existing servers) |
//!
//! # Features
//!
//! The default features build everything, the `rpyc` tool included. A
//! program that only talks RPyC over TCP or Unix sockets can leave them out
//! (`rpyc = { version = "0.1", default-features = false }`): the core —
//! wire, channel, TCP/Unix/pipe transports, challenge–response
//! authentication, policies, the engine, client, server, classic, registry
//! and the blocking facade — needs no TLS, SSH, DNS or CLI crate. Add back
//! what you use:
//!
//! | feature | enables | pulls in |
//! |---|---|---|
//! | `tls` | `transport::tls` (`tls://`, `Listener::tls`, `ClientBuilder::tls`), certificate identities, `auth::TlsClientCert` | rustls, tokio-rustls, x509-parser |
//! | `certs` | the `certs` module (a development CA and certificates); implies `tls` | rcgen |
//! | `ssh` | `transport::ssh` (`ssh://` tunnels, the embedded SSH endpoint, exec channels), `auth::SshPublicKey` | russh |
//! | `deploy` | the `deploy` module and `blocking::DeployedServer` (zero-deploy over SSH); implies `ssh` | — |
//! | `srv` | `transport::srv`, `srv://` addresses, `ClientBuilder::dns` | hickory-resolver |
//! | `proxy-protocol` | `transport::proxy`: PROXY v1/v2 headers on TCP and TLS listeners (`with_proxy_protocol`) | ppp |
//! | `toml` | policy files: `PolicySet::from_toml`, `PolicySet::load` | toml |
//! | `gateway` | the `gateway` module; implies `tls`, `ssh`, `srv`, `proxy-protocol`, `toml` | serde_json (audit lines) |
//! | `cli` | the `rpyc` binary; implies `gateway`, `certs`, `deploy` | clap, clap_complete, tracing-subscriber, indicatif |
//!
//! Default: `tls`, `ssh`, `cli` — that is, all of them. An address whose
//! scheme needs a feature the build lacks (`tls://`, `ssh://`, `srv://`)
//! is refused at run time with an [`Error::Transport`] naming the feature;
//! the [`Error`] variants ([`Error::Tls`], [`Error::Ssh`], …) exist in every
//! build.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// The docs link to feature-gated items (`TlsClientCert`, `ClientBuilder::tls`…);
// in a build without those features the links have no target, which is
// expected there. Full builds (docs.rs: all features) check every link.
#![cfg_attr(
    not(all(feature = "gateway", feature = "certs", feature = "deploy")),
    allow(rustdoc::broken_intra_doc_links)
)]

pub mod auth;
pub mod blocking;
#[cfg(feature = "certs")]
#[cfg_attr(docsrs, doc(cfg(feature = "certs")))]
pub mod certs;
pub mod channel;
pub mod classic;
pub mod client;
pub mod conformance;
pub mod connection;
#[cfg(feature = "deploy")]
#[cfg_attr(docsrs, doc(cfg(feature = "deploy")))]
pub mod deploy;
mod error;
#[cfg(feature = "gateway")]
#[cfg_attr(docsrs, doc(cfg(feature = "gateway")))]
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
