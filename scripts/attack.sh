#!/usr/bin/env bash
# A long run of the gateway attack tests (tests/gateway/attack.rs): real
# Python rpyc 6.0.2 servers with an audit-hook oracle, attacked through the
# gateway by the randomized attacker (tests/python/gateway_attacker.py).
#
#   bash scripts/attack.sh [REQUESTS_PER_SCENARIO]   # default 1,000,000
#
# CI runs 35,000 per scenario (three scenarios). Every run prints the
# attacker's SEED; rerun one with
#   python3 tests/python/gateway_attacker.py --seed N ...
set -euo pipefail
cd "$(dirname "$0")/.."
export RPYC_ATTACK_REQUESTS="${1:-1000000}"
if [ ! -x .venv6/bin/python ]; then
    python3 -m venv .venv6
    .venv6/bin/pip install --quiet --disable-pip-version-check "rpyc==6.0.2"
fi
export RPYC_PYTHON6="$PWD/.venv6/bin/python"
exec cargo test --locked --test gateway attack -- --nocapture --test-threads 1
