#!/usr/bin/env python3
"""Draws the side-by-side figures of `scripts/bench.sh --compare` as an SVG chart.

Usage: chart.py COMPARISON.TSV OUTPUT.SVG [--title TEXT]

The TSV is the one bench.sh writes (target/bench/comparison.tsv): a header line,
then one line per figure with the columns

    panel  category  server  value  unit  main

where `panel` is the question a group of bars answers (its title names the unit
and whether higher or lower is better), `category` a group of bars in it (an
echo row, a memory figure, a percentile), `server` the bar, and `main` 1 for
the server under test (wsecho), drawn highlighted, 0 for a peer.

Each panel gets grouped bars, one group per category and one bar per server,
with the value written above each bar. A panel whose values span more than
30x is drawn on a logarithmic axis, and says so. Needs matplotlib (bench.sh
installs it into a virtual environment in its cache).
"""

import argparse
import csv
import math
import sys
import textwrap
from collections import OrderedDict

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # imported after choosing the backend
from matplotlib.ticker import FuncFormatter, NullFormatter

MAIN_COLOR = "#e8590c"  # wsecho: the one warm colour
PEER_COLORS = ["#4263eb", "#2b8a3e", "#7048e8", "#1098ad", "#868e96", "#c2255c"]
LOG_SPAN = 30.0  # a panel whose values span more than this gets a log axis


def read(path):
    """Panels in file order: {panel: {"unit", "categories", "servers", "values"}},
    and the server under test's name."""
    panels = OrderedDict()
    main = None
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            try:
                value = float(row["value"])
            except (TypeError, ValueError):
                continue
            p = panels.setdefault(
                row["panel"],
                {"unit": row["unit"], "categories": [], "servers": [], "values": {}},
            )
            if row["category"] not in p["categories"]:
                p["categories"].append(row["category"])
            if row["server"] not in p["servers"]:
                p["servers"].append(row["server"])
            p["values"][(row["category"], row["server"])] = value
            if row["main"] == "1":
                main = row["server"]
    return panels, main


def compact(value, unit):
    """A short label for a bar: 12.3k, 1.25M, 85 µs, 1.2 ms, 15.3 KiB."""
    if unit == "µs":
        if abs(value) >= 1e6:
            return f"{value / 1e6:.2f} s"
        if abs(value) >= 1000:
            return f"{value / 1000:.1f} ms"
        return f"{value:.0f} µs"
    if unit == "KiB":
        return f"{value:.1f}"
    if abs(value) >= 1e6:
        return f"{value / 1e6:.2f}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def axis_label(unit):
    return {"µs": "µs", "KiB": "KiB per connection"}.get(unit, unit)


def draw_panel(ax, title, panel, main, colors):
    categories, servers = panel["categories"], panel["servers"]
    unit = panel["unit"]
    values = [v for v in panel["values"].values()]
    positive = [v for v in values if v > 0]
    log = (
        len(positive) == len(values)
        and len(positive) > 1
        and max(positive) / min(positive) > LOG_SPAN
    )
    width = 0.8 / len(servers)
    for i, server in enumerate(servers):
        xs, ys = [], []
        for j, category in enumerate(categories):
            v = panel["values"].get((category, server))
            if v is not None and not math.isnan(v):
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(v)
        is_main = server == main
        bars = ax.bar(
            xs,
            ys,
            width * 0.92,
            label=server,
            color=colors[server],
            edgecolor="black" if is_main else "none",
            linewidth=1.2 if is_main else 0,
            zorder=3,
        )
        ax.bar_label(
            bars,
            labels=[compact(y, unit) for y in ys],
            fontsize=7,
            padding=2,
            rotation=90 if len(servers) * len(categories) > 12 else 0,
            fontweight="bold" if is_main else "normal",
        )
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels([textwrap.fill(c, 18) for c in categories], fontsize=8)
    ax.set_ylabel(axis_label(unit) + (" (log scale)" if log else ""), fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    if log:
        ax.set_yscale("log")
        ax.set_ylim(min(positive) / 2, max(positive) * 6)
    else:
        top = max(values + [0])
        bottom = min(values + [0])
        ax.set_ylim(bottom * 1.15 if bottom < 0 else 0, top * 1.25 if top > 0 else 1)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: compact(v, unit)))
    if log:
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(axis="y", color="#dee2e6", linewidth=0.6, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    # Under the panel, where it hides no bar.
    legend = ax.legend(
        fontsize=8,
        frameon=False,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.1),
        ncol=min(len(servers), 3),
    )
    for text in legend.get_texts():
        if text.get_text() == main:
            text.set_fontweight("bold")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tsv", help="comparison.tsv written by bench.sh --compare")
    parser.add_argument("svg", help="the SVG file to write")
    parser.add_argument("--title", default="wsecho and its peers")
    args = parser.parse_args()

    panels, main_server = read(args.tsv)
    if not panels:
        sys.exit(f"chart.py: no figures in {args.tsv}")

    # One colour per server across all panels; the server under test's stands out.
    colors, peers = {}, 0
    for panel in panels.values():
        for server in panel["servers"]:
            if server in colors:
                continue
            if server == main_server:
                colors[server] = MAIN_COLOR
            else:
                colors[server] = PEER_COLORS[peers % len(PEER_COLORS)]
                peers += 1

    plt.rcParams.update(
        {
            "svg.fonttype": "none",  # text stays text: smaller, searchable
            "svg.hashsalt": "wsecho-bench",  # the same figures give the same file
            "font.family": "DejaVu Sans",
        }
    )
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7.2 * cols, 4.6 * rows), squeeze=False)
    for ax, (title, panel) in zip(axes.flat, panels.items()):
        draw_panel(ax, title, panel, main_server, colors)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(args.title, fontsize=12, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(args.svg, format="svg", metadata={"Date": None})
    print(f"chart.py: wrote {args.svg} ({len(panels)} panels)")


if __name__ == "__main__":
    main()
