"""End-to-end speed and memory benchmark of ``tvreg build``, ``tvreg init`` and ``tvreg install``.

Usage::

    python benchmarks/install_speed.py [--params 5e8] [--workdir DIR] [--keep] [--cold] [--breakdown]

What it does:

1. Generates three Llama-shaped Hugging Face model directories in bf16 (``pre``: random,
   seeded; ``ft`` = pre + 1e-3·randn; ``general`` = pre + different 1e-3·randn), tensor by
   tensor, straight into sharded safetensors with :class:`tvreg.safetensors_io.SafetensorsWriter`
   (no whole model is ever in memory).
2. Runs every measured step as its own subprocess (so peak RSS is that command's), under
   ``/usr/bin/time -v`` when present (its "Maximum resident set size"), else reading the
   child's ``ru_maxrss`` from ``os.wait4``; ``TVREG_DATA_DIR``/``TVREG_CACHE_DIR`` point into
   the work directory. Steps: a plain copy baseline (read + write + fsync the same bytes),
   ``tvreg build`` (twice: with and without the fingerprint cache), ``tvreg init`` and
   ``tvreg install`` (twice: the second reuses the caches).
3. Prints a table and ratios against the targets (install wall within 3x of the copy;
   install peak RSS below one shard plus a few largest tensors) and writes
   ``<workdir>/results.json``.

The page cache is left warm by default (every input was just written, and on a machine
with enough RAM all of it stays cached), so the numbers are CPU and write bound.
``--cold`` drops the page cache before each step (needs root: ``/proc/sys/vm/drop_caches``).

Without ``--keep`` the models, artifacts and store are deleted at the end; the work
directory is left holding only ``results.json`` and the ``logs/`` of each command.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Everything heavy (torch, tvreg) is imported lazily: the copy baseline runs this file as
# a subprocess and must not pay for (or count in its RSS) a torch import.

VOCAB = 32000
LAYERS = 16
HEAD_DIM = 128
SHARD_BYTES = 500 * 10**6  # what `save_pretrained(max_shard_size="500MB")` means
INIT_STD = 0.02
NOISE_STD = 1e-3
SEED = 1234
ROLES = ("pre", "ft", "general")
BIG_DIRS = ("models", "copy", "store", "cache", "cache-scratch", "artifacts")
TIME_BIN = "/usr/bin/time"


# --------------------------------------------------------------------------- model shape


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def llama_shape(target_params: float) -> dict:
    """The smallest Llama shape (vocab 32000, 16 layers, hidden a multiple of 128) with ≥ target params."""
    hidden = HEAD_DIM
    while True:
        inter = _round_up(hidden * 8 // 3, 256)
        shape = {"vocab": VOCAB, "hidden": hidden, "intermediate": inter, "layers": LAYERS}
        shape["params"] = sum(math.prod(s) for _, s in tensor_specs(shape))
        if shape["params"] >= target_params:
            return shape
        hidden += HEAD_DIM


def tensor_specs(shape: dict) -> list[tuple[str, tuple[int, ...]]]:
    """LlamaForCausalLM's state-dict names and shapes, in state-dict order (MHA, untied lm_head)."""
    v, h, i = shape["vocab"], shape["hidden"], shape["intermediate"]
    specs: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for n in range(shape["layers"]):
        p = f"model.layers.{n}."
        specs += [(p + f"self_attn.{x}_proj.weight", (h, h)) for x in "qkvo"]
        specs += [
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
            (p + "input_layernorm.weight", (h,)),
            (p + "post_attention_layernorm.weight", (h,)),
        ]
    specs += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return specs


def plan_shards(
    specs: list[tuple[str, tuple[int, ...]]], limit: int
) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Greedy packing in state-dict order, like transformers' ``shard_checkpoint``."""
    shards: list[list] = [[]]
    size = 0
    for name, shp in specs:
        nbytes = math.prod(shp) * 2
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append((name, shp))
        size += nbytes
    return shards


