"""Quotas: open upload sessions per user (with expiry) and storage per namespace.

Issue #18, class 6 (docs/reliability.md row 35): one user opened 1,000 upload sessions
of 10 GiB each in 6 s, and nothing bounded a namespace's storage. A live server on
both backends: the session past the limit is 429 with ``Retry-After``, an expired
session stops counting and loses its bytes, a publish past the namespace quota is 507
``quota_exceeded`` with nothing visible, and the server's peak RSS stays flat.
"""

from __future__ import annotations

import time

import pytest
from serverprobe import MIB, peak_rss, reset_peak


def _create(c, size: int = 10 * 1024**3) -> object:
    return c.post("/uploads", json={"size": size, "digest": "sha256:" + "0" * 64})


@pytest.mark.registry_options(args=["--max-open-uploads", "4", "--upload-expiry", "2"])
def test_open_upload_sessions_are_limited_per_user_and_expire(registry, api):
    alice, bob = registry.make_user("alice"), registry.make_user("bob")
    start = reset_peak(registry.proc.pid)
    with api.client(alice) as c:
        ids = [_create(c).json()["id"] for _ in range(4)]
        refused = [_create(c) for _ in range(50)]
        assert {r.status_code for r in refused} == {429}
        error = refused[0].json()["error"]
        assert error["code"] == "too_many_requests" and "4 open uploads" in error["message"]
        assert int(refused[0].headers["retry-after"]) >= 1
        assert c.delete(f"/uploads/{ids[0]}").status_code == 204
        assert _create(c).status_code == 201  # a deleted session frees its place
    with api.client(bob) as c:
        assert _create(c).status_code == 201  # the limit is per user
    assert registry.sql("SELECT count(*) FROM uploads WHERE state = 'open'") == [(5,)]
    time.sleep(2.5)  # deliberately waits out the clock: `--upload-expiry 2` (seconds idle)
    with api.client(alice) as c:
        assert _create(c).status_code == 201  # the idle ones expired
        assert c.get(f"/uploads/{ids[1]}").json()["state"] == "failed"
    assert len(registry.staged_files()) == 2  # bob's and alice's newest; expired bytes dropped
    assert peak_rss(registry.proc.pid) - start < 32 * MIB


