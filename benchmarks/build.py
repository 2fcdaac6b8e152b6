"""The build benchmark: ``tvreg build`` of one skill (dense or fine-tune-like τ) against a plain copy.

Usage::

    python benchmarks/build.py [--params 2.5e8] [--tau dense|finetune] [--repeat 2]
                               [--baseline-tree DIR] [--breakdown] [--workdir DIR] [--keep]

What it does, in one run on the same inputs:

1. Writes a bf16 Llama-shaped ``pre`` and ``ft`` side by side with ``benchmarks/install.py``'s
   generator (tensor by tensor; ``--tau dense``: every entry moves by N(0, 1e-3);
   ``finetune``: ~31% move by one or two bf16 ulps).
2. Times, each as its own subprocess (wall seconds, and CPU seconds from ``wait4``), round
   after round so that load drifts hit every step alike:

   - ``copy``: the fine-tuned checkpoint's shards and index copied into a fresh directory
     (16 MiB blocks, fsync): the baseline;
   - ``build``: the real CLI, ``tvreg build --base pre --finetuned ft ...`` (``exact`` codec),
     with an empty tvreg cache each time, so θ_pre is fingerprinted as on a first build;
   - ``build <tree>`` with ``--baseline-tree DIR``: the same command with ``PYTHONPATH=DIR``
     (e.g. ``/work/main``), for a before/after in one run; the two artifacts must be
     byte-identical.
3. Prints each step's median wall and CPU seconds and its ratio to the median copy, with
   the load average (the machine may be shared: read CPU seconds beside wall).
   ``--breakdown`` adds one in-process build with the library's stages wrapped in timers
   (read, subtract, finite check, sketch, planes, zstd, hash, write, finish/fsync, fingerprint),
   summed over worker threads ([chunk] rows: over the threads a big tensor's chunks are spread on).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stages import StageTimer  # noqa: E402
from install import copy_baseline, generate_models, llama_shape, tvreg_cmd  # noqa: E402

SHARD_BYTES = 500 * 10**6


def run(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """Run ``cmd``; return (wall s, CPU s of the child and its threads)."""
    with open(log, "ab") as lf:
        lf.write(("$ " + " ".join(cmd) + "\n").encode())
        lf.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed:\n{log.read_text(errors='replace')[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def build_cmd(pre: Path, ft: Path, out: Path) -> list[str]:
    return [*tvreg_cmd(), "build", "--base", str(pre), "--finetuned", str(ft), "--name", "bench",
            "--version", "1.0.0", "--dataset-size", "1000", "-o", str(out)]  # fmt: skip


# --------------------------------------------------------------------------- stage breakdown (subprocess)


def breakdown_build(pre: Path, ft: Path, out: Path, out_json: Path) -> None:
    """One ``build_skill`` in-process with the library's stages wrapped in timers (summed over threads).

    Functions are replaced in this process only; a name the library no longer has is
    reported under ``not_patched`` rather than silently timing nothing.
    """
    import importlib
    import threading

    build_mod = importlib.import_module("tvreg._build.build")
    art_mod = importlib.import_module("tvreg._format.artifact")
    planes_mod = importlib.import_module("tvreg._format.codecs.planes")
    zstd_mod = importlib.import_module("tvreg._format.codecs.zstd_frame")
    sketch_mod = importlib.import_module("tvreg._format.sketch")
    fp_mod = importlib.import_module("tvreg._format.fingerprint")
    Checkpoint = importlib.import_module("tvreg._format.checkpoint").Checkpoint
    sio = importlib.import_module("tvreg._format.safetensors_io")

    timer = StageTimer()
    patch, timed = timer.patch, timer.timed

    jit_mod = importlib.import_module("tvreg._format.codecs.jit")
    patch(build_mod, "fingerprint", "fingerprint of θ_pre (hash every tensor)")
    patch(fp_mod, "tensor_hashes", "  tensor_hashes")
    patch(sio.SafetensorsFile, "read", "[worker] read a checkpoint tensor (SafetensorsFile.read)")
    patch(Checkpoint, "read_float32", "[worker] read + to fp32 (Checkpoint.read_float32)")
    patch(build_mod, "_check_finite", "[worker] NaN/Inf check")
    patch(sketch_mod, "sketch_tensor", "[worker] sketch (sketch_tensor)")
    patch(build_mod, "get_codec", "[worker] get_codec")
    patch(build_mod, "_read_reused", "[worker] read a bf16 tensor into reused memory")
    patch(jit_mod, "bf16_delta", "[worker] subtract (compiled bf16 delta)")
    patch(sketch_mod, "kth_largest_magnitude", "[worker]   sketch: top-20% cutoff (kth_largest_magnitude)")
    patch(jit_mod, "count_sketch", "[chunk]    sketch: CountSketch (compiled, per chunk)")
    patch(planes_mod, "encode_masked", "[worker] encode (planes.encode_masked, all)")
    patch(planes_mod, "split", "[worker]   planes.split (NumPy path)")
    patch(jit_mod, "mask_split", "[chunk]    encode: bitmap + planes (compiled, per chunk)")
    if hasattr(zstd_mod, "_compressor"):  # zstd contexts are C objects: time their compress through a proxy
        plain_compressor = zstd_mod._compressor

        class TimedCompressor:
            def __init__(self, inner):
                self.compress = timed(inner.compress, "[chunk]    encode: zstd compress (per frame)")

        proxies: dict[tuple, TimedCompressor] = {}

        def proxy(*profile):  # one per thread and profile, as the library keeps them (older trees take no profile)
            key = (threading.get_ident(), *profile)
            if key not in proxies:
                proxies[key] = TimedCompressor(plain_compressor(*profile))
            return proxies[key]

        zstd_mod._compressor = proxy
    else:
        patch(zstd_mod, "compress_segments", "[worker]   zstd compress_segments")
    art_mod.hashlib = timer.hashlib_with_timed_sha256("[main/worker] sha256 of blobs / file (artifact)")
    patch(art_mod.ArtifactWriter, "add", "[main] ArtifactWriter.add (write blob)")
    patch(art_mod.ArtifactWriter, "finish", "[main] ArtifactWriter.finish (header, copy body, fsync)")
    patch(sketch_mod, "store_cached", "store sketch in cache")
    patch(art_mod, "remember_verified", "remember verified")
    build_mod.ordered_map = timer.waited(build_mod.ordered_map, "[main] waiting for workers (next(stream))")
    started = time.perf_counter()
    build_mod.build_skill(pre, finetuned=ft, output=out, name="bench", version="1.0.0", dataset_size=1000)
    wall = time.perf_counter() - started
    out_json.write_text(json.dumps(timer.results(wall), indent=2))


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=2.5e8, help="parameters of the model (5.5e8: the issue's size)")
    ap.add_argument("--tau", choices=("dense", "finetune"), default="dense",
                    help="dense: every entry moves by N(0, 1e-3); finetune: ~31%% move by 1-2 bf16 ulps")  # fmt: skip
    ap.add_argument("--repeat", type=int, default=2, help="rounds of (copy, build[, baseline build]); medians shown")
    ap.add_argument("--baseline-tree", type=Path, help="also build with PYTHONPATH=DIR (e.g. main), same rounds")
    ap.add_argument("--breakdown", action="store_true", help="add an in-process build with per-stage timers")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the models and artifacts")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--copy-baseline", nargs=2, metavar="PATH", help=argparse.SUPPRESS)
    ap.add_argument("--breakdown-build", nargs=4, metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.copy_baseline:
        copy_baseline(Path(args.copy_baseline[0]), Path(args.copy_baseline[1]), [])
        return 0
    if args.breakdown_build:
        pre, ft, out, js = map(Path, args.breakdown_build)
        breakdown_build(pre, ft, out, js)
        return 0

    work = Path(args.workdir or tempfile.mkdtemp(prefix="tvreg-build-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    shape = llama_shape(args.params)
    model_bytes = shape["params"] * 2
    print(f"model: {shape['params']:,} parameters, bf16 {model_bytes / 2**20:,.1f} MiB; τ: {args.tau}; "
          f"cpu_count {os.cpu_count()}; load avg {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    env = dict(os.environ, NO_COLOR="1", TVREG_DATA_DIR=str(work / "data"))
    here = str(Path(__file__).resolve().parents[1])
    ours = dict(env, PYTHONPATH=os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p))
    trees: list[tuple[str, dict[str, str]]] = [("build", ours)]
    if args.baseline_tree:
        base_env = dict(env, PYTHONPATH=str(args.baseline_tree.resolve()))
        trees.insert(0, (f"build {args.baseline_tree.name}", base_env))
    try:
        t = time.perf_counter()
        dirs = generate_models(work / "models", shape, SHARD_BYTES, ["pre", "ft"], args.tau)
        print(f"generated pre and ft in {time.perf_counter() - t:.1f} s", flush=True)
        os.sync()
        rows: dict[str, list[tuple[float, float]]] = {"copy": []}
        loads: list[float] = []
        artifacts: dict[str, Path] = {}
        me = [sys.executable, os.path.abspath(__file__)]
        for r in range(args.repeat):
            loads.append(os.getloadavg()[0])
            os.sync()
            dst = work / "copy"
            rows["copy"].append(run([*me, "--copy-baseline", str(dirs["ft"]), str(dst)], env, logs / "copy.log"))
            shutil.rmtree(dst)
            for label, tree_env in trees:
                os.sync()
                cache = work / f"cache-{r}-{len(artifacts)}"
                out = work / f"{label.replace(' ', '-')}-{r}.tvskill"
                step_env = dict(tree_env, TVREG_CACHE_DIR=str(cache), XDG_CACHE_HOME=str(cache))
                rows.setdefault(label, []).append(
                    run(build_cmd(dirs["pre"], dirs["ft"], out), step_env, logs / f"{label.replace(' ', '-')}.log")
                )
                shutil.rmtree(cache, ignore_errors=True)
                if label in artifacts:
                    out.unlink()
                else:
                    artifacts[label] = out
            print(f"  round {r + 1}/{args.repeat}: " + ", ".join(
                f"{k} {v[-1][0]:.2f} s ({v[-1][1]:.2f} CPU s)" for k, v in rows.items()), flush=True)  # fmt: skip
        loads.append(os.getloadavg()[0])
        sizes = {k: p.stat().st_size for k, p in artifacts.items()}
        blobs = {k: p.read_bytes() for k, p in artifacts.items()} if len(artifacts) > 1 else {}
        identical = len(set(blobs.values())) == 1 if blobs else None
        copy_wall = statistics.median(w for w, _ in rows["copy"])
        copy_cpu = statistics.median(c for _, c in rows["copy"])
        artifact_mib = next(iter(sizes.values())) / 2**20
        print(f"\nft checkpoint {model_bytes / 2**20:,.1f} MiB; artifact {artifact_mib:,.1f} MiB; {args.repeat} rounds; "
              f"load avg {min(loads):.2f}-{max(loads):.2f}")  # fmt: skip
        print(f"{'step':<24} {'wall s':>8} {'range':>13} {'CPU s':>8} {'x copy (wall)':>14} {'x copy (CPU)':>13}")
        result: dict = {"params": shape["params"], "tau": args.tau, "artifact_bytes": sizes, "load_avg": loads,
                        "steps": {}, "identical_artifacts": identical}  # fmt: skip
        for label, got in rows.items():
            walls = [w for w, _ in got]
            wall, cpu = statistics.median(walls), statistics.median(c for _, c in got)
            result["steps"][label] = {"wall_s": wall, "cpu_s": cpu, "walls": walls, "ratio_to_copy": wall / copy_wall}
            print(f"{label:<24} {wall:8.2f} {min(walls):6.2f}-{max(walls):<6.2f} {cpu:8.2f} {wall / copy_wall:14.2f} "
                  f"{cpu / copy_cpu:13.2f}")  # fmt: skip
        print(f"ratio to copy (target ≤ 3): {result['steps']['build']['ratio_to_copy']:.2f}")
        if identical is not None:
            print(f"artifacts of {' and '.join(artifacts)} byte-identical: {'yes' if identical else 'NO'}")
        if args.breakdown:
            bjson = logs / "breakdown.json"
            cache = work / "cache-breakdown"
            benv = dict(ours, TVREG_CACHE_DIR=str(cache), XDG_CACHE_HOME=str(cache))
            wall, _ = run([*me, "--breakdown-build", str(dirs["pre"]), str(dirs["ft"]), str(work / "breakdown.tvskill"),
                           str(bjson)], benv, logs / "breakdown.log")  # fmt: skip
            breakdown = json.loads(bjson.read_text())
            result["breakdown"] = breakdown
            print(f"\nbuild stage breakdown (in-process build_skill {breakdown['wall_s']:.2f} s, process {wall:.2f} s; "
                  "[worker]/[chunk] rows are summed over threads; CPU = the calling thread's own):")  # fmt: skip
            print(f"  {'stage':<58} {'wall s':>8} {'CPU s':>8} {'calls':>6}")
            for label, (secs, cpu_s, calls) in sorted(breakdown["stages"].items(), key=lambda kv: -kv[1][0]):
                print(f"  {label:<58} {secs:8.2f} {cpu_s:8.2f} {calls:6d}")
            if breakdown["not_patched"]:
                print(f"  (not found in this tvreg, not timed: {', '.join(breakdown['not_patched'])})")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        if identical is False:
            return 1
    finally:
        if not args.keep:
            for name in ("models", "copy", *(p.name for p in work.glob("*.tvskill")), *(p.name for p in work.glob("cache-*"))):
                target = work / name
                if target.is_dir():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
