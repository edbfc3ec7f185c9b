//! Workload identities: the client certificate's URI SAN (a SPIFFE ID) or
//! DNS SAN as the identity, in routes, policies and `allow`, with Python
//! rpyc 6.0.2 servers behind; certificates that carry none or several are
//! refused; short-lived certificates and a CA rotated on disk are picked up
//! without a restart.

use crate::*;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use rpyc::certs::{CertKeyPem, DevCa};
use rpyc::transport::tls::TlsIdentity;

const ADMIN: &str = "spiffe://example.org/ns/ops/sa/admin";
const BILLING: &str = "spiffe://example.org/ns/prod/sa/billing";

/// A client certificate signed by `ca`, valid from a minute ago for
/// `valid`, with an optional CN and the given URI and DNS SANs.
fn workload_cert(ca: &DevCa, cn: Option<&str>, uris: &[&str], dns: &[&str], valid: Duration) -> CertKeyPem {
    let key = KeyPair::from_pem(&ca.pem().key_pem).unwrap();
    let issuer = Issuer::from_ca_cert_pem(ca.cert_pem(), key).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    if let Some(cn) = cn {
        params.distinguished_name.push(DnType::CommonName, cn);
    }
    for u in uris {
        params.subject_alt_names.push(SanType::URI((*u).try_into().unwrap()));
    }
    for d in dns {
        params.subject_alt_names.push(SanType::DnsName((*d).try_into().unwrap()));
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + (now - Duration::from_secs(60));
    params.not_after = epoch + (now + valid);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    CertKeyPem { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
}

/// A year, for certificates whose lifetime does not matter here.
const YEAR: Duration = Duration::from_secs(365 * 86_400);

fn client_config(trust: &DevCa, cert: &CertKeyPem) -> TlsClientConfig {
    TlsClientConfig::new()
        .with_ca_pem(trust.cert_pem().as_bytes())
        .unwrap()
        .with_identity(TlsIdentity::from_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap())
}

async fn connect(gw: &Gw, config: TlsClientConfig) -> rpyc::Result<Connection> {
    ClientBuilder::new().tls(config).timeout(STEP).connect(&gw.addr.to_string()).await
}

/// Connects and calls `get_service_name`: the upstream's answer, or the
/// error of the connect or (TLS 1.3 refusals arrive late) of the call.
async fn service_name(gw: &Gw, config: TlsClientConfig) -> rpyc::Result<String> {
    step("connect and call", async {
        let conn = connect(gw, config).await?;
        let name = conn.root().await?.call_method("get_service_name", ()).await;
        conn.close().await;
        name
    })
    .await
}

/// Server certificate, key and client CA of `ca`, written (atomically, as
/// cert-manager and spiffe-helper do) where a listener reads them.
fn install(dir: &Path, ca: &DevCa) {
    let server = ca.server_cert(&[]).unwrap();
    for (file, text) in
        [("server.key", &server.key_pem), ("server.pem", &server.cert_pem), ("ca.pem", &ca.pem().cert_pem)]
    {
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(file)).unwrap();
    }
}

fn listener(dir: &Path, extra: &str) -> String {
    format!(
        "[[listen]]\nurl = \"tls://127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n{extra}\n",
        dir.join("server.pem").display().to_string(),
        dir.join("server.key").display().to_string(),
        dir.join("ca.pem").display().to_string()
    )
}

fn audit_identities(audit: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(audit).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split("\"identity\":\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
}

fn auth_failures(gw: &Gw) -> u64 {
    let text = gw.handle.metrics_text();
    text.lines()
        .find_map(|l| l.strip_prefix("rpyc_gateway_auth_failures_total ").and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no auth failure count in\n{text}"))
}

async fn python_server(kind: &'static str) -> (common::ChildGuard, u16) {
    blocking(move || common::python_server(&common::python6(), &["--kind", kind])).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_ids_choose_routes_policies_and_listeners() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate().unwrap();
        install(dir.path(), &ca);
        let (_classic, classic_port) = python_server("classic").await;
        let (_service, service_port) = python_server("service").await;
        let audit = dir.path().join("audit.jsonl");
        let text = format!(
            "{}\n[upstream.classic]\nurl = \"tcp://127.0.0.1:{classic_port}\"\n[upstream.svc]\nurl = \"tcp://127.0.0.1:{service_port}\"\n\
             [[route]]\nidentities = [{ADMIN:?}]\nupstream = \"classic\"\n[[route]]\nupstream = \"svc\"\n\
             [policy.policies.admin]\nclassic = true\n[policy.identities]\n{ADMIN:?} = \"admin\"\n\
             [audit]\nformat = \"json\"\nfile = {:?}\n",
            listener(dir.path(), &format!("identity_from = \"uri-san\"\nallow = [{ADMIN:?}, {BILLING:?}]")),
            audit.display().to_string()
        );
        let gw = start_gateway(&text, dir.path()).await;

        // The admin workload (its CN says "billing", which does not count)
        // reaches the classic server with classic rights.
        let admin = workload_cert(&ca, Some("billing"), &[ADMIN], &[], YEAR);
        let conn = step("admin", connect(&gw, client_config(&ca, &admin))).await.unwrap();
        let root = step("root", conn.root()).await.unwrap();
        assert_eq!(step("eval", root.call_method::<i64>("eval", ("6*7",))).await.unwrap(), 42);
        conn.close().await;
        // The billing workload is routed to the plain service, default grant.
        let billing = workload_cert(&ca, None, &[BILLING], &["billing.prod.svc"], YEAR);
        let name = service_name(&gw, client_config(&ca, &billing)).await.unwrap();
        assert_ne!(name, "SLAVE");
        let ids = audit_identities(&audit);
        assert!(ids.iter().any(|i| i == ADMIN) && ids.iter().any(|i| i == BILLING), "{ids:?}");

        // Refused: not in `allow`, no URI SAN (a CN only), two URI SANs.
        let refused = [
            workload_cert(&ca, None, &["spiffe://example.org/ns/dev/sa/intruder"], &[], YEAR),
            workload_cert(&ca, Some(ADMIN), &[], &[], YEAR),
            workload_cert(&ca, None, &[ADMIN, BILLING], &[], YEAR),
        ];
        for (i, cert) in refused.iter().enumerate() {
            let r = service_name(&gw, client_config(&ca, cert)).await;
            assert!(r.is_err(), "certificate {i} was served: {r:?}");
        }
        // The gateway counts a refusal after the client has seen it (TLS 1.3
        // checks the client certificate after the client's handshake ends).
        eventually("auth failures counted", || {
            let n = auth_failures(&gw);
            async move { n == 3 }
        })
        .await;
        assert_eq!(auth_failures(&gw), 3);
        assert!(audit_identities(&audit).iter().all(|i| i == ADMIN || i == BILLING));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_san_identities() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate().unwrap();
        install(dir.path(), &ca);
        let (_server, port) = python_server("classic").await;
        let audit = dir.path().join("audit.jsonl");
        let text = format!(
            "{}\n[upstream.py]\nurl = \"tcp://127.0.0.1:{port}\"\n[policy.policies.ops]\nclassic = true\n\
             [policy.identities]\n\"ops.prod.svc\" = \"ops\"\n[audit]\nformat = \"json\"\nfile = {:?}\n",
            listener(dir.path(), "identity_from = \"dns-san\""),
            audit.display().to_string()
        );
        let gw = start_gateway(&text, dir.path()).await;
        let ops = workload_cert(&ca, Some("alice"), &[BILLING], &["ops.prod.svc"], YEAR);
        let conn = step("ops", connect(&gw, client_config(&ca, &ops))).await.unwrap();
        let root = step("root", conn.root()).await.unwrap();
        assert_eq!(step("eval", root.call_method::<i64>("eval", ("6*7",))).await.unwrap(), 42);
        conn.close().await;
        assert!(audit_identities(&audit).iter().all(|i| i == "ops.prod.svc"), "{:?}", audit_identities(&audit));
        // No DNS SAN, or two: refused.
        for cert in [
            workload_cert(&ca, Some("ops.prod.svc"), &[BILLING], &[], YEAR),
            workload_cert(&ca, None, &[], &["ops.prod.svc", "admin.prod.svc"], YEAR),
        ] {
            assert!(service_name(&gw, client_config(&ca, &cert)).await.is_err());
        }
        // The gateway counts a refusal after the client has seen it (TLS 1.3
        // checks the client certificate after the client's handshake ends).
        eventually("auth failures counted", || {
            let n = auth_failures(&gw);
            async move { n == 2 }
        })
        .await;
        assert_eq!(auth_failures(&gw), 2);
    })
    .await;
}

/// Waits (bounded) until `f` returns true, polling.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + STEP;
    while !f().await {
        assert!(std::time::Instant::now() < deadline, "{what}: not within {STEP:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_ca_rotated_on_disk_without_a_restart() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let old_ca = DevCa::generate().unwrap();
        install(dir.path(), &old_ca);
        let (_server, port) = python_server("classic").await;
        let text = format!("{}\n[upstream.py]\nurl = \"tcp://127.0.0.1:{port}\"\n", listener(dir.path(), ""));
        let gw = start_gateway(&text, dir.path()).await;

        // A client certificate valid for three minutes, as SPIRE hands out.
        let short = workload_cert(&old_ca, Some("alice"), &[], &[], Duration::from_secs(180));
        let held = step("connect", connect(&gw, client_config(&old_ca, &short))).await.unwrap();
        let held_root = step("root", held.root()).await.unwrap();
        let server_fp = |c: &Connection| c.credentials().certificate.as_ref().map(|i| i.sha256_fingerprint.clone());
        let first_fp = server_fp(&held);

        // The server certificate is renewed (same CA): new connections get it.
        install(dir.path(), &old_ca);
        let renewed = workload_cert(&old_ca, Some("alice"), &[], &[], Duration::from_secs(180));
        eventually("the renewed server certificate", || {
            let config = client_config(&old_ca, &renewed);
            let gw = &gw;
            let first_fp = first_fp.clone();
            async move {
                match step("connect", connect(gw, config)).await {
                    Ok(c) => {
                        let changed = server_fp(&c) != first_fp;
                        c.close().await;
                        changed
                    }
                    Err(_) => false,
                }
            }
        })
        .await;

        // The CA is replaced: clients of the new CA get in…
        let new_ca = DevCa::generate().unwrap();
        install(dir.path(), &new_ca);
        let fresh = workload_cert(&new_ca, Some("alice"), &[], &[], Duration::from_secs(180));
        eventually("a client of the new CA", || {
            let config = client_config(&new_ca, &fresh);
            let gw = &gw;
            async move { service_name(gw, config).await.is_ok() }
        })
        .await;
        // …a certificate of the old CA no longer does (it trusts the new
        // server certificate, so the refusal is the gateway's)…
        let r = service_name(&gw, client_config(&new_ca, &renewed)).await;
        assert!(r.is_err(), "a client certificate of the replaced CA was served: {r:?}");
        // …and the connection made before any of it still works.
        let name: String = step("held call", held_root.call_method("get_service_name", ())).await.unwrap();
        assert_eq!(name, "SLAVE");
        held.close().await;

        // A half-written rotation (a certificate whose key is missing)
        // changes nothing: the new CA's clients are still served.
        std::fs::write(dir.path().join("server.key"), "").unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(service_name(&gw, client_config(&new_ca, &fresh)).await.unwrap(), "SLAVE");

        // A FIFO or a device where the CA was (a mistake, or a hostile
        // writer) is refused without reading it: nothing blocks, nothing
        // grows, and the gateway keeps serving with what it has.
        let ca_path = dir.path().join("ca.pem");
        std::fs::remove_file(&ca_path).unwrap();
        let made = Command::new("mkfifo").arg(&ca_path).status().unwrap();
        assert!(made.success());
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(service_name(&gw, client_config(&new_ca, &fresh)).await.unwrap(), "SLAVE");
        std::fs::remove_file(&ca_path).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &ca_path).unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(service_name(&gw, client_config(&new_ca, &fresh)).await.unwrap(), "SLAVE");
        assert!(gw.handle.metrics_text().contains("rpyc_gateway_connections_total"));
    })
    .await;
}

