"""Finding skills and moving pointers: search, pagination, yank/unyank, dist-tags (docs/reliability.md row 24)."""

from __future__ import annotations

import pytest

from tvreg._format.artifact import Artifact


@pytest.fixture
def alice(registry):
    return registry.make_user("alice")


def _base(path) -> str:
    with Artifact(path) as a:
        return a.manifest.base_fingerprint


def test_search_by_text_base_tag_and_namespace_with_pagination(registry, api, server_artifacts, alice):
    bob = registry.make_user("bob")
    base = _base(server_artifacts.science)
    other_base = "ab" * 32
    for i in range(5):
        name = f"skill-{i}"
        r = api.publish(
            alice,
            f"alice/{name}",
            "1.0.0",
            server_artifacts.make(name, "1.0.0", description=f"Math drill {i}"),
        )
        assert r.status_code == 201, r.text
    r = api.publish(
        bob,
        "bob/chem",
        "1.0.0",
        server_artifacts.make("chem", "1.0.0", description="CHEMISTRY", base_fingerprint=other_base),
    )
    assert r.status_code == 201, r.text
    r = api.publish(bob, "bob/beta-only", "0.1.0-beta.1", server_artifacts.make("beta-only", "0.1.0-beta.1"))
    assert r.status_code == 201, r.text

    with api.client() as c:
        everything = c.get("/skills").json()
        assert everything["total"] == 7 and (everything["page"], everything["per_page"]) == (1, 20)
        assert [i["name"] for i in everything["items"]] == [
            "alice/skill-0",
            "alice/skill-1",
            "alice/skill-2",
            "alice/skill-3",
            "alice/skill-4",
            "bob/beta-only",
            "bob/chem",
        ]
        assert everything["items"][0] == {
            "name": "alice/skill-0",
            "description": "Math drill 0",
            "latest": "1.0.0",
            "versions": 1,
            "bases": [base],
            "private": False,
        }
        assert everything["items"][5]["latest"] is None  # a prerelease does not move `latest`

        pages = [c.get("/skills", params={"per_page": 3, "page": p}).json() for p in (1, 2, 3, 4)]
        assert [len(p["items"]) for p in pages] == [3, 3, 1, 0]
        assert all(p["total"] == 7 for p in pages)
        assert [i["name"] for p in pages for i in p["items"]] == [i["name"] for i in everything["items"]]

        assert [i["name"] for i in c.get("/skills", params={"q": "chemistry"}).json()["items"]] == [
            "bob/chem"
        ]
        assert c.get("/skills", params={"q": "drill"}).json()["total"] == 5
        assert c.get("/skills", params={"q": "SKILL-3"}).json()["items"][0]["name"] == "alice/skill-3"
        assert c.get("/skills", params={"q": "%"}).json()["total"] == 0

        by_base = c.get("/skills", params={"base": other_base}).json()
        assert [i["name"] for i in by_base["items"]] == ["bob/chem"] and by_base["items"][0]["bases"] == [
            other_base
        ]
        assert c.get("/skills", params={"base": base}).json()["total"] == 6
        assert c.get("/skills", params={"base": "cd" * 32}).json() == {
            "items": [],
            "page": 1,
            "per_page": 20,
            "total": 0,
        }

        assert c.get("/skills", params={"tag": "latest"}).json()["total"] == 6
        assert c.get("/skills", params={"namespace": "bob"}).json()["total"] == 2
        assert c.get("/skills", params={"namespace": "bob", "q": "chem"}).json()["total"] == 1

        for bad in ({"base": "xyz"}, {"page": 0}, {"per_page": 1000}):
            r = c.get("/skills", params=bad)
            assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"


