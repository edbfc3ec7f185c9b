#!/usr/bin/env bash
# Short fuzz run of every target (default 30 s each). See fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz >/dev/null
fi
export RUSTC_BOOTSTRAP=1
cd fuzz
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in brine_decode frame_decode dispatch proxy_header; do
    echo "==> fuzzing $target for ${secs}s" >&2
    if ! cargo fuzz run --sanitizer none "$target" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz target $target failed: the crashing input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E "^(Done|stat::number_of_executed_units)" "$log" >&2 || true
done
