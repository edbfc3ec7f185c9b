"""Attribute-policy parity between a Python rpyc server and the Rust one.

    policy_probe.py serve [--allow-public] [--allow-all] [--no-exposed] [--no-safe]
        Serves a Python twin of the CONFORMANCE policy probes (root: add,
        get_question, secret, _private; get_obj(): public, _private) on
        127.0.0.1:0 with those protocol flags; prints ``PORT <n>``.

    policy_probe.py probe --port P
        Connects to either server and prints one line per probe:
        ``<probe>: ok <value>`` or ``<probe>: <ExceptionClass>``.

The Rust test runs ``probe`` against both servers configured with the same
flags and requires identical output.
"""
import argparse
import sys
import threading
import time

import rpyc
from rpyc.utils.server import ThreadedServer


class Probe:
    def __init__(self):
        self.public = 1
        self._private = "hidden"


class ConformanceService(rpyc.Service):
    _private = "root secret"

    def exposed_add(self, x, y):
        return x + y

    def exposed_get_obj(self):
        return Probe()

    def get_question(self):
        return "what is the airspeed velocity of an unladen swallow?"

    def secret(self):
        return "the root's secret"


def serve(args):
    config = {
        "allow_public_attrs": args.allow_public,
        "allow_all_attrs": args.allow_all,
        "allow_exposed_attrs": not args.no_exposed,
        "allow_safe_attrs": not args.no_safe,
    }
    server = ThreadedServer(ConformanceService, hostname="127.0.0.1", port=0, protocol_config=config)
    threading.Thread(target=server.start, daemon=True).start()
    print(f"PORT {server.port}", flush=True)
    deadline = time.time() + args.lifetime
    while time.time() < deadline:
        time.sleep(0.2)


def show(value):
    if callable(value):
        return "callable"
    return repr(value)


def probe(args):
    conn = rpyc.connect("127.0.0.1", args.port, config={"sync_request_timeout": 10})
    root = conn.root
    obj = None
    try:
        obj = root.get_obj()
    except Exception as e:  # noqa: BLE001 - the class is the result
        print(f"get_obj(): {type(e).__name__}")
    probes = [
        ("root.add", lambda: root.add),
        ("root.add(2, 3)", lambda: root.add(2, 3)),
        ("root.exposed_add", lambda: root.exposed_add),
        ("root.get_question", lambda: root.get_question),
        ("root.get_question()", lambda: root.get_question()),
        ("root.secret()", lambda: root.secret()),
        ("root._private", lambda: root._private),
        ("root.nonexistent", lambda: root.nonexistent),
        ("root._nonexistent", lambda: root._nonexistent),
        ("obj.public", lambda: obj.public),
        ("obj._private", lambda: obj._private),
        ("obj.nonexistent", lambda: obj.nonexistent),
        ("setattr(root, 'x', 1)", lambda: setattr(root, "x", 1)),
        ("delattr(root, 'add')", lambda: delattr(root, "add")),
        ("setattr(obj, 'public', 2) [default flags]", lambda: setattr(obj, "public", 2)),
    ]
    for name, f in probes:
        try:
            print(f"{name}: ok {show(f())}")
        except Exception as e:  # noqa: BLE001
            print(f"{name}: {type(e).__name__}")
    sys.stdout.flush()
    conn.close()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--allow-public", action="store_true")
    s.add_argument("--allow-all", action="store_true")
    s.add_argument("--no-exposed", action="store_true")
    s.add_argument("--no-safe", action="store_true")
    s.add_argument("--lifetime", type=float, default=300)
    q = sub.add_parser("probe")
    q.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    serve(args) if args.cmd == "serve" else probe(args)


if __name__ == "__main__":
    main()
