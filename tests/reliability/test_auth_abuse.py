"""Hostile callers: token brute force, tokens in logs, another team's admin, private-namespace probes.

docs/reliability.md rows 27 (wrong-scope token), 28 (private namespace probe) and 29 (brute force).
Expired, revoked and read-only tokens and the identical 404 for private namespaces are
tested in tests/registry/test_server_auth.py; here are the cases across teams and the
throttling of failed tokens.
"""

from __future__ import annotations

import secrets

import httpx
import pytest


def _bad_token() -> str:
    return "tvr_" + secrets.token_urlsafe(32)


@pytest.mark.parametrize("registry", ["sqlite"], indirect=True)
@pytest.mark.registry_options(args=["--auth-failure-limit", "5"])
def test_guessing_tokens_is_throttled_with_429_and_retry_after(registry, api):
    good = registry.make_user("alice")
    for _ in range(5):
        with api.client(_bad_token()) as c:
            assert c.get("/whoami").status_code == 401
    with api.client(_bad_token()) as c:
        r = c.get("/whoami")
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "too_many_requests"
    assert "too many failed authentications from 127.0.0.1" in r.json()["error"]["message"]
    assert 0 < int(r.headers["retry-after"]) <= 60
    # A valid token behind the throttled address still passes (a NAT, a proxy, a CI host:
    # row 41); anonymous reads go on.
    with api.client(good) as c:
        assert c.get("/whoami").status_code == 200
    with api.client() as c:
        assert c.get("/skills").status_code == 200


@pytest.mark.parametrize("registry", ["sqlite"], indirect=True)
def test_a_hundred_bad_tokens_meet_the_default_limit(registry, api):
    statuses = []
    for _ in range(100):
        with api.client(_bad_token()) as c:
            statuses.append(c.get("/skills").status_code)
    assert statuses[:20] == [401] * 20
    assert set(statuses[20:]) == {429}


def _whoami(url: str, token: str, forwarded_for: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    return httpx.get(url + "/api/v1/whoami", headers=headers, timeout=60).status_code


@pytest.mark.parametrize("registry", ["postgresql"], indirect=True)
@pytest.mark.registry_options(args=["--auth-failure-limit", "4"])
def test_the_failed_token_limit_holds_across_replicas(registry):
    good = registry.make_user("alice")
    other = registry.replica()
    assert [_whoami((registry.url, other.url)[i % 2], _bad_token()) for i in range(4)] == [401] * 4
    assert _whoami(other.url, _bad_token()) == 429
    assert _whoami(registry.url, _bad_token()) == 429
    assert _whoami(registry.url, good) == 200


@pytest.mark.parametrize("registry", ["sqlite"], indirect=True)
@pytest.mark.registry_options(args=["--auth-failure-limit", "3"])
def test_x_forwarded_for_counts_only_from_a_trusted_proxy(registry, make_registry):
    good = registry.make_user("alice")
    # Untrusted peer (the default trusts none): a new X-Forwarded-For per guess changes nothing.
    statuses = [_whoami(registry.url, _bad_token(), f"203.0.113.{i}") for i in range(4)]
    assert statuses == [401, 401, 401, 429]
    assert _whoami(registry.url, _bad_token(), "198.51.100.7") == 429

    proxied = make_registry(
        registry.database_url,
        data_dir=registry.data_dir,
        extra_args=("--auth-failure-limit", "3", "--forwarded-allow-ips", "127.0.0.1"),
    )
    proxied.start()
    assert [_whoami(proxied.url, _bad_token(), "203.0.113.50") for _ in range(4)] == [401, 401, 401, 429]
    # Behind a trusted proxy each client is counted apart, and loopback itself is still throttled.
    assert _whoami(proxied.url, good, "203.0.113.51") == 200
    assert _whoami(proxied.url, _bad_token()) == 429


@pytest.mark.parametrize("registry", ["sqlite"], indirect=True)
@pytest.mark.registry_options(args=["--log-level", "debug"])
def test_tokens_never_reach_the_server_log(registry, api, server_artifacts):
    token = registry.make_user("alice")
    bad = _bad_token()
    assert (
        api.publish(token, "alice/science", "1.0.0", server_artifacts.make("science", "1.0.0")).status_code
        == 201
    )
    with api.client(token) as c:
        c.get("/whoami")
        c.get("/skills/alice/science/versions/1.0.0/artifact")
        c.post("/skills/alice/science/versions/1.0.0/yank", json={"reason": "test"})
    with api.client(bad) as c:
        assert c.get("/whoami").status_code == 401
    log = registry.log()
    assert "GET /api/v1/whoami" in log  # the access log is on, and still holds no token
    assert token not in log and bad not in log
    assert token[4:20] not in log and bad[4:20] not in log
    stored = registry.sql("SELECT token_hash FROM tokens")
    assert token not in str(stored)


def test_team_a_admin_cannot_yank_tag_or_publish_team_b_skills(registry, api, server_artifacts):
    registry.make_user("carol")
    registry.make_user("dave")
    registry.make_team("team-a")
    registry.make_team("team-b", private=True)
    registry.add_member("team-a", "carol", "admin")
    registry.add_member("team-b", "dave", "admin")
    carol = registry.token("carol")
    dave = registry.token("dave")
    r = api.publish(dave, "team-b/science", "1.0.0", server_artifacts.make("science", "1.0.0"))
    assert r.status_code == 201, r.text
    missing = {"code": "not_found", "message": "skill `team-b/science` was not found."}
    with api.client(carol) as c:
        for r in (
            c.post("/skills/team-b/science/versions/1.0.0/yank", json={"reason": "sabotage"}),
            c.put("/skills/team-b/science/tags/stable", json={"version": "1.0.0"}),
            c.get("/skills/team-b/science"),
            c.get("/skills/team-b/science/versions/1.0.0/artifact"),
        ):
            assert (r.status_code, r.json()["error"]) == (404, missing), r.text
        upload = api.upload(carol, server_artifacts.make("science", "2.0.0"))
        r = c.put("/skills/team-b/science/versions/2.0.0", json={"upload_id": upload})
        assert r.status_code == 404, r.text
    with api.client() as c:  # anonymous: the same 404
        assert c.get("/skills/team-b/science").json()["error"] == missing
    with api.client(dave) as c:
        info = c.get("/skills/team-b/science").json()
        assert [v["version"] for v in info["versions"]] == ["1.0.0"]
        assert c.get("/skills/team-b/science/versions/1.0.0").json()["yanked"] is False
