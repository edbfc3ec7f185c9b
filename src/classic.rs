//! Layer 5: driving a Python classic-mode server (`rpyc_classic`, the
//! `SlaveService`) from Rust (mirrors `rpyc/utils/classic.py`).
//!
//! A classic server is remote code execution by design: it imports modules,
//! evaluates and executes Python text on behalf of whoever connects. Use it
//! only with trusted peers, over an authenticated transport.

use crate::connection::{Connection, Netref, Object};
use crate::error::Result;
use crate::client::ClientBuilder;
use crate::wire::Value;

/// A connection to a classic server, with the helpers Python's
/// `rpyc.classic` adds (`modules`, `builtins`, `eval`, `execute`, `teleport`).
#[derive(Clone, Debug)]
pub struct Classic {
    conn: Connection,
    root: Netref,
}

impl Classic {
    /// Connects to a classic server (`host:port`, `tcp://…`, `unix://…`).
    pub async fn connect(addr: &str) -> Result<Classic> {
        Classic::from_connection(ClientBuilder::new().connect(addr).await?).await
    }

    /// Wraps an existing connection to a classic server.
    pub async fn from_connection(conn: Connection) -> Result<Classic> {
        let root = conn.root().await?;
        Ok(Classic { conn, root })
    }

    /// The underlying connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The server's root (its `SlaveService`).
    pub fn root(&self) -> &Netref {
        &self.root
    }

    /// Imports a module by dotted name (`conn.modules["xml.dom.minidom"]`).
    pub async fn module(&self, dotted: &str) -> Result<Netref> {
        self.root.callattr("getmodule", (dotted,)).await?.into_netref()
    }

    /// The remote `builtins` module (`conn.builtins`).
    pub async fn builtins(&self) -> Result<Netref> {
        self.module("builtins").await
    }

    /// Evaluates an expression in the server's namespace (`conn.eval`).
    pub async fn eval(&self, expr: &str) -> Result<Object> {
        self.root.callattr("eval", (expr,)).await
    }

    /// Executes statements in the server's namespace (`conn.execute`).
    pub async fn execute(&self, code: &str) -> Result<()> {
        self.root.callattr("execute", (code,)).await.map(|_| ())
    }

    /// The server's namespace dict (`conn.namespace`).
    pub async fn namespace(&self) -> Result<Netref> {
        self.root.getattr("namespace").await?.into_netref()
    }

    /// "Teleports" a function by source: defines `source` remotely and
    /// returns the function named `name` as a callable proxy.
    pub async fn teleport(&self, source: &str, name: &str) -> Result<Netref> {
        self.execute(source).await?;
        self.eval(name).await?.into_netref()
    }

    /// Convenience: evaluates and converts.
    pub async fn eval_as<T: serde::de::DeserializeOwned>(&self, expr: &str) -> Result<T> {
        self.eval(expr).await?.extract()
    }

    /// A remote `str` value as Rust text (e.g. an attribute).
    pub fn text(obj: &Object) -> Option<&str> {
        match obj.as_value() {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }
}
