"""Installing skills onto a general model: exact numerics, real loading, and every refusal."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import copy_model, reference_install, tree_digest
from safetensors.torch import load_file, save_file
from tiny_models import SCIENCE_TEXTS, make_lora_adapter, merged_reference, read_state_dict
from transformers import AutoModelForCausalLM

from tvreg._build.build import build_skill
from tvreg._env.environment import init_environment
from tvreg._env.lockfile import read_lock
from tvreg._env.operations import install
from tvreg._format.artifact import Artifact
from tvreg._format.fingerprint import fingerprint
from tvreg.errors import (
    CorruptArtifact,
    IncompatibleBase,
    ModelEnvironmentError,
    TensorMismatch,
    UnsafeCheckpoint,
    WeightError,
)


def _skills(fam, tmp_path, science_size=3000, coding_size=1500):
    sci = build_skill(
        fam.pre,
        finetuned=fam.science,
        output=tmp_path / "science.tvskill",
        name="science",
        version="1.0.0",
        dataset_size=science_size,
    ).path
    cod = build_skill(
        fam.pre,
        finetuned=fam.coding,
        output=tmp_path / "coding.tvskill",
        name="coding",
        version="1.0.0",
        dataset_size=coding_size,
    ).path
    return sci, cod


@pytest.mark.parametrize("fam_name", ["family", "family_bf16", "family_fp16"])
def test_installed_weights_equal_the_plain_torch_reference_bit_for_bit(fam_name, request, tmp_path):
    fam = request.getfixturevalue(fam_name)
    sci, cod = _skills(fam, tmp_path)
    model = copy_model(fam.general, tmp_path / "mymodel")
    res = install([sci, cod], into=model, base=fam.pre, general_size=10000)
    assert [(s.name, s.weight) for s in res.skills] == [("science", 0.3), ("coding", 0.15)]
    expected = reference_install(fam.general, fam.pre, [(fam.science, 0.3), (fam.coding, 0.15)])
    got = read_state_dict(model)
    assert set(got) == set(expected)
    for name, t in expected.items():
        assert got[name].dtype == t.dtype == fam.dtype
        assert torch.equal(got[name], t), name
    assert res.output_fingerprint == fingerprint(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    logits = lm(torch.tensor([[1, 5, 9, 12]])).logits
    assert torch.isfinite(logits).all()


def test_the_compiled_fused_add_installs_the_same_bits_as_the_reference(family_bf16, tmp_path, monkeypatch):
    """Task arithmetic adds each ``exact`` blob's frames straight into the float32 sum; with the compiled
    loops forced on (a real model's tensors are large enough for them) the install is still bit-exact."""
    from tvreg._format.codecs import jit

    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    fam = family_bf16
    sci, cod = _skills(fam, tmp_path)
    model = copy_model(fam.general, tmp_path / "mymodel")
    install([sci, cod], into=model, base=fam.pre, general_size=10000)
    expected = reference_install(fam.general, fam.pre, [(fam.science, 0.3), (fam.coding, 0.15)])
    got = read_state_dict(model)
    assert set(got) == set(expected)
    for name, t in expected.items():
        assert torch.equal(got[name].view(torch.int16), t.view(torch.int16)), name


def test_config_tokenizer_and_sharding_are_kept(family, tmp_path):
    sci, _ = _skills(family, tmp_path)
    model = copy_model(family.general, tmp_path / "mymodel")
    before = tree_digest(model)
    install([sci], into=model, base=family.pre, general_size=10000)
    after = tree_digest(model)
    for name in before:
        if not name.endswith(".safetensors"):
            assert after[name] == before[name], name
    shards = sorted(n for n in before if n.endswith(".safetensors"))
    assert len(shards) >= 2 and sorted(n for n in after if n.endswith(".safetensors")) == shards
    assert "tvreg.lock" in after


def test_extra_vocabulary_rows_and_tied_embeddings(family_bf16, tmp_path):
    fam = family_bf16
    sci, _ = _skills(fam, tmp_path)
    model = copy_model(fam.general, tmp_path / "mymodel")
    g_before = read_state_dict(fam.general)
    assert "lm_head.weight" not in g_before
    res = install([sci], into=model, base=fam.pre, general_size=3000)
    got = read_state_dict(model)
    emb = "model.embed_tokens.weight"
    assert got[emb].shape[0] == fam.general_vocab_size > fam.vocab_size
    assert torch.equal(got[emb][fam.vocab_size :], g_before[emb][fam.vocab_size :])
    assert not torch.equal(got[emb][: fam.vocab_size], g_before[emb][: fam.vocab_size])
    assert any(emb in note and "3 extra rows" in note for note in res.notes)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    assert torch.equal(lm.lm_head.weight, lm.model.embed_tokens.weight)


def test_weight_override_and_reinstall_are_declarative(family, tmp_path):
    sci, cod = _skills(family, tmp_path)
    one = copy_model(family.general, tmp_path / "one")
    two = copy_model(family.general, tmp_path / "two")
    a = install([sci, cod], into=one, base=family.pre, general_size=10000, weights={"coding": 0.5})
    install([sci], into=two, base=family.pre, general_size=10000)
    b = install([cod], into=two, weights={"coding": 0.5})
    assert a.output_fingerprint == b.output_fingerprint
    lock = read_lock(two)
    assert [(s.name, s.weight, s.weight_source) for s in lock.skills] == [
        ("science", 0.3, "|D|/|G| = 3000/10000"),
        ("coding", 0.5, "user"),
    ]
    again = install([], into=two)
    assert again.output_fingerprint == b.output_fingerprint


def test_install_survives_the_original_artifact_being_deleted(family, tmp_path):
    sci, cod = _skills(family, tmp_path)
    model = copy_model(family.general, tmp_path / "mymodel")
    install([sci], into=model, base=family.pre, general_size=10000)
    sci.unlink()
    install([cod], into=model)
    assert [s.name for s in read_lock(model).skills] == ["science", "coding"]


def test_lora_skill_with_weight_one_matches_peft_merge_and_unload(family, tmp_path):
    adapter = make_lora_adapter(family.pre, tmp_path / "adapter", SCIENCE_TEXTS, steps=3)
    skill = build_skill(
        family.pre, adapter=adapter, output=tmp_path / "l.tvskill", name="lora", version="1.0.0"
    )
    model = copy_model(family.pre, tmp_path / "mymodel")
    install([skill.path], into=model, base=family.pre, weights={"lora": 1.0})
    expected = merged_reference(family.pre, adapter)
    got = read_state_dict(model)
    for name, t in got.items():
        torch.testing.assert_close(t.float(), expected[name], rtol=2**-8, atol=1e-6)


# --- refusals: each names the culprit and leaves mymodel byte-identical ---------------------------


def _refuses(model, exc_type, match, fn):
    before = tree_digest(model)
    with pytest.raises(exc_type, match=match):
        fn()
    assert tree_digest(model) == before
    assert not list(model.parent.glob(f".{model.name}.tvreg-*.staging"))


def test_wrong_base_is_refused_before_reading_tensor_data(family, family_bf16, tmp_path):
    other = build_skill(
        family_bf16.pre,
        finetuned=family_bf16.science,
        output=tmp_path / "o.tvskill",
        name="other",
        version="1.0.0",
        dataset_size=10,
    ).path
    with Artifact(other) as art:
        data_start = art._file.data_start
    raw = bytearray(other.read_bytes())
    raw[data_start:] = bytes(len(raw) - data_start)  # tensor data destroyed, header intact
    other.write_bytes(bytes(raw))
    model = copy_model(family.general, tmp_path / "mymodel")
    init_environment(model, base=family.pre, general_size=100)
    _refuses(
        model,
        IncompatibleBase,
        r"skill `other@1\.0\.0` was built for base",
        lambda: install([other], into=model),
    )


def test_unknown_general_size_says_how_to_supply_it(family, tmp_path):
    sci, _ = _skills(family, tmp_path)
    model = copy_model(family.general, tmp_path / "mymodel")
    init_environment(model, base=family.pre)
    _refuses(model, WeightError, r"set \|G\| is unknown", lambda: install([sci], into=model))


def test_uninitialised_model_is_refused_with_a_hint(family, tmp_path):
    sci, _ = _skills(family, tmp_path)
    model = copy_model(family.general, tmp_path / "mymodel")
    with pytest.raises(ModelEnvironmentError) as exc:
        install([sci], into=model)
    assert "tvreg init" in exc.value.hints[0]


def test_shape_mismatch_in_general_is_refused_naming_the_tensor(family, tmp_path):
    sci, _ = _skills(family, tmp_path)
    model = copy_model(family.pre, tmp_path / "mymodel")
    init_environment(model, base=family.pre, general_size=100)
    # A general model with the same base fingerprint cannot differ, so forge the skill's manifest instead.
    forged = tmp_path / "forged.tvskill"
    _rewrite_manifest(sci, forged, lambda m: m["tensors"]["model.norm.weight"].update(shape=[65]))
    _refuses(
        model,
        (TensorMismatch, CorruptArtifact),
        r"model\.norm\.weight",
        lambda: install([forged], into=model),
    )


def test_extra_tensor_in_skill_is_refused(family, tmp_path):
    sci, _ = _skills(family, tmp_path)
    model = copy_model(family.pre, tmp_path / "mymodel")
    tensors = load_file(model / "model.safetensors")
    del tensors["model.norm.weight"]
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(TensorMismatch, match=r"lacks tensor `model\.norm\.weight`"):
        init_environment(model, base=family.pre, general_size=100)
    init_environment(model, base_fingerprint=fingerprint(family.pre), general_size=100)
    _refuses(
        model,
        TensorMismatch,
        r"changes tensor `model\.norm\.weight`, which the general model does not have",
        lambda: install([sci], into=model),
    )


def test_tampered_artifact_is_refused_naming_the_tensor(family, tmp_path):
    sci, _ = _skills(family, tmp_path)
    raw = bytearray(sci.read_bytes())
    raw[-10] ^= 0xFF
    sci.write_bytes(bytes(raw))
    model = copy_model(family.general, tmp_path / "mymodel")
    init_environment(model, base=family.pre, general_size=100)
    _refuses(model, CorruptArtifact, r"is corrupt: its data hashes to", lambda: install([sci], into=model))


def test_truncated_artifact_is_refused(family, tmp_path):
    sci, _ = _skills(family, tmp_path)
    sci.write_bytes(sci.read_bytes()[:-100])
    model = copy_model(family.general, tmp_path / "mymodel")
    init_environment(model, base=family.pre, general_size=100)
    _refuses(model, CorruptArtifact, r"truncated", lambda: install([sci], into=model))


def test_pickle_general_model_is_refused_and_never_unpickled(family, tmp_path):
    model = tmp_path / "mymodel"
    model.mkdir()
    shutil.copy(family.general / "config.json", model)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"w": Payload()}, model / "pytorch_model.bin")
    _refuses(model, UnsafeCheckpoint, r"never loads", lambda: init_environment(model, base=family.pre))
    assert not marker.exists()


