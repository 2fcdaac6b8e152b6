"""``kill -9`` of the registry server in the middle of a chunked upload (docs/reliability.md rows 5 and 26).

After the restart no partial version is visible, no blob is referenced that is not
complete and verified, and the client's retry finishes the very same upload: the
restarted server drops the lease its previous life held, so the retry is not told to
wait for it. The kill between linking the blob and committing the version is in
tests/registry/test_server_publish.py (crash point ``registry.publish.after_link``).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from client_helpers import cli, login, write_project
from helpers import wait_until
from tvreg_registry_fixtures import sha256_digest

from tvreg._registry.client import RegistryClient


def _nothing_published(registry, api) -> None:
    with api.client() as c:
        assert c.get("/skills/alice/science").status_code == 404
        assert c.get("/skills", params={"q": "science"}).json()["items"] == []
    assert registry.sql("SELECT count(*) FROM versions") == [(0,)]
    assert registry.blob_files() == []


def _referenced_blobs_are_complete(registry) -> None:
    """Every version's digest names a blob whose bytes hash to it."""
    import hashlib

    digests = {d for (d,) in registry.sql("SELECT digest FROM versions")}
    on_disk = {"sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() for p in registry.blob_files()}
    assert digests == on_disk


def test_kill_9_mid_chunk_leaves_no_version_and_the_same_upload_resumes(registry, api, server_artifacts):
    token = registry.make_user("alice")
    data = server_artifacts.make("science", "1.0.0")
    first = len(data) // 4
    upload_id = api.upload(token, data[:first], size=len(data), digest=sha256_digest(data))
    rest = len(data) - first
    head = (
        f"PATCH /api/v1/uploads/{upload_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nUpload-Offset: {first}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {rest}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", registry.port)) as sock:
        sock.sendall(head.encode() + data[first : first + rest // 2])
        wait_until(
            lambda: registry.sql("SELECT writer FROM uploads WHERE id = :i", i=upload_id) != [(None,)],
            "the PATCH to take its lease",
        )
        # Deliberate pause, not a condition: the half body may sit in the server's write
        # buffer, where nothing outside can see it; the pause only makes the kill more likely
        # to land mid-body, and the assertions below hold wherever it lands.
        time.sleep(0.2)
        registry.kill()
    registry.start()
    _nothing_published(registry, api)
    with api.client(token) as c:
        state = c.get(f"/uploads/{upload_id}").json()
        assert (state["offset"], state["state"]) == (first, "open")  # the cut chunk was never recorded
        r = c.patch(f"/uploads/{upload_id}", content=data[first:], headers={"Upload-Offset": str(first)})
        assert r.status_code == 200 and r.json() == {"offset": len(data)}, r.text
        r = c.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload_id})
        assert r.status_code == 201, r.text
        assert c.get("/skills/alice/science/versions/1.0.0/artifact").content == data
    assert registry.staged_files() == []
    _referenced_blobs_are_complete(registry)


@pytest.mark.parametrize("registry", ["sqlite"], indirect=True)
def test_tvreg_publish_survives_the_server_being_killed_and_restarted(registry, server_artifacts, tmp_path):
    login(registry, "alice")
    artifact = tmp_path / "science-1.0.0.tvskill"
    artifact.write_bytes(server_artifacts.make("science", "1.0.0"))
    size = artifact.stat().st_size
    project = write_project(tmp_path / "p", name="alice/science", version="1.0.0", artifact=str(artifact))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvreg.cli", "publish", str(project), "--chunk-size", str(size // 40)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: registry.sql("SELECT coalesce(max(received), 0) FROM uploads")[0][0] > size // 10,
            "the upload to be under way",
            timeout=60,
        )
        registry.kill()
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    registry.start()
    (received,) = registry.sql("SELECT received FROM uploads")[0]
    assert 0 < received < size
    res = cli("publish", project)
    assert res.exit_code == 0, res.stderr
    assert registry.sql("SELECT count(*) FROM uploads") == [(1,)]  # the retry continued the same upload
    with RegistryClient(registry.url) as c:
        assert c.version("alice/science", "1.0.0")["size"] == size
    _referenced_blobs_are_complete(registry)
    assert registry.staged_files() == []
