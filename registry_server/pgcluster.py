"""A throw-away PostgreSQL cluster in a temporary directory, for tests and benchmarks.

It lives in the package rather than in ``tests/`` so that ``benchmarks/load.py`` can
start the same cluster without importing the test suite (or needing pytest). When we
are root the cluster runs as the ``postgres`` OS user, because ``initdb`` refuses root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

PG_BIN_CANDIDATES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def free_port() -> int:
    """A port free on 127.0.0.1 now (another process may take it before we bind it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_pg_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (Debian keeps them off PATH), or None."""
    for cand in PG_BIN_CANDIDATES:
        if (cand / "initdb").exists() and (cand / "pg_ctl").exists():
            return cand
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    return None


class PostgresCluster:
    """A private PostgreSQL cluster in a temporary directory, for one test session or benchmark run."""

    def __init__(self, bin_dir: Path, *, durable: bool = False) -> None:
        self.bin_dir = bin_dir
        self.durable = durable  # fsync and synchronous commits, for tests that crash the server
        self.root = Path(tempfile.mkdtemp(prefix="tvreg-pg-"))
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        self._counter = 0
        self._lock = threading.Lock()

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> None:
        if self._as_postgres:
            shutil.chown(self.root, "postgres")
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        res = self._run(
            "pg_ctl", "-D", str(data), "-l", str(self.root / "log"), "-o", self._options(), "-w", "start",
            check=False,
        )  # fmt: skip
        if res.returncode != 0:
            log = (self.root / "log").read_text() if (self.root / "log").exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {res.stderr}\n{log}")

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.root, ignore_errors=True)

    def halt(self) -> None:
        """Stop the server at once (``-m immediate``, as a crash would), keeping its data."""
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "stop", check=False)

    def resume(self) -> None:
        """Start a halted cluster again on the same port and data."""
        res = self._run(
            "pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "log"), "-o", self._options(),
            "-w", "start", check=False,
        )  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not restart: {res.stderr}")

    def _options(self) -> str:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=300"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        return options

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname=database, autocommit=True
        ) as c:
            c.execute(sql)

    def create_database(self, *, template: str | None = None) -> str:
        """A new empty (or ``template``-copied) database; returns its SQLAlchemy URL."""
        with self._lock:
            self._counter += 1
            name = f"t{os.getpid()}_{self._counter}"
        self.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with contextlib.suppress(Exception):
            self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
