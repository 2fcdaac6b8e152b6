"""Install by requirement against the real registry: ranges, tags, dependencies, pins, explained failures."""

from __future__ import annotations

import shutil

import pytest
from client_helpers import cli, login, write_project

from tvreg._build.build import build_skill
from tvreg._env.lockfile import read_lock


@pytest.fixture(scope="session")
def versions(family, tmp_path_factory):
    """science 1.0.0, 1.1.0, 2.0.0; coding 1.0.0 (requires science ^1) and 2.0.0 (requires science >=2)."""
    out = tmp_path_factory.mktemp("resolve-artifacts")
    made = {}
    for name, version, ft, requires in (
        ("science", "1.0.0", family.science, None),
        ("science", "1.1.0", family.science, None),
        ("science", "2.0.0", family.science, None),
        ("coding", "1.0.0", family.coding, {"alice/science": "^1"}),
        ("coding", "2.0.0", family.coding, {"alice/science": ">=2"}),
    ):
        made[(name, version)] = build_skill(
            family.pre, finetuned=ft, output=out / f"{name}-{version}.tvskill", name=name, version=version,
            dataset_size=1000, requires=requires,
        ).path  # fmt: skip
    return made


@pytest.fixture
def published(registry, versions, tmp_path):
    login(registry, "alice")
    for (name, version), path in versions.items():
        project = write_project(
            tmp_path / f"{name}-{version}", name=f"alice/{name}", version=version, artifact=str(path)
        )
        assert cli("publish", project).exit_code == 0
    return registry


def _model(family, tmp_path):
    model = tmp_path / "mymodel"
    shutil.copytree(family.general, model)
    assert cli("init", model, "--base", family.pre, "--general-size", 10000).exit_code == 0
    return model


def _installed(model):
    return {s.artifact for s in read_lock(model).skills}


def test_ranges_and_tags_pick_the_right_version(published, family, tmp_path):
    model = _model(family, tmp_path)
    res = cli("install", "alice/science@~1.0", "--into", model)
    assert res.exit_code == 0, res.stderr
    assert _installed(model) == {"alice/science@1.0.0"}
    assert cli("install", "alice/science@latest", "--into", model).exit_code == 0
    assert _installed(model) == {"alice/science@2.0.0"}


def test_dependencies_are_resolved_and_installed(published, family, tmp_path):
    model = _model(family, tmp_path)
    res = cli("install", "alice/coding@^1", "--into", model)
    assert res.exit_code == 0, res.stderr
    assert _installed(model) == {"alice/coding@1.0.0", "alice/science@1.1.0"}


def test_a_pin_and_a_dependency_that_disagree_are_explained(published, family, tmp_path):
    model = _model(family, tmp_path)
    assert cli("install", "alice/science@1.1.0", "--into", model).exit_code == 0
    res = cli("install", "alice/coding@2.0.0", "--into", model)
    assert res.exit_code == 1
    assert res.stderr.splitlines()[0] == (
        "error: No solution found when resolving skills: because alice/coding 2.0.0 requires alice/science>=2 "
        "and mymodel pins alice/science 1.1.0, no version of alice/science fits (available: 1.0.0, 1.1.0, 2.0.0)."
    )
    assert _installed(model) == {"alice/science@1.1.0"}


def test_uninstall_refuses_to_break_a_dependency_and_removes_orphans(published, family, tmp_path):
    model = _model(family, tmp_path)
    assert cli("install", "alice/coding@^1", "--into", model).exit_code == 0
    res = cli("uninstall", "alice/science", "--into", model)
    assert res.exit_code == 1
    assert res.stderr.splitlines()[0] == (
        "error: cannot uninstall `alice/science`: `alice/coding@1.0.0` requires it."
    )
    res = cli("uninstall", "alice/coding", "--into", model)
    assert res.exit_code == 0, res.stderr
    assert "removing `alice/science@1.1.0`: only the uninstalled skills required it." in res.stderr
    assert (
        read_lock(model).skills == ()
        and read_lock(model).output_fingerprint == read_lock(model).general_fingerprint
    )
