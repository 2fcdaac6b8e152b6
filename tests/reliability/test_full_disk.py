"""A full disk under the registry during an upload (docs/reliability.md row 20).

The server's data directory is a small tmpfs mounted in a private mount namespace of the
server process (``unshare -m``), so no mount outlives it or is seen by anything else;
where mounting is not allowed the server runs under ``RLIMIT_FSIZE`` instead (writes past
the limit fail with EFBIG, SIGXFSZ ignored). Either way the chunk that does not fit is
answered 507 ``insufficient_storage`` with ``Retry-After``, nothing is recorded past what
was stored, and once there is room the same upload resumes and publishes.

A full disk during install is tested in tests/test_interrupt.py
(``test_full_disk_names_the_path_and_changes_nothing``).
"""

from __future__ import annotations

import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tvreg_registry_fixtures import Api, Registry, ServerProcess, Spawner, sha256_digest

TMPFS_BYTES = 4 * 1024 * 1024


def _can_mount_tmpfs(where: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "tmpfs",
            str(where),
        ],
        capture_output=True,
    )
    return probe.returncode == 0


class SmallDiskSpawner(Spawner):
    """Starts the server with its data directory on a tmpfs of ``TMPFS_BYTES``, or under RLIMIT_FSIZE."""

    def __init__(self, *, mount: bool, fsize: int) -> None:
        super().__init__("subprocess")
        self.mount = mount
        self.fsize = fsize

    def spawn(self, argv, *, env, log, cwd) -> ServerProcess:
        data = argv[argv.index("--data") + 1]
        server = [sys.executable, "-m", "registry_server.cli", *argv]
        preexec = None
        if self.mount:
            server = [
                "unshare", "-m", "--propagation", "private", "sh", "-c",
                f'mount -t tmpfs -o size={TMPFS_BYTES} tmpfs "$0" && exec "$@"', data, *server,
            ]  # fmt: skip
        else:
            limit = self.fsize

            def preexec():
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        with open(log, "ab") as out:
            popen = subprocess.Popen(
                server, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, preexec_fn=preexec
            )
        return ServerProcess(popen.pid, popen)


@pytest.fixture
def small_disk_registry(tmp_path, server_artifacts, postgres_cluster, postgres_template):
    """A registry whose data directory is nearly full; its database is PostgreSQL, in another
    process, so only the blob store runs out of space (under RLIMIT_FSIZE a SQLite file in the
    server process would hit the limit too)."""
    mount = _can_mount_tmpfs(tmp_path / "probe")
    data = server_artifacts.make("science", "1.0.0")
    spawner = SmallDiskSpawner(mount=mount, fsize=len(data) // 2)
    url = postgres_cluster.create_database(template=postgres_template)
    reg = Registry(backend="postgresql", data_dir=tmp_path / "registry", database_url=url, spawner=spawner)
    reg.start()
    try:
        yield reg, mount, data
    finally:
        reg.close()
        postgres_cluster.drop_database(url)


def test_a_full_disk_mid_upload_is_507_and_the_upload_resumes_once_there_is_room(small_disk_registry):
    registry, mounted, data = small_disk_registry
    api = Api(registry)
    token = registry.make_user("alice")
    filler = None
    if mounted:
        # The tmpfs is visible only inside the server's mount namespace, through /proc/PID/root.
        assert registry.proc is not None
        disk = Path(f"/proc/{registry.proc.pid}/root") / str(registry.data_dir).lstrip("/")
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (TMPFS_BYTES - len(data) // 2))
    with api.client(token) as c:
        upload_id = c.post("/uploads", json={"size": len(data), "digest": sha256_digest(data)}).json()["id"]
        r = c.patch(f"/uploads/{upload_id}", content=data, headers={"Upload-Offset": "0"})
        assert r.status_code == 507, r.text
        error = r.json()["error"]
        assert error["code"] == "insufficient_storage", error
        assert "out of storage space" in error["message"] and "bytes of this chunk" in error["message"]
        assert int(r.headers["retry-after"]) > 0
        assert str(registry.data_dir) not in error["message"]  # server paths stay in the server log
        assert c.get(f"/uploads/{upload_id}").json()["offset"] == 0  # nothing half-recorded
        r = c.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload_id})
        assert r.status_code == 400 and r.json()["error"]["code"] == "size_mismatch"

        if filler is not None:
            filler.unlink()
        else:
            registry.stop()
            registry.spawner.fsize = resource.RLIM_INFINITY
            registry.start()
        r = c.patch(f"/uploads/{upload_id}", content=data, headers={"Upload-Offset": "0"})
        assert r.status_code == 200 and r.json() == {"offset": len(data)}, r.text
        r = c.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload_id})
        assert r.status_code == 201, r.text
        assert c.get("/skills/alice/science/versions/1.0.0/artifact").content == data
    assert "Traceback" not in registry.log()
