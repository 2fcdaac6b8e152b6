"""``TaskVector.apply_to`` beside ``tvreg.install`` on the same inputs: wall time and peak memory, one run.

Why: ``apply_to`` streams through install's merge engine, so it should cost what install
costs (no second copy of any model in memory) — this measures that instead of asserting it.
Synthetic fp32 safetensors models (θ_pre, two fine-tunes, G = θ_pre + noise) of ``--size-mib``
each are written to a temporary directory, the two skills are built (``exact``, untimed), and
each case runs in a fresh subprocess that reports its wall time and how far its RSS
peaked above what it was after the imports (``VmHWM`` reset through ``/proc/self/clear_refs``,
Linux), and how far its anonymous memory (``RssAnon``, sampled every 5 ms: the heap, not
the file pages that reading through ``mmap`` maps) peaked. Baselines in the same run: ``python -c "import torch, tvreg..."`` (the
interpreter's own RSS) and a plain copy of G's files (the I/O floor).

    python benchmarks/taskvector.py                   # 128 MiB per model
    python benchmarks/taskvector.py --size-mib 512 --format json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

PRELUDE = """
import sys, time
import torch, tvreg, tvreg._env.operations, tvreg._merge, tvreg._format.codecs.exact
from tvreg.taskvector import TaskVector

def _kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS: measure the work, not the imports
rss0, anon0 = _kib("VmRSS:"), _kib("RssAnon:")
peak_anon = [anon0]

def _sample():
    while True:
        peak_anon[0] = max(peak_anon[0], _kib("RssAnon:"))
        time.sleep(0.005)

import threading
threading.Thread(target=_sample, daemon=True).start()
args = sys.argv[1:]
start = time.perf_counter()
"""
EPILOGUE = """
wall = time.perf_counter() - start
print(wall, (_kib("VmHWM:") - rss0) * 1024, (peak_anon[0] - anon0) * 1024)
"""

CASES = {
    "imports only (baseline)": "pass",
    "copy of G (I/O floor)": "import shutil; shutil.copytree(args[0], args[1])",
    "tvreg.install (2 skills, ω=0.3)": (
        "import shutil; shutil.copytree(args[0], args[1]); "
        "tvreg.install([args[3], args[4]], into=args[1], base=args[2], general_size=1, "
        "weights={'a': 0.3, 'b': 0.3})"
    ),
    "(0.3·Σ load).apply_to": (
        "(sum([TaskVector.load(args[3]), TaskVector.load(args[4])]) * 0.3).apply_to(args[0], args[1], base=args[2])"
    ),
    "(0.3·Σ from_checkpoints).apply_to": (
        "(sum([TaskVector.from_checkpoints(args[2], args[5]), TaskVector.from_checkpoints(args[2], args[6])])"
        " * 0.3).apply_to(args[0], args[1], base=args[2])"
    ),
}


def _model(path: Path, tensors: dict) -> Path:
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text('{"model_type": "synthetic"}\n')
    return path


def _inputs(root: Path, size_mib: int) -> list[str]:
    import torch

    from tvreg._build.build import build_skill

    gen = torch.Generator().manual_seed(0)
    rows = 1024
    cols = 2048
    count = max(1, size_mib * 2**20 // (rows * cols * 4))
    pre = {f"layers.{i}.weight": torch.randn(rows, cols, generator=gen) for i in range(count)}

    def nudged(scale: float) -> dict:
        return {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in pre.items()}

    paths = {
        "pre": _model(root / "pre", pre),
        "g": _model(root / "g", nudged(1e-2)),
        "a": _model(root / "a", nudged(1e-3)),
        "b": _model(root / "b", nudged(1e-3)),
    }
    for name in ("a", "b"):
        build_skill(paths["pre"], finetuned=paths[name], output=root / f"{name}.tvskill", name=name, version="1.0.0")
    return [str(paths["g"]), "", str(paths["pre"]), str(root / "a.tvskill"), str(root / "b.tvskill"),
            str(paths["a"]), str(paths["b"])]  # fmt: skip


def _run(code: str, args: list[str], out: Path) -> tuple[float, int, int]:
    shutil.rmtree(out, ignore_errors=True)
    argv = [args[0], str(out), *args[2:]]
    script = PRELUDE + textwrap.dedent(code) + EPILOGUE
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, check=True)
    wall, rss, anon = done.stdout.split()[-3:]
    return float(wall), int(rss), int(anon)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=128, help="size of each synthetic fp32 model (default 128)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per case; the best wall time is kept")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tvreg-bench-tv-") as tmp:
        root = Path(tmp)
        inputs = _inputs(root, args.size_mib)
        results = {}
        for label, code in CASES.items():
            runs = [_run(code, inputs, root / "out") for _ in range(args.repeat)]
            results[label] = {
                "seconds": min(w for w, _, _ in runs),
                "peak_rss_growth_bytes": max(r for _, r, _ in runs),
                "peak_anon_growth_bytes": max(a for _, _, a in runs),
            }
    install = results["tvreg.install (2 skills, ω=0.3)"]["seconds"]
    model = args.size_mib * 2**20
    for r in results.values():
        r["peak_growth_vs_model"] = r["peak_rss_growth_bytes"] / model
        r["anon_growth_vs_model"] = r["peak_anon_growth_bytes"] / model
        r["time_vs_install"] = r["seconds"] / install
    if args.format == "json":
        print(json.dumps({"size_mib": args.size_mib, "results": results}, indent=2))
        return
    print(f"models of {args.size_mib} MiB (fp32), best of {args.repeat}")
    print(
        f"{'case':38} {'seconds':>8} {'x install':>9} {'RSS growth MiB':>15} {'/model':>7} "
        f"{'anon growth MiB':>16} {'/model':>7}"
    )
    for label, r in results.items():
        print(
            f"{label:38} {r['seconds']:8.2f} {r['time_vs_install']:9.2f} {r['peak_rss_growth_bytes'] / 2**20:15.0f} "
            f"{r['peak_growth_vs_model']:7.2f} {r['peak_anon_growth_bytes'] / 2**20:16.0f} {r['anon_growth_vs_model']:7.2f}"
        )


if __name__ == "__main__":
    main()
