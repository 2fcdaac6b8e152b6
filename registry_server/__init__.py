"""tvreg's registry server: FastAPI + SQLAlchemy metadata database + content-addressed blob store.

Run it with ``tvreg-server`` (see :mod:`registry_server.cli`); the HTTP contract is
docs/registry-api.md.
"""

__version__ = "0.1.0"
