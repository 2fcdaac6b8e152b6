"""Helpers for the client tests: skill projects, logins, the CLI, and a fault-injecting proxy.

The proxy sits between the client and the real registry and misbehaves on purpose (drops
``Range``, cuts an artifact body short), because those faults come from networks and
middleboxes, not from the registry itself (docs/reliability.md row 19).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from click.testing import CliRunner

from tvreg._registry import config
from tvreg.cli import main


def cli(*args):
    """Run ``tvreg ARGS`` in-process; returns click's result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def login(registry, user: str) -> str:
    """Create ``user`` on the registry and save its token as the logged-in one."""
    token = registry.make_user(user)
    config.remember_login(registry.url, token)
    return token


def write_project(root: Path, **fields) -> Path:
    """A skill project directory with a ``tvskill.toml`` of ``fields`` (``build`` as a dict)."""
    import tomli_w

    root.mkdir(parents=True, exist_ok=True)
    (root / "tvskill.toml").write_text(
        tomli_w.dumps({k: str(v) if isinstance(v, Path) else v for k, v in fields.items()})
    )
    return root


def find_blob(data_dir: Path, digest: str) -> Path:
    """The file under the registry's data directory holding the bytes of ``digest``."""
    hexd = digest.split(":", 1)[1]
    for p in Path(data_dir).rglob("*"):
        if p.is_file() and not p.is_symlink() and hashlib.sha256(p.read_bytes()).hexdigest() == hexd:
            return p
    raise AssertionError(f"no blob {digest} under {data_dir}")


def flip_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))


_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "te", "upgrade"}


class FaultProxy:
    """An HTTP proxy on loopback in front of ``upstream`` that records and perturbs requests.

    Args:
        ignore_range: drop ``Range`` from requests (the upstream then answers 200).
        truncate_at: send only this many bytes of an artifact body, then close the connection.
        truncate_times: cut only this many artifact bodies (default: every one).
    """

    def __init__(
        self,
        upstream: str,
        *,
        ignore_range: bool = False,
        truncate_at: int | None = None,
        truncate_times: int | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.ignore_range = ignore_range
        self.truncate_at = truncate_at
        self.truncate_times = truncate_times
        self._cut_lock = threading.Lock()
        self.artifact_requests: list[tuple[str | None, int]] = []  # (Range header, upstream status)
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers), every request
        self.body_bytes: dict[str, int] = {}  # response body bytes sent, per request path
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                is_artifact = self.path.split("?")[0].endswith("/artifact")
                proxy.requests.append((self.command, self.path, dict(self.headers.items())))
                if proxy.ignore_range:
                    headers.pop("Range", None)
                with (
                    httpx.Client(timeout=30) as client,
                    client.stream(
                        self.command, proxy.upstream + self.path, headers=headers, content=body
                    ) as r,
                ):
                    if is_artifact:
                        proxy.artifact_requests.append((self.headers.get("Range"), r.status_code))
                    self.send_response(r.status_code)
                    for k, v in r.headers.multi_items():
                        if k.lower() not in _HOP - {"content-length"}:
                            self.send_header(k, v)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    sent = 0
                    cut = is_artifact and proxy.truncate_at is not None and proxy._take_cut()
                    for chunk in r.iter_raw():
                        if cut and sent + len(chunk) >= proxy.truncate_at:
                            self.wfile.write(chunk[: proxy.truncate_at - sent])
                            self.wfile.flush()
                            return
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        path = self.path.split("?")[0]
                        proxy.body_bytes[path] = proxy.body_bytes.get(path, 0) + len(chunk)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _take_cut(self) -> bool:
        with self._cut_lock:
            if self.truncate_times is None:
                return True
            if self.truncate_times > 0:
                self.truncate_times -= 1
                return True
            return False

    def __enter__(self) -> FaultProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        with contextlib.suppress(OSError):
            self._server.server_close()


def build_artifacts(family, out: Path) -> dict[str, Path]:
    """Skill artifacts built once per session: science 1.0.0 and 1.0.1, coding 1.0.0."""
    import pytest

    from tvreg._build.build import build_skill

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TVREG_CACHE_DIR", str(out / "cache"))
        mp.setenv("TVREG_DATA_DIR", str(out / "data"))
        made = {}
        for key, skill, version, size in (
            ("science", "science", "1.0.0", 61000),
            ("science-1.0.1", "science", "1.0.1", 62000),
            ("coding", "coding", "1.0.0", 22000),
        ):
            path = out / f"{skill}-{version}.tvskill"
            build_skill(
                family.pre,
                finetuned=getattr(family, skill),
                output=path,
                name=skill,
                version=version,
                dataset_size=size,
                description=f"tiny {skill} skill",
            )
            made[key] = path
    return made
