"""Where the registry keeps its data and how big an artifact may be, resolved once at startup.

Precedence for every value: command-line option, then environment variable, then the
zero-config default (SQLite file and blob directory under ``./registry``), so
``tvreg-server`` with no arguments serves a working registry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = Path("registry")
DEFAULT_MAX_ARTIFACT_BYTES = 10 * 1024**3
DEFAULT_CHUNK_SIZE = 16 * 1024**2

ENV_DATA_DIR = "TVREG_REGISTRY_DATA"
ENV_DATABASE_URL = "TVREG_DATABASE_URL"
ENV_MAX_ARTIFACT_BYTES = "TVREG_MAX_ARTIFACT_BYTES"


def normalize_database_url(url: str) -> str:
    """Pin PostgreSQL URLs to the psycopg 3 driver, the only one installed.

    ``postgresql://`` alone would make SQLAlchemy look for psycopg2.
    """
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@dataclass(frozen=True)
class Settings:
    """The registry's configuration.

    Attributes:
        data_dir: holds ``registry.db`` (SQLite) and ``blobs/``; created on first use.
        database_url: a SQLAlchemy URL, SQLite or ``postgresql+psycopg://``.
        max_artifact_bytes: uploads declaring or sending more are refused with 413.
        chunk_size: the PATCH size the server suggests to clients.
    """

    data_dir: Path
    database_url: str
    max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES
    chunk_size: int = DEFAULT_CHUNK_SIZE

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file, or None for a server database."""
        prefix = "sqlite:///"
        if self.database_url.startswith(prefix) and self.database_url != prefix + ":memory:":
            return Path(self.database_url[len(prefix) :])
        return None

    @classmethod
    def resolve(
        cls,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        database_url: str | None = None,
        max_artifact_bytes: int | None = None,
        chunk_size: int | None = None,
    ) -> Settings:
        data = Path(data_dir or os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR).absolute()
        url = database_url or os.environ.get(ENV_DATABASE_URL) or f"sqlite:///{data / 'registry.db'}"
        if max_artifact_bytes is None:
            max_artifact_bytes = int(os.environ.get(ENV_MAX_ARTIFACT_BYTES, DEFAULT_MAX_ARTIFACT_BYTES))
        return cls(
            data_dir=data,
            database_url=normalize_database_url(url),
            max_artifact_bytes=max_artifact_bytes,
            chunk_size=chunk_size or min(DEFAULT_CHUNK_SIZE, max(1, max_artifact_bytes)),
        )