def hf_config(shape: dict) -> dict:
    heads = shape["hidden"] // HEAD_DIM
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": shape["vocab"],
        "hidden_size": shape["hidden"],
        "intermediate_size": shape["intermediate"],
        "num_hidden_layers": shape["layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "initializer_range": INIT_STD,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
        "dtype": "bfloat16",
    }


# --------------------------------------------------------------------------- generation


def generate_models(root: Path, shape: dict, shard_bytes: int) -> dict[str, Path]:
    """Write pre / ft / general side by side, one tensor at a time (peak: a few tensors)."""
    import torch

    from tvreg.safetensors_io import SafetensorsWriter

    torch.set_num_threads(os.cpu_count() or 1)
    specs = tensor_specs(shape)
    shards = plan_shards(specs, shard_bytes)
    dirs = {role: root / role for role in ROLES}
    for d in dirs.values():
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(hf_config(shape), indent=2) + "\n")
    weight_map: dict[str, str] = {}
    total = 0
    index = 0
    started = time.perf_counter()
    for k, shard in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        entries = [(name, "BF16", shp) for name, shp in shard]
        files = {role: open(dirs[role] / fname, "wb") for role in ROLES}  # noqa: SIM115
        try:
            writers = {role: SafetensorsWriter(files[role], entries, {"format": "pt"}) for role in ROLES}
            for name, shp in shard:
                gen = torch.Generator().manual_seed(SEED * 1_000_003 + index)
                index += 1
                if name.endswith("layernorm.weight") or name == "model.norm.weight":
                    pre32 = torch.randn(shp, generator=gen).mul_(0.1).add_(1.0)
                else:
                    pre32 = torch.randn(shp, generator=gen).mul_(INIT_STD)
                pre = pre32.to(torch.bfloat16)
                del pre32
                writers["pre"].write(name, pre)
                for role in ("ft", "general"):
                    noisy = torch.randn(shp, generator=gen).mul_(NOISE_STD).add_(pre)
                    writers[role].write(name, noisy.to(torch.bfloat16))
                    del noisy
                weight_map[name] = fname
                total += pre.numel() * 2
            for w in writers.values():
                w.finish()
        finally:
            for f in files.values():
                f.close()
        print(f"  shard {k}/{len(shards)} written ({time.perf_counter() - started:.0f} s)", flush=True)
    index_json = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"
    for d in dirs.values():
        (d / "model.safetensors.index.json").write_text(index_json)
    return dirs


# --------------------------------------------------------------------------- copy baseline (subprocess)


def copy_baseline(src: Path, dst: Path, reads: list[Path]) -> None:
    """Copy src's shards and index into dst (fsynced), then read every file in ``reads``."""
    dst.mkdir(parents=True)
    buf = 16 * 1024 * 1024
    for p in sorted(src.iterdir()):
        if not (p.name.endswith(".safetensors") or p.name.endswith(".index.json")):
            continue
        with open(p, "rb") as fin, open(dst / p.name, "wb") as fout:
            shutil.copyfileobj(fin, fout, buf)
            fout.flush()
            os.fsync(fout.fileno())
    fd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)
    block = bytearray(buf)
    for p in reads:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(block):
                pass


# --------------------------------------------------------------------------- stage breakdown (subprocess)


