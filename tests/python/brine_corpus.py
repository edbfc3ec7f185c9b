#!/usr/bin/env python3
"""Brine (rpyc's value serializer) corpus for cross-checking the Rust codec.

    brine_corpus.py emit
        stdout: one line per corpus value, ``<hex of rpyc.core.brine.dump(v)>\\t<repr>``.
        The corpus covers every brine tag and the length/immediate boundaries.
        The script re-executes itself with PYTHONHASHSEED=0 so that the byte
        order inside frozensets of strings is the same on every run.

    brine_corpus.py check  < lines
        stdin: one hex dump per line (anything after the first whitespace, e.g.
        the ``\\t<repr>`` column of ``emit``, is ignored; blank lines are skipped).
        For each line: v = brine.load(bytes), the input must be fully consumed,
        brine.dump(v) must reproduce the input bytes (frozenset elements may come
        in any order), and ``<repr>`` of v is printed on stdout, one per line, so
        the caller can compare them with the reprs of ``emit``.  A line that
        fails prints ``!ERROR line N: ...`` in its place (on stdout, keeping the
        lines aligned) and the same message on stderr; the exit status is then 1.

``<repr>`` is repr(v) except that frozenset elements are listed sorted by their
own repr (Python's own order depends on string hashing) and NaN prints as
``nan``.  The summary line ``checks: N ok`` goes to stderr (stdout carries data).
Works with rpyc 6.0.2 and 5.3.1 (their brine modules are identical).
"""
import math
import os
import sys
from io import BytesIO

from rpyc.core import brine


# ---------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------
def det_bytes(n, seed=0):
    """deterministic, non-trivial byte content"""
    return bytes((i * 7 + 3 + seed) % 256 for i in range(n))


def corpus():
    vals = [None, True, False, NotImplemented, Ellipsis]
    # ints: immediates are -48..159 (one byte 0x20..0xef), then INT_L1 / INT_L4 decimal text
    vals += [-49, -48, -1, 0, 1, 2, 100, 159, 160, -50, 255, 256, 1000, -1000,
             2 ** 31 - 1, 2 ** 31, -2 ** 31, 2 ** 32, 2 ** 63 - 1, 2 ** 63, -2 ** 63, -2 ** 63 - 1,
             2 ** 64, 10 ** 254,        # 255 decimal digits: longest INT_L1
             -(10 ** 253),              # 255 chars including '-': longest INT_L1
             10 ** 255,                 # 256 digits: INT_L4
             -(10 ** 254),              # 256 chars: INT_L4
             2 ** 1000, -(2 ** 1000)]
    vals += [0.0, -0.0, 1.5, -2.75, 0.1, 1e300, 1e-300, float("inf"), float("-inf"),
             5e-324, 1.7976931348623157e308, float("nan")]
    vals += [complex(0, 0), complex(1.5, -2.25), complex(-0.0, float("inf")), 1j]
    for n in (0, 1, 2, 3, 4, 5, 255, 256, 1000):
        vals.append(det_bytes(n))
    vals += [b"\x00", b"\xff\x00", b"\n\t\r\"'\\"]
    vals += ["", "a", "ab", "abc", "abcd", "abcde", "héllo ✓ 😀", "\x00", "é",
             "x" * 255, "y" * 256, "".join(chr(0x61 + i % 26) for i in range(300)),
             "✓" * 85,  # 255 utf-8 bytes
             "\n\t'\"\\"]
    for n in (0, 1, 2, 3, 4, 5, 255, 256):
        vals.append(tuple(range(n)))
    vals += [
        (None,), ((),), (((),),), (1, (2, (3, (4, (5,))))),
        (None, True, False, NotImplemented, Ellipsis, 0, -1, 1.5, 1j, b"b", "s", (), slice(1, 2)),
        ("a", b"a", 1, 1.0, True), tuple((i, str(i), det_bytes(i % 7)) for i in range(20)),
        tuple("z" * i for i in range(256)),
    ]
    vals += [frozenset(), frozenset({1, 2, 3}), frozenset({"a", (1, 2)}),
             frozenset({None, 1.5, b"x", "y", (1, (2,))}), frozenset({frozenset({1}), frozenset()}),
             frozenset(range(300)), (frozenset({1}), frozenset({"a", "b", "c"}))]
    vals += [slice(None, None, None), slice(1, 2, 3), slice(-5, None, 2), slice(0, 10 ** 30),
             slice("a", b"b", (1.5, None)), (slice(1, 2), slice(None))]
    return vals


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def crepr(v):
    """repr() that does not depend on the hash seed"""
    t = type(v)
    if t is tuple:
        if len(v) == 1:
            return "(" + crepr(v[0]) + ",)"
        return "(" + ", ".join(crepr(x) for x in v) + ")"
    if t is frozenset:
        if not v:
            return "frozenset()"
        return "frozenset({" + ", ".join(sorted(crepr(x) for x in v)) + "})"
    if t is slice:
        return f"slice({crepr(v.start)}, {crepr(v.stop)}, {crepr(v.step)})"
    if t is float and math.isnan(v):
        return "nan"
    return repr(v)


