"""The HTTP surface itself: OpenAPI, health, and one error shape for every failure."""

from __future__ import annotations

import hashlib

import httpx


def test_openapi_documents_every_endpoint(registry, api):
    with api.client() as c:
        assert c.get("/health").json() == {"status": "ok"}
    spec = httpx.get(registry.url + "/openapi.json").json()
    paths = spec["paths"]
    assert set(paths) == {
        "/api/v1/health",
        "/api/v1/whoami",
        "/api/v1/uploads",
        "/api/v1/uploads/{upload_id}",
        "/api/v1/skills",
        "/api/v1/skills/{namespace}/{name}",
        "/api/v1/skills/{namespace}/{name}/versions/{version}",
        "/api/v1/skills/{namespace}/{name}/versions/{version}/artifact",
        "/api/v1/skills/{namespace}/{name}/versions/{version}/yank",
        "/api/v1/skills/{namespace}/{name}/versions/{version}/sketch",
        "/api/v1/skills/{namespace}/{name}/versions/{version}/card",
        "/api/v1/skills/{namespace}/{name}/tags/{tag}",
        "/api/v1/skills/{namespace}/{name}/versions/{version}/signature",
        "/api/v1/skills/{namespace}/{name}/versions/{version}/signatures",
        "/api/v1/skills/{namespace}/{name}/versions/{version}/attestations",
        "/api/v1/keys",
        "/api/v1/keys/{key_id}",
        "/api/v1/keys/{key_id}/revoke",
    }
    assert set(paths["/api/v1/uploads/{upload_id}"]) == {"get", "patch", "delete"}
    assert httpx.get(registry.url + "/docs").status_code == 200


def test_every_failure_has_the_error_shape(registry, api):
    token = registry.make_user("alice")
    with api.client(token) as c:
        r = c.get("/no/such/endpoint")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = c.post("/skills")
        assert r.status_code == 405 and set(r.json()["error"]) == {"code", "message"}
        r = c.post("/uploads", json={"size": -1, "digest": "md5:x"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
        assert r.json()["error"]["message"].startswith("invalid request: `size`")
        r = c.post("/uploads", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
        r = c.patch("/uploads/not-a-uuid", content=b"x", headers={"Upload-Offset": "0"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = c.post(
            "/uploads", json={"size": 1, "digest": "sha256:" + "0" * 64, "pad": "x" * (2 * 1024 * 1024)}
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
        upload = c.post("/uploads", json={"size": 1, "digest": "sha256:" + "0" * 64}).json()["id"]
        r = c.patch(f"/uploads/{upload}", content=b"x")
        assert r.status_code == 400 and "`Upload-Offset`" in r.json()["error"]["message"]


def test_head_of_an_artifact_gives_size_and_digest(registry, api, server_artifacts):
    token = registry.make_user("alice")
    data = server_artifacts.make("science", "1.0.0")
    assert api.publish(token, "alice/science", "1.0.0", data).status_code == 201
    with api.client() as c:
        r = c.head("/skills/alice/science/versions/1.0.0/artifact")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-length"] == str(len(data))
    assert r.headers["x-tvreg-digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
