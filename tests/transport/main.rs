//! Transport integration tests: TLS (rustls), SSH (russh) and DNS SRV
//! discovery (hickory), against the real Python rpyc, a real OpenSSH server
//! and a real DNS server; zero-deploy (`rpyc::deploy`) of a Python server
//! through that sshd.

// Tests may unwrap: a failure should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod deploy;
mod srv;
mod ssh;
mod tls;
