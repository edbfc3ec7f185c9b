//! `rpyc upload` and `rpyc download`: files and directories to and from a
//! Python classic server (`rpyc_classic`), in chunks, SHA-256 verified,
//! with a progress bar on a terminal or JSON progress lines (`--json`).

use super::support::{self, parse_seconds, runtime, to_json, usage, ConnectArgs};
use super::CmdResult;
use clap::Args;
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rpyc::classic::{Classic, Direction, Progress, TransferOptions, Transferred};
use rpyc::Value;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The largest chunk the library sends (a chunk must fit in one frame).
const MAX_CHUNK: usize = 16 << 20;
/// At most this often a `--json` progress line (completed files always get one).
const JSON_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Args, Debug)]
pub struct UploadArgs {
    /// The classic server (Python's rpyc_classic): tcp://host:port (or
    /// host:port), unix:///path, tls://host:port (with --ca),
    /// ssh://user@sshhost[:port]/host:port, srv://_service._proto.domain.
    #[arg(value_name = "ADDR")]
    pub addr: String,
    /// The file or directory (copied with everything below it) to send.
    #[arg(value_name = "LOCAL")]
    pub local: PathBuf,
    /// Where it goes on the server. If REMOTE is an existing directory there
    /// or ends with '/', the copy goes inside it, under LOCAL's name (like
    /// cp and scp); otherwise REMOTE is the new name.
    #[arg(value_name = "REMOTE")]
    pub remote: String,
    #[command(flatten)]
    pub transfer: TransferArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// The classic server (Python's rpyc_classic): tcp://host:port (or
    /// host:port), unix:///path, tls://host:port (with --ca),
    /// ssh://user@sshhost[:port]/host:port, srv://_service._proto.domain.
    #[arg(value_name = "ADDR")]
    pub addr: String,
    /// The file or directory on the server (absolute, or relative to the
    /// server's working directory).
    #[arg(value_name = "REMOTE")]
    pub remote: String,
    /// Where it goes here. If LOCAL is an existing directory or ends with
    /// '/', the copy goes inside it, under REMOTE's name (like cp and scp);
    /// otherwise LOCAL is the new name.
    #[arg(value_name = "LOCAL")]
    pub local: PathBuf,
    #[command(flatten)]
    pub transfer: TransferArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Args, Debug)]
pub struct TransferArgs {
    /// Bytes per round trip: a number, optionally with K or M (KiB, MiB),
    /// from 1 to 16M. Bigger chunks are faster over slow links.
    #[arg(long, value_name = "BYTES", default_value = "1M", value_parser = parse_size)]
    pub chunk_size: usize,
    /// Do not compare the SHA-256 of each file on both sides afterwards.
    #[arg(long)]
    pub no_verify: bool,
    /// Seconds to wait for each reply of the server (a chunk, or the
    /// checksum of a whole file, which takes long for big files); --timeout
    /// bounds connecting.
    #[arg(long, value_name = "SECONDS", default_value = "600", value_parser = parse_seconds)]
    pub reply_timeout: Duration,
    /// Print progress as JSON lines on stdout instead of a bar:
    /// {"event": "progress" | "file", ...} at most 10 per second plus one
    /// per finished file, then {"event": "done", "files", "bytes", "seconds"}
    /// (or {"event": "error", "message"}).
    #[arg(long)]
    pub json: bool,
}

/// Parses `--chunk-size`: `65536`, `64K`, `64KiB`, `1M`, `1MiB`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let (digits, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => lower.split_at(i),
        None => (lower.as_str(), ""),
    };
    let multiplier: usize = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        _ => return Err(format!("{s:?} is not a size: give bytes, e.g. 65536, 64K or 1M")),
    };
    let n: usize = digits.parse().map_err(|_| format!("{s:?} is not a size: give bytes, e.g. 65536, 64K or 1M"))?;
    match n.checked_mul(multiplier) {
        Some(bytes) if (1..=MAX_CHUNK).contains(&bytes) => Ok(bytes),
        _ => Err(format!("{s:?} is out of range: a chunk is 1 byte to 16M")),
    }
}

