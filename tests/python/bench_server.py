#!/usr/bin/env python3
"""A *Python* rpyc server for the BENCH service of the performance harness.

The same contract as ``examples/bench_server.rs`` (see BENCHMARKS.md):

    noop() -> None
    add(a, b) -> a + b
    echo(x) -> x
    make_counter() -> a Counter with incr() and the attribute ``value``
    callback(f, n) -> calls f(i) for i in range(n), one round trip each; returns n

Binds 127.0.0.1 (port 0 picks a free one), prints ``PORT <n>`` and
``PID <pid>`` on stdout once listening, then serves with a ThreadedServer
(rpyc's usual server) until killed.  ``--ssl-key/--ssl-cert/--ssl-ca`` serve
mutual TLS through SSLAuthenticator.  Needs only rpyc and the standard library.
"""
import argparse
import os
import sys

import rpyc
from rpyc.utils.server import ThreadedServer


class Counter:
    def __init__(self):
        self.exposed_value = 0

    def exposed_incr(self):
        self.exposed_value += 1
        return self.exposed_value


class BenchService(rpyc.Service):
    ALIASES = ["BENCH"]

    def exposed_noop(self):
        return None

    def exposed_add(self, a, b):
        return a + b

    def exposed_echo(self, x):
        return x

    def exposed_make_counter(self):
        return Counter()

    def exposed_callback(self, f, n):
        for i in range(n):
            f(i)
        return n


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ssl-key")
    p.add_argument("--ssl-cert")
    p.add_argument("--ssl-ca")
    args = p.parse_args()
    authenticator = None
    if args.ssl_key:
        from rpyc.utils.authenticators import SSLAuthenticator

        authenticator = SSLAuthenticator(args.ssl_key, args.ssl_cert, ca_certs=args.ssl_ca)
    server = ThreadedServer(
        BenchService,
        hostname=args.host,
        port=args.port,
        authenticator=authenticator,
        protocol_config={"allow_public_attrs": False},
        logger=None,
    )
    print(f"PORT {server.port}", flush=True)
    print(f"PID {os.getpid()}", flush=True)
    server.start()


if __name__ == "__main__":
    sys.exit(main())
