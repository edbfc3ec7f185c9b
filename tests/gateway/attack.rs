//! The gateway attacked, with an oracle: real Python rpyc 6.0.2 servers
//! (`audited_server.py`) record every `exec`, `compile`, `import`, `open`,
//! `os.system`, `subprocess.Popen`, `os.exec*` … audit event after startup;
//! a restricted identity drives them through the gateway with the known
//! attacks and a randomized attacker (`gateway_attacker.py`), and the record
//! must stay empty while allowed calls keep working.
//!
//! `RPYC_ATTACK_REQUESTS` sets the randomized requests per scenario
//! (default 35,000: over 100,000 per run); `scripts/attack.sh` runs longer.

use crate::*;
use rpyc::Object;

/// A Python server recording audit events to a file.
struct Audited {
    _child: common::ChildGuard,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Audited {
    async fn start(kind: &'static str) -> Audited {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let log2 = log.clone();
        let (child, port) = blocking(move || {
            let mut cmd = Command::new(common::python6());
            cmd.arg(common::script("audited_server.py")).args(["--kind", kind, "--audit"]).arg(&log2);
            let child = common::spawn(cmd);
            let port: u16 = child.wait_line("PORT ", STEP).parse().unwrap();
            (child, port)
        })
        .await;
        Audited { _child: child, port, log, _dir: dir }
    }

    /// What the server recorded since it started listening.
    fn events(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_silent(&self, after: &str) {
        let events = self.events();
        assert!(events.is_empty(), "the upstream ran or loaded code after {after}:\n{events}");
    }
}

fn requests() -> usize {
    std::env::var("RPYC_ATTACK_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(35_000)
}

/// How long one scenario may take: generous for a loaded 2-core machine
/// (the attacker does thousands of requests per second).
fn budget() -> Duration {
    Duration::from_secs(300 + requests() as u64 / 50)
}

/// Runs the attacker as `who`; returns its output (it must finish cleanly).
async fn attack(gw: &Gw, pki: &Pki, who: &str, legit: [&str; 2]) -> String {
    let d = pki.dir.path().to_path_buf();
    let port = gw.addr.port().to_string();
    let (who, legit) = (who.to_string(), legit.map(str::to_string));
    let (ok, out) = blocking(move || {
        let mut cmd = Command::new(common::python6());
        cmd.arg(common::script("gateway_attacker.py"))
            .args(["--port", &port, "--requests", &requests().to_string(), "--legit", &legit[0], &legit[1]])
            .arg("--cert")
            .arg(d.join(format!("{who}.pem")))
            .arg("--key")
            .arg(d.join(format!("{who}.key")))
            .arg("--ca")
            .arg(d.join("ca.pem"));
        common::run_with_timeout(cmd, budget())
    })
    .await;
    assert!(ok, "the attacker failed:\n{out}");
    for known in ["ctxexit-own", "format-value", "callback-exception", "getattr-eval", "getattr-__class__", "forged-id"]
    {
        let line = out.lines().find(|l| l.split_whitespace().nth(1) == Some(known));
        assert!(line.is_some_and(|l| l.starts_with("REFUSED")), "{known} was not refused:\n{out}");
    }
    let summary = out.lines().find(|l| l.starts_with("REQUESTS ")).unwrap_or_else(|| panic!("no summary:\n{out}"));
    let fields: Vec<&str> = summary.split_whitespace().collect();
    let sent: usize = fields[1].parse().unwrap();
    assert!(sent >= requests(), "{summary}");
    let (ok, tried) = fields[5].split_once('/').unwrap();
    assert!(tried != "0" && ok == tried, "allowed calls failed during the attack: {summary}\n{out}");
    out
}

/// Starts `kind` behind a gateway with `policy`, attacks it as bob while
/// checking `legit` (a root method and its result), and requires silence.
async fn scenario(kind: &'static str, policy: &str, legit: [&str; 2]) {
    tokio::time::timeout(budget(), async {
        let pki = Pki::new();
        let server = Audited::start(kind).await;
        let upstream = format!("tcp://127.0.0.1:{}", server.port);
        let gw = start_gateway(&config_text(&pki, &upstream, policy), pki.dir.path()).await;
        attack(&gw, &pki, "bob", legit).await;
        server.assert_silent(&format!("the attack on the {kind} server"));
    })
    .await
    .unwrap_or_else(|_| panic!("the {kind} scenario took longer than {:?}", budget()));
}

/// `rpyc_classic`'s service (`rpyc.SlaveService`) — remote code execution
/// by design — behind the default policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_server_default_policy() {
    scenario("classic", "", ["get_service_name", "SLAVE"]).await;
}

/// `rpyc.utils.classic.SlaveService` (ClassicService), which calls the
/// client while connecting — so the identity has `callbacks`, and every
/// reply the attacker sends to the server's requests is hostile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_service_with_callbacks() {
    scenario("classic-service", "[policy.default]\ncallbacks = true\n", ["get_service_name", "CLASSIC"]).await;
}

const PUBLIC_POLICY: &str =
    "[policy.default]\nroot_allow = [\"add\", \"get_report\", \"call_back\"]\ncallbacks = true\n\
                             [policy.default.objects]\nReport = [\"title\", \"pages\", \"__len__\"]\n";

/// A careless service (`allow_public_attrs=True`) behind `root_allow`,
/// with callbacks and one class's members granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_attrs_service_behind_grants() {
    scenario("public", PUBLIC_POLICY, ["add", "5"]).await;
}

