"""Engines, sessions and the one place where database errors become API errors.

SQLite and PostgreSQL need different care to behave the same under concurrency:

* SQLite runs in WAL mode with a busy timeout, and write transactions start with
  ``BEGIN IMMEDIATE``: a deferred transaction that reads and then writes fails at once
  with "database is locked" (SQLITE_BUSY_SNAPSHOT) when another writer committed in
  between, which would turn a publish race into 503s instead of one 201 and 409s.
* PostgreSQL gets a connect timeout, a server-side ``statement_timeout`` and, because a
  frozen server enforces nothing, a client-side deadline on every round trip
  (:mod:`registry_server.dbwatchdog`) plus TCP keepalives and ``tcp_user_timeout`` for a
  host that vanished: a stopped, frozen or unreachable database yields a bounded-time
  503 (docs/reliability.md row 25). Pooled connections are pinged before use (under the same
  deadline), so the registry recovers without a restart once the database is back.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    InvalidatePoolError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from .dbwatchdog import Watchdog
from .errors import ApiError, Conflict, ServerFault, Unavailable
from .settings import DEFAULT_DATABASE_TIMEOUT

SQLITE_BUSY_TIMEOUT_MS = 15_000
PG_CONNECT_TIMEOUT_S = 5
# The client-side deadline is this much longer than statement_timeout, so that a merely slow
# statement is cancelled cleanly by the server first.
PG_DEADLINE_MARGIN_S = 2.0
_FRESH = "tvreg_fresh"
# Sync routes run on this many worker threads (registry_server.app), and the pool keeps as
# many connections, so a busy replica reuses them instead of opening and closing overflow
# ones (a PostgreSQL backend fork each).
WORKER_THREADS = 24
_WRITE = "tvreg_write"


def make_engine(url: str, *, timeout: float = DEFAULT_DATABASE_TIMEOUT) -> Engine:
    """An engine for ``url`` with the per-backend settings described above.

    ``timeout`` (seconds) bounds one PostgreSQL statement: ``statement_timeout`` on the
    server, and ``timeout`` + :data:`PG_DEADLINE_MARGIN_S` on the client. Connecting may
    take :data:`PG_CONNECT_TIMEOUT_S`, or ``timeout`` when that is shorter (libpq's
    minimum is 2 s).
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            pool_size=20,
            max_overflow=20,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )
        _sqlite_transactions(engine)
        return engine
    deadline = timeout + PG_DEADLINE_MARGIN_S
    engine = create_engine(
        url,
        pool_size=WORKER_THREADS,
        max_overflow=10,
        pool_timeout=10,
        connect_args={
            "connect_timeout": max(2, min(PG_CONNECT_TIMEOUT_S, math.ceil(timeout))),
            "options": f"-c statement_timeout={round(timeout * 1000)}",
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": round(deadline * 1000),
        },
    )
    _postgres_deadlines(engine, Watchdog(deadline))
    return engine


def _postgres_deadlines(engine: Engine, watchdog: Watchdog) -> None:
    """Put every round trip of ``engine``'s connections under ``watchdog``, pings included."""

    @event.listens_for(engine, "connect")
    def _connected(_dbapi_connection: Any, record: Any) -> None:
        record.info[_FRESH] = True

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        # pool_pre_ping's check, but under the deadline: a frozen server fails it in bounded time.
        if record.info.pop(_FRESH, False):
            return
        try:
            with watchdog.watch(dbapi_connection), dbapi_connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except Exception as exc:
            # Every pooled connection is as suspect as this one: drop them all, reconnect.
            raise InvalidatePoolError(f"a pooled database connection did not answer: {exc}") from exc

    @event.listens_for(engine, "before_cursor_execute")
    def _arm(conn: Any, *_args: Any) -> None:
        watchdog.arm(conn.connection.dbapi_connection)

    @event.listens_for(engine, "after_cursor_execute")
    def _disarm(conn: Any, *_args: Any) -> None:
        watchdog.disarm(conn.connection.dbapi_connection)

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _arm_end(conn: Any) -> None:
        watchdog.arm(conn.connection.dbapi_connection)

    @event.listens_for(engine, "handle_error")
    def _failed(context: Any) -> None:
        with contextlib.suppress(Exception):
            watchdog.disarm(context.connection.connection.dbapi_connection)

    @event.listens_for(engine, "reset")
    def _reset(dbapi_connection: Any, _record: Any, _state: Any) -> None:
        watchdog.arm(dbapi_connection)  # the rollback of a connection going back to the pool

    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection: Any, _record: Any) -> None:
        if dbapi_connection is not None:
            watchdog.disarm(dbapi_connection)


def _sqlite_transactions(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module so that we choose DEFERRED or IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def write_session(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose transaction takes the write lock up front (``BEGIN IMMEDIATE`` on SQLite).

    The caller commits; leaving the block without committing rolls back.
    """
    with factory() as session:
        session.connection(execution_options={_WRITE: True})
        yield session


def translate(exc: SQLAlchemyError) -> ApiError:
    """Map a SQLAlchemy error that escaped a route to the answer a client should get.

    Connection failures, timeouts and "database is locked" are transient: 503 with
    ``Retry-After``. An integrity error that no route handled is still a conflict.
    Anything else is a bug in the registry, reported as 500 without internals.
    """
    if isinstance(exc, IntegrityError):
        return Conflict("the request conflicts with a concurrent change; retry it.")
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return Unavailable(
            "the registry database did not answer in time or the connection was lost; retry shortly.",
            retry_after=2,
        )
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout, DisconnectionError)):
        return Unavailable("the registry database is unavailable or busy; retry shortly.", retry_after=5)
    return ServerFault("the registry hit an unexpected database error.")
