//! Tutorial 9: files on the server — create, check, read back; then copy
//! files both ways.
//!
//! ```text
//! cargo run --example tutorial_remote_files
//! cargo run --example tutorial_remote_files -- --connect 127.0.0.1:18812
//! ```
//!
//! Python:
//!
//! ```python
//! with c.builtins.open(path, "w") as f:
//!     f.write("Tofu is tasty\n")
//! c.modules.os.path.exists(path)
//! with c.builtins.open(path) as f:
//!     f.read()
//! rpyc.classic.upload(c, local, remote); rpyc.classic.download(c, remote, local)
//! ```
//!
//! The `with` block's end is `close()` here (dropping the file closes it
//! too). Uploads and downloads go in 1 MiB chunks and check the SHA-256 of
//! both copies.

#[path = "support/tutorial.rs"]
mod tutorial;

use rpyc::blocking::Classic;

fn main() -> rpyc::Result<()> {
    let server = tutorial::server();
    let c = Classic::connect(server.addr())?;

    let os_path = c.module("os.path")?;
    let dir: String = c.module("tempfile")?.call_method("mkdtemp", ())?;
    let path: String = os_path.call_method("join", (dir.as_str(), "Tofu.txt"))?;

    println!("exists before: {}", os_path.call_method::<bool>("exists", (path.as_str(),))?);
    let f = c.open(&path, "w")?;
    f.write_str("Tofu is tasty\n")?;
    f.close()?;
    println!("exists after: {}", os_path.call_method::<bool>("exists", (path.as_str(),))?);

    let f = c.open(&path, "r")?;
    let text = f.read_to_string()?;
    f.close()?;
    println!("read back: {:?}", text);

    // Files both ways.
    let local = tempfile::tempdir()?;
    let original = local.path().join("numbers.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&original, &data)?;
    let remote: String = os_path.call_method("join", (dir.as_str(), "numbers.bin"))?;
    let up = c.upload(&original, &remote)?;
    println!("uploaded {} file(s), {} bytes", up.files, up.bytes);
    let back = local.path().join("numbers-back.bin");
    let down = c.download(&remote, &back)?;
    println!("downloaded {} file(s), {} bytes", down.files, down.bytes);
    println!("round trip identical: {}", std::fs::read(&back)? == data);

    c.module("shutil")?.callattr("rmtree", (dir.as_str(),))?;
    c.close()
}
