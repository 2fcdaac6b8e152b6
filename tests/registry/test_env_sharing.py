"""Environments that teams share: identities across namespaces, portable locks, dry-run parity, no-ops.

Each test runs the real registry on loopback and the CLI in-process (issue #16).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from client_helpers import cli, login, write_project
from conftest import rewrite_manifest
from helpers import reference_install, tree_digest
from tiny_models import read_state_dict

from tvreg._build.build import build_skill
from tvreg._env.lockfile import read_lock
from tvreg._util.paths import data_dir

pytestmark = pytest.mark.parametrize("registry", ["sqlite"], indirect=True)


@pytest.fixture(scope="session")
def built(family, tmp_path_factory):
    """`science` from two teams (other fine-tunes), |D| 1000 and 3000, and one built for another base."""
    out = tmp_path_factory.mktemp("sharing")
    made = {
        "alice": build_skill(family.pre, finetuned=family.science, output=out / "a.tvskill", name="science",
                             version="1.0.0", dataset_size=1000).path,
        "bob": build_skill(family.pre, finetuned=family.coding, output=out / "b.tvskill", name="science",
                           version="1.0.0", dataset_size=3000).path,
    }  # fmt: skip
    made["wrong"] = rewrite_manifest(made["alice"], out / "wrong.tvskill", base_fingerprint="f" * 64)
    return made


def _publish(registry, user, path, tmp_path, version="1.0.0", *, new_user=True):
    if new_user:
        login(registry, user)
    project = write_project(
        tmp_path / f"p-{user}-{version}", name=f"{user}/science", version=version, artifact=str(path)
    )
    res = cli("publish", project)
    assert res.exit_code == 0, res.stderr


@pytest.fixture
def teams(registry, built, family, tmp_path):
    _publish(registry, "bob", built["bob"], tmp_path)
    _publish(registry, "alice", built["alice"], tmp_path)  # alice stays logged in
    return registry


def _model(family, tmp_path, name="mymodel"):
    model = tmp_path / name
    shutil.copytree(family.general, model)
    assert cli("init", model, "--base", family.pre, "--general-size", 10000).exit_code == 0
    return model


def _weights(model):
    return {p.name: p.read_bytes() for p in sorted(model.glob("*.safetensors"))}


def _expected(family, model):
    want = reference_install(family.general, family.pre, [(family.science, 0.1), (family.coding, 0.3)])
    got = read_state_dict(model)
    return all(torch.equal(got[k], want[k]) for k in want)


def test_two_teams_skills_with_one_short_name_live_side_by_side(teams, family, tmp_path):
    together = _model(family, tmp_path, "together")
    res = cli("install", "alice/science", "bob/science", "--into", together)
    assert res.exit_code == 0, res.stderr
    apart = _model(family, tmp_path, "apart")
    assert cli("install", "alice/science", "--into", apart).exit_code == 0
    res = cli("install", "bob/science", "--into", apart)
    assert res.exit_code == 0, res.stderr
    assert [s.id for s in read_lock(apart).skills] == ["alice/science", "bob/science"]
    assert _weights(together) == _weights(apart) and _expected(family, apart)
    listed = cli("list", "--into", apart).stdout
    assert "alice/science" in listed and "bob/science" in listed
    ids = [row["id"] for row in json.loads(cli("list", "--into", apart, "--format", "json").stdout)]
    assert ids == ["alice/science", "bob/science"]
    res = cli("uninstall", "science", "--into", apart)  # a short name two skills share
    assert res.exit_code == 1 and "`science` is ambiguous: both `alice/science` and `bob/science`" in res.stderr


def test_freeze_output_installs_back_unchanged(teams, family, tmp_path):
    first = _model(family, tmp_path, "first")
    assert cli("install", "alice/science", "bob/science", "--weight", "bob/science=0.3", "--into", first).exit_code == 0
    frozen = tmp_path / "skills.txt"
    frozen.write_text(cli("list", "--into", first, "--format", "freeze").stdout)
    second = _model(family, tmp_path, "second")
    res = cli("install", "-r", frozen, "--into", second)
    assert res.exit_code == 0, res.stderr
    assert _weights(first) == _weights(second)
    assert cli("list", "--into", second, "--format", "freeze").stdout == frozen.read_text()


def test_a_bare_name_in_two_namespaces_is_refused_listing_both(teams, family, tmp_path):
    model = _model(family, tmp_path)
    before = tree_digest(model)
    res = cli("install", "science", "--namespace", "alice", "--namespace", "bob", "--into", model)
    assert res.exit_code == 1
    assert "error: `science` is ambiguous: it exists as `alice/science` and `bob/science`." in res.stderr
    res = cli("install", "science", "--namespace", "bob", "--into", model)
    assert res.exit_code == 0, res.stderr
    assert [s.id for s in read_lock(model).skills] == ["bob/science"]
    res = cli("install", "nosuch", "--namespace", "bob", "--into", model)
    assert res.exit_code == 1 and "no skill named `nosuch`" in res.stderr and "Traceback" not in res.stderr
    assert tree_digest(model) != before


def test_a_lock_synced_under_another_home_gives_bit_identical_weights(teams, family, tmp_path, monkeypatch):
    model = _model(family, tmp_path)
    assert cli("install", "alice/science", "bob/science", "--into", model).exit_code == 0
    text = (model / "tvreg.lock").read_text()
    assert str(tmp_path) not in text and str(data_dir()) not in text
    want = _weights(model)
    first_home = tmp_path  # the writer's HOME: made unreachable below
    other = tmp_path.parent / (tmp_path.name + "-other-home")
    monkeypatch.setenv("TVREG_DATA_DIR", str(other / "data"))
    monkeypatch.setenv("TVREG_CACHE_DIR", str(other / "cache"))
    for order in ("lock-first", "init-first"):
        copy = other / order
        shutil.copytree(family.general, copy)  # a fresh copy of G
        if order == "lock-first":
            shutil.copy(model / "tvreg.lock", copy / "tvreg.lock")
        else:
            assert cli("init", copy, "--base", family.pre, "--general-size", 10000).exit_code == 0
            shutil.copy(model / "tvreg.lock", copy / "tvreg.lock")
        os.chmod(first_home, 0)
        try:
            res = cli("sync", "--locked", "--into", copy)
        finally:
            os.chmod(first_home, 0o755)
        assert res.exit_code == 0, res.stderr
        assert _weights(copy) == want
    # The merged model alone (not G) plus the lock under a third HOME: G must be named and restorable.
    monkeypatch.setenv("TVREG_DATA_DIR", str(other / "data3"))
    monkeypatch.setenv("TVREG_CACHE_DIR", str(other / "cache3"))
    merged = other / "merged"
    shutil.copytree(model, merged)
    res = cli("sync", "--locked", "--into", merged)
    gfp = read_lock(model).general_fingerprint
    assert res.exit_code == 1 and f"fingerprint {gfp} is not in this machine's store" in res.stderr
    assert f"`tvreg sync --into {merged} --general PATH_TO_G`" in res.stderr
    res = cli("sync", "--locked", "--into", merged, "--general", family.general)
    assert res.exit_code == 0, res.stderr
    assert _weights(merged) == want


def _state(model):
    return tree_digest(model), tree_digest(data_dir()) if data_dir().exists() else {}


@pytest.mark.parametrize(
    "args, family_word",
    [
        (["{wrong}"], "error: skill `science@1.0.0` was built for base"),  # wrong base, local file
        (["alice/science@9.9.9"], "error: "),  # no such version
        (["alice/science", "--weight", "sciense=0.2"], "error: `--weight sciense=...` names a skill"),
        (["./missing.tvskill"], "error: no such file: `./missing.tvskill`."),
        (["nosuch", "--namespace", "alice"], "error: no skill named `nosuch`"),
        (["alice/science@1.0.0", "{wrong}"], "error: skill `science@1.0.0` was built for base"),
    ],
    ids=["wrong-base-file", "missing-version", "typo-weight", "missing-file", "bare-unknown", "mixed"],
)
def test_dry_run_and_the_real_run_refuse_alike_and_the_dry_run_writes_nothing(
    teams, built, family, tmp_path, args, family_word
):
    model = _model(family, tmp_path)
    args = [a.format(wrong=built["wrong"]) for a in args]
    before = _state(model)
    dry = cli("install", *args, "--dry-run", "--into", model)
    assert _state(model) == before, "a dry run wrote something"
    real = cli("install", *args, "--into", model)
    assert (dry.exit_code, real.exit_code) == (1, 1)
    assert dry.stderr.startswith(family_word) and real.stderr.startswith(family_word)
    assert dry.stderr.splitlines()[0] == real.stderr.splitlines()[0]
    assert "Traceback" not in dry.stderr + real.stderr
    assert tree_digest(model) == before[0]


def test_a_dry_run_downloads_nothing_and_reports_the_bytes(teams, family, tmp_path):
    model = _model(family, tmp_path)
    before = _state(model)
    cache = tmp_path / "tvreg-cache"
    had = tree_digest(cache) if cache.exists() else {}
    res = cli("install", "alice/science", "--dry-run", "--into", model)
    assert res.exit_code == 0, res.stderr
    assert "Would download" in res.stdout and "Would download nothing" not in res.stdout
    assert _state(model) == before and (tree_digest(cache) if cache.exists() else {}) == had


def _stats(model):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(model.iterdir())}


def test_nothing_to_change_writes_nothing(teams, family, tmp_path):
    model = _model(family, tmp_path)
    assert cli("install", "alice/science", "bob/science", "--into", model).exit_code == 0
    stats, digest = _stats(model), tree_digest(model)
    for args in (
        ["install", "alice/science", "--into", model],
        ["install", "--into", model],
        ["upgrade", "--into", model],
        ["sync", "--locked", "--into", model],
        ["sync", "--into", model],
    ):
        res = cli(*args)
        assert res.exit_code == 0, res.stderr
        assert "Nothing to change" in res.stdout, (args, res.stdout)
        assert _stats(model) == stats and tree_digest(model) == digest, args


def test_upgrade_over_a_yanked_version_keeps_it_and_says_why(teams, built, family, tmp_path, registry):
    model = _model(family, tmp_path)
    assert cli("install", "alice/science@^1", "--into", model).exit_code == 0
    newer = rewrite_manifest(built["alice"], tmp_path / "a11.tvskill", version="1.1.0")
    _publish(registry, "alice", newer, tmp_path, version="1.1.0", new_user=False)
    assert cli("upgrade", "--into", model).exit_code == 0
    assert read_lock(model).skills[0].version == "1.1.0"
    assert cli("yank", "alice/science@1.1.0", "--reason", "regressed").exit_code == 0
    res = cli("upgrade", "--into", model)
    assert res.exit_code == 0, res.stderr
    assert read_lock(model).skills[0].version == "1.1.0", "upgrade must never silently downgrade"
    assert "`alice/science@1.1.0` is yanked: regressed; upgrade kept it" in res.stderr


def test_a_requires_on_another_teams_skill_never_replaces_yours(teams, built, family, tmp_path, registry):
    tool = rewrite_manifest(built["bob"], tmp_path / "tool.tvskill", name="tool", requires={"bob/science": "^1"})
    login(registry, "carol")
    project = write_project(tmp_path / "p-tool", name="carol/tool", version="1.0.0", artifact=str(tool))
    assert cli("publish", project).exit_code == 0
    model = _model(family, tmp_path)
    assert cli("install", "alice/science", "--into", model).exit_code == 0
    mine = read_lock(model).skill("alice/science")
    res = cli("install", "carol/tool", "--into", model)
    assert res.exit_code == 0, res.stderr
    lock = read_lock(model)
    assert [s.id for s in lock.skills] == ["alice/science", "carol/tool", "bob/science"]
    assert lock.skill("alice/science") == mine, "another team's requires replaced the user's skill"
