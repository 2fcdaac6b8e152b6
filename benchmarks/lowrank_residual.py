"""Low rank plus a sparse residual, against random sparse alone, on a real pair's held-out blocks (issue 23).

Issue 23 lists "combinations (sparse residual on top of low rank)" among the candidates of
calibrated ``auto``. Before a combined codec earns a stored form, a verifier and a family
in the search (each family costs up to 3 evaluations of every calibrated build), this
measures whether it would ever be picked: each matrix of τ is coded as ``lowrank`` (the
real codec, ``values=mixed``), the residual τ − L·R (of the decoded factors, so their
quantisation error is covered too) as random ``sparse`` with int4 values and
``rescale=row``; every other tensor, and a matrix whose factors do not pay, as the sparse
setting alone. Sizes are the real coded bytes of both parts; retention is the gain kept on
the pair's 24 held-out test blocks, scored as ``calibrated.py`` scores (fp32, tied
embeddings handled). The plain random-sparse settings are scored in the same run.

Run (from the repository root, with ``pip install -e '.[bench]'``)::

    nice -n 10 .venv/bin/python benchmarks/lowrank_residual.py --pair a-lowlr \\
        --plain 0.1,0.05 --combined 8:0.05,16:0.05,8:0.03,32:0.03,16:0.1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibrated import Scorer  # noqa: E402
from finetune_pairs import HELDOUT_SEQS, PAIRS, base_model, default_cache, finetune  # noqa: E402

Coder = Callable[[torch.Tensor], tuple[int, torch.Tensor]]
SPARSE = {"select": "random", "values": "int4", "rescale": "row"}


def _sparse(density: float) -> Coder:
    from tvreg._format.codecs import make_codec

    codec = make_codec("sparse", {**SPARSE, "density": density})

    def code(t: torch.Tensor) -> tuple[int, torch.Tensor]:
        enc = codec.encode(t)
        return len(enc.data), codec.decode(enc.data, t.shape, enc.params, where="probe")

    return code


def _combined(rank: int, density: float) -> Coder:
    from tvreg._format.codecs import make_codec

    low = make_codec("lowrank", {"rank": rank, "values": "mixed", "fallback": "exact"})
    residual = _sparse(density)

    def code(t: torch.Tensor) -> tuple[int, torch.Tensor]:
        if t.dim() != 2:
            return residual(t)
        enc = low.encode(t)
        if enc.codec:  # the factors did not pay: the fallback coded it
            return residual(t)
        factors = low.decode(enc.data, t.shape, enc.params, where="probe")
        size, rest = residual(t - factors)
        return len(enc.data) + size, factors + rest

    return code


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", type=Path, default=default_cache())
    ap.add_argument("--pair", default="a-lowlr", choices=[p.name for p in PAIRS])
    ap.add_argument("--plain", default="0.1,0.05", help="densities of random sparse alone")
    ap.add_argument("--combined", default="8:0.05,16:0.05,8:0.03,32:0.03,16:0.1", help="rank:density pairs")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from safetensors.torch import load_file

    pair = next(p for p in PAIRS if p.name == args.pair)
    pre_dir, ft_dir = base_model(args.cache_dir), finetune(args.cache_dir, pair)
    pre, ft = load_file(str(pre_dir / "model.safetensors")), load_file(str(ft_dir / "model.safetensors"))
    taus = {n: ft[n].float() - pre[n].float() for n in pre if n in ft}
    taus = {n: t for n, t in taus.items() if bool(t.any())}
    del pre, ft
    numel = sum(t.numel() for t in taus.values())
    blocks = torch.tensor(json.loads((ft_dir / "heldout.json").read_text())["input_ids"])[:HELDOUT_SEQS]
    scorer = Scorer(pre_dir, blocks)
    loss_pre, loss_ft = scorer.loss(None), scorer.loss(taus)
    print(f"pair {pair.name}: {len(taus)} tensors, {numel:,} parameters; held-out loss θ_pre {loss_pre:.4f}, "
          f"θ_pre + τ {loss_ft:.4f}; ratios vs the bf16 τ")  # fmt: skip
    settings: dict[str, Coder] = {f"random {d} int4 row": _sparse(float(d)) for d in args.plain.split(",") if d}
    for spec in filter(None, args.combined.split(",")):
        rank, density = spec.split(":")
        settings[f"lowrank {rank} mixed + random {density} int4 row"] = _combined(int(rank), float(density))
    for label, code in settings.items():
        t0, size, coded = time.perf_counter(), 0, {}
        for name, tau in taus.items():
            n_bytes, coded[name] = code(tau)
            size += n_bytes
        loss = scorer.loss(coded)
        print(f"{label:44s} {2 * numel / size:7.1f}x  held-out retention {(loss_pre - loss) / (loss_pre - loss_ft):8.4f}"
              f"  ({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
