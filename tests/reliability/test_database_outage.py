"""The database going away while the server runs (docs/reliability.md row 25).

Requests get a bounded-time 503 ``unavailable`` with ``Retry-After`` and one sentence,
never a hang or a traceback, and service resumes once the database is back, without
restarting the server (``pool_pre_ping`` replaces the dead pooled connections).
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from tvreg_registry_fixtures import PostgresCluster, pg_bin_or_skip

from registry_server.db import make_engine
from registry_server.migrate import upgrade


def _client(url: str, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url + "/api/v1", headers=headers, timeout=60)


@pytest.mark.parametrize("registry", ["postgresql"], indirect=True)
def test_database_outage_is_a_bounded_503_and_recovers_without_restart(registry, request):
    cluster = request.getfixturevalue("postgres_cluster")
    database = registry.database_url.rsplit("/", 1)[1]
    token = registry.make_user("alice")
    with _client(registry.url, token) as c:
        assert c.get("/skills").status_code == 200
        cluster.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        cluster.execute(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
        )
        try:
            for path in ("/skills", "/health", "/whoami"):
                r = c.get(path)
                assert r.status_code == 503, (path, r.text)
                assert r.json()["error"]["code"] == "unavailable"
                assert int(r.headers["retry-after"]) > 0
                assert r.headers["x-content-type-options"] == "nosniff", path  # the cached-read path's 503 too
            r = c.post("/uploads", json={"size": 1, "digest": "sha256:" + "0" * 64})
            assert r.status_code == 503
        finally:
            cluster.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        assert c.get("/skills").status_code == 200
        assert c.get("/whoami").json()["user"] == "alice"


@pytest.fixture(scope="module")
def own_cluster():
    """A PostgreSQL cluster of this module alone, which its tests stop, freeze and start; commits are durable.

    Each test leaves it running.
    """
    cluster = PostgresCluster(pg_bin_or_skip(), durable=True)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _migrated_database(cluster: PostgresCluster) -> str:
    url = cluster.create_database()
    engine = make_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return url


def _assert_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "unavailable" and "database" in error["message"], error
    assert int(r.headers["retry-after"]) > 0


def test_postgresql_stopped_mid_service_gives_503_then_recovers_without_restart(
    own_cluster, make_registry, server_artifacts
):
    url = _migrated_database(own_cluster)
    registry = make_registry(url)
    registry.start()
    token = registry.make_user("alice")
    data = server_artifacts.make("science", "1.0.0")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with _client(registry.url, token) as c:
        upload_id = c.post("/uploads", json={"size": len(data), "digest": digest}).json()["id"]
        half = len(data) // 2
        assert (
            c.patch(f"/uploads/{upload_id}", content=data[:half], headers={"Upload-Offset": "0"}).status_code
            == 200
        )

        own_cluster.halt()  # pg_ctl stop -m immediate: every connection dies at once
        started = time.monotonic()
        for r in (
            c.get("/skills"),
            c.get("/health"),
            c.get("/whoami"),
            c.get("/skills/alice/science"),
            c.patch(f"/uploads/{upload_id}", content=data[half:], headers={"Upload-Offset": str(half)}),
            c.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload_id}),
        ):
            _assert_unavailable(r)
        assert time.monotonic() - started < 60  # each answer within the 5 s connect timeout
        assert registry.proc is not None and registry.proc.alive()

        own_cluster.resume()
        assert c.get("/health").status_code == 200
        assert c.get("/whoami").json()["user"] == "alice"
        offset = c.get(f"/uploads/{upload_id}").json()["offset"]
        assert offset == half  # the chunk refused during the outage was not counted
        r = c.patch(f"/uploads/{upload_id}", content=data[half:], headers={"Upload-Offset": str(half)})
        assert r.json() == {"offset": len(data)}, r.text
        r = c.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload_id})
        assert r.status_code == 201, r.text
        assert c.get("/skills/alice/science/versions/1.0.0/artifact").content == data
    log = registry.log()
    assert "Traceback" not in log, log


def _cluster_pids(cluster: PostgresCluster) -> list[int]:
    """The postmaster and every process it started (backends, checkpointer, walwriter...)."""
    postmaster = int((cluster.root / "data" / "postmaster.pid").read_text().split()[0])
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == postmaster:
                children.append(int(entry.name))
    return [postmaster, *children]


def test_a_frozen_postgresql_gives_503_not_a_hang_then_recovers_without_restart(own_cluster, make_registry):
    """SIGSTOP: connections stay open and TCP stays silent, so only a client-side deadline helps."""
    url = _migrated_database(own_cluster)
    registry = make_registry(url, extra_args=("--database-timeout", "1"))
    registry.start()
    token = registry.make_user("alice")
    with _client(registry.url, token) as c:
        assert c.get("/skills").status_code == 200  # pooled connections that will hang
        pids = _cluster_pids(own_cluster)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            # 30 s is only a hang detector: the server answers after its own deadline.
            _assert_unavailable(c.get("/skills", timeout=30))
            _assert_unavailable(c.get("/whoami", timeout=30))
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        assert c.get("/skills").status_code == 200
        assert c.get("/whoami").json()["user"] == "alice"
    assert registry.proc is not None and registry.proc.alive()
    log = registry.log()
    assert "Traceback" not in log, log
