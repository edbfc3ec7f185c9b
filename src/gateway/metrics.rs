//! Counters in the Prometheus text format, the audit trail, and the small
//! HTTP endpoint that serves `/metrics` and `/healthz`.
//!
//! Everything is a fixed set of atomics (no label grows with peer-chosen
//! values), so a hostile client cannot make the metrics grow.

use crate::wire::Handler;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Latency histogram bucket bounds, in seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Denial reasons, as [`super::policy::Denial::reason`] names them.
const REASONS: [&str; 12] = [
    "handler",
    "member",
    "introspection",
    "deny_names",
    "root_deny",
    "classic",
    "root_allow",
    "object",
    "callbacks",
    "malformed",
    "limit",
    "draining",
];

/// The gateway's counters.
#[derive(Default)]
pub(crate) struct Metrics {
    pub connections_total: AtomicU64,
    pub connections_active: AtomicU64,
    pub auth_failures: AtomicU64,
    pub refused_connections: AtomicU64,
    pub upstream_failures: AtomicU64,
    pub callbacks: AtomicU64,
    /// [handler id][0 = allowed, 1 = denied]; index 0 = unparsable requests.
    requests: [[AtomicU64; 2]; 21],
    denials: [AtomicU64; REASONS.len()],
    /// Counts per bucket (not cumulative), then +Inf.
    latency: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of latencies in microseconds.
    latency_sum_us: AtomicU64,
}

impl Metrics {
    pub fn allowed(&self, h: Handler) {
        self.requests[usize::from(h as u8)][0].fetch_add(1, Ordering::Relaxed);
    }

