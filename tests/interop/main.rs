//! Interop with the real Python rpyc, both directions and both versions:
//! Python clients against the Rust CONFORMANCE server, Rust clients against
//! Python service and classic servers, and brine byte-for-byte.

#[path = "../common/mod.rs"]
mod common;

mod brine_corpus;
mod policy_parity;
mod python_clients;
mod python_servers;
