//! `rpyc upload` and `rpyc download` against a real Python classic server
//! (rpyc 6.0.2): byte-identical round trips of files and directories,
//! `--json` progress lines, the errors a user meets; and `--log-format
//! json`, which makes every line on stderr a JSON log record.

use crate::commands::{fails, ok, rpyc, run};
use crate::common::{noise, python6, python_server, ChildGuard};
use serde_json::Value as Json;
use std::path::Path;

fn classic_server() -> (ChildGuard, String) {
    let (server, port) = python_server(&python6(), &["--kind", "classic"]);
    (server, format!("127.0.0.1:{port}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Parses `--json` output: every line is a JSON object; progress and file
/// lines have growing byte counts; the last line is the summary. Returns
/// the progress/file lines and the summary.
fn json_lines(stdout: &str, direction: &str, size: u64) -> (Vec<Json>, Json) {
    let mut lines: Vec<Json> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{stdout}")))
        .collect();
    let summary = lines.pop().expect("a summary line");
    assert_eq!(summary["event"], "done", "{summary}");
    assert_eq!(summary["direction"], direction);
    assert_eq!(summary["files"], 1);
    assert_eq!(summary["bytes"], size);
    assert!(summary["seconds"].as_f64().is_some_and(|s| s >= 0.0), "{summary}");
    let mut previous = 0;
    for l in &lines {
        assert_eq!(l["direction"], direction, "{l}");
        assert!(l["event"] == "progress" || l["event"] == "file", "{l}");
        let total = l["total_bytes"].as_u64().unwrap();
        assert!(total >= previous, "byte counts go down: {l} after {previous}\n{stdout}");
        if l["event"] == "progress" {
            assert!(total > previous || previous == 0, "{l}");
        }
        assert_eq!(l["total_size"], size, "{l}");
        assert_eq!(l["files_total"], 1, "{l}");
        previous = total;
    }
    let last = lines.last().expect("progress lines");
    assert_eq!(last["event"], "file", "a finished file always gets its line: {last}");
    assert_eq!((last["file_bytes"].as_u64(), last["total_bytes"].as_u64()), (Some(size), Some(size)), "{last}");
    assert_eq!(last["files_done"], 1);
    assert_eq!(lines.iter().filter(|l| l["event"] == "file").count(), 1, "{stdout}");
    (lines, summary)
}

#[test]
fn upload_then_download_round_trips_with_json_progress() {
    let (_server, addr) = classic_server();
    let dir = tempfile::tempdir().unwrap();
    let size = 3 << 20;
    let data = noise(size, 42);
    let original = dir.path().join("original.bin");
    std::fs::write(&original, &data).unwrap();
    // The server runs on this machine, so its files are ours to inspect.
    let remote = dir.path().join("on-the-server.bin");
    let out = ok(&["upload", &addr, s(&original), s(&remote), "--chunk-size", "64K", "--json"]);
    let (lines, _) = json_lines(&out, "upload", size as u64);
    assert!(lines.len() >= 2, "at least one progress line and the file line:\n{out}");
    assert_eq!(lines[0]["local"], s(&original));
    assert_eq!(lines[0]["remote"], s(&remote));
    assert!(std::fs::read(&remote).unwrap() == data, "uploaded copy differs");

    let back = dir.path().join("back.bin");
    let out = ok(&["download", &addr, s(&remote), s(&back), "--chunk-size", "100000", "--json"]);
    json_lines(&out, "download", size as u64);
    assert!(std::fs::read(&back).unwrap() == data, "downloaded copy differs");

    // Without --json and without a terminal: no bar, a one-line summary.
    let back2 = dir.path().join("back2.bin");
    let r = rpyc().args(["download", &addr, s(&remote), s(&back2), "--no-verify"]).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let stdout = String::from_utf8(r.stdout).unwrap();
    assert!(stdout.starts_with(&format!("downloaded 1 file, {size} bytes (3.00 MiB), ")), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(r.stderr.is_empty(), "no progress bar without a terminal: {}", String::from_utf8_lossy(&r.stderr));
    assert!(std::fs::read(&back2).unwrap() == data);
}

#[test]
fn directories_go_inside_existing_directories() {
    let (_server, addr) = classic_server();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), "a").unwrap();
    std::fs::write(tree.join("sub/b.bin"), noise(150_000, 3)).unwrap();
    let remote_parent = dir.path().join("remote");
    std::fs::create_dir(&remote_parent).unwrap();
    // REMOTE is an existing directory: the tree goes inside it, as with cp -r.
    let out = ok(&["upload", &addr, s(&tree), s(&remote_parent), "--chunk-size", "32K"]);
    assert!(out.starts_with("uploaded 2 files, 150001 bytes"), "{out}");
    assert_eq!(std::fs::read(remote_parent.join("tree/sub/b.bin")).unwrap(), noise(150_000, 3));

    let local_parent = dir.path().join("local");
    std::fs::create_dir(&local_parent).unwrap();
    let out = ok(&["download", &addr, s(&remote_parent.join("tree")), s(&local_parent), "--json"]);
    let lines: Vec<Json> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let done = lines.last().unwrap();
    assert_eq!(
        (done["event"].as_str(), done["files"].as_u64(), done["bytes"].as_u64()),
        (Some("done"), Some(2), Some(150_001))
    );
    assert_eq!(lines.iter().filter(|l| l["event"] == "file").count(), 2, "{out}");
    assert_eq!(std::fs::read(local_parent.join("tree/sub/b.bin")).unwrap(), noise(150_000, 3));
    assert_eq!(std::fs::read_to_string(local_parent.join("tree/a.txt")).unwrap(), "a");
}

#[test]
fn transfer_errors_say_what_to_do() {
    let (_server, addr) = classic_server();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.bin");
    let r = fails(&["upload", &addr, s(&missing), "/tmp/x"], 1, "LOCAL must be an existing file or directory");
    assert!(r.stderr.contains(s(&missing)), "{}", r.stderr);

    let r = fails(
        &["download", &addr, s(&missing), s(&dir.path().join("x"))],
        1,
        "is not a file or directory on the server",
    );
    assert!(r.stderr.contains("check REMOTE"), "{}", r.stderr);
    assert!(!r.stderr.contains("ValueError") && !r.stderr.contains("Traceback"), "{}", r.stderr);
    // With --json the failure is a JSON line too.
    let r = run(&["download", &addr, s(&missing), s(&dir.path().join("x")), "--json"]);
    assert_eq!(r.code, Some(1));
    let line: Json = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(line["event"], "error");
    assert!(line["message"].as_str().unwrap().contains("is not a file or directory on the server"), "{line}");

    // A directory on the server that does not exist.
    let file = dir.path().join("f.txt");
    std::fs::write(&file, "x").unwrap();
    let r =
        fails(&["upload", &addr, s(&file), s(&dir.path().join("no/such/dir/f.txt"))], 1, "upload failed on the server");
    assert!(r.stderr.contains("must exist on the server"), "{}", r.stderr);
    assert!(r.stderr.contains("FileNotFoundError: [Errno 2] No such file or directory: '"), "{}", r.stderr);
    // A local directory that does not exist: said once, nothing left open on the server.
    let r = fails(&["download", &addr, s(&file), s(&dir.path().join("no/such/dir/f.txt"))], 1, "cannot create");
    assert!(!r.stderr.contains("dropped without close"), "{}", r.stderr);

    fails(&["upload", &addr, s(&file), "/tmp/x", "--chunk-size", "0"], 2, "out of range");
    fails(&["upload", &addr, s(&file), "/tmp/x", "--chunk-size", "lots"], 2, "is not a size");
    fails(&["download", "127.0.0.1:abc", "/x", "y"], 2, "invalid port");

    // A server that is not a classic server.
    let (_service, port) = python_server(&python6(), &["--kind", "service"]);
    let r = fails(&["upload", &format!("127.0.0.1:{port}"), s(&file), "/tmp/x"], 1, "is not a classic server");
    assert!(r.stderr.contains("rpyc_classic"), "{}", r.stderr);
}

#[test]
fn help_lists_transfer_commands() {
    let top = ok(&["--help"]);
    assert!(top.contains("upload") && top.contains("download") && top.contains("--log-format"), "{top}");
    for sub in ["upload", "download"] {
        let help = ok(&[sub, "--help"]);
        for word in ["--chunk-size", "--no-verify", "--json", "--reply-timeout", "--ca", "ssh://"] {
            assert!(help.contains(word), "{sub} --help lacks {word}:\n{help}");
        }
        assert_eq!(run(&[sub]).code, Some(2));
    }
}

/// Checks that every line of `stderr` is a JSON log record; returns them.
fn json_records(stderr: &str) -> Vec<Json> {
    assert!(!stderr.trim().is_empty(), "nothing logged");
    stderr
        .lines()
        .map(|l| {
            let r: Json =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON record ({e}): {l:?}\n{stderr}"));
            assert!(r["level"].is_string(), "{l}");
            assert!(r["target"].is_string(), "{l}");
            assert!(r["fields"]["message"].is_string(), "{l}");
            r
        })
        .collect()
}

#[test]
fn log_format_json_makes_stderr_json_records() {
    // Banners, engine logs (-vv: debug, with spans) and the end of a
    // connection of `rpyc serve --stdio` (stdin is empty: it ends at once).
    let r = run(&["--log-format", "json", "-vv", "serve", "--stdio"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let records = json_records(&r.stderr);
    let banner = records
        .iter()
        .find(|r| r["fields"]["message"].as_str().is_some_and(|m| m.contains("CONFORMANCE on stdin/stdout")))
        .unwrap_or_else(|| panic!("no banner record in\n{}", r.stderr));
    assert_eq!(banner["level"], "INFO");
    assert_eq!(banner["target"], "rpyc::cli");
    assert!(banner["timestamp"].is_string(), "{banner}");

    // The environment variable does the same; the final error is a record.
    let closed = format!("127.0.0.1:{}", crate::free_port(crate::Proto::Tcp));
    let out = rpyc().env("RPYC_LOG_FORMAT", "json").args(["ping", &closed]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let records = json_records(&stderr);
    let last = records.last().unwrap();
    assert_eq!(last["level"], "ERROR", "{stderr}");
    assert!(last["fields"]["message"].as_str().unwrap().contains("Connection refused"), "{stderr}");
    // -q keeps only the error, still as JSON.
    let out = rpyc().args(["-q", "--log-format", "json", "ping", &closed]).output().unwrap();
    assert_eq!(json_records(&String::from_utf8(out.stderr).unwrap()).len(), 1);

    // Text stays the default; a flag beats the variable; bad values are usage errors.
    let out =
        rpyc().env("RPYC_LOG_FORMAT", "json").args(["--log-format", "text", "serve", "--stdio"]).output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("rpyc serve: CONFORMANCE on stdin/stdout"), "{stderr}");
    assert!(!stderr.lines().any(|l| l.starts_with('{')), "text, not JSON: {stderr}");
    fails(&["--log-format", "xml", "serve", "--stdio"], 2, "invalid value 'xml'");
    let out = rpyc().env("RPYC_LOG_FORMAT", "xml").args(["serve", "--stdio"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RPYC_LOG_FORMAT"), "{out:?}");
}
