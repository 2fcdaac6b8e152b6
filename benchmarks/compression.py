"""Compression benchmark: size, speed and gain retention of every codec on real SmolLM2 fine-tunes.

For each fine-tune pair (see ``finetune_pairs.py``; built and cached on first use) and
each codec setting, it codes every tensor of τ = θ_ft − θ_pre, writes the real
``.tvskill`` (so headers, manifest, scales and indices are all counted), decodes it, and
reports:

- bytes of the artifact, and the ratio against the bf16 τ (2 bytes per element) and
  against the bf16 fine-tuned checkpoint file;
- encode and decode speed in MB/s of fp32 τ, with 1 thread and with 2 threads
  (tensors in parallel, frames of big tensors in parallel);
- the largest and the size-weighted relative error ‖τ̂ − τ‖/‖τ‖ per tensor;
- for lossy codecs, **gain retention** = (loss_pre − loss_codec) / (loss_pre − loss_ft)
  on held-out text of the pair's domain, θ = θ_pre + τ̂ evaluated in fp32.

Baselines in the same run: plain zstd-3 of the raw fp32 τ bytes and of the bf16 τ bytes,
and the integer-ulp difference of the bf16 checkpoints (needs θ_pre to decode, so tvreg
cannot use it for skills; shown as the bound a base-aware codec could reach).

Run (from the repository root, with ``pip install -e '.[bench]'``)::

    nice -n 10 .venv/bin/python benchmarks/compression.py [--pairs a-lowlr,b-highlr,c-lora,d-long]
        [--cache-dir ~/.cache/tvreg-bench] [--out bench-out/compression.csv] [--no-eval]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import zstandard
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_pairs import PAIRS, base_model, default_cache, finetune, heldout_loss  # noqa: E402

from tvreg._format.artifact import Artifact, ArtifactWriter  # noqa: E402
from tvreg._format.codecs import get_codec, make_codec, relative_error, zstd_frame  # noqa: E402
from tvreg._format.manifest import Manifest  # noqa: E402

SETTINGS: list[tuple[str, dict]] = [
    ("exact", {}),  # 0
    ("bf16", {}),  # 1
    ("int8", {}),  # 2: per row, or per tensor within 1% error; zero bitmap; rows sorted by spread
    ("int8", {"group": 64, "scales": "fp16"}),  # 3
    ("sparse", {"density": 0.1}),  # 4
    ("sparse", {"density": 0.1, "values": "int8"}),  # 5
    ("sparse", {"density": 0.05, "values": "int8"}),  # 6
    ("sparse", {"density": 0.02, "values": "int8"}),  # 7
    ("sparse", {"density": 0.01, "values": "int8"}),  # 8
    ("lowrank", {"rank": 16, "fallback": "int8"}),  # 9
    ("auto", {"max_rel_error": 0.1}),  # 10
    ("auto", {"max_rel_error": 0.3}),  # 11
    ("int8", {"max_rel_error": 0}),  # 12: always per row (the tvreg 0.2 choice)
    ("sparse", {"density": 0.3, "values": "int8"}),  # 13
    ("sparse", {"density": 0.2, "values": "int8"}),  # 14
    ("lowrank", {"rank": 64, "fallback": "int8"}),  # 15
    ("lowrank", {"rank": 128, "fallback": "int8"}),  # 16
    ("auto", {"max_rel_error": 0.03}),  # 17
    ("sparse", {"density": 0.2, "values": "int8", "select": "random"}),  # 18: DARE, positions hashed
    ("sparse", {"density": 0.1, "values": "int8", "select": "random"}),  # 19
    ("sparse", {"density": 0.05, "values": "int8", "select": "random"}),  # 20
    ("sparse", {"density": 0.02, "values": "int8", "select": "random"}),  # 21
]
MB = 1e6


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _taus(pre_dir: Path, ft_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    pre = load_file(str(pre_dir / "model.safetensors"))
    ft = load_file(str(ft_dir / "model.safetensors"))
    taus = {n: ft[n].float() - pre[n].float() for n in pre if pre[n].is_floating_point()}
    return pre, ft, taus


def _zstd3(data: bytes) -> int:
    return len(zstandard.ZstdCompressor(level=3).compress(data))


def _ulp_diff_bytes(pre: dict[str, torch.Tensor], ft: dict[str, torch.Tensor]) -> int:
    """Integer-ulp difference of two bf16 checkpoints (order-preserving ints), zigzag, 2 byte planes, zstd-1."""
    total = 0
    for n, p in pre.items():
        if p.dtype != torch.bfloat16:
            return -1

        def ordered(t: torch.Tensor) -> torch.Tensor:
            b = t.contiguous().view(torch.int16).to(torch.int32)
            return torch.where(b < 0, -(b & 0x7FFF), b)

        d = ordered(ft[n]) - ordered(p)
        z = ((d << 1) ^ (d >> 31)).to(torch.int32)
        lo, hi = (z & 0xFF).to(torch.uint8), ((z >> 8) & 0xFF).to(torch.uint8)
        big = (z >> 16).ne(0).any()
        planes = [lo, hi] + ([((z >> 16) & 0xFF).to(torch.uint8)] if big else [])
        total += len(zstd_frame.compress(torch.cat([x.reshape(-1) for x in planes]).numpy().tobytes()))
    return total


def _encode_all(codec, taus: dict[str, torch.Tensor], threads: int) -> tuple[dict, float]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        encoded = dict(zip(taus, pool.map(codec.encode, taus.values()), strict=True))
    return encoded, time.perf_counter() - t0


def _decode_all(encoded: dict, taus: dict[str, torch.Tensor], default: str, threads: int) -> tuple[dict, float]:
    zstd_frame.set_decode_threads(threads)

    def one(item):
        name, enc = item
        return name, get_codec(enc.codec or default).decode(enc.data, tuple(taus[name].shape), enc.params, where=name)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        decoded = dict(pool.map(one, encoded.items()))
    return decoded, time.perf_counter() - t0


def _write_artifact(path: Path, encoded: dict, taus: dict, decoded: dict, default: str) -> tuple[int, list[float]]:
    manifest = Manifest(name="bench", version="1.0.0", base_fingerprint="0" * 64)
    writer = ArtifactWriter(path, manifest)
    errors = []
    for name, enc in encoded.items():
        used = enc.codec or default
        err = 0.0 if get_codec(used).lossless else relative_error(taus[name], decoded[name])
        errors.append(err)
        writer.add(name, enc.data, codec=used, shape=tuple(taus[name].shape), dtype="BF16", params=enc.params, rel_error=err)
    writer.finish()
    with Artifact(path) as art:  # the real reader accepts it
        assert set(art.manifest.tensors) == set(encoded)
    return path.stat().st_size, errors


class Evaluator:
    """θ_pre + τ̂ in an fp32 model, loss on the pair's held-out blocks."""

    def __init__(self, pre_dir: Path, heldout: torch.Tensor) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(pre_dir, dtype=torch.float32).eval()
        self.pre = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        self.heldout = heldout

    def loss(self, taus: dict[str, torch.Tensor] | None) -> float:
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                p.copy_(self.pre[n])
                if taus is not None and n in taus:
                    p.add_(taus[n])
        return heldout_loss(self.model, self.heldout)


