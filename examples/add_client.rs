//! The tutorial client call `conn.root.add(5, 10)`, from Rust.
//!
//! ```text
//! cargo run --example conformance_server -- --port 18861   # terminal 1 (any server with add())
//! cargo run --example add_client -- 127.0.0.1:18861         # terminal 2: prints "add(5, 10) = 15"
//! ```

#[tokio::main]
async fn main() -> rpyc::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18861".into());
    let conn = rpyc::connect(&addr).await?;
    let root = conn.root().await?;
    let sum: i64 = root.call_method("add", (5, 10)).await?;
    println!("add(5, 10) = {sum}");
    conn.close().await;
    Ok(())
}
