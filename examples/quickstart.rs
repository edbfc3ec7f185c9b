//! The quickstart: the secured path, in one process, with no setup.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! 1. Generates throw-away development certificates in memory: a CA, a
//!    server certificate and client certificates for `alice` and `bob`.
//! 2. Serves a small service over mutual TLS on 127.0.0.1 (a free port):
//!    the client certificate's common name is the identity, and a policy
//!    set gives `alice` (group `ops`) public attributes while `bob` gets
//!    RPyC's default exposed-only policy.
//! 3. Connects as each identity and shows an allowed call, a callback from
//!    the server into the client, a remote object, a denied call with the
//!    `AttributeError` a Python user would see — and a connection without a
//!    client certificate being refused.

use rpyc::auth::TlsClientCert;
use rpyc::policy::PolicySet;
use rpyc::transport::tls::{TlsClientConfig, TlsIdentity, TlsServerConfig};
use rpyc::transport::Listener;
use rpyc::{AccessPolicy, Class, ClientBuilder, Ctx, Exception, Kwargs, Object, Server, ServerConfig, Service};

struct Report {
    owner: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. Certificates (in memory; `rpyc certs init` writes the same to disk).
    let pki = rpyc::certs::generate(&[])?;
    let alice = pki.ca.client_cert("alice")?;
    let bob = pki.ca.client_cert("bob")?;

    // 2. A service with exposed methods and a remote object that has a
    //    public but *not exposed* attribute.
    let report = Class::<Report>::builder("quickstart.Report")
        .method("title()", |r: rpyc::This<Report>| Ok(format!("{}'s report", r.owner)))
        .plain_attr("internal_notes", |r: &Report| format!("draft by {}", r.owner))
        .build();
    let service = Service::builder("calculator", || ())
        .method("add(x, y)", |x: i64, y: i64| Ok(x + y))
        .method("div(x, y)", |x: f64, y: f64| {
            if y == 0.0 {
                return Err(Exception::zero_division_error("float division by zero").into());
            }
            Ok(x / y)
        })
        .method("whoami()", |ctx: Ctx| Ok(ctx.credentials().identity.clone()))
        .async_method("apply(func, x)", |func: rpyc::Netref, x: i64| async move {
            // Calls back into the client while the client waits for us.
            func.call((x,)).await
        })
        .method("report()", move |ctx: Ctx| {
            Ok(report.instance(Report { owner: ctx.credentials().identity.clone().unwrap_or_default() }))
        })
        .build();

    let policies = PolicySet::uniform(AccessPolicy::default())
        .with_policy("ops", AccessPolicy::default().with_public_attrs(true))
        .with_group("ops", "ops");
    let tls = TlsServerConfig::from_pem(pki.server.cert_pem.as_bytes(), pki.server.key_pem.as_bytes())?
        .with_client_ca_pem(pki.ca.cert_pem().as_bytes())?;
    let config = ServerConfig::default()
        .with_authenticator(TlsClientCert::new().group("alice", &["ops"]))
        .with_policy_set(policies);
    let server = Server::new(service, config).listen(Listener::tls("127.0.0.1:0", &tls).await?);
    let addr = server.local_addrs()[0];
    let stop = server.spawn();
    println!("serving CALCULATOR over mutual TLS on {addr}\n");

    let client = |cert: Option<&rpyc::certs::CertKeyPem>| -> Result<ClientBuilder, Box<dyn std::error::Error>> {
        let mut tls = TlsClientConfig::new().with_ca_pem(pki.ca.cert_pem().as_bytes())?;
        if let Some(c) = cert {
            tls = tls.with_identity(TlsIdentity::from_pem(c.cert_pem.as_bytes(), c.key_pem.as_bytes())?);
        }
        Ok(ClientBuilder::new().tls(tls))
    };

    // 3a. alice (group ops): everything she is granted works.
    let conn = client(Some(&alice))?.connect(&addr.to_string()).await?;
    let root = conn.root().await?;
    println!("as {}:", root.call_method::<String>("whoami", ()).await?);
    println!("  add(5, 10)                 = {}", root.call_method::<i64>("add", (5, 10)).await?);
    let sum: i64 = root.callattr_kw("add", (), Kwargs::new().arg("x", 2).arg("y", 40)).await?.extract()?;
    println!("  add(x=2, y=40)             = {sum}");
    let triple = Object::function(|x: i64| Ok(3 * x));
    let r: i64 = root.callattr("apply", (triple, 14)).await?.extract()?;
    println!("  apply(lambda x: 3*x, 14)   = {r}   (the server called back into the client)");
    let rep = root.callattr("report", ()).await?.into_netref()?;
    println!("  report().title()           = {:?}", rep.call_method::<String>("title", ()).await?);
    println!(
        "  report().internal_notes    = {:?}   (public attribute: granted to ops)",
        rep.getattr("internal_notes").await?.extract::<String>()?
    );
    match root.callattr("div", (1.0, 0.0)).await {
        Err(e) => println!("  div(1, 0)                  raised {}", first_line(&e)),
        Ok(v) => println!("  div(1, 0)                  = {v:?} (unexpected)"),
    }
    conn.close().await;

    // 3b. bob (default policy): exposed methods yes, the public attribute no.
    let conn = client(Some(&bob))?.connect(&addr.to_string()).await?;
    let root = conn.root().await?;
    println!("\nas {}:", root.call_method::<String>("whoami", ()).await?);
    println!("  add(5, 10)                 = {}", root.call_method::<i64>("add", (5, 10)).await?);
    let rep = root.callattr("report", ()).await?.into_netref()?;
    match rep.getattr("internal_notes").await {
        Err(e) => println!("  report().internal_notes    raised {}   (denied by bob's policy)", first_line(&e)),
        Ok(v) => println!("  report().internal_notes    = {v:?} (unexpected)"),
    }
    conn.close().await;

    // 3c. No client certificate: refused before any RPyC byte is read.
    println!("\nwithout a client certificate:");
    match client(None)?.connect(&addr.to_string()).await {
        Ok(conn) => match conn.root().await {
            Ok(_) => println!("  unexpectedly connected"),
            Err(e) => println!("  refused: {e}"),
        },
        Err(e) => println!("  refused: {e}"),
    }

    stop.shutdown();
    Ok(())
}

/// The exception line a Python user sees (`ZeroDivisionError: …`).
fn first_line(e: &rpyc::Error) -> String {
    match e.exception() {
        Some(exc) => format!("{}: {}", exc.qualified_name(), exc.message()),
        None => e.to_string(),
    }
}
