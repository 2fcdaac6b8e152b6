"""Failed-token throttling lets valid tokens through and holds per network and in total.

Issue #18, class 12 (docs/reliability.md row 41): twenty bad tokens from one address
locked out every valid user behind it, and rotating source addresses bypassed the limit
(each failure a database write). Real sockets from many loopback source addresses
(Linux routes all of 127.0.0.0/8 to lo), a live server, its peak RSS, and the number
of failure rows written.
"""

from __future__ import annotations

import secrets

import pytest
from serverprobe import MIB, peak_rss, raw_request, reset_peak, status_of

LIMIT = 2  # per address; the network ceiling is 5x, the total 50x


def _whoami(registry, token: str, source: str) -> int:
    head = f"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    return status_of(raw_request(registry.port, head.encode(), source=source))


def _bad() -> str:
    return "tvr_" + secrets.token_urlsafe(32)


@pytest.mark.registry_options(args=["--auth-failure-limit", str(LIMIT)])
def test_valid_tokens_pass_and_bad_ones_meet_network_and_total_ceilings(registry):
    good = registry.make_user("alice")
    pid = registry.proc.pid
    start = reset_peak(pid)
    # One address: bad tokens reach its limit; a valid token behind it still passes.
    assert [_whoami(registry, _bad(), "127.0.1.1") for _ in range(LIMIT + 1)] == [401] * LIMIT + [429]
    assert _whoami(registry, good, "127.0.1.1") == 200
    # Rotating addresses inside one /24: the network ceiling (5 x LIMIT failures) holds.
    statuses = [_whoami(registry, _bad(), f"127.0.2.{i}") for i in range(1, 5 * LIMIT + 3)]
    assert statuses == [401] * (5 * LIMIT) + [429, 429]
    assert _whoami(registry, good, "127.0.2.200") == 200
    # Addresses spread over many networks: the total ceiling (50 x LIMIT) holds, rows included.
    total = 50 * LIMIT
    used = LIMIT + 5 * LIMIT
    statuses = [_whoami(registry, _bad(), f"127.{10 + i // 200}.{i % 200}.1") for i in range(total - used + 5)]
    assert statuses.count(401) == total - used and statuses[-5:] == [429] * 5
    assert registry.sql("SELECT count(*) FROM auth_failures") == [(total,)]
    assert _whoami(registry, good, "127.99.0.1") == 200
    assert peak_rss(pid) - start < 32 * MIB
