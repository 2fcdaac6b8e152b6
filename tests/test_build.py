"""Building skills from real checkpoints and adapters: manifest, losslessness, refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_models import SCIENCE_TEXTS, make_lora_adapter, read_state_dict

from tvreg._build.build import build_skill
from tvreg._format.artifact import MANIFEST_KEY, Artifact
from tvreg._format.fingerprint import fingerprint
from tvreg.errors import InvalidName, TensorMismatch, UnsafeCheckpoint


def test_build_records_the_manifest_in_the_safetensors_header(family, tmp_path):
    out = tmp_path / "science-1.0.0.tvskill"
    res = build_skill(
        family.pre,
        finetuned=family.science,
        output=out,
        name="science",
        version="1.0.0",
        dataset_size=61000,
        description="facts",
        license="apache-2.0",
    )
    with safe_open(out, framework="pt") as f:  # any safetensors reader sees the manifest
        manifest = json.loads(f.metadata()[MANIFEST_KEY])
    assert manifest["name"] == "science" and manifest["version"] == "1.0.0"
    assert manifest["base_fingerprint"] == fingerprint(family.pre)
    assert manifest["dataset_size"] == 61000 and manifest["dataset_unit"] == "examples"
    assert manifest["kind"] == "task_vector" and manifest["license"] == "apache-2.0"
    assert manifest["format_version"] == 1
    pre = read_state_dict(family.pre)
    assert set(manifest["tensors"]) == set(pre)
    for name, entry in manifest["tensors"].items():
        assert (
            entry["shape"] == list(pre[name].shape) and entry["codec"] == "exact" and entry["dtype"] == "F32"
        )
    assert res.stored_bytes == out.stat().st_size


def test_exact_codec_gives_tau_back_bit_for_bit(family_bf16, tmp_path):
    out = tmp_path / "s.tvskill"
    build_skill(family_bf16.pre, finetuned=family_bf16.science, output=out, name="s", version="0.1.0")
    pre, ft = read_state_dict(family_bf16.pre), read_state_dict(family_bf16.science)
    raw = sum(t.numel() * 4 for t in pre.values())
    assert out.stat().st_size < raw / 2, "bf16 task vectors should compress well below raw fp32"
    with Artifact(out) as art:
        for name in pre:
            expected = ft[name].to(torch.float32) - pre[name].to(torch.float32)
            assert torch.equal(art.decode(name), expected), name


def test_lora_adapter_builds_tau_of_the_targets_only(family, tmp_path):
    adapter = make_lora_adapter(family.pre, tmp_path / "adapter", SCIENCE_TEXTS, steps=3)
    out = tmp_path / "lora.tvskill"
    build_skill(family.pre, adapter=adapter, output=out, name="sci-lora", version="1.0.0", dataset_size=10)
    with Artifact(out) as art:
        names = set(art.manifest.tensors)
        assert names == {f"model.layers.{i}.self_attn.{m}_proj.weight" for i in (0, 1) for m in ("q", "v")}
        assert art.manifest.source["kind"] == "lora_adapter"
        assert all(art.decode(n).abs().sum() > 0 for n in names)


def test_shape_mismatch_is_refused_naming_the_tensor_and_writes_nothing(family, tmp_path):
    ft = tmp_path / "ft"
    shutil.copytree(family.science, ft)
    tensors = load_file(ft / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"][:-1]
    save_file(tensors, ft / "model.safetensors")
    with pytest.raises(TensorMismatch, match=r"`model\.layers\.0\.mlp\.up_proj\.weight` has shape"):
        build_skill(family.pre, finetuned=ft, output=tmp_path / "x.tvskill", name="x", version="1.0.0")
    assert list(tmp_path.glob("*.tvskill")) == [] and list(tmp_path.glob(".x.tvskill*")) == []


def test_missing_tensor_is_refused(family, tmp_path):
    ft = tmp_path / "ft"
    shutil.copytree(family.science, ft)
    tensors = load_file(ft / "model.safetensors")
    del tensors["model.norm.weight"]
    save_file(tensors, ft / "model.safetensors")
    with pytest.raises(TensorMismatch, match=r"lacks tensor `model\.norm\.weight`"):
        build_skill(family.pre, finetuned=ft, output=tmp_path / "x.tvskill", name="x", version="1.0.0")


def test_nan_in_the_fine_tune_is_refused(family, tmp_path):
    ft = tmp_path / "ft"
    shutil.copytree(family.science, ft)
    tensors = load_file(ft / "model.safetensors")
    tensors["model.layers.1.self_attn.o_proj.weight"][0, 0] = float("nan")
    save_file(tensors, ft / "model.safetensors")
    with pytest.raises(TensorMismatch, match=r"`model\.layers\.1\.self_attn\.o_proj\.weight`.*NaN"):
        build_skill(family.pre, finetuned=ft, output=tmp_path / "x.tvskill", name="x", version="1.0.0")
    assert not list(tmp_path.glob("*x.tvskill*"))


@pytest.mark.parametrize("where", ["two entries", "every entry"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("compiled", [True, False])
def test_a_non_finite_bf16_fine_tune_is_refused_on_both_paths(family_bf16, tmp_path, monkeypatch, where, bad, compiled):
    """bf16 models take the compiled delta, whose NaN/Inf check is the sketch's ‖τ‖²; it must refuse
    as the NumPy check does, naming the tensor and the count, even when no entry is finite."""
    from tvreg._format.codecs import jit

    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(jit, "enabled", compiled)
    ft = tmp_path / "ft"
    shutil.copytree(family_bf16.science, ft)
    tensors = load_file(ft / "model.safetensors")
    weight = tensors["model.layers.1.mlp.up_proj.weight"]
    region = weight[3, 4:6] if where == "two entries" else weight
    region.fill_(bad)
    save_file(tensors, ft / "model.safetensors")
    count = region.numel()
    with pytest.raises(TensorMismatch, match=rf"`model\.layers\.1\.mlp\.up_proj\.weight` of the task vector has {count} NaN"):
        build_skill(family_bf16.pre, finetuned=ft, output=tmp_path / "x.tvskill", name="x", version="1.0.0")
    assert not list(tmp_path.glob("*x.tvskill*"))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_weights_are_never_unpickled(family, tmp_path):
    ft = tmp_path / "ft"
    ft.mkdir()
    shutil.copy(family.science / "config.json", ft)
    marker = tmp_path / "pwned"
    torch.save({"x": _Payload(marker)}, ft / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpoint, match="pickle weights"):
        build_skill(family.pre, finetuned=ft, output=tmp_path / "x.tvskill", name="x", version="1.0.0")
    assert not marker.exists()


@pytest.mark.parametrize(
    "name", ["../evil", "/abs", "a/b", "a\\b", "nul\x00", "Upper", "ѕafety", "..", "a..b"]
)
def test_unsafe_names_are_refused_before_any_work(family, tmp_path, name):
    with pytest.raises(InvalidName):
        build_skill(
            family.pre, finetuned=family.science, output=tmp_path / "x.tvskill", name=name, version="1.0.0"
        )
    assert not list(tmp_path.rglob("*tvskill*"))


def test_the_base_fingerprint_hashed_beside_the_build_reaches_the_header_and_sketch_or_leaves_nothing(
    family, tmp_path, monkeypatch
):
    """θ_pre is hashed while the tensors are coded; the header and the sketch get its fingerprint, and a
    fingerprint that fails (after the tensors were written) leaves neither an artifact nor a temporary file."""
    import time

    import tvreg._build.build as build_mod
    from tvreg.errors import CheckpointError

    res = build_skill(family.pre, finetuned=family.science, output=tmp_path / "ok.tvskill", name="ok", version="1.0.0")
    want = fingerprint(family.pre)
    assert res.manifest.base_fingerprint == want == res.sketch.base_fingerprint
    assert Artifact(tmp_path / "ok.tvskill").manifest.base_fingerprint == want

    def failing(model, **_):
        time.sleep(0.5)  # the build's tensors are written by then
        raise CheckpointError("`pre` could not be read while hashing it.")

    monkeypatch.setattr(build_mod, "fingerprint", failing)
    out = tmp_path / "bad" / "x.tvskill"
    out.parent.mkdir()
    with pytest.raises(CheckpointError, match="while hashing"):
        build_skill(family.pre, finetuned=family.science, output=out, name="x", version="1.0.0")
    assert list(out.parent.iterdir()) == []
