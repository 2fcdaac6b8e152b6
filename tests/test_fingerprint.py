"""Fingerprints depend on tensor content only: not on sharding, file names or file order."""

from __future__ import annotations

import importlib
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from tvreg._format.fingerprint import fingerprint

fpmod = importlib.import_module("tvreg._format.fingerprint")


def test_resharding_keeps_the_fingerprint(family, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(family.pre, dtype=torch.float32)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="60KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) >= 3
    assert fingerprint(tmp_path / "sharded") == fingerprint(family.pre)


def test_tensor_order_and_file_name_do_not_matter(family, tmp_path):
    tensors = load_file(family.pre / "model.safetensors")
    reordered = dict(reversed(list(tensors.items())))
    (tmp_path / "m").mkdir()
    save_file(reordered, tmp_path / "m" / "model.safetensors")
    assert fingerprint(tmp_path / "m" / "model.safetensors") == fingerprint(family.pre)


def test_one_changed_element_changes_the_fingerprint(family, tmp_path):
    tensors = load_file(family.pre / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"][3, 5] += 1e-3
    (tmp_path / "m").mkdir()
    save_file(tensors, tmp_path / "m" / "model.safetensors")
    assert fingerprint(tmp_path / "m") != fingerprint(family.pre)


def test_dtype_is_part_of_the_fingerprint(family, tmp_path):
    tensors = load_file(family.pre / "model.safetensors")
    (tmp_path / "m").mkdir()
    save_file({k: v.to(torch.float64) for k, v in tensors.items()}, tmp_path / "m" / "model.safetensors")
    assert fingerprint(tmp_path / "m") != fingerprint(family.pre)


def test_second_call_uses_the_cache_until_the_file_changes(family, tmp_path, monkeypatch):
    shutil.copytree(family.pre, tmp_path / "m")
    first = fingerprint(tmp_path / "m")

    def no_hashing(*args, **kwargs):
        raise AssertionError("tensor bytes were hashed again")

    monkeypatch.setattr(fpmod, "_hash_tensor", no_hashing)
    assert fingerprint(tmp_path / "m") == first
    (tmp_path / "m" / "model.safetensors").touch()
    with pytest.raises(AssertionError, match="hashed again"):
        fingerprint(tmp_path / "m")


def test_hub_id_in_the_local_cache_resolves_offline(family, tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    snapshot = cache / "models--acme--tiny-pre" / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(family.pre, snapshot)
    (cache / "models--acme--tiny-pre" / "refs").mkdir()
    (cache / "models--acme--tiny-pre" / "refs" / "main").write_text(
        "0123456789abcdef0123456789abcdef01234567"
    )
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    assert fingerprint("acme/tiny-pre") == fingerprint(family.pre)
