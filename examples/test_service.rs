//! RPyC's tutorial `TestService` (`foo`/`bar`), served from Rust.
//!
//! ```text
//! cargo run --example test_service -- --port 18862        # terminal 1
//! python -c "import rpyc; c = rpyc.connect('localhost', 18862); print(c.root.foo(), c.root.bar())"
//! ```
//!
//! `--port 0` picks a free port; the port is printed as `PORT <n>`.

use rpyc::{Server, ServerConfig, Service};

#[tokio::main]
async fn main() -> rpyc::Result<()> {
    let port = std::env::args().skip_while(|a| a != "--port").nth(1).unwrap_or_else(|| "18862".into());
    let service = Service::builder("test", || ()).method("foo()", || Ok("foo")).method("bar()", || Ok("bar")).build();
    let server = Server::new(service, ServerConfig::default()).bind_tcp(&format!("127.0.0.1:{port}")).await?;
    for a in server.local_addrs() {
        println!("PORT {}", a.port());
    }
    server.run_until_ctrl_c().await
}