/// `rpyc gateway` and `rpyc serve` with `--proxy-protocol --identity-from
/// uri-san`: a SPIFFE ID behind a PROXY v2 header is the identity, the
/// header's address the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_flags() {
    use rpyc::transport::tls::connect_tls_stream;
    use tokio::io::AsyncWriteExt;
    bounded(async {
        let pki = Pki::new();
        let ca = DevCa::load(pki.dir.path()).unwrap();
        let cert = workload_cert(&ca, Some("alice"), &[BILLING], &[], YEAR);
        let config = client_config(&ca, &cert);
        let (_server, port) = python_server("classic").await;
        let audit = pki.path("audit.jsonl");
        let dir = pki.dir.path().display().to_string();
        let rpyc = |args: Vec<String>| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_rpyc"));
            cmd.args(args);
            common::spawn(cmd)
        };
        let proxied = |url: String, config: TlsClientConfig| async move {
            let addr = url.trim_start_matches("tls://").trim_end_matches('/').to_string();
            let mut tcp = tokio::net::TcpStream::connect(&addr).await?;
            let mut header = b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
            header.extend([198, 51, 100, 20, 127, 0, 0, 1, 0xee, 0x48, 0x01, 0xbb]);
            tcp.write_all(&header).await?;
            let (stream, creds) = connect_tls_stream(tcp, "localhost", &config).await?;
            Ok::<_, rpyc::Error>(ClientBuilder::new().timeout(STEP).start(stream, creds))
        };

        let gateway = rpyc(
            [
                "-q",
                "gateway",
                "--listen",
                "tls://127.0.0.1:0",
                "--tls",
                &dir,
                "--proxy-protocol",
                "--identity-from",
                "uri-san",
                "--audit-file",
                &audit.display().to_string(),
                "--upstream",
                &format!("tcp://127.0.0.1:{port}"),
            ]
            .map(String::from)
            .to_vec(),
        );
        let (gateway, url) = blocking(move || {
            let l = gateway.wait_line("listening ", STEP);
            (gateway, l)
        })
        .await;
        let conn = step("through rpyc gateway", proxied(url, config.clone())).await.unwrap();
        let name: String =
            step("call", async { conn.root().await?.call_method("get_service_name", ()).await }).await.unwrap();
        assert_eq!(name, "SLAVE");
        conn.close().await;
        let text = std::fs::read_to_string(&audit).unwrap();
        assert!(
            text.lines().any(|l| l.contains(&format!("\"identity\":\"{BILLING}\""))
                && l.contains("\"peer\":\"198.51.100.20:61000\"")),
            "{text}"
        );
        drop(gateway);

        let serve = rpyc(
            ["serve", "--port", "0", "--tls", &dir, "--proxy-protocol", "--identity-from", "uri-san"]
                .map(String::from)
                .to_vec(),
        );
        let (_serve, url) = blocking(move || {
            let l = serve.wait_line("listening on ", STEP);
            (serve, l)
        })
        .await;
        let conn = step("through rpyc serve", proxied(url, config)).await.unwrap();
        let who: Option<String> =
            step("whoami", async { conn.root().await?.call_method("whoami", ()).await }).await.unwrap();
        assert_eq!(who.as_deref(), Some(BILLING));
        conn.close().await;
    })
    .await;
}

