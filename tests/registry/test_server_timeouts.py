"""Request timeouts: a client too slow with its headers or body gets 408 and a closed connection.

Raw sockets, because HTTP clients never send half a request on purpose. The server runs
with ``--request-timeout 1 --keep-alive-timeout 1``; every answer must come within the
limit plus a margin, never hang.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

LIMIT = 1.0
MARGIN = 3.0
pytestmark = pytest.mark.registry_options(args=["--request-timeout", "1", "--keep-alive-timeout", "1"])


def _connect(registry) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", registry.port), timeout=LIMIT + MARGIN)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (fails on a hang)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def _assert_timeout(raw: bytes, what: str) -> None:
    status, headers, body = _response(raw)
    assert status == 408, raw
    assert headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error == {
        "code": "request_timeout",
        "message": f"the request's {what} did not arrive within the server's 1 s request timeout; "
        "the connection is closed.",
        "limit": 1.0,
    }


def test_a_connection_that_sends_nothing_gets_408_and_is_closed(registry):
    with _connect(registry) as sock:
        start = time.monotonic()
        raw = _read_all(sock)
    assert LIMIT - 0.1 <= time.monotonic() - start < LIMIT + MARGIN
    _assert_timeout(raw, "headers")


def test_headers_trickled_slower_than_the_limit_are_cut_off(registry):
    with _connect(registry) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(0.3)
        raw = b""
        for i in range(20):  # a header byte every 0.3 s would hold a naive server forever
            try:
                sock.sendall(b"X-Slow-%d: y\r\n" % i)
                raw += sock.recv(65536)
                if raw:
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        sock.settimeout(MARGIN)
        raw += _read_all(sock)
    assert time.monotonic() - start < LIMIT + MARGIN
    _assert_timeout(raw, "headers")


def test_a_stalled_upload_body_gets_408_and_keeps_nothing(registry, api):
    token = registry.make_user("alice")
    with api.client(token) as c:
        r = c.post("/uploads", json={"size": 1000, "digest": "sha256:" + "0" * 64})
        upload_id = r.json()["id"]
    with _connect(registry) as sock:
        sock.sendall(
            f"PATCH /api/v1/uploads/{upload_id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Upload-Offset: 0\r\nContent-Length: 1000\r\n\r\n".encode()
            + b"x" * 10
        )
        start = time.monotonic()
        raw = _read_all(sock)
    assert time.monotonic() - start < LIMIT + MARGIN
    _assert_timeout(raw, "body")
    with api.client(token) as c:
        assert c.get(f"/uploads/{upload_id}").json()["offset"] == 0


def test_a_stalled_json_body_gets_408(registry):
    # Authenticated: an anonymous body is refused before it is read (tests/reliability/test_bodies.py).
    token = registry.make_user("alice")
    with _connect(registry) as sock:
        sock.sendall(
            b"POST /api/v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {token}\r\n".encode()
            + b'Content-Length: 100\r\n\r\n{"size": '
        )
        raw = _read_all(sock)
    _assert_timeout(raw, "body")


def test_a_slow_but_steady_body_is_not_cut_off(registry, api):
    # The limit bounds each wait for the next piece of the body, not the whole body.
    token = registry.make_user("alice")
    data = b"y" * 40
    with api.client(token) as c:
        upload_id = c.post("/uploads", json={"size": len(data), "digest": "sha256:" + "0" * 64}).json()["id"]
    with _connect(registry) as sock:
        sock.sendall(
            f"PATCH /api/v1/uploads/{upload_id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Upload-Offset: 0\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
        )
        for i in range(0, len(data), 10):  # 4 pieces, 0.5 s apart: 1.5 s in all, over the limit
            sock.sendall(data[i : i + 10])
            time.sleep(0.5)  # deliberate: paces the body, the behaviour under test
        raw = _read_all(sock)
    status, _, body = _response(raw)
    assert status == 200, raw
    assert json.loads(body) == {"offset": len(data)}


def test_an_idle_keep_alive_connection_is_closed(registry):
    with _connect(registry) as sock:
        sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        start = time.monotonic()
        raw = _read_all(sock)
    assert time.monotonic() - start < LIMIT + MARGIN
    status, _, body = _response(raw)
    assert status == 200 and json.loads(body) == {"status": "ok"}
