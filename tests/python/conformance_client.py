#!/usr/bin/env python3
"""Conformance client for an RPyC server implementing the CONFORMANCE service.

The server under test (normally the Rust implementation) must expose a service
named "CONFORMANCE".  This script connects to it with the *Python* rpyc
library (works with rpyc 6.0.2 and 5.3.1) and runs named groups of checks.
Every failure is collected; the script exits 0 only if every check passed and
always ends with a summary line ``checks: N ok`` (followed by the failure count
when something failed).

CONFORMANCE contract (exposed names):
    get_service_name() -> "CONFORMANCE"       line_length(s) -> len(s)
    add(x, y) -> x + y                        test(x) -> x + 1
    foo() -> "foo"   bar() -> "bar"           get_answer() -> 42
    the_real_answer_though (attribute) == 43  get_question  (NOT exposed)
    echo(v) -> v                              call_back(f, *args) -> f(*args)
    map(f, seq) -> tuple(f(x) for x in seq)   sleep(s) -> None (non-blocking server)
    fail(kind, msg) raises builtins.<kind>(msg)
    make_counter(v) -> counter object with incr() -> new value, .value (read-only)
    live_objects() -> number of objects the server holds for this connection
    subscribe(cb, n) -> returns at once, later calls cb(0) .. cb(n-1) in order
    numbers(n) -> list-like object [0..n)     info() -> dict-like {'name': 'conformance', 'version': 1}
    get_obj() -> object with `public` == 1 (only visible with allow_public_attrs) and `_private`
    secret (NOT exposed), _private (NOT exposed)
    whoami() -> CN of the TLS client certificate, or None
"""
import argparse
import builtins
import faulthandler
import gc
import math
import os
import sys
import threading
import time
import traceback

import rpyc

SYNC_TIMEOUT = 30
CONFIG = {"sync_request_timeout": SYNC_TIMEOUT}


# ---------------------------------------------------------------------------
# result bookkeeping
# ---------------------------------------------------------------------------
class Results:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.failures = []  # list of (group, message)
        self.verbose = False

    def passed(self, group, desc):
        with self.lock:
            self.ok += 1
        if self.verbose:
            print(f"  ok   [{group}] {desc}", flush=True)

    def failed(self, group, desc):
        with self.lock:
            self.failures.append((group, desc))
        print(f"  FAIL [{group}] {desc}", flush=True)


RESULTS = Results()


def short(v, limit=160):
    """repr() that never floods the terminal (16 MiB byte strings, ...)"""
    try:
        if isinstance(v, (bytes, bytearray)) and len(v) > 64:
            return f"<{type(v).__name__} len={len(v)} head={bytes(v[:16])!r}>"
        if isinstance(v, tuple) and len(v) > 20:
            return f"<tuple len={len(v)} head={v[:5]!r}>"
        r = repr(v)
    except Exception as exc:  # a broken remote repr must not kill the run
        r = f"<unrepresentable {type(v).__name__}: {exc!r}>"
    if len(r) > limit:
        r = r[:limit] + "..."
    return r


def first_line(exc):
    """first line of str(exc): rpyc appends the whole remote traceback to it"""
    text = str(exc).strip()
    return short(text.splitlines()[0] if text else "", 300)


def same(a, b):
    """deep equality that also requires identical types (1 vs True vs 1.0), the
    sign of zero and NaN-ness of floats"""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, frozenset):
        if len(a) != len(b) or a != b:
            return False
        rest = list(b)
        for x in a:
            for i, y in enumerate(rest):
                if same(x, y):
                    del rest[i]
                    break
            else:
                return False
        return True
    if isinstance(a, slice):
        return same(a.start, b.start) and same(a.stop, b.stop) and same(a.step, b.step)
    return a == b


