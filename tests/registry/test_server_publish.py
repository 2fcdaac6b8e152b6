"""Publishing over real HTTP: chunked uploads, immutability, races, and every way an upload goes wrong.

docs/reliability.md rows 1 (re-publish), 3 (concurrent publish), 4 (digest mismatch), 5 (truncated
upload), 6 (oversized upload) and 26 (kill -9 mid-publish).
"""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tvreg._format.artifact import Artifact


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_publish_round_trip_in_chunks_then_download_with_range(registry, api, server_artifacts):
    token = registry.make_user("alice")
    data = server_artifacts.science.read_bytes()
    with Artifact(server_artifacts.science) as artifact:
        base = artifact.manifest.base_fingerprint
    upload_id = api.upload(token, data, chunk=40_000)
    with api.client(token) as c:
        assert c.get(f"/uploads/{upload_id}").json()["offset"] == len(data)
        r = c.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload_id})
        assert r.status_code == 201, r.text
        v = r.json()
        assert v["name"] == "alice/science" and v["version"] == "1.0.0"
        assert v["digest"] == sha256_digest(data) and v["size"] == len(data)
        assert v["base_fingerprint"] == v["manifest"]["base_fingerprint"] == base
        assert v["manifest"]["name"] == "science" and v["manifest"]["dataset_size"] == 61000
        assert (v["kind"], v["dataset_size"], v["dataset_unit"]) == ("task_vector", 61000, "examples")
        assert (v["publisher"], v["yanked"], v["yanked_reason"]) == ("alice", False, None)
        assert c.get("/skills/alice/science/versions/1.0.0").json() == v
        info = c.get("/skills/alice/science").json()
        assert info == {
            "name": "alice/science",
            "description": "tiny science skill",
            "private": False,
            "dist_tags": {"latest": "1.0.0"},
            "versions": [v],
            "downloads": 0,
            "page": 1,
            "per_page": 100,
            "total_versions": 1,
        }

    with api.client() as anonymous:
        r = anonymous.get("/skills/alice/science/versions/1.0.0/artifact")
        assert r.status_code == 200 and r.content == data
        assert r.headers["content-length"] == str(len(data))
        assert r.headers["x-tvreg-digest"] == sha256_digest(data)
        assert r.headers["etag"] == f'"{sha256_digest(data)}"'
        assert r.headers["digest"] == "sha-256=" + base64.b64encode(hashlib.sha256(data).digest()).decode()
        r = anonymous.get("/skills/alice/science/versions/1.0.0/artifact", headers={"Range": "bytes=100-199"})
        assert r.status_code == 206 and r.content == data[100:200]
        assert r.headers["content-range"] == f"bytes 100-199/{len(data)}"
        assert r.headers["x-tvreg-digest"] == sha256_digest(data)
        r = anonymous.get(
            "/skills/alice/science/versions/1.0.0/artifact", headers={"Range": f"bytes={len(data) - 10}-"}
        )
        assert r.status_code == 206 and r.content == data[-10:]

    blobs = registry.blob_files()
    assert [b.name for b in blobs] == [hashlib.sha256(data).hexdigest()]
    assert blobs[0].parent.name == blobs[0].name[:2]
    assert blobs[0].read_bytes() == data
    assert registry.staged_files() == []


def test_identical_republish_is_200_other_bytes_409_naming_both_digests(registry, api, server_artifacts):
    token = registry.make_user("alice")
    data = server_artifacts.science.read_bytes()
    first = api.publish(token, "alice/science", "1.0.0", data)
    assert first.status_code == 201, first.text
    again = api.publish(token, "alice/science", "1.0.0", data)
    assert again.status_code == 200 and again.json() == first.json()

    other = server_artifacts.make("science", "1.0.0", description="other bytes, same version")
    r = api.publish(token, "alice/science", "1.0.0", other)
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["code"] == "conflict"
    assert sha256_digest(data) in error["message"] and sha256_digest(other) in error["message"]

    with api.client() as c:
        assert c.get("/skills/alice/science/versions/1.0.0/artifact").content == data
    assert registry.sql("SELECT count(*) FROM versions") == [(1,)]
    assert len(registry.blob_files()) == 1 and registry.staged_files() == []


