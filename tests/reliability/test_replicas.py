"""Two server processes on one database and one blob directory behave as one registry.

Nothing a request needs lives in a process: upload offsets, leases and version rows are
in the database, bytes in the shared store. docs/reliability.md row 3 (concurrent publish across
replicas: different versions all succeed, one version has exactly one winner).
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx


def _client(url: str, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url + "/api/v1", headers=headers, timeout=60)


def _upload(url: str, token: str, data: bytes) -> str:
    with _client(url, token) as c:
        r = c.post(
            "/uploads", json={"size": len(data), "digest": "sha256:" + hashlib.sha256(data).hexdigest()}
        )
        upload_id = r.json()["id"]
        assert (
            c.patch(f"/uploads/{upload_id}", content=data, headers={"Upload-Offset": "0"}).status_code == 200
        )
    return upload_id


def test_concurrent_publishes_of_different_versions_on_two_replicas_all_succeed(registry, server_artifacts):
    token = registry.make_user("alice")
    other = registry.replica()
    urls = [registry.url, other.url]
    versions = [f"1.{i}.0" for i in range(10)]
    jobs = []
    for i, version in enumerate(versions):
        url = urls[i % 2]
        jobs.append((url, version, _upload(url, token, server_artifacts.make("science", version))))
    barrier = threading.Barrier(len(jobs))

    def publish(job):
        url, version, upload_id = job
        with _client(url, token) as c:
            barrier.wait()
            return c.put(f"/skills/alice/science/versions/{version}", json={"upload_id": upload_id})

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(publish, jobs))
    assert [r.status_code for r in answers] == [201] * len(jobs), [r.text for r in answers]
    for url in urls:
        with _client(url) as c:
            info = c.get("/skills/alice/science").json()
            assert [v["version"] for v in info["versions"]] == versions
            assert info["dist_tags"] == {"latest": "1.9.0"}
    assert registry.sql("SELECT count(*) FROM skills") == [(1,)]
    assert len(registry.blob_files()) == len(versions) and registry.staged_files() == []


def test_one_version_raced_across_replicas_has_one_winner(registry, server_artifacts):
    token = registry.make_user("alice")
    other = registry.replica()
    jobs = []
    for i in range(12):
        url = (registry.url, other.url)[i % 2]
        jobs.append(
            (url, _upload(url, token, server_artifacts.make("science", "3.0.0", description=f"v{i}")))
        )
    barrier = threading.Barrier(len(jobs))

    def publish(job):
        url, upload_id = job
        with _client(url, token) as c:
            barrier.wait()
            return c.put("/skills/alice/science/versions/3.0.0", json={"upload_id": upload_id})

    with ThreadPoolExecutor(len(jobs)) as pool:
        codes = sorted(r.status_code for r in pool.map(publish, jobs))
    assert codes == [201] + [409] * (len(jobs) - 1)
    assert registry.sql("SELECT count(*) FROM versions") == [(1,)]
    assert len(registry.blob_files()) == 1


def test_an_upload_started_on_one_replica_continues_on_the_other(registry, server_artifacts):
    token = registry.make_user("alice")
    other = registry.replica()
    data = server_artifacts.make("science", "1.0.0")
    third = len(data) // 3
    with _client(registry.url, token) as a, _client(other.url, token) as b:
        upload_id = a.post(
            "/uploads", json={"size": len(data), "digest": "sha256:" + hashlib.sha256(data).hexdigest()}
        ).json()["id"]
        assert (
            a.patch(f"/uploads/{upload_id}", content=data[:third], headers={"Upload-Offset": "0"}).status_code
            == 200
        )
        assert b.get(f"/uploads/{upload_id}").json()["offset"] == third
        r = b.patch(f"/uploads/{upload_id}", content=data[third:], headers={"Upload-Offset": "0"})
        assert r.status_code == 409 and r.json()["offset"] == third
        assert b.patch(
            f"/uploads/{upload_id}", content=data[third:], headers={"Upload-Offset": str(third)}
        ).json() == {"offset": len(data)}
        assert a.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload_id}).status_code == 201
        assert b.get("/skills/alice/science/versions/1.0.0/artifact").content == data


def test_a_change_through_one_replica_is_read_at_once_through_the_other(registry, server_artifacts):
    """Replicas cache search and info per database generation: never stale after a write completes."""
    token = registry.make_user("alice")
    other = registry.replica()
    with _client(registry.url, token) as a, _client(other.url, token) as b, _client(other.url) as anon:
        for c in (b, anon):  # fill the other replica's caches, tokens included
            assert c.get("/skills", params={"q": "science"}).json()["total"] == 0
            assert c.get("/skills/alice/science").status_code == 404
        upload_id = _upload(registry.url, token, server_artifacts.make("science", "1.0.0"))
        assert a.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload_id}).status_code == 201
        for c in (b, anon):
            assert [s["name"] for s in c.get("/skills", params={"q": "science"}).json()["items"]] == [
                "alice/science"
            ]
            assert c.get("/skills/alice/science").json()["dist_tags"] == {"latest": "1.0.0"}
            assert c.get("/skills/alice/science/versions/1.0.0").json()["yanked"] is False

        assert b.post("/skills/alice/science/versions/1.0.0/yank", json={"reason": "bad"}).status_code == 200
        assert a.get("/skills/alice/science/versions/1.0.0").json()["yanked_reason"] == "bad"
        assert a.get("/skills/alice/science").json()["versions"][0]["yanked"] is True

        registry.admin("revoke-token", "alice", "--name", "test")
        assert b.get("/skills/alice/science").status_code == 401
        assert anon.get("/skills/alice/science").status_code == 200


def test_under_concurrent_reads_a_completed_write_is_in_every_later_read_on_both_replicas(
    registry, server_artifacts
):
    """A read shares its replica's generation query with other reads (registry_server.fastread), but only a
    query that starts after it arrived: with readers keeping a query in flight on both replicas all the time,
    each tag change is still in the very next read of either replica, anonymous or with a token."""
    token = registry.make_user("alice")
    other = registry.replica()
    with _client(registry.url, token) as c:
        upload_id = _upload(registry.url, token, server_artifacts.make("science", "1.0.0"))
        assert c.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload_id}).status_code == 201
    stop = threading.Event()
    failures: list[str] = []

    def read(url: str, who: str | None) -> int:
        n = 0
        with _client(url, who) as c:
            while not stop.is_set():
                r = c.get("/skills/alice/science")
                if r.status_code != 200:
                    failures.append(f"{url}: {r.status_code} {r.text[:200]}")
                n += 1
        return n

    readers = [(url, who) for url in (registry.url, other.url) for who in (token, None, token)]
    with ThreadPoolExecutor(len(readers)) as pool:
        running = [pool.submit(read, url, who) for url, who in readers]
        try:
            with (
                _client(registry.url, token) as writer,
                _client(registry.url, token) as a,
                _client(other.url, token) as b,
                _client(registry.url) as anon_a,
                _client(other.url) as anon_b,
            ):
                for i in range(12):
                    tag = f"stage{i}"
                    write = writer if i % 2 == 0 else b  # writes through either replica
                    r = write.put(f"/skills/alice/science/tags/{tag}", json={"version": "1.0.0"})
                    assert r.status_code == 200, r.text
                    for c in (a, b, anon_a, anon_b):
                        assert tag in c.get("/skills/alice/science").json()["dist_tags"], (i, str(c.base_url))
        finally:
            stop.set()
        counts = [f.result() for f in running]
    assert failures == []
    assert min(counts) > 0
