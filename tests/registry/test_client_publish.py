"""Publish a skill project, find it, install it by name: the user story end to end, on a real registry."""

from __future__ import annotations

import json
import shutil

import pytest
from client_helpers import build_artifacts, cli, login, write_project

from tvreg._env.lockfile import read_lock
from tvreg._registry import config
from tvreg._registry.client import RegistryClient
from tvreg.errors import NotFound


@pytest.fixture(scope="session")
def artifacts(family, tmp_path_factory):
    return build_artifacts(family, tmp_path_factory.mktemp("client-artifacts"))


def _model(family, tmp_path, name="mymodel"):
    model = tmp_path / name
    shutil.copytree(family.general, model)
    res = cli("init", model, "--base", family.pre, "--general-size", 275000)
    assert res.exit_code == 0, res.output
    return model


def test_publish_search_install_by_name_equals_installing_the_file(registry, family, artifacts, tmp_path):
    login(registry, "alice")
    url = config.normalize_url(registry.url)
    science = write_project(
        tmp_path / "science",
        name="alice/science",
        version="1.0.0",
        base=family.pre,
        dataset_size=61000,
        description="tiny science skill",
        build={"finetuned": str(family.science)},
    )
    res = cli("publish", science)
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("Published alice/science@1.0.0 (sha256:")
    assert res.stdout.splitlines()[0].endswith(f"to {url}, tagged latest.")
    assert (science / "dist" / "science-1.0.0.tvskill").is_file()
    coding = write_project(
        tmp_path / "coding", name="alice/coding", version="1.0.0", artifact=str(artifacts["coding"])
    )
    assert cli("publish", coding).exit_code == 0

    model = _model(family, tmp_path)
    res = cli("search", "--into", model, "--format", "json")
    assert res.exit_code == 0, res.output
    found = json.loads(res.stdout)
    assert sorted(i["name"] for i in found["items"]) == ["alice/coding", "alice/science"]
    assert {i["latest"] for i in found["items"]} == {"1.0.0"}
    other_base = "0" * 64
    assert json.loads(cli("search", "--base", other_base, "--format", "json").stdout)["items"] == []
    res = cli("search", "scien")
    assert "alice/science" in res.stdout and "alice/coding" not in res.stdout

    res = cli("install", "alice/science", "alice/coding", "--into", model)
    assert res.exit_code == 0, res.output
    by_name = read_lock(model)
    assert [(s.name, s.version, s.artifact) for s in by_name.skills] == [
        ("science", "1.0.0", "alice/science@1.0.0"),
        ("coding", "1.0.0", "alice/coding@1.0.0"),
    ]

    local = _model(family, tmp_path, "local")
    res = cli("install", science / "dist" / "science-1.0.0.tvskill", artifacts["coding"], "--into", local)
    assert res.exit_code == 0, res.output
    by_file = read_lock(local)
    assert by_name.output_fingerprint == by_file.output_fingerprint
    assert [s.digest for s in by_name.skills] == [s.digest for s in by_file.skills]
    for shard in sorted(p.name for p in local.glob("*.safetensors")):
        assert (model / shard).read_bytes() == (local / shard).read_bytes()

    res = cli("info", "alice/science")
    assert res.exit_code == 0, res.output
    assert "latest=1.0.0" in res.stdout and "tiny science skill" in res.stdout
    res = cli("info", "alice/science@1.0.0", "--format", "json")
    assert json.loads(res.stdout)["digest"] == by_name.skills[0].digest


def test_republishing_is_a_no_op_and_other_bytes_are_refused(registry, family, artifacts, tmp_path):
    login(registry, "alice")
    project = write_project(
        tmp_path / "p", name="alice/science", version="1.0.0", artifact=str(artifacts["science"])
    )
    assert cli("publish", project).exit_code == 0
    res = cli("publish", project)
    assert res.exit_code == 0, res.output
    assert "is already on" in res.stdout and "nothing to do" in res.stdout
    other = write_project(
        tmp_path / "q",
        name="alice/science",
        version="1.0.0",
        base=family.pre,
        build={"finetuned": str(family.coding)},
    )
    res = cli("publish", other)
    assert res.exit_code == 1
    lines = res.stderr.splitlines()
    assert lines[0].startswith("error: `alice/science@1.0.0` is already published with other bytes (sha256:")
    assert lines[1] == "hint: published versions are immutable: bump `version` in tvskill.toml"


def test_dry_run_checks_everything_and_uploads_nothing(registry, family, artifacts, tmp_path):
    login(registry, "alice")
    before = sorted(p for p in registry.data_dir.rglob("*") if p.is_file() and "blob" in str(p))
    project = write_project(
        tmp_path / "p", name="alice/science", version="1.0.0", artifact=str(artifacts["science"])
    )
    res = cli("publish", project, "--dry-run")
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("Would publish alice/science@1.0.0 (sha256:")
    assert "(dry run, nothing uploaded)" in res.stdout
    with RegistryClient(registry.url) as client:
        with pytest.raises(NotFound):
            client.skill("alice/science")
        assert client.search()["total"] == 0
    after = sorted(p for p in registry.data_dir.rglob("*") if p.is_file() and "blob" in str(p))
    assert after == before


