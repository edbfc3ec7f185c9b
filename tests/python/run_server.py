#!/usr/bin/env python3
"""Start a *Python* rpyc server for the Rust client interop tests.

Binds 127.0.0.1 on an ephemeral port, prints exactly one line ``PORT <n>`` to
stdout (flushed) once the socket is listening, then serves until it is killed
or until ``--lifetime`` seconds have passed.  Works with rpyc 6.0.2 and 5.3.1
(note that the two rpyc versions do not speak the same wire format).

--kind service   serves PyTestService ("PYTEST"):
                     add(a, b), echo(x), get_answer() -> 42, the_answer == 42,
                     fail(kind, msg) raises builtins.<kind>(msg),
                     call_back(f, *args) -> f(*args), make_list(n) -> list(range(n))
                     (by reference), make_dict() -> {'a': 1, 'b': 2} (by reference),
                     sleep(s), greet(name, greeting="hello") -> f"{greeting} {name}",
                     subscribe(cb, n) -> starts a thread calling cb(0..n-1) 10 ms apart,
                     whoami() -> CN of the TLS client certificate or None
--kind classic   serves rpyc.SlaveService (classic mode)
"""
import argparse
import builtins
import logging
import os
import sys
import threading
import time

import rpyc
from rpyc.utils.server import ThreadedServer


class PyTestService(rpyc.Service):
    ALIASES = ["PYTEST"]

    exposed_the_answer = 42

    def on_connect(self, conn):
        self._conn = conn

    def exposed_add(self, a, b):
        return a + b

    def exposed_echo(self, x):
        return x

    def exposed_get_answer(self):
        return 42

    def exposed_fail(self, kind, msg):
        cls = getattr(builtins, kind, None)
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise ValueError(f"not a builtin exception class: {kind!r}")
        raise cls(msg)

    def exposed_call_back(self, f, *args):
        return f(*args)

    def exposed_make_list(self, n):
        return list(range(n))

    def exposed_make_dict(self):
        return {"a": 1, "b": 2}

    def exposed_sleep(self, s):
        time.sleep(s)

    def exposed_greet(self, name, greeting="hello"):
        return f"{greeting} {name}"

    def exposed_subscribe(self, cb, n):
        def run():
            for i in range(n):
                time.sleep(0.01)
                try:
                    cb(i)
                except Exception as exc:  # the client went away: stop quietly
                    logging.getLogger("PYTEST").info("subscribe callback failed: %r", exc)
                    return
        threading.Thread(target=run, name="pytest-subscribe", daemon=True).start()

    def exposed_whoami(self):
        """subject commonName of the client certificate (SSLAuthenticator stores
        ``sock.getpeercert()`` as the connection's credentials), else None"""
        cred = self._conn._config.get("credentials")
        if not cred:
            return None
        for rdn in cred.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return value
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--kind", choices=["service", "classic"], default="service")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="default 0 (ephemeral)")
    ap.add_argument("--lifetime", type=float, default=600.0, metavar="SECONDS",
                    help="exit by itself after this many seconds (default 600)")
    ap.add_argument("--allow-public", action="store_true",
                    help="protocol_config allow_public_attrs=True")
    ap.add_argument("--ssl-key", metavar="FILE")
    ap.add_argument("--ssl-cert", metavar="FILE")
    ap.add_argument("--ssl-ca", metavar="FILE",
                    help="CA for client certificates (makes client certs mandatory)")
    ap.add_argument("-v", "--verbose", action="store_true", help="rpyc debug logging to stderr")
    args = ap.parse_args(argv)

    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="run_server %(levelname)s %(name)s: %(message)s")

    authenticator = None
    if args.ssl_key or args.ssl_cert or args.ssl_ca:
        if not (args.ssl_key and args.ssl_cert):
            ap.error("--ssl-key and --ssl-cert are both required for TLS")
        from rpyc.utils.authenticators import SSLAuthenticator
        authenticator = SSLAuthenticator(args.ssl_key, args.ssl_cert, args.ssl_ca)

    service = rpyc.SlaveService if args.kind == "classic" else PyTestService
    server = ThreadedServer(service, hostname=args.host, port=args.port,
                            authenticator=authenticator, auto_register=False,
                            protocol_config={"allow_public_attrs": bool(args.allow_public)})

    def die_later():
        time.sleep(args.lifetime)
        print(f"run_server: lifetime of {args.lifetime}s over, exiting", file=sys.stderr, flush=True)
        os._exit(0)
    threading.Thread(target=die_later, name="lifetime", daemon=True).start()

    # listen *before* announcing the port so that a client never sees ECONNREFUSED
    server._listen()
    port = server.listener.getsockname()[1]
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()
    try:
        server.start()
    finally:
        os._exit(0)


if __name__ == "__main__":
    main()
