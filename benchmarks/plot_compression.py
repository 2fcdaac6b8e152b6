"""Retention-vs-size curve from ``compression.py``'s CSV: one panel per pair, one marker per codec.

Why a plot: the issue's "best lossy" target (≥ 16x at ≥ 99% gain retention) is a point on
a trade-off curve; where a pair's curve crosses the 99% line says how far it is.

Run::

    .venv/bin/python benchmarks/plot_compression.py bench-out/compression.csv [more.csv ...] \\
        --out benchmarks/results/compression_curve.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

MARKERS = {"bf16": "s", "int8": "o", "sparse": "^", "lowrank": "D", "auto": "*", "exact": "P"}


def load(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            rows += [r for r in csv.DictReader(f) if r.get("retention") and "baseline" not in r["codec"]]
    return rows


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = sorted({r["pair"] for r in rows})
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4.5), squeeze=False)
    for ax, pair in zip(axes[0], pairs, strict=True):
        for r in rows:
            if r["pair"] != pair:
                continue
            x, y = float(r["x_vs_bf16_tau"]), 100 * float(r["retention"])
            family = r["codec"].split("(")[0]
            ax.scatter(x, y, marker=MARKERS.get(family, "x"), s=40)
            ax.annotate(r["codec"].replace("values=int8", "i8").replace("fallback=int8, ", ""), (x, y),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")  # fmt: skip
        ax.axhline(99, color="grey", lw=0.8, ls="--")
        ax.axvline(16, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("times smaller than the bf16 τ")
        ax.set_ylabel("gain retention (%)")
        ax.set_title(pair)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, default=Path("bench-out/compression_curve.png"))
    args = ap.parse_args(argv)
    plot(load(args.csv), args.out)
    print(args.out)


if __name__ == "__main__":
    main()
