#!/usr/bin/env python3
"""First call after ``BgServingThread`` over TLS must get its reply.

Connects with ``rpyc.ssl_connect``, starts ``rpyc.BgServingThread`` at once
and makes one call, ``--rounds`` times on fresh connections.  A TLS 1.3
server that sends session tickets right after the handshake can make the
reply vanish: the background thread's read swallows the ticket record *and*
buffers the reply inside the ``SSLSocket``, while the main thread waits for
the file descriptor to become readable, which it never does.  The call then
hangs until ``sync_request_timeout`` (``--timeout``, default 5 s).

Works against any server whose root exposes ``add(x, y)`` (the CONFORMANCE
service, the Python test service).  Exits 0 and prints ``checks: N ok`` when
every round got its reply; otherwise prints the failures and exits 1.
"""
import argparse
import sys
import time

import rpyc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ssl-key", metavar="FILE", required=True)
    ap.add_argument("--ssl-cert", metavar="FILE", required=True)
    ap.add_argument("--ssl-ca", metavar="FILE", required=True)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                    help="sync_request_timeout per call (default 5)")
    args = ap.parse_args(argv)

    ok, failures = 0, []
    for i in range(args.rounds):
        t0 = time.monotonic()
        try:
            conn = rpyc.ssl_connect(args.host, args.port, keyfile=args.ssl_key,
                                    certfile=args.ssl_cert, ca_certs=args.ssl_ca,
                                    config={"sync_request_timeout": args.timeout})
        except Exception as exc:
            failures.append(f"round {i}: connect failed: {type(exc).__name__}: {exc}")
            continue
        bg = rpyc.BgServingThread(conn)
        try:
            r = conn.root.add(i, 1)
            if r == i + 1:
                ok += 1
            else:
                failures.append(f"round {i}: add({i}, 1) returned {r!r}")
        except Exception as exc:
            failures.append(f"round {i}: first call failed after {time.monotonic() - t0:.2f}s: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        finally:
            try:
                bg.stop()
            except Exception:
                pass
            try:
                conn.close()
            except Exception:
                pass

    for f in failures:
        print(f"  FAIL {f}", flush=True)
    summary = f"checks: {ok} ok" + (f"; FAILURES: {len(failures)}" if failures else "")
    print(summary, flush=True)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
