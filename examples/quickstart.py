"""End-to-end tour of tvreg on tiny real checkpoints, driven through the CLI as a user would.

1. Build a family of tiny Llama checkpoints (θ_pre, a general model G that added
   tokens to its vocabulary, and two skill fine-tunes) by training a few steps on CPU.
2. Start a registry (``tvreg-server``, SQLite under ``demo/registry``) on a free
   loopback port, create a user and an API token with ``tvreg-server admin``, and
   ``tvreg login``.
3. Write a skill project (``tvskill.toml``) per fine-tune and ``tvreg publish`` it: the
   skill is built, checked and uploaded.
4. ``tvreg init`` a copy of G as a model environment, ``tvreg search`` for skills that fit
   it, ``tvreg install`` both by name with the default weights ω = |D|/|G|, ``tvreg list``.
5. Load the result with ``transformers`` and generate a few tokens; stop the registry.

Everything lands in ``./demo`` (tvreg's data, cache and config too), so it is safe to rerun.
Tiny models show the mechanics, not merge quality; see examples/README.md.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from registry_session import logged_in_registry, tvreg, write_project  # noqa: E402
from tiny_models import build_family  # noqa: E402


def main() -> None:
    demo = Path("demo")  # relative, so the commands read as a user would type them
    shutil.rmtree(demo, ignore_errors=True)
    demo.mkdir()
    os.environ["TVREG_DATA_DIR"] = str(demo.resolve() / "tvreg-data")
    os.environ["TVREG_CACHE_DIR"] = str(demo.resolve() / "tvreg-cache")
    os.environ["TVREG_CONFIG_DIR"] = str(demo.resolve() / "tvreg-config")
    for var in ("TVREG_REGISTRY", "TVREG_TOKEN"):
        os.environ.pop(var, None)
    print("Training a tiny θ_pre, a general model G (+3 tokens) and two skills on CPU ...", flush=True)
    fam = build_family(demo / "models", dtype=torch.bfloat16, extra_general_tokens=3, sharded_general=True)
    shutil.copytree(fam.general, demo / "mymodel")

    with logged_in_registry(demo / "registry", demo / "registry.log", "alice"):
        tvreg("whoami")

        for skill, size in (("science", 61000), ("coding", 22000)):
            project = write_project(
                demo / "projects" / skill,
                name=f"alice/{skill}",
                version="1.0.0",
                base="../../models/pre",  # paths are relative to the project directory
                dataset_size=size,
                description=f"tiny {skill} skill",
                license="Apache-2.0",
                build={"finetuned": f"../../models/{skill}"},
            )
            tvreg("publish", str(project))
        tvreg("info", "alice/science")

        tvreg("init", str(demo / "mymodel"), "--base", str(fam.pre), "--general-size", "275000")
        tvreg("search", "--into", str(demo / "mymodel"))
        tvreg("install", "alice/science", "alice/coding", "--into", str(demo / "mymodel"))
        tvreg("list", str(demo / "mymodel"))

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo / "mymodel")
    model = AutoModelForCausalLM.from_pretrained(demo / "mymodel")
    ids = tok("User: Say hello.\nBot:", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    print(f"\nThe merged model loads in transformers ({model.dtype}) and generates: {tok.decode(out[0])!r}")
    print(f"Done. Everything is under {demo.resolve()}.")


if __name__ == "__main__":
    main()
