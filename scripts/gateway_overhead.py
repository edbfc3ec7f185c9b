#!/usr/bin/env python3
"""Measure what `rpyc gateway` adds: a Python rpyc client calling a Python
rpyc server directly (plain TCP, and SSL with client certificates) against
the same client going through the gateway (mutual TLS in front, plain TCP to
the server on loopback).

    cargo build --release --bin rpyc
    .venv6/bin/python scripts/gateway_overhead.py [--rpyc target/release/rpyc] [--calls 2000]

Everything runs on 127.0.0.1 with ephemeral ports; the servers are
tests/python/run_server.py (PyTestService); certificates are made with
`rpyc certs` in a temporary directory. Prints a Markdown table.

Measured per path:
  connect   time to connect (TCP/TLS handshake) and fetch the root, median
  latency   one `root.add(1, 2)` round trip: median and 99th percentile
  calls/s   sequential `add` calls per second (one connection)
  MB/s      `root.echo(b"x" * 1 MiB)` round trips, counting both directions

With socat installed (`apt-get install socat`), one more path relays plain TCP
through socat: the cost of one more process on the way, with no TLS and no
checks — the floor for any relay on this machine.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import rpyc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_SERVER = os.path.join(ROOT, "tests", "python", "run_server.py")


def start(cmd, prefix):
    """Starts a process and waits for its stdout line starting with prefix."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            return p, line[len(prefix):].strip()
    p.kill()
    raise SystemExit(f"{cmd[0]} did not print {prefix!r}")


def measure(connect, calls, bulk):
    times = []
    for _ in range(20):
        t = time.perf_counter()
        c = connect()
        c.root.get_answer()
        times.append(time.perf_counter() - t)
        c.close()
    connect_ms = statistics.median(times) * 1e3
    c = connect()
    add = c.root.add
    for _ in range(100):  # warm up
        add(1, 2)
    lat = []
    t0 = time.perf_counter()
    for _ in range(calls):
        t = time.perf_counter()
        add(1, 2)
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    lat.sort()
    payload = b"x" * (1 << 20)
    echo = c.root.echo
    echo(payload)
    t = time.perf_counter()
    for _ in range(bulk):
        echo(payload)
    mbps = 2 * bulk * len(payload) / (time.perf_counter() - t) / 1e6
    c.close()
    return {
        "connect_ms": connect_ms,
        "p50_us": lat[len(lat) // 2] * 1e6,
        "p99_us": lat[int(len(lat) * 0.99)] * 1e6,
        "calls_s": calls / total,
        "mb_s": mbps,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rpyc", default=os.path.join(ROOT, "target", "release", "rpyc"),
                    help="the rpyc binary (default: target/release/rpyc)")
    ap.add_argument("--calls", type=int, default=2000, help="sequential calls per path (default 2000)")
    ap.add_argument("--bulk", type=int, default=20, help="1 MiB echo round trips per path (default 20)")
    args = ap.parse_args()
    if not os.path.exists(args.rpyc):
        raise SystemExit(f"{args.rpyc} not found: cargo build --release --bin rpyc")
    procs = []
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([args.rpyc, "certs", "init", "--dir", d], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([args.rpyc, "certs", "client", "bench", "--dir", d], check=True, stdout=subprocess.DEVNULL)
        ca, cert, key = (os.path.join(d, f) for f in ("ca.pem", "bench.pem", "bench.key"))
        try:
            plain, port = start([sys.executable, RUN_SERVER, "--kind", "service"], "PORT ")
            procs.append(plain)
            ssl_srv, ssl_port = start([sys.executable, RUN_SERVER, "--kind", "service",
                                       "--ssl-key", os.path.join(d, "server.key"),
                                       "--ssl-cert", os.path.join(d, "server.pem"), "--ssl-ca", ca], "PORT ")
            procs.append(ssl_srv)
            gw, url = start([args.rpyc, "-q", "gateway", "--listen", "tls://127.0.0.1:0", "--tls", d,
                             "--upstream", f"tcp://127.0.0.1:{port}"], "listening ")
            procs.append(gw)
            gw_port = int(url.rsplit(":", 1)[1])
            socat_port = None
            if shutil.which("socat"):
                import socket
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    socat_port = s.getsockname()[1]
                procs.append(subprocess.Popen(["socat", f"TCP-LISTEN:{socat_port},bind=127.0.0.1,reuseaddr,fork,nodelay",
                                               f"TCP:127.0.0.1:{port},nodelay"]))
                time.sleep(0.5)
            cfg = {"sync_request_timeout": 60}

            def ssl_to(p):
                return lambda: rpyc.ssl_connect("127.0.0.1", p, keyfile=key, certfile=cert, ca_certs=ca, config=cfg)

            paths = [
                ("Python → Python (plain TCP)", lambda: rpyc.connect("127.0.0.1", int(port), config=cfg)),
                ("Python → Python (SSL, client certificate)", ssl_to(int(ssl_port))),
                ("Python → gateway (mTLS) → Python (TCP)", ssl_to(gw_port)),
            ]
            if socat_port:
                paths.append(("Python → socat (TCP relay) → Python (TCP)",
                              lambda: rpyc.connect("127.0.0.1", socat_port, config=cfg)))
            print(f"rpyc {rpyc.__version__}, Python {sys.version.split()[0]}, {args.calls} calls, "
                  f"{args.bulk} x 1 MiB echo, {os.cpu_count()} CPUs\n")
            print("| path | connect (ms) | add p50 (µs) | add p99 (µs) | calls/s | echo MB/s |")
            print("|---|---:|---:|---:|---:|---:|")
            for name, connect in paths:
                r = measure(connect, args.calls, args.bulk)
                print(f"| {name} | {r['connect_ms']:.1f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | "
                      f"{r['calls_s']:.0f} | {r['mb_s']:.0f} |", flush=True)
        finally:
            for p in procs:
                p.kill()
                p.wait()


if __name__ == "__main__":
    main()
