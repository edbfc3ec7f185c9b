//! Transport integration tests: TLS (rustls) and SSH (russh), against the
//! real Python rpyc and a real OpenSSH server; zero-deploy (`rpyc::deploy`)
//! of a Python server through that sshd.

// Tests may unwrap: a failure should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod deploy;
mod ssh;
mod tls;