    pub fn denied(&self, h: Option<Handler>, reason: &str) {
        self.requests[h.map_or(0, |h| usize::from(h as u8))][1].fetch_add(1, Ordering::Relaxed);
        if let Some(i) = REASONS.iter().position(|r| *r == reason) {
            self.denials[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn observe(&self, latency: Duration) {
        let secs = latency.as_secs_f64();
        let i = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::new();
        let mut counter = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        counter(
            "rpyc_gateway_connections_total",
            "Client connections accepted.",
            "counter",
            get(&self.connections_total),
        );
        counter(
            "rpyc_gateway_connections_active",
            "Client connections open now.",
            "gauge",
            get(&self.connections_active),
        );
        counter(
            "rpyc_gateway_auth_failures_total",
            "Connections refused by the handshake or authenticator.",
            "counter",
            get(&self.auth_failures),
        );
        counter(
            "rpyc_gateway_refused_connections_total",
            "Connections refused by connection limits or for lack of a route.",
            "counter",
            get(&self.refused_connections),
        );
        counter(
            "rpyc_gateway_upstream_failures_total",
            "Upstream connections that failed or ended while the client was connected.",
            "counter",
            get(&self.upstream_failures),
        );
        counter(
            "rpyc_gateway_callbacks_total",
            "Requests from upstreams to clients (callbacks) forwarded.",
            "counter",
            get(&self.callbacks),
        );
        let _ = writeln!(s, "# HELP rpyc_gateway_requests_total Client requests by handler and decision.");
        let _ = writeln!(s, "# TYPE rpyc_gateway_requests_total counter");
        for (id, pair) in self.requests.iter().enumerate() {
            let name = i64::try_from(id).ok().and_then(Handler::from_id).map_or("INVALID", Handler::name);
            for (j, decision) in ["allowed", "denied"].iter().enumerate() {
                let v = get(&pair[j]);
                if v > 0 {
                    let _ =
                        writeln!(s, "rpyc_gateway_requests_total{{handler=\"{name}\",decision=\"{decision}\"}} {v}");
                }
            }
        }
        let _ = writeln!(s, "# HELP rpyc_gateway_denials_total Denied client requests by reason.");
        let _ = writeln!(s, "# TYPE rpyc_gateway_denials_total counter");
        for (reason, v) in REASONS.iter().zip(&self.denials) {
            let _ = writeln!(s, "rpyc_gateway_denials_total{{reason=\"{reason}\"}} {}", get(v));
        }
        let _ =
            writeln!(s, "# HELP rpyc_gateway_request_duration_seconds Time from forwarding a request to its reply.");
        let _ = writeln!(s, "# TYPE rpyc_gateway_request_duration_seconds histogram");
        let mut cumulative = 0;
        for (bound, v) in BUCKETS.iter().zip(&self.latency) {
            cumulative += get(v);
            let _ = writeln!(s, "rpyc_gateway_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.latency.last().map_or(0, get);
        let _ = writeln!(s, "rpyc_gateway_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = get(&self.latency_sum_us) as f64 / 1e6;
        let _ = writeln!(s, "rpyc_gateway_request_duration_seconds_sum {sum}");
        let _ = writeln!(s, "rpyc_gateway_request_duration_seconds_count {cumulative}");
        s
    }
}

/// One audit record: a client request and what became of it.
pub(crate) struct AuditRecord<'a> {
    pub conn: u64,
    pub identity: &'a str,
    pub peer: &'a str,
    pub upstream: &'a str,
    pub handler: &'a str,
    pub name: Option<&'a str>,
    pub seq: i64,
    /// `allowed` or `denied`.
    pub decision: &'static str,
    /// Why it was denied, or how an allowed request ended: `reply`,
    /// `exception`, `aborted` (the upstream or the client went away first).
    pub outcome: &'a str,
    pub latency: Duration,
}

/// Where audit records go.
pub(crate) enum AuditSink {
    /// Tracing events (target `rpyc::gateway::audit`, level info).
    Tracing,
    /// One JSON object per line.
    Json(Mutex<Box<dyn std::io::Write + Send>>),
}

impl AuditSink {
    pub fn record(&self, r: &AuditRecord<'_>) {
        match self {
            AuditSink::Tracing => tracing::info!(
                target: "rpyc::gateway::audit",
                conn = r.conn,
                identity = r.identity,
                peer = r.peer,
                upstream = r.upstream,
                handler = r.handler,
                name = r.name.unwrap_or("-"),
                seq = r.seq,
                decision = r.decision,
                outcome = r.outcome,
                latency_us = u64::try_from(r.latency.as_micros()).unwrap_or(u64::MAX),
                "request"
            ),
            AuditSink::Json(w) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                let mut line = audit_line(r, now);
                line.push('\n');
                let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = w.write_all(line.as_bytes()).and_then(|()| w.flush()) {
                    tracing::warn!(error = %e, "cannot write the audit log");
                }
            }
        }
    }
}

/// One audit record as a line of JSON (without the newline), fields in
/// this order: `ts` (seconds since the epoch, microsecond precision),
/// `conn`, `identity`, `peer`, `upstream`, `handler`, `name` (null when
/// the request names no member), `seq`, `decision`, `outcome`,
/// `latency_us`.
fn audit_line(r: &AuditRecord<'_>, now: f64) -> String {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        ts: f64,
        conn: u64,
        identity: &'a str,
        peer: &'a str,
        upstream: &'a str,
        handler: &'a str,
        name: Option<&'a str>,
        seq: i64,
        decision: &'a str,
        outcome: &'a str,
        latency_us: u64,
    }
    let line = Line {
        ts: (now * 1e6).round() / 1e6,
        conn: r.conn,
        identity: r.identity,
        peer: r.peer,
        upstream: r.upstream,
        handler: r.handler,
        name: r.name,
        seq: r.seq,
        decision: r.decision,
        outcome: r.outcome,
        latency_us: u64::try_from(r.latency.as_micros()).unwrap_or(u64::MAX),
    };
    // Plain strings and numbers: serializing them cannot fail.
    serde_json::to_string(&line).unwrap_or_default()
}

/// Serves `GET /metrics` (Prometheus text) and `GET /healthz` (`ok`, or
/// 503 with the reason: shutdown began, or a routed upstream has no
/// healthy server) until the task is aborted. One short request per
/// connection; anything else gets 404.
pub(crate) async fn serve_http(listener: tokio::net::TcpListener, shared: Arc<super::Shared>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                    let n = sock.read(&mut chunk).await.ok()?;
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(chunk.get(..n)?);
                }
                Some(())
            })
            .await;
            if !matches!(read, Ok(Some(()))) {
                return;
            }
            let line = String::from_utf8_lossy(&buf);
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let (status, ctype, body) = match path {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", shared.metrics_text()),
                "/healthz" | "/health" => match shared.unhealthy() {
                    Some(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
                    None => ("200 OK", "text/plain", "ok\n".into()),
                },
                _ => ("404 Not Found", "text/plain", "not found: try /metrics or /healthz\n".into()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_families() {
        let m = Metrics::default();
        m.allowed(Handler::GetAttr);
        m.denied(Some(Handler::Pickle), "handler");
        m.observe(Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("rpyc_gateway_requests_total{handler=\"GETATTR\",decision=\"allowed\"} 1"), "{text}");
        assert!(text.contains("rpyc_gateway_denials_total{reason=\"handler\"} 1"), "{text}");
        assert!(text.contains("rpyc_gateway_request_duration_seconds_bucket{le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("rpyc_gateway_request_duration_seconds_count 1"), "{text}");
        let record = AuditRecord {
            conn: 7,
            identity: "a\"b\n\u{1}",
            peer: "127.0.0.1:1",
            upstream: "up",
            handler: "GETATTR",
            name: None,
            seq: 3,
            decision: "allowed",
            outcome: "reply",
            latency: Duration::from_micros(42),
        };
        assert_eq!(
            audit_line(&record, 1.5),
            r#"{"ts":1.5,"conn":7,"identity":"a\"b\n\u0001","peer":"127.0.0.1:1","upstream":"up","handler":"GETATTR","name":null,"seq":3,"decision":"allowed","outcome":"reply","latency_us":42}"#
        );
    }
}
