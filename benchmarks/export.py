"""Export benchmark: LoRA rank vs reconstruction error vs adapter size vs loss, for `tvreg export`.

For one skill τ = θ_ft − θ_pre it runs ``export_peft`` at several fixed ranks and
energies (``others="save"``: embeddings and norms ride along whole, as most fine-tunes
change them) and reports per setting the overall ‖ΔW − BA‖/‖ΔW‖, the adapter's bytes
(against the exact ``.tvskill``), the export time, and the loss of θ_pre + adapter
(loaded with ``PeftModel.from_pretrained``), with **gain retention**
(loss_pre − loss_adapter) / (loss_pre − loss_ft) as in ``compression.py``.

Data: the real SmolLM2-135M pair of ``compression.py`` (default ``c-lora``; held-out
text of its domain) when ``finetune_pairs.py`` has already built it under
``--cache-dir``; otherwise the tiny Llama family of the test suite (science skill,
loss on its own training texts: there is no held-out set), which runs in well under a
minute on one core.

Run (from the repository root)::

    nice -n 10 .venv/bin/python benchmarks/export.py [--pair c-lora] [--ranks 1,2,4,8,16,32]
        [--energies 0.5,0.9,0.99] [--cache-dir ~/.cache/tvreg-bench] [--out bench-out/export.csv]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "examples"))

from tvreg._build.build import build_skill  # noqa: E402
from tvreg._env.export import export_peft  # noqa: E402


def _real_pair(cache: Path, name: str):
    """(pre, ft, held-out ids, loss fn) of a cached SmolLM2 pair, or None when it is not built."""
    if not (cache / f"ft-{name}" / "model.safetensors").exists():
        return None
    from finetune_pairs import PAIRS, base_model, domain_data, heldout_loss
    from transformers import AutoTokenizer

    pair = next(p for p in PAIRS if p.name == name)
    pre = base_model(cache)
    _, held = domain_data(AutoTokenizer.from_pretrained(pre), pair.domain)
    return pre, cache / f"ft-{name}", held, heldout_loss, f"SmolLM2-135M pair {name}, held-out {pair.domain}"


def _tiny(root: Path):
    from tiny_models import SCIENCE_TEXTS, _encode_batch, build_family, make_tokenizer

    family = build_family(root / "family", dtype=torch.float32)
    batch = _encode_batch(SCIENCE_TEXTS, make_tokenizer(family.tokenizer), 64)

    def loss(model, ids) -> float:
        return float(model(**ids).loss)

    return family.pre, family.science, batch, loss, "tiny Llama family (2 layers, d=64), science texts"


def _load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "tvreg-bench")
    ap.add_argument("--pair", default="c-lora")
    ap.add_argument("--ranks", default="1,2,4,8,16,32")
    ap.add_argument("--energies", default="0.5,0.9,0.99")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from peft import PeftModel

    with tempfile.TemporaryDirectory(prefix="tvreg-export-bench-") as tmp:
        tmp = Path(tmp)
        data = _real_pair(args.cache_dir, args.pair) or _tiny(tmp)
        pre, ft, held, loss_fn, what = data
        print(f"# {what}")
        skill = tmp / "skill.tvskill"
        build_skill(pre, finetuned=ft, output=skill, name="skill", version="1.0.0", dataset_size=1)
        with torch.no_grad():
            loss_pre = loss_fn(_load(pre), held)
            loss_ft = loss_fn(_load(ft), held)
        print(f"# loss θ_pre {loss_pre:.4f}, θ_ft {loss_ft:.4f}; skill artifact {skill.stat().st_size} bytes")
        settings = [("rank", int(r)) for r in args.ranks.split(",")]
        settings += [("energy", float(e)) for e in args.energies.split(",")]
        rows = []
        header = f"{'setting':>12} {'rel.err':>9} {'ranks':>9} {'adapter B':>11} {'/skill':>7} {'s':>6} {'loss':>8} {'gain':>6}"
        print(header)
        for kind, value in settings:
            out = tmp / f"{kind}-{value}"
            t0 = time.perf_counter()
            (res,) = export_peft(skill, out, base=pre, others="save", check=False, **{kind: value})
            seconds = time.perf_counter() - t0
            with torch.no_grad():
                model = PeftModel.from_pretrained(_load(pre), str(out)).eval()
                loss = loss_fn(model, held)
            ranks = [m.rank for m in res.modules if m.rank]
            gain = (loss_pre - loss) / (loss_pre - loss_ft) if loss_pre != loss_ft else float("nan")
            row = {
                "setting": f"{kind}={value}",
                "rel_error": res.rel_error,
                "rank_min": min(ranks),
                "rank_max": max(ranks),
                "adapter_bytes": res.adapter_bytes,
                "artifact_bytes": res.artifact_bytes,
                "seconds": seconds,
                "loss": loss,
                "gain_retention": gain,
            }
            rows.append(row)
            print(
                f"{row['setting']:>12} {res.rel_error:9.4f} {min(ranks):>4}-{max(ranks):<4} "
                f"{res.adapter_bytes:>11} {res.adapter_bytes / res.artifact_bytes:7.3f} {seconds:6.2f} "
                f"{loss:8.4f} {gain:6.3f}"
            )
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)


if __name__ == "__main__":
    main()
