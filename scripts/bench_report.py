#!/usr/bin/env python3
"""Summarises the JSON lines of scripts/bench.sh: medians over the runs,
the ratios BENCHMARKS.md reports, and each target met or missed.

    python3 scripts/bench_report.py target/bench/results.jsonl [--markdown]

Standard library only.
"""
import json
import statistics
import sys
from collections import defaultdict


def load(path):
    vals = defaultdict(list)
    for line in open(path):
        line = line.strip()
        if not line:
            continue
        r = json.loads(line)
        if r.get("value") is None:
            continue
        vals[(r["client"], r["server"], r["transport"], r["metric"])].append(r["value"])
    return {k: (statistics.median(v), min(v), max(v), len(v)) for k, v in vals.items()}


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    markdown = "--markdown" in sys.argv
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    m = load(args[0])

    def get(c, s, t, metric):
        v = m.get((c, s, t, metric))
        return v[0] if v else None

    def spread(c, s, t, metric):
        v = m.get((c, s, t, metric))
        if not v or not v[0]:
            return ""
        return f"±{(v[2] - v[1]) / 2 / v[0] * 100:.0f}%" if v[3] > 1 else ""

    sep = " | " if markdown else "  "

    def row(cells, widths):
        if markdown:
            return "| " + " | ".join(str(c) for c in cells) + " |"
        return sep.join(str(c).ljust(w) for c, w in zip(cells, widths))

    def fmt(x, d=1):
        if x is None:
            return "—"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{d}f}"

    # Targets.
    targets = []

    def target(name, num, den, op, limit, unit="×"):
        if num is None or den is None or den == 0:
            targets.append((name, None, op, limit, "not measured"))
            return
        ratio = num / den
        ok = ratio <= limit if op == "<=" else ratio >= limit
        targets.append((name, ratio, op, limit, "met" if ok else "MISSED"))

    target("Rust→Rust add p50 / raw TCP ping-pong p50", get("rust", "rust", "tcp", "add_p50_us"),
           get("raw", "raw", "tcp", "pingpong_p50_us"), "<=", 2.0)
    target("Rust→Rust pipelined calls/s / raw TCP pipelined msgs/s", get("rust", "rust", "tcp", "pipelined_calls_per_s"),
           get("raw", "raw", "tcp", "pipelined_msgs_per_s"), ">=", 1.0)
    target("Rust↔Rust 16 MiB echo / raw TCP 16 MiB echo", get("rust", "rust", "tcp", "echo_16m_mib_s"),
           get("raw", "raw", "tcp", "echo_16m_mib_s"), ">=", 0.4)
    target("Rust↔Rust 16 MiB echo over mTLS / raw TLS 16 MiB echo", get("rust", "rust", "tls", "echo_16m_mib_s"),
           get("raw", "raw", "tls", "echo_16m_mib_s"), ">=", 0.4)
    target("Rust mTLS connect+first call / raw rustls mTLS connect+ping-pong",
           get("rust", "rust", "tls", "connect_first_call_p50_us"), get("raw", "raw", "tls", "connect_pingpong_p50_us"),
           "<=", 2.0)
    target("Python→Rust add p50 / Python→Python add p50", get("python", "rust", "tcp", "add_p50_us"),
           get("python", "python", "tcp", "add_p50_us"), "<=", 0.6)
    target("Python→Rust 64 KiB echo / Python→Python 64 KiB echo", get("python", "rust", "tcp", "echo_64k_mib_s"),
           get("python", "python", "tcp", "echo_64k_mib_s"), ">=", 10.0)
    idle = [k for k in m if k[3].startswith("idle") and k[3].endswith("_kib_per_conn")]
    for k in idle:
        n = k[3][4:-len("_kib_per_conn")]
        targets.append((f"server memory per idle connection ({n} held), KiB", m[k][0], "<=", 64,
                        "met" if m[k][0] <= 64 else "MISSED"))
        mx = m.get((k[0], k[1], k[2], f"idle{n}_new_client_first_call_max_us"))
        if mx:
            targets.append((f"new client's connect+first call with {n} idle held (max), ms", mx[0] / 1000, "<=", 10,
                            "met" if mx[0] < 10000 else "MISSED"))
    g = get("rust", "rust", "tcp", "netref_cycles_rss_growth_pct")
    if g is not None:
        targets.append(("server memory growth over the netref cycles, %", g, "<=", 10, "met" if g <= 10 else "MISSED"))

    print("Targets (medians over the runs):")
    widths = [64, 10, 10, 8]
    print(row(["target", "measured", "limit", "result"], widths))
    if markdown:
        print("|---|---|---|---|")
    for name, ratio, op, limit, res in targets:
        print(row([name, fmt(ratio, 2), f"{op} {limit}", res], widths))
    print()

    # Ratio tables.
    metrics_rpc = [
        ("add_p50_us", "pingpong_p50_us", "lower"),
        ("add_p99_us", "pingpong_p99_us", "lower"),
        ("add_calls_per_s", "pingpong_per_s", "higher"),
        ("conns1_calls_per_s", None, "higher"),
        ("conns4_calls_per_s", None, "higher"),
        ("conns16_calls_per_s", None, "higher"),
        ("pipelined_calls_per_s", "pipelined_msgs_per_s", "higher"),
        ("echo_1k_mib_s", "echo_1k_mib_s", "higher"),
        ("echo_64k_mib_s", "echo_64k_mib_s", "higher"),
        ("echo_1m_mib_s", "echo_1m_mib_s", "higher"),
        ("echo_16m_mib_s", "echo_16m_mib_s", "higher"),
        ("netref_ops_per_s", None, "higher"),
        ("callback_rt_per_s", "pingpong_per_s", "higher"),
        ("connect_first_call_p50_us", "connect_pingpong_p50_us", "lower"),
    ]
    for t in ("tcp", "tls"):
        print(f"Over {t.upper()}: Rust→Rust against the raw limit; Python→Rust and Rust→Python against Python→Python")
        head = ["metric", "raw", "Rust→Rust", "÷ raw", "Py→Py", "Py→Rust", "÷ Py→Py", "Rust→Py", "÷ Py→Py"]
        widths = [26, 10, 10, 7, 10, 10, 8, 10, 8]
        print(row(head, widths))
        if markdown:
            print("|" + "---|" * len(head))
        for metric, raw_metric, _better in metrics_rpc:
            raw = get("raw", "raw", t, raw_metric) if raw_metric else None
            rr = get("rust", "rust", t, metric)
            pp = get("python", "python", t, metric)
            pr = get("python", "rust", t, metric)
            rp = get("rust", "python", t, metric)
            if all(x is None for x in (rr, pp, pr, rp)):
                continue

            def ratio(a, b):
                return f"{a / b:.2f}" if a is not None and b else "—"

            print(row([metric, fmt(raw), fmt(rr) + spread("rust", "rust", t, metric), ratio(rr, raw), fmt(pp),
                       fmt(pr), ratio(pr, pp), fmt(rp), ratio(rp, pp)], widths))
        print()

    other = sorted(k for k in m if k[3].startswith(("idle", "netref_cycles")) or k[0] == "raw")
    if other:
        print("Raw limit and memory figures (median, min–max):")
        for k in other:
            med, lo, hi, n = m[k]
            print(f"  {k[0]:<5} {k[2]:<4} {k[3]:<40} {fmt(med, 2):>12}   ({fmt(lo, 2)} – {fmt(hi, 2)}, n={n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