def breakdown_install(artifact: Path, model_dir: Path, out_json: Path) -> None:
    """Run one install in-process with the library's stages wrapped in timers (summed over threads).

    Nothing in the library is changed on disk: functions are replaced in this process only.
    """
    import hashlib
    import importlib
    import threading
    import types

    # import_module, not `import tvreg.install as inst`: the package re-exports a function
    # called `install`, which `import a.b as c` would return instead of the module.
    art_mod = importlib.import_module("tvreg.artifact")
    exact_mod = importlib.import_module("tvreg.codecs.exact")
    zstd_mod = importlib.import_module("tvreg.codecs.zstd_frame")
    inst = importlib.import_module("tvreg.install")
    sio = importlib.import_module("tvreg.safetensors_io")
    Checkpoint = importlib.import_module("tvreg.checkpoint").Checkpoint

    totals: dict[str, list[float]] = {}  # label -> [wall s, calling-thread CPU s, calls]
    missing: list[str] = []
    guard = threading.Lock()

    def add(label: str, wall: float, cpu: float) -> None:
        with guard:
            slot = totals.setdefault(label, [0.0, 0.0, 0])
            slot[0] += wall
            slot[1] += cpu
            slot[2] += 1

    def timed(fn, label):
        def wrapper(*a, **k):
            t, c = time.perf_counter(), time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                add(label, time.perf_counter() - t, time.thread_time() - c)

        return wrapper

    def patch(owner, attr, label):
        # The library changes under this script: skip (and report) what is no longer there.
        if not hasattr(owner, attr):
            missing.append(f"{getattr(owner, '__name__', owner)}.{attr}")
            return
        setattr(owner, attr, timed(getattr(owner, attr), label))

    def hashlib_with_timed_sha256(label):
        ns = {k: getattr(hashlib, k) for k in dir(hashlib) if not k.startswith("__")}
        ns["sha256"] = timed(hashlib.sha256, label)
        return types.SimpleNamespace(**ns)

    patch(inst, "tensor_hashes", "verify pristine G fingerprint (tensor_hashes)")
    patch(inst, "file_digest", "sha256 of the whole artifact (file_digest)")
    patch(inst, "keep_artifact", "copy artifact into store (keep_artifact)")
    patch(inst, "_stage_other_files", "stage other files")
    patch(inst, "swap_directories", "swap directories")
    patch(inst.shutil, "rmtree", "rmtree (old tree / staging)")
    patch(inst, "remember", "seed fingerprint cache (remember)")
    patch(Checkpoint, "read", "[worker] read G tensor")
    patch(art_mod.Artifact, "decode", "[worker] Artifact.decode (all)")
    patch(sio.SafetensorsFile, "read_bytes", "[worker]   decode: read blob")
    art_mod.hashlib = hashlib_with_timed_sha256("[worker]   decode: sha256 verify blob")
    patch(exact_mod.ExactCodec, "decode", "[worker]   decode: codec (zstd + unshuffle)")
    patch(zstd_mod, "decompress_into", "[worker]     codec: zstd decompress")
    patch(exact_mod, "_unshuffle", "[worker]     codec: unshuffle")
    patch(inst, "task_arithmetic", "[worker] task_arithmetic (fp32 merge + round)")
    inst.hashlib = hashlib_with_timed_sha256("[worker] sha256 of merged tensor")
    patch(sio.SafetensorsWriter, "write", "[main] SafetensorsWriter.write")
    patch(sio.SafetensorsWriter, "finish", "[main] SafetensorsWriter.finish (fsync)")
    original_map = inst.ordered_map

    def waited_map(*a, **k):
        gen = original_map(*a, **k)
        while True:
            t, c = time.perf_counter(), time.thread_time()
            try:
                item = next(gen)
            except StopIteration:
                return
            finally:
                add(
                    "[main] waiting for workers (next(stream))",
                    time.perf_counter() - t,
                    time.thread_time() - c,
                )
            yield item

    inst.ordered_map = waited_map
    started = time.perf_counter()
    inst.install([artifact], into=model_dir)
    wall = time.perf_counter() - started
    out_json.write_text(json.dumps({"wall_s": wall, "stages": totals, "not_patched": missing}, indent=2))


# --------------------------------------------------------------------------- sanity check


SAMPLE_TENSORS = ("model.layers.0.self_attn.q_proj.weight", "model.norm.weight", "lm_head.weight")