class Group:
    """per-group context: connections + soft checks"""

    def __init__(self, name, args):
        self.name = name
        self.args = args
        self.conns = []
        self.nfail = 0
        self.nok = 0

    # -- connections ------------------------------------------------------
    def connect(self):
        conn = make_connection(self.args)
        self.conns.append(conn)
        return conn

    def close_all(self):
        for conn in self.conns:
            try:
                conn.close()
            except Exception as exc:
                print(f"  warn [{self.name}] closing connection raised {exc!r}", flush=True)
        self.conns = []

    # -- checks -------------------------------------------------------------
    def ok(self, desc):
        self.nok += 1
        RESULTS.passed(self.name, desc)

    def fail(self, desc):
        self.nfail += 1
        RESULTS.failed(self.name, desc)

    def check(self, cond, desc):
        if cond:
            self.ok(desc)
        else:
            self.fail(desc)
        return bool(cond)

    def eq(self, actual, expected, desc):
        if actual == expected:
            self.ok(desc)
            return True
        self.fail(f"{desc}: got {short(actual)}, expected {short(expected)}")
        return False

    def call(self, fn, desc):
        """call fn(); an exception is a failure (returns (False, None))"""
        try:
            return True, fn()
        except Exception as exc:
            self.fail(f"{desc}: unexpected {type(exc).__name__}: {first_line(exc)}")
            return False, None

    def raises(self, exc_type, fn, desc):
        """fn() must raise exc_type; returns the exception (or None)"""
        try:
            value = fn()
        except exc_type as exc:
            self.ok(desc)
            return exc
        except Exception as exc:
            self.fail(f"{desc}: expected {exc_type.__name__}, got {type(exc).__name__}: "
                      f"{first_line(exc)}")
            return None
        self.fail(f"{desc}: expected {exc_type.__name__}, but got a value {short(value)}")
        return None


def make_connection(args):
    if args.ssl_cert or args.ssl_key or args.ssl_ca:
        return rpyc.ssl_connect(args.host, args.port, keyfile=args.ssl_key,
                                certfile=args.ssl_cert, ca_certs=args.ssl_ca,
                                config=dict(CONFIG))
    if args.unix:
        from rpyc.utils.factory import unix_connect
        return unix_connect(args.unix, config=dict(CONFIG))
    return rpyc.connect(args.host, args.port, config=dict(CONFIG))


def settle(conn, rounds=3):
    """let pending HANDLE_DEL messages reach the server"""
    gc.collect()
    for _ in range(rounds):
        conn.ping()


