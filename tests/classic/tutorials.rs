//! Each `examples/tutorial_*.rs` built and run against a real Python
//! classic server, its output asserted.

use crate::common::{build_examples, python6, python_server, run_with_timeout, ChildGuard};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const TUTORIALS: &[&str] = &[
    "tutorial_sys_path",
    "tutorial_minidom",
    "tutorial_hello_server",
    "tutorial_eval_execute",
    "tutorial_teleport",
    "tutorial_callback_map",
    "tutorial_async_sleep",
    "tutorial_async_error",
    "tutorial_remote_files",
    "tutorial_os_platform",
];

/// Builds the tutorial examples once and returns the folder holding them.
fn examples_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build_examples(TUTORIALS)).clone()
}

fn classic_server() -> (ChildGuard, String) {
    // Build first: the server has a bounded lifetime, the build may be slow.
    examples_dir();
    let (server, port) = python_server(&python6(), &["--kind", "classic"]);
    (server, format!("127.0.0.1:{port}"))
}

/// Runs an example against `addr`, or (None) lets it start its own
/// `rpyc_classic`; returns its output.
fn run_example(name: &str, addr: Option<&str>) -> String {
    let mut cmd = Command::new(examples_dir().join(name));
    cmd.current_dir(std::env::temp_dir());
    match addr {
        Some(addr) => {
            cmd.args(["--connect", addr]);
        }
        None => {
            let script = python6().parent().map(|d| d.join("rpyc_classic")).expect("python dir");
            assert!(script.exists(), "{} is missing: pip install rpyc==6.0.2 installs it", script.display());
            cmd.env("RPYC_CLASSIC", script);
        }
    }
    let (ok, out) = run_with_timeout(cmd, Duration::from_secs(120));
    assert!(ok, "example {name} failed:\n{out}");
    out
}

fn has_line(out: &str, line: &str) -> bool {
    out.lines().any(|l| l.trim_end() == line)
}

#[test]
fn sys_path_with_a_server_the_example_starts() {
    let out = run_example("tutorial_sys_path", None);
    assert!(out.contains("modules.sys.path is a remote builtins.list of"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("  ") && l.contains("site-packages")), "{out}");
    assert!(out.contains("modules.sys.path[0] = \""), "{out}");
}

#[test]
fn minidom_by_dotted_name() {
    let (_server, addr) = classic_server();
    let out = run_example("tutorial_minidom", Some(&addr));
    assert!(has_line(&out, "imported xml.dom.minidom on the server"), "{out}");
    assert!(has_line(&out, "doc is a remote xml.dom.minidom.Document"), "{out}");
    assert!(has_line(&out, "doc.toxml() = <?xml version=\"1.0\" ?><greeting>hello</greeting>"), "{out}");
    assert!(has_line(&out, "doc.documentElement.tagName = greeting"), "{out}");
}

#[test]
fn hello_world_appears_on_the_server() {
    let (server, addr) = classic_server();
    let out = run_example("tutorial_hello_server", Some(&addr));
    // On the server's own stdout (captured by this test):
    server.wait_line("hello world", Duration::from_secs(10));
    // ... and, while redirected, the server's prints on the example's stdout:
    assert!(has_line(&out, "hello from the server, printed here"), "{out}");
    assert!(has_line(&out, "and its stderr too"), "{out}");
    assert!(has_line(&out, "stdio restored"), "{out}");
}

#[test]
fn hello_world_with_a_server_the_example_starts() {
    let out = run_example("tutorial_hello_server", None);
    assert!(has_line(&out, "the server printed on its stdout: hello world"), "{out}");
    assert!(has_line(&out, "hello from the server, printed here"), "{out}");
}

