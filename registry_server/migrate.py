"""Schema migrations: run them, and refuse to serve a database that is not at head.

The schema is only ever created by the Alembic migrations in ``migrations/`` (never by
``create_all``), so a fresh database and an upgraded one are the same database. The
Alembic configuration is built here in code, which keeps ``tvreg-server db upgrade``
working from any directory and from an installed package.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from .errors import SchemaOutdated


def _migrations_dir() -> Path:
    """The ``migrations`` package; beside this package in a source tree whose editable
    install predates ``migrations/`` (setuptools' editable finder only maps the packages
    that existed when it was installed)."""
    try:
        import migrations
    except ImportError:
        return Path(__file__).resolve().parents[1] / "migrations"
    return Path(migrations.__file__).resolve().parent


MIGRATIONS_DIR = _migrations_dir()
UPGRADE_HINT = "run `tvreg-server db upgrade` (with the same --data or --database-url) first"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade the database to ``revision``; return the revisions before and after."""
    before = current_revision(engine)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return before, current_revision(engine)


def check_schema(engine: Engine) -> None:
    """Raise :class:`SchemaOutdated` unless the database is exactly at this server's head.

    The message names the fix (`tvreg-server db upgrade`); a database *ahead* of head
    was migrated by a newer tvreg-server and is refused too.
    """
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        has_tables = bool(inspect(engine).get_table_names())
        what = "has tables but no migration record" if has_tables else "has no registry schema yet"
        raise SchemaOutdated(f"the registry database {what}; {UPGRADE_HINT}.")
    known = {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if current not in known:
        raise SchemaOutdated(
            f"the registry database is at schema revision {current}, which this tvreg-server does not know "
            f"(its newest is {head}); upgrade tvreg-server."
        )
    raise SchemaOutdated(
        f"the registry database schema is at revision {current}, behind this server's {head}; {UPGRADE_HINT}."
    )
