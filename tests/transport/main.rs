//! Transport integration tests: TLS (rustls) and SSH (russh), against the
//! real Python rpyc and a real OpenSSH server.

#[path = "../common/mod.rs"]
mod common;

mod ssh;
mod tls;
