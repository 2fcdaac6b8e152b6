"""Drive tvreg as a user would, from example scripts: run CLI commands, start a loopback registry, log in.

Shared by ``quickstart.py`` (``make demo``) and ``merge_to_learn/run.py``. Everything goes
through the real ``tvreg`` and ``tvreg-server`` commands (``python -m`` of this
interpreter, so the examples use the checkout they live in) and is echoed like a shell
session, so the output doubles as a tutorial.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import tomli_w


def tvreg(*args: str, input: str | None = None, capture: bool = False, quiet: bool = False) -> str:
    """Run ``tvreg ARGS``; with ``capture``, return its stdout instead of showing it."""
    if not quiet:
        print(f"\n$ tvreg {' '.join(args)}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "tvreg.cli", *args],
        check=True,
        input=input,
        text=True,
        stdout=subprocess.PIPE if capture else None,
    )
    return done.stdout or ""


def server_admin(*args: str) -> str:
    print(f"\n$ tvreg-server admin {' '.join(args)}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "registry_server.cli", "admin", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    print(done.stderr, end="", flush=True)
    return done.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_registry(data: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """Start ``tvreg-server`` on a free loopback port and wait until it answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"\n$ tvreg-server --data {data} --port {port} &   (log: {log})", flush=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "registry_server.cli", "--data", str(data), "--port", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"tvreg-server exited with status {proc.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/api/v1/skills", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"tvreg-server did not start within 60 s; see {log}")


@contextlib.contextmanager
def logged_in_registry(data: Path, log: Path, user: str) -> Iterator[str]:
    """A fresh registry under ``data`` with ``user`` and a token, logged in; stopped on exit."""
    server, url = start_registry(data, log)
    try:
        server_admin("create-user", user, "--data", str(data))
        token = server_admin("create-token", user, "--name", "demo", "--data", str(data))
        print(f"{token[:8]}… (shown once; the registry stores only its hash)")
        tvreg("login", "--registry", url, "--token", "-", input=token + "\n")
        yield url
    finally:
        print("\n$ kill %1   # stop the registry", flush=True)
        server.terminate()
        server.wait(timeout=30)


def write_project(path: Path, **fields: object) -> Path:
    """Write ``path/tvskill.toml`` from ``fields`` and show it."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "tvskill.toml").write_text(tomli_w.dumps(fields))
    print(f"\n# {path / 'tvskill.toml'}\n{(path / 'tvskill.toml').read_text()}", end="", flush=True)
    return path
