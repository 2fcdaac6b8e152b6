"""`tvreg export ns/skill@version`: one registry skill, downloaded through the cache, as a LoRA adapter."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from client_helpers import cli, login, write_project

from tvreg._build.adapter import adapter_deltas
from tvreg._build.build import build_skill
from tvreg._format.artifact import Artifact
from tvreg._format.checkpoint import Checkpoint

pytestmark = [
    pytest.mark.parametrize("registry", ["sqlite"], indirect=True),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


def test_registry_skill_exports_at_its_weight_over_the_environment(registry, family, tmp_path):
    login(registry, "alice")
    artifact = build_skill(
        family.pre, finetuned=family.science, output=tmp_path / "science-1.0.0.tvskill", name="science",
        version="1.0.0", dataset_size=1000,
    ).path  # fmt: skip
    project = write_project(tmp_path / "p", name="alice/science", version="1.0.0", artifact=str(artifact))
    assert cli("publish", project).exit_code == 0
    model = tmp_path / "mymodel"
    shutil.copytree(family.general, model)
    assert cli("init", model, "--base", family.pre, "--general-size", 10000).exit_code == 0

    out = tmp_path / "adapter"
    res = cli(
        "export", "alice/science@1.0.0", "--as", "peft", "-o", out, "--base", model, "--weight", "0.5",
        "--energy", "1.0", "--others", "save", "--format", "json",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    (report,) = json.loads(res.stdout)
    assert report["label"] == "alice/science@1.0.0 (ω=0.5)"
    assert report["probe"]["reference"] == "G + ΔW in float32" and report["probe"]["top1_agreement"] == 1.0
    with Checkpoint.open(family.pre) as pre, Artifact(artifact) as art:
        shapes = {n: tuple(pre.info(n).shape) for n in pre.names()}
        deltas = [d for d in adapter_deltas(out, shapes) if d.kind == "delta"]  # B A, not saved modules
        assert len(deltas) == 2 * 7 + 1  # seven projections per layer and lm_head
        for d in deltas:
            want = art.decode(d.name) * 0.5
            assert torch.allclose(d.tensor, want, atol=2e-5 * float(want.abs().max()))

    other = cli("export", "alice/science@1.0.0", "-o", tmp_path / "x", "--base", family.general)
    assert other.exit_code == 1 and "was built for base" in other.stderr