def same(a, b):
    """deep equality + identical types, -0.0 vs 0.0 and NaN aware"""
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
        return a == b and sorted(map(crepr, a)) == sorted(map(crepr, b))
    if isinstance(a, slice):
        return same(a.start, b.start) and same(a.stop, b.stop) and same(a.step, b.step)
    return a == b


_FIXED = {brine.TAG_FLOAT: 8, brine.TAG_COMPLEX: 16,
          brine.TAG_STR1: 1, brine.TAG_STR2: 2, brine.TAG_STR3: 3, brine.TAG_STR4: 4}
_SINGLE = {brine.TAG_NONE, brine.TAG_EMPTY_STR, brine.TAG_EMPTY_TUPLE, brine.TAG_TRUE,
           brine.TAG_FALSE, brine.TAG_NOT_IMPLEMENTED, brine.TAG_ELLIPSIS}
_TUPN = {brine.TAG_TUP1: 1, brine.TAG_TUP2: 2, brine.TAG_TUP3: 3, brine.TAG_TUP4: 4}
_IMM = set(brine.IMM_INTS_LOADER)
ALL_TAGS = _SINGLE | set(_FIXED) | set(_TUPN) | {
    brine.TAG_UNICODE, brine.TAG_STR_L1, brine.TAG_STR_L4, brine.TAG_TUP_L1, brine.TAG_TUP_L4,
    brine.TAG_INT_L1, brine.TAG_INT_L4, brine.TAG_SLICE, brine.TAG_FSET}


class Truncated(Exception):
    pass


def _read(stream, n):
    data = stream.read(n)
    if len(data) != n:
        raise Truncated(f"truncated input (wanted {n} bytes, got {len(data)})")
    return data


def _canon(stream, tags):
    """re-encode one value with frozenset elements sorted: the encoding is
    otherwise kept byte for byte, so two dumps are 'the same' iff their canon
    forms are equal"""
    tag = _read(stream, 1)
    tags.add(tag if tag not in _IMM else "IMM")
    if tag in _IMM or tag in _SINGLE:
        return tag
    if tag in _FIXED:
        return tag + _read(stream, _FIXED[tag])
    if tag in (brine.TAG_STR_L1, brine.TAG_INT_L1):
        ln = _read(stream, 1)
        return tag + ln + _read(stream, brine.I1.unpack(ln)[0])
    if tag in (brine.TAG_STR_L4, brine.TAG_INT_L4):
        ln = _read(stream, 4)
        return tag + ln + _read(stream, brine.I4.unpack(ln)[0])
    if tag in (brine.TAG_UNICODE, brine.TAG_SLICE):
        return tag + _canon(stream, tags)
    if tag in _TUPN:
        return tag + b"".join(_canon(stream, tags) for _ in range(_TUPN[tag]))
    if tag == brine.TAG_TUP_L1:
        ln = _read(stream, 1)
        return tag + ln + b"".join(_canon(stream, tags) for _ in range(brine.I1.unpack(ln)[0]))
    if tag == brine.TAG_TUP_L4:
        ln = _read(stream, 4)
        return tag + ln + b"".join(_canon(stream, tags) for _ in range(brine.I4.unpack(ln)[0]))
    if tag == brine.TAG_FSET:
        ttag = _read(stream, 1)
        tags.add(ttag)
        if ttag == brine.TAG_EMPTY_TUPLE:
            return tag + ttag
        if ttag in _TUPN:
            head, n = ttag, _TUPN[ttag]
        elif ttag == brine.TAG_TUP_L1:
            ln = _read(stream, 1)
            head, n = ttag + ln, brine.I1.unpack(ln)[0]
        elif ttag == brine.TAG_TUP_L4:
            ln = _read(stream, 4)
            head, n = ttag + ln, brine.I4.unpack(ln)[0]
        else:
            raise ValueError(f"frozenset tag not followed by a tuple tag (got {ttag.hex()})")
        return tag + head + b"".join(sorted(_canon(stream, tags) for _ in range(n)))
    raise ValueError(f"unknown brine tag 0x{tag.hex()}")