/// What the grants allow works for a real Python client, and what they do
/// not is refused — on the same objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granted_members_work_and_nothing_else() {
    bounded(async {
        let pki = Pki::new();
        let server = Audited::start("public").await;
        let gw = start_gateway(
            &config_text(&pki, &format!("tcp://127.0.0.1:{}", server.port), PUBLIC_POLICY),
            pki.dir.path(),
        )
        .await;
        const CLIENT: &str = r#"
import sys, rpyc
port, d = int(sys.argv[1]), sys.argv[2]
c = rpyc.ssl_connect("127.0.0.1", port, keyfile=d + "/bob.key", certfile=d + "/bob.pem", ca_certs=d + "/ca.pem")
r = c.root.get_report()
print("REPORT", r.title, r.pages(), len(r), flush=True)
print("CALLBACK", c.root.call_back(lambda x: x * 2, 21), flush=True)
for label, f in [("token", lambda: r._api_token), ("class", lambda: r.__class__), ("root-token", lambda: c.root._api_token),
                 ("pages-self", lambda: r.pages.__self__), ("format", lambda: "{0._conn}".format(c.root)),
                 ("dict", lambda: r.__dict__)]:
    try:
        print("ALLOWED", label, f(), flush=True)
    except Exception as e:
        print("DENIED", label, type(e).__name__, flush=True)
"#;
        let (ok, out) =
            python(CLIENT, vec![gw.addr.port().to_string(), pki.dir.path().display().to_string()]).await;
        assert!(ok, "{out}");
        assert_lines(
            &out,
            &[
                "REPORT quarterly 12 3",
                "CALLBACK 42",
                "DENIED token AttributeError",
                "DENIED root-token AttributeError",
                "DENIED pages-self AttributeError",
                "DENIED dict AttributeError",
            ],
        );
        // `r.__class__` is answered locally by the netref; str.format runs on
        // the client. Neither may reach the server's internals.
        assert!(!out.contains("secret-token") && !out.contains("_config"), "{out}");
        server.assert_silent("legitimate use");
    })
    .await;
}

/// A reference obtained under `classic` stops working when a reload takes
/// classic away — and so does everything obtained through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_grants_revoke_held_references() {
    bounded(async {
        let pki = Pki::new();
        let server = Audited::start("classic").await;
        let upstream = format!("tcp://127.0.0.1:{}", server.port);
        let admin = "[policy.policies.admin]\nclassic = true\n[policy.identities]\nalice = \"admin\"\n";
        let gw = start_gateway(&config_text(&pki, &upstream, admin), pki.dir.path()).await;
        let conn = rust_client(&gw, &pki, "alice").await;
        let root = step("root", conn.root()).await.unwrap();
        let eval = match step("getattr", root.getattr("eval")).await.unwrap() {
            Object::Remote(n) => n,
            other => panic!("eval is {other:?}"),
        };
        let n: i64 = step("eval", eval.call(("6*7",))).await.unwrap().extract().unwrap();
        assert_eq!(n, 42);
        // Classic use does run code: the oracle sees it.
        assert!(server.events().contains("compile"), "{}", server.events());
        std::fs::write(&server.log, "").unwrap();

        let demoted = GatewayConfig::from_toml(&config_text(&pki, &upstream, ""), pki.dir.path()).unwrap();
        gw.handle.reload(demoted).unwrap();
        let err = step("eval after reload", eval.call(("__import__('os').getuid()",))).await.unwrap_err();
        assert!(err.to_string().contains("PermissionError"), "{err}");
        let err = step("getattr after reload", root.getattr("eval")).await.unwrap_err();
        assert!(err.to_string().contains("cannot access 'eval'"), "{err}");
        // The connection itself is fine: the root's public methods work.
        let name: String = step("call", root.call_method("get_service_name", ())).await.unwrap();
        assert_eq!(name, "SLAVE");
        server.assert_silent("the reload that revoked classic rights");
    })
    .await;
}
