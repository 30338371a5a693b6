#!/usr/bin/env bash
# Two natter builds, A and B, in interleaved runs of one natter-bench scenario: the way to tell
# whether a change helps on a machine whose speed drifts by the quarter hour (docs/benchmarks.md,
# "Comparing two builds"). Each run starts its server afresh (new data directory, or a new
# PostgreSQL database) on core 0 and the load on core 1, as bench/compare.sh does; rounds run
# A then B, then B then A, so a drift within a round weighs on both. bench/ab.py prints every
# run's figures and the medians of A and B.
# Usage: bench/ab.sh [--rounds N] [--out FILE.jsonl] [--pg] A_BINARY B_BINARY -- SCENARIO [ARGS…]
#   bench/ab.sh /tmp/natter-before target/release/natter -- storm --clients 15000
#   bench/ab.sh --pg --rounds 3 /tmp/natter-before target/release/natter -- durable --database postgres
# --pg: natter on PostgreSQL ($NATTER_BENCH_PG, default postgres://root@127.0.0.1:5432/natter_bench;
# that database is dropped and created for every run through $NATTER_BENCH_PG_ADMIN).
# Copy the A build aside before building B: both must exist while the script runs.
set -euo pipefail
here="$PWD"
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$here/$1" ;; esac; }
cd "$(dirname "$0")/.."
rounds=4
out=""
pg=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds="$2"; shift 2 ;;
        --out) out="$(absolute "$2")"; shift 2 ;;
        --pg) pg=1; shift ;;
        *) break ;;
    esac
done
if [ $# -lt 4 ] || [ "$3" != "--" ]; then
    sed -n '8,13p' "$0" >&2
    exit 2
fi
a="$(absolute "$1")"; b="$(absolute "$2")"; shift 3
for bin in "$a" "$b"; do
    [ -x "$bin" ] || { echo "ab.sh: $bin is not an executable" >&2; exit 2; }
done
case "$rounds" in ''|*[!0-9]*|0) echo "ab.sh: --rounds takes a positive number" >&2; exit 2 ;; esac
. bench/servers.sh
refuse_if_listening ab.sh 18094
pg_admin="${NATTER_BENCH_PG_ADMIN:-postgres://root@127.0.0.1:5432/test}"
pg_url="${NATTER_BENCH_PG:-postgres://root@127.0.0.1:5432/natter_bench}"
pg_db="${pg_url##*/}"; pg_db="${pg_db%%\?*}"
cargo build --release --locked -p natter-bench
ulimit -n 20000
work="$(mktemp -d)"
# Outside $work, which the exit removes: a run that fails halfway leaves the rounds before it.
results="${out:-$(mktemp --suffix=.jsonl)}"
: > "$results"
echo "ab.sh: results in $results" >&2
trap 'stop_server; rm -rf "$work"' EXIT

run() { # LABEL BINARY
    local label="$1" bin="$2" extra=()
    shift 2
    stop_server
    if [ -n "$pg" ]; then
        psql "$pg_admin" -qc "DROP DATABASE IF EXISTS $pg_db" -c "CREATE DATABASE $pg_db"
        extra=(--database-url "$pg_url")
    fi
    start_natter_binary "$bin" "$work/data" "${extra[@]}"
    echo "== $label: natter-bench $*" >&2
    taskset -c 1 target/release/natter-bench "$@" --url "$url" --server-pid "$pid" \
        | grep '^{' | python3 -c 'import json, sys; d = json.loads(sys.stdin.read()); d["build"] = sys.argv[1]; print(json.dumps(d))' "$label" \
        >> "$results"
}

for round in $(seq "$rounds"); do
    if [ $((round % 2)) -eq 1 ]; then order="A B"; else order="B A"; fi
    for label in $order; do
        if [ "$label" = A ]; then bin="$a"; else bin="$b"; fi
        run "$label" "$bin" "$@"
    done
done
stop_server
echo "A: $a" >&2
echo "B: $b" >&2
python3 bench/ab.py "$results"