def verify_sample(dirs: dict[str, Path], weight: float) -> list[str]:
    """Names of sampled tensors where the installed model differs from bf16(G + ω (ft − pre)).

    Makes sure the benchmark timed a real install. G's original weights are read from the
    pristine copy tvreg keeps in its store (the lockfile says where).
    """
    import torch

    from tvreg.lockfile import read_lock
    from tvreg.safetensors_io import SafetensorsFile

    def load(directory: Path, name: str) -> torch.Tensor:
        index = json.loads((directory / "model.safetensors.index.json").read_text())
        with SafetensorsFile(directory / index["weight_map"][name]) as f:
            return f.read(name)

    pristine = Path(read_lock(dirs["general"]).pristine)
    w = torch.tensor(weight, dtype=torch.float32)
    bad = []
    for name in SAMPLE_TENSORS:
        tau = load(dirs["ft"], name).float() - load(dirs["pre"], name).float()
        expected = (load(pristine, name).float() + tau * w).to(torch.bfloat16)
        got = load(dirs["general"], name)
        if got.dtype != torch.bfloat16 or not torch.equal(got.view(torch.int16), expected.view(torch.int16)):
            bad.append(name)
    return bad


# --------------------------------------------------------------------------- measuring


def drop_caches() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def _parse_time_v(text: str) -> dict:
    def grab(pattern: str) -> str | None:
        m = re.search(pattern, text)
        return m.group(1) if m else None

    out: dict = {}
    if (v := grab(r"Maximum resident set size \(kbytes\): (\d+)")) is not None:
        out["max_rss_kib"] = int(v)
    if (v := grab(r"User time \(seconds\): ([\d.]+)")) is not None:
        out["user_s"] = float(v)
    if (v := grab(r"System time \(seconds\): ([\d.]+)")) is not None:
        out["sys_s"] = float(v)
    return out


