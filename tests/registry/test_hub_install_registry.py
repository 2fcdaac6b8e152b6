"""A skill published on a tvreg registry installs as ``hf://ns/skill@version`` through the registry's
own Hub endpoint and the real ``huggingface_hub`` client: the same bytes as installing by name."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import copy_model
from safetensors.torch import load_file

from registry_server.routes.hub import commit_hash
from tvreg._env.environment import init_environment
from tvreg._env.lockfile import read_lock
from tvreg._env.operations import install, sync
from tvreg._format.artifact import file_digest

pytestmark = pytest.mark.usefixtures("hf_home")


def _weights(model):
    return {k: v for p in sorted(model.glob("*.safetensors")) for k, v in load_file(p).items()}


def test_tvskill_repo_installs_from_the_registry_hub_endpoint(registry, api, server_artifacts, family, tmp_path, monkeypatch):
    token = registry.make_user("alice")
    data = server_artifacts.make("science", "1.0.0")
    assert api.publish(token, "alice/science", "1.0.0", data).status_code == 201
    local = tmp_path / "science-1.0.0.tvskill"
    local.write_bytes(data)
    monkeypatch.setenv("HF_ENDPOINT", registry.url)

    env = copy_model(family.general, tmp_path / "mymodel")
    init_environment(env, base=family.pre, general_size=275000)
    install(["hf://alice/science@1.0.0"], into=env)
    other = copy_model(family.general, tmp_path / "other")
    init_environment(other, base=family.pre, general_size=275000)
    install([str(local)], into=other)
    a, b = _weights(env), _weights(other)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    (locked,) = read_lock(env).skills
    digest = file_digest(local)
    assert locked.artifact == f"hf://alice/science@{commit_hash('alice/science', '1.0.0', digest)}"
    assert locked.digest == digest and locked.registry == registry.url

    # Another machine: empty stores and HF cache, the lock alone.
    elsewhere = tmp_path / "machine-2"
    for var, sub in (("TVREG_DATA_DIR", "data"), ("TVREG_CACHE_DIR", "cache"), ("HF_HOME", "hf-home")):
        monkeypatch.setenv(var, str(elsewhere / sub))
    copy = copy_model(family.general, elsewhere / "mymodel")
    shutil.copy(env / "tvreg.lock", copy / "tvreg.lock")
    sync(copy, locked=True, general=family.general)
    c = _weights(copy)
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_dry_run_reads_the_tvskill_manifest_by_range_and_downloads_nothing(
    registry, api, server_artifacts, family, tmp_path, monkeypatch
):
    token = registry.make_user("alice")
    data = server_artifacts.make("science", "1.0.0")
    assert api.publish(token, "alice/science", "1.0.0", data).status_code == 201
    monkeypatch.setenv("HF_ENDPOINT", registry.url)
    env = copy_model(family.general, tmp_path / "mymodel")
    init_environment(env, base=family.pre, general_size=275000)
    result = install(["hf://alice/science@1.0.0"], into=env, dry_run=True)
    (row,) = result.plan.skills
    assert (row.name, row.version, row.change, row.download) == ("hf://alice/science", "1.0.0", "add", len(data))
    assert row.weight is not None  # the default ω, from |D| in the manifest read out of the header
    assert not [p for p in (tmp_path / "hf-home").rglob("*.tvskill")]
    assert not [p for p in tmp_path.rglob("*.tvskill") if "tvreg-" in str(p)]
    assert read_lock(env).skills == ()