def wait_until(pred, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# ---------------------------------------------------------------------------
# groups
# ---------------------------------------------------------------------------
def g_seeds(g):
    conn = g.connect()
    root = conn.root
    g.eq(root.get_service_name(), "CONFORMANCE", "get_service_name()")
    g.eq(root.line_length("abc"), 3, "line_length('abc')")
    g.eq(root.add(5, 10), 15, "add(5, 10)")
    g.eq(root.add(x=1, y=2), 3, "add(x=1, y=2)")
    g.eq(root.test(4), 5, "test(4)")
    g.eq(root.foo(), "foo", "foo()")
    g.eq(root.bar(), "bar", "bar()")
    g.eq(root.get_answer(), 42, "get_answer()")
    g.eq(root.the_real_answer_though, 43, "the_real_answer_though")
    if not g.args.allow_public:
        # With allow_public_attrs a public method is reachable, exposed or not
        # (Python rpyc behaves the same), so this probe only holds by default.
        g.raises(AttributeError, lambda: root.get_question, "root.get_question is not exposed")
        g.raises(AttributeError, lambda: root.get_question(), "root.get_question() is not exposed")
    g.eq(root.add(1, 2), 3, "connection usable after AttributeError")


ECHO_VALUES = [
    None, True, False, 0, -48, 159, 160, -49, 2 ** 63, -(2 ** 63) - 1, 2 ** 200, -(10 ** 300),
    1.5, float("inf"), float("-inf"), -0.0, 5e-324, float("nan"), complex(1, -2),
    "", "héllo ✓", "s" * 300, b"", b"\x00\xff", bytes(range(256)) * 2,
    (), (1, ("a", (b"b", None))), frozenset({1, 2, 3}), slice(1, 10, 2),
    Ellipsis, NotImplemented, tuple(range(1000)),
]


def g_echo(g):
    conn = g.connect()
    root = conn.root
    for v in ECHO_VALUES:
        ok, r = g.call(lambda: root.echo(v), f"echo({short(v, 60)})")
        if ok:
            if same(r, v):
                g.ok(f"echo({short(v, 60)})")
            else:
                g.fail(f"echo({short(v, 60)}): got {short(r)} ({type(r).__name__}), "
                       f"expected {short(v)} ({type(v).__name__})")
    # references to client-side objects come back as the very same object
    lst = [1, 2, 3]
    ok, r = g.call(lambda: root.echo(lst), "echo(list) (by reference)")
    if ok:
        g.check(r is lst, f"echo(list) returns the client's own list object (got {short(r)})")
    ok, r = g.call(lambda: root.echo((1, lst)), "echo((1, list))")
    if ok:
        g.check(type(r) is tuple and len(r) == 2 and r[0] == 1 and r[1] is lst,
                f"echo((1, list)) returns (1, <same list>) (got {short(r)})")
    if not g.args.no_big:
        big = os.urandom(16 * 1024 * 1024)
        t0 = time.monotonic()
        ok, r = g.call(lambda: root.echo(big), "echo(16 MiB bytes)")
        if ok:
            g.check(type(r) is bytes and r == big,
                    f"echo(16 MiB bytes) round trip ({time.monotonic() - t0:.2f}s)")
        del big, r


def g_callbacks(g):
    conn = g.connect()
    root = conn.root
    g.eq(root.call_back(lambda a, b: a * b, 6, 7), 42, "call_back(lambda a, b: a * b, 6, 7)")
    g.eq(root.map(lambda x: x * 2, (1, 2, 3)), (2, 4, 6), "map(lambda x: x * 2, (1, 2, 3))")
    g.eq(root.call_back(lambda: root.add(1, 2)), 3, "call_back(lambda: root.add(1, 2)) (nested)")
    g.eq(root.call_back(lambda: root.call_back(lambda: 7)), 7,
         "call_back(lambda: root.call_back(lambda: 7)) (doubly nested)")

    def boom():
        raise KeyError("cb")
    exc = g.raises(KeyError, lambda: root.call_back(boom), "KeyError in client callback propagates")
    if exc is not None:
        g.check("cb" in str(exc), f"'cb' in str(exc) (got {short(str(exc), 300)})")
    g.eq(root.add(2, 2), 4, "connection usable after callback exception")


def g_sleep(g):
    conn = g.connect()
    root = conn.root
    t0 = time.monotonic()
    ok, r = g.call(lambda: root.sleep(0.5), "sleep(0.5)")
    dt = time.monotonic() - t0
    if ok:
        g.check(r is None, f"sleep(0.5) returns None (got {short(r)})")
        g.check(dt >= 0.45, f"sleep(0.5) actually slept (took {dt:.3f}s)")

    # async sleep + synchronous add on the same connection
    t0 = time.monotonic()
    ar = rpyc.async_(root.sleep)(1.0)
    ar.set_expiry(SYNC_TIMEOUT)
    r = root.add(1, 2)
    t_add = time.monotonic() - t0
    g.eq(r, 3, "add(1, 2) while sleep(1.0) pending")
    g.check(t_add < 0.9, f"add returned before the pending sleep(1.0) finished (took {t_add:.3f}s)")
    ok, v = g.call(lambda: ar.value, "async sleep(1.0).value")
    t_sleep = time.monotonic() - t0
    if ok:
        g.check(v is None, f"async sleep(1.0) value is None (got {short(v)})")
        g.check(t_sleep >= 0.95, f"async sleep(1.0) took at least 1s (took {t_sleep:.3f}s)")

    # a real second thread blocked in a synchronous sleep(1.0)
    out = {}

    def sleeper():
        try:
            out["value"] = root.sleep(1.0)
        except Exception as exc:
            out["error"] = exc
        out["t"] = time.monotonic()

    t0 = time.monotonic()
    th = threading.Thread(target=sleeper, daemon=True)
    th.start()
    time.sleep(0.1)
    r = root.add(20, 22)
    t_add = time.monotonic() - t0
    g.eq(r, 42, "add(20, 22) from main thread while another thread sleeps")
    g.check(t_add < 0.9, f"add returned while the other thread was still sleeping (took {t_add:.3f}s)")
    th.join(SYNC_TIMEOUT)
    if th.is_alive():
        g.fail("sleeping thread did not finish")
    elif "error" in out:
        g.fail(f"sleeping thread raised {out['error']!r}")
    else:
        g.check(out.get("value") is None, "threaded sleep(1.0) returned None")
        g.check(out["t"] - t0 >= 0.95, f"threaded sleep(1.0) took >= 1s ({out['t'] - t0:.3f}s)")


EXC_KINDS = ["ValueError", "KeyError", "TypeError", "ZeroDivisionError", "AttributeError"]


def g_exceptions(g):
    conn = g.connect()
    root = conn.root
    for kind in EXC_KINDS:
        msg = "boom-" + kind
        cls = getattr(builtins, kind)
        try:
            v = root.fail(kind, msg)
        except BaseException as exc:  # noqa: B902 - we inspect whatever arrives
            g.check(isinstance(exc, cls), f"fail({kind!r}) raises an instance of {kind} "
                    f"(got {type(exc).__module__}.{type(exc).__name__})")
            g.eq(type(exc).__name__, kind, f"fail({kind!r}) type name")
            g.check(msg in str(exc), f"fail({kind!r}): message in str(e) (got {short(str(exc), 300)})")
            g.eq(exc.args, (msg,), f"fail({kind!r}): e.args")
            tb = getattr(exc, "_remote_tb", None)
            if not isinstance(tb, str):
                g.fail(f"fail({kind!r}): e._remote_tb missing or not str (got {short(tb)})")
            else:
                g.check(kind in tb and msg in tb,
                        f"fail({kind!r}): remote traceback names class and message "
                        f"(got {short(tb, 400)})")
        else:
            g.fail(f"fail({kind!r}) did not raise (returned {short(v)})")
    g.eq(root.add(3, 4), 7, "connection usable after remote exceptions")


def g_counter(g):
    conn = g.connect()
    root = conn.root

    def live():
        settle(conn)
        return root.live_objects()

    def wait_live(expected, desc, timeout=5.0):
        last = [None]

        def pred():
            last[0] = live()
            return last[0] == expected
        if wait_until(pred, timeout):
            g.ok(desc)
            return True
        g.fail(f"{desc}: live_objects() == {last[0]}, expected {expected} (waited {timeout}s)")
        return False

    # stable baseline without any counter alive
    readings = [live()]
    for _ in range(20):
        readings.append(live())
        if readings[-1] == readings[-2]:
            break
        time.sleep(0.05)
    base = readings[-1]
    g.check(isinstance(base, int) and base >= 0, f"live_objects() baseline is an int >= 0 (got {short(base)})")

    cs = [root.make_counter(i) for i in range(3)]
    wait_live(base + 3, "3 new counters -> live_objects() grew by 3")
    g.eq([c.value for c in cs], [0, 1, 2], "counter initial values")
    del cs
    wait_live(base, "counters dropped -> live_objects() back to baseline")

    c = root.make_counter(5)
    g.eq(c.incr(), 6, "c.incr() first")
    g.eq(c.incr(), 7, "c.incr() second")
    g.eq(c.value, 7, "c.value")
    rep = repr(c)
    g.check("7" in rep, f"'7' in repr(c) (got {short(rep)})")
    st = str(c)
    g.check("7" in st, f"'7' in str(c) (got {short(st)})")

    e1 = root.echo(c)
    e2 = root.echo(c)
    g.eq(e1.value, c.value, "echo(c).value == c.value")
    if e1 is c and e2 is c:
        g.ok("echo(c) is c")
    else:
        print(f"  info [{g.name}] echo(c) is not the same proxy object as c "
              f"(allowed, but means a new remote id was used)", flush=True)
    g.eq(root.call_back(lambda x: x.incr(), c), 8, "call_back(lambda x: x.incr(), c)")
    g.eq(root.echo(c).incr(), 9, "echo(c).incr() increments the same counter")
    g.eq(c.value, 9, "c.value after increments via echo/call_back")
    g.eq(e2.value, 9, "second echo proxy sees the same value")
    if e1 is c and e2 is c:
        wait_live(base + 1, "one counter alive (returned several times) -> baseline + 1")
    del c, e1, e2
    wait_live(base, "every counter proxy dropped -> live_objects() back to baseline")


def g_async(g):
    conn = g.connect()
    root = conn.root
    ar = rpyc.async_(root.add)(2, 3)
    ar.set_expiry(SYNC_TIMEOUT)
    ok, v = g.call(lambda: ar.value, "async add(2, 3).value")
    if ok:
        g.eq(v, 5, "async add(2, 3).value")
    g.check(ar.ready, "async add: .ready")
    g.check(ar.error is False, f"async add: .error is False (got {short(ar.error)})")

    ar = rpyc.async_(root.fail)("ValueError", "x")
    ar.set_expiry(SYNC_TIMEOUT)
    ok, _ = g.call(ar.wait, "async fail(...).wait()")
    g.check(ar.ready, "async fail: .ready")
    g.check(ar.error is True, f"async fail: .error is True (got {short(ar.error)})")
    g.raises(ValueError, lambda: ar.value, "async fail: .value raises ValueError")

    ar = rpyc.async_(root.sleep)(2)
    ar.set_expiry(0.1)
    g.check(wait_until(lambda: ar.expired, 3.0), "async sleep(2) with expiry 0.1: .expired")
    g.check(not ar.ready, "async sleep(2) with expiry 0.1: not .ready")
    g.raises(rpyc.AsyncResultTimeout, lambda: ar.value,
             "async sleep(2) with expiry 0.1: .value raises AsyncResultTimeout")
    g.eq(root.add(1, 1), 2, "connection usable after an expired async result")


def g_events(g):
    conn = g.connect()
    root = conn.root
    got = []
    done = threading.Event()

    def cb(i):
        got.append(i)
        if len(got) >= 5:
            done.set()

    bg = rpyc.BgServingThread(conn)
    try:
        t0 = time.monotonic()
        ok, r = g.call(lambda: root.subscribe(cb, 5), "subscribe(cb, 5)")
        dt = time.monotonic() - t0
        if ok:
            g.check(dt < 0.5, f"subscribe returned at once (took {dt:.3f}s)")
            g.check(done.wait(5.0), f"5 events within 5s (got {got})")
            time.sleep(0.1)  # catch any extra, unexpected events
            g.eq(list(got), [0, 1, 2, 3, 4], "events arrive in order")
    finally:
        bg.stop()


def g_listlike(g):
    conn = g.connect()
    root = conn.root
    n = root.numbers(10)
    g.eq(len(n), 10, "len(numbers(10))")
    g.eq(n[3], 3, "n[3]")
    g.eq(n[-1], 9, "n[-1]")
    g.check(5 in n, "5 in n")
    g.check(42 not in n, "42 not in n")
    g.eq(list(n), list(range(10)), "list(n)")
    out = []
    for x in n:
        out.append(x)
    g.eq(out, list(range(10)), "for x in n")
    g.raises(IndexError, lambda: n[10], "n[10] raises IndexError")


def g_dictlike(g):
    conn = g.connect()
    root = conn.root
    d = root.info()
    g.eq(d["name"], "conformance", "d['name']")
    g.eq(d["version"], 1, "d['version']")
    g.eq(len(d), 2, "len(d)")
    g.eq(sorted(d.keys()), ["name", "version"], "sorted(d.keys())")
    g.eq(dict(d), {"name": "conformance", "version": 1}, "dict(d)")
    g.eq(sorted(d.items()), [("name", "conformance"), ("version", 1)], "sorted(d.items())")
    g.check("name" in d, "'name' in d")
    g.check("missing" not in d, "'missing' not in d")
    g.raises(KeyError, lambda: d["missing"], "d['missing'] raises KeyError")


def g_policy(g):
    conn = g.connect()
    root = conn.root
    g.raises(AttributeError, lambda: root._private, "root._private")
    if g.args.allow_public:
        # A public (non-underscore) name is reachable once allow_public_attrs
        # is on, exactly as on a Python server with the same flag.
        ok, v = g.call(lambda: root.secret(), "root.secret() (allow_public_attrs)")
        if ok:
            g.check(isinstance(v, str), "root.secret() returns a str (allow_public_attrs)")
    else:
        g.raises(AttributeError, lambda: root.secret(), "root.secret()")
    o = root.get_obj()
    g.raises(AttributeError, lambda: o._private, "get_obj()._private")
    if g.args.allow_public:
        ok, v = g.call(lambda: o.public, "get_obj().public (allow_public_attrs)")
        if ok:
            g.eq(v, 1, "get_obj().public (allow_public_attrs)")
    else:
        g.raises(AttributeError, lambda: o.public, "get_obj().public without allow_public_attrs")
    g.raises(AttributeError, lambda: setattr(root, "x", 1), "setattr(root, 'x', 1)")
    g.raises(AttributeError, lambda: delattr(root, "foo"), "delattr(root, 'foo')")
    c = root.make_counter(0)

    def set_value():
        c.value = 5
    g.raises(AttributeError, set_value, "counter.value = 5")
    g.eq(c.value, 0, "counter unchanged after refused setattr")
    g.eq(root.add(1, 2), 3, "connection usable after refused accesses")


def g_identity(g):
    conn = g.connect()
    root = conn.root
    who = root.whoami()
    if g.args.expect_identity:
        g.eq(who, g.args.expect_identity, "whoami() == --expect-identity")
    else:
        g.check(who is None, f"whoami() is None without a client certificate (got {short(who)})")


def g_threads(g, nthreads=16, ncalls=200, limit=60.0):
    errors = []
    done_count = [0]
    lock = threading.Lock()

    def worker(k):
        try:
            conn = make_connection(g.args)
            try:
                root = conn.root
                for i in range(ncalls):
                    j = k * 1000 + i
                    r = root.add(i, j)
                    if r != i + j:
                        errors.append(f"thread {k}: add({i}, {j}) returned {short(r)}")
                        return
            finally:
                conn.close()
            with lock:
                done_count[0] += 1
        except Exception as exc:
            errors.append(f"thread {k}: {type(exc).__name__}: {first_line(exc)}")

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(nthreads)]
    for t in threads:
        t.start()
    deadline = t0 + limit
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    dt = time.monotonic() - t0
    alive = sum(t.is_alive() for t in threads)
    g.check(alive == 0, f"all {nthreads} threads finished within {limit:.0f}s ({alive} still running, {dt:.2f}s)")
    for e in errors[:10]:
        g.fail(e)
    g.eq(done_count[0], nthreads, f"{nthreads} threads x {ncalls} add() calls on own connections ({dt:.2f}s)")