pub fn run_upload(args: &UploadArgs) -> CmdResult {
    args.connect.endpoint(&args.addr)?; // usage errors before anything else
    if let Err(e) = std::fs::metadata(&args.local) {
        return Err(format!(
            "cannot upload {}: {e}; LOCAL must be an existing file or directory on this machine",
            args.local.display()
        )
        .into());
    }
    if args.remote.is_empty() {
        return Err(usage("REMOTE is empty: give the path the upload gets on the server"));
    }
    runtime()?.block_on(transfer(Job::Upload(args), &args.addr, &args.transfer, &args.connect))
}

pub fn run_download(args: &DownloadArgs) -> CmdResult {
    args.connect.endpoint(&args.addr)?;
    if args.remote.is_empty() {
        return Err(usage("REMOTE is empty: give the path of a file or directory on the server"));
    }
    runtime()?.block_on(transfer(Job::Download(args), &args.addr, &args.transfer, &args.connect))
}

enum Job<'a> {
    Upload(&'a UploadArgs),
    Download(&'a DownloadArgs),
}

impl Job<'_> {
    fn direction(&self) -> Direction {
        match self {
            Job::Upload(_) => Direction::Upload,
            Job::Download(_) => Direction::Download,
        }
    }
}

async fn transfer(job: Job<'_>, addr: &str, t: &TransferArgs, connect: &ConnectArgs) -> CmdResult {
    let start = Instant::now();
    let direction = job.direction();
    let outcome = async {
        let conn = connect.connect_for(addr, t.reply_timeout).await?;
        let classic = Classic::from_connection(conn).await.map_err(|e| not_classic(addr, &e))?;
        // One round trip that only a classic server answers.
        if let Err(e) = classic.eval("1").await {
            classic.close().await;
            return Err(not_classic(addr, &e));
        }
        let result = run_job(&job, &classic, addr, t).await;
        classic.close().await;
        result
    }
    .await;
    let seconds = start.elapsed().as_secs_f64();
    match outcome {
        Ok((done, shown)) => {
            if t.json {
                #[derive(serde::Serialize)]
                struct Done {
                    event: &'static str,
                    direction: &'static str,
                    files: u64,
                    bytes: u64,
                    seconds: f64,
                }
                let seconds = (seconds * 1000.0).round() / 1000.0;
                let line = Done {
                    event: "done",
                    direction: direction.as_str(),
                    files: done.files,
                    bytes: done.bytes,
                    seconds,
                };
                println!("{}", to_json(&line));
            } else {
                let verb = if direction == Direction::Upload { "uploaded" } else { "downloaded" };
                let files = if done.files == 1 { "1 file".to_string() } else { format!("{} files", done.files) };
                println!(
                    "{verb} {files}, {} bytes ({}), {shown}, in {seconds:.2} s",
                    done.bytes,
                    HumanBytes(done.bytes)
                );
            }
            Ok(())
        }
        Err(e) => {
            if t.json {
                #[derive(serde::Serialize)]
                struct Failed<'a> {
                    event: &'static str,
                    direction: &'static str,
                    message: &'a str,
                }
                let message = super::support::for_cli(&e.to_string());
                println!("{}", to_json(&Failed { event: "error", direction: direction.as_str(), message: &message }));
            }
            Err(e)
        }
    }
}

/// Runs the transfer; returns what moved and "SRC -> DEST" for the summary.
async fn run_job(
    job: &Job<'_>,
    classic: &Classic,
    addr: &str,
    t: &TransferArgs,
) -> Result<(Transferred, String), Box<dyn std::error::Error>> {
    let reporter = Reporter::new(t.json);
    let mut opts = TransferOptions::default();
    opts.chunk_size = t.chunk_size;
    opts.verify = !t.no_verify;
    let opts = {
        let reporter = reporter.clone();
        opts.on_progress(move |p| reporter.report(p))
    };
    let result = match job {
        Job::Upload(args) => {
            let remote = upload_target(classic, &args.local, &args.remote).await?;
            let shown = format!("{} -> {addr}:{remote}", args.local.display());
            classic
                .upload_with(&args.local, &remote, &opts)
                .await
                .map(|done| (done, shown))
                .map_err(|e| explain(Direction::Upload, addr, &remote, e))
        }
        Job::Download(args) => {
            let local = download_target(&args.local, &args.remote)?;
            let shown = format!("{addr}:{} -> {}", args.remote, local.display());
            classic
                .download_with(&args.remote, &local, &opts)
                .await
                .map(|done| (done, shown))
                .map_err(|e| explain(Direction::Download, addr, &args.remote, e))
        }
    };
    reporter.finish();
    result
}

