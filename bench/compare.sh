#!/usr/bin/env bash
# natter, the Socket.IO 4 baseline and the no-logic broadcaster (`natter-bench limit-server`, the
# floor) side by side (docs/benchmarks.md). Each server runs alone, pinned to core 0; the load
# generator runs on core 1. Fan-out runs three times per rate, the servers taking turns, so that
# medians can be compared. Every JSON line natter-bench prints goes to the results file;
# bench/plot.py draws the figures from it and prints the medians and ratios.
# Usage: bench/compare.sh [RESULTS.jsonl]   (about 18 minutes)
# Needs: Node 20 and `npm ci` in $SOCKETIO_DIR (default ../shared/bench/socketio); PostgreSQL on
# 127.0.0.1:5432 (user root; `natter_bench` is dropped and created afresh) and psql for the
# PostgreSQL durable runs.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results/$(date +%F).jsonl}"
sio_dir="${SOCKETIO_DIR:-../shared/bench/socketio}"
pg_admin="${NATTER_BENCH_PG_ADMIN:-postgres://root@127.0.0.1:5432/test}"
pg_url="${NATTER_BENCH_PG:-postgres://root@127.0.0.1:5432/natter_bench}"
. bench/servers.sh
refuse_if_listening compare.sh 18094 3100 3200
cargo build --release --locked -p natter-server -p natter-bench
[ -d "$sio_dir/node_modules" ] || (cd "$sio_dir" && npm ci)
ulimit -n 20000
work="$(mktemp -d)"
trap 'stop_server; rm -rf "$work"' EXIT

start_natter() { # [extra serve args]
    start_natter_binary target/release/natter "$work/data" "$@"
}
start_limit() {
    stop_server
    taskset -c 0 target/release/natter-bench limit-server --listen 127.0.0.1:3200 2>/dev/null &
    pid=$!
    started http://127.0.0.1:3200 port_open 3200
}
start_socketio() {
    stop_server
    taskset -c 0 node "$sio_dir/server.js" --port 3100 >/dev/null &
    pid=$!
    started http://127.0.0.1:3100 port_open 3100
}
run() { # scenario args…
    echo "== natter-bench $*" >&2
    taskset -c 1 target/release/natter-bench "$@" --url "$url" --server-pid "$pid" | tee /dev/stderr | grep '^{' >> "$out"
}

servers="natter socketio limit"
for server in $servers; do
    for connections in 2000 7000 15000; do
        "start_$server"
        run idle --server "$server" --connections "$connections" --seconds 5
    done
done
for round in 1 2 3; do
    for rate in 100 300 600 1000; do
        for server in $servers; do
            "start_$server"
            run fanout --server "$server" --rate "$rate" --seconds 10
        done
    done
done
for server in $servers; do
    "start_$server"
    run max --server "$server" --rate 200 --step 1.5 --seconds 5
done
for server in $servers; do  # fan-out latency beside 15,000 idle connections, over a heartbeat interval
    "start_$server"
    run fanout --server "$server" --rate 300 --seconds 30 --idle 15000
done

start_natter
run durable --database sqlite
run durable --database sqlite --in-flight 32
for rate in 1000 10000 25000; do  # ack latency at fixed loads (25,000/s: half the 50,000/s target)
    run durable --database sqlite --in-flight 32 --rate "$rate" --seconds 8
done
run storm --clients 15000
# PostgreSQL: a fresh database for each run, so that earlier runs' rows do not weigh on it.
psql "$pg_admin" -qc "DROP DATABASE IF EXISTS natter_bench" -c "CREATE DATABASE natter_bench"
start_natter --database-url "$pg_url"
run durable --database postgres
run durable --database postgres --in-flight 32
for rate in 10000 15000; do  # 10,000/s: half the 20,000/s target; 15,000/s: half the maximum
    # The closed-loop runs wrote hundreds of MB of WAL with no checkpoint since: without one,
    # every 16 MB of the next run is a new, zero-filled WAL segment, and every commit waits for
    # it (docs/benchmarks.md, "A fifth machine"). A server at a steady rate writes into segments
    # its checkpoints recycled; so does the run after this. (CHECKPOINT needs a superuser or
    # the pg_checkpoint role: the admin URL's.)
    psql "$pg_admin" -qc CHECKPOINT
    run durable --database postgres --in-flight 32 --rate "$rate" --seconds 8
done
stop_server
echo "results: $out" >&2