def run_pair(
    pair,
    cache: Path,
    evaluate: bool,
    threads: list[int],
    settings: list[tuple[str, dict]],
    heldout_seqs: int,
    baselines: bool = True,
) -> list[dict]:
    """Every setting on one pair; speeds are timed for each thread count in ``threads`` (none: size only)."""
    pre_dir, ft_dir = base_model(cache), finetune(cache, pair)
    pre, ft, taus = _taus(pre_dir, ft_dir)
    numel = sum(t.numel() for t in taus.values())
    fp32_bytes, bf16_bytes = 4 * numel, 2 * numel
    ckpt_bytes = (ft_dir / "model.safetensors").stat().st_size
    unchanged = sum(int((t == 0).sum()) for t in taus.values()) / numel
    _log(f"{pair.name}: {numel / 1e6:.1f}M elements, {unchanged:.1%} unchanged")
    rows: list[dict] = []

    def base_row(codec: str, nbytes: int) -> dict:
        return {
            "pair": pair.name,
            "codec": codec,
            "bytes": nbytes,
            "x_vs_bf16_tau": bf16_bytes / nbytes,
            "x_vs_bf16_ckpt": ckpt_bytes / nbytes,
        }

    if baselines:
        raw32 = b"".join(t.contiguous().numpy().tobytes() for t in taus.values())
        rows.append(base_row("zstd-3 fp32 τ (baseline)", _zstd3(raw32)))
        del raw32
        raw16 = b"".join(t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes() for t in taus.values())
        rows.append(base_row("zstd-3 bf16 τ (baseline)", _zstd3(raw16)))
        del raw16
        ulp = _ulp_diff_bytes({n: pre[n] for n in taus}, ft) if threads else -1
        if ulp > 0:
            rows.append(base_row("ulp diff, needs θ_pre (reference)", ulp))

    evaluator = None
    if evaluate:
        held = torch.tensor(json.loads((ft_dir / "heldout.json").read_text())["input_ids"])[:heldout_seqs]
        evaluator = Evaluator(pre_dir, held)
        loss_pre, loss_ft = evaluator.loss(None), evaluator.loss(taus)
        _log(f"{pair.name}: held-out loss pre {loss_pre:.4f}, ft {loss_ft:.4f}")
        for r in rows:
            r.update(loss_pre=loss_pre, loss_ft=loss_ft)

    with tempfile.TemporaryDirectory() as tmp:
        for name, opts in settings:
            codec = make_codec(name, opts)
            torch.set_num_threads(1)
            row = {}
            encoded = decoded = None
            for n_threads in threads or [2]:
                c0 = time.process_time()
                encoded, enc_s = _encode_all(codec, taus, n_threads)
                c1 = time.process_time()
                decoded, dec_s = _decode_all(encoded, taus, name, n_threads)
                c2 = time.process_time()
                if threads:
                    row[f"enc_MBps_{n_threads}t"] = fp32_bytes / MB / enc_s
                    row[f"dec_MBps_{n_threads}t"] = fp32_bytes / MB / dec_s
                    if n_threads == 1:  # per core: output bytes per CPU-second, robust to a busy machine
                        row["enc_MBps_cpu"] = fp32_bytes / MB / (c1 - c0)
                        row["dec_MBps_cpu"] = fp32_bytes / MB / (c2 - c1)
            size, errors = _write_artifact(Path(tmp) / "s.tvskill", encoded, taus, decoded, name)
            sizes = [taus[n].numel() for n in encoded]
            row = {
                **base_row(codec.describe(), size),
                **row,
                "max_rel_err": max(errors),
                "mean_rel_err": sum(e * s for e, s in zip(errors, sizes, strict=True)) / numel,
                "codecs_used": ",".join(sorted({e.codec or name for e in encoded.values()})),
            }
            if name == "exact":
                assert all(torch.equal(decoded[n], taus[n]) for n in taus), "exact is not bit-exact"
            if evaluator is not None:
                loss = evaluator.loss(decoded)
                row.update(loss_pre=loss_pre, loss_ft=loss_ft, loss=loss)
                if loss_pre != loss_ft:
                    row["retention"] = (loss_pre - loss) / (loss_pre - loss_ft)
            rows.append(row)
            _log(f"{pair.name} {row['codec']}: {row['x_vs_bf16_tau']:.2f}x, retention {row.get('retention', math.nan):.4f}")
            del encoded, decoded
    return rows