def machine_busy_s() -> float | None:
    """Seconds of non-idle CPU time of the whole machine since boot (Linux ``/proc/stat``)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _fmt(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:6.2f}"


def run_step(label: str, cmd: list[str], env: dict, logdir: Path, cold: bool) -> dict:
    """Run ``cmd`` as a subprocess; return wall seconds, peak RSS and CPU time."""
    os.sync()  # write-back of earlier steps is not charged to this one
    dropped = drop_caches() if cold else False
    busy0 = machine_busy_s()  # other work on the machine skews every number: record it
    log = logdir / f"{label}.log"
    timefile = logdir / f"{label}.time"
    use_time = os.access(TIME_BIN, os.X_OK)
    full = [TIME_BIN, "-v", "-o", str(timefile), *cmd] if use_time else cmd
    with open(log, "wb") as lf:
        lf.write(("$ " + " ".join(cmd) + "\n").encode())
        lf.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdout=lf, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"step `{label}` failed with exit code {proc.returncode}:\n{tail}")
    result = {
        "step": label,
        "cmd": cmd,
        "wall_s": wall,
        # wait4's ru_maxrss of the direct child (time itself, or the command): KiB on Linux.
        "wait4_max_rss_kib": usage.ru_maxrss,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "rss_source": "os.wait4",
        "cache": "cold" if dropped else "warm",
    }
    if use_time:
        parsed = _parse_time_v(timefile.read_text(errors="replace"))
        result.update(parsed)
        result["rss_source"] = "/usr/bin/time -v"
    result.setdefault("max_rss_kib", usage.ru_maxrss)
    result["peak_rss_mib"] = result["max_rss_kib"] / 1024
    cpu = result["user_s"] + result["sys_s"]
    busy1 = machine_busy_s()
    # CPU time the rest of the machine used meanwhile (other processes, kernel threads).
    result["other_cpu_s"] = max(0.0, busy1 - busy0 - cpu) if busy0 is not None and busy1 is not None else None
    result["cpu_s"] = cpu
    result["cpu_util"] = cpu / wall if wall > 0 else 0.0
    print(
        f"  {label:<22} {wall:8.2f} s   peak RSS {result['peak_rss_mib']:8.1f} MiB   "
        f"CPU {cpu:7.2f} s ({result['cpu_util'] * 100:.0f}%)   other CPU {_fmt(result['other_cpu_s'])} s",
        flush=True,
    )
    return result


def tvreg_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "tvreg"
    if exe.is_file() and os.access(exe, os.X_OK):
        return [str(exe)]
    found = shutil.which("tvreg")
    return [found] if found else [sys.executable, "-m", "tvreg.cli"]


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=float, default=5e8, help="minimum parameter count (default 5e8)")
    ap.add_argument("--workdir", type=Path, help="work directory (default: a new one under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep models, artifacts and store afterwards")
    ap.add_argument(
        "--shard-mb", type=float, default=SHARD_BYTES / 1e6, help="shard size in MB (default 500)"
    )
    ap.add_argument("--cold", action="store_true", help="drop the page cache before every step (root only)")
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="also run one install in-process with per-stage timers and print where the time goes",
    )
    ap.add_argument("--copy-baseline", nargs="+", metavar="PATH", help=argparse.SUPPRESS)
    ap.add_argument("--breakdown-install", nargs=3, metavar="PATH", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.copy_baseline:
        src, dst, *reads = args.copy_baseline
        copy_baseline(Path(src), Path(dst), [Path(p) for p in reads])
        return 0
    if args.breakdown_install:
        artifact, model_dir, out = args.breakdown_install
        breakdown_install(Path(artifact), Path(model_dir), Path(out))
        return 0

    shape = llama_shape(args.params)
    shard_bytes = int(args.shard_mb * 1e6)
    model_bytes = shape["params"] * 2
    largest_tensor_numel = max(math.prod(s) for _, s in tensor_specs(shape))
    cpus = os.cpu_count() or 1
    print(
        f"machine: {platform.node()} {platform.machine()}, cpu_count = {cpus}, python {platform.python_version()}"
    )
    print(
        f"model: Llama vocab {shape['vocab']}, hidden {shape['hidden']}, intermediate {shape['intermediate']}, "
        f"{shape['layers']} layers, heads {shape['hidden'] // HEAD_DIM}, untied lm_head"
    )
    print(
        f"parameters: {shape['params']:,} (target ≥ {args.params:,.0f}); bf16 size {model_bytes / 2**20:,.1f} MiB"
    )

    if args.workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="tvreg-bench-", dir="/tmp"))
    else:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        clash = [n for n in (*BIG_DIRS, "logs", "results.json") if (workdir / n).exists()]
        if clash:
            print(f"error: {workdir} already holds {', '.join(clash)}; choose a new or empty directory.")
            return 2
    # Peak disk: 3 models + copy + pristine G + staging during install, plus the artifact
    # (≤ fp32 τ, twice while built, and once more in the store).
    need = 6 * model_bytes + 3 * 2 * model_bytes + (1 << 30)
    free = shutil.disk_usage(workdir).free
    print(f"workdir: {workdir} (free {free / 2**30:.1f} GiB, worst case needs {need / 2**30:.1f} GiB)")
    if free < need:
        print("error: not enough free disk space; pass --workdir on a larger disk or lower --params.")
        return 2

    cold = False
    if args.cold:
        cold = drop_caches()
        if not cold:
            print(
                "note: cannot write /proc/sys/vm/drop_caches (not root?); measuring with a warm page cache."
            )
    cache_note = (
        "page cache dropped before each step (cold reads)"
        if cold
        else "page cache NOT dropped: inputs are warm in RAM when they fit (run with --cold as root for cold reads)"
    )
    print(f"note: {cache_note}")

    logs = workdir / "logs"
    logs.mkdir()
    models = workdir / "models"
    env = dict(os.environ)
    env["TVREG_DATA_DIR"] = str(workdir / "store")
    env["TVREG_CACHE_DIR"] = str(workdir / "cache")
    env.setdefault("NO_COLOR", "1")
    results: dict = {}
    try:
        print("\n[1/3] generating pre / ft / general ...", flush=True)
        t0 = time.perf_counter()
        dirs = generate_models(models, shape, shard_bytes)
        gen_s = time.perf_counter() - t0
        os.sync()
        shard_sizes = sorted(p.stat().st_size for p in dirs["general"].glob("*.safetensors"))
        print(
            f"  generated in {gen_s:.1f} s: {len(shard_sizes)} shards per model, largest {shard_sizes[-1] / 2**20:.1f} MiB"
        )

        print("\n[2/3] measuring (each step a separate process) ...", flush=True)
        tv = tvreg_cmd()
        artifacts = workdir / "artifacts"
        artifacts.mkdir()
        skill = artifacts / "ft.tvskill"
        build = [
            *tv,
            "build",
            "--base",
            str(dirs["pre"]),
            "--finetuned",
            str(dirs["ft"]),
            "--name",
            "bench",
            "--version",
            "1.0.0",
            "--dataset-size",
            "1000",
            "-o",
            str(skill),
        ]
        steps = []
        steps.append(
            run_step(
                "startup (import)", [sys.executable, "-c", "import tvreg.cli, tvreg.install"], env, logs, cold
            )
        )
        scratch_env = {**env, "TVREG_CACHE_DIR": str(workdir / "cache-scratch")}
        steps.append(
            run_step("fingerprint pre", [*tv, "fingerprint", str(dirs["pre"])], scratch_env, logs, cold)
        )
        shutil.rmtree(workdir / "cache-scratch", ignore_errors=True)
        steps.append(run_step("build (+fingerprint)", build, env, logs, cold))
        steps.append(run_step("build (cached fp)", build, env, logs, cold))
        artifact_bytes = skill.stat().st_size
        steps.append(
            run_step(
                "copy baseline",
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--copy-baseline",
                    str(dirs["general"]),
                    str(workdir / "copy"),
                    str(skill),
                ],
                env,
                logs,
                cold,
            )
        )
        shutil.rmtree(workdir / "copy")
        steps.append(
            run_step(
                "init",
                [*tv, "init", str(dirs["general"]), "--base", str(dirs["pre"]), "--general-size", "10000"],
                env,
                logs,
                cold,
            )
        )
        install = [*tv, "install", str(skill), "--into", str(dirs["general"])]
        steps.append(run_step("install #1", install, env, logs, cold))
        steps.append(run_step("install #2", install, env, logs, cold))
        by = {s["step"]: s for s in steps}
        mismatches = verify_sample(dirs, weight=1000 / 10000)
        if mismatches:
            print(
                f"  WARNING: installed weights differ from bf16(G + 0.1 (ft - pre)) in: {', '.join(mismatches)}"
            )
        else:
            print("  sanity check: sampled installed tensors == bf16(G + 0.1 (ft - pre)) bit for bit")

        breakdown = None
        if args.breakdown:
            bjson = logs / "breakdown.json"
            step = run_step(
                "install (breakdown)",
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--breakdown-install",
                    str(skill),
                    str(dirs["general"]),
                    str(bjson),
                ],
                env,
                logs,
                cold,
            )
            breakdown = json.loads(bjson.read_text())
            breakdown["process_wall_s"] = step["wall_s"]

        copy_wall = by["copy baseline"]["wall_s"]
        largest_shard = shard_sizes[-1]
        rss_target = largest_shard + 3 * largest_tensor_numel * 4
        inst_rss = max(by["install #1"]["max_rss_kib"], by["install #2"]["max_rss_kib"]) * 1024
        ratios = {
            "install#1_wall_over_copy": by["install #1"]["wall_s"] / copy_wall,
            "install#2_wall_over_copy": by["install #2"]["wall_s"] / copy_wall,
            "build_wall_over_copy": by["build (+fingerprint)"]["wall_s"] / copy_wall,
            "build_cached_fp_wall_over_copy": by["build (cached fp)"]["wall_s"] / copy_wall,
            "install_peak_rss_over_rss_target": inst_rss / rss_target,
            "install_peak_rss_over_model_size": inst_rss / model_bytes,
            "install_peak_rss_above_startup_over_rss_target": (
                inst_rss - by["startup (import)"]["max_rss_kib"] * 1024
            )
            / rss_target,
        }
        results = {
            "machine": {
                "node": platform.node(),
                "cpu_count": cpus,
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "cache": "cold" if cold else "warm",
            "model": {
                **shape,
                "dtype": "bfloat16",
                "bytes": model_bytes,
                "shards": len(shard_sizes),
                "largest_shard_bytes": largest_shard,
                "largest_tensor_numel": largest_tensor_numel,
            },
            "artifact_bytes": artifact_bytes,
            "generate_s": gen_s,
            "steps": steps,
            "rss_target_bytes": rss_target,
            "ratios": ratios,
            "breakdown": breakdown,
        }
        (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")

        print("\n[3/3] results")
        print(f"cpu_count: {cpus}; cache: {cache_note}")
        print(
            f"model {model_bytes / 2**20:,.1f} MiB in {len(shard_sizes)} shards (largest {largest_shard / 2**20:.1f} MiB); "
            f"artifact {artifact_bytes / 2**20:,.1f} MiB ({artifact_bytes / (shape['params'] * 4):.2f} of fp32 τ)"
        )
        print(
            f"\n{'step':<22} {'wall s':>9} {'CPU s':>9} {'CPU %':>7} {'peak RSS MiB':>13} {'wall/copy':>10}"
            f" {'other CPU s':>12}"
        )
        for s in steps:
            print(
                f"{s['step']:<22} {s['wall_s']:9.2f} {s['cpu_s']:9.2f} {s['cpu_util'] * 100:7.0f} "
                f"{s['peak_rss_mib']:13.1f} {s['wall_s'] / copy_wall:10.2f} {_fmt(s['other_cpu_s']):>12}"
            )
        print()
        fp_cost = by["build (+fingerprint)"]["wall_s"] - by["build (cached fp)"]["wall_s"]
        fp_alone = by["fingerprint pre"]["wall_s"] - by["startup (import)"]["wall_s"]
        print(
            f"fingerprinting pre: build #1 − build #2 = {fp_cost:.2f} s; "
            f"`tvreg fingerprint pre` − startup = {fp_alone:.2f} s"
        )
        print(f"install #1 wall / copy wall : {ratios['install#1_wall_over_copy']:.2f}  (target ≤ 3)")
        print(f"install #2 wall / copy wall : {ratios['install#2_wall_over_copy']:.2f}  (target ≤ 3)")
        print(
            f"build wall / copy wall      : {ratios['build_wall_over_copy']:.2f}  "
            f"(cached fingerprint: {ratios['build_cached_fp_wall_over_copy']:.2f})"
        )
        print(
            f"install peak RSS            : {inst_rss / 2**20:.1f} MiB = "
            f"{ratios['install_peak_rss_over_rss_target']:.2f} x (largest shard {largest_shard / 2**20:.1f} MiB"
            f" + 3 x largest fp32 tensor {largest_tensor_numel * 4 / 2**20:.1f} MiB = {rss_target / 2**20:.1f} MiB)"
            f" = {ratios['install_peak_rss_over_model_size']:.2f} x model size"
        )
        base_rss = by["startup (import)"]["max_rss_kib"] * 1024
        print(
            f"install peak RSS above a bare `import torch, tvreg` process: {(inst_rss - base_rss) / 2**20:.1f} MiB "
            f"= {(inst_rss - base_rss) / rss_target:.2f} x the target above"
        )
        print(
            f"process startup (import tvreg + torch): {by['startup (import)']['wall_s']:.2f} s, "
            f"{by['startup (import)']['peak_rss_mib']:.1f} MiB RSS (included in every tvreg row)"
        )
        print(f"peak RSS source: {steps[0]['rss_source']}")
        if breakdown:
            print(
                f"\ninstall stage breakdown (in-process, wall {breakdown['wall_s']:.2f} s; "
                "[worker] rows are summed over worker threads; CPU = the calling thread's own, "
                "so waiting for the GIL or a core shows as wall but not CPU):"
            )
            print(f"  {'stage':<52} {'wall s':>8} {'CPU s':>8} {'calls':>6}")
            for label, (secs, cpu_s, calls) in sorted(breakdown["stages"].items(), key=lambda kv: -kv[1][0]):
                print(f"  {label:<52} {secs:8.2f} {cpu_s:8.2f} {calls:6d}")
            if breakdown["not_patched"]:
                print(f"  (not found in this tvreg, not timed: {', '.join(breakdown['not_patched'])})")
        print(f"\nresults written to {workdir / 'results.json'}")
    finally:
        if not args.keep:
            for name in BIG_DIRS:
                shutil.rmtree(workdir / name, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
