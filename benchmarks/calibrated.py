"""Calibrated ``auto`` on real SmolLM2 fine-tunes: what a publisher gets with no hand tuning.

For each fine-tune pair of ``finetune_pairs.py`` (built and cached on first use), in one run:

1. ``tvreg build --codec exact`` (the lossless reference) and ``--codec auto`` without
   calibration (the per-tensor relative-error chooser: today's default ``auto``);
2. ``tvreg build --codec auto --calibration calib.jsonl --min-retention T`` through the real
   ``build_skill``: ``calib.jsonl`` holds texts of the pair's domain cut from held-out
   documents that the test blocks do not come from (and the fine-tune never saw);
3. each artifact is decoded by the real reader and scored on the pair's **held-out test
   blocks** (24 × 128 tokens, fp32): gain retention (loss_pre − loss_τ̂)/(loss_pre − loss_τ);
4. sizes against the bf16 τ (2 bytes per element), build wall and CPU seconds, and decode
   CPU seconds of the picked artifact against the exact one (1 thread, every tensor).

It prints the curve the calibration explored (every evaluated coding: bytes, retention and
its bound on the calibration texts) and where it stopped, and writes ``--out`` as JSON.

Run (from the repository root, with ``pip install -e '.[bench]'``)::

    nice -n 10 .venv/bin/python benchmarks/calibrated.py [--pairs a-lowlr,b-highlr,c-lora,d-long]
        [--min-retention 0.99] [--calib-texts 32] [--out bench-out/calibrated.json]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_pairs import (  # noqa: E402
    HELDOUT_SEQ,
    HELDOUT_SEQS,
    PAIRS,
    _domain_texts,
    base_model,
    default_cache,
    finetune,
    heldout_loss,
)

from tvreg._build.build import build_skill  # noqa: E402
from tvreg._build.calibrate import DEFAULT_MAX_EVALUATIONS  # noqa: E402
from tvreg._format.artifact import Artifact  # noqa: E402


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def calibration_texts(tok, domain: str, n: int) -> list[str]:
    """``n`` texts of ``HELDOUT_SEQ`` tokens from held-out documents the test blocks do not use.

    ``finetune_pairs.domain_data`` shuffles the documents with seed 0, trains on the last
    four fifths and cuts the test blocks from a prefix of the first fifth (at most 4 per
    document, until it has ``HELDOUT_SEQS``); the rest of that fifth is neither trained on
    nor tested on, and calibration reads only it.
    """
    docs = _domain_texts(domain)
    random.Random(0).shuffle(docs)
    held = docs[: max(1, len(docs) // 5)]
    used, blocks = 0, 0
    for doc in held:  # the same walk as _token_blocks: which documents the test blocks come from
        ids = tok(doc, add_special_tokens=False)["input_ids"]
        blocks += min(4, len(range(0, len(ids) - HELDOUT_SEQ, HELDOUT_SEQ)))
        used += 1
        if blocks >= HELDOUT_SEQS:
            break
    texts: list[str] = []
    cuts = [tok(doc, add_special_tokens=False)["input_ids"] for doc in held[used:]]
    starts = [list(range(0, len(ids) - HELDOUT_SEQ, HELDOUT_SEQ)) for ids in cuts]
    # 4 blocks a document first (variety); a small domain (the language reference: 7 unused
    # documents, 11 texts) then takes the rest of each document's blocks
    for first in (True, False):
        for ids, where in zip(cuts, starts, strict=True):
            for s in where[:4] if first else where[4:]:
                if len(texts) < n:
                    texts.append(tok.decode(ids[s : s + HELDOUT_SEQ]))
    if len(texts) < n:
        _log(f"{domain}: only {len(texts)} calibration texts in the unused held-out documents")
    return texts[:n]


class Scorer:
    """θ_pre + τ̂ in one fp32 model, mean token NLL on the pair's held-out test blocks."""

    def __init__(self, pre_dir: Path, blocks: torch.Tensor) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(pre_dir, dtype=torch.float32).eval()
        self.state = self.model.state_dict()
        self.pre = {n: t.detach().clone() for n, t in self.state.items()}
        self.blocks = blocks

    def loss(self, taus: dict[str, torch.Tensor] | None) -> float:
        with torch.no_grad():
            # every reset before any add: a tied lm_head shares the embedding's storage, and a
            # reset of it after the embedding's add would drop the embedding's τ
            for n, t in self.state.items():
                t.copy_(self.pre[n])
            for n, t in self.state.items():
                if taus is not None and n in taus:
                    t.add_(taus[n].to(t.dtype))
        return heldout_loss(self.model, self.blocks)


def decoded(path: Path) -> tuple[dict[str, torch.Tensor], float]:
    """Every tensor of an artifact through the real reader, and the CPU seconds it took."""
    c0 = time.process_time()
    with Artifact(path) as art:
        taus = {name: art.decode(name) for name in art.manifest.tensors}
    return taus, time.process_time() - c0


