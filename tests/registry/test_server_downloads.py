"""Artifact downloads are counted (issue 19: "most installed"), in batches, never per request.

A live server counts each artifact GET that starts at byte 0 (a resumed ``Range``, a header read of at most 1 MiB and a
``HEAD`` are not new downloads) in memory and adds the counts to the database every
``TVREG_DOWNLOAD_FLUSH`` seconds, one ``UPDATE`` per version, and at a clean shutdown.
The counts show in the API, on the skill page and in the front page's "Most installed".
"""

from __future__ import annotations

import re

import httpx
import pytest
from helpers import wait_until
from web_helpers import web


def test_downloads_are_counted_in_batches_and_shown(registry, api, server_artifacts):
    registry.stop()
    registry.start(env={"TVREG_DOWNLOAD_FLUSH": "0.2"})
    token = registry.make_user("alice")
    for skill in ("science", "coding"):
        assert api.publish(token, f"alice/{skill}", "1.0.0", server_artifacts.make(skill, "1.0.0")).status_code == 201
    science = "/skills/alice/science/versions/1.0.0/artifact"
    with api.client() as c:
        for _ in range(3):
            assert c.get(science).status_code == 200
        assert c.head(science).status_code == 200  # not a download
        assert c.get(science, headers={"Range": "bytes=10-"}).status_code == 206  # a resumed one
        assert c.get(science, headers={"Range": "bytes=0-65535"}).status_code == 206  # a header probe
        assert c.get("/skills/alice/coding/versions/1.0.0/artifact").status_code == 200

        def counts() -> tuple:
            info = c.get("/skills/alice/science").json()
            return info["downloads"], info["versions"][0]["downloads"], c.get("/skills/alice/coding").json()["downloads"]

        wait_until(lambda: counts() == (3, 3, 1), "the download counts to reach (3, 3, 1)")
    with web(registry) as c:
        front = c.get("/").text
        most = front[front.index('id="most-installed"') :]
        assert re.findall(r'href="/alice/(\w+)"', most)[:2] == ["science", "coding"]
        assert "3 downloads" in most and "1 downloads" in most
        assert re.search(r'id="downloads">3<', c.get("/alice/science").text)

    registry.stop()
    registry.start(env={"TVREG_DOWNLOAD_FLUSH": "3600"})
    with api.client() as c:
        for _ in range(2):
            assert c.get(science).status_code == 200
    # Batched: nothing was written per request ...
    assert registry.sql("SELECT downloads FROM versions ORDER BY id") == [(3,), (1,)]
    registry.stop()  # ... and a clean shutdown loses no count.
    assert registry.sql("SELECT downloads FROM versions ORDER BY id") == [(5,), (1,)]


@pytest.mark.parametrize("registry", ["postgresql"], indirect=True)
def test_replicas_add_their_counts(registry, api, server_artifacts):
    """Each replica adds what it counted (``downloads + n``), so none overwrites another's counts."""
    registry.stop()
    registry.start(env={"TVREG_DOWNLOAD_FLUSH": "0.2"})
    other = registry.replica(env={"TVREG_DOWNLOAD_FLUSH": "0.2"})
    token = registry.make_user("alice")
    assert api.publish(token, "alice/science", "1.0.0", server_artifacts.make("science", "1.0.0")).status_code == 201
    path = "/api/v1/skills/alice/science/versions/1.0.0/artifact"
    for url in (registry.url, other.url):
        with httpx.Client(base_url=url, timeout=60) as c:
            for _ in range(3):
                assert c.get(path).status_code == 200
    with httpx.Client(base_url=registry.url, timeout=60) as c:
        wait_until(
            lambda: c.get("/api/v1/skills/alice/science").json()["downloads"] == 6, "the download count to reach 6"
        )