/// What a certificate cannot pose as: a CN spelled like a SPIFFE ID (URI
/// identities come from URI SANs only), and identities with control
/// characters (they would forge log lines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_cannot_pose_as_other_kinds_of_identity() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate().unwrap();
        install(dir.path(), &ca);
        let (_server, port) = python_server("classic").await;
        let text = format!(
            "{}\n[upstream.py]\nurl = \"tcp://127.0.0.1:{port}\"\n[policy.policies.admin]\nclassic = true\n\
             [policy.identities]\n\"spiffe://example.org/admin\" = \"admin\"\n",
            listener(dir.path(), "")
        );
        let gw = start_gateway(&text, dir.path()).await;
        let posing = workload_cert(&ca, Some("spiffe://example.org/admin"), &[], &[], YEAR);
        assert!(service_name(&gw, client_config(&ca, &posing)).await.is_err(), "a URI-shaped CN was accepted");
        let forging = workload_cert(&ca, Some("bob\nidentity=admin"), &[], &[], YEAR);
        assert!(service_name(&gw, client_config(&ca, &forging)).await.is_err(), "a CN with a newline was accepted");
        let plain = workload_cert(&ca, Some("bob"), &[], &[], YEAR);
        assert_eq!(service_name(&gw, client_config(&ca, &plain)).await.unwrap(), "SLAVE");
        eventually("both refusals counted", || {
            let n = auth_failures(&gw);
            async move { n == 2 }
        })
        .await;
    })
    .await;
}
