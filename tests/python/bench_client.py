#!/usr/bin/env python3
"""The Python load generator of the performance harness (see BENCHMARKS.md).

Measures a server that serves BENCH (``examples/bench_server.rs`` or
``tests/python/bench_server.py``) exactly as ``examples/bench_client.rs``
does from Rust, with the same metric names:

    add_p50_us, add_p99_us, add_calls_per_s      sync root.add(5, 10)
    conns{1,4,16}_calls_per_s                    K connections, one thread each
    pipelined_calls_per_s                        rpyc.async_ with --window in flight
    echo_{1k,64k,1m,16m}_mib_s                   echo(os.urandom(size))
    netref_ops_per_s                             make_counter(), incr(), drop
    callback_rt_per_s                            callback(f, 1000)
    connect_first_call_p50_us                    connect + root.add(5, 10)

    bench_client.py --port P [--host H] [--ssl-key F --ssl-cert F --ssl-ca F]
                    [--secs S] [--only add,conns,...] [--server-kind rust|python]
                    [--run LABEL] [--json FILE]

Prints a table on stdout and appends JSON lines to --json.  Needs only rpyc
and the standard library.
"""
import argparse
import collections
import gc
import json
import os
import sys
import threading
import time

import rpyc

CONFIG = {"sync_request_timeout": 300}


def pct_us(sorted_ns, p):
    if not sorted_ns:
        return float("nan")
    i = round((len(sorted_ns) - 1) * p)
    return sorted_ns[i] / 1000.0


def size_name(n):
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}m"
    if n >= 1024 and n % 1024 == 0:
        return f"{n >> 10}k"
    return f"{n}b"


class Report:
    def __init__(self, args):
        self.args = args
        self.transport = "tls" if args.ssl_key else "tcp"
        self.out = open(args.json, "a") if args.json else None

    def emit(self, metric, value, unit):
        print(f"{'python':<6} {self.args.server_kind:<7} {self.transport:<6} {metric:<34} {value:>14.2f} {unit}", flush=True)
        if self.out:
            line = {
                "run": self.args.run,
                "client": "python",
                "server": self.args.server_kind,
                "transport": self.transport,
                "metric": metric,
                "value": round(value, 3) if value == value else None,
                "unit": unit,
            }
            self.out.write(json.dumps(line) + "\n")
            self.out.flush()


def connect(args):
    if args.ssl_key:
        return rpyc.ssl_connect(
            args.host, args.port, keyfile=args.ssl_key, certfile=args.ssl_cert, ca_certs=args.ssl_ca, config=CONFIG
        )
    return rpyc.connect(args.host, args.port, config=CONFIG)


def check_add(root):
    if root.add(5, 10) != 15:
        raise AssertionError("add(5, 10) != 15")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ssl-key")
    p.add_argument("--ssl-cert")
    p.add_argument("--ssl-ca")
    p.add_argument("--secs", type=float, default=2.0)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--echo-sizes", default=f"1024,65536,{1 << 20},{16 << 20}")
    p.add_argument("--only", default="")
    p.add_argument("--server-kind", default="rust")
    p.add_argument("--run", default="")
    p.add_argument("--json")
    args = p.parse_args()
    only = [o for o in args.only.split(",") if o]
    want = lambda name: not only or name in only  # noqa: E731
    rep = Report(args)
    secs = args.secs

    conn = connect(args)
    root = conn.root
    for _ in range(200):
        check_add(root)

    if want("add"):
        samples = []
        start = time.perf_counter()
        deadline = start + secs
        while time.perf_counter() < deadline:
            t0 = time.perf_counter_ns()
            check_add(root)
            samples.append(time.perf_counter_ns() - t0)
        rate = len(samples) / (time.perf_counter() - start)
        samples.sort()
        rep.emit("add_p50_us", pct_us(samples, 0.5), "us")
        rep.emit("add_p99_us", pct_us(samples, 0.99), "us")
        rep.emit("add_calls_per_s", rate, "calls/s")

    if want("conns"):
        for k in (1, 4, 16):
            conns = [connect(args) for _ in range(k)]
            roots = [c.root for c in conns]
            counts = [0] * k
            stop = threading.Event()

            def loop(i):
                r = roots[i]
                n = 0
                while not stop.is_set():
                    check_add(r)
                    n += 1
                counts[i] = n

            threads = [threading.Thread(target=loop, args=(i,)) for i in range(k)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            time.sleep(secs)
            stop.set()
            for t in threads:
                t.join()
            rep.emit(f"conns{k}_calls_per_s", sum(counts) / (time.perf_counter() - start), "calls/s")
            for c in conns:
                c.close()

    if want("pipelined"):
        aadd = rpyc.async_(root.add)
        inflight = collections.deque()
        done = 0
        start = time.perf_counter()
        deadline = start + secs
        while time.perf_counter() < deadline:
            while len(inflight) < args.window:
                inflight.append(aadd(5, 10))
            if inflight.popleft().value != 15:
                raise AssertionError("async add(5, 10) != 15")
            done += 1
        elapsed = time.perf_counter() - start
        for r in inflight:
            r.wait()
        rep.emit("pipelined_calls_per_s", done / elapsed, "calls/s")

    if want("echo"):
        for size in [int(s) for s in args.echo_sizes.split(",") if s]:
            data = os.urandom(size)
            if root.echo(data) != data:
                raise AssertionError("echo mismatch")
            iters = 0
            start = time.perf_counter()
            while iters < 3 or time.perf_counter() - start < secs:
                back = root.echo(data)
                if len(back) != size:
                    raise AssertionError("echo returned a different size")
                iters += 1
            elapsed = time.perf_counter() - start
            rep.emit(f"echo_{size_name(size)}_mib_s", size * iters / (1 << 20) / elapsed, "MiB/s")

    if want("netref"):
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < secs:
            c = root.make_counter()
            if c.incr() != 1:
                raise AssertionError("counter.incr() != 1")
            del c
            n += 1
        rep.emit("netref_ops_per_s", n / (time.perf_counter() - start), "ops/s")

    if want("callback"):
        def f(i):
            return None

        root.callback(f, 100)
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < secs:
            n += root.callback(f, 1000)
        rep.emit("callback_rt_per_s", n / (time.perf_counter() - start), "round trips/s")

    del root
    conn.close()
    gc.collect()

    if want("connect"):
        samples = []
        start = time.perf_counter()
        while len(samples) < 5 or (time.perf_counter() - start < secs and len(samples) < 2000):
            t0 = time.perf_counter_ns()
            c = connect(args)
            check_add(c.root)
            samples.append(time.perf_counter_ns() - t0)
            c.close()
        samples.sort()
        rep.emit("connect_first_call_p50_us", pct_us(samples, 0.5), "us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
