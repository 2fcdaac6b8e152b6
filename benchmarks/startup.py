"""Start-up time of commands that touch no tensor, beside ``pip --version`` and ``python -c pass``.

Each command runs as a fresh subprocess; the best of ``--repeat`` runs (default 5) is
reported, as the least disturbed by other work on the machine. ``tvreg`` runs through the
interpreter running this script (``python -c "from tvreg.cli import main; main()"``, which
is what the console script does), so ``PYTHONPATH`` picks the checkout to measure.

    python benchmarks/startup.py                 # table
    python benchmarks/startup.py --format json   # the same figures as JSON

Target (issue 17): every ``tvreg`` row within 2x of ``pip --version``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

TVREG = [sys.executable, "-c", "import sys; from tvreg.cli import main; sys.argv[0] = 'tvreg'; main()"]

COMMANDS: list[tuple[str, list[str]]] = [
    ("python -c pass", [sys.executable, "-c", "pass"]),
    ("pip --version", [sys.executable, "-m", "pip", "--version"]),
    ("tvreg --help", [*TVREG, "--help"]),
    ("tvreg --version", [*TVREG, "--version"]),
    ("tvreg search --help", [*TVREG, "search", "--help"]),
    ("tvreg info --help", [*TVREG, "info", "--help"]),
]


def best_of(argv: list[str], repeat: int) -> float:
    """The shortest wall time of ``repeat`` runs of ``argv``; a failing command stops the benchmark."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command; the best is kept (default 5)")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    args = parser.parse_args()
    times = {label: best_of(argv, args.repeat) for label, argv in COMMANDS}
    pip = times["pip --version"]
    if args.format == "json":
        print(json.dumps({"repeat": args.repeat, "seconds": times, "ratio_to_pip": {
            k: v / pip for k, v in times.items()}}, indent=2))
        return
    print(f"best of {args.repeat}, seconds (ratio to pip --version; target <= 2.0 for tvreg rows)")
    for label, seconds in times.items():
        print(f"  {label:<22} {seconds:7.3f}  {seconds / pip:5.2f}x")


if __name__ == "__main__":
    main()
