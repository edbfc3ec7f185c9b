//! RPyC's tutorial `MyService`, served from Rust.
//!
//! ```text
//! cargo run --example my_service -- --port 18861          # terminal 1
//! python -c "import rpyc; c = rpyc.connect('localhost', 18861); \
//!     print(c.root.line_length('hello'), c.root.get_answer(), c.root.the_real_answer_though)"
//! ```
//!
//! The Python original:
//!
//! ```python
//! class MyService(rpyc.Service):
//!     def exposed_line_length(self, line): return len(line)
//!     def exposed_get_answer(self): return 42
//!     exposed_the_real_answer_though = 43
//!     def get_question(self): return "what is the airspeed velocity of an unladen swallow?"
//! ```
//!
//! `--port 0` picks a free port; the port is printed as `PORT <n>`.

use rpyc::{Server, ServerConfig, Service};

#[tokio::main]
async fn main() -> rpyc::Result<()> {
    let port = std::env::args().skip_while(|a| a != "--port").nth(1).unwrap_or_else(|| "18861".into());
    let service = Service::builder("my", || ())
        .method("line_length(line)", |line: String| Ok(line.chars().count()))
        .method("get_answer()", || Ok(42))
        .attr("the_real_answer_though", |_| 43)
        // Not exposed: a client gets AttributeError, as with the Python original.
        .plain_method("get_question()", || Ok("what is the airspeed velocity of an unladen swallow?"))
        .build();
    let server = Server::new(service, ServerConfig::default()).bind_tcp(&format!("127.0.0.1:{port}")).await?;
    for a in server.local_addrs() {
        println!("PORT {}", a.port());
    }
    server.run_until_ctrl_c().await
}
