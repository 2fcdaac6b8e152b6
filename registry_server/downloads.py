"""Artifact download counts, kept in memory and added to the database in batches.

Why batches: a counter written per download would take the database's write lock on
every artifact GET (on SQLite, the one lock every publish also needs) and bump the read
cache's generation per request. Instead each replica counts in a dict and, every
``interval`` seconds (``TVREG_DOWNLOAD_FLUSH``), adds its counts with one
``UPDATE versions SET downloads = downloads + n`` per version touched, in one short
transaction; replicas add, so none overwrites another's counts. Counts are shown on the
skill page and the front page's "Most installed" list: they may lag by one interval, and
a replica killed with -9 loses at most one interval of its counts (a count, not data).
A flush that fails (database down) keeps its counts for the next one.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from .db import write_session
from .models import Version

log = logging.getLogger("registry_server")


class DownloadCounter:
    """Per-process download counts of versions, flushed every ``interval`` seconds by a thread."""

    def __init__(self, sessions: sessionmaker[Session], interval: float) -> None:
        self.sessions = sessions
        self.interval = interval
        self._pending: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def count(self, version_id: int) -> None:
        """One more download of ``version_id`` (a dict update: no I/O, no database lock)."""
        with self._lock:
            self._pending[version_id] = self._pending.get(version_id, 0) + 1

    def flush(self) -> int:
        """Add the pending counts to the database; return how many versions were updated."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        try:
            with write_session(self.sessions) as s:
                for version_id, n in sorted(pending.items()):
                    s.execute(
                        update(Version).where(Version.id == version_id).values(downloads=Version.downloads + n)
                    )
                s.commit()
        except SQLAlchemyError as exc:
            log.warning("download counts kept for the next flush: %s", exc)
            with self._lock:
                for version_id, n in pending.items():
                    self._pending[version_id] = self._pending.get(version_id, 0) + n
            return 0
        return len(pending)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tvreg-downloads", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def close(self) -> None:
        """Stop the thread and flush what is left (a clean shutdown loses no count)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
        self.flush()
