#!/usr/bin/env bash
# The test command (README's second command; .ci/run calls it too).
#
# Sets up everything the tests talk to — Python rpyc 6.0.2 and 5.3.1 in
# venvs, an OpenSSH server and the unprivileged user the SSH tests log in
# as — then runs the format check, clippy and the whole test suite.
# Interop tests never skip: if a peer is missing, they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

setup_venv() {
    local dir=$1 version=$2
    if [ -x "$dir/bin/python" ] &&
        "$dir/bin/python" -c "import sys, importlib.metadata as m; sys.exit(m.version('rpyc') != '$version')" 2>/dev/null; then
        return
    fi
    log "creating $dir with rpyc==$version"
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check "rpyc==$version"
}

setup_venv .venv6 6.0.2
setup_venv .venv5 5.3.1
# PyYAML reads the Kubernetes manifests in the deployment-kit test.
if ! .venv6/bin/python -c "import yaml" 2>/dev/null; then
    log "installing PyYAML into .venv6"
    .venv6/bin/pip install --quiet --disable-pip-version-check "pyyaml>=6,<7"
fi
export RPYC_PYTHON6="$PWD/.venv6/bin/python"
export RPYC_PYTHON5="$PWD/.venv5/bin/python"

if [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null 2>&1 || ! command -v ssh-keygen >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        log "OpenSSH server and client are needed for the SSH tests: install openssh-server (as root) and rerun"
        exit 1
    fi
    log "installing openssh-server"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null
fi
# The deploy tests run the system Python 3 as rpyctest over SSH (that user
# cannot reach a Python installed under /root): they make venvs of it.
if [ ! -x /usr/bin/python3 ] || ! /usr/bin/python3 -c "import venv" 2>/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        log "the deploy tests need /usr/bin/python3 with its venv module: install python3 and python3-venv (as root) and rerun"
        exit 1
    fi
    log "installing python3 for the deploy tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
fi
if ! id rpyctest >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        log "the SSH tests log in as user 'rpyctest': create it (useradd -m rpyctest) and rerun"
        exit 1
    fi
    log "creating user rpyctest for the SSH tests"
    useradd -m -s /bin/bash -p '*' rpyctest
fi
if [ "$(id -u)" -eq 0 ]; then
    # sshd (UsePAM no) refuses locked accounts even for key logins: '*' = no password, not locked.
    usermod -p '*' rpyctest
    mkdir -p /run/sshd
fi

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --locked --all-targets -- -D warnings

# The feature matrix: the library alone (`default-features = false`), then
# with each feature alone, must build without a warning — a cfg that leaves
# an import or a helper unused shows up here, not in a user's build. Checks
# only (no codegen), so this step stays short.
log "feature matrix (cargo check --lib --no-default-features [--features X])"
lean_check() {
    local out
    # Cargo replays the warnings of cached builds, so a rerun fails too.
    if ! out=$(cargo check --locked --lib --no-default-features "$@" 2>&1) || grep -q '^warning' <<<"$out"; then
        printf '%s\n' "$out" >&2
        log "cargo check --lib --no-default-features $* failed or warned"
        return 1
    fi
}
lean_check
for feature in tls certs ssh deploy srv proxy-protocol toml gateway cli; do
    lean_check --features "$feature"
done
cargo clippy --locked --lib --no-default-features -- -D warnings
# What "lean" promises: the core pulls in none of these.
lean_deps=$(cargo tree --locked --no-default-features -e normal --prefix none | awk '{print $1}' | sort -u)
for heavy in clap clap_complete tracing-subscriber indicatif russh rcgen hickory-resolver rustls toml; do
    if grep -qx "$heavy" <<<"$lean_deps"; then
        log "rpyc with --no-default-features depends on $heavy: make it optional, behind a feature (cargo tree --no-default-features -e normal -i $heavy shows the path)"
        exit 1
    fi
done

# The API docs build without a broken link or another rustdoc warning.
log "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --quiet

log "cargo test"
cargo test --locked --all-targets "$@"
cargo test --locked --doc

# A short fuzz run of every target (fuzz/README.md has the long-run recipe).
log "fuzzing"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
