#!/usr/bin/env python3
"""Draws docs/benchmarks.md's figures from the JSON lines bench/compare.sh collected, and prints
the fan-out medians and ratios the tables quote.

Usage: bench/plot.py RESULTS.jsonl [OUT_DIR]   (writes latency.svg and memory.svg; standard
library only, so it runs wherever the benchmarks do)
"""
import json
import math
import statistics
import sys
from pathlib import Path

COLORS = {"natter": "#1f6feb", "socketio": "#d1242f", "limit": "#6e7781"}
LABELS = {
    "natter": "natter",
    "socketio": "Socket.IO 4.8 (Node 20)",
    "limit": "no-logic broadcaster (the floor)",
}
W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 420, 80, 30, 40, 60


def nice_ticks(lo, hi, log):
    if log:
        return [10.0**e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]
    span = hi - lo or 1
    step = 10 ** math.floor(math.log10(span / 5))
    for m in (1, 2, 5, 10):
        if span / (step * m) <= 6:
            step *= m
            break
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 2)]


def fmt(v):
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def chart(title, xlabel, ylabel, series, logy=False, ymin=None):
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points]
    x0, x1 = 0, max(xs) * 1.05
    y0 = ymin if ymin is not None else (min(ys) / 2 if logy else 0)
    y1 = max(ys) * (2 if logy else 1.1)
    xt, yt = nice_ticks(x0, x1, False), nice_ticks(y0, y1, logy)
    x1, y0, y1 = max(x1, xt[-1]), min(y0, yt[0]), max(y1, yt[-1])

    def px(x):
        return LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT)

    def py(y):
        if logy:
            f = (math.log10(y) - math.log10(y0)) / (math.log10(y1) - math.log10(y0))
        else:
            f = (y - y0) / (y1 - y0)
        return H - BOTTOM - f * (H - TOP - BOTTOM)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">{title}</text>',
    ]
    for t in xt:
        if x0 <= t <= x1:
            out.append(f'<line x1="{px(t):.1f}" y1="{TOP}" x2="{px(t):.1f}" y2="{H - BOTTOM}" stroke="#eee"/>')
            out.append(f'<text x="{px(t):.1f}" y="{H - BOTTOM + 18}" text-anchor="middle">{fmt(t)}</text>')
    for t in yt:
        if y0 <= t <= y1:
            out.append(f'<line x1="{LEFT}" y1="{py(t):.1f}" x2="{W - RIGHT}" y2="{py(t):.1f}" stroke="#eee"/>')
            out.append(f'<text x="{LEFT - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{fmt(t)}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" fill="none" stroke="#888"/>')
    out.append(f'<text x="{W / 2}" y="{H - 18}" text-anchor="middle">{xlabel}</text>')
    out.append(f'<text transform="translate(18 {H / 2}) rotate(-90)" text-anchor="middle">{ylabel}</text>')
    for i, (name, points) in enumerate(sorted(series.items())):
        points = sorted(points)
        color = COLORS.get(name, "#333")
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in points:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{color}"/>')
        ly = TOP + 18 + i * 18
        out.append(f'<rect x="{LEFT + 12}" y="{ly - 9}" width="14" height="4" fill="{color}"/>')
        out.append(f'<text x="{LEFT + 32}" y="{ly - 3}">{LABELS.get(name, name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    rows = [json.loads(line) for line in Path(sys.argv[1]).read_text().splitlines() if line.startswith("{")]
    out_dir = Path(sys.argv[2] if len(sys.argv) > 2 else "docs")
    runs, memory, beside_idle = {}, {}, []
    for row in rows:
        if row.get("idle_connections"):
            beside_idle.append(row)
            continue
        steps = row.get("steps", [row]) if row.get("scenario") in ("fanout", "max") else []
        for step in steps:
            p99 = (step.get("latency_ms") or {}).get("p99")
            if p99 and step.get("deliveries_per_s"):
                runs.setdefault((step["server"], step["rate"]), []).append(
                    dict(step, scenario=row["scenario"]))
        if row.get("scenario") == "idle" and row.get("server_rss_after_kib"):
            rss = (row["server_rss_after_kib"] - row["server_rss_before_kib"]) / 1024
            memory.setdefault(row["server"], []).append((row["connections"], rss))
    out_dir.mkdir(parents=True, exist_ok=True)
    if runs:
        (out_dir / "bench-latency.svg").write_text(chart(
            "Fan-out, 10 rooms × 100 members: p99 latency against throughput (one server core)",
            "deliveries per second", "p99 latency, ms (log scale)", medians(runs), logy=True))
        print(f"wrote {out_dir}/bench-latency.svg")
    if memory:
        (out_dir / "bench-memory.svg").write_text(chart(
            "Idle connections: server memory against connections",
            "connections", "server RSS added, MiB", memory))
        print(f"wrote {out_dir}/bench-memory.svg")
    print_cpu(runs)
    for row in beside_idle:
        lat = row["latency_ms"]
        print(f"{row['server']}: fan-out at {row['deliveries_per_s']:.0f} deliveries/s beside "
              f"{row['idle_connections']} idle connections: p50 {lat['p50']:.2f} p99 {lat['p99']:.2f} "
              f"p99.9 {lat['p999']:.2f} max {lat['max']:.2f} ms"
              + (f"; steal {row['steal_ms']} ms" if row.get("steal_ms") is not None else ""))


def medians(runs):
    """Per server, one (deliveries/s, p99) point per rate: the medians of its runs."""
    series = {}
    for (server, _), steps in runs.items():
        x = statistics.median(s["deliveries_per_s"] for s in steps)
        y = statistics.median(s["latency_ms"]["p99"] for s in steps)
        series.setdefault(server, []).append((x, y))
    return series


def print_cpu(runs):
    """Server CPU per delivery at each rate run more than once: medians, and their ratios."""
    fanout = {
        key: [s for s in steps if s["scenario"] == "fanout" and s.get("server_cpu_us_per_delivery")]
        for key, steps in runs.items()
    }
    cpu = {key: statistics.median(s["server_cpu_us_per_delivery"] for s in steps)
           for key, steps in fanout.items() if len(steps) > 1}
    rates = sorted({rate for (_, rate) in cpu})
    print("rate msg/s | µs per delivery (median): natter socketio limit | natter/socketio limit/socketio natter/limit")
    for rate in rates:
        n, s, l = (cpu.get((server, rate)) for server in ("natter", "socketio", "limit"))
        ratio = lambda a, b: f"{a / b:.2f}" if a and b else "-"
        print(f"{rate:>10g} | {n or 0:6.2f} {s or 0:6.2f} {l or 0:6.2f} | {ratio(n, s)} {ratio(l, s)} {ratio(n, l)}")
    # Steal time: the host ran something else on this machine's CPUs; a server's figures from
    # runs with much of it say more about the host than about the server.
    for server in ("natter", "socketio", "limit"):
        steps = [s for (name, _), group in fanout.items() if name == server for s in group]
        steal = [s["steal_ms"] for s in steps if s.get("steal_ms") is not None]
        if steal:
            seconds = sum(s["seconds"] for s in steps)
            print(f"{server}: steal {sum(steal) / 1000:.1f} s over {seconds:.0f} s of fan-out runs "
                  f"(the worst run {max(steal)} ms)")


if __name__ == "__main__":
    main()
