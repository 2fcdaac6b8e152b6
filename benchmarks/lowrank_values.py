"""``lowrank`` factors in bf16, int8, int4 and mixed int8/int4 (issue 23): size, error and decode CPU time.

    python benchmarks/lowrank_values.py [--rows 576] [--cols 1536] [--repeat 21]

Two matrices of SmolLM2-135M's MLP shape, scaled like a short fine-tune's update (≈ 1e-3 an entry):

- ``lora``: a random rank-16 product plus white noise holding 1% of ‖τ‖² (a merged LoRA plus
  the rounding of the merged weights);
- ``full``: full rank, singular values falling as (i + 1)^−0.8 with random singular
  vectors (a full fine-tune's update: no rank holds it, the head holds most of it).

Each ``values`` kind at ranks 8, 16, 32 (``fallback=int8``; the codec actually used is
printed): stored bytes, the ratio against the bf16 τ (2 bytes an entry, issue 23's
baseline), ‖τ̂ − τ‖/‖τ‖, and process CPU-seconds (medians, one thread) of ``decode_form``
(zstd, unpacking, the fp32 factors) and of ``decode`` (plus the fp32 product), each as a
ratio to the bf16 factors at the same rank in the same run (> 1: slower).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from tvreg._format.codecs import get_codec, make_codec, relative_error, zstd_frame

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lowbit import cpu_seconds  # noqa: E402

KINDS = ("bf16", "int8", "mixed", "int4")
RANKS = (8, 16, 32)


def lora_like(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(rows, 16, generator=g) @ torch.randn(16, cols, generator=g)
    white = torch.randn(rows, cols, generator=g)
    low *= (0.99 / float(low.square().mean())) ** 0.5
    white *= (0.01 / float(white.square().mean())) ** 0.5
    return (low + white) * 1e-3


def full_rank(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, n, generator=g))
    v, _ = torch.linalg.qr(torch.randn(cols, n, generator=g))
    sigma = torch.arange(1, n + 1, dtype=torch.float32).pow(-0.8)
    tau = (u * sigma) @ v.T
    return tau * (1e-3 / float(tau.square().mean().sqrt()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=576)
    ap.add_argument("--cols", type=int, default=1536)
    ap.add_argument("--repeat", type=int, default=21)
    args = ap.parse_args()
    torch.set_num_threads(1)
    zstd_frame.set_decode_threads(1)
    bf16_bytes = args.rows * args.cols * 2
    print(f"{args.rows}x{args.cols}; load average {os.getloadavg()[0]:.2f}")
    print(f"{'matrix':6} {'rank':>4} {'values':6} {'codec':8} {'bytes':>8} {'vs bf16':>8} {'rel err':>8} "
          f"{'form ms':>8} {'×bf16':>6} {'dense ms':>9} {'×bf16':>6}")  # fmt: skip
    for label, tau in (("lora", lora_like(args.rows, args.cols)), ("full", full_rank(args.rows, args.cols))):
        shape = tuple(tau.shape)
        for r in RANKS:
            base: tuple[float, float] | None = None
            for kind in KINDS:
                enc = make_codec("lowrank", {"rank": r, "values": kind, "fallback": "int8"}).encode(tau)
                used = get_codec(enc.codec or "lowrank")
                err = relative_error(tau, used.decode(enc.data, shape, enc.params, where=label))
                t_form = cpu_seconds(lambda u=used, e=enc, s=shape, w=label: u.decode_form(e.data, s, e.params, where=w), args.repeat)
                t_dense = cpu_seconds(lambda u=used, e=enc, s=shape, w=label: u.decode(e.data, s, e.params, where=w), args.repeat)
                if base is None:
                    base = (t_form, t_dense)
                print(
                    f"{label:6} {r:4d} {kind:6} {enc.codec or 'lowrank':8} {len(enc.data):8d} "
                    f"{bf16_bytes / len(enc.data):7.1f}x {err:8.4f} {t_form * 1e3:8.2f} {t_form / base[0]:6.2f} "
                    f"{t_dense * 1e3:9.2f} {t_dense / base[1]:6.2f}"
                )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
