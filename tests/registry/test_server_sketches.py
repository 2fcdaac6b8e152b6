"""The sketch endpoint: attached once per version, checked against the version's artifact, read by anyone who can read the skill."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from tvreg._format.sketch import sketch_artifact


def _sketch_bytes(tmp_path, data: bytes) -> bytes:
    path = tmp_path / f"{hashlib.sha256(data).hexdigest()}.tvskill"
    path.write_bytes(data)
    return sketch_artifact(path).to_bytes()


def test_a_sketch_is_attached_once_and_read_back(registry, api, server_artifacts, tmp_path):
    token = registry.make_user("alice")
    data = server_artifacts.make("science", "1.0.0")
    assert api.publish(token, "alice/science", "1.0.0", data).status_code == 201
    sketch = _sketch_bytes(tmp_path, data)
    url = "/skills/alice/science/versions/1.0.0/sketch"
    with api.client() as anon:
        r = anon.get(url)
        assert r.status_code == 404 and r.json()["error"]["code"] == "no_sketch"
        assert r.json()["error"]["message"] == "`alice/science@1.0.0` was published without a sketch."
        assert anon.put(url, content=sketch).status_code == 401
    with api.client(registry.token("alice", role="read")) as reader:
        r = reader.put(url, content=sketch)
        assert r.status_code == 403, r.text
    with api.client(token) as c:
        r = c.put(url, content=b"not a sketch at all")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_sketch"
        other = _sketch_bytes(tmp_path, server_artifacts.make("science", "1.0.0", description="other bytes"))
        r = c.put(url, content=other)
        assert r.status_code == 400 and "was made from artifact sha256:" in r.json()["error"]["message"]
        r = c.put(url, content=sketch)
        assert r.status_code == 201, r.text
        digest = "sha256:" + hashlib.sha256(sketch).hexdigest()
        assert r.json()["sketch"] == {"digest": digest, "size": len(sketch)}
        assert c.put(url, content=sketch).status_code == 200
        other_path = tmp_path / "again.tvskill"
        other_path.write_bytes(data)
        smaller = replace(sketch_artifact(other_path), top_fraction=0.25).to_bytes()
        r = c.put(url, content=smaller)
        assert r.status_code == 409 and r.json()["error"]["published_digest"] == digest
        r = c.get("/skills/alice/science/versions/1.0.0")
        assert r.json()["sketch"]["digest"] == digest
    with api.client() as anon:
        r = anon.get(url)
        assert r.status_code == 200 and r.content == sketch
        assert r.headers["X-Tvreg-Digest"] == digest
        assert anon.get("/skills/alice/science/versions/9.9.9/sketch").json()["error"]["code"] == "not_found"
    assert registry.sql("SELECT action, target FROM audit WHERE action = 'version.sketch'") == [
        ("version.sketch", "alice/science@1.0.0")
    ]
