//! Driving real Python classic servers (`rpyc_classic`, `SlaveService`)
//! from Rust: the tutorial examples run as programs, the classic helpers
//! (transfers, remote files, redirected stdio, context managers), and the
//! blocking facade under concurrency with server callbacks.

// Helpers outside `#[test]` functions may fail loudly too: this is a test binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod blocking_api;
mod helpers;
mod tutorials;