def test_a_lost_answer_can_be_retried_with_the_same_upload(registry, api, server_artifacts):
    token = registry.make_user("alice")
    data = server_artifacts.science.read_bytes()
    upload_id = api.upload(token, data)
    with api.client(token) as c:
        first = c.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload_id})
        retry = c.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload_id})
    assert (first.status_code, retry.status_code) == (201, 200)
    assert retry.json() == first.json()


def test_concurrent_publishes_of_one_version_one_wins(registry, api, server_artifacts):
    token = registry.make_user("alice")
    variants = [server_artifacts.make("science", "2.0.0", description=f"variant {i}") for i in range(8)]
    upload_ids = [api.upload(token, v) for v in variants]
    barrier = threading.Barrier(len(upload_ids))

    def publish(upload_id: str) -> httpx.Response:
        with api.client(token) as c:
            barrier.wait()
            return c.put("/skills/alice/science/versions/2.0.0", json={"upload_id": upload_id})

    with ThreadPoolExecutor(len(upload_ids)) as pool:
        answers = list(pool.map(publish, upload_ids))
    codes = sorted(r.status_code for r in answers)
    assert codes == [201] + [409] * 7, [r.text for r in answers]
    winner = next(r.json() for r in answers if r.status_code == 201)
    for r in answers:
        if r.status_code == 409:
            assert winner["digest"] in r.json()["error"]["message"]
    assert registry.sql("SELECT count(*) FROM versions") == [(1,)]
    assert registry.sql("SELECT count(*) FROM skills") == [(1,)]
    assert [b.name for b in registry.blob_files()] == [winner["digest"].removeprefix("sha256:")]
    assert registry.staged_files() == []
    with api.client() as c:
        assert c.get("/skills/alice/science/versions/2.0.0").json()["digest"] == winner["digest"]


def test_digest_mismatch_is_refused_and_nothing_is_stored(registry, api, server_artifacts):
    token = registry.make_user("alice")
    data = server_artifacts.science.read_bytes()
    flipped = bytearray(data)
    flipped[-100] ^= 0xFF
    upload_id = api.upload(token, bytes(flipped), digest=sha256_digest(data))
    with api.client(token) as c:
        r = c.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload_id})
        assert r.status_code == 400
        error = r.json()["error"]
        assert error["code"] == "digest_mismatch"
        assert sha256_digest(data) in error["message"] and sha256_digest(bytes(flipped)) in error["message"]
        assert registry.blob_files() == [] and registry.staged_files() == []
        assert c.get("/skills/alice/science/versions/1.0.0").status_code == 404
        assert c.get(f"/uploads/{upload_id}").json()["state"] == "failed"
    assert api.publish(token, "alice/science", "1.0.0", data).status_code == 201


def test_truncated_upload_cannot_be_published_and_can_be_resumed(registry, api, server_artifacts):
    token = registry.make_user("alice")
    data = server_artifacts.science.read_bytes()
    half = len(data) // 2
    with api.client(token) as c:
        upload_id = c.post("/uploads", json={"size": len(data), "digest": sha256_digest(data)}).json()["id"]
        assert c.patch(
            f"/uploads/{upload_id}", content=data[:half], headers={"Upload-Offset": "0"}
        ).json() == {"offset": half}
        r = c.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload_id})
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "size_mismatch"
        assert f"received {half} of {len(data)} bytes" in r.json()["error"]["message"]
        assert registry.blob_files() == []

        r = c.patch(f"/uploads/{upload_id}", content=data[half:], headers={"Upload-Offset": "0"})
        assert r.status_code == 409 and r.json()["offset"] == half and r.headers["upload-offset"] == str(half)
        assert c.get(f"/uploads/{upload_id}").json() == {
            "id": upload_id,
            "offset": half,
            "size": len(data),
            "digest": sha256_digest(data),
            "state": "open",
        }
        assert c.patch(
            f"/uploads/{upload_id}", content=data[half:], headers={"Upload-Offset": str(half)}
        ).json() == {"offset": len(data)}
        assert c.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload_id}).status_code == 201