/// REMOTE, or REMOTE/NAME when REMOTE is a directory on the server (or
/// ends with a separator).
async fn upload_target(classic: &Classic, local: &Path, remote: &str) -> Result<String, Box<dyn std::error::Error>> {
    let name = || {
        std::fs::canonicalize(local)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .ok_or_else(|| format!("cannot tell the name of {}: give REMOTE as a full path", local.display()))
    };
    let into_dir = remote.ends_with(['/', '\\'])
        || classic
            .eval_as::<bool>(&format!("__import__('os').path.isdir({})", Value::from(remote).repr()))
            .await
            .map_err(|e| format!("cannot inspect {remote} on the server: {e}"))?;
    if !into_dir {
        return Ok(remote.to_string());
    }
    let sep = if remote.ends_with(['/', '\\']) { "" } else { "/" };
    Ok(format!("{remote}{sep}{}", name()?))
}

/// LOCAL, or LOCAL/NAME when LOCAL is a directory (or ends with a separator).
fn download_target(local: &Path, remote: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let text = local.to_string_lossy();
    if !(local.is_dir() || text.ends_with(std::path::MAIN_SEPARATOR) || text.ends_with('/')) {
        return Ok(local.to_path_buf());
    }
    let name = remote.trim_end_matches(['/', '\\']).rsplit(['/', '\\']).next().unwrap_or("");
    if name.is_empty() || name == "." || name == ".." {
        return Err(usage(format!(
            "cannot tell what to name the copy of {remote:?} inside {}: give LOCAL as a full path",
            local.display()
        )));
    }
    Ok(local.join(name))
}

/// Says why connecting as a classic client failed, and what to do.
fn not_classic(addr: &str, e: &rpyc::Error) -> Box<dyn std::error::Error> {
    if e.is_remote() {
        format!(
            "{addr} is not a classic server (it refused eval: {}); upload and download need Python's \
             rpyc_classic there (or a SlaveService/ClassicService server)",
            first_line(e)
        )
        .into()
    } else {
        format!("cannot talk to {addr}: {e}").into()
    }
}

/// A transfer error for the user: what failed and what to do, without the
/// remote traceback (shown with -v).
fn explain(direction: Direction, addr: &str, remote: &str, e: rpyc::Error) -> Box<dyn std::error::Error> {
    let verb = direction.as_str();
    if let Some(exc) = e.exception() {
        tracing::debug!(traceback = %exc.traceback, "the server's traceback");
        let msg = os_error_text(exc).unwrap_or_else(|| exc.message());
        if direction == Direction::Download && msg.starts_with("cannot download") {
            return format!(
                "{remote} is not a file or directory on the server {addr}: check REMOTE (absolute, or \
                 relative to the server's working directory)"
            )
            .into();
        }
        if msg.starts_with("cannot upload") {
            return format!("{msg}: check LOCAL").into();
        }
        let hint = if exc.is("PermissionError") {
            "; the server's user may not write or read there"
        } else if exc.is("FileNotFoundError") {
            "; the directory it goes into must exist on the server"
        } else if exc.is("IsADirectoryError") {
            "; a directory of that name is in the way"
        } else {
            ""
        };
        return format!("{verb} failed on the server {addr}: {}: {msg}{hint}", exc.qualified_name()).into();
    }
    match e {
        rpyc::Error::Io(io) => format!("{verb} failed: {io}").into(),
        rpyc::Error::Timeout { .. } => format!(
            "{verb} failed: the server {addr} did not reply in time; raise --reply-timeout for big files or \
             slow links"
        )
        .into(),
        other if other.is_closed() => {
            format!("{verb} failed: the connection to {addr} ended ({other}); check the server and retry").into()
        }
        other => format!("{verb} failed: {other}").into(),
    }
}

