"""Names, versions and tags against a live registry, on SQLite and PostgreSQL.

docs/reliability.md rows 34 (build-metadata twins), 37 (control characters in names and
tags) and 44 (tags and ranges exactly as npm): the server and the client apply the same
rules (tvreg/_names.py), so every tag the server accepts installs, and a tag that parses
as a version or range is refused by both before anything changes.
"""

from __future__ import annotations

import shutil

import httpx
import pytest
from client_helpers import cli, login, write_project

from tvreg._env.lockfile import read_lock
from tvreg._registry.client import RegistryClient
from tvreg.errors import InvalidName

TAGS = ["beta", "1x", "stable-2", "1.2.3.4", "x-beta"]
RANGE_LIKE = {"2": "2.0.0", "v2": "2.0.0", "1.x": "1.1.0", "x": "2.0.0", "1.1.0": "1.1.0", "1.0": "1.0.0"}


@pytest.fixture
def science(registry, api, server_artifacts):
    """alice/science 1.0.0, 1.1.0 and 2.0.0 (latest), published over HTTP."""
    token = login(registry, "alice")
    for version in ("1.0.0", "1.1.0", "2.0.0"):
        r = api.publish(token, "alice/science", version, server_artifacts.make("science", version))
        assert r.status_code == 201, r.text
    return token


def _model(family, tmp_path):
    model = tmp_path / "mymodel"
    shutil.copytree(family.general, model)
    assert cli("init", model, "--base", family.pre, "--general-size", 10000).exit_code == 0
    return model


def _installed(model) -> set[str]:
    return {s.artifact for s in read_lock(model).skills}


def test_every_tag_the_server_accepts_installs_and_range_like_tags_are_refused_on_both_sides(
    registry, api, science, family, tmp_path
):
    model = _model(family, tmp_path)
    with api.client(science) as c:
        for tag in TAGS:
            r = c.put(f"/skills/alice/science/tags/{tag}", json={"version": "1.0.0"})
            assert r.status_code == 200, (tag, r.text)
        for tag in RANGE_LIKE:
            r = c.put(f"/skills/alice/science/tags/{tag}", json={"version": "1.0.0"})
            assert r.status_code == 400, (tag, r.text)
            assert f"invalid tag `{tag}`: it parses as the version range" in r.json()["error"]["message"]
        assert set(c.get("/skills/alice/science").json()["dist_tags"]) == {"latest", *TAGS}

    for tag in TAGS:  # the tag, not a range: 1.0.0 although latest is 2.0.0
        res = cli("install", f"alice/science@{tag}", "--into", model)
        assert res.exit_code == 0, (tag, res.stderr)
        assert _installed(model) == {"alice/science@1.0.0"}, tag
        assert cli("uninstall", "alice/science", "--into", model).exit_code == 0

    for tag, version in RANGE_LIKE.items():  # the client refuses before any request ...
        res = cli("tag", "add", "alice/science@1.0.0", tag)
        assert res.exit_code == 2, (tag, res.stdout, res.stderr)
        assert f"invalid tag `{tag}`" in res.stderr
        with RegistryClient(registry.url, science) as client, pytest.raises(InvalidName):
            client.set_tag("alice/science", tag, "1.0.0")
        # ... and `skill@<that string>` keeps its one meaning: the range.
        assert cli("install", f"alice/science@{tag}", "--into", model).exit_code == 0
        assert _installed(model) == {f"alice/science@{version}"}, tag
        assert cli("uninstall", "alice/science", "--into", model).exit_code == 0
    with api.client(science) as c:
        assert set(c.get("/skills/alice/science").json()["dist_tags"]) == {"latest", *TAGS}