def run_pair(pair, cache: Path, args, work: Path) -> dict:
    from transformers import AutoTokenizer

    pre_dir, ft_dir = base_model(cache), finetune(cache, pair)
    tok = AutoTokenizer.from_pretrained(pre_dir)
    data = work / f"calib-{pair.name}.jsonl"
    texts = calibration_texts(tok, pair.domain, args.calib_texts)
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    blocks = torch.tensor(json.loads((ft_dir / "heldout.json").read_text())["input_ids"])[:HELDOUT_SEQS]
    scorer = Scorer(pre_dir, blocks)
    loss_pre = scorer.loss(None)
    out: dict = {"pair": pair.name, "domain": pair.domain, "calibration_texts": len(texts), "test_blocks": len(blocks)}
    builds = {
        "exact": {"codec": "exact"},
        "auto (no calibration)": {"codec": "auto"},
        f"auto --min-retention {args.min_retention}": {
            "codec": "auto", "calibration": data, "min_retention": args.min_retention,
            "max_evaluations": args.max_evaluations,
        },
    }  # fmt: skip
    rows = []
    loss_ft = None
    for label, kw in builds.items():
        path = work / f"{pair.name}-{len(rows)}.tvskill"
        t0, c0 = time.perf_counter(), time.process_time()
        res = build_skill(pre_dir, finetuned=ft_dir, output=path, name="bench", version="1.0.0", **kw)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        taus, dec_cpu = decoded(path)
        numel = sum(t.numel() for t in taus.values())
        loss = scorer.loss(taus)
        if label == "exact":
            loss_ft = loss
        del taus
        size = path.stat().st_size
        row = {
            "build": label, "bytes": size, "x_vs_bf16_tau": 2 * numel / size, "build_wall_s": wall,
            "build_cpu_s": cpu, "decode_cpu_s": dec_cpu, "loss": loss,
            "heldout_retention": (loss_pre - loss) / (loss_pre - loss_ft) if loss_ft is not None and loss_ft != loss_pre else None,
            "chosen": res.manifest.source.get("codec"),
        }  # fmt: skip
        cal = res.manifest.calibration
        if cal:
            row["calibration"] = cal
        rows.append(row)
        _log(f"{pair.name} {label}: {row['x_vs_bf16_tau']:.1f}x, held-out retention {row['heldout_retention']}, "
             f"build {wall:.0f} s")  # fmt: skip
    exact_decode = rows[0]["decode_cpu_s"]
    for r in rows:
        r["decode_vs_exact"] = r["decode_cpu_s"] / exact_decode
    out.update(loss_pre=loss_pre, loss_ft=loss_ft, builds=rows)
    return out


def _report(result: dict, target: float) -> None:
    print(f"\n== {result['pair']} ({result['domain']}): loss pre {result['loss_pre']:.4f}, ft {result['loss_ft']:.4f}; "
          f"{result['calibration_texts']} calibration texts, {result['test_blocks']} held-out test blocks")  # fmt: skip
    print(f"  {'build':<28} {'bytes':>11} {'x bf16 τ':>9} {'held-out':>9} {'build s':>8} {'decode':>7}  chosen")
    for r in result["builds"]:
        kept = r["heldout_retention"]
        print(f"  {r['build']:<28} {r['bytes']:>11,} {r['x_vs_bf16_tau']:>9.1f} "
              f"{(f'{kept:.4f}' if kept is not None else '-'):>9} {r['build_wall_s']:>8.0f} "
              f"{r['decode_vs_exact']:>6.2f}x  {r['chosen']}")  # fmt: skip
    cal = result["builds"][-1].get("calibration")
    if cal:
        print(f"  explored ({cal['evaluations']} evaluations, target {target}): bytes, retention (bound) on calibration texts")
        for e in sorted(cal["explored"], key=lambda e: e["bytes"]):
            bound = e.get("retention_bound")
            mark = "*" if e["codec"] == cal["chosen"] else " "
            print(f"   {mark} {e['bytes']:>11,} {e['retention']:>8.4f} ({bound if bound is None else round(bound, 4)})  {e['codec']}")
        print(f"  stopped at: {cal['chosen']} — {cal.get('plan_reason') or 'per-group plan'}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", type=Path, default=default_cache())
    ap.add_argument("--pairs", default=",".join(p.name for p in PAIRS))
    ap.add_argument("--min-retention", type=float, default=0.99)
    ap.add_argument("--max-evaluations", type=int, default=DEFAULT_MAX_EVALUATIONS)
    ap.add_argument("--calib-texts", type=int, default=32, help="calibration texts of 128 tokens per pair")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    ap.add_argument("--out", type=Path, default=Path("bench-out/calibrated.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    wanted = args.pairs.split(",")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in PAIRS:
            if pair.name in wanted:
                results.append(run_pair(pair, args.cache_dir, args, Path(tmp)))
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=1, default=str))
                _report(results[-1], args.min_retention)
    met = [r["pair"] for r in results if (b := r["builds"][-1])["x_vs_bf16_tau"] >= 32 and (b["heldout_retention"] or 0) >= args.min_retention]  # fmt: skip
    print(f"\n≥ 32x at ≥ {args.min_retention:.0%} held-out retention: {', '.join(met) or 'none'} of {len(results)} pairs")
    if not all(math.isfinite(r["loss_ft"]) for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
