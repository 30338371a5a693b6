#!/usr/bin/env python3
"""Prints the runs bench/ab.sh collected, A against B: each run's figures in the order they ran,
then the medians of each build and B's as a fraction of A's.

Usage: bench/ab.py RESULTS.jsonl   (the JSON lines of natter-bench, each with "build": "A" or "B")
"""
import json
import statistics
import sys

# The figures that tell a change's effect, per scenario: (label, path into the JSON line).
FIGURES = {
    "fanout": [
        ("µs CPU/delivery", ("server_cpu_us_per_delivery",)),
        ("p50 ms", ("latency_ms", "p50")),
        ("p99 ms", ("latency_ms", "p99")),
        ("lost", ("lost",)),
        ("steal ms", ("steal_ms",)),
    ],
    "max": [
        ("deliveries/s", ("max_deliveries_per_s",)),
        ("ladder's", ("ladder_max_deliveries_per_s",)),
    ],
    "idle": [("KiB/connection", ("server_rss_per_connection_kib",))],
    "durable": [
        ("acks/s", ("acks_per_s",)),
        ("p50 ms", ("ack_ms", "p50")),
        ("p99 ms", ("ack_ms", "p99")),
        ("µs CPU/ack", ("server_cpu_us_per_ack",)),
        ("steal ms", ("steal_ms",)),
    ],
    "storm": [
        ("all resumed s", ("all_resumed_s",)),
        ("p50 s", ("resumed_s", "p50")),
        ("server CPU s", ("server_cpu_s",)),
        ("lost", ("lost",)),
        ("duplicates", ("duplicates",)),
        ("steal ms", ("steal_ms",)),
    ],
    "presence": [
        ("µs CPU/churn", ("server_cpu_us_per_churn",)),
        ("µs CPU/frame", ("server_cpu_us_per_frame",)),
    ],
}


def figure(line, path):
    value = line
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value if isinstance(value, (int, float)) else None


def fmt(value):
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    lines = [json.loads(text) for text in open(sys.argv[1]) if text.startswith("{")]
    if not lines:
        sys.exit("ab.py: no runs in " + sys.argv[1])
    scenario = lines[0]["scenario"]
    figures = FIGURES.get(scenario)
    if figures is None:
        sys.exit(f"ab.py: no figures known for the {scenario} scenario")
    width = max(len(label) for label, _ in figures) + 2
    print(f"{scenario}: {len(lines)} runs")
    print("run  build " + "".join(label.rjust(width) for label, _ in figures))
    for n, line in enumerate(lines, 1):
        values = [fmt(figure(line, path)) for _, path in figures]
        print(f"{n:<4} {line.get('build', '?'):<5} " + "".join(v.rjust(width) for v in values))
    medians = {}
    for build in ("A", "B"):
        runs = [line for line in lines if line.get("build") == build]
        medians[build] = []
        for _, path in figures:
            values = [v for v in (figure(line, path) for line in runs) if v is not None]
            medians[build].append(statistics.median(values) if values else None)
        print(f"median {build:<4}" + "".join(fmt(v).rjust(width) for v in medians[build]))
    ratios = [
        f"{b / a:.2f}" if a and b is not None else "–"
        for a, b in zip(medians["A"], medians["B"])
    ]
    print("B / A      " + "".join(r.rjust(width) for r in ratios))


if __name__ == "__main__":
    main()
