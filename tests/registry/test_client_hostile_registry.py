"""A hostile registry against the client (issue 18, class 11): capped answers, a deadline per call, no endless publish.

Each test runs a small real HTTP server on loopback (``http.server``) that misbehaves on
purpose: an answer of 256 MiB, one declaring a terabyte, bytes trickled slower than any
read timeout (in the body and in the status line), an upload offset that never moves.
The client is tvreg's own, unmodified; memory is the peak RSS of a client subprocess
(``wait4``), not a timer.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from client_helpers import build_artifacts, write_project
from helpers import subprocess_env

from tvreg._registry.client import RegistryClient
from tvreg._registry.publish import publish
from tvreg.errors import RegistryError, RegistryUnavailable

UPLOAD = "0123abcd-0000-4000-8000-00000000abcd"


class Hostile:
    """``http.server`` on 127.0.0.1 answering every request with ``behave(handler)``; ``.url``, ``.requests``."""

    def __init__(self, behave) -> None:
        outer = self
        self.requests: list[tuple[str, str]] = []
        self.stop = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                outer.requests.append((self.command, self.path.split("?")[0]))
                with contextlib.suppress(OSError):
                    behave(self)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Hostile:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self._server.shutdown()
        self._server.server_close()


def send_json(h: BaseHTTPRequestHandler, body: object, status: int = 200) -> None:
    data = json.dumps(body).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def endless_json(h: BaseHTTPRequestHandler) -> None:
    """A 256 MiB answer with no length (the connection's end marks its end)."""
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Connection", "close")
    h.end_headers()
    h.wfile.write(b'{"name": "')
    block = b"a" * (1 << 20)
    for _ in range(256):
        h.wfile.write(block)
    h.wfile.write(b'"}')


def _client_peak(url: str) -> tuple[int, str]:
    """Peak RSS (bytes) and output of a fresh process asking ``url`` for a skill."""
    script = textwrap.dedent(
        f"""
        from tvreg._registry.client import RegistryClient
        from tvreg.errors import RegistryError
        try:
            with RegistryClient({url!r}) as c:
                print(sorted(c.skill("alice/science")))
        except RegistryError as exc:
            print(exc)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env=subprocess_env(), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    _, _status, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss * 1024, out


def test_a_huge_metadata_answer_is_refused_while_it_arrives():
    with Hostile(lambda h: send_json(h, {"name": "science", "versions": []})) as small:
        calm, out = _client_peak(small.url)
    assert out.strip() == "['name', 'versions']"
    with Hostile(endless_json) as big:
        peak, out = _client_peak(big.url)
    assert out.strip() == (
        f"the answer of the registry at {big.url} to GET /skills/alice/science is over 33554432 bytes; refusing it."
    )
    assert peak - calm < 80 * 2**20, f"the client peaked {(peak - calm) >> 20} MiB above a normal answer"


def test_a_declared_terabyte_is_refused_before_reading_it():
    def terabyte(h):
        h.send_response(200)
        h.send_header("Content-Length", str(10**12))
        h.end_headers()
        while not big.stop.wait(0.2):
            h.wfile.write(b" ")
            h.wfile.flush()

    with Hostile(terabyte) as big, RegistryClient(big.url, timeout=5) as c:
        with pytest.raises(RegistryError, match="is over 33554432 bytes; refusing it"):
            c.skill("alice/science")


def test_a_compressed_answer_tvreg_did_not_ask_for_is_refused():
    import gzip

    def gzipped(h):
        data = gzip.compress(b'{"name": "' + b"a" * (64 << 20) + b'"}')
        h.send_response(200)
        h.send_header("Content-Encoding", "gzip")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    with Hostile(gzipped) as zipped, RegistryClient(zipped.url) as c:
        with pytest.raises(RegistryError, match="sent a `gzip`-compressed answer"):
            c.skill("alice/science")


@pytest.mark.parametrize("where", ["body", "status line"])
def test_a_trickling_registry_meets_the_call_deadline(where):
    def trickle(h):
        if where == "body":
            h.send_response(200)
            h.send_header("Content-Length", "100000")
            h.end_headers()
            h.wfile.write(b'{"name": "')
            pending = b"a" * 100000
        else:
            pending = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 100000
        for byte in pending:
            if slow.stop.wait(0.3):
                return
            h.wfile.write(bytes([byte]))
            h.wfile.flush()

    # Every byte comes well within the 1 s read timeout; the call as a whole gets 2 s.
    with Hostile(trickle) as slow, RegistryClient(slow.url, timeout=1, call_timeout=2) as c:
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable, match="did not answer in time"):
            c.skill("alice/science")
        assert time.monotonic() - started < 3.5


@pytest.fixture(scope="session")
def artifacts(family, tmp_path_factory):
    return build_artifacts(family, tmp_path_factory.mktemp("hostile-artifacts"))


def test_publish_gives_up_when_the_registry_never_advances_the_offset(artifacts, tmp_path):
    patches = []

    def stuck(h):
        path = h.path.split("?")[0]
        if path == "/api/v1/whoami":
            return send_json(h, {"user": "alice", "teams": [], "namespaces": ["alice"]})
        if path.startswith("/api/v1/skills/"):
            return send_json(h, {"error": {"code": "not_found", "message": "no such version"}}, 404)
        if h.command == "POST" and path == "/api/v1/uploads":
            return send_json(h, {"id": UPLOAD, "offset": 0, "chunk_size": 1}, 201)
        if h.command == "PATCH":
            patches.append(h.headers.get("Content-Length"))
            if len(patches) > 50:  # the old client never stopped: end the test instead of hanging
                return send_json(h, {"error": {"code": "internal", "message": "50 patches"}}, 500)
            return send_json(h, {"offset": 0})
        return send_json(h, {"id": UPLOAD, "offset": 0, "size": 1, "digest": "x"})

    project = write_project(tmp_path / "p", name="alice/science", version="1.0.0", artifact=str(artifacts["science"]))
    with Hostile(stuck) as reg:
        with pytest.raises(RegistryError) as caught:
            publish(project, registry=reg.url, token="tvr_x")
    assert caught.value.message == (
        f"the registry at {reg.url} did not advance upload `{UPLOAD}` past byte 0 of "
        f"{artifacts['science'].stat().st_size} in 3 rounds; giving up."
    )
    # Three rounds, each a full 64 KiB chunk although the registry asked for 1-byte chunks.
    assert patches == [str(64 << 10)] * 3


def test_publish_refuses_an_offset_past_the_artifact(artifacts, tmp_path):
    def liar(h):
        path = h.path.split("?")[0]
        if path == "/api/v1/whoami":
            return send_json(h, {"user": "alice", "teams": [], "namespaces": ["alice"]})
        if path.startswith("/api/v1/skills/"):
            return send_json(h, {"error": {"code": "not_found", "message": "no such version"}}, 404)
        if h.command == "POST":
            return send_json(h, {"id": UPLOAD, "offset": 0, "chunk_size": 1 << 20}, 201)
        return send_json(h, {"offset": "lots"} if h.command == "PATCH" else {})

    project = write_project(tmp_path / "p", name="alice/science", version="1.0.0", artifact=str(artifacts["science"]))
    with Hostile(liar) as reg, pytest.raises(RegistryError) as caught:
        publish(project, registry=reg.url, token="tvr_x")
    assert caught.value.message == f"the registry at {reg.url} sent an answer without a whole-number `offset`."


def _paged(link: str | None, versions: list, total: int):
    def behave(h: BaseHTTPRequestHandler) -> None:
        data = json.dumps(
            {"name": "alice/science", "description": "", "private": False, "dist_tags": {},
             "versions": versions, "total_versions": total}
        ).encode()  # fmt: skip
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        if link:
            h.send_header("Link", link)
        h.end_headers()
        h.wfile.write(data)

    return behave


@pytest.mark.parametrize(
    ("link", "versions", "total", "said"),
    [
        ('<http://127.0.0.1:1/skills/alice/science?page=1>; rel="next"', [{"version": "1.0.0"}], 50, "no next page"),
        (None, [{"version": "1.0.0"}], 50, "no next page"),
        ('<http://evil.example/x?page=2>; rel="next"', [], 5, "without versions"),
        (None, [{"version": "1.0.0"}], 10**9, "more than the 10000 tvreg reads"),
    ],
    ids=["next-loops-to-page-1", "no-link", "empty-next-page", "total-past-cap"],
)
def test_a_registry_whose_pages_do_not_advance_is_refused(link, versions, total, said):
    """Each hostile pager ends in one sentence after at most two requests, never a loop."""
    with Hostile(_paged(link, versions, total)) as server, RegistryClient(server.url, timeout=5) as c:
        with pytest.raises(RegistryError) as err:
            c.skill("alice/science")
        assert said in err.value.message
        assert len(server.requests) <= 2
        assert all(path == "/api/v1/skills/alice/science" for _m, path in server.requests)  # never another host
