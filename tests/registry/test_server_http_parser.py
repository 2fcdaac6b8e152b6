"""``tvreg-server serve --http auto|h11|httptools``: uvicorn's HTTP parser, with the same limits on both.

httptools is not a dependency: without it ``--http httptools`` is one sentence and a
hint, ``auto`` serves with h11. With it (``pip install httptools``) the server maps the
C parser and keeps the header deadline of ``registry_server/limits.py``.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from uvicorn.protocols.http.h11_impl import H11Protocol

from registry_server.limits import http_protocol_base, timed_h11_protocol

HAVE_HTTPTOOLS = importlib.util.find_spec("httptools") is not None
ROOT = Path(__file__).resolve().parents[2]

_BLOCKED = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "httptools":
            raise ImportError("no httptools here")
sys.meta_path.insert(0, Block())
from registry_server.cli import main
main(sys.argv[1:])
"""


def _mapped(pid: int, what: str) -> bool:
    return what in Path(f"/proc/{pid}/maps").read_text()


def _unknown_method_status(registry) -> bytes:
    """The status line for method ``FOO``: h11 hands it to the app (405), httptools' parser refuses it (400)."""
    with socket.create_connection(("127.0.0.1", registry.port), timeout=10) as sock:
        sock.sendall(b"FOO /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    return raw.split(b"\r\n", 1)[0]


def test_httptools_without_the_package_is_one_sentence_and_a_hint(tmp_path):
    res = subprocess.run(
        [sys.executable, "-c", _BLOCKED, "serve", "--http", "httptools", "--data", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 1
    assert res.stderr == (
        "error: --http httptools needs the `httptools` package, which is not installed.\n"
        "hint: `pip install httptools`, or use --http auto (h11 when httptools is missing)\n"
    )


def test_the_parser_classes(monkeypatch):
    assert http_protocol_base("h11") is H11Protocol
    auto = http_protocol_base("auto")
    assert (auto.__name__ == "HttpToolsProtocol") is HAVE_HTTPTOOLS
    assert (auto is H11Protocol) is not HAVE_HTTPTOOLS
    assert issubclass(timed_h11_protocol(5.0, base=auto), auto)
    monkeypatch.setitem(sys.modules, "uvicorn.protocols.http.httptools_impl", None)  # as if not installed
    assert http_protocol_base("auto") is H11Protocol
    with pytest.raises(ImportError):
        http_protocol_base("httptools")


@pytest.mark.registry_options(args=["--http", "h11"])
def test_h11_serves_without_the_c_parser(registry):
    assert httpx.get(registry.url + "/api/v1/health").status_code == 200
    assert not _mapped(registry.proc.pid, "httptools")
    assert _unknown_method_status(registry) == b"HTTP/1.1 405 Method Not Allowed"


@pytest.mark.registry_options(args=["--http", "httptools", "--request-timeout", "1"])
def test_httptools_serves_and_keeps_the_header_deadline(registry):
    assert httpx.get(registry.url + "/api/v1/health").status_code == 200
    assert _mapped(registry.proc.pid, "httptools")
    assert _unknown_method_status(registry) == b"HTTP/1.1 400 Bad Request"  # the C parser answers
    with socket.create_connection(("127.0.0.1", registry.port), timeout=5) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    assert 0.9 <= time.monotonic() - start < 4.0
    assert raw.startswith(b"HTTP/1.1 408 ") and b"request_timeout" in raw
