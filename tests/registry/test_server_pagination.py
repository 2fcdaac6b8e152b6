"""Skill info is paginated (issue 18, class 2): the API, the client that joins the pages, the web page.

A skill's history grows without bound, so ``GET /skills/{ns}/{name}`` answers one page
of versions (``page``/``per_page``, at most 100), with ``total_versions`` and a GitHub-style
``Link`` header. The client follows ``rel="next"`` until it holds them all, refusing a skill
past ``TVREG_MAX_VERSIONS``; the skill page's versions table pages the same way.
"""

from __future__ import annotations

import re

import pytest
from client_helpers import cli, login
from web_helpers import web

from tvreg._registry.client import RegistryClient
from tvreg.errors import RegistryError

VERSIONS = [f"1.0.{i}" for i in range(5)]


@pytest.fixture
def five(registry, api, server_artifacts) -> str:
    token = login(registry, "alice")
    for v in VERSIONS:
        r = api.publish(token, "alice/science", v, server_artifacts.make("science", v))
        assert r.status_code == 201, r.text
    return token


def _links(header: str) -> dict[str, str]:
    return {rel: url for url, rel in re.findall(r'<([^>]+)>; rel="(\w+)"', header)}


def test_skill_info_answers_pages_with_a_total_and_link_header(five, api):
    with api.client() as c:
        r = c.get("/skills/alice/science", params={"per_page": 2})
        body = r.json()
        assert [v["version"] for v in body["versions"]] == ["1.0.0", "1.0.1"]
        assert (body["page"], body["per_page"], body["total_versions"]) == (1, 2, 5)
        assert r.headers["x-total-count"] == "5"
        links = _links(r.headers["link"])
        assert set(links) == {"next", "last"}
        assert "page=2" in links["next"] and "per_page=2" in links["next"] and "page=3" in links["last"]
        seen = [v["version"] for v in body["versions"]]
        while "next" in links:
            r = httpx_get(c, links["next"])
            seen += [v["version"] for v in r.json()["versions"]]
            links = _links(r.headers.get("link", ""))
        assert seen == VERSIONS
        assert set(links) == {"first", "prev"}  # the last page
        whole = c.get("/skills/alice/science")
        assert [v["version"] for v in whole.json()["versions"]] == VERSIONS and "link" not in whole.headers
        assert c.get("/skills/alice/science", params={"page": 9, "per_page": 2}).json()["versions"] == []
        for bad in ({"per_page": 101}, {"per_page": 0}, {"page": 0}, {"page": 10**20}):
            r = c.get("/skills/alice/science", params=bad)
            assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", bad


def httpx_get(c, url: str):
    path = url.split("/api/v1", 1)[1]
    return c.get(path)


def test_the_client_joins_every_page_and_refuses_past_its_cap(five, registry, monkeypatch):
    with RegistryClient(registry.url, versions_per_page=2) as c:
        info = c.skill("alice/science")
    assert [v["version"] for v in info["versions"]] == VERSIONS and info["total_versions"] == 5
    with RegistryClient(registry.url, versions_per_page=2, max_versions=4) as c, pytest.raises(RegistryError) as err:
        c.skill("alice/science")
    assert "`alice/science` has 5 versions" in err.value.message and "more than the 4 tvreg reads" in err.value.message
    assert any("TVREG_MAX_VERSIONS=5" in h for h in err.value.hints)
    monkeypatch.setenv("TVREG_MAX_VERSIONS", "3")
    result = cli("info", "alice/science", "--registry", registry.url)
    assert result.exit_code != 0 and "Traceback" not in result.stderr
    assert "has 5 versions" in result.stderr and "hint:" in result.stderr and "TVREG_MAX_VERSIONS=5" in result.stderr
    monkeypatch.setenv("TVREG_MAX_VERSIONS", "5")
    assert cli("info", "alice/science", "--registry", registry.url).exit_code == 0


def test_the_skill_page_pages_its_versions_table(five, registry):
    with web(registry) as c:
        first = c.get("/alice/science", params={"per_page": 2}).text
        assert re.findall(r'class="version-link" href="/alice/science/([^"]+)"', first) == ["1.0.4", "1.0.3"]
        assert "page 1 of 3 (5 versions)" in first and 'id="versions-older" href="?page=2&amp;per_page=2"' in first
        last = c.get("/alice/science", params={"per_page": 2, "page": 3}).text
        assert re.findall(r'class="version-link" href="/alice/science/([^"]+)"', last) == ["1.0.0"]
        assert 'id="versions-newer"' in last and 'id="versions-older"' not in last
        assert 'id="shown-version">1.0.4<' in last  # the facts are of `latest`, whatever the page
        assert c.get("/alice/science", params={"per_page": 1000}).status_code == 400
