"""The ``tvreg-server`` entry point: check the server's dependencies, then run :mod:`registry_server.cli`.

Why a separate module: ``pip install tvreg`` is the client alone, and the server's packages
(FastAPI, uvicorn, SQLAlchemy, Alembic) come with ``pip install 'tvreg[server]'``. Without
them, importing :mod:`registry_server.cli` fails on its first line with a traceback; this
module imports nothing of the server until it has checked, and otherwise says in one line
what is missing and how to install it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

#: Imported by every ``tvreg-server`` command (psycopg only for PostgreSQL, so it is not here).
REQUIRED = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic")


def missing_packages() -> list[str]:
    """The server's required packages that cannot be imported, in :data:`REQUIRED` order."""
    missing = []
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``tvreg-server``, or exit 1 naming the missing packages (no traceback)."""
    missing = missing_packages()
    if missing:
        sys.stderr.write(
            f"error: `tvreg-server` needs the registry's packages, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed.\n"
            "hint: pip install 'tvreg[server]'\n"
        )
        raise SystemExit(1)
    from .cli import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    main()