def test_dry_run_still_refuses_a_namespace_you_cannot_write(registry, artifacts, tmp_path):
    login(registry, "alice")
    project = write_project(
        tmp_path / "p", name="nlp/science", version="1.0.0", artifact=str(artifacts["science"])
    )
    res = cli("publish", project, "--dry-run")
    assert res.exit_code == 1
    assert res.stderr.splitlines()[0] == "error: alice cannot publish to namespace `nlp`; yours: alice."


def test_publish_needs_a_login(registry, artifacts, tmp_path, monkeypatch):
    monkeypatch.setenv("TVREG_REGISTRY", registry.url)
    project = write_project(
        tmp_path / "p", name="alice/science", version="1.0.0", artifact=str(artifacts["science"])
    )
    res = cli("publish", project)
    url = config.normalize_url(registry.url)
    assert res.exit_code == 1
    assert res.stderr.splitlines()[0] == f"error: publishing to {url} needs a login."


def test_a_project_whose_artifact_disagrees_is_refused_before_uploading(registry, artifacts, tmp_path):
    login(registry, "alice")
    project = write_project(
        tmp_path / "p", name="alice/science", version="2.0.0", artifact=str(artifacts["science"])
    )
    res = cli("publish", project)
    assert res.exit_code == 1
    assert res.stderr.splitlines()[0] == (
        f"error: tvskill.toml of `{project}` says version '2.0.0' but the artifact "
        f"`{artifacts['science']}` has '1.0.0'."
    )


def test_yanked_version_is_skipped_by_name_and_installable_by_pin(registry, family, artifacts, tmp_path):
    login(registry, "alice")
    for key, version in (("science", "1.0.0"), ("science-1.0.1", "1.0.1")):
        project = write_project(
            tmp_path / version, name="alice/science", version=version, artifact=str(artifacts[key])
        )
        assert cli("publish", project).exit_code == 0
    res = cli("yank", "alice/science@1.0.1", "--reason", "diverged on chemistry")
    assert (res.exit_code, res.stdout) == (0, "Yanked alice/science@1.0.1 (diverged on chemistry).\n")

    model = _model(family, tmp_path)
    res = cli("install", "alice/science", "--into", model)
    assert res.exit_code == 0, res.output
    assert [(s.version, s.artifact) for s in read_lock(model).skills] == [("1.0.0", "alice/science@1.0.0")]
    assert "warning" not in res.stderr

    res = cli("install", "alice/science@1.0.1", "--into", model)
    assert res.exit_code == 0, res.output
    assert res.stderr.splitlines() == [
        "warning: `alice/science@1.0.1` is yanked (diverged on chemistry); installing it because it was "
        "pinned exactly."
    ]
    assert [s.version for s in read_lock(model).skills] == ["1.0.1"]

    assert cli("unyank", "alice/science@1.0.1").exit_code == 0
    model2 = _model(family, tmp_path, "m2")
    assert cli("install", "alice/science", "--into", model2).exit_code == 0
    assert [s.version for s in read_lock(model2).skills] == ["1.0.1"]


def test_tags_move_and_show_in_info(registry, artifacts, tmp_path):
    login(registry, "alice")
    for key, version in (("science", "1.0.0"), ("science-1.0.1", "1.0.1")):
        project = write_project(
            tmp_path / version, name="alice/science", version=version, artifact=str(artifacts[key])
        )
        assert cli("publish", project).exit_code == 0
    res = cli("tag", "add", "alice/science@1.0.0", "stable")
    assert (res.exit_code, res.stdout) == (0, "alice/science: stable → 1.0.0.\n")
    info = json.loads(cli("info", "alice/science", "--format", "json").stdout)
    assert info["dist_tags"] == {"latest": "1.0.1", "stable": "1.0.0"}
    assert cli("tag", "rm", "alice/science", "stable").exit_code == 0
    info = json.loads(cli("info", "alice/science", "--format", "json").stdout)
    assert info["dist_tags"] == {"latest": "1.0.1"}


def test_install_of_a_missing_name_is_one_sentence(registry, family, tmp_path):
    login(registry, "alice")
    model = _model(family, tmp_path)
    res = cli("install", "alice/nothing", "--into", model)
    assert res.exit_code == 1
    url = config.normalize_url(registry.url)
    assert res.stderr.splitlines() == [
        f"error: skill `alice/nothing` was not found on the registry at {url}.",
        "hint: no file `alice/nothing` exists either",
    ]


def test_install_refuses_unsafe_names_before_any_request(family, tmp_path, monkeypatch):
    monkeypatch.setenv("TVREG_REGISTRY", "http://127.0.0.1:9")  # nothing listens there
    model = _model(family, tmp_path)
    res = cli("install", "alice/..evil", "--into", model)
    assert res.exit_code == 2, res.stderr
    assert res.stderr.splitlines()[0].startswith("error: invalid skill name `..evil`"), res.stderr
    res = cli("install", "../evil", "--into", model)  # a relative path, as pip reads it: a file, never a name
    assert res.exit_code == 1, res.stderr
    assert res.stderr.splitlines()[0] == "error: no such file: `../evil`."


def test_a_read_only_token_cannot_publish(registry, artifacts, tmp_path):
    registry.make_user("alice")
    config.remember_login(registry.url, registry.token("alice", role="read"))
    project = write_project(
        tmp_path / "p", name="alice/science", version="1.0.0", artifact=str(artifacts["science"])
    )
    res = cli("publish", project)
    assert res.exit_code == 1
    lines = res.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and "write" in lines[0]
    assert lines[1] == "hint: ask an admin of the team for a higher role"
