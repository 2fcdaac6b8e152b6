"""Model environments: the lockfile, and install/uninstall/upgrade/sync/verify being exact and atomic."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import copy_model, reference_install
from tiny_models import read_state_dict

from tvreg.build import build_skill
from tvreg.errors import MergeError, ModelEnvironmentError
from tvreg.fingerprint import fingerprint
from tvreg.install import install
from tvreg.lockfile import LOCK_NAME, LOCK_VERSION, read_lock


def _skill(fam, tmp_path, which, *, version="1.0.0", size=3000, name=None):
    return build_skill(
        fam.pre,
        finetuned=getattr(fam, which),
        output=tmp_path / f"{name or which}-{version}.tvskill",
        name=name or which,
        version=version,
        dataset_size=size,
    ).path


def test_lock_records_method_dtype_size_and_origin(family, tmp_path):
    sci = _skill(family, tmp_path, "science")
    model = copy_model(family.general, tmp_path / "mymodel")
    install([sci], into=model, base=family.pre, general_size=10000)
    lock = read_lock(model)
    data = json.loads((model / LOCK_NAME).read_text())
    assert data["lock_version"] == LOCK_VERSION == 2
    assert (data["method"], data["method_params"], data["output_dtype"]) == ("task_arithmetic", {}, None)
    (skill,) = lock.skills
    assert skill.size == sci.stat().st_size and skill.registry is None
    assert skill.artifact == str(sci.resolve())


def test_version_1_lock_is_read_and_written_back_as_version_2(family, tmp_path):
    sci = _skill(family, tmp_path, "science")
    model = copy_model(family.general, tmp_path / "mymodel")
    install([sci], into=model, base=family.pre, general_size=10000)
    data = json.loads((model / LOCK_NAME).read_text())
    data["lock_version"] = 1
    for key in ("method_params", "output_dtype"):
        del data[key]
    for s in data["skills"]:
        for key in ("registry", "requested", "size"):
            del s[key]
    (model / LOCK_NAME).write_text(json.dumps(data))
    assert read_lock(model).skills[0].name == "science"
    data["lock_version"] = 9
    (model / LOCK_NAME).write_text(json.dumps(data))
    with pytest.raises(ModelEnvironmentError, match="lockfile version 9, newer than this tvreg"):
        read_lock(model)


def test_output_dtype_casts_every_float_tensor_and_is_locked(family, tmp_path):
    sci = _skill(family, tmp_path, "science")
    model = copy_model(family.general, tmp_path / "mymodel")
    res = install([sci], into=model, base=family.pre, general_size=10000, output_dtype="bfloat16")
    expected = reference_install(family.general, family.pre, [(family.science, 0.3)])
    got = read_state_dict(model)
    for name, t in expected.items():
        assert torch.equal(got[name], t.to(torch.bfloat16) if t.is_floating_point() else t), name
    assert read_lock(model).output_dtype == "bfloat16"
    assert json.loads((model / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((family.general / "config.json").read_text())["dtype"] == "float32"
    assert res.output_fingerprint == fingerprint(model)
    index = json.loads((model / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in got.values())
    install([], into=model, output_dtype="auto")
    assert read_lock(model).output_dtype is None


def test_unknown_method_and_dtype_are_refused_before_writing(family, tmp_path):
    sci = _skill(family, tmp_path, "science")
    model = copy_model(family.general, tmp_path / "mymodel")
    with pytest.raises(MergeError, match="unknown merge method `nope`"):
        install([sci], into=model, base=family.pre, general_size=10000, method="nope")
    with pytest.raises(ModelEnvironmentError, match="unsupported output dtype `int8`"):
        install([sci], into=model, output_dtype="int8")
    assert read_lock(model).skills == ()
