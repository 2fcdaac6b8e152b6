"""How close are sketch estimates to the exact values, and how big and slow are sketches?

Fine-tunes a tiny Llama (real AdamW steps on the texts of ``examples/tiny_models.py``)
into several skills from one θ_pre, then for every pair prints the exact cosine and
top-20% sign-conflict fraction computed from the full vectors next to the estimates of
:func:`tvreg._format.interference.compare`, plus sketch size, τ size and sketching time.

    python benchmarks/sketch_accuracy.py --hidden 64 256 512

Not run by the test suite (tests/test_sketch.py checks the default size at hidden 64).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from tiny_models import (  # noqa: E402
    CODING_TEXTS,
    GENERIC_TEXTS,
    INSTRUCTION_TEXTS,
    SCIENCE_TEXTS,
    make_tokenizer,
    tiny_llama_config,
    train_steps,
)
from transformers import LlamaForCausalLM  # noqa: E402

from tvreg._format.interference import compare  # noqa: E402
from tvreg._format.sketch import TOP_FRACTION, SketchBuilder  # noqa: E402


def exact(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float]:
    dot = na = nb = 0.0
    conflicting = both_top = 0
    for name in a:
        x, y = a[name].double().flatten(), b[name].double().flatten()
        dot, na, nb = dot + float(x @ y), na + float(x @ x), nb + float(y @ y)
        n = x.numel()
        k = n - max(1, math.ceil(TOP_FRACTION * n)) + 1
        top = (x.abs() >= x.abs().kthvalue(k).values) & (y.abs() >= y.abs().kthvalue(k).values)
        top &= (x != 0) & (y != 0)
        both_top += int(top.sum())
        conflicting += int((top & (torch.sign(x) != torch.sign(y))).sum())
    return dot / math.sqrt(na * nb), conflicting / max(both_top, 1)


def run(hidden: int, steps: int) -> list[tuple[float, float]]:
    tok = make_tokenizer()
    torch.manual_seed(0)
    pre = LlamaForCausalLM(tiny_llama_config(len(tok), hidden_size=hidden, intermediate_size=2 * hidden))
    train_steps(pre, GENERIC_TEXTS, tok, steps=20, lr=3e-3, seed=0)
    base = {k: v.detach().clone() for k, v in pre.state_dict().items()}

    def finetune(texts: list[str], seed: int, n: int) -> dict[str, torch.Tensor]:
        model = copy.deepcopy(pre)
        train_steps(model, texts, tok, steps=n, lr=2e-3, seed=seed)
        return {k: v.detach() - base[k] for k, v in model.state_dict().items()}

    taus = {
        "science": finetune(SCIENCE_TEXTS, 2, steps),
        "science-b": finetune(SCIENCE_TEXTS, 7, steps),
        "science-long": finetune(SCIENCE_TEXTS, 9, 3 * steps),
        "coding": finetune(CODING_TEXTS, 3, steps),
        "instruct": finetune(INSTRUCTION_TEXTS, 4, steps),
    }
    sketches, seconds = {}, 0.0
    for name, tau in taus.items():
        started = time.perf_counter()
        builder = SketchBuilder()
        for tensor, value in tau.items():
            builder.add(tensor, value)
        sketches[name] = builder.finish(
            skill=name, version="1.0.0", base_fingerprint="0" * 64, artifact_digest="sha256:" + "0" * 64
        )
        seconds += time.perf_counter() - started
    params = sum(v.numel() for v in taus["science"].values())
    size = len(sketches["science"].to_bytes())
    print(
        f"\nhidden {hidden}: {params:,} parameters in {len(taus['science'])} tensors; τ in fp32 "
        f"{params * 4 / 2**20:.2f} MiB, sketch {size / 2**10:.1f} KiB ({size / (params * 4):.1%}); "
        f"sketching {seconds / len(taus) * 1000:.0f} ms per skill"
    )
    print(f"{'pair':<28} {'cos exact':>9} {'est':>7} {'err':>7}   {'conflict exact':>14} {'est':>6} {'err':>7}")
    errors = []
    names = list(taus)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            exact_cos, exact_conflict = exact(taus[a], taus[b])
            est = compare(sketches[a], sketches[b])
            errors.append((est.cosine - exact_cos, est.sign_conflict - exact_conflict))
            print(
                f"{a + ' × ' + b:<28} {exact_cos:>+9.3f} {est.cosine:>+7.3f} {errors[-1][0]:>+7.3f}   "
                f"{exact_conflict:>14.3f} {est.sign_conflict:>6.3f} {errors[-1][1]:>+7.3f}"
            )
    print(
        f"max |error|: cosine {max(abs(e[0]) for e in errors):.3f}, "
        f"sign conflict {max(abs(e[1]) for e in errors):.3f}"
    )
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 256], help="model widths to try")
    parser.add_argument("--steps", type=int, default=8, help="AdamW steps per fine-tune")
    args = parser.parse_args()
    for hidden in args.hidden:
        run(hidden, args.steps)


if __name__ == "__main__":
    main()
