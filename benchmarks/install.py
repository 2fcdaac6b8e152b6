"""The install benchmark: tvreg install (CPU) vs mergekit vs a plain copy, on one ≥ 1B-parameter model.

Usage::

    python benchmarks/install.py [--params 1e9] [--skills 3] [--workdir DIR] [--keep]
                                 [--mergekit-venv DIR | --no-mergekit] [--cold] [--breakdown] [--noop]

What it does, in one run on the same inputs:

1. Generates Llama-shaped Hugging Face model directories in bf16, tensor by tensor
   (no model is ever whole in memory): ``pre`` (random, seeded), ``general`` and
   ``ft1..ftK`` (each pre + its own 1e-3·randn; with ``--tau finetune``, ~31% of the
   entries moved by one or two bf16 ulps, like a short low-LR fine-tune).
2. Builds one skill per ``ft`` with ``tvreg build`` and runs ``tvreg init general``.
3. Times, each as its own subprocess under ``/usr/bin/time -v`` (peak RSS of that
   command): a plain copy of the bytes an install reads and writes; ``tvreg install``
   with ``task_arithmetic`` (twice) and with ``ties``; ``mergekit-yaml`` with
   ``task_arithmetic`` and with ``ties`` on the same models. mergekit lives in its own
   virtualenv (``--mergekit-venv``, default ``benchmarks/.venv-mergekit``), created on
   first use with ``pip install torch==2.13.0`` first (the CPU wheel) and then
   ``pip install mergekit``.
   Then, on the installed model, the commands that have nothing to change (the same
   install again, ``upgrade``, ``sync --locked``): wall and CPU seconds against the full
   install (``--noop`` times only these and the install they follow).
4. Prints wall-time and peak-RSS ratios against the targets (tvreg ≥ 5x faster than
   mergekit and ≤ 0.5x its peak RSS; tvreg within 2x of the copy) and writes
   ``<workdir>/results.json``.

mergekit merges whole models, so it is given base ``pre`` and the models ``general``
(weight 1) and ``ft1..ftK`` (weight ω_k): for ``task_arithmetic`` that is exactly
θ_G + Σ ω_k τ_k, the model tvreg installs; for ``ties`` G's own task vector is trimmed
and sign-elected with the skills', so only the cost is comparable, not the bits.

The page cache is left warm by default; ``--cold`` drops it before each step (root).
Without ``--keep`` the models, artifacts and outputs are deleted at the end; the work
directory keeps ``results.json`` and the ``logs/`` of each command.
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
FINETUNE_MOVED = 0.31
SEED = 1234
BIG_DIRS = ("models", "copy", "store", "cache", "cache-scratch", "artifacts", "mergekit-out", "breakdown-model",
            "ab-model", "ab-trial")  # fmt: skip
DEFAULT_MERGEKIT_VENV = Path(__file__).resolve().parent / ".venv-mergekit"
TIES_DENSITY = 0.2


def roles(skills: int) -> list[str]:
    return ["pre", "general", *(f"ft{k}" for k in range(1, skills + 1))]
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


def finetune_like(pre, gen):
    """pre with ~31% of its entries moved by ±1 or ±2 bf16 ulps, the rest bit-identical.

    What a short low-learning-rate fine-tune of a bf16 model looks like (measured on
    SmolLM2-135M, 60 steps at 2e-5: 67-69% of entries unchanged, |Δ| of one or two ulps),
    unlike ``dense`` noise that moves every entry by several ulps.
    """
    import torch

    bits = pre.view(torch.int16).to(torch.int32) & 0xFFFF
    mag = bits & 0x7FFF
    moved = (torch.rand(pre.shape, generator=gen) < FINETUNE_MOVED) & (mag >= 3)
    step = torch.randint(1, 3, pre.shape, generator=gen, dtype=torch.int32)
    step = torch.where(torch.rand(pre.shape, generator=gen) < 0.5, -step, step)
    mag = torch.where(moved, mag + step, mag)
    return ((bits & 0x8000) | mag).to(torch.int16).view(torch.bfloat16)


def generate_models(root: Path, shape: dict, shard_bytes: int, names: list[str], tau: str = "dense") -> dict[str, Path]:
    """Write pre / general / ft1.. side by side, one tensor at a time (peak: a few tensors)."""
    import torch

    from tvreg._format.safetensors_io import SafetensorsWriter

    torch.set_num_threads(os.cpu_count() or 1)
    specs = tensor_specs(shape)
    shards = plan_shards(specs, shard_bytes)
    dirs = {role: root / role for role in names}
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
        files = {role: open(dirs[role] / fname, "wb") for role in names}  # noqa: SIM115
        try:
            writers = {role: SafetensorsWriter(files[role], entries, {"format": "pt"}) for role in names}
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
                for role in names[1:]:
                    if tau == "finetune":
                        writers[role].write(name, finetune_like(pre, gen))
                        continue
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


def breakdown_install(artifacts: list[Path], model_dir: Path, out_json: Path) -> None:
    """Run one install in-process with the library's stages wrapped in timers (summed over threads).

    Nothing in the library is changed on disk: functions are replaced in this process only.
    """
    import importlib

    # import_module: the module object (tvreg.install is the public function)
    art_mod = importlib.import_module("tvreg._format.artifact")
    exact_mod = importlib.import_module("tvreg._format.codecs.exact")
    zstd_mod = importlib.import_module("tvreg._format.codecs.zstd_frame")
    planes_mod = importlib.import_module("tvreg._format.codecs.planes")
    inst = importlib.import_module("tvreg._env.operations")
    mat = importlib.import_module("tvreg._env.materialise")
    sio = importlib.import_module("tvreg._format.safetensors_io")
    Checkpoint = importlib.import_module("tvreg._format.checkpoint").Checkpoint

    from _stages import StageTimer  # beside this script (its directory is first on sys.path)

    timer = StageTimer()
    patch = timer.patch

    def patch_where_called(name, label):
        timer.patch_where_called((inst, mat), name, label)

    patch_where_called("tensor_hashes", "verify pristine G fingerprint (tensor_hashes)")
    patch_where_called("file_digest", "sha256 of the whole artifact (file_digest)")
    patch(art_mod, "file_digest", "sha256 of a locked artifact (file_digest)")
    patch_where_called("keep_artifact", "copy artifact into store (keep_artifact)")
    patch_where_called("_stage_other_files", "stage other files")
    patch_where_called("swap_directories", "swap directories")
    patch(mat.shutil, "rmtree", "rmtree (old tree / staging)")
    patch_where_called("remember", "seed fingerprint cache (remember)")
    patch(Checkpoint, "read", "[worker] read G tensor")
    patch(art_mod.Artifact, "decode_form", "[worker] Artifact.decode_form (all; lazy: blob read + digest)")
    patch(sio.SafetensorsFile, "read_bytes", "[worker]   decode: read blob")
    art_mod.hashlib = timer.hashlib_with_timed_sha256("[worker]   decode: sha256 verify blob")
    patch(exact_mod.ExactCodec, "decode", "[worker]   decode: codec (zstd + planes)")
    # task arithmetic on the CPU decodes nothing: merge_tensor adds each exact blob's frames into its sum
    patch(exact_mod.ExactCodec, "add_into", "[worker]   merge: exact frames added into the sum (add_into)")
    patch(zstd_mod, "decompress_into", "[worker]     codec: zstd decompress")
    patch(planes_mod, "merge", "[worker]     codec: planes back to floats")
    jit_mod = importlib.import_module("tvreg._format.codecs.jit")
    patch(jit_mod, "merge_exp", "[worker]     codec: exp planes back to floats (compiled)")
    patch(jit_mod, "scatter_add", "[worker]     codec: bitmap scatter-add into the sum (compiled)")
    # bf16 G and exact blobs: every skill's frames at once, added and rounded (no τ, no tensor-sized sum)
    patch(planes_mod, "add_round_masked", "[worker]   merge: all skills' exact frames added + rounded")
    patch(jit_mod, "add_round_bf16", "[worker]     codec: frames added onto G and rounded (compiled)")
    patch(importlib.import_module("tvreg._merge.trim"), "_select", "[worker]   TIES cutoff (trim._select)")
    device_mod = importlib.import_module("tvreg._merge.device")
    patch_where_called("plan_tensor", "[worker] plan_tensor (TIES cutoff, DARE keys)")
    patch(device_mod, "merge_tensor", "[worker] merge_tensor (fp32 merge + round, CPU)")
    mat.hashlib = timer.hashlib_with_timed_sha256("[worker] sha256 of merged tensor")
    patch(sio.SafetensorsWriter, "write", "[main] SafetensorsWriter.write")
    patch(sio.SafetensorsWriter, "finish", "[main] SafetensorsWriter.finish (fsync)")
    mat.ordered_map = timer.waited(mat.ordered_map, "[main] waiting for workers (next(stream))")
    started = time.perf_counter()
    inst.install(artifacts, into=model_dir, device="cpu", method="task_arithmetic")
    wall = time.perf_counter() - started
    out_json.write_text(json.dumps(timer.results(wall), indent=2))


# --------------------------------------------------------------------------- sanity check


SAMPLE_TENSORS = ("model.layers.0.self_attn.q_proj.weight", "model.norm.weight", "lm_head.weight")


def verify_sample(dirs: dict[str, Path], model: Path, weights: list[float]) -> list[str]:
    """Names of sampled tensors where ``model`` differs from bf16(G + Σ ω_k (ft_k − pre)).

    Makes sure the benchmark timed a real install. G's original weights are read from the
    pristine copy tvreg keeps in its store (the lockfile says where).
    """
    import torch

    from tvreg._env.lockfile import read_lock
    from tvreg._format.safetensors_io import SafetensorsFile

    def load(directory: Path, name: str) -> torch.Tensor:
        index_path = directory / "model.safetensors.index.json"
        if not index_path.is_file():  # one shard: no index (pristine G keeps only what G had)
            with SafetensorsFile(directory / "model.safetensors") as f:
                return f.read(name)
        index = json.loads(index_path.read_text())
        with SafetensorsFile(directory / index["weight_map"][name]) as f:
            return f.read(name)

    from tvreg._env.store import pristine_path

    pristine = pristine_path(read_lock(dirs["general"]).general_fingerprint)
    bad = []
    for name in SAMPLE_TENSORS:
        acc = load(pristine, name).float()
        pre = load(dirs["pre"], name).float()
        for k, w in enumerate(weights, 1):
            acc = acc + (load(dirs[f"ft{k}"], name).float() - pre) * torch.tensor(w, dtype=torch.float32)
        got = load(model, name)
        if got.dtype != torch.bfloat16 or not torch.equal(got, acc.to(torch.bfloat16)):
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


# --------------------------------------------------------------------------- before/after in one run


def _same_run_rounds(args, tv: list[str], skills: list[Path], workdir: Path, env: dict, logs: Path, cold: bool) -> dict:
    """Task arithmetic installs of ``--baseline-tree`` and of this tree, interleaved on fresh copies of one model.

    Each install gets its own hard-linked copy of the initialised model (an install swaps in a
    new directory and never writes in place) and its own process, so both trees do the same
    work on the same bytes. One untimed install per tree first: it compiles or loads each
    tree's Numba cache and seeds the digest caches, which a user pays once.
    """
    trees = [("baseline", dict(env, PYTHONPATH=str(args.baseline_tree.resolve()))), ("this tree", env)]
    rows: dict[str, list[dict]] = {label: [] for label, _ in trees}
    fingerprints: set[str] = set()
    for r in range(args.rounds + 1):
        for label, tree_env in trees:
            trial = workdir / "ab-trial"
            shutil.copytree(workdir / "ab-model", trial, copy_function=os.link, symlinks=True)
            cmd = [*tv, "install", *map(str, skills), "--into", str(trial), "--device", "cpu", "--method",
                   "task_arithmetic"]  # fmt: skip
            step = run_step(f"{label} TA {'warm-up' if r == 0 else f'#{r}'}", cmd, tree_env, logs, cold)
            step["loadavg"] = os.getloadavg()
            with open(trial / "tvreg.lock") as f:
                fingerprints.add(json.load(f)["output_fingerprint"])
            shutil.rmtree(trial)
            if r:
                rows[label].append(step)
    if len(fingerprints) != 1:
        raise SystemExit(f"the two trees installed different weights: {sorted(fingerprints)}")
    return {"tree": str(args.baseline_tree), "rounds": rows, "output_fingerprint": fingerprints.pop()}


def _print_same_run(ab: dict, copy_wall: float, copy_cpu: float) -> None:
    def median(xs: list[float]) -> float:
        xs = sorted(xs)
        return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2

    print(f"\ntask_arithmetic, baseline tree {ab['tree']} vs this tree (same model, interleaved; same weights "
          f"{ab['output_fingerprint'][:12]}):")  # fmt: skip
    med = {}
    for label, steps in ab["rounds"].items():
        wall, cpu = median([s["wall_s"] for s in steps]), median([s["cpu_s"] for s in steps])
        loads = ", ".join(f"{s['loadavg'][0]:.1f}" for s in steps)
        med[label] = (wall, cpu)
        print(f"  {label:<10} median wall {wall:7.2f} s ({wall / copy_wall:.2f}x the copy), CPU {cpu:7.2f} s "
              f"({cpu / copy_cpu:.2f}x the copy's); load average after each: {loads}")  # fmt: skip
    (bw, bc), (tw, tc) = med["baseline"], med["this tree"]
    print(f"  this tree / baseline: wall {tw / bw:.2f}, CPU {tc / bc:.2f}")


# --------------------------------------------------------------------------- main


def mergekit_bin(venv: Path) -> Path:
    """``mergekit-yaml`` in its own virtualenv, created on first use (torch's CPU wheel first)."""
    exe = venv / "bin" / "mergekit-yaml"
    if exe.is_file():
        return exe
    print(f"  creating the mergekit virtualenv {venv} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    # The local CPU wheel first: mergekit's own `torch` requirement would otherwise pull CUDA wheels.
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, "mergekit"], check=True)
    return exe