def canon(data, tags=None):
    stream = BytesIO(data)
    out = _canon(stream, tags if tags is not None else set())
    rest = stream.read()
    if rest:
        raise ValueError(f"{len(rest)} trailing byte(s) after the value")
    return out


def load_exact(data):
    """brine.load, but the whole input must be consumed"""
    stream = BytesIO(data)
    value = brine._load(stream)
    rest = stream.read()
    if rest:
        raise ValueError(f"{len(rest)} trailing byte(s) after the value")
    return value


# ---------------------------------------------------------------------------
# modes
# ---------------------------------------------------------------------------
def emit():
    failures = []
    tags = set()
    out = []
    for i, v in enumerate(corpus()):
        data = brine.dump(v)
        canon(data, tags)
        back = brine.load(data)
        if not same(back, v):
            failures.append(f"corpus item {i} ({crepr(v)[:80]}) does not round trip in Python")
        out.append(f"{data.hex()}\t{crepr(v)}\n")
    sys.stdout.write("".join(out))
    sys.stdout.flush()
    missing = sorted(t.hex() for t in ALL_TAGS - tags)
    if missing:
        failures.append(f"corpus misses brine tag(s) {missing}")
    if "IMM" not in tags:
        failures.append("corpus misses immediate ints")
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    print(f"checks: {len(out)} ok" + (f"; FAILURES: {len(failures)}" if failures else ""),
          file=sys.stderr, flush=True)
    return 1 if failures else 0


def check():
    failures = []
    ok = 0
    lines = []
    for lineno, raw in enumerate(sys.stdin, 1):
        field = raw.strip().split(None, 1)[0] if raw.strip() else ""
        if not field:
            continue
        try:
            data = bytes.fromhex(field)
            if not data:
                raise ValueError("empty dump")
            c_in = canon(data)  # structural validation: truncation, unknown tags, trailing bytes
            value = load_exact(data)
            redump = brine.dump(value)
            if redump != data and canon(redump) != c_in:
                raise ValueError(f"re-dump differs: input {data.hex()[:200]} "
                                 f"!= python {redump.hex()[:200]} (value {crepr(value)[:200]})")
            lines.append(crepr(value) + "\n")
            ok += 1
        except Exception as exc:
            msg = f"line {lineno}: {type(exc).__name__}: {exc}"
            failures.append(msg)
            lines.append(f"!ERROR {msg}\n")
            print(f"FAIL {msg}", file=sys.stderr, flush=True)
    sys.stdout.write("".join(lines))
    sys.stdout.flush()
    print(f"checks: {ok} ok" + (f"; FAILURES: {len(failures)}" if failures else ""),
          file=sys.stderr, flush=True)
    return 1 if failures else 0


def main(argv):
    if len(argv) != 2 or argv[1] not in ("emit", "check"):
        print(__doc__, file=sys.stderr)
        print("usage: brine_corpus.py emit | check", file=sys.stderr)
        return 0 if len(argv) == 2 and argv[1] in ("-h", "--help") else 2
    if argv[1] == "emit":
        if os.environ.get("PYTHONHASHSEED") != "0":
            env = dict(os.environ, PYTHONHASHSEED="0")
            sys.stdout.flush()
            os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), "emit"], env)
        return emit()
    return check()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
