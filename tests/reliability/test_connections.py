"""Connection caps: idle sockets from one client, or many, never keep health checks out.

Issue #18, class 4 (docs/reliability.md row 33): 1,100 idle sockets from one client made
``/health`` time out for everyone. A live server with small caps; raw idle sockets from
loopback source addresses; the answers, the server's open connections and its peak RSS.
"""

from __future__ import annotations

import socket

import httpx
import pytest
from serverprobe import MIB, peak_rss, reset_peak

TOTAL, PER_CLIENT = 64, 16  # reserve: 4 for /health


def _idle(port: int, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


def _refused(sock: socket.socket) -> bool:
    """Whether the server answered 503 and closed (an accepted idle socket gets nothing yet)."""
    sock.settimeout(0.3)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return data.startswith(b"HTTP/1.1 503") or data == b""


def _get(port: int, path: str, source: str) -> int:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=10) as c:
        return c.get(f"http://127.0.0.1:{port}{path}").status_code


@pytest.mark.parametrize("registry", ["sqlite"], indirect=True)
@pytest.mark.registry_options(
    args=["--max-connections", str(TOTAL), "--max-connections-per-client", str(PER_CLIENT)]
)
def test_idle_sockets_are_capped_per_client_and_in_total_with_a_reserve_for_health(registry):
    port = registry.port
    start = reset_peak(registry.proc.pid)
    held = []
    try:
        flood = [_idle(port, "127.0.3.1") for _ in range(200)]
        held += flood
        refused = [_refused(s) for s in flood]
        assert refused.count(False) == PER_CLIENT and refused.count(True) == 200 - PER_CLIENT
        first = flood[-1]
        assert _get(port, "/api/v1/health", "127.0.3.2") == 200
        assert _get(port, "/api/v1/skills", "127.0.3.2") == 200
        # Other clients fill the rest up to the reserve.
        others = [_idle(port, f"127.0.4.{i // PER_CLIENT + 1}") for i in range(TOTAL - 4 - PER_CLIENT)]
        held += others
        assert not any(_refused(s) for s in others)
        assert _get(port, "/api/v1/health", "127.0.5.1") == 200
        assert _get(port, "/api/v1/skills", "127.0.5.1") == 503
        assert first is not None
    finally:
        for s in held:
            s.close()
    assert _get(port, "/api/v1/skills", "127.0.5.1") == 200  # the caps free as sockets close
    assert peak_rss(registry.proc.pid) - start < 32 * MIB
