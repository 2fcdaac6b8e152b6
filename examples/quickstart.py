"""End-to-end tour of tvreg on tiny real checkpoints, driven through the CLI as a user would.

1. Build a family of tiny Llama checkpoints (θ_pre, a general model G that added
   tokens to its vocabulary, and two skill fine-tunes) by training a few steps on CPU.
2. ``tvreg build`` a skill from each fine-tune; ``tvreg info`` one of them.
3. ``tvreg init`` a copy of G as a model environment; ``tvreg install`` both skills
   with the default weights ω = |D|/|G|; ``tvreg list`` them.
4. Load the result with ``transformers`` and generate a few tokens.

Everything lands in ``./demo`` (tvreg's data and cache too), so it is safe to rerun.
Tiny models show the mechanics, not merge quality; see examples/README.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from tiny_models import build_family  # noqa: E402


def tvreg(*args: str) -> None:
    print(f"\n$ tvreg {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "tvreg.cli", *args], check=True)


def main() -> None:
    demo = Path("demo").resolve()
    shutil.rmtree(demo, ignore_errors=True)
    os.environ["TVREG_DATA_DIR"] = str(demo / "tvreg-data")
    os.environ["TVREG_CACHE_DIR"] = str(demo / "tvreg-cache")
    print("Training a tiny θ_pre, a general model G (+3 tokens) and two skills on CPU ...", flush=True)
    fam = build_family(demo / "models", dtype=torch.bfloat16, extra_general_tokens=3, sharded_general=True)
    shutil.copytree(fam.general, demo / "mymodel")

    tvreg("fingerprint", str(fam.pre))
    for skill, size in (("science", 61000), ("coding", 22000)):
        tvreg(
            "build", "--base", str(fam.pre), "--finetuned", str(getattr(fam, skill)), "--name", skill,
            "--version", "1.0.0", "--dataset-size", str(size), "--description", f"tiny {skill} skill",
            "-o", str(demo / f"{skill}-1.0.0.tvskill"),
        )  # fmt: skip
    tvreg("info", str(demo / "science-1.0.0.tvskill"))
    tvreg("init", str(demo / "mymodel"), "--base", str(fam.pre), "--general-size", "275000")
    tvreg(
        "install", str(demo / "science-1.0.0.tvskill"), str(demo / "coding-1.0.0.tvskill"),
        "--into", str(demo / "mymodel"),
    )  # fmt: skip
    tvreg("list", str(demo / "mymodel"))

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo / "mymodel")
    model = AutoModelForCausalLM.from_pretrained(demo / "mymodel")
    ids = tok("User: Say hello.\nBot:", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    print(f"\nThe merged model loads in transformers ({model.dtype}) and generates: {tok.decode(out[0])!r}")
    print(f"Done. Everything is under {demo}.")


if __name__ == "__main__":
    main()
