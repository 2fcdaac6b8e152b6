"""`tvreg check` against a real registry: sketches travel with versions, tensors never do."""

from __future__ import annotations

import json
import shutil

import pytest
from client_helpers import FaultProxy, build_artifacts, cli, login, write_project

from tvreg._format.sketch import Sketch


@pytest.fixture(scope="session")
def artifacts(family, tmp_path_factory):
    return build_artifacts(family, tmp_path_factory.mktemp("check-artifacts"))


def _publish_two(registry, family, artifacts, tmp_path):
    login(registry, "alice")
    for key, name, size in (("science", "science", 61000), ("coding", "coding", 22000)):
        project = write_project(
            tmp_path / name,
            name=f"alice/{name}",
            version="1.0.0",
            dataset_size=size,
            artifact=str(artifacts[key]),
        )
        res = cli("publish", project)
        assert res.exit_code == 0, res.output
        assert "Attached its interference sketch" in res.stdout
    model = tmp_path / "mymodel"
    shutil.copytree(family.general, model)
    assert cli("init", model, "--base", family.pre, "--general-size", 275000).exit_code == 0
    return model


def test_check_downloads_sketches_only(registry, family, artifacts, tmp_path, monkeypatch):
    model = _publish_two(registry, family, artifacts, tmp_path)
    version = json.loads(cli("info", "alice/science@1.0.0", "--format", "json").stdout)
    assert version["sketch"]["size"] > 0 and "model.layers.0" in version["norm_profile"]
    monkeypatch.setenv("TVREG_CACHE_DIR", str(tmp_path / "fresh-cache"))  # nothing cached from publishing
    with FaultProxy(registry.url) as proxy:
        res = cli("check", "alice/science", "alice/coding", "--into", model, "--registry", proxy.url)
        assert res.exit_code == 0, res.output
        assert "alice/science@1.0.0 × alice/coding@1.0.0" in res.stdout
        report = json.loads(
            cli(
                "check",
                "alice/science",
                "alice/coding",
                "--into",
                model,
                "--registry",
                proxy.url,
                "--format",
                "json",
            ).stdout
        )
    assert not any(path.endswith("/artifact") for _, path, _ in proxy.requests)
    sketch_paths = {p: n for p, n in proxy.body_bytes.items() if p.endswith("/sketch")}
    assert len(sketch_paths) == 2  # fetched once each: the second check read the local sketch cache
    # Every byte that came back was skill metadata or a sketch.
    assert set(proxy.body_bytes) == {
        "/api/v1/skills/alice/science",
        "/api/v1/skills/alice/coding",
        "/api/v1/skills/alice/science/versions/1.0.0",
        "/api/v1/skills/alice/coding/versions/1.0.0",
        "/api/v1/skills/alice/science/versions/1.0.0/sketch",
        "/api/v1/skills/alice/coding/versions/1.0.0/sketch",
    }
    assert sum(sketch_paths.values()) == sum(
        len(
            Sketch.from_bytes(
                (tmp_path / "fresh-cache" / "sketches" / "sha256" / p.name).read_bytes()
            ).to_bytes()
        )
        for p in (tmp_path / "fresh-cache" / "sketches" / "sha256").iterdir()
    )
    (pair,) = report["pairs"]
    assert -1 <= pair["cosine"] <= 1 and 0 <= pair["sign_conflict"] <= 1
    assert [s["weight_source"] for s in report["skills"]] == [
        "|D|/|G| = 61000/275000",
        "|D|/|G| = 22000/275000",
    ]


def test_a_version_without_sketch_is_said_and_falls_back_to_the_artifact(
    registry, family, artifacts, tmp_path, monkeypatch
):
    model = _publish_two(registry, family, artifacts, tmp_path)
    registry.sql("DELETE FROM sketches")
    registry.sql("UPDATE versions SET sketch_digest = NULL, sketch_size = NULL")
    monkeypatch.setenv("TVREG_CACHE_DIR", str(tmp_path / "fresh-cache"))
    assert "published without a sketch" in cli("info", "alice/science@1.0.0").stdout

    res = cli("check", "alice/science", "alice/coding", "--into", model, "--no-download")
    assert res.exit_code == 1
    assert (
        "error: `alice/science@1.0.0` was published without a sketch, so checking it needs its whole artifact ("
        in res.stderr
    )
    assert "`tvreg publish` again" in res.stderr

    with FaultProxy(registry.url) as proxy:
        res = cli("check", "alice/science", "alice/coding", "--into", model, "--registry", proxy.url)
    assert res.exit_code == 0, res.output
    size = artifacts["science"].stat().st_size
    assert (
        f"`alice/science@1.0.0` was published without a sketch; downloading its artifact ({size / 1024:.1f} KiB)"
        in res.stderr
    )
    assert sum(1 for _, path, _ in proxy.requests if path.endswith("/artifact")) == 2

    # Publishing the same version again uploads just the missing sketch.
    res = cli("publish", tmp_path / "science")
    assert res.exit_code == 0, res.output
    assert "uploaded its missing interference sketch" in res.stdout
    assert registry.sql("SELECT count(*) FROM sketches") == [(1,)]


def test_install_warns_about_interfering_skills(registry, family, artifacts, tmp_path):
    model = _publish_two(registry, family, artifacts, tmp_path)
    res = cli(
        "install", "alice/science", "alice/coding", "--into", model, "--weight", "coding=0.001", "--dry-run"
    )
    assert res.exit_code == 0, res.output
    assert "may be drowned out" in res.stderr and "hint: lower ω of `science`" in res.stderr
    assert "Would install 2 skill(s)" in res.stdout
