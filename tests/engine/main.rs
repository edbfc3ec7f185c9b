//! The engine, Rust to Rust: calls, callbacks, concurrency, timeouts,
//! reference counting, async results — and hostile peers speaking raw bytes.

// Tests may unwrap: a failure should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod calls;
mod examples;
mod hostile;
mod raw;
