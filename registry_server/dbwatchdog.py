"""A client-side deadline on every PostgreSQL round trip, for a database that stops answering.

``statement_timeout`` is enforced by the PostgreSQL server, so it cannot help when the
server itself is frozen (a stopped process, a paused VM, a partition that drops
packets): the request's thread would wait in ``recv`` until TCP gives up, which on a
live but silent peer is never, since the peer's kernel still acknowledges. TCP
keepalives and ``tcp_user_timeout`` (set in :mod:`registry_server.db`) cover a peer
whose host vanished, not a process that stopped.

:class:`Watchdog` covers both: each statement, and the ping that checks a pooled
connection before it is handed out, registers its connection with a deadline; one
daemon thread shuts down the socket of any connection still busy past its deadline.
The blocked ``recv`` then fails at once, psycopg raises ``OperationalError``, SQLAlchemy
discards the connection (and the pool's older ones), and the request is answered
503 ``unavailable``. Once the database answers again, fresh connections work: no
restart is needed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any


class Watchdog:
    """Cuts PostgreSQL connections busy for longer than ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._busy: dict[int, tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def arm(self, dbapi_connection: Any) -> None:
        with self._lock:
            self._busy[id(dbapi_connection)] = (time.monotonic() + self.seconds, dbapi_connection)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tvreg-db-watchdog", daemon=True)
                self._thread.start()

    def disarm(self, dbapi_connection: Any) -> None:
        with self._lock:
            self._busy.pop(id(dbapi_connection), None)

    @contextlib.contextmanager
    def watch(self, dbapi_connection: Any) -> Iterator[None]:
        self.arm(dbapi_connection)
        try:
            yield
        finally:
            self.disarm(dbapi_connection)

    def _run(self) -> None:
        tick = min(0.5, self.seconds / 4)
        while True:
            time.sleep(tick)
            now = time.monotonic()
            with self._lock:
                late = [key for key, (deadline, _) in self._busy.items() if deadline <= now]
                cut = [self._busy.pop(key)[1] for key in late]
                if not self._busy:
                    self._thread = None  # the next arm() starts another: no idle thread per engine
            for dbapi_connection in cut:
                _shut_down(dbapi_connection)
            if self._thread is not threading.current_thread():
                return


def _shut_down(dbapi_connection: Any) -> None:
    """Shut the connection's socket down, so that a thread blocked on it wakes with an error."""
    with contextlib.suppress(Exception):
        fd = dbapi_connection.pgconn.socket
        # A duplicate descriptor: shutdown() acts on the shared socket, close() only on the copy.
        with socket.socket(fileno=socket.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