def test_a_publish_past_the_namespace_quota_is_507_and_nothing_is_visible(registry, api, server_artifacts):
    first = server_artifacts.make("science", "1.0.0")
    registry.stop()
    registry.extra_args = ("--namespace-quota", str(len(first) + len(first) // 2))
    registry.start()
    token = registry.make_user("alice")
    assert api.publish(token, "alice/science", "1.0.0", first).status_code == 201
    second = server_artifacts.make("science", "1.0.1")
    upload_id = api.upload(token, second)
    start = reset_peak(registry.proc.pid)
    with api.client(token) as c:
        r = c.put("/skills/alice/science/versions/1.0.1", json={"upload_id": upload_id})
        assert r.status_code == 507, r.text
        error = r.json()["error"]
        assert error["code"] == "quota_exceeded" and error["used"] == len(first)
        assert "retry-after" not in r.headers
        assert [v["version"] for v in c.get("/skills/alice/science").json()["versions"]] == ["1.0.0"]
        assert c.get(f"/uploads/{upload_id}").json()["state"] == "open"  # kept for a retry
    assert registry.sql("SELECT count(*) FROM versions") == [(1,)]
    assert len(registry.blob_files()) == 1
    assert peak_rss(registry.proc.pid) - start < 32 * MIB


def test_admin_sets_and_shows_quotas_effective_at_once(registry, api, server_artifacts):
    import json

    token = registry.make_user("alice")
    first = server_artifacts.make("science", "1.0.0")
    registry.admin("set-quota", "--namespace", "alice", "--storage-bytes", str(len(first) + 10))
    registry.admin("set-quota", "--user", "alice", "--open-uploads", "2")
    assert api.publish(token, "alice/science", "1.0.0", first).status_code == 201
    with api.client(token) as c:
        assert [_create(c).status_code for _ in range(3)] == [201, 201, 429]
    shown = json.loads(registry.admin("show-quota", "--namespace", "alice", "--user", "alice"))
    assert shown["namespace"] == {
        "name": "alice", "used_bytes": len(first), "quota_bytes": len(first) + 10, "default": False
    }
    assert shown["user"] == {"name": "alice", "open_uploads": 2, "max_open_uploads": 2, "default": False}
    registry.admin("set-quota", "--user", "alice", "--open-uploads", "0")  # back to the default (16)
    with api.client(token) as c:
        assert _create(c, 1).status_code == 201
    data = server_artifacts.make("science", "1.0.1")
    r = api.publish(token, "alice/science", "1.0.1", data)
    assert r.status_code == 507 and r.json()["error"]["limit"] == len(first) + 10
    registry.admin("set-quota", "--namespace", "alice", "--storage-bytes", "0")  # no quota by default
    assert api.publish(token, "alice/science", "1.0.2", server_artifacts.make("science", "1.0.2")).status_code == 201


def test_a_sketch_counts_against_the_namespace_quota(registry, api, server_artifacts, tmp_path):
    """Sketches are stored bytes too: one that would pass the quota is 507 and stores nothing."""
    import json

    from web_helpers import sketch_bytes

    token = registry.make_user("alice")
    data = server_artifacts.make("science", "1.0.0")
    sketch = sketch_bytes(tmp_path, data)
    registry.admin("set-quota", "--namespace", "alice", "--storage-bytes", str(len(data) + len(sketch) - 1))
    assert api.publish(token, "alice/science", "1.0.0", data).status_code == 201
    url = "/skills/alice/science/versions/1.0.0/sketch"
    with api.client(token) as c:
        r = c.put(url, content=sketch)
        assert r.status_code == 507, r.text
        error = r.json()["error"]
        assert error["code"] == "quota_exceeded" and error["used"] == len(data)
        assert f"this sketch's {len(sketch)} would pass its quota" in error["message"]
        assert c.get(url).json()["error"]["code"] == "no_sketch"
        assert c.get("/skills/alice/science/versions/1.0.0").json()["sketch"] is None
    assert registry.sql("SELECT count(*) FROM sketches") == [(0,)]
    registry.admin("set-quota", "--namespace", "alice", "--storage-bytes", str(len(data) + len(sketch)))
    with api.client(token) as c:
        assert c.put(url, content=sketch).status_code == 201
    shown = json.loads(registry.admin("show-quota", "--namespace", "alice"))
    assert shown["namespace"]["used_bytes"] == len(data) + len(sketch)
    r = api.publish(token, "alice/science", "1.0.1", server_artifacts.make("science", "1.0.1"))
    assert r.status_code == 507 and r.json()["error"]["used"] == len(data) + len(sketch)


def test_a_skill_card_counts_against_the_namespace_quota(registry, api, server_artifacts):
    """Cards are stored bytes too: one that would pass the quota is 507 and the old card stays."""
    import json

    token = registry.make_user("alice")
    data = server_artifacts.make("science", "1.0.0")
    small, large = b"# science\n", b"# science\n" + b"x" * 4000
    registry.admin("set-quota", "--namespace", "alice", "--storage-bytes", str(len(data) + len(small) + 100))
    assert api.publish(token, "alice/science", "1.0.0", data).status_code == 201
    url = "/skills/alice/science/versions/1.0.0/card"
    with api.client(token) as c:
        assert c.put(url, content=small).status_code == 200
        r = c.put(url, content=large)
        assert r.status_code == 507, r.text
        error = r.json()["error"]
        assert error["code"] == "quota_exceeded" and error["used"] == len(data) + len(small)
        assert f"this card's {len(large) - len(small)} would pass its quota" in error["message"]
        assert c.get(url).content == small
        assert c.put(url, content=small[:-1]).status_code == 200  # shrinking is always allowed
    shown = json.loads(registry.admin("show-quota", "--namespace", "alice"))
    assert shown["namespace"]["used_bytes"] == len(data) + len(small) - 1