def mergekit_config(method: str, dirs: dict[str, Path], weights: list[float]) -> str:
    """A mergekit YAML giving θ_pre + 1·(θ_G − θ_pre) + Σ ω_k (θ_k − θ_pre)."""
    extra = f", density: {TIES_DENSITY}" if method == "ties" else ""
    lines = [
        f"merge_method: {method}",
        f"base_model: {dirs['pre']}",
        "dtype: bfloat16",
        "models:",
        f"  - model: {dirs['general']}",
        f"    parameters: {{weight: 1.0{extra}}}",
    ]
    for k, w in enumerate(weights, 1):
        lines += [f"  - model: {dirs[f'ft{k}']}", f"    parameters: {{weight: {w}{extra}}}"]
    if method == "ties":
        lines += ["parameters:", "  normalize: true"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=float, default=1e9, help="minimum parameter count (default 1e9)")
    ap.add_argument("--skills", type=int, default=3, help="number of skills installed at once (default 3)")
    ap.add_argument("--workdir", type=Path, help="work directory (default: a new one under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep models, artifacts and outputs afterwards")
    ap.add_argument(
        "--shard-mb", type=float, default=SHARD_BYTES / 1e6, help="shard size in MB (default 500)"
    )
    ap.add_argument("--cold", action="store_true", help="drop the page cache before every step (root only)")
    ap.add_argument("--mergekit-venv", type=Path, default=DEFAULT_MERGEKIT_VENV, help="mergekit's virtualenv")
    ap.add_argument("--no-mergekit", action="store_true", help="skip the mergekit steps")
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="also run one install in-process with per-stage timers and print where the time goes",
    )
    ap.add_argument(
        "--tau",
        choices=("dense", "finetune"),
        default="dense",
        help="dense: every entry moves by N(0, 1e-3) (default, the worst case for the codecs); "
        "finetune: ~31%% of entries move by 1-2 bf16 ulps, like a short low-LR fine-tune",
    )
    ap.add_argument(
        "--methods",
        nargs="+",
        choices=("task_arithmetic", "ties"),
        default=["task_arithmetic", "ties"],
        help="merge methods to time (default both; mergekit's ties is the slowest step by far)",
    )
    ap.add_argument(
        "--noop",
        action="store_true",
        help="time only the full install and the no-op commands (install, upgrade, sync --locked) after it",
    )
    ap.add_argument(
        "--baseline-tree",
        type=Path,
        help="also time task_arithmetic installs with PYTHONPATH=DIR (an older checkout), interleaved with this "
        "tree's on fresh copies of the same initialised model (--rounds each, after one untimed warm-up each)",
    )
    ap.add_argument("--rounds", type=int, default=2, help="timed installs per tree with --baseline-tree (default 2)")
    ap.add_argument("--copy-baseline", nargs="+", metavar="PATH", help=argparse.SUPPRESS)
    ap.add_argument("--breakdown-install", nargs="+", metavar="PATH", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.copy_baseline:
        src, dst, *reads = args.copy_baseline
        copy_baseline(Path(src), Path(dst), [Path(p) for p in reads])
        return 0
    if args.breakdown_install:
        model_dir, out, *artifacts = args.breakdown_install
        breakdown_install([Path(a) for a in artifacts], Path(model_dir), Path(out))
        return 0

    shape = llama_shape(args.params)
    shard_bytes = int(args.shard_mb * 1e6)
    model_bytes = shape["params"] * 2
    largest_tensor_numel = max(math.prod(s) for _, s in tensor_specs(shape))
    cpus = os.cpu_count() or 1
    names = roles(args.skills)
    weights = [round(0.1 + 0.05 * k, 2) for k in range(args.skills)]  # ω_k = |D_k| / |G|
    print(
        f"machine: {platform.node()} {platform.machine()}, cpu_count = {cpus}, python {platform.python_version()}"
    )
    print(
        f"model: Llama vocab {shape['vocab']}, hidden {shape['hidden']}, intermediate {shape['intermediate']}, "
        f"{shape['layers']} layers, heads {shape['hidden'] // HEAD_DIM}, untied lm_head"
    )
    print(
        f"parameters: {shape['params']:,} (target ≥ {args.params:,.0f}); bf16 size {model_bytes / 2**20:,.1f} MiB; "
        f"{args.skills} skills, ω = {weights}; τ: {args.tau}"
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
    # Peak disk: the models, the copy, pristine G, the staged install, the mergekit output,
    # and the artifacts (≤ fp32 τ each, twice while built and once more in the store).
    need = (len(names) + 4) * model_bytes + args.skills * 3 * 2 * model_bytes + (1 << 30)
    free = shutil.disk_usage(workdir).free
    print(f"workdir: {workdir} (free {free / 2**30:.1f} GiB, worst case needs {need / 2**30:.1f} GiB)")
    if free < need:
        print("error: not enough free disk space; pass --workdir on a larger disk or lower --params.")
        return 2
    mergekit = None if args.no_mergekit or args.noop else mergekit_bin(args.mergekit_venv.resolve())

    cold = drop_caches() if args.cold else False
    if args.cold and not cold:
        print("note: cannot write /proc/sys/vm/drop_caches (not root?); measuring with a warm page cache.")
    cache_note = (
        "page cache dropped before each step (cold reads)"
        if cold
        else "page cache NOT dropped: inputs are warm in RAM when they fit (run with --cold as root for cold reads)"
    )
    print(f"note: {cache_note}")

    logs = workdir / "logs"
    logs.mkdir()
    env = dict(os.environ)
    env["TVREG_DATA_DIR"] = str(workdir / "store")
    env["TVREG_CACHE_DIR"] = str(workdir / "cache")
    os.environ["TVREG_DATA_DIR"] = env["TVREG_DATA_DIR"]  # verify_sample finds pristine G in the same store
    env.setdefault("NO_COLOR", "1")
    try:
        print("\n[1/3] generating models and skills ...", flush=True)
        t0 = time.perf_counter()
        dirs = generate_models(workdir / "models", shape, shard_bytes, names, args.tau)
        gen_s = time.perf_counter() - t0
        os.sync()
        shard_sizes = sorted(p.stat().st_size for p in dirs["general"].glob("*.safetensors"))
        print(
            f"  generated {len(names)} models in {gen_s:.1f} s: {len(shard_sizes)} shards each, "
            f"largest {shard_sizes[-1] / 2**20:.1f} MiB"
        )
        tv = tvreg_cmd()
        artifacts = workdir / "artifacts"
        artifacts.mkdir()
        skills = [artifacts / f"ft{k}.tvskill" for k in range(1, args.skills + 1)]
        steps = [run_step("startup (import)", [sys.executable, "-c", "import tvreg.cli, tvreg._env.operations"], env, logs, cold)]
        for k, skill in enumerate(skills, 1):
            build = [*tv, "build", "--base", str(dirs["pre"]), "--finetuned", str(dirs[f"ft{k}"]),
                     "--name", f"skill{k}", "--version", "1.0.0", "--dataset-size", str(round(weights[k - 1] * 10000)),
                     "-o", str(skill)]  # fmt: skip
            steps.append(run_step(f"build skill{k}", build, env, logs, cold))
        steps.append(
            run_step(
                "init",
                [*tv, "init", str(dirs["general"]), "--base", str(dirs["pre"]), "--general-size", "10000"],
                env,
                logs,
                cold,
            )
        )
        artifact_bytes = sum(p.stat().st_size for p in skills)
        if args.baseline_tree:  # the initialised model, before any install (installs never write in place)
            shutil.copytree(dirs["general"], workdir / "ab-model", copy_function=os.link, symlinks=True)
        if args.breakdown:
            # The breakdown needs a first install: the timed one below leaves the model synced, and the
            # same set again takes the no-op path. Installs never write in place, so links are safe.
            shutil.copytree(dirs["general"], workdir / "breakdown-model", copy_function=os.link, symlinks=True)

        print("\n[2/3] measuring (each step a separate process) ...", flush=True)
        copy_cmd = [sys.executable, os.path.abspath(__file__), "--copy-baseline", str(dirs["general"]),
                    str(workdir / "copy"), *map(str, skills)]  # fmt: skip
        steps.append(run_step("copy baseline", copy_cmd, env, logs, cold))
        shutil.rmtree(workdir / "copy")
        ab = _same_run_rounds(args, tv, skills, workdir, env, logs, cold) if args.baseline_tree else None
        install = [*tv, "install", *map(str, skills), "--into", str(dirs["general"]), "--device", "cpu"]
        steps.append(run_step("tvreg task_arithmetic", [*install, "--method", "task_arithmetic"], env, logs, cold))
        mismatches = verify_sample(dirs, dirs["general"], weights)
        # Nothing to change: the same set again, an upgrade with nothing newer and `sync --locked` of the
        # synced model (issue #16: < 1 s at 1e9). These take tvreg's fast path, which never imports torch.
        into = ["--into", str(dirs["general"])]
        steps.append(run_step("tvreg no-op install", [*install, "--method", "task_arithmetic"], env, logs, cold))
        steps.append(run_step("tvreg no-op upgrade", [*tv, "upgrade", *into], env, logs, cold))
        steps.append(run_step("tvreg no-op sync", [*tv, "sync", "--locked", *into], env, logs, cold))
        for label in ("tvreg no-op install", "tvreg no-op upgrade", "tvreg no-op sync"):
            if "Nothing to change" not in (logs / f"{label}.log").read_text(errors="replace"):
                raise SystemExit(f"step `{label}` changed the model; see {logs / (label + '.log')}")
        if "ties" in args.methods and not args.noop:
            steps.append(
                run_step("tvreg ties", [*install, "--method", "ties", "--density", str(TIES_DENSITY)], env, logs, cold)
            )
        if mergekit is not None and not args.noop:
            for method in args.methods:
                config = workdir / f"mergekit-{method}.yml"
                config.write_text(mergekit_config(method, dirs, weights))
                out_dir = workdir / "mergekit-out"
                cmd = [str(mergekit), str(config), str(out_dir), "--quiet", "--no-copy-tokenizer",
                       "--no-write-model-card"]  # fmt: skip
                steps.append(run_step(f"mergekit {method}", cmd, env, logs, cold))
                shutil.rmtree(out_dir, ignore_errors=True)
        if mismatches:
            print(f"  WARNING: installed weights differ from bf16(G + Σ ω_k τ_k) in: {', '.join(mismatches)}")
        else:
            print("  sanity check: sampled installed tensors == bf16(G + Σ ω_k (ft_k − pre)) bit for bit")

        breakdown = None
        if args.breakdown:
            bjson = logs / "breakdown.json"
            cmd = [sys.executable, os.path.abspath(__file__), "--breakdown-install", str(workdir / "breakdown-model"),
                   str(bjson), *map(str, skills)]  # fmt: skip
            step = run_step("install (breakdown)", cmd, env, logs, cold)
            breakdown = json.loads(bjson.read_text())
            breakdown["process_wall_s"] = step["wall_s"]

        by = {s["step"]: s for s in steps}
        copy_wall = by["copy baseline"]["wall_s"]
        largest_shard = shard_sizes[-1]
        rss_target = largest_shard + (args.skills + 1) * largest_tensor_numel * 4
        full = by["tvreg task_arithmetic"]
        ratios: dict[str, float] = {}
        for what in ("install", "upgrade", "sync"):
            noop = by[f"tvreg no-op {what}"]
            ratios[f"tvreg_noop_{what}_wall_s"] = noop["wall_s"]
            ratios[f"tvreg_noop_{what}_cpu_s"] = noop["cpu_s"]
            ratios[f"tvreg_noop_{what}_wall_over_install"] = noop["wall_s"] / full["wall_s"]
            ratios[f"tvreg_noop_{what}_cpu_over_install"] = noop["cpu_s"] / full["cpu_s"]
        for method in (["task_arithmetic"] if args.noop else args.methods):
            ours = by["tvreg task_arithmetic"] if method == "task_arithmetic" else by["tvreg ties"]
            ratios[f"tvreg_{method}_wall_over_copy"] = ours["wall_s"] / copy_wall
            ratios[f"tvreg_{method}_rss_over_target"] = ours["max_rss_kib"] * 1024 / rss_target
            if f"mergekit {method}" in by:
                theirs = by[f"mergekit {method}"]
                ratios[f"mergekit_over_tvreg_{method}_wall"] = theirs["wall_s"] / ours["wall_s"]
                ratios[f"mergekit_over_tvreg_{method}_cpu"] = theirs["cpu_s"] / ours["cpu_s"]
                ratios[f"tvreg_over_mergekit_{method}_rss"] = ours["max_rss_kib"] / theirs["max_rss_kib"]
        results = {
            "machine": {"node": platform.node(), "cpu_count": cpus, "python": platform.python_version(),
                        "platform": platform.platform()},  # fmt: skip
            "cache": "cold" if cold else "warm",
            "model": {**shape, "dtype": "bfloat16", "bytes": model_bytes, "shards": len(shard_sizes),
                      "largest_shard_bytes": largest_shard, "largest_tensor_numel": largest_tensor_numel},  # fmt: skip
            "skills": args.skills,
            "tau": args.tau,
            "weights": weights,
            "artifact_bytes": artifact_bytes,
            "generate_s": gen_s,
            "steps": steps,
            "rss_target_bytes": rss_target,
            "ratios": ratios,
            "sanity_mismatches": mismatches,
            "breakdown": breakdown,
            "baseline_tree": ab,
        }
        (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")

        print("\n[3/3] results")
        print(f"cpu_count: {cpus}; cache: {cache_note}")
        print(
            f"model {model_bytes / 2**20:,.1f} MiB in {len(shard_sizes)} shards (largest {largest_shard / 2**20:.1f} MiB); "
            f"{args.skills} artifacts {artifact_bytes / 2**20:,.1f} MiB"
        )
        print(
            f"\n{'step':<24} {'wall s':>9} {'CPU s':>9} {'CPU %':>7} {'peak RSS MiB':>13} {'wall/copy':>10}"
            f" {'other CPU s':>12}"
        )
        for s in steps:
            print(
                f"{s['step']:<24} {s['wall_s']:9.2f} {s['cpu_s']:9.2f} {s['cpu_util'] * 100:7.0f} "
                f"{s['peak_rss_mib']:13.1f} {s['wall_s'] / copy_wall:10.2f} {_fmt(s['other_cpu_s']):>12}"
            )
        print()
        print(f"no-op (nothing to change) vs the full task_arithmetic install ({full['wall_s']:.2f} s wall, "
              f"{full['cpu_s']:.2f} s CPU):")
        for what in ("install", "upgrade", "sync"):
            print(
                f"  no-op {what:<8}: {ratios[f'tvreg_noop_{what}_wall_s']:.2f} s wall "
                f"({ratios[f'tvreg_noop_{what}_wall_over_install']:.3f}x), "
                f"{ratios[f'tvreg_noop_{what}_cpu_s']:.2f} s CPU "
                f"({ratios[f'tvreg_noop_{what}_cpu_over_install']:.3f}x)  (target < 1 s wall at 1e9 params)"
            )
        for method in (["task_arithmetic"] if args.noop else args.methods):
            print(f"{method}:")
            print(f"  tvreg wall / copy wall        : {ratios[f'tvreg_{method}_wall_over_copy']:.2f}  (target ≤ 2)")
            if f"mergekit_over_tvreg_{method}_wall" in ratios:
                print(
                    f"  mergekit wall / tvreg wall    : {ratios[f'mergekit_over_tvreg_{method}_wall']:.2f}  (target ≥ 5)"
                )
                print(f"  mergekit CPU / tvreg CPU      : {ratios[f'mergekit_over_tvreg_{method}_cpu']:.2f}")
                print(
                    f"  tvreg peak RSS / mergekit's   : {ratios[f'tvreg_over_mergekit_{method}_rss']:.2f}  (target ≤ 0.5)"
                )
            print(
                f"  tvreg peak RSS / (largest shard + {args.skills + 1} x largest fp32 tensor = "
                f"{rss_target / 2**20:.1f} MiB): {ratios[f'tvreg_{method}_rss_over_target']:.2f}"
            )
        if ab:
            _print_same_run(ab, copy_wall, by["copy baseline"]["cpu_s"])
        base_rss = by["startup (import)"]["max_rss_kib"] / 1024
        print(
            f"process startup (import tvreg + torch): {by['startup (import)']['wall_s']:.2f} s, "
            f"{base_rss:.1f} MiB RSS (included in every tvreg row)"
        )
        print(f"peak RSS source: {steps[0]['rss_source']}")
        if breakdown:
            print(
                f"\ninstall stage breakdown (in-process, wall {breakdown['wall_s']:.2f} s; "
                "[worker] rows are summed over worker threads; CPU = the calling thread's own):"
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