COLUMNS = [
    "pair", "codec", "bytes", "x_vs_bf16_tau", "x_vs_bf16_ckpt", "enc_MBps_1t", "dec_MBps_1t",
    "enc_MBps_2t", "dec_MBps_2t", "enc_MBps_cpu", "dec_MBps_cpu", "max_rel_err", "mean_rel_err", "loss_pre", "loss_ft", "loss",
    "retention", "codecs_used",
]  # fmt: skip


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", type=Path, default=default_cache())
    ap.add_argument("--pairs", default=",".join(p.name for p in PAIRS))
    ap.add_argument("--out", type=Path, default=Path("bench-out/compression.csv"))
    ap.add_argument("--no-eval", action="store_true", help="skip the held-out losses (sizes and speeds only)")
    ap.add_argument("--no-baselines", action="store_true", help="skip the zstd-3 and ulp-difference baselines")
    ap.add_argument("--heldout-seqs", type=int, default=24, help="held-out blocks of 128 tokens to score (≤ 24)")
    ap.add_argument("--threads", default="1,2", help="thread counts to time (default 1,2)")
    ap.add_argument(
        "--settings",
        help="comma-separated indices into SETTINGS to run (default: all), e.g. 0,1,2,5,7,9",
    )
    ap.add_argument(
        "--speed-pairs", default="a-lowlr", help="pairs whose speeds are timed (others: sizes and retention only)"
    )
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    wanted = args.pairs.split(",")
    rows: list[dict] = []
    for pair in PAIRS:
        if pair.name in wanted:
            timed = threads if pair.name in args.speed_pairs.split(",") else []
            chosen = [SETTINGS[int(i)] for i in args.settings.split(",")] if args.settings else SETTINGS
            rows += run_pair(
                pair, args.cache_dir, not args.no_eval, timed, chosen, args.heldout_seqs, not args.no_baselines
            )
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
                w.writeheader()
                for r in rows:
                    w.writerow({k: _fmt(r.get(k)) for k in COLUMNS})
    shown = ["pair", "codec", "bytes", "x_vs_bf16_tau", "x_vs_bf16_ckpt", "enc_MBps_1t", "dec_MBps_1t",
             "enc_MBps_2t", "dec_MBps_2t", "dec_MBps_cpu", "max_rel_err", "retention"]  # fmt: skip
    print("| " + " | ".join(shown) + " |")
    print("|" + "---|" * len(shown))
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(k)) for k in shown) + " |")
    print(f"\nCSV: {args.out}  (load average {os.getloadavg()[0]:.1f} at the end)")


if __name__ == "__main__":
    main()
