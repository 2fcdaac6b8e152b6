"""The codecs' compiled loops (Numba, ``tvreg._format.codecs.jit``) against the NumPy code they replace.

    python benchmarks/codec_kernels.py [--numel N] [--repeat R]

Decodes one ``exact`` tensor (zstd frames of 4 MiB, zero bitmap, exponent/mantissa
planes) of fine-tune-like τ at several non-zero shares, and times the plane merge alone,
each with the compiled kernels and with NumPy (``jit.enabled`` flipped) in the same run;
prints ns per element and the NumPy / compiled ratio. Then task arithmetic of three such
blobs (31% non-zero) onto bf16 θ_G, as an install runs it: skill by skill into a
tensor-sized float32 sum (fill, ``planes.add_masked`` per skill, round) against every
skill's frames at once (``planes.add_round_masked``), same bits checked; ns per element
and skill, zstd included, in CPU seconds. Last, a whole ``sparse select=random`` decode to dense
(hashed positions, int4 values, what calibrated ``auto`` picks on full fine-tunes) with each
path, and against the ``exact`` decode of the same τ. Single-threaded (``set_decode_threads(1)``), so the ratio is
CPU work, not parallelism.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tvreg._format.codecs import get_codec, jit, make_codec, planes, zstd_frame


def tau(n: int, density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g).to(torch.bfloat16)
    ft = (base.float() * (1 + torch.randint(1, 3, (n,), generator=g).float() * 2.0**-7)).to(torch.bfloat16)
    return torch.where(torch.rand(n, generator=g) < density, ft.float() - base.float(), torch.zeros(n))


def timed(fn, repeat: int, clock=time.perf_counter) -> float:
    fn()
    runs = []
    for _ in range(repeat):
        t = clock()
        fn()
        runs.append(clock() - t)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--numel", type=float, default=2**24)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    n = int(args.numel)
    zstd_frame.set_decode_threads(1)
    torch.set_num_threads(1)
    if not jit.ready(n):
        raise SystemExit("the compiled kernels are off (TVREG_JIT=0) or Numba is missing")
    print(f"{n:,} fp32 elements, median of {args.repeat}; ns per element")
    print(f"{'step':34s} {'numpy':>8s} {'compiled':>9s} {'ratio':>7s}")
    for density in (0.05, 0.31, 1.0):
        t = tau(n, density)
        data, params = planes.encode_masked(t)
        out = torch.empty(n)
        split = planes.split(t, "exp")

        def decode(data=data, params=params, out=out):
            planes.decode_masked(data, params, n, torch.float32, where="bench", out=out)

        def merge(split=split, out=out):
            planes.merge(split, "exp", out)

        rows = {f"decode exact, {density:.0%} non-zero": decode, f"plane merge only, {density:.0%}": merge}
        for label, fn in rows.items():
            secs = {}
            for compiled in (False, True):
                jit.enabled = compiled
                secs[compiled] = timed(fn, args.repeat)
            jit.enabled = True
            assert torch.equal(out.view(torch.int32), t.view(torch.int32))
            print(f"{label:34s} {secs[False] / n * 1e9:8.2f} {secs[True] / n * 1e9:9.2f} {secs[False] / secs[True]:6.1f}x")

    skills = 3
    weights = [float(torch.tensor(w, dtype=torch.float32)) for w in (0.1, 0.15, 0.2)]
    blobs = [planes.encode_masked(tau(n, 0.31, seed=1 + k)) for k in range(skills)]
    general = tau(n, 1.0, seed=9).add_(1.0).to(torch.bfloat16)
    acc, per_skill, fused = torch.empty(n), torch.empty(n, dtype=torch.bfloat16), torch.empty(n, dtype=torch.bfloat16)

    def skill_by_skill():
        acc.copy_(general)
        for (data, params), w in zip(blobs, weights, strict=True):
            planes.add_masked(data, params, n, where="bench", acc=acc, weight=w)
        per_skill.copy_(acc)

    def all_at_once():
        masked = [(planes.MaskedBlob(d, p, "bench"), w) for (d, p), w in zip(blobs, weights, strict=True)]
        assert planes.add_round_masked(masked, general, fused)

    # CPU seconds of this process (one thread): steadier than wall time on a shared machine
    a, b = timed(skill_by_skill, args.repeat, time.process_time), timed(all_at_once, args.repeat, time.process_time)
    assert torch.equal(per_skill.view(torch.int16), fused.view(torch.int16))
    print(f"\ntask arithmetic, {skills} exact blobs (31% non-zero) onto bf16 θ_G; ns per element and skill")
    print(f"{'skill by skill':>18s} {'all at once':>12s} {'ratio':>7s}")
    print(f"{a / n / skills * 1e9:18.2f} {b / n / skills * 1e9:12.2f} {a / b:6.1f}x")

    print("\nsparse select=random (hashed positions, int4 values, rescale=row) decoded to dense; ns per element")
    print(f"{'density':>8s} {'numpy':>8s} {'compiled':>9s} {'ratio':>7s} {'exact':>8s} {'vs exact':>9s}")
    t = tau(n - n % 1024, 1.0, seed=3).view(-1, 1024)  # rows of 1024: rescale=row works per row
    ref = get_codec("exact")
    enc_exact = ref.encode(t)
    exact = timed(lambda: ref.decode(enc_exact.data, t.shape, enc_exact.params, where="bench"), args.repeat, time.process_time)
    for density in (0.1, 0.2, 0.3):
        codec = make_codec("sparse", {"density": density, "select": "random", "values": "int4", "rescale": "row"})
        enc = codec.encode(t)
        secs, outs = {}, {}

        def sparse_decode(codec=codec, enc=enc) -> torch.Tensor:
            return codec.decode(enc.data, t.shape, enc.params, where="bench")

        for compiled in (False, True):
            jit.enabled = compiled
            secs[compiled] = timed(sparse_decode, args.repeat, time.process_time)
            outs[compiled] = sparse_decode()
        jit.enabled = True
        assert torch.equal(outs[False], outs[True])
        print(f"{density:8.0%} {secs[False] / t.numel() * 1e9:8.2f} {secs[True] / t.numel() * 1e9:9.2f} {secs[False] / secs[True]:6.1f}x"
              f" {exact / t.numel() * 1e9:8.2f} {secs[True] / exact:8.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
