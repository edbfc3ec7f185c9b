//! Interop with the real Python rpyc, both directions and both versions:
//! Python clients against the Rust CONFORMANCE server, Rust clients against
//! Python service and classic servers, and brine byte-for-byte.

// Tests may unwrap: a failure should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod brine_corpus;
mod edges;
mod policy_parity;
mod python_clients;
mod python_servers;
