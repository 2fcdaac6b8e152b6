"""The handles every request shares: settings, database engine and sessions, blob store.

One :class:`Context` per process, stored on ``app.state``. It holds nothing that two
replicas would need to agree on: all shared state lives in the database or the store
(the read cache is only trusted for the database generation it was filled under).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from .db import make_engine, make_sessionmaker
from .downloads import DownloadCounter
from .ratelimit import AuthFailureLimiter
from .readcache import ReadCache
from .settings import Settings
from .storage import BlobStore, LocalBlobStore, UploadStaging


@dataclass
class Context:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: BlobStore
    staging: UploadStaging
    auth_failures: AuthFailureLimiter = field(default_factory=AuthFailureLimiter)
    read_cache: ReadCache = field(default_factory=ReadCache)
    downloads: DownloadCounter | None = None  # started with the application (registry_server.app)
    instance: str = ""  # lease-token prefix while serving (see registry_server.uploads)

    @classmethod
    def open(cls, settings: Settings, *, engine: Engine | None = None) -> Context:
        store = open_store(settings)
        engine = engine or make_engine(settings.database_url, timeout=settings.database_timeout)
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            store=store,
            staging=open_staging(settings),
            auth_failures=AuthFailureLimiter(settings.auth_failure_limit),
        )

    def close(self) -> None:
        self.engine.dispose()


def open_staging(settings: Settings) -> UploadStaging:
    """Where uploads in flight are staged: ``blob_dir/uploads`` on local disk, whatever the blob store."""
    return UploadStaging(Path(settings.blob_dir) / "uploads")


def open_store(settings: Settings) -> BlobStore:
    """The blob store the settings name: an object store for ``blob_url``, else ``blob_dir``."""
    if settings.blob_url:
        from .storage_fsspec import FsspecBlobStore

        return FsspecBlobStore(settings.blob_url, staging=settings.blob_dir, options=settings.blob_options)
    return LocalBlobStore(settings.blob_dir)
