"""The low-bit codings (issue 23) on one matrix: size vs the bf16 τ, relative error, encode and decode speed.

    python benchmarks/lowbit.py [--rows 576] [--cols 1536] [--rank 16] [--noise 0.5] [--repeat 5]

τ is a random rank-``rank`` matrix plus Gaussian noise holding ``noise`` of its squared
norm (full fine-tunes are neither low rank nor white noise; this sits between), scaled
like a short fine-tune's update (‖τ‖ per entry ≈ 1e-3). Each setting is encoded and
decoded (``decode``: zstd, unpacking, the fp32 expansion) ``repeat`` times; times are
process CPU-seconds (the machine is shared), medians, single-threaded. Printed per
setting: stored bytes, the ratio against the bf16 τ (2 bytes an entry, the baseline of
issue 23), ‖τ̂ − τ‖/‖τ‖, and encode / decode MB/s of fp32 τ, with the ratio of each to
``int8`` measured in the same run. Retention on a real model is not measured here (see
``benchmarks/calibrated.py``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from tvreg._format.codecs import get_codec, make_codec, relative_error, zstd_frame

SETTINGS: list[tuple[str, dict]] = [
    ("int8", {}),
    ("bf16", {}),
    ("int4", {}),
    ("int4", {"group": 64}),
    ("int4", {"group": 32, "scales": "fp16"}),
    ("sign", {}),
    ("sign", {"per": "tensor"}),
    ("sparse", {"density": 0.1, "select": "random"}),
    ("sparse", {"density": 0.1, "select": "random", "values": "int8"}),
    ("sparse", {"density": 0.2, "select": "random", "values": "int4"}),
    ("sparse", {"density": 0.1, "select": "random", "values": "int4"}),
    ("sparse", {"density": 0.05, "select": "random", "values": "int4"}),
    ("sparse", {"density": 0.5, "select": "random", "values": "sign"}),
    ("sparse", {"density": 0.3, "select": "random", "values": "sign"}),
    ("sparse", {"density": 0.1, "select": "random", "values": "sign"}),
    ("sparse", {"density": 0.1, "values": "int4"}),
]


def make_tau(rows: int, cols: int, rank: int, noise: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(rows, rank, generator=g) @ torch.randn(rank, cols, generator=g)
    white = torch.randn(rows, cols, generator=g)
    low *= ((1 - noise) / float(low.square().mean())) ** 0.5
    white *= (noise / float(white.square().mean())) ** 0.5
    return (low + white) * 1e-3


def cpu_seconds(fn, repeat: int) -> float:
    fn()
    runs = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        runs.append(time.process_time() - t)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=576)
    ap.add_argument("--cols", type=int, default=1536)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    zstd_frame.set_decode_threads(1)
    tau = make_tau(args.rows, args.cols, args.rank, args.noise)
    shape = tuple(tau.shape)
    mb = tau.numel() * 4 / 1e6
    bf16_bytes = tau.numel() * 2
    print(f"τ {args.rows}x{args.cols}, rank {args.rank} + {args.noise:.0%} noise; load average {os.getloadavg()[0]:.2f}")
    print(f"{'setting':58} {'bytes':>9} {'vs bf16':>8} {'rel err':>8} {'enc MB/s':>9} {'×int8':>6} {'dec MB/s':>9} {'×int8':>6}")
    base: tuple[float, float] | None = None
    for name, opts in SETTINGS:
        coder = make_codec(name, opts)
        enc = coder.encode(tau)
        used = get_codec(enc.codec or name)
        back = used.decode(enc.data, shape, enc.params, where=name)
        t_enc = cpu_seconds(lambda c=coder: c.encode(tau), args.repeat)
        t_dec = cpu_seconds(lambda u=used, e=enc, w=name: u.decode(e.data, shape, e.params, where=w), args.repeat)
        if base is None:
            base = (t_enc, t_dec)
        label = f"{name}({', '.join(f'{k}={v}' for k, v in opts.items())})" if opts else name
        print(
            f"{label:58} {len(enc.data):9d} {bf16_bytes / len(enc.data):7.1f}x {relative_error(tau, back):8.3f} "
            f"{mb / t_enc:9.0f} {base[0] / t_enc:6.2f} {mb / t_dec:9.0f} {base[1] / t_dec:6.2f}"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