def g_close(g):
    conn = make_connection(g.args)
    root = conn.root
    g.eq(root.add(1, 1), 2, "add before close")
    t0 = time.monotonic()
    ok, _ = g.call(conn.close, "conn.close()")
    dt = time.monotonic() - t0
    g.check(dt < 5.0, f"conn.close() returned promptly ({dt:.3f}s)")
    g.check(conn.closed, "conn.closed is True after close()")
    conn2 = g.connect()
    g.eq(conn2.root.add(2, 3), 5, "server accepts a new connection after a close")


GROUPS = [
    ("seeds", g_seeds),
    ("echo", g_echo),
    ("callbacks", g_callbacks),
    ("sleep", g_sleep),
    ("exceptions", g_exceptions),
    ("counter", g_counter),
    ("async", g_async),
    ("events", g_events),
    ("listlike", g_listlike),
    ("dictlike", g_dictlike),
    ("policy", g_policy),
    ("identity", g_identity),
    ("threads", g_threads),
    ("close", g_close),
]
V5_SUBSET = ["seeds", "exceptions", "callbacks", "counter", "listlike", "dictlike", "echo"]


# ---------------------------------------------------------------------------
# watchdog: every group is bounded in time
# ---------------------------------------------------------------------------
class Watchdog:
    def __init__(self):
        self.lock = threading.Lock()
        self.group = None
        self.deadline = None
        t = threading.Thread(target=self._run, daemon=True)
        t.start()

    def arm(self, group, seconds):
        with self.lock:
            self.group, self.deadline = group, time.monotonic() + seconds

    def disarm(self):
        with self.lock:
            self.group, self.deadline = None, None

    def _run(self):
        while True:
            time.sleep(0.2)
            with self.lock:
                group, deadline = self.group, self.deadline
            if deadline is not None and time.monotonic() > deadline:
                print(f"  FAIL [{group}] group timed out; thread dump follows", flush=True)
                faulthandler.dump_traceback(file=sys.stdout, all_threads=True)
                RESULTS.failures.append((group, "group timed out"))
                print_summary()
                sys.stdout.flush()
                os._exit(2)