def test_yank_and_unyank_with_reason(registry, api, server_artifacts, alice):
    base = _base(server_artifacts.science)
    assert (
        api.publish(alice, "alice/science", "1.0.0", server_artifacts.make("science", "1.0.0")).status_code
        == 201
    )
    with api.client(alice) as c:
        r = c.post("/skills/alice/science/versions/1.0.0/yank", json={"reason": "diverged on held-out set"})
        assert r.status_code == 200
        assert (r.json()["yanked"], r.json()["yanked_reason"]) == (True, "diverged on held-out set")
        assert c.get("/skills/alice/science/versions/1.0.0").json()["yanked"] is True
        # still downloadable: an exact pin installs a yanked version (with a warning)
        assert c.get("/skills/alice/science/versions/1.0.0/artifact").status_code == 200
        # a base search only finds skills with a non-yanked version for that base
        assert c.get("/skills", params={"base": base}).json()["total"] == 0
        assert c.get("/skills").json()["items"][0]["bases"] == []

        r = c.delete("/skills/alice/science/versions/1.0.0/yank")
        assert r.status_code == 200 and (r.json()["yanked"], r.json()["yanked_reason"]) == (False, None)
        assert c.get("/skills", params={"base": base}).json()["total"] == 1
        assert c.post("/skills/alice/science/versions/9.9.9/yank", json={"reason": "x"}).status_code == 404

    actions = registry.sql(
        "SELECT action, target, actor FROM audit WHERE action LIKE 'version.%' ORDER BY id"
    )
    assert actions == [
        ("version.publish", "alice/science@1.0.0", "alice"),
        ("version.yank", "alice/science@1.0.0", "alice"),
        ("version.unyank", "alice/science@1.0.0", "alice"),
    ]


def test_dist_tags_follow_npm_rules(registry, api, server_artifacts, alice):
    def publish(version: str, **kw) -> None:
        r = api.publish(alice, "alice/science", version, server_artifacts.make("science", version), **kw)
        assert r.status_code == 201, r.text

    def tags() -> dict:
        with api.client() as c:
            return c.get("/skills/alice/science").json()["dist_tags"]

    publish("1.0.0")
    assert tags() == {"latest": "1.0.0"}
    publish("1.1.0-rc.1")
    assert tags() == {"latest": "1.0.0"}, "a prerelease does not move latest"
    publish("1.1.0", tag=None)
    assert tags() == {"latest": "1.0.0"}, "tag null moves nothing"
    publish("2.0.0-beta.1", tag="beta")
    assert tags() == {"beta": "2.0.0-beta.1", "latest": "1.0.0"}
    publish("1.2.0")
    assert tags() == {"beta": "2.0.0-beta.1", "latest": "1.2.0"}
    publish("1.0.1")
    assert tags() == {"beta": "2.0.0-beta.1", "latest": "1.2.0"}, "a backport does not demote latest"

    with api.client(alice) as c:
        r = c.put("/skills/alice/science/tags/stable", json={"version": "1.1.0"})
        assert r.status_code == 200
        assert r.json() == {"dist_tags": {"beta": "2.0.0-beta.1", "latest": "1.2.0", "stable": "1.1.0"}}
        r = c.put("/skills/alice/science/tags/latest", json={"version": "1.1.0"})
        assert r.json()["dist_tags"]["latest"] == "1.1.0"
        assert c.put("/skills/alice/science/tags/edge", json={"version": "7.0.0"}).status_code == 404
        assert c.put("/skills/alice/science/tags/x", json={"version": "1.0.0"}).status_code == 400  # a range (npm)
        assert c.put("/skills/alice/science/tags/1.0.0", json={"version": "1.0.0"}).status_code == 400
        assert c.put("/skills/alice/science/tags/Bad..Tag", json={"version": "1.0.0"}).status_code == 400
        r = c.delete("/skills/alice/science/tags/latest")
        assert r.status_code == 400 and "latest" in r.json()["error"]["message"]
        r = c.delete("/skills/alice/science/tags/beta")
        assert r.json() == {"dist_tags": {"latest": "1.1.0", "stable": "1.1.0"}}
        assert c.delete("/skills/alice/science/tags/beta").status_code == 404

    with api.client() as c:
        info = c.get("/skills/alice/science").json()
        assert [v["version"] for v in info["versions"]] == [
            "1.0.0",
            "1.0.1",
            "1.1.0-rc.1",
            "1.1.0",
            "1.2.0",
            "2.0.0-beta.1",
        ]
        assert c.get("/skills", params={"tag": "stable"}).json()["total"] == 1
        assert c.get("/skills", params={"tag": "beta"}).json()["total"] == 0
    audited = registry.sql("SELECT action, detail FROM audit WHERE action LIKE 'tag.%' ORDER BY id")
    assert [a for a, _ in audited] == ["tag.set", "tag.set", "tag.delete"]
