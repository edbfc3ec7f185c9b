#!/usr/bin/env python3
"""An attacker against ``rpyc gateway``: a raw RPyC peer (rpyc's own brine and
channel, no Connection object) that connects with a client certificate and
tries to make the upstream run code.

First the known attacks, each printed as ``REFUSED <name> <exception>`` or
``GOT <name> <reply>``; then ``--requests`` randomized requests over all 20
handlers, with targets drawn from the ids it has been handed, forged ids,
by-value strings, its own objects, and names from the introspection and
classic lists; pipelined, answering the upstream's callbacks with hostile
replies (exceptions naming modules, references to its own objects,
``_rpyc_getattr`` in INSPECT answers, pickles). Allowed calls are checked
along the way (``--legit`` names a root method and its expected result).

The oracle is not here: the upstream records audit events
(``audited_server.py``) and the test requires silence.

Prints ``REQUESTS <n> CONNECTIONS <c> LEGIT <ok>/<tried>`` at the end.
"""
import argparse
import os
import pickle
import random
import socket
import ssl
import sys
import time

from rpyc.core import brine, consts
from rpyc.core.channel import Channel
from rpyc.core.stream import SocketStream

V, T, L, R = consts.LABEL_VALUE, consts.LABEL_TUPLE, consts.LABEL_LOCAL_REF, consts.LABEL_REMOTE_REF
REQ, REP, EXC = consts.MSG_REQUEST, consts.MSG_REPLY, consts.MSG_EXCEPTION

NAMES = [
    "eval", "execute", "getmodule", "namespace", "getconn", "exposed_eval", "exposed_getmodule",
    "__class__", "__dict__", "__globals__", "__code__", "__closure__", "__self__", "__func__", "__bases__",
    "__base__", "__mro__", "__subclasses__", "__builtins__", "__import__", "__getattribute__", "__reduce__",
    "__reduce_ex__", "__init__", "__new__", "__call__", "__getitem__", "__exit__", "__enter__", "__len__",
    "__iter__", "__next__", "__eq__", "__format__", "__repr__", "__str__", "__doc__", "__module__",
    "tb_frame", "tb_next", "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "gi_frame", "cr_frame",
    "ag_frame", "mro", "format", "format_map", "join", "system", "popen", "open", "compile", "exec",
    "_conn", "_config", "_local_objects", "_api_token", "_rpyc_getattr", "on_connect", "on_disconnect",
    "get_service_name", "get_service_aliases", "add", "get_report", "call_back", "title", "pages",
    "keys", "values", "items", "get", "pop", "update", "environ", "modules", "path", "argv",
]
STRINGS = [
    "{0._conn._config}", "{0.__class__.__init__.__globals__}", "{0._api_token}", "__import__('os').system('id')",
    "import os; os.system('id')", "os", "sys", "subprocess", "x", "", "A" * 300,
]
OWN = [
    ("builtins.function", 7001, 1), ("builtins.method", 7002, 2), ("rpyc.core.service.VoidService", 7003, 3),
    ("__main__.Evil", 7004, 4), ("dateutil.tz", 7005, 5), ("os.system", 7006, 6), ("this", 7007, 7),
    ("builtins.type", 7008, 0),
]
EVIL_MODULES = ["this", "antigravity", "wave", "dateutil.tz", "xml.dom.minidom", "json.tool", "os"]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


