#!/usr/bin/env bash
# The presence measurement of docs/benchmarks.md: a release natter on a loopback port, then
# natter-bench's presence scenario at two sizes and once with flapping connections.
# Usage: bench/presence.sh [PORT]   (takes a few minutes: registering users hashes passwords)
set -euo pipefail
cd "$(dirname "$0")/.."
port="${1:-18190}"
cargo build --release --locked -p natter-server -p natter-bench
data="$(mktemp -d)"
target/release/natter serve --listen "127.0.0.1:$port" --data-dir "$data" --log warn &
pid=$!
trap 'kill "$pid" 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
for args in "--users 1000" "--users 3000" "--users 3000 --away-ms 300"; do
    # shellcheck disable=SC2086
    target/release/natter-bench presence --url "http://127.0.0.1:$port" --server-pid "$pid" \
        --room-size 50 --churn 20 --seconds 15 $args
done