def print_summary():
    if RESULTS.failures:
        print(f"\n{len(RESULTS.failures)} failure(s):")
        for group, desc in RESULTS.failures:
            print(f"  [{group}] {desc}")
        print(f"checks: {RESULTS.ok} ok; FAILURES: {len(RESULTS.failures)}", flush=True)
    else:
        print(f"checks: {RESULTS.ok} ok", flush=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="groups: " + ", ".join(n for n, _ in GROUPS))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int)
    ap.add_argument("--unix", metavar="PATH", help="connect to a unix domain socket instead of TCP")
    ap.add_argument("--allow-public", action="store_true",
                    help="the server runs with allow_public_attrs: get_obj().public must be readable")
    ap.add_argument("--only", metavar="NAME[,NAME]", help="run only these check groups")
    ap.add_argument("--v5-subset", action="store_true",
                    help="only the groups run with rpyc 5.3.1: " + ", ".join(V5_SUBSET)
                    + " (echo without the 16 MiB item)")
    ap.add_argument("--no-big", action="store_true", help="skip the 16 MiB echo")
    ap.add_argument("--ssl-key", metavar="FILE", help="client key (TLS via rpyc.ssl_connect)")
    ap.add_argument("--ssl-cert", metavar="FILE", help="client certificate (TLS)")
    ap.add_argument("--ssl-ca", metavar="FILE", help="CA certificate to verify the server (TLS)")
    ap.add_argument("--expect-identity", metavar="NAME",
                    help="whoami() must return NAME (otherwise it must return None)")
    ap.add_argument("--group-timeout", type=float, default=120.0, metavar="SECONDS",
                    help="abort if a single group runs longer than this (default 120)")
    ap.add_argument("--list", action="store_true", help="list the check groups and exit")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every passing check")
    args = ap.parse_args(argv)
    if args.list:
        for name, fn in GROUPS:
            print(name)
        sys.exit(0)
    if args.unix and args.port is not None:
        ap.error("use either --port or --unix")
    if args.unix and (args.ssl_cert or args.ssl_key or args.ssl_ca):
        ap.error("TLS over --unix is not supported")
    if not args.unix and args.port is None:
        ap.error("--port or --unix is required")
    names = [n for n, _ in GROUPS]
    if args.only:
        selected = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in selected if s not in names]
        if unknown:
            ap.error(f"unknown group(s) {unknown}; known: {', '.join(names)}")
    else:
        selected = list(names)
    if args.v5_subset:
        selected = [s for s in selected if s in V5_SUBSET]
        args.no_big = True
    args.selected = [n for n in names if n in selected]
    return args