@pytest.mark.parametrize(
    ("path", "body", "culprit"),
    [
        ("/skills/alice/science%0A/versions/1.0.0", None, "skill name `science\\n`"),
        ("/skills/alice/sci%1Bence/versions/1.0.0", None, "skill name `sci\\x1bence`"),
        ("/skills/alice%0A/science/versions/1.0.0", None, "namespace `alice\\n`"),
        ("/skills/alice/science/versions/1.0.0%0A", None, "version `1.0.0\\n`"),
        ("/skills/alice/science/versions/1.0.0", "latest\n", "tag `latest\\n`"),
        ("/skills/alice/science/versions/1.0.0", "v2", "tag `v2`"),
    ],
)
def test_control_characters_and_range_like_tags_are_refused_at_publish(
    registry, api, server_artifacts, path, body, culprit
):
    token = registry.make_user("alice")
    upload_id = api.upload(token, server_artifacts.make("science", "1.0.0"))
    with api.client(token) as c:
        r = c.put(path, json={"upload_id": upload_id, "tag": body or "latest"})
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert culprit in message and "\n" not in message and "\x1b" not in message
        assert c.get("/skills/alice/science").status_code == 404
        r = c.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload_id})
        assert r.status_code == 201, "the refused request consumed nothing"


def test_a_tag_with_a_control_character_is_refused(registry, api, science):
    with api.client(science) as c:
        for tag in ("latest%0A", "beta%0D", "be%00ta"):
            r = c.put(f"/skills/alice/science/tags/{tag}", json={"version": "1.0.0"})
            assert r.status_code == 400 and "control character" in r.json()["error"]["message"], r.text
        assert c.get("/skills/alice/science").json()["dist_tags"] == {"latest": "2.0.0"}


@pytest.mark.parametrize(
    ("first", "twin"), [("1.0.0", "1.0.0+evil"), ("1.0.0+a", "1.0.0"), ("2.0.0-rc.1+x", "2.0.0-rc.1")]
)
def test_build_metadata_twins_are_the_same_version(registry, api, server_artifacts, first, twin):
    token = registry.make_user("alice")
    original = server_artifacts.make("science", first)
    assert api.publish(token, "alice/science", first, original).status_code == 201
    r = api.publish(token, "alice/science", twin, server_artifacts.make("science", twin))
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "conflict"
    assert f"`alice/science@{twin}` has the same precedence as the published `{first}`" in error["message"]
    with api.client() as c:
        info = c.get("/skills/alice/science").json()
        assert [v["version"] for v in info["versions"]] == [first]
        assert c.get(f"/skills/alice/science/versions/{twin}").status_code == 404
    # the original's retry is still the idempotent 200 of docs/reliability.md row 1
    assert api.publish(token, "alice/science", first, original).status_code == 200


def test_a_version_past_the_length_limit_is_a_400_before_the_database(
    registry, api, server_artifacts, science
):
    long = "1.0.0-" + "a" * 200  # 206 characters: a 500 from PostgreSQL's varchar(128) before
    upload_id = api.upload(science, server_artifacts.make("science", "3.0.0"))
    with api.client(science) as c:
        r = c.put(f"/skills/alice/science/versions/{long}", json={"upload_id": upload_id})
        assert r.status_code == 400, r.text
        assert "more than the limit of 100" in r.json()["error"]["message"]
        r = c.put("/skills/alice/science/tags/beta", json={"version": long})
        assert r.status_code == 400, r.text
        assert [v["version"] for v in c.get("/skills/alice/science").json()["versions"]] == [
            "1.0.0",
            "1.1.0",
            "2.0.0",
        ]
        long_name = "s" * 101
        r = c.put(f"/skills/alice/{long_name}/versions/3.0.0", json={"upload_id": upload_id})
        assert r.status_code == 400 and "more than the limit of 100" in r.json()["error"]["message"], r.text


def test_publish_with_a_range_like_tag_is_refused_before_any_upload(registry, server_artifacts, tmp_path):
    login(registry, "alice")
    artifact = tmp_path / "science.tvskill"
    artifact.write_bytes(server_artifacts.make("science", "1.0.0"))
    project = write_project(tmp_path / "proj", name="alice/science", version="1.0.0", artifact=str(artifact))
    res = cli("publish", project, "--tag", "v2")
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert res.stderr.startswith("error: invalid tag `v2`: it parses as the version range `>=2.0.0 <3.0.0-0`")
    with httpx.Client(base_url=registry.url + "/api/v1") as c:
        assert c.get("/skills/alice/science").status_code == 404, "nothing was published"
    assert cli("publish", project, "--tag", "beta").exit_code == 0
