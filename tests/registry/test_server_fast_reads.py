"""Cached API reads answered below the framework (registry_server.fastread, issue 24).

A repeated search or info read is served from the read cache by a middleware in front of
the router. These tests pin that it is taken (``X-Tvreg-Cache: hit``), that it answers
the same bytes and headers the application does, and that it never serves what the
application would not: nothing stale after a write, nothing private to a caller who
cannot see it, nothing to a revoked or bad token.
"""

from __future__ import annotations

import pytest

HIT = "x-tvreg-cache"
READS = (
    "/skills?q=science",
    "/skills/alice/science",
    "/skills/alice/science?per_page=1",
    "/skills/alice/science/versions/1.0.0",
)


@pytest.fixture
def published(registry, api, server_artifacts):
    token = registry.make_user("alice")
    for version in ("1.0.0", "1.1.0"):
        artifact = server_artifacts.make("science", version)
        assert api.publish(token, "alice/science", version, artifact).status_code == 201
    return token


@pytest.mark.parametrize("path", READS)
def test_a_repeated_read_is_answered_from_the_cache_with_the_same_bytes(registry, api, published, path):
    with api.client() as c:
        first = c.get(path)
        second = c.get(path)
    assert first.status_code == second.status_code == 200
    assert HIT not in first.headers and second.headers[HIT] == "hit"
    assert second.content == first.content
    # The same headers, in the same order, as the whole stack sent (security headers included),
    # apart from uvicorn's timing header and the hit mark.
    assert _headers(second) == _headers(first)
    assert first.headers["x-content-type-options"] == "nosniff" and "content-security-policy" in first.headers


def _headers(r) -> list[tuple[bytes, bytes]]:
    return [(k.lower(), v) for k, v in r.headers.raw if k.lower() not in (b"date", HIT.encode())]


def test_a_write_is_seen_by_the_very_next_read(registry, api, server_artifacts, published):
    with api.client() as c:
        for _ in range(2):
            before = c.get("/skills/alice/science")
        assert before.headers[HIT] == "hit" and before.json()["total_versions"] == 2
        artifact = server_artifacts.make("science", "1.2.0")
        assert api.publish(published, "alice/science", "1.2.0", artifact).status_code == 201
        after = c.get("/skills/alice/science")
        assert HIT not in after.headers and after.json()["total_versions"] == 3
        for _ in range(2):
            assert c.get("/skills/alice/science/versions/1.2.0").json()["yanked"] is False
    with api.client(published) as w:
        assert w.post("/skills/alice/science/versions/1.2.0/yank", json={"reason": "bad"}).status_code == 200
    with api.client() as c:
        assert c.get("/skills/alice/science/versions/1.2.0").json()["yanked"] is True


def test_a_private_answer_is_never_served_to_someone_who_cannot_see_it(registry, api, server_artifacts):
    registry.make_team("lab", private=True)
    token = registry.make_user("carol")
    registry.add_member("lab", "carol", "write")
    assert api.publish(token, "lab/secret", "1.0.0", server_artifacts.make("secret", "1.0.0")).status_code == 201
    outsider = registry.make_user("mallory")
    with api.client(token) as c:
        for _ in range(2):
            seen = c.get("/skills?q=secret")
        assert seen.headers[HIT] == "hit" and [s["name"] for s in seen.json()["items"]] == ["lab/secret"]
        for _ in range(2):
            info = c.get("/skills/lab/secret")
        assert info.status_code == 200 and info.headers[HIT] == "hit"
    for who in (None, outsider):
        with api.client(who) as c:
            for _ in range(2):
                assert c.get("/skills?q=secret").json()["items"] == []
                assert c.get("/skills/lab/secret").status_code == 404


def test_a_revoked_or_bad_token_is_refused_even_after_cached_reads(registry, api, published):
    reader = registry.token("alice", name="laptop")
    with api.client(reader) as c:
        for _ in range(2):
            assert c.get("/skills/alice/science").headers.get(HIT) in (None, "hit")
        assert c.get("/skills/alice/science").headers[HIT] == "hit"
    registry.admin("revoke-token", "alice", "--name", "laptop")
    with api.client() as c:  # the anonymous answer to the same URL is in the cache
        for _ in range(2):
            anonymous = c.get("/skills/alice/science")
        assert anonymous.headers[HIT] == "hit"
    with api.client(reader) as c:
        r = c.get("/skills/alice/science")
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    with api.client("tvr_" + "x" * 43) as c:
        assert c.get("/skills/alice/science").status_code == 401


def test_the_same_read_arriving_while_its_answer_is_built_waits_for_it(registry, api, published):
    """A cold cache (a fresh replica, or every replica after a write) builds each answer once, not once per client."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    clients = 8
    barrier = threading.Barrier(clients)

    def read(_: int):
        with api.client() as c:
            c.get("/health")  # connected before the barrier, so the reads arrive together
            barrier.wait()
            return c.get("/skills?q=science&per_page=3")

    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(read, range(clients)))
    assert [r.status_code for r in answers] == [200] * clients
    assert len({r.content for r in answers}) == 1
    assert sum(HIT not in r.headers for r in answers) == 1  # one built it; the others were served its bytes
