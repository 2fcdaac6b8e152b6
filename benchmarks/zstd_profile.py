"""zstd's match table on the masked byte planes ``exact`` writes: level 1 against the planes profile.

Usage::

    python benchmarks/zstd_profile.py [--numel 2e7] [--repeat 3]
                                      [--pair PRE FT ...]   # real checkpoints, e.g. SmolLM2 and a fine-tune

Makes the segments :func:`tvreg._format.codecs.planes.encode_masked` hands zstd (bitmap of the
non-zeros, then their exponent and mantissa planes, one segment per 4 MiB chunk) for a dense τ
(every entry moves by N(0, 1e-3) around bf16 weights), a fine-tune-like τ (~31% move by one or two
bf16 ulps) and, with ``--pair``, τ of real checkpoints; then compresses them with plain level 1
(what tvreg wrote before) and with :data:`tvreg._format.codecs.zstd_frame.PLANES`, alternating,
and decompresses both. Prints sizes, and CPU-seconds (of this one thread) per MiB each way, as
medians of ``--repeat`` rounds, with the ratios of the profile to level 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
import zstandard

from tvreg._format.checkpoint import Checkpoint
from tvreg._format.codecs import jit, planes, zstd_frame


def segments(tau: torch.Tensor) -> list[bytes]:
    """The raw segments ``encode_masked`` compresses, one per chunk."""
    flat = tau.reshape(-1).to(torch.float32).contiguous()
    per = zstd_frame.CHUNK_BYTES // 4
    out = []
    for lo in range(0, flat.numel(), per):
        chunk = flat[lo : lo + per]
        m = chunk.numel()
        buf = np.empty(planes._bitmap_bytes(m) + 4 * m, np.uint8)
        words = np.empty(m, np.uint32)
        k = jit.mask_split(chunk.view(torch.int32).numpy().view(np.uint32), buf, words)
        out.append(bytes(buf[: planes._bitmap_bytes(m) + 4 * k]))
    return out


def synthetic(numel: int, kind: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pre = (torch.randn(numel, generator=g) * 0.02).to(torch.bfloat16)
    if kind == "dense":
        ft = (pre.float() + torch.randn(numel, generator=g) * 1e-3).to(torch.bfloat16)
    else:
        steps = torch.randint(-2, 3, (numel,), generator=g, dtype=torch.int16)
        steps[torch.rand(numel, generator=g) >= 0.31] = 0
        ft = (pre.view(torch.int16) + steps).view(torch.bfloat16)
    return ft.float() - pre.float()


def real_pair(pre_dir: str, ft_dir: str) -> list[torch.Tensor]:
    with Checkpoint.open(pre_dir) as pre, Checkpoint.open(ft_dir) as ft:
        return [ft.read_float32(n) - pre.read_float32(n) for n in pre.names() if pre.info(n).is_float]


def measure(segs: list[bytes], repeat: int) -> dict[str, dict[str, float]]:
    raw = sum(map(len, segs)) / 2**20
    profiles = {"level 1": None, "planes": zstd_frame.PLANES}
    times: dict[str, dict[str, list[float]]] = {p: {"c": [], "d": []} for p in profiles}
    sizes: dict[str, int] = {}
    d = zstandard.ZstdDecompressor()
    for _ in range(repeat):
        for label, profile in profiles.items():
            t = time.process_time()
            frames = [zstd_frame.compress(s, profile=profile) for s in segs]
            times[label]["c"].append(time.process_time() - t)
            sizes[label] = sum(map(len, frames))
            t = time.process_time()
            for f in frames:
                d.decompress(f)
            times[label]["d"].append(time.process_time() - t)
    return {
        label: {
            "raw_mib": raw,
            "size_mib": sizes[label] / 2**20,
            "compress_s_per_gib": statistics.median(times[label]["c"]) / raw * 1024,
            "decompress_s_per_gib": statistics.median(times[label]["d"]) / raw * 1024,
        }
        for label in profiles
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--numel", type=float, default=2e7, help="entries of each synthetic τ")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (profiles alternate within each)")
    ap.add_argument("--pair", nargs=2, action="append", default=[], metavar=("PRE", "FT"), help="real checkpoints")
    args = ap.parse_args()
    if not jit.ready(jit.MIN_ELEMENTS):
        raise SystemExit("the compiled kernels are not available (Numba missing?)")
    cases = {kind: segments(synthetic(int(args.numel), kind)) for kind in ("dense", "finetune")}
    for pre, ft in args.pair:
        cases[os.path.basename(os.path.normpath(ft))] = [s for t in real_pair(pre, ft) for s in segments(t)]
    print(f"one thread, CPU seconds per GiB of raw segments, medians of {args.repeat}; load {os.getloadavg()[0]:.2f}")
    print(f"{'τ':<18}{'raw MiB':>9}{'profile':>9}{'size MiB':>10}{'compress':>10}{'decompress':>12}")
    for name, segs in cases.items():
        got = measure(segs, args.repeat)
        for label, row in got.items():
            print(f"{name:<18}{row['raw_mib']:>9.1f}{label:>9}{row['size_mib']:>10.2f}"
                  f"{row['compress_s_per_gib']:>10.2f}{row['decompress_s_per_gib']:>12.2f}")  # fmt: skip
        a, b = got["level 1"], got["planes"]
        print(f"{'':<18}{'planes / level 1:':>28}{b['size_mib'] / a['size_mib']:>10.3f}"
              f"{b['compress_s_per_gib'] / a['compress_s_per_gib']:>10.2f}"
              f"{b['decompress_s_per_gib'] / a['decompress_s_per_gib']:>12.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