def _rewrite_manifest(src, dst, edit):
    """Re-emit an artifact with an edited manifest (a forged or foreign skill)."""
    import json

    from tvreg._format.artifact import MANIFEST_KEY
    from tvreg._format.safetensors_io import SafetensorsFile, build_header

    with SafetensorsFile(src) as f:
        manifest = json.loads(f.metadata[MANIFEST_KEY])
        edit(manifest)
        names = list(f.tensors)
        head, _ = build_header(
            [(n, "U8", f.tensors[n].shape) for n in names],
            {MANIFEST_KEY: json.dumps(manifest), "format": "tvskill"},
        )
        dst.write_bytes(head + b"".join(f.read_bytes(n) for n in names))


def test_general_weights_symlinked_into_the_hf_cache_are_not_copied(family, tmp_path):
    blobs = tmp_path / "hf-cache" / "blobs"
    blobs.mkdir(parents=True)
    model = tmp_path / "mymodel"
    model.mkdir()
    for f in family.general.iterdir():
        if f.suffix == ".safetensors" or f.name.endswith(".index.json"):
            shutil.copy(f, blobs / f.name)
            (model / f.name).symlink_to(blobs / f.name)
        else:
            shutil.copy(f, model / f.name)
    blobs_before = tree_digest(blobs)
    lock = init_environment(model, base=family.pre, general_size=100)
    from tvreg._env.store import pristine_path

    kept = list(pristine_path(lock.general_fingerprint).iterdir())
    assert kept and all(p.is_symlink() and p.resolve().parent == blobs for p in kept)
    sci, _ = _skills(family, tmp_path)
    install([sci], into=model)
    assert not any(p.is_symlink() for p in model.glob("*.safetensors"))
    assert tree_digest(blobs) == blobs_before, "the HF cache must never be written to"
