#!/usr/bin/env python3
"""Plots `understudy bench scale --csv` rows as an SVG (no dependencies).

    scripts/plot-scale.py docs/bench-scale.csv docs/bench-scale.svg

Left: failover p50 and p99 against the group's size. Right: the cores the
devices use together (mean CPU per device times N) and nats-server's, with
the machine's cores as a line. Sizes that did not agree are marked on the
x axis.
"""
import csv
import math
import sys


def main(src, dst, machine_cores=2):
    rows = list(csv.DictReader(open(src)))
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [int(r["devices"]) for r in rows if r["status"] != "ok"]
    xs = [int(r["devices"]) for r in rows]
    xmax = max(xs) * 1.05
    W, H, M = 420, 300, 50
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="900" height="340" '
           'font-family="sans-serif" font-size="11">',
           '<rect width="900" height="340" fill="white"/>']

    def panel(ox, title, ylabel, ymax, series, hline=None):
        sx = lambda x: ox + M + (W - M - 10) * x / xmax
        sy = lambda y: 20 + (H - M) * (1 - y / ymax)
        out.append(f'<text x="{ox + W / 2}" y="14" text-anchor="middle" font-weight="bold">{title}</text>')
        out.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(xmax)}" y2="{sy(0)}" stroke="black"/>')
        out.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(0)}" y2="{sy(ymax)}" stroke="black"/>')
        for i in range(6):
            y = ymax * i / 5
            out.append(f'<text x="{sx(0) - 4}" y="{sy(y) + 4}" text-anchor="end">{y:g}</text>')
            out.append(f'<line x1="{sx(0)}" y1="{sy(y)}" x2="{sx(xmax)}" y2="{sy(y)}" stroke="#eee"/>')
        for x in xs:
            out.append(f'<text x="{sx(x)}" y="{sy(0) + 14}" text-anchor="middle">{x}</text>')
        for x in failed:
            out.append(f'<text x="{sx(x)}" y="{sy(0) - 6}" text-anchor="middle" fill="#c00">✗</text>')
        out.append(f'<text x="{ox + W / 2}" y="{H + 2}" text-anchor="middle">devices in the group (✗: no agreement)</text>')
        out.append(f'<text x="{ox + 12}" y="{20 + (H - M) / 2}" text-anchor="middle" '
                   f'transform="rotate(-90 {ox + 12} {20 + (H - M) / 2})">{ylabel}</text>')
        if hline is not None:
            value, label = hline
            out.append(f'<line x1="{sx(0)}" y1="{sy(value)}" x2="{sx(xmax)}" y2="{sy(value)}" '
                       f'stroke="#c00" stroke-dasharray="4 3"/>')
            out.append(f'<text x="{sx(xmax)}" y="{sy(value) - 4}" text-anchor="end" fill="#c00">{label}</text>')
        for k, (label, colour, points) in enumerate(series):
            pts = " ".join(f"{sx(x)},{sy(y)}" for x, y in points)
            out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
            for x, y in points:
                out.append(f'<circle cx="{sx(x)}" cy="{sy(y)}" r="3" fill="{colour}"/>')
            out.append(f'<text x="{sx(0) + 8}" y="{32 + 14 * k}" fill="{colour}">{label}</text>')

    p50 = [(int(r["devices"]), float(r["failover_p50_ms"])) for r in ok]
    p99 = [(int(r["devices"]), float(r["failover_p99_ms"])) for r in ok]
    ymax = max(600.0, *(y for _, y in p99)) * 1.15
    panel(0, "failover after kill -9", "ms", round(ymax, -2),
          [("p50", "#1f77b4", p50), ("p99", "#ff7f0e", p99)], (500, "target p99 500 ms"))
    dev = [(int(r["devices"]), float(r["cpu_s_per_s_mean"]) * int(r["devices"])) for r in ok]
    nats = [(int(r["devices"]), float(r["nats_cores"])) for r in ok]
    panel(450, "CPU while idle", "cores", math.ceil(max(2.5, *(y for _, y in dev)) * 1.15 * 2) / 2,
          [("devices together", "#2ca02c", dev), ("nats-server", "#9467bd", nats)],
          (machine_cores, f"this machine: {machine_cores} cores"))
    out.append("</svg>")
    open(dst, "w").write("\n".join(out) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: plot-scale.py ROWS.csv OUT.svg")
    main(sys.argv[1], sys.argv[2])
