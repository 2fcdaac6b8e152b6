"""A real registry server per test, on SQLite and on PostgreSQL.

The ``registry`` fixture starts ``python -m registry_server.cli serve`` in a subprocess on
127.0.0.1 and a free port, waits for ``/api/v1/health``, and yields a :class:`Registry`:

* ``.url``, ``.data_dir``, ``.database_url``, ``.backend`` ("sqlite" or "postgresql");
* ``.admin(*args) -> str``: ``tvreg-server admin ARGS`` against the same database (run
  in-process through the same click command, for speed), stdout returned, raising
  :class:`AdminFailed` on a non-zero exit;
* ``.make_user(name) -> token`` (a fresh ``write`` token), ``.make_team(name, private=False)``,
  ``.add_member(team, user, role)``, ``.token(user, role=None) -> token``;
* ``.stop()``, ``.start()`` (same data, same port), ``.kill()`` (SIGKILL), and
  ``.replica()`` (a second server process on the same database and blob directory);
* ``.extra_args``: more ``serve`` options (``registry_options(args=[...])`` marker).

PostgreSQL: one throw-away cluster per session, run as the ``postgres`` OS user when
we are root (``initdb`` refuses root), on a unix socket and 127.0.0.1, ``fsync=off``.
Each test gets its own database, copied from a template migrated once to head. When the
PostgreSQL binaries are missing the PostgreSQL half is skipped with the reason, except
under ``CI``, where that is a failure: CI must never pass by silently testing less.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from registry_server.pgcluster import PostgresCluster, find_pg_bin, free_port  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 60.0


class AdminFailed(RuntimeError):
    """``tvreg-server admin`` exited non-zero; ``stderr`` holds its one sentence."""

    def __init__(self, args: tuple[str, ...], code: int, stderr: str) -> None:
        super().__init__(f"tvreg-server admin {' '.join(args)} exited {code}: {stderr.strip()}")
        self.code = code
        self.stderr = stderr


_find_pg_bin = find_pg_bin


def pg_bin_or_skip() -> Path:
    """PostgreSQL's binaries; without them a test is skipped locally and fails under CI, which must run it."""
    bin_dir = _find_pg_bin()
    if bin_dir is None:
        reason = "PostgreSQL binaries (initdb, pg_ctl) not found; install the `postgresql` package"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must run the PostgreSQL tests.")
        pytest.skip(reason)
    return bin_dir


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster(pg_bin_or_skip())
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres_template(postgres_cluster: PostgresCluster) -> str:
    """A database migrated to head once per session; per-test databases copy it."""
    from registry_server.db import make_engine
    from registry_server.migrate import upgrade

    postgres_cluster.execute('CREATE DATABASE "tvreg_template"')
    engine = make_engine(postgres_cluster.url("tvreg_template"))
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return "tvreg_template"


# -- starting server processes ---------------------------------------------------------
#
# A server process spends ~3 s importing FastAPI, SQLAlchemy and torch (through tvreg)
# before it serves anything; with a fresh server per test that would dominate the suite.
# So by default servers are forked from a "zygote": one interpreter per session that has
# done those imports and then forks a child per server, which runs the very same
# ``registry_server.cli.main(["serve", ...])`` as ``tvreg-server serve`` would, in its
# own process (own pid, own port, killable with SIGKILL). ``TVREG_TEST_SPAWN=subprocess``
# starts every server as a plain ``python -m registry_server.cli serve`` instead.

_ZYGOTE = r"""
import ctypes, json, os, signal, sys, traceback
import uvicorn
import registry_server.app, registry_server.cli, registry_server.context
import registry_server.migrate, registry_server.publish
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the servers
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.setsid()
            # Die with the zygote (which exits with pytest), so no server outlives the session.
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            os.chdir(req["cwd"])
            os.environ.clear()
            os.environ.update(req["env"])
            registry_server.cli.main(req["argv"])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
"""