class Peer:
    def __init__(self, args, rng):
        self.args, self.rng = args, rng
        self.seq = 0
        self.pending = {}
        self.seen = []
        self.root = None
        self.hostile = False
        self.connect()

    def connect(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.args.ca)
        ctx.load_cert_chain(self.args.cert, self.args.key)
        ctx.check_hostname = False
        sock = socket.create_connection(("127.0.0.1", self.args.port), timeout=self.args.timeout)
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
        self.ch = Channel(SocketStream(sock))
        self.pending.clear()
        self.seen.clear()
        self.root = None

    def send(self, msg, seq, args):
        self.ch.send(brine.I1.pack(msg) + brine.dump((seq, args)))

    def request(self, handler, boxed):
        self.seq += 1
        self.pending[self.seq] = handler
        self.send(REQ, self.seq, (handler, boxed))
        return self.seq

    def recv(self):
        data = self.ch.recv()
        msg = data[0]
        seq, args = brine.load(data[1:])
        return msg, seq, args

    def note_refs(self, boxed):
        label, value = boxed
        if label == R and value not in self.seen:
            self.seen.append(value)
            if len(self.seen) > 500:
                self.seen.pop(self.rng.randrange(len(self.seen)))
        elif label == T:
            for item in value:
                self.note_refs(item)

    def serve_one(self):
        """Reads one message: answers a request of the upstream, or records
        a reply; returns (msg, seq, args) of a reply, None for a request."""
        msg, seq, args = self.recv()
        if msg == REQ:
            self.answer(seq, args)
            return None
        self.pending.pop(seq, None)
        if msg == REP:
            self.note_refs(args)
        return msg, seq, args

    def wait(self, seq):
        """Serves callbacks until the reply to `seq` arrives; (msg, args)."""
        while True:
            got = self.serve_one()
            if got is not None and got[1] == seq:
                return got[0], got[2]

    def answer(self, seq, args):
        """A hostile answer to a request of the upstream."""
        handler, boxed = args
        if boxed[0] == T:
            for item in boxed[1]:
                self.note_refs(item)
        rng = self.rng
        if handler == consts.HANDLE_GETROOT and (not self.hostile or rng.random() < 0.8):
            # A ClassicService upstream asks for the client's root while
            # connecting; answer like a client would, most of the time.
            self.send(REP, seq, (R, OWN[2]))
            return
        if not self.hostile:
            # Answers that let a ClassicService upstream finish connecting
            # (it reads getmodule from our root and calls it), and the known
            # attack: an exception naming a module, for the function the
            # upstream calls back.
            if handler == consts.HANDLE_INSPECT:
                self.send(REP, seq, (V, ()))
            elif handler == consts.HANDLE_GETATTR:
                self.send(REP, seq, (R, OWN[0]))
            elif handler == consts.HANDLE_CALL and boxed[1][1:2] == ((V, ()),):
                self.send(EXC, seq, (("this", "X"), ("boom",), (), "tb"))
            else:
                self.send(REP, seq, (V, None))
            return
        if handler == consts.HANDLE_INSPECT:
            methods = (("_rpyc_getattr", None), ("__exit__", None), ("__call__", None), ("_rpyc_setattr", None))
            self.send(REP, seq, (V, methods))
            return
        if handler == consts.HANDLE_PICKLE:
            self.send(REP, seq, (V, pickle.dumps(Evil())))
            return
        choice = rng.randrange(6)
        if choice == 0:
            mod = rng.choice(EVIL_MODULES)
            self.send(EXC, seq, ((mod, rng.choice(["X", "Error", "system"])), ("boom",), (("x", 1),), "tb"))
        elif choice == 1:
            self.send(REP, seq, (R, rng.choice(OWN)))
        elif choice == 2 and self.seen:
            self.send(REP, seq, (L, rng.choice(self.seen)))
        elif choice == 3:
            self.send(EXC, seq, consts.EXC_STOP_ITERATION)
        else:
            self.send(REP, seq, (V, None))

    def sync(self, handler, boxed):
        return self.wait(self.request(handler, boxed))

    def get_root(self):
        msg, args = self.sync(consts.HANDLE_GETROOT, (V, ()))
        if msg == REP and args[0] == R:
            self.root = args[1]
        return self.root


def report(name, msg, args):
    if msg == EXC:
        cls = args[0][1] if isinstance(args, tuple) and len(args) == 4 else repr(args)
        text = str(args[1][0] if isinstance(args, tuple) and len(args) == 4 and args[1] else "")
        print(f"REFUSED {name} {cls}: {text.splitlines()[0] if text else ''}", flush=True)
    else:
        print(f"GOT {name} {args!r}"[:300], flush=True)


def known_attacks(p):
    root = p.get_root()
    own = (R, OWN[0])
    # 1. CTXEXIT whose target is the client's own object.
    report("ctxexit-own", *p.sync(consts.HANDLE_CTXEXIT, (T, (own, (V, None)))))
    # 2. str.format on a string the client sent, with the root as argument.
    report("format-value", *p.sync(consts.HANDLE_CALLATTR,
                                   (T, ((V, "{0._conn._config}"), (V, "format"), (T, ((L, root),)), (V, ())))))
    # 3. A callback: the client's function, called by the upstream, answered
    #    with an exception claiming a module (import_custom_exceptions).
    report("callback-exception", *p.sync(consts.HANDLE_CALLATTR,
                                         (T, ((L, root), (V, "call_back"), (T, ((R, OWN[0]),)), (V, ())))))
    # 4. Introspection names on the root, classic roots, private names.
    for name in ["eval", "getmodule", "__class__", "_conn", "__dict__", "_api_token"]:
        report(f"getattr-{name}", *p.sync(consts.HANDLE_GETATTR, (T, ((L, root), (V, name)))))
    # 5. A forged id.
    report("forged-id", *p.sync(consts.HANDLE_GETATTR, (T, ((L, ("builtins.dict", 1, 2)), (V, "keys")))))


