//! The README's first command: the quickstart example runs and shows the
//! secured path (allowed call, callback, denied call, refused connection).

use std::process::Command;
use std::time::Duration;

/// An example binary built by `cargo test --all-targets` (or `cargo build --examples`).
pub fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target profile dir");
    let path = dir.join("examples").join(name);
    assert!(path.exists(), "{} is not built: run `cargo test --all-targets` (or `cargo build --examples`)", path.display());
    path
}

#[test]
fn quickstart_shows_the_secured_path() {
    let (ok, out) = crate::common::run_with_timeout(Command::new(example("quickstart")), Duration::from_secs(60));
    assert!(ok, "{out}");
    for expected in [
        "serving CALCULATOR over mutual TLS",
        "as alice:",
        "add(5, 10)                 = 15",
        "apply(lambda x: 3*x, 14)   = 42",
        "report().internal_notes    = \"draft by alice\"",
        "raised ZeroDivisionError: float division by zero",
        "as bob:",
        "raised AttributeError: cannot access 'internal_notes'",
        "without a client certificate:",
        "refused:",
        "requires a client certificate",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}
