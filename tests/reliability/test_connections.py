"""Connection caps: idle sockets from one client, or many, never keep health checks out.

Issue #18, class 4 (docs/reliability.md row 33): 1,100 idle sockets from one client made
``/health`` time out for everyone. A live server with small caps; raw idle sockets from
loopback source addresses; the answers, the server's open connections and its peak RSS.
"""

from __future__ import annotations

import json
import resource
import socket

import httpx
import pytest
from helpers import wait_until
from serverprobe import MIB, held_by_server, peak_rss, reset_peak

TOTAL, PER_CLIENT = 64, 16  # reserve: 4 for /health


def _idle(port: int, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


def _refused(sock: socket.socket) -> bool:
    """Whether the server refused the socket; False when it holds it open, idle, as accepted.

    A refusal must be the documented one: 503 in the API's error shape with ``Retry-After``,
    then the connection closed. Anything else (a bare close, another status) fails the test,
    so a server that drops sockets silently cannot pass for one that answers.
    """
    sock.settimeout(0.3)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return False
    sock.settimeout(5)
    while chunk := sock.recv(65536):  # read to the close the refusal promises
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), data[:200]
    assert b"\r\nretry-after: " in head.lower() and b"\r\nconnection: close" in head.lower(), head
    assert json.loads(body)["error"]["code"] == "unavailable", body
    return True


def _request(sock: socket.socket, path: str) -> bytes:
    """Use an accepted idle socket: one GET, its status line."""
    sock.settimeout(10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock.recv(65536).split(b"\r\n", 1)[0]


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
        accepted = [s for s, r in zip(flood, refused, strict=True) if not r]
        assert _request(accepted[0], "/api/v1/health") == b"HTTP/1.1 200 OK"  # held, not black-holed
        assert _get(port, "/api/v1/health", "127.0.3.2") == 200
        assert _get(port, "/api/v1/skills", "127.0.3.2") == 200
        # Other clients fill the rest up to the reserve.
        others = [_idle(port, f"127.0.4.{i // PER_CLIENT + 1}") for i in range(TOTAL - 4 - PER_CLIENT)]
        held += others
        assert not any(_refused(s) for s in others)
        assert _get(port, "/api/v1/health", "127.0.5.1") == 200
        assert _get(port, "/api/v1/skills", "127.0.5.1") == 503
        assert _refused(_idle(port, "127.0.6.1")) is False  # the reserve: accepted, health only
    finally:
        for s in held:
            s.close()
    wait_until(
        lambda: not [ip for ip in held_by_server(port) if ip.startswith(("127.0.3.", "127.0.4."))],
        "the server to close the idle sockets the clients closed",
    )
    assert _get(port, "/api/v1/skills", "127.0.5.1") == 200  # the caps free as sockets close
    again = [_idle(port, "127.0.3.1") for _ in range(PER_CLIENT)]  # the flooding client's count freed too
    try:
        assert not any(_refused(s) for s in again)
    finally:
        for s in again:
            s.close()
    assert peak_rss(registry.proc.pid) - start < 32 * MIB


def _soft_open_files(pid: int) -> tuple[int, int]:
    for line in open(f"/proc/{pid}/limits").read().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit in /proc")


def test_the_server_raises_its_open_file_limit_at_start(tmp_path):
    """Started with a low soft limit (inherited by a plain subprocess), the server lifts it to the hard one."""
    from tvreg_registry_fixtures import Registry, Spawner

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.fail(f"the hard open-file limit here is {hard}; the test needs more than 256")
    spawner = Spawner("subprocess")  # the zygote's limits were fixed when it started
    data = tmp_path / "registry"
    registry = Registry(
        backend="sqlite", data_dir=data, database_url=f"sqlite:///{data / 'registry.db'}", spawner=spawner
    )
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        registry.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert registry.proc is not None
        server_soft, server_hard = _soft_open_files(registry.proc.pid)
        assert server_soft == server_hard and server_soft > 256
    finally:
        registry.close()