class ServerProcess:
    """A running server: a pid we can signal and poll, however it was started."""

    def __init__(self, pid: int, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self._popen = popen

    def alive(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> bool:
        """True once the process is gone; False if it is still running after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True


class Spawner:
    """Starts server processes: forked from a pre-imported zygote, or as plain subprocesses."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._lock = threading.Lock()
        self._zygote: subprocess.Popen[str] | None = None
        if mode == "fork":
            self._zygote = subprocess.Popen(
                [sys.executable, "-c", _ZYGOTE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=_server_env(None),
                cwd=ROOT,
            )

    def spawn(self, argv: list[str], *, env: dict[str, str], log: Path, cwd: Path) -> ServerProcess:
        if self._zygote is None:
            with open(log, "ab") as out:
                popen = subprocess.Popen(
                    [sys.executable, "-m", "registry_server.cli", *argv],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=cwd,
                )
            return ServerProcess(popen.pid, popen)
        with self._lock:
            assert self._zygote.stdin is not None and self._zygote.stdout is not None
            request = {"argv": argv, "env": env, "log": str(log), "cwd": str(cwd)}
            self._zygote.stdin.write(json.dumps(request) + "\n")
            self._zygote.stdin.flush()
            answer = self._zygote.stdout.readline()
        if not answer:
            raise RuntimeError("the server zygote died; rerun with TVREG_TEST_SPAWN=subprocess to see why")
        return ServerProcess(json.loads(answer)["pid"])

    def close(self) -> None:
        if self._zygote is not None:
            assert self._zygote.stdin is not None
            self._zygote.stdin.close()
            self._zygote.wait(30)


@pytest.fixture(scope="session")
def server_spawner() -> Iterator[Spawner]:
    spawner = Spawner(os.environ.get("TVREG_TEST_SPAWN", "fork"))
    try:
        yield spawner
    finally:
        spawner.close()


def _server_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TVREG_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Registry:
    """A registry server subprocess and the admin CLI for its database (see the module docstring)."""

    def __init__(
        self,
        *,
        backend: str,
        data_dir: Path,
        database_url: str,
        spawner: Spawner,
        max_artifact_bytes: int | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.spawner = spawner
        self.extra_args = tuple(extra_args)
        self.backend = backend
        self.data_dir = Path(data_dir)
        self.database_url = database_url
        self.max_artifact_bytes = max_artifact_bytes
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        self.proc: ServerProcess | None = None
        self._replicas: list[Registry] = []

    # -- process control -------------------------------------------------------------
    def command(self) -> list[str]:
        """The ``tvreg-server`` arguments of this server."""
        cmd = [
            "serve",
            "--data",
            str(self.data_dir),
            "--database-url",
            self.database_url,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        if self.max_artifact_bytes is not None:
            cmd += ["--max-artifact-bytes", str(self.max_artifact_bytes)]
        return cmd + list(self.extra_args)

    def start(self, *, env: dict[str, str] | None = None) -> None:
        """Start the server (on the same port and data as before) and wait until it answers.

        ``env`` adds environment variables, e.g. ``TVREG_FAULT`` crash points.
        """
        if self.proc is not None and self.proc.alive():
            raise RuntimeError("the registry server is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = self.spawner.spawn(
            self.command(), env=_server_env(env), log=self.log_path, cwd=self.data_dir.parent
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"the registry server exited:\n{self.log()}")
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"the registry server did not answer within {STARTUP_TIMEOUT} s:\n{self.log()}")

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM), killing it after 10 s."""
        if self.proc is None:
            return
        self.proc.signal(signal.SIGTERM)
        if not self.proc.wait(10):
            self.proc.signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        if self.proc is None:
            return
        self.proc.signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def replica(self, *, env: dict[str, str] | None = None) -> Registry:
        """Start another server process on the same database and blob directory."""
        other = Registry(
            backend=self.backend,
            data_dir=self.data_dir,
            database_url=self.database_url,
            spawner=self.spawner,
            max_artifact_bytes=self.max_artifact_bytes,
            extra_args=self.extra_args,
        )
        other.start(env=env)
        self._replicas.append(other)
        return other

    def close(self) -> None:
        for other in self._replicas:
            other.stop()
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- administration ---------------------------------------------------------------
    def admin(self, *args: str) -> str:
        """Run ``tvreg-server admin ARGS`` on this registry's database; return its stdout."""
        from registry_server.cli import cli

        full = ("admin", *map(str, args), "--data", str(self.data_dir), "--database-url", self.database_url)
        result = CliRunner().invoke(cli, list(full), catch_exceptions=False)
        if result.exit_code != 0:
            raise AdminFailed(tuple(map(str, args)), result.exit_code, result.stderr)
        return result.stdout

    def make_user(self, name: str) -> str:
        """Create user ``name`` (and its namespace); return a fresh ``write`` token."""
        self.admin("create-user", name)
        return self.token(name, role="write")

    def make_team(self, name: str, private: bool = False) -> None:
        self.admin("create-team", name, *(["--private"] if private else []))

    def add_member(self, team: str, user: str, role: str) -> None:
        self.admin("add-member", team, user, "--role", role)

    def token(
        self, user: str, role: str | None = None, *, name: str = "test", expires_days: float | None = None
    ) -> str:
        """A new token for ``user``; ``role`` caps it (``read`` makes a read-only token)."""
        args = ["create-token", user, "--name", name]
        if role is not None:
            args += ["--role", role]
        if expires_days is not None:
            args += ["--expires-days", str(expires_days)]
        return self.admin(*args).strip()

    # -- inspection -------------------------------------------------------------------
    def sql(self, statement: str, **params: object) -> list[tuple]:
        """Run one SQL statement on the registry database (tests inspect rows this way)."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.database_url)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(statement), params)
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def blob_files(self) -> list[Path]:
        return sorted(p for p in (self.data_dir / "blobs" / "sha256").rglob("*") if p.is_file())

    def staged_files(self) -> list[Path]:
        return sorted(p for p in (self.data_dir / "blobs" / "uploads").iterdir() if p.is_file())


def _make_registry(request: pytest.FixtureRequest, tmp_path: Path, backend: str, **kw: object) -> Registry:
    data_dir = tmp_path / "registry"
    if backend == "sqlite":
        url = f"sqlite:///{data_dir / 'registry.db'}"
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        template = request.getfixturevalue("postgres_template")
        url = cluster.create_database(template=template)
        request.addfinalizer(lambda: cluster.drop_database(url))
    spawner: Spawner = request.getfixturevalue("server_spawner")
    return Registry(backend=backend, data_dir=data_dir, database_url=url, spawner=spawner, **kw)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    """A running registry server on a fresh database (see the module docstring)."""
    reg = _make_registry(request, tmp_path, request.param)
    marker = request.node.get_closest_marker("registry_options")
    if marker is not None:
        reg.max_artifact_bytes = marker.kwargs.get("max_artifact_bytes")
        reg.extra_args = tuple(marker.kwargs.get("args", ()))
    reg.start()
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture
def make_registry(tmp_path: Path, server_spawner: Spawner) -> Iterator:
    """A factory of (not yet started) servers on a database the test prepared itself."""
    made: list[Registry] = []

    def make(database_url: str, *, data_dir: Path | None = None, **kw: object) -> Registry:
        backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
        reg = Registry(
            backend=backend,
            data_dir=data_dir or tmp_path / "registry",
            database_url=database_url,
            spawner=server_spawner,
            **kw,  # type: ignore[arg-type]
        )
        made.append(reg)
        return reg

    yield make
    for reg in made:
        reg.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "registry_options(max_artifact_bytes=N, args=[...]): options for the `registry` fixture's server",
    )


# -- helpers for the server tests ---------------------------------------------------------


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def rewrite_manifest(src: Path, dst: Path, **changes: object) -> Path:
    """Copy artifact ``src`` to ``dst`` with manifest fields changed (same tensors).

    Uses tvreg's own header writer, so the result is a valid artifact with other bytes.
    """
    from tvreg._format.artifact import MANIFEST_KEY
    from tvreg._format.safetensors_io import SafetensorsFile, build_header

    with SafetensorsFile(src) as f:
        manifest = json.loads(f.metadata[MANIFEST_KEY])
        manifest.update(changes)
        metadata = dict(f.metadata)
        metadata[MANIFEST_KEY] = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
        entries = [(info.name, info.dtype, info.shape) for info in f.tensors.values()]
        head, _ = build_header(entries, metadata)
        body = b"".join(bytes(f.read_bytes(name)) for name in f.tensors)
    dst.write_bytes(head + body)
    return dst


class Artifacts:
    """Real skill artifacts built once per session from the tiny model family."""

    def __init__(self, family, root: Path) -> None:
        from tvreg._build.build import build_skill

        self.root = root
        self.family = family
        self.science = root / "science-1.0.0.tvskill"
        build_skill(
            family.pre,
            finetuned=family.science,
            output=self.science,
            name="science",
            version="1.0.0",
            dataset_size=61000,
            description="tiny science skill",
        )
        self.coding = root / "coding-1.0.0.tvskill"
        build_skill(
            family.pre,
            finetuned=family.coding,
            output=self.coding,
            name="coding",
            version="1.0.0",
            dataset_size=22000,
            description="tiny coding skill",
        )

    @functools.cached_property
    def calibrated(self) -> Path:
        """The science skill coded by calibrated ``auto`` (lossy, with retention figures); built on first use."""
        from test_calibrate import HELDOUT

        from tvreg._build.build import build_skill

        heldout = self.root / "heldout.txt"
        heldout.write_text("\n".join(HELDOUT) + "\n", encoding="utf-8")
        out = self.root / "science-calibrated.tvskill"
        build_skill(
            self.family.pre, finetuned=self.family.science, output=out, name="science", version="1.0.0",
            dataset_size=61000, description="tiny science skill", codec="auto", calibration=heldout,
            min_retention=0.9,
        )  # fmt: skip
        return out

    def make(
        self, name: str = "science", version: str = "1.0.0", *, base: Path | None = None, **changes: object
    ) -> bytes:
        """The bytes of a valid artifact for ``name@version`` (other manifest fields via ``changes``)."""
        src = base or (self.coding if name.startswith("coding") else self.science)
        dst = self.root / f"{uuid.uuid4().hex}.tvskill"
        return rewrite_manifest(src, dst, name=name, version=version, **changes).read_bytes()


@pytest.fixture(scope="session")
def server_artifacts(family, tmp_path_factory) -> Artifacts:
    root = tmp_path_factory.mktemp("server-artifacts")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TVREG_CACHE_DIR", str(root / "cache"))
        mp.setenv("TVREG_DATA_DIR", str(root / "data"))
        return Artifacts(family, root)


class Api:
    """Thin HTTP helpers over httpx for the server tests (the client library is tested elsewhere)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def client(self, token: str | None = None, **kw: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.registry.url + "/api/v1", headers=headers, timeout=60, **kw)  # type: ignore[arg-type]

    def upload(
        self,
        token: str,
        data: bytes,
        *,
        chunk: int = 64 * 1024,
        digest: str | None = None,
        size: int | None = None,
    ) -> str:
        """Create an upload and send ``data`` in chunks; return the upload id."""
        with self.client(token) as c:
            r = c.post(
                "/uploads",
                json={"size": len(data) if size is None else size, "digest": digest or sha256_digest(data)},
            )
            assert r.status_code == 201, r.text
            upload_id = r.json()["id"]
            offset = 0
            while offset < len(data):
                r = c.patch(
                    f"/uploads/{upload_id}",
                    content=data[offset : offset + chunk],
                    headers={"Upload-Offset": str(offset)},
                )
                assert r.status_code == 200, r.text
                offset = r.json()["offset"]
        return upload_id

    def publish(
        self, token: str, skill: str, version: str, data: bytes, *, tag: str | None = "latest", **kw: object
    ) -> httpx.Response:
        """Upload ``data`` and publish it as ``skill@version`` (``skill`` is ``ns/name``)."""
        upload_id = self.upload(token, data, **kw)  # type: ignore[arg-type]
        with self.client(token) as c:
            return c.put(f"/skills/{skill}/versions/{version}", json={"upload_id": upload_id, "tag": tag})


@pytest.fixture
def api(registry: Registry) -> Api:
    return Api(registry)
