//! The engine, Rust to Rust: calls, callbacks, concurrency, timeouts,
//! reference counting, async results — and hostile peers speaking raw bytes.

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod calls;
mod examples;
mod hostile;
mod raw;
