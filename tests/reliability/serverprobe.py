"""What the abuse tests measure on a live registry process: its memory, from ``/proc``.

Peak resident memory (``VmHWM``) is the figure an attack that pins memory moves, and it
does not depend on how busy the machine is, unlike a timer. The kernel lets a process
reset its own peak (``/proc/<pid>/clear_refs`` with ``5``), so a test measures the peak
of exactly the attack it runs.
"""

from __future__ import annotations

import socket
from pathlib import Path

MIB = 1024 * 1024


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def rss(pid: int) -> int:
    """Resident memory of ``pid`` now, in bytes."""
    return _status(pid, "VmRSS")


def peak_rss(pid: int) -> int:
    """Peak resident memory of ``pid`` since it started or since :func:`reset_peak`, in bytes."""
    return _status(pid, "VmHWM")


def reset_peak(pid: int) -> int:
    """Start a new peak at the current resident memory; returns that starting point."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return peak_rss(pid)


def held_by_server(port: int) -> list[str]:
    """The client addresses of the TCP connections the server on ``port`` still holds open.

    Read from ``/proc/net/tcp``: the server's side of each connection (local port ``port``)
    that is established, or closed by the client but not yet by the server (CLOSE_WAIT).
    """
    held = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        if int(local.rsplit(":", 1)[1], 16) == port and state in ("01", "08"):
            held.append(socket.inet_ntoa(bytes.fromhex(remote.rsplit(":", 1)[0])[::-1]))
    return held


def raw_request(port: int, head: bytes, body: bytes = b"", *, source: str = "127.0.0.1", timeout: float = 10.0) -> bytes:
    """Send ``head`` and as much of ``body`` as the server takes, then return all it answers.

    A server that answers without reading the body stops taking bytes once the socket
    buffers fill; the send gives up then and the answer is read.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as sock:
        sock.sendall(head)
        sock.settimeout(0.5)
        sent = 0
        try:
            while sent < len(body):
                sent += sock.send(body[sent : sent + 256 * 1024])
        except (TimeoutError, BlockingIOError, ConnectionError, OSError):
            pass
        sock.settimeout(timeout)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (ConnectionError, TimeoutError):
            pass
        return data


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/") else 0