def test_a_client_dying_mid_body_keeps_the_bytes_received(registry, api, server_artifacts):
    token = registry.make_user("alice")
    data = server_artifacts.science.read_bytes()
    with api.client(token) as c:
        upload_id = c.post("/uploads", json={"size": len(data), "digest": sha256_digest(data)}).json()["id"]
    port = int(registry.url.rsplit(":", 1)[1])
    sent = 100_000
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(
            (
                f"PATCH /api/v1/uploads/{upload_id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                f"Upload-Offset: 0\r\nContent-Length: {len(data)}\r\n\r\n"
            ).encode()
            + data[:sent]
        )
    with api.client(token) as c:
        for _ in range(100):
            state = c.get(f"/uploads/{upload_id}").json()
            if state["offset"] == sent:
                break
            threading.Event().wait(0.05)
        assert state["offset"] == sent
        r = c.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload_id})
        assert (
            r.status_code == 400 and f"received {sent} of {len(data)} bytes" in r.json()["error"]["message"]
        )
        r = c.patch(f"/uploads/{upload_id}", content=data[sent:], headers={"Upload-Offset": str(sent)})
        assert r.json() == {"offset": len(data)}
        assert c.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload_id}).status_code == 201


@pytest.mark.registry_options(max_artifact_bytes=1024 * 1024)
def test_oversized_uploads_are_refused_naming_the_limit(registry, api):
    token = registry.make_user("alice")
    with api.client(token) as c:
        r = c.post("/uploads", json={"size": 1024 * 1024 + 1, "digest": "sha256:" + "0" * 64})
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "too_large" and "1048576" in r.json()["error"]["message"]

        upload_id = c.post("/uploads", json={"size": 1024 * 1024, "digest": "sha256:" + "0" * 64}).json()[
            "id"
        ]

        def zeros():
            for _ in range(64):
                yield b"\0" * 64 * 1024

        r = c.patch(f"/uploads/{upload_id}", content=zeros(), headers={"Upload-Offset": "0"})
        assert r.status_code == 413
        assert "1048576" in r.json()["error"]["message"]
        assert c.get(f"/uploads/{upload_id}").json()["offset"] == 0
        assert [p.stat().st_size for p in registry.staged_files()] == [0]

        r = c.patch(
            f"/uploads/{upload_id}", content=b"\0" * (2 * 1024 * 1024), headers={"Upload-Offset": "0"}
        )
        assert r.status_code == 413


def test_the_artifact_must_be_a_valid_skill_named_like_the_url(registry, api, server_artifacts):
    token = registry.make_user("alice")
    data = server_artifacts.science.read_bytes()
    r = api.publish(token, "alice/science", "1.0.1", data)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_artifact"
    assert "`science@1.0.0`" in r.json()["error"]["message"]
    r = api.publish(token, "alice/other", "1.0.0", data)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_artifact"

    garbage = b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"not a header" * 10
    r = api.publish(token, "alice/science", "1.0.0", garbage)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_artifact"
    assert "/blobs/" not in r.json()["error"]["message"]
    assert registry.blob_files() == [] and registry.staged_files() == []
    assert registry.sql("SELECT count(*) FROM versions") == [(0,)]


