"""Model environments against the real registry: upgrade, lock/sync by digest, offline, dry runs, yanks, bases.

The behaviour here is the client's, so one database backend is enough.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys

import pytest
from client_helpers import cli, login, write_project
from conftest import rewrite_manifest
from helpers import subprocess_env, tree_digest

from tvreg._build.build import build_skill
from tvreg._env.lockfile import read_lock
from tvreg._util.paths import cache_dir, data_dir

pytestmark = pytest.mark.parametrize("registry", ["sqlite"], indirect=True)


@pytest.fixture(scope="session")
def artifacts(family, tmp_path_factory):
    """science 1.0.0 (|D| 1000), 1.1.0 (|D| 2000); coding 1.0.0; science 9.0.0 built for another base."""
    out = tmp_path_factory.mktemp("env-artifacts")
    made = {}
    for name, version, ft, size in (
        ("science", "1.0.0", family.science, 1000),
        ("science", "1.1.0", family.science, 2000),
        ("coding", "1.0.0", family.coding, 1500),
    ):
        made[(name, version)] = build_skill(
            family.pre, finetuned=ft, output=out / f"{name}-{version}.tvskill", name=name, version=version,
            dataset_size=size,
        ).path  # fmt: skip
    made[("science", "9.0.0")] = rewrite_manifest(
        made[("science", "1.0.0")], out / "science-9.0.0.tvskill", version="9.0.0", base_fingerprint="f" * 64
    )
    return made


def _publish(registry, artifacts, tmp_path, *keys):
    for name, version in keys:
        project = write_project(
            tmp_path / f"p-{name}-{version}", name=f"alice/{name}", version=version,
            artifact=str(artifacts[(name, version)]),
        )  # fmt: skip
        res = cli("publish", project)
        assert res.exit_code == 0, res.stderr


@pytest.fixture
def env(registry, artifacts, family, tmp_path):
    login(registry, "alice")
    _publish(registry, artifacts, tmp_path, ("science", "1.0.0"), ("coding", "1.0.0"), ("science", "9.0.0"))
    model = tmp_path / "mymodel"
    shutil.copytree(family.general, model)
    assert cli("init", model, "--base", family.pre, "--general-size", 10000).exit_code == 0
    return model


def _weights(model):
    return {p.name: p.read_bytes() for p in sorted(model.glob("*.safetensors"))}


def _fresh(family, tmp_path, name, *args):
    model = tmp_path / name
    shutil.copytree(family.general, model)
    assert cli("init", model, "--base", family.pre, "--general-size", 10000).exit_code == 0
    res = cli("install", *args, "--into", model)
    assert res.exit_code == 0, res.stderr
    return model


def test_lock_records_the_registry_and_the_requirement_and_bases_are_filtered(env, registry):
    res = cli("install", "alice/science", "alice/coding@^1", "--into", env)
    assert res.exit_code == 0, res.stderr
    sci, cod = read_lock(env).skills
    assert (sci.artifact, sci.version, sci.registry, sci.requested) == (
        "alice/science@1.0.0",
        "1.0.0",
        registry.url,
        "alice/science",
    )  # 9.0.0 is higher but built for another base
    assert (cod.requested, cod.registry) == ("alice/coding@^1", registry.url)
    res = cli("install", "alice/science@9.0.0", "--into", env)
    assert res.exit_code == 1
    assert "was built for base ffffffffffff" in res.stderr or "no version of alice/science" in res.stderr


def test_upgrade_keeps_user_weights_and_equals_a_fresh_install(env, artifacts, registry, family, tmp_path):
    res = cli("install", "alice/science", "alice/coding", "--into", env, "--weight", "alice/coding=0.4")
    assert res.exit_code == 0, res.stderr
    _publish(registry, artifacts, tmp_path, ("science", "1.1.0"))
    res = cli("upgrade", "--into", env, "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert re.search(
        r"~\s+alice/science\s+1\.0\.0 → 1\.1\.0\s+0\.2\s+\|D\|/\|G\| = 2000/10000\s+\S+ KiB\s+\S+ KiB",
        res.stdout,
    )
    assert re.search(r"Would download \S+ KiB \(\S+ KiB cached already\)", res.stdout), res.stdout
    assert read_lock(env).skill("alice/science").version == "1.0.0"
    res = cli("upgrade", "--into", env)
    assert res.exit_code == 0, res.stderr
    lock = read_lock(env)
    assert [(s.registry_name, s.version, s.weight, s.weight_source) for s in lock.skills] == [
        ("alice/science", "1.1.0", 0.2, "|D|/|G| = 2000/10000"),
        ("alice/coding", "1.0.0", 0.4, "user"),
    ]
    fresh = _fresh(
        family, tmp_path, "fresh", "alice/science@1.1.0", "alice/coding", "--weight", "alice/coding=0.4"
    )
    assert _weights(env) == _weights(fresh)


def test_a_kill_mid_upgrade_leaves_the_old_weights_and_lock(env, artifacts, registry, tmp_path):
    assert cli("install", "alice/science", "--into", env).exit_code == 0
    _publish(registry, artifacts, tmp_path, ("science", "1.1.0"))
    before = tree_digest(env)
    for point in ("install:write", "install:before-swap"):
        proc = subprocess.run(
            [sys.executable, "-m", "tvreg.cli", "upgrade", "alice/science", "--into", str(env)],
            env={**subprocess_env(), "TVREG_FAULT": point},
            capture_output=True,
            timeout=120,
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert tree_digest(env) == before
    assert cli("upgrade", "alice/science", "--into", env).exit_code == 0
    assert read_lock(env).skill("alice/science").version == "1.1.0"


def test_sync_locked_on_a_fresh_machine_fetches_by_digest_and_refuses_an_edited_digest(env, tmp_path):
    assert cli("install", "alice/science", "alice/coding", "--into", env).exit_code == 0
    expected = _weights(env)
    copy = tmp_path / "copy"
    shutil.copytree(env, copy)
    shutil.rmtree(data_dir() / "artifacts")  # a fresh machine: nothing in the store or the cache
    shutil.rmtree(cache_dir() / "blobs")
    for p in copy.glob("*.safetensors"):
        p.write_bytes(b"garbage")
    res = cli("sync", "--into", copy, "--offline")
    assert res.exit_code == 1 and "locked artifact(s) are not in the local store or cache" in res.stderr
    res = cli("sync", "--into", copy, "--locked")
    assert res.exit_code == 0, res.stderr
    assert _weights(copy) == expected
    assert cli("verify", copy).exit_code == 0
    lock = json.loads((copy / "tvreg.lock").read_text())
    real = lock["skills"][0]["digest"]
    lock["skills"][0]["digest"] = "sha256:" + "0" * 64
    (copy / "tvreg.lock").write_text(json.dumps(lock))
    res = cli("sync", "--into", copy)
    assert res.exit_code == 1
    assert res.stderr.startswith(
        f"error: tvreg.lock pins `alice/science@1.0.0` to sha256:{'0' * 64}, but"
    ) and f"serves it as {real}; refusing" in res.stderr.replace("\n", " ")
    assert _weights(copy) == expected


def test_offline_install_uses_only_the_cache_and_names_what_is_missing(env, tmp_path):
    res = cli("install", "alice/science", "--into", env, "--offline")
    assert res.exit_code == 1
    assert "No solution found when resolving skills: no skill named alice/science exists" in res.stderr
    assert "hint: `--offline` searched only the local cache, which holds: nothing" in res.stderr
    assert cli("install", "alice/coding", "--into", env).exit_code == 0  # now in the cache
    assert cli("uninstall", "alice/coding", "--into", env).exit_code == 0
    res = cli("install", "alice/coding", "--into", env, "--offline")
    assert res.exit_code == 0, res.stderr
    assert read_lock(env).skill("alice/coding").version == "1.0.0"


def test_yanked_versions_are_skipped_unless_pinned(env, artifacts, registry, tmp_path):
    _publish(registry, artifacts, tmp_path, ("science", "1.1.0"))
    assert cli("yank", "alice/science@1.1.0", "--reason", "regressed").exit_code == 0
    assert cli("install", "alice/science@^1", "--into", env).exit_code == 0
    assert read_lock(env).skill("alice/science").version == "1.0.0"
    res = cli("install", "alice/science@1.1.0", "--into", env)
    assert res.exit_code == 0, res.stderr
    assert "regressed" in res.stderr and read_lock(env).skill("alice/science").version == "1.1.0"