def main(argv=None):
    args = parse_args(argv)
    RESULTS.verbose = args.verbose
    target = args.unix if args.unix else f"{args.host}:{args.port}"
    print(f"conformance client: rpyc {rpyc.__version__} (python {sys.version.split()[0]}) -> {target}"
          f"{' [tls]' if args.ssl_cert or args.ssl_ca else ''}; groups: {', '.join(args.selected)}",
          flush=True)
    watchdog = Watchdog()
    # preflight: one clear message instead of every group failing the same way
    watchdog.arm("preflight", args.group_timeout)
    try:
        conn = make_connection(args)
        try:
            name = conn.root.get_service_name()
        finally:
            conn.close()
    except Exception as exc:
        print(f"FAIL cannot talk to the server at {target}: {type(exc).__name__}: {first_line(exc)}",
              flush=True)
        RESULTS.failures.append(("preflight", f"cannot connect: {type(exc).__name__}: {first_line(exc)}"))
        print_summary()
        return 2
    finally:
        watchdog.disarm()
    if name != "CONFORMANCE":
        print(f"warning: the server's service name is {name!r}, not 'CONFORMANCE'", flush=True)
    table = dict(GROUPS)
    for name in args.selected:
        g = Group(name, args)
        t0 = time.monotonic()
        watchdog.arm(name, args.group_timeout)
        try:
            table[name](g)
        except Exception as exc:
            print("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), flush=True)
            g.fail(f"aborted by unexpected {type(exc).__name__}: {first_line(exc)}")
        finally:
            g.close_all()
            watchdog.disarm()
        dt = time.monotonic() - t0
        status = "ok" if g.nfail == 0 else f"FAILED ({g.nfail} failing)"
        print(f"[{name}] {status}: {g.nok} checks ok, {dt:.2f}s", flush=True)
        gc.collect()
    print_summary()
    return 1 if RESULTS.failures else 0


if __name__ == "__main__":
    sys.exit(main())
