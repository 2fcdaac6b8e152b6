"""Shared fixtures: real tiny checkpoints (built once per session) and a sandboxed tvreg home."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from helpers import copy_model, reference_install, subprocess_env, tree_digest  # noqa: E402, F401
from tiny_models import build_family  # noqa: E402

# A shell without job control starts background commands (`make test &`, nohup) with SIGINT
# ignored, and a child inherits SIG_IGN through exec, so Python would never raise
# KeyboardInterrupt in the CLIs the Ctrl-C tests start. Handling SIGINT here makes every
# child start with the default disposition, as under an interactive terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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


@pytest.fixture
def science_env(family, tmp_path):
    """``(model, skill)``: a sharded copy of G initialised on θ_pre, and a `science` skill built for it, not installed."""
    from tvreg._build.build import build_skill
    from tvreg._env.environment import init_environment

    skill = build_skill(
        family.pre, finetuned=family.science, output=tmp_path / "science.tvskill", name="science",
        version="1.0.0", dataset_size=3000,
    ).path  # fmt: skip
    model = copy_model(family.general, tmp_path / "mymodel")
    init_environment(model, base=family.pre, general_size=10000)
    return model, skill


@pytest.fixture
def run():
    """``tvreg ARGS`` in-process through click's runner; exceptions propagate (a traceback is a bug)."""
    from click.testing import CliRunner

    from tvreg.cli import main

    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """No saved huggingface.co token, endpoint, offline switch or cache of the machine leaks into a test."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for var in ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
