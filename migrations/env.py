"""Alembic environment: runs the migrations on the connection or URL the caller provides.

``registry_server.migrate`` passes an open connection in ``config.attributes`` (so the
server and the CLI share one engine setup, SQLite pragmas included); the plain
``alembic`` command can pass ``-x url=...`` or set ``sqlalchemy.url``. SQLite cannot
ALTER most things in place, so migrations run in Alembic's batch mode there.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from registry_server.db import make_engine
from registry_server.models import Base
from registry_server.settings import normalize_database_url

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database: pass `-x url=...` or use `tvreg-server db upgrade`.")
    return normalize_database_url(url)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
