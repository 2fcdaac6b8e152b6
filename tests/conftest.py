"""Shared fixtures: real tiny checkpoints (built once per session) and a sandboxed tvreg home."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from tiny_models import build_family  # noqa: E402


@pytest.fixture(autouse=True)
def tvreg_home(tmp_path, monkeypatch):
    """Every test gets its own data, cache and config directories, like a fresh machine."""
    monkeypatch.setenv("TVREG_DATA_DIR", str(tmp_path / "tvreg-data"))
    monkeypatch.setenv("TVREG_CACHE_DIR", str(tmp_path / "tvreg-cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    for var in ("TVREG_FAULT", "TVREG_CONFIG_DIR", "TVREG_REGISTRY", "TVREG_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def family(tmp_path_factory):
    """fp32, sharded G, untied embeddings."""
    return build_family(tmp_path_factory.mktemp("family-fp32"), dtype=torch.float32, sharded_general=True)


@pytest.fixture(scope="session")
def family_bf16(tmp_path_factory):
    """bf16, tied embeddings, and a G that added 3 tokens to its vocabulary."""
    return build_family(
        tmp_path_factory.mktemp("family-bf16"),
        dtype=torch.bfloat16,
        tie_word_embeddings=True,
        extra_general_tokens=3,
    )


@pytest.fixture(scope="session")
def family_fp16(tmp_path_factory):
    return build_family(tmp_path_factory.mktemp("family-fp16"), dtype=torch.float16, extra_general_tokens=2)


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def tree_digest(path: Path) -> dict[str, str]:
    """Every file under ``path`` (relative name → sha256), to prove a directory did not change."""
    out = {}
    for p in sorted(Path(path).rglob("*")):
        if p.is_file():
            out[str(p.relative_to(path))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


def reference_install(general: Path, pre: Path, skills: list[tuple[Path, float]]) -> dict[str, torch.Tensor]:
    """θ_G + Σ ω_k (θ_k − θ_pre) in plain torch, with the documented numerics (fp32, listed order, one rounding)."""
    from tiny_models import read_state_dict

    g, p = read_state_dict(general), read_state_dict(pre)
    fts = [(read_state_dict(d), w) for d, w in skills]
    out = {}
    for name, gt in g.items():
        acc = gt.to(torch.float32)
        for ft, w in fts:
            tau = ft[name].to(torch.float32) - p[name].to(torch.float32)
            w32 = float(torch.tensor(w, dtype=torch.float32))
            rows = tau.shape[0]
            acc = acc.clone()
            acc[:rows] = acc[:rows] + tau * w32
        out[name] = acc.to(gt.dtype)
    return out
