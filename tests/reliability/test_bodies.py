"""Request bodies are read only after routing and authentication, under each route's own limit.

Issue #18, class 3 (docs/reliability.md row 32): the registry used to read up to 64 MiB
of any body ending in ``/sketch`` (1 MiB elsewhere) into memory before it looked at the
route or the token, so anonymous clients could pin memory by trickling bytes. Each test
attacks a live server over raw sockets and asserts the answer, that the server's peak
resident memory (``VmHWM``) barely moved, and that nothing became visible.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from serverprobe import MIB, peak_rss, raw_request, reset_peak, status_of

CONNECTIONS = 16
SENT = 8 * MIB  # what each attacker tries to push; the old server kept all of it
BOUND = 24 * MIB  # all attackers together may cost the server no more than this


def _head(method: str, path: str, length: int, token: str | None = None, extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"{method} /api/v1{path} HTTP/1.1\r\nHost: x\r\n{auth}{extra}Content-Length: {length}\r\n\r\n"
    ).encode()


def _attack(registry, heads: list[bytes], body: bytes) -> list[bytes]:
    with ThreadPoolExecutor(len(heads)) as pool:
        return list(pool.map(lambda h: raw_request(registry.port, h, body), heads))


def test_bodies_without_a_valid_token_are_refused_before_a_byte_is_read(registry):
    token = registry.make_user("alice")
    pid = registry.proc.pid
    start = reset_peak(pid)
    body = b"\0" * SENT
    sketch = "/skills/alice/x/versions/1.0.0/sketch"
    heads = [_head("PUT", sketch, 64 * MIB) for _ in range(CONNECTIONS // 2)]
    heads += [_head("PUT", sketch, 64 * MIB, "tvr_" + "A" * 43) for _ in range(CONNECTIONS // 2)]
    answers = _attack(registry, heads, body)
    assert [status_of(a) for a in answers] == [401] * CONNECTIONS, answers[:2]
    assert all(b"connection: close" in a.lower() for a in answers)
    assert peak_rss(pid) - start < BOUND, (start, peak_rss(pid))
    # Unknown paths and wrong methods are answered from the headers too.
    assert status_of(raw_request(registry.port, _head("PUT", "/nowhere", 64 * MIB, token), body)) == 404
    assert status_of(raw_request(registry.port, _head("PATCH", "/skills", 64 * MIB, token), body)) == 405
    assert peak_rss(pid) - start < BOUND
    assert registry.sql("SELECT count(*) FROM uploads") == [(0,)]
    assert registry.sql("SELECT count(*) FROM sketches") == [(0,)]


def test_an_authenticated_body_is_held_to_its_routes_limit(registry):
    token = registry.make_user("alice")
    pid = registry.proc.pid
    start = reset_peak(pid)
    body = b"{" + b" " * SENT
    # Declared past the JSON limit: refused from Content-Length, nothing read.
    answers = _attack(registry, [_head("POST", "/uploads", SENT, token)] * CONNECTIONS, body)
    assert [status_of(a) for a in answers] == [413] * CONNECTIONS
    error = json.loads(answers[0].split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "too_large" and error["limit"] == 64 * 1024
    # Chunked, so no length is declared: cut off at the limit.
    chunked = f"POST /api/v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
    chunked += "Transfer-Encoding: chunked\r\n\r\n"
    piece = b"100000\r\n" + b" " * 0x100000 + b"\r\n"
    answers = _attack(registry, [chunked.encode()] * CONNECTIONS, piece * 8)
    assert [status_of(a) for a in answers] == [413] * CONNECTIONS
    # A sketch for a version that does not exist: 404 before the body is read.
    sketch = "/skills/alice/x/versions/1.0.0/sketch"
    answers = _attack(registry, [_head("PUT", sketch, 64 * MIB, token)] * CONNECTIONS, b"\0" * SENT)
    assert [status_of(a) for a in answers] == [404] * CONNECTIONS
    assert peak_rss(pid) - start < BOUND, (start, peak_rss(pid))
    assert registry.sql("SELECT count(*) FROM uploads") == [(0,)]