/// An OSError as Python prints it, `[Errno 2] No such file or directory:
/// '/x'` (its args alone are `(2, 'No such file or directory')`).
fn os_error_text(exc: &rpyc::Exception) -> Option<String> {
    let attr = |name: &str| exc.attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let errno = attr("errno")?.as_i64()?;
    let Some(Value::Str(strerror)) = attr("strerror") else { return None };
    Some(match attr("filename") {
        Some(name @ Value::Str(_)) => format!("[Errno {errno}] {strerror}: {}", name.repr()),
        _ => format!("[Errno {errno}] {strerror}"),
    })
}

fn first_line(e: &rpyc::Error) -> String {
    match e.exception() {
        Some(exc) => format!("{}: {}", exc.qualified_name(), exc.message()),
        None => e.to_string(),
    }
    .lines()
    .next()
    .unwrap_or_default()
    .to_string()
}

/// Shows progress: a bar on a terminal, JSON lines with `--json`, or nothing.
#[derive(Clone)]
struct Reporter {
    inner: std::sync::Arc<ReporterInner>,
}

struct ReporterInner {
    bar: Option<ProgressBar>,
    json: bool,
    /// When the last `--json` progress line was printed.
    last_line: Mutex<Option<Instant>>,
}

impl Reporter {
    fn new(json: bool) -> Reporter {
        let terminal = std::io::stderr().is_terminal();
        let bar = (!json && terminal && !support::quiet() && !support::log_json()).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{msg:30!} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        Reporter { inner: std::sync::Arc::new(ReporterInner { bar, json, last_line: Mutex::new(None) }) }
    }

    fn report(&self, p: &Progress) {
        let inner = &self.inner;
        if let Some(bar) = &inner.bar {
            if let Some(total) = p.total_size {
                bar.set_length(total);
            }
            bar.set_position(p.total_bytes);
            let name = p.local.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let counter = match p.files_total {
                Some(n) if n > 1 => format!("{}/{n} ", (p.files_done + u64::from(!p.file_done)).min(n)),
                _ => String::new(),
            };
            bar.set_message(format!("{counter}{name}"));
        }
        if inner.json {
            let mut last = inner.last_line.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if !p.file_done && last.is_some_and(|t| now.duration_since(t) < JSON_INTERVAL) {
                return;
            }
            *last = Some(now);
            #[derive(serde::Serialize)]
            struct Line<'a> {
                event: &'static str,
                direction: &'static str,
                local: &'a str,
                remote: &'a str,
                file_bytes: u64,
                file_size: Option<u64>,
                total_bytes: u64,
                total_size: Option<u64>,
                files_done: u64,
                files_total: Option<u64>,
            }
            let local = p.local.to_string_lossy();
            let line = Line {
                event: if p.file_done { "file" } else { "progress" },
                direction: p.direction.as_str(),
                local: &local,
                remote: &p.remote,
                file_bytes: p.file_bytes,
                file_size: p.file_size,
                total_bytes: p.total_bytes,
                total_size: p.total_size,
                files_done: p.files_done,
                files_total: p.files_total,
            };
            let mut out = std::io::stdout().lock();
            // A closed stdout must not fail the transfer.
            let _ = writeln!(out, "{}", to_json(&line)).and_then(|()| out.flush());
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.inner.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64kib"), Ok(64 << 10));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        for bad in ["0", "17M", "", "x", "1G", "-1", "1.5M"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn download_targets() {
        let dir = std::env::temp_dir();
        assert_eq!(download_target(&dir, "/srv/a.bin").unwrap(), dir.join("a.bin"));
        assert_eq!(download_target(&dir, "/srv/tree/").unwrap(), dir.join("tree"));
        assert_eq!(download_target(Path::new("x/new.bin"), "/srv/a.bin").unwrap(), Path::new("x/new.bin"));
        assert!(download_target(&dir, "/").is_err());
    }
}
