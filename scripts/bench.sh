#!/usr/bin/env bash
# The performance harness in one go (BENCHMARKS.md explains the figures).
#
# Builds the release examples, starts the BENCH servers (Rust and Python,
# plain TCP and mutual TLS), then REPEAT times measures, side by side:
#   the raw loopback limit (TCP and rustls TLS 1.3)     bench_client --raw
#   Rust client   -> Rust server   (tcp, tls)           bench_client
#   Rust client   -> Python server (tcp, tls)           bench_client
#   Python client -> Rust server   (tcp, tls)           bench_client.py
#   Python client -> Python server (tcp, tls)           bench_client.py
# and once, against a fresh Rust server: IDLE idle connections (server
# memory, a new client's first call) and CYCLES netref create/drop cycles
# (server memory). Prints every figure, then the ratios and the targets
# (scripts/bench_report.py), and leaves JSON lines in $OUT/results.jsonl.
#
#   bash scripts/bench.sh                      # everything (~20 minutes)
#   REPEAT=1 SECS=1 IDLE=1000 CYCLES=100000 bash scripts/bench.sh   # quick look
#
# Never run by scripts/test.sh or CI: the figures need a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."

REPEAT=${REPEAT:-3}
SECS=${SECS:-2}
IDLE=${IDLE:-10000}
CYCLES=${CYCLES:-1000000}
OUT=${OUT:-target/bench}
PY=${RPYC_PYTHON6:-}
if [ -z "$PY" ]; then
    for cand in .venv6/bin/python /tmp/venv6/bin/python; do
        if [ -x "$cand" ]; then PY=$cand; break; fi
    done
fi
if [ -z "$PY" ] || ! "$PY" -c "import rpyc" 2>/dev/null; then
    echo "bench.sh: a Python with rpyc 6.0.2 is needed: set RPYC_PYTHON6 (scripts/test.sh creates .venv6)" >&2
    exit 1
fi

log() { printf '==> %s\n' "$*" >&2; }

# 10,000 idle connections need 10,000 descriptors on each side.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

log "building (release)"
cargo build --release --example bench_server --example bench_client >&2
SERVER=${CARGO_TARGET_DIR:-target}/release/examples/bench_server
CLIENT=${CARGO_TARGET_DIR:-target}/release/examples/bench_client

mkdir -p "$OUT"
JSON="$OUT/results.jsonl"
: >"$JSON"
CERTS="$OUT/certs"
if [ ! -f "$CERTS/client.key" ]; then
    rm -rf "$CERTS"
    "$SERVER" --gen-certs "$CERTS" >/dev/null
fi

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# start NAME COMMAND... : starts a server, waits for its PORT line, sets
# PORT_<NAME> and PID_<NAME>.
start() {
    local name=$1
    shift
    local fifo="$OUT/$name.out"
    rm -f "$fifo"
    "$@" >"$fifo" 2>"$OUT/$name.err" &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 100); do
        if grep -q '^PORT ' "$fifo" 2>/dev/null; then break; fi
        sleep 0.1
    done
    local port
    port=$(awk '/^PORT /{print $2; exit}' "$fifo")
    if [ -z "$port" ]; then
        echo "bench.sh: $name did not start:" >&2
        cat "$OUT/$name.err" >&2
        exit 1
    fi
    printf -v "PORT_$name" '%s' "$port"
    printf -v "PID_$name" '%s' "$pid"
}

PYSSL=(--ssl-key "$CERTS/client.key" --ssl-cert "$CERTS/client.pem" --ssl-ca "$CERTS/ca.pem")
PYSSL_SERVER=(--ssl-key "$CERTS/server.key" --ssl-cert "$CERTS/server.pem" --ssl-ca "$CERTS/ca.pem")

start rust_tcp "$SERVER" --port 0
start rust_tls "$SERVER" --port 0 --tls "$CERTS"
start py_tcp "$PY" tests/python/bench_server.py --port 0
start py_tls "$PY" tests/python/bench_server.py --port 0 "${PYSSL_SERVER[@]}"

for run in $(seq 1 "$REPEAT"); do
    log "run $run of $REPEAT: raw loopback limit"
    "$CLIENT" --raw --tls "$CERTS" --secs "$SECS" --run "$run" --json "$JSON"
    log "run $run: Rust client -> Rust server"
    "$CLIENT" --connect "127.0.0.1:$PORT_rust_tcp" --server-kind rust --secs "$SECS" --run "$run" --json "$JSON"
    "$CLIENT" --connect "127.0.0.1:$PORT_rust_tls" --tls "$CERTS" --server-kind rust --secs "$SECS" \
        --only add,pipelined,echo,connect --run "$run" --json "$JSON"
    log "run $run: Rust client -> Python server"
    "$CLIENT" --connect "127.0.0.1:$PORT_py_tcp" --server-kind python --secs "$SECS" --run "$run" --json "$JSON"
    "$CLIENT" --connect "127.0.0.1:$PORT_py_tls" --tls "$CERTS" --server-kind python --secs "$SECS" \
        --only add,echo,connect --run "$run" --json "$JSON"
    log "run $run: Python client -> Rust server"
    "$PY" tests/python/bench_client.py --port "$PORT_rust_tcp" --server-kind rust --secs "$SECS" --run "$run" --json "$JSON"
    "$PY" tests/python/bench_client.py --port "$PORT_rust_tls" "${PYSSL[@]}" --server-kind rust --secs "$SECS" \
        --only add,echo,connect --run "$run" --json "$JSON"
    log "run $run: Python client -> Python server"
    "$PY" tests/python/bench_client.py --port "$PORT_py_tcp" --server-kind python --secs "$SECS" --run "$run" --json "$JSON"
    "$PY" tests/python/bench_client.py --port "$PORT_py_tls" "${PYSSL[@]}" --server-kind python --secs "$SECS" \
        --only add,echo,connect --run "$run" --json "$JSON"
done

log "memory: $IDLE idle connections, then $CYCLES netref cycles (fresh Rust servers)"
start rust_idle "$SERVER" --port 0
"$CLIENT" --connect "127.0.0.1:$PORT_rust_idle" --idle "$IDLE" --server-pid "$PID_rust_idle" --run mem --json "$JSON"
start rust_cycles "$SERVER" --port 0
"$CLIENT" --connect "127.0.0.1:$PORT_rust_cycles" --netref-cycles "$CYCLES" --server-pid "$PID_rust_cycles" \
    --run mem --json "$JSON"

log "summary"
"$PY" scripts/bench_report.py "$JSON"
