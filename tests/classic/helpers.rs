//! The classic helpers over the async API: chunked, verified transfers of
//! files and directories, remote files, redirected stdio, context managers,
//! remote errors — against Python rpyc 6.0.2 and (some) 5.3.1.

use crate::common::{noise, python5, python6, python_server, ChildGuard};
use rpyc::classic::{Classic, Direction, Progress, RemoteContext, RemoteStream, TransferOptions};
use rpyc::{ClientBuilder, Dialect};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

async fn classic(dialect: Dialect) -> (ChildGuard, Classic) {
    let python = if dialect == Dialect::V5 { python5() } else { python6() };
    let (server, port) = python_server(&python, &["--kind", "classic"]);
    let builder = ClientBuilder::new().dialect(dialect).timeout(Duration::from_secs(60));
    let c = Classic::connect_with(builder, &format!("127.0.0.1:{port}")).await.expect("connect");
    (server, c)
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 temp path").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mib_upload_and_download_round_trip() {
    let (_server, c) = classic(Dialect::V6).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let original = dir.path().join("original.bin");
    let data = noise(50 << 20, 0x5eed);
    std::fs::write(&original, &data).expect("write original");

    // The "remote" side is this machine too, so the uploaded copy can be
    // compared directly as well.
    let remote = path_str(&dir.path().join("uploaded.bin"));
    let up = c.upload(&original, &remote).await.expect("upload");
    assert_eq!((up.files, up.bytes), (1, 50 << 20));
    assert!(std::fs::read(&remote).expect("read uploaded") == data, "uploaded copy differs");

    let back = dir.path().join("downloaded.bin");
    let down = c.download(&remote, &back).await.expect("download");
    assert_eq!((down.files, down.bytes), (1, 50 << 20));
    assert!(std::fs::read(&back).expect("read downloaded") == data, "downloaded copy differs");
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_round_trip_recursively() {
    let (_server, c) = classic(Dialect::V6).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("a/b/c")).expect("mkdir");
    std::fs::create_dir_all(src.join("empty")).expect("mkdir");
    std::fs::write(src.join("top.txt"), b"top").expect("write");
    std::fs::write(src.join("a/one.bin"), noise(300_000, 1)).expect("write");
    std::fs::write(src.join("a/b/c/deep.txt"), "deep ünïcode").expect("write");
    std::fs::write(src.join("a/b/zero"), b"").expect("write");

    // Small chunks: many round trips per file.
    let opts = {
        let mut o = TransferOptions::default();
        o.chunk_size = 64 << 10;
        o
    };
    let remote = path_str(&dir.path().join("remote"));
    let up = c.upload_with(&src, &remote, &opts).await.expect("upload dir");
    assert_eq!(up.files, 4);
    assert_eq!(up.bytes, 3 + 300_000 + "deep ünïcode".len() as u64);
    let back = dir.path().join("back");
    let down = c.download_with(&remote, &back, &opts).await.expect("download dir");
    assert_eq!((down.files, down.bytes), (up.files, up.bytes));
    for rel in ["top.txt", "a/one.bin", "a/b/c/deep.txt", "a/b/zero"] {
        let a = std::fs::read(src.join(rel)).expect("src file");
        assert_eq!(std::fs::read(Path::new(&remote).join(rel)).expect("remote file"), a, "{rel} (uploaded)");
        assert_eq!(std::fs::read(back.join(rel)).expect("back file"), a, "{rel} (downloaded)");
    }
    assert!(back.join("empty").is_dir(), "empty directories come along");

    // Python's helpers raise ValueError for paths that are neither.
    let missing = path_str(&dir.path().join("missing"));
    let err = c.upload(&missing, &remote).await.expect_err("nothing to upload");
    assert!(err.is_exception("ValueError"), "{err}");
    let err = c.download(&missing, dir.path().join("x")).await.expect_err("nothing to download");
    assert!(err.is_exception("ValueError"), "{err}");
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_with_a_python5_server() {
    let (_server, c) = classic(Dialect::V5).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let original = dir.path().join("five.bin");
    let data = noise(3 << 20, 5);
    std::fs::write(&original, &data).expect("write");
    let remote = path_str(&dir.path().join("five-up.bin"));
    c.upload(&original, &remote).await.expect("upload");
    let back = dir.path().join("five-back.bin");
    c.download(&remote, &back).await.expect("download");
    assert!(std::fs::read(&back).expect("read") == data);

    let seen = Arc::new(Mutex::new(String::new()));
    let s2 = seen.clone();
    let redirect = c.redirect_stdio_to(move |_, text| s2.lock().unwrap().push_str(text)).await.expect("redirect");
    c.execute("print('from rpyc 5')").await.expect("print");
    redirect.restore().await.expect("restore");
    assert_eq!(*seen.lock().unwrap(), "from rpyc 5\n");
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_open_read_write_and_close() {
    let (_server, c) = classic(Dialect::V6).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let text_path = path_str(&dir.path().join("notes.txt"));

    let f = c.open(&text_path, "w").await.expect("open w");
    assert_eq!(f.write_str("Tofu is tasty\n").await.expect("write"), 14);
    assert_eq!(f.write_str("ünïcode\n").await.expect("write"), 8);
    f.close().await.expect("close");
    assert_eq!(std::fs::read_to_string(&text_path).expect("read"), "Tofu is tasty\nünïcode\n");

    let f = c.open(&text_path, "r").await.expect("open r");
    assert_eq!(f.read_to_string().await.expect("read"), "Tofu is tasty\nünïcode\n");
    // Writing to a file opened for reading: the remote io error, with its
    // class and traceback.
    let err = f.write_str("nope").await.expect_err("read-only");
    let exc = err.exception().expect("a remote exception");
    assert_eq!((exc.module.as_str(), exc.class.as_str()), ("io", "UnsupportedOperation"), "{err}");
    assert!(exc.traceback.contains("UnsupportedOperation"), "{}", exc.traceback);
    f.close().await.expect("close");

    let bin_path = path_str(&dir.path().join("data.bin"));
    let f = c.open(&bin_path, "wb").await.expect("open wb");
    f.write_bytes(vec![0u8, 1, 2, 255]).await.expect("write bytes");
    f.close().await.expect("close");
    let f = c.open(&bin_path, "rb").await.expect("open rb");
    assert_eq!(f.read_bytes(2).await.expect("read 2"), vec![0, 1]);
    assert_eq!(f.read_to_end().await.expect("read rest"), vec![2, 255]);
    assert!(f.read_bytes(10).await.expect("at end").is_empty());
    let seek = f.netref().expect("open").clone();
    seek.callattr("seek", (0,)).await.expect("seek");
    assert_eq!(f.read_bytes(1).await.expect("read after seek"), vec![0]);
    f.close().await.expect("close");

    // Dropped without close(): closed in the background, and the data is there.
    let dropped = path_str(&dir.path().join("dropped.txt"));
    let f = c.open(&dropped, "w").await.expect("open");
    f.write_str("flushed on close").await.expect("write");
    drop(f);
    let mut content = String::new();
    for _ in 0..100 {
        content = std::fs::read_to_string(&dropped).unwrap_or_default();
        if !content.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(content, "flushed on close");

    // A missing file: FileNotFoundError.
    let err = c.open(&path_str(&dir.path().join("nope/nope")), "r").await.expect_err("missing");
    assert!(err.is_exception("FileNotFoundError"), "{err}");
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirected_stdio_reaches_the_local_sink_until_restored() {
    let (_server, c) = classic(Dialect::V6).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let redirect = c
        .redirect_stdio_to(move |stream, text| s2.lock().unwrap().push((stream, text.to_string())))
        .await
        .expect("redirect");
    c.execute("print('hello', 'world')").await.expect("print");
    c.execute("import sys; sys.stderr.write('oops\\n'); sys.stdout.flush()").await.expect("stderr");
    // A background thread on the server prints too (the redirection is process-wide).
    c.execute("import threading; t = threading.Thread(target=print, args=('from a thread',)); t.start(); t.join()")
        .await
        .expect("thread");
    // A traceback printed by the server goes to its (redirected) stderr.
    c.execute("import traceback\ntry:\n    1/0\nexcept Exception:\n    traceback.print_exc()").await.expect("tb");
    redirect.restore().await.expect("restore");
    c.execute("print('not captured')").await.expect("print after restore");

    let seen = seen.lock().unwrap().clone();
    let out: String = seen.iter().filter(|(s, _)| *s == RemoteStream::Stdout).map(|(_, t)| t.as_str()).collect();
    let err: String = seen.iter().filter(|(s, _)| *s == RemoteStream::Stderr).map(|(_, t)| t.as_str()).collect();
    assert_eq!(out, "hello world\nfrom a thread\n");
    assert!(err.starts_with("oops\n"), "{err}");
    assert!(err.contains("ZeroDivisionError: division by zero"), "{err}");
    let kind: String = c.eval_as("type(__import__('sys').stdout).__name__").await.expect("type");
    assert_eq!(kind, "TextIOWrapper", "the original stdout is back");
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_managers_and_teleport() {
    let (_server, c) = classic(Dialect::V6).await;
    let lock = c.module("threading").await.expect("threading").callattr("Lock", ()).await.expect("Lock");
    let lock = lock.into_netref().expect("netref");
    let ctx = RemoteContext::enter(lock.clone()).await.expect("__enter__");
    assert_eq!(ctx.value().as_value().map(|v| v.truthy()), Some(true), "Lock.__enter__ returns True");
    assert!(lock.call_method::<bool>("locked", ()).await.expect("locked"));
    assert!(!ctx.exit().await.expect("__exit__"));
    assert!(!lock.call_method::<bool>("locked", ()).await.expect("locked"));

    // Teleport by source, indented as it would be in Rust code, with a
    // callback into this process.
    let apply = c
        .teleport(
            r#"
            def apply_all(f, xs):
                return tuple(f(x) for x in xs)
            "#,
            "apply_all",
        )
        .await
        .expect("teleport");
    let double = rpyc::Object::function(|x: i64| Ok(2 * x));
    let r: Vec<i64> = apply.call((double, vec![1, 2, 3])).await.expect("call").extract().expect("tuple");
    assert_eq!(r, vec![2, 4, 6]);

    // A syntax error in teleported source is a remote SyntaxError.
    let err = c.teleport("def broken(:\n    pass\n", "broken").await.expect_err("syntax");
    assert!(err.is_exception("SyntaxError"), "{err}");
    c.close().await;
}

/// `sys.stdin` on a real Python classic server reads the client's input:
/// `input()` with its prompt on the redirected stdout, `readline`, a
/// bounded `readline(n)`, `read()` to the end, and the server's own stdin
/// back after restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirected_stdin_feeds_input_and_readline() {
    let (_server, c) = classic(Dialect::V6).await;
    let original: String = c.eval_as("repr(__import__('sys').stdin)").await.expect("stdin repr");
    let seen = Arc::new(Mutex::new(String::new()));
    let s2 = seen.clone();
    let input = std::io::Cursor::new(b"alice\nbob\nlong line here\nrest\nof it\n".to_vec());
    let redirect =
        c.redirect_stdio_with(input, move |_, text| s2.lock().unwrap().push_str(text)).await.expect("redirect");
    let name: String = c.eval_as("input('name? ')").await.expect("input()");
    assert_eq!(name, "alice");
    let line: String = c.eval_as("__import__('sys').stdin.readline()").await.expect("readline");
    assert_eq!(line, "bob\n");
    let part: String = c.eval_as("__import__('sys').stdin.readline(4)").await.expect("readline(4)");
    assert_eq!(part, "long");
    let rest: String = c.eval_as("__import__('sys').stdin.readline()").await.expect("readline rest");
    assert_eq!(rest, " line here\n");
    let all: String = c.eval_as("__import__('sys').stdin.read()").await.expect("read");
    assert_eq!(all, "rest\nof it\n");
    let end: String = c.eval_as("__import__('sys').stdin.readline()").await.expect("readline at end");
    assert_eq!(end, "");
    let e = c.eval("input()").await.expect_err("input() at the end");
    assert!(e.is_exception("EOFError"), "{e}");
    redirect.restore().await.expect("restore");
    assert_eq!(*seen.lock().unwrap(), "name? ");
    let back: String = c.eval_as("repr(__import__('sys').stdin)").await.expect("stdin repr after");
    assert_eq!(back, original);
    c.close().await;
}

/// Every progress report of one transfer, in order.
fn recorder() -> (TransferOptions, Arc<Mutex<Vec<Progress>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let mut opts = TransferOptions::default().on_progress(move |p| s2.lock().unwrap().push(p.clone()));
    opts.chunk_size = 64 << 10;
    (opts, seen)
}

/// The invariants of a finished transfer's reports: totals only grow, by
/// at most a chunk at a time, and end at the transfer's size; each file
/// ends with one completion report at its own size; the counts of files
/// add up.
fn check_reports(reports: &[Progress], direction: Direction, files: &[(&Path, u64)], chunk: u64) {
    let bytes: u64 = files.iter().map(|f| f.1).sum();
    assert!(!reports.is_empty(), "no progress reports");
    let mut previous = 0u64;
    let mut completed = Vec::new();
    let mut chunk_reports = 0u64;
    for p in reports {
        assert_eq!(p.direction, direction);
        assert_eq!(p.total_size, Some(bytes), "{p:?}");
        assert_eq!(p.files_total, Some(files.len() as u64), "{p:?}");
        assert!(p.total_bytes >= previous, "total went down: {p:?} after {previous}");
        assert!(p.total_bytes - previous <= chunk, "more than a chunk at once: {p:?}");
        assert!(p.file_bytes <= p.file_size.unwrap(), "{p:?}");
        if p.file_done {
            assert_eq!(Some(p.file_bytes), p.file_size, "a file completes at its size: {p:?}");
            completed.push(p.local.clone());
            assert_eq!(p.files_done, completed.len() as u64, "{p:?}");
        } else {
            assert!(p.total_bytes > previous, "a chunk report moves forward: {p:?}");
            assert!(p.file_bytes > 0, "{p:?}");
            chunk_reports += 1;
        }
        previous = p.total_bytes;
    }
    let last = reports.last().unwrap();
    assert!(last.file_done && last.total_bytes == bytes && last.files_done == files.len() as u64, "{last:?}");
    let mut expected: Vec<_> = files.iter().map(|f| f.0.to_path_buf()).collect();
    expected.sort();
    completed.sort();
    assert_eq!(completed, expected, "each file completes exactly once");
    let chunks: u64 = files.iter().map(|f| f.1.div_ceil(chunk)).sum();
    assert_eq!(chunk_reports, chunks, "one report per chunk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reports_each_chunk_of_a_file_both_ways() {
    let (_server, c) = classic(Dialect::V6).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let original = dir.path().join("progress.bin");
    let size = 300_000u64; // 5 chunks of 64 KiB, the last one short
    std::fs::write(&original, noise(size as usize, 7)).expect("write");
    let remote = path_str(&dir.path().join("progress-up.bin"));

    let (opts, seen) = recorder();
    assert!(format!("{opts:?}").contains("progress: Some"), "{opts:?}");
    let up = c.upload_with(&original, &remote, &opts).await.expect("upload");
    assert_eq!((up.files, up.bytes), (1, size));
    let reports = std::mem::take(&mut *seen.lock().unwrap());
    check_reports(&reports, Direction::Upload, &[(&original, size)], 64 << 10);
    assert_eq!(reports.len(), 6, "5 chunks and the completion: {reports:?}");
    assert!(reports.iter().all(|p| p.remote == remote), "{reports:?}");

    let back = dir.path().join("progress-back.bin");
    let down = c.download_with(&remote, &back, &opts).await.expect("download");
    assert_eq!((down.files, down.bytes), (1, size));
    let reports = std::mem::take(&mut *seen.lock().unwrap());
    check_reports(&reports, Direction::Download, &[(&back, size)], 64 << 10);
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&original).unwrap());

    // Without verification the reports are the same; the clone shares the callback.
    let mut fast = opts.clone();
    fast.verify = false;
    c.upload_with(&original, &remote, &fast).await.expect("upload unverified");
    check_reports(&seen.lock().unwrap(), Direction::Upload, &[(&original, size)], 64 << 10);
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_over_directories_both_ways() {
    let (_server, c) = classic(Dialect::V6).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("tree");
    std::fs::create_dir_all(src.join("sub/deeper")).expect("mkdir");
    let files: [(&str, usize); 4] =
        [("a.bin", 200_000), ("sub/b.bin", 70_000), ("sub/deeper/c.txt", 10), ("sub/empty.txt", 0)];
    for (i, (rel, len)) in files.iter().enumerate() {
        std::fs::write(src.join(rel), noise(*len, i as u64 + 1)).expect("write");
    }
    let (opts, seen) = recorder();
    let remote = dir.path().join("remote-tree");
    let up = c.upload_with(&src, &path_str(&remote), &opts).await.expect("upload dir");
    assert_eq!((up.files, up.bytes), (4, 270_010));
    let locals: Vec<_> = files.iter().map(|(rel, len)| (src.join(rel), *len as u64)).collect();
    let refs: Vec<(&Path, u64)> = locals.iter().map(|(p, n)| (p.as_path(), *n)).collect();
    check_reports(&std::mem::take(&mut *seen.lock().unwrap()), Direction::Upload, &refs, 64 << 10);

    let back = dir.path().join("back-tree");
    let down = c.download_with(&path_str(&remote), &back, &opts).await.expect("download dir");
    assert_eq!((down.files, down.bytes), (4, 270_010));
    let locals: Vec<_> = files.iter().map(|(rel, len)| (back.join(rel), *len as u64)).collect();
    let refs: Vec<(&Path, u64)> = locals.iter().map(|(p, n)| (p.as_path(), *n)).collect();
    let reports = std::mem::take(&mut *seen.lock().unwrap());
    check_reports(&reports, Direction::Download, &refs, 64 << 10);
    // The remote names are the server's paths of the same files.
    for p in reports.iter().filter(|p| p.file_done) {
        let rel = p.local.strip_prefix(&back).unwrap();
        assert_eq!(Path::new(&p.remote), remote.join(rel), "{p:?}");
    }
    for (rel, _) in files {
        assert_eq!(std::fs::read(back.join(rel)).unwrap(), std::fs::read(src.join(rel)).unwrap(), "{rel}");
    }
    c.close().await;
}

/// Transfers write beside the destination and rename over it: copying a
/// file onto itself (client and server on one machine) keeps its content,
/// and a transfer that fails leaves the old file and no partial file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_replace_the_destination_only_when_complete() {
    let (_server, c) = classic(Dialect::V6).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("same.bin");
    let data = noise(300_000, 9);
    std::fs::write(&file, &data).expect("write");
    let mut opts = TransferOptions::default();
    opts.chunk_size = 64 << 10;
    c.upload_with(&file, &path_str(&file), &opts).await.expect("upload onto itself");
    assert!(std::fs::read(&file).expect("read") == data, "uploading a file onto itself changed it");
    c.download_with(&path_str(&file), &file, &opts).await.expect("download onto itself");
    assert!(std::fs::read(&file).expect("read") == data, "downloading a file onto itself changed it");

    // A destination that is a directory: the transfer fails, nothing is left behind.
    let target = dir.path().join("a-directory");
    std::fs::create_dir(&target).expect("mkdir");
    c.upload_with(&file, &path_str(&target), &opts).await.expect_err("upload over a directory");
    let remote_file = path_str(&file);
    c.download_with(&remote_file, &target, &opts).await.expect_err("download over a directory");
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.contains(".part")), "partial files left: {names:?}");
    assert!(std::fs::read_dir(&target).unwrap().next().is_none(), "the directory was written into");
    // The permissions of a replaced file are kept.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    c.upload_with(&file, &path_str(&file), &opts).await.expect("upload again");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o640);
    c.close().await;
}

/// The server chooses how much of our stdin it reads: with an endless
/// stdin (`/dev/zero`, a pipe that never ends), `read()`, `readline()` and
/// `readlines()` stop at 16 MiB with an error instead of growing this
/// process without bound; bounded reads still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirected_stdin_reads_are_bounded() {
    let (_server, c) = classic(Dialect::V6).await;
    let redirect = c.redirect_stdio_with(tokio::io::repeat(b'x'), |_, _| {}).await.expect("redirect");
    let some: String = c.eval_as("__import__('sys').stdin.read(10)").await.expect("read(10)");
    assert_eq!(some, "x".repeat(10));
    for call in ["read()", "readline()", "readlines()", "readline(10**12)", "read(10**12)"] {
        let e = c.eval(&format!("__import__('sys').stdin.{call}")).await.expect_err(call);
        assert!(e.is_exception("OSError") && e.to_string().contains("read it in pieces"), "{call}: {e}");
    }
    redirect.restore().await.expect("restore");
    c.close().await;
}