def test_kill_after_blob_link_before_commit_leaves_no_version_and_retry_succeeds(
    registry, api, server_artifacts
):
    token = registry.make_user("alice")
    data = server_artifacts.science.read_bytes()
    upload_id = api.upload(token, data)
    registry.stop()
    registry.start(env={"TVREG_FAULT": "registry.publish.after_link"})
    with api.client(token) as c, pytest.raises(httpx.TransportError):
        c.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload_id})
    registry.kill()
    registry.start()
    assert registry.sql("SELECT count(*) FROM versions") == [(0,)]
    assert registry.sql("SELECT count(*) FROM skills") == [(0,)]
    with api.client(token) as c:
        assert c.get("/skills/alice/science").status_code == 404
        r = c.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload_id})
        assert r.status_code == 201, r.text
        assert c.get("/skills/alice/science/versions/1.0.0/artifact").content == data
    assert len(registry.blob_files()) == 1


def test_kill_after_writing_a_chunk_before_recording_it_loses_only_that_chunk(
    registry, api, server_artifacts
):
    token = registry.make_user("alice")
    data = server_artifacts.science.read_bytes()
    half = len(data) // 2
    with api.client(token) as c:
        upload_id = c.post("/uploads", json={"size": len(data), "digest": sha256_digest(data)}).json()["id"]
        assert (
            c.patch(f"/uploads/{upload_id}", content=data[:half], headers={"Upload-Offset": "0"}).status_code
            == 200
        )
    registry.stop()
    registry.start(env={"TVREG_FAULT": "registry.upload.before_offset"})
    with api.client(token) as c, pytest.raises(httpx.TransportError):
        c.patch(f"/uploads/{upload_id}", content=b"garbage" * 1000, headers={"Upload-Offset": str(half)})
    registry.kill()
    staged = registry.staged_files()
    assert [p.stat().st_size for p in staged] == [half + 7000]  # written and fsynced, but never recorded
    other = registry.replica()
    with httpx.Client(base_url=other.url + "/api/v1", headers={"Authorization": f"Bearer {token}"}) as c:
        # Another replica cannot know the writer died: until its lease expires, wait.
        r = c.patch(f"/uploads/{upload_id}", content=data[half:], headers={"Upload-Offset": str(half)})
        assert r.status_code == 409 and r.headers["retry-after"]
    registry.start()  # the same address again: it drops the leases of its previous life
    with api.client(token) as c:
        assert c.get(f"/uploads/{upload_id}").json()["offset"] == half
        r = c.patch(f"/uploads/{upload_id}", content=data[half:], headers={"Upload-Offset": str(half)})
        assert r.json() == {"offset": len(data)}
        assert c.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload_id}).status_code == 201
        assert c.get("/skills/alice/science/versions/1.0.0/artifact").content == data


def test_garbage_collection_removes_only_unreferenced_old_bytes(registry, api, server_artifacts):
    token = registry.make_user("alice")
    data = server_artifacts.science.read_bytes()
    assert api.publish(token, "alice/science", "1.0.0", data).status_code == 201
    orphan = registry.data_dir / "blobs" / "sha256" / "ab" / ("ab" * 32)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"left by a publish killed before its commit")
    with api.client(token) as c:
        abandoned = c.post("/uploads", json={"size": 10, "digest": "sha256:" + "0" * 64}).json()["id"]
        assert (
            c.patch(f"/uploads/{abandoned}", content=b"12345", headers={"Upload-Offset": "0"}).status_code
            == 200
        )
    registry.admin("gc", "--grace-hours", "1")
    assert orphan.exists() and len(registry.staged_files()) == 1, "young files are kept"
    registry.admin("gc", "--grace-hours", "0")
    assert not orphan.exists() and registry.staged_files() == []
    assert [b.name for b in registry.blob_files()] == [hashlib.sha256(data).hexdigest()]
    with api.client(token) as c:
        assert c.get("/skills/alice/science/versions/1.0.0/artifact").content == data
        assert c.get(f"/uploads/{abandoned}").json()["state"] == "failed"
