//! Transport integration tests: TLS (rustls) and SSH (russh), against the
//! real Python rpyc and a real OpenSSH server.

// Tests may unwrap: a failure should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod ssh;
mod tls;
