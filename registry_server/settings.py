"""Where the registry keeps its data and how big an artifact may be, resolved once at startup.

Precedence for every value: command-line option, then environment variable, then the
zero-config default (SQLite file and blob directory under ``./registry``), so
``tvreg-server`` with no arguments serves a working registry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DATA_DIR = Path("registry")
DEFAULT_MAX_ARTIFACT_BYTES = 10 * 1024**3
DEFAULT_CHUNK_SIZE = 16 * 1024**2
DEFAULT_REQUEST_TIMEOUT = 60.0
DEFAULT_KEEP_ALIVE_TIMEOUT = 30.0
DEFAULT_AUTH_FAILURE_LIMIT = 20
DEFAULT_DATABASE_TIMEOUT = 30.0
DEFAULT_MAX_OPEN_UPLOADS = 16
DEFAULT_UPLOAD_EXPIRY = 24 * 3600.0
DEFAULT_DOWNLOAD_FLUSH = 10.0

ENV_DATA_DIR = "TVREG_REGISTRY_DATA"
ENV_DATABASE_URL = "TVREG_DATABASE_URL"
ENV_MAX_ARTIFACT_BYTES = "TVREG_MAX_ARTIFACT_BYTES"
ENV_BLOB_URL = "TVREG_BLOB_URL"
ENV_REQUEST_TIMEOUT = "TVREG_REQUEST_TIMEOUT"
ENV_KEEP_ALIVE_TIMEOUT = "TVREG_KEEP_ALIVE_TIMEOUT"
ENV_AUTH_FAILURE_LIMIT = "TVREG_AUTH_FAILURE_LIMIT"
ENV_DATABASE_TIMEOUT = "TVREG_DATABASE_TIMEOUT"
ENV_MAX_OPEN_UPLOADS = "TVREG_MAX_OPEN_UPLOADS"
ENV_UPLOAD_EXPIRY = "TVREG_UPLOAD_EXPIRY"
ENV_NAMESPACE_QUOTA = "TVREG_NAMESPACE_QUOTA"
ENV_DOWNLOAD_FLUSH = "TVREG_DOWNLOAD_FLUSH"


def parse_blob_option(text: str) -> tuple[str, Any]:
    """``key=value`` as given to ``--blob-option``: the value is JSON when it parses, else a string.

    ``client_kwargs={"endpoint_url": "http://minio:9000"}`` gives a dict,
    ``anon=true`` a bool, ``profile=dev`` the string ``"dev"``.
    Raises ValueError when there is no ``=`` or no key.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"`{text}` is not key=value")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


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
        blob_url: an fsspec URL (``s3://bucket/prefix``) to keep blobs in an object store;
            None keeps them in ``blob_dir``. Uploads are staged in ``blob_dir`` either way.
        blob_options: keyword arguments for the object store's fsspec filesystem.
        request_timeout: seconds a client may take to send a request's headers, and to
            send each piece of its body; slower clients get 408 ``request_timeout``.
        keep_alive_timeout: seconds an idle keep-alive connection is kept open.
        auth_failure_limit: failed authentications per client address per minute before
            its authenticated requests get 429 (see :mod:`registry_server.ratelimit`).
        database_timeout: seconds one PostgreSQL statement may take: the server's
            ``statement_timeout``, and (a little later) a client-side deadline that also
            holds when the database is frozen (see :mod:`registry_server.dbwatchdog`).
        max_open_uploads: open upload sessions one user may hold; more are 429.
        upload_expiry: seconds an open upload may sit without a byte before it expires
            (its bytes are dropped and it stops counting against the user).
        namespace_quota: bytes of artifacts and sketches one namespace may hold; a publish
            past it is 507 ``quota_exceeded``. None: no quota.
        download_flush: seconds between two additions of the counted artifact downloads
            to the database (see :mod:`registry_server.downloads`).
    """

    data_dir: Path
    database_url: str
    max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES
    chunk_size: int = DEFAULT_CHUNK_SIZE
    blob_url: str | None = None
    blob_options: Mapping[str, Any] = field(default_factory=dict)
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT
    auth_failure_limit: int = DEFAULT_AUTH_FAILURE_LIMIT
    database_timeout: float = DEFAULT_DATABASE_TIMEOUT
    max_open_uploads: int = DEFAULT_MAX_OPEN_UPLOADS
    upload_expiry: float = DEFAULT_UPLOAD_EXPIRY
    namespace_quota: int | None = None
    download_flush: float = DEFAULT_DOWNLOAD_FLUSH

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
        blob_url: str | None = None,
        blob_options: Mapping[str, Any] | None = None,
        request_timeout: float | None = None,
        keep_alive_timeout: float | None = None,
        auth_failure_limit: int | None = None,
        database_timeout: float | None = None,
        max_open_uploads: int | None = None,
        upload_expiry: float | None = None,
        namespace_quota: int | None = None,
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
            blob_url=blob_url or os.environ.get(ENV_BLOB_URL) or None,
            blob_options=dict(blob_options or {}),
            request_timeout=_seconds(request_timeout, ENV_REQUEST_TIMEOUT, DEFAULT_REQUEST_TIMEOUT),
            keep_alive_timeout=_seconds(
                keep_alive_timeout, ENV_KEEP_ALIVE_TIMEOUT, DEFAULT_KEEP_ALIVE_TIMEOUT
            ),
            auth_failure_limit=int(
                auth_failure_limit or os.environ.get(ENV_AUTH_FAILURE_LIMIT) or DEFAULT_AUTH_FAILURE_LIMIT
            ),
            database_timeout=_seconds(database_timeout, ENV_DATABASE_TIMEOUT, DEFAULT_DATABASE_TIMEOUT),
            max_open_uploads=int(
                max_open_uploads or os.environ.get(ENV_MAX_OPEN_UPLOADS) or DEFAULT_MAX_OPEN_UPLOADS
            ),
            upload_expiry=_seconds(upload_expiry, ENV_UPLOAD_EXPIRY, DEFAULT_UPLOAD_EXPIRY),
            namespace_quota=namespace_quota or int(os.environ.get(ENV_NAMESPACE_QUOTA) or 0) or None,
            download_flush=_seconds(None, ENV_DOWNLOAD_FLUSH, DEFAULT_DOWNLOAD_FLUSH),
        )


def _seconds(value: float | None, env: str, default: float) -> float:
    if value is not None:
        return value
    return float(os.environ.get(env) or default)