def random_boxed(p, depth=0):
    rng = p.rng
    k = rng.randrange(9 if depth < 2 else 6)
    if k == 0 and p.root is not None:
        return (L, p.root)
    if k == 1 and p.seen:
        return (L, rng.choice(p.seen))
    if k == 2:
        return (R, rng.choice(OWN))
    if k == 3:
        return (L, (rng.choice(["builtins.dict", "builtins.function", "os"]), rng.randrange(1 << 40), rng.randrange(1 << 40)))
    if k == 4:
        return (V, rng.choice(STRINGS))
    if k == 5:
        return (V, rng.choice([None, 0, 1, -1, 2 ** 70, 1.5, b"x", (), ("a", 1), frozenset([1])]))
    if k == 6:
        return (V, rng.choice(NAMES))
    return (T, tuple(random_boxed(p, depth + 1) for _ in range(rng.randrange(4))))


def random_request(p):
    rng = p.rng
    handler = rng.randrange(1, 21)
    if handler == consts.HANDLE_CLOSE and rng.random() < 0.9:
        handler = consts.HANDLE_GETATTR
    target = random_boxed(p) if rng.random() < 0.3 else (L, rng.choice(p.seen + [p.root] if p.root else p.seen or [OWN[0]]))
    name = (V, rng.choice(NAMES))
    extra = [random_boxed(p) for _ in range(rng.randrange(4))]
    shapes = {
        consts.HANDLE_GETATTR: [target, name],
        consts.HANDLE_CALLATTR: [target, name, (T, tuple(extra)), (V, ())],
        consts.HANDLE_CALL: [target, (T, tuple(extra)), (V, ())],
        consts.HANDLE_SETATTR: [target, name, random_boxed(p)],
        consts.HANDLE_DELATTR: [target, name],
        consts.HANDLE_CMP: [target, random_boxed(p), name],
        consts.HANDLE_OLDSLICING: [target, name, name, (V, 0), (V, None), (V, ())],
        consts.HANDLE_CTXEXIT: [target, random_boxed(p)],
        consts.HANDLE_INSPECT: [(V, rng.choice(p.seen + OWN + ([p.root] if p.root else [])))],
        consts.HANDLE_INSTANCECHECK: [target, (V, rng.choice(OWN))],
        consts.HANDLE_BUFFITER: [target, (V, rng.randrange(5))],
        consts.HANDLE_PICKLE: [target, (V, 2)],
        consts.HANDLE_DEL: [target, (V, 1)],
        consts.HANDLE_PING: [random_boxed(p)],
        consts.HANDLE_GETROOT: [],
        consts.HANDLE_CLOSE: [],
    }
    args = shapes.get(handler, [target] + extra[:1])
    if rng.random() < 0.1:
        args = args + extra  # wrong arity
    return handler, (T, tuple(args))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--legit", nargs=2, metavar=("METHOD", "RESULT"), default=("get_service_name", None),
                    help="a root method (called with (2, 3) if RESULT is an int) and its expected result")
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--window", type=int, default=16)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    print(f"SEED {seed}", flush=True)
    rng = random.Random(seed)
    p = Peer(args, rng)
    known_attacks(p)
    p.hostile = True

    method, expected = args.legit
    legit_args = (V, (2, 3)) if expected is not None and expected.lstrip("-").isdigit() else (V, ())
    want = int(expected) if expected is not None and expected.lstrip("-").isdigit() else expected

    sent, conns, legit_ok, legit_tried = 0, 1, 0, 0
    deadline = time.time() + 3600
    while sent < args.requests and time.time() < deadline:
        try:
            if p.root is None:
                p.get_root()
            if sent % 500 == 0:
                # Meanwhile, a well-behaved client of the same identity is
                # served as usual.
                legit_tried += 1
                good = Peer(args, rng)
                msg, res = good.sync(consts.HANDLE_CALLATTR,
                                     (T, ((L, good.get_root()), (V, method), legit_args, (V, ()))))
                good.ch.close()
                if msg == REP and res[0] == V and (want is None or res[1] == want):
                    legit_ok += 1
                else:
                    print(f"LEGIT FAILED {msg} {res!r}"[:300], flush=True)
            for _ in range(args.window):
                handler, boxed = random_request(p)
                p.request(handler, boxed)
                sent += 1
            while p.pending:
                p.serve_one()
        except (EOFError, ConnectionError, OSError, ssl.SSLError, ValueError) as e:
            # The gateway (or upstream) hung up: a CLOSE, a refused frame, an
            # upstream whose on_connect failed. Start again.
            conns += 1
            if os.environ.get("ATTACKER_DEBUG"):
                print(f"RECONNECT after {sent} requests: {e!r}", flush=True)
            if conns > args.requests // 4 + 10:
                print(f"TOO MANY RECONNECTS {e!r}", flush=True)
                sys.exit(1)
            try:
                p.connect()
            except OSError as e2:
                print(f"RECONNECT FAILED {e2!r}", flush=True)
                sys.exit(1)
    print(f"REQUESTS {sent} CONNECTIONS {conns} LEGIT {legit_ok}/{legit_tried}", flush=True)


if __name__ == "__main__":
    main()
