"""Alembic migrations of the registry database; run them with ``tvreg-server db upgrade``."""