#[test]
fn execute_then_eval() {
    let (_server, addr) = classic_server();
    let out = run_example("tutorial_eval_execute", Some(&addr));
    // Python's repr(2*math.pi), printed by Rust's shortest round-trip formatting.
    assert!(has_line(&out, "2*math.pi = 6.283185307179586"), "{out}");
    let tau: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("2*math.pi = "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no 2*math.pi line:\n{out}"));
    assert_eq!(tau, std::f64::consts::TAU);
    assert!(has_line(&out, "namespace['x'] = 42"), "{out}");
    assert!(has_line(&out, "eval of a list gives a remote builtins.list with len 5"), "{out}");
    assert!(has_line(&out, "its items: [0, 1, 4, 9, 16]"), "{out}");
}

#[test]
fn teleported_square() {
    let (_server, addr) = classic_server();
    let out = run_example("tutorial_teleport", Some(&addr));
    for line in ["square(2) = 4", "square(3) = 9", "square(12) = 144", "square(2**40) = 1208925819614629174706176"] {
        assert!(has_line(&out, line), "missing {line:?}:\n{out}");
    }
    assert!(has_line(&out, "teleported code runs in the server process: true"), "{out}");
}

#[test]
fn remote_map_calls_back_locally_once_per_item() {
    let (_server, addr) = classic_server();
    let out = run_example("tutorial_callback_map", Some(&addr));
    assert!(has_line(&out, "map is lazy: no call yet (0 so far)"), "{out}");
    let local: Vec<&str> = out.lines().filter(|l| l.starts_with("executing locally")).collect();
    assert_eq!(local, (0..5).map(|i| format!("executing locally: square({i})")).collect::<Vec<_>>(), "{out}");
    assert!(has_line(&out, "list(map(square, range(5))) = [0, 1, 4, 9, 16]"), "{out}");
    assert!(has_line(&out, "the callback ran locally 5 times"), "{out}");
}

#[test]
fn async_sleep_ready_and_value() {
    let (_server, addr) = classic_server();
    let out = run_example("tutorial_async_sleep", Some(&addr));
    for line in [
        "ready right after the call: false",
        "ready after wait(): true",
        "error: false",
        "value is None: true",
        "took at least 1 s: true",
        "with a 100 ms expiry: value is an error: true",
        "expired: true",
    ] {
        assert!(has_line(&out, line), "missing {line:?}:\n{out}");
    }
}

#[test]
fn async_int_raises_value_error() {
    let (_server, addr) = classic_server();
    let out = run_example("tutorial_async_error", Some(&addr));
    assert!(has_line(&out, "ready: true, error: true"), "{out}");
    assert!(
        has_line(&out, "raised ValueError: invalid literal for int() with base 10: 'this is not a valid number'"),
        "{out}"
    );
    assert!(has_line(&out, "is a ValueError: true"), "{out}");
    assert!(has_line(&out, "remote traceback:"), "{out}");
    assert!(out.contains("Traceback (most recent call last):"), "{out}");
    assert!(has_line(&out, "synchronously: ValueError"), "{out}");
}

#[test]
fn remote_file_operations() {
    let (_server, addr) = classic_server();
    let out = run_example("tutorial_remote_files", Some(&addr));
    for line in [
        "exists before: false",
        "exists after: true",
        "read back: \"Tofu is tasty\\n\"",
        "uploaded 1 file(s), 3000000 bytes",
        "downloaded 1 file(s), 3000000 bytes",
        "round trip identical: true",
    ] {
        assert!(has_line(&out, line), "missing {line:?}:\n{out}");
    }
}

#[test]
fn getcwd_and_platform() {
    let (_server, addr) = classic_server();
    let out = run_example("tutorial_os_platform", Some(&addr));
    // run_server.py runs in the test's working directory: the crate root.
    let cwd = std::env::current_dir().expect("cwd").canonicalize().expect("canonical cwd");
    assert!(has_line(&out, &format!("remote os.getcwd() = {}", cwd.display())), "{out}");
    let platform = match std::env::consts::OS {
        "macos" => "darwin",
        "windows" => "win32",
        other => other,
    };
    assert!(has_line(&out, &format!("remote sys.platform = {platform}")), "{out}");
    assert!(out.contains("remote sys.version = 3."), "{out}");
}
