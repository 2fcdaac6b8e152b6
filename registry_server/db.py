"""Engines, sessions and the one place where database errors become API errors.

SQLite and PostgreSQL need different care to behave the same under concurrency:

* SQLite runs in WAL mode with a busy timeout, and write transactions start with
  ``BEGIN IMMEDIATE``: a deferred transaction that reads and then writes fails at once
  with "database is locked" (SQLITE_BUSY_SNAPSHOT) when another writer committed in
  between, which would turn a publish race into 503s instead of one 201 and 409s.
* PostgreSQL gets a connect timeout and a statement timeout, so a stopped or hung
  server yields a bounded-time 503 (FAULTS.md row 25), and ``pool_pre_ping`` so the
  registry recovers without a restart once the database is back.
"""

from __future__ import annotations

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
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from .errors import ApiError, Conflict, ServerFault, Unavailable

SQLITE_BUSY_TIMEOUT_MS = 15_000
PG_STATEMENT_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 5
# Sync routes run on this many worker threads (registry_server.app), and the pool keeps as
# many connections, so a busy replica reuses them instead of opening and closing overflow
# ones (a PostgreSQL backend fork each).
WORKER_THREADS = 24
_WRITE = "tvreg_write"


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the per-backend settings described above."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            pool_size=20,
            max_overflow=20,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )
        _sqlite_transactions(engine)
        return engine
    return create_engine(
        url,
        pool_size=WORKER_THREADS,
        max_overflow=10,
        pool_pre_ping=True,
        pool_timeout=10,
        connect_args={
            "connect_timeout": PG_CONNECT_TIMEOUT_S,
            "options": f"-c statement_timeout={PG_STATEMENT_TIMEOUT_MS}",
        },
    )


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
        return Unavailable("the registry database connection was lost; retry shortly.", retry_after=2)
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout, DisconnectionError)):
        return Unavailable("the registry database is unavailable or busy; retry shortly.", retry_after=5)
    return ServerFault("the registry hit an unexpected database error.")
