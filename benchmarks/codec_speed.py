"""Decode and install speed of the lossy codings calibrated ``auto`` picks, against ``exact``, on a real pair.

Issue 23 asks that what ``auto`` picks decode and install within ``exact``'s figures (both
are read by the same engine). The calibrated search is slow (tens of minutes), so this
times the uniform settings its picks are made of — random sparse with int4 values and
``rescale=row`` (pair a's, pair b's family), sign values, low rank ``mixed`` (pair c's) —
built from one real SmolLM2 fine-tune pair of ``finetune_pairs.py`` (cached), each beside
``exact`` built from the same τ in the same run:

- **decode**: every tensor through the real reader (``Artifact.decode``), CPU seconds of
  this process on one torch thread, median of ``--rounds``;
- **install**: ``tvreg install`` (the library's ``install``, task arithmetic, weight 1) of
  the artifact into a fresh copy of θ_pre made a model environment, in a child process:
  the CPU seconds of the call (every thread) and the child's peak RSS, median of ``--rounds``.
  Builds alternate per round, so drift in the machine's load hits every row alike.

Run (from the repository root, with ``pip install -e '.[bench]'``)::

    nice -n 10 .venv/bin/python benchmarks/codec_speed.py [--pair a-lowlr] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_pairs import PAIRS, base_model, default_cache, finetune  # noqa: E402

SETTINGS: dict[str, tuple[str, dict]] = {
    "exact": ("exact", {}),
    "random 0.2 int4 row": ("sparse", {"density": 0.2, "select": "random", "values": "int4", "rescale": "row"}),
    "random 0.05 int4 row": ("sparse", {"density": 0.05, "select": "random", "values": "int4", "rescale": "row"}),
    "random 0.1 sign": ("sparse", {"density": 0.1, "select": "random", "values": "sign"}),
    "magnitude 0.1 int4": ("sparse", {"density": 0.1, "values": "int4"}),
    "lowrank 16 mixed": ("lowrank", {"rank": 16, "values": "mixed"}),
}

_CHILD = """
import json, sys, time
mode, model, artifact, base = sys.argv[1:5]
if mode == "setup":
    from tvreg._env.environment import init_environment
    init_environment(model, base=base, general_size=10_000)
else:
    from tvreg._env.operations import install
    c0 = time.process_time()
    install([artifact], into=model, device="cpu", method="task_arithmetic", weights={"bench": 1.0})
    cpu = time.process_time() - c0
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child of a big parent reports the parent's
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"cpu": cpu, "rss_mib": hwm / 1024}))
"""


def decode_cpu(path: Path) -> float:
    from tvreg._format.artifact import Artifact

    c0 = time.process_time()
    with Artifact(path) as art:
        for name in art.manifest.tensors:
            art.decode(name)
    return time.process_time() - c0


def install_cost(path: Path, base: Path, work: Path) -> tuple[float, float]:
    """CPU seconds (every thread) of ``install`` of ``path`` into a fresh copy of ``base``, and the child's peak RSS (MiB).

    The environment set-up (``init_environment``: G's fingerprint and pristine copy) runs
    in a child of its own, and the figure counts the ``install`` call alone, not the
    interpreter's start or imports (the same for every row).
    """
    model = work / "model"
    shutil.rmtree(model, ignore_errors=True)
    shutil.copytree(base, model)
    for mode in ("setup", "install"):
        done = subprocess.run([sys.executable, "-c", _CHILD, mode, str(model), str(path), str(base)],
                              check=True, capture_output=True, text=True)  # fmt: skip
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return figures["cpu"], figures["rss_mib"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", type=Path, default=default_cache())
    ap.add_argument("--pair", default="a-lowlr", choices=[p.name for p in PAIRS])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from tvreg._build.build import build_skill

    pair = next(p for p in PAIRS if p.name == args.pair)
    pre, ft = base_model(args.cache_dir), finetune(args.cache_dir, pair)
    with tempfile.TemporaryDirectory(prefix="tvreg-codec-speed-") as tmp:
        work = Path(tmp)
        paths = {}
        for label, (codec, opts) in SETTINGS.items():
            paths[label] = work / f"{len(paths)}.tvskill"
            build_skill(pre, finetuned=ft, output=paths[label], name="bench", version="1.0.0", codec=codec,
                        codec_options=opts)  # fmt: skip
        decode: dict[str, list[float]] = {k: [] for k in SETTINGS}
        inst: dict[str, list[tuple[float, float]]] = {k: [] for k in SETTINGS}
        for label in SETTINGS:  # one untimed round: Numba's cache, the page cache
            decode_cpu(paths[label])
        for _ in range(args.rounds):
            for label in SETTINGS:
                decode[label].append(decode_cpu(paths[label]))
                inst[label].append(install_cost(paths[label], pre, work))
        rows = []
        for label in SETTINGS:
            rows.append({
                "setting": label, "bytes": paths[label].stat().st_size,
                "decode_cpu_s": statistics.median(decode[label]),
                "install_cpu_s": statistics.median(c for c, _ in inst[label]),
                "install_peak_rss_mib": max(r for _, r in inst[label]),
            })  # fmt: skip
    exact = rows[0]
    print(f"pair {pair.name}: medians of {args.rounds}; CPU seconds (decode: 1 thread; install: the call, every thread)")
    print(f"{'setting':24s} {'MiB':>7s} {'decode s':>9s} {'vs exact':>9s} {'install s':>10s} {'vs exact':>9s} {'RSS MiB':>8s}")
    for r in rows:
        r["decode_vs_exact"] = r["decode_cpu_s"] / exact["decode_cpu_s"]
        r["install_vs_exact"] = r["install_cpu_s"] / exact["install_cpu_s"]
        print(f"{r['setting']:24s} {r['bytes'] / 2**20:7.1f} {r['decode_cpu_s']:9.2f} {r['decode_vs_exact']:8.2f}x "
              f"{r['install_cpu_s']:10.2f} {r['install_vs_exact']:8.2f}x {r['install_peak_rss_mib']:8.0f}")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"pair": pair.name, "rounds": args.rounds, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
