"""Content-addressed download cache: artifacts fetched from a registry, keyed by SHA-256.

Why content-addressed: a digest names exactly one byte string, so an entry is valid for
every registry and every skill name that points at it, and verifying it needs nothing
but the file. Layout under ``tvreg._util.paths.cache_dir() / "blobs" / "sha256"``::

    ab/ab12…ef                    a complete, verified artifact
    ab/ab12…ef.json               what it was fetched as (name@version, registry), for `cache list`
    ab/.ab12…ef.lock              flock held by the one process downloading that digest
    ab/.ab12…ef.<unique>.partial  a download in progress, or the remains of a killed one
    ab/.ab12…ef.<unique>.sparse   a ranged download of a large blob (pieces, any order),
                                  with ``.sparse.pieces`` listing the completed pieces
                                  (tvreg/ranged_fetch.py)

Guarantees (docs/reliability.md rows 16–19):

- A download streams into a unique ``.partial`` file while its SHA-256 is computed; only
  a file of the announced size and digest is fsynced and renamed to its final name, so
  a kill at any moment leaves no entry, only a partial file.
- Partial files are resumed with ``Range`` only while holding the digest's lock, and the
  result is verified like any download; a resumed download that fails verification is
  restarted once from byte 0. A server that ignores ``Range`` (answers 200) restarts
  the file from 0; a body shorter than announced is refused and kept for resuming.
- Entries are verified on every read. A tampered entry is evicted and fetched once
  more; if the new bytes do not match either, the error names both digests.
- Locks only save bandwidth: without them (a filesystem that ignores ``flock``) several
  processes each write their own partial file and rename a verified one into place; a
  partial file is resumed only when its writer (host and PID in its name) is gone.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from .._format.faults import crash_point
from .._format.fsutil import atomic_write_text, disk_errors, file_sha256, fsync_dir
from .._util.paths import cache_dir
from .._util.progress import NULL_PROGRESS, Progress
from ..errors import DownloadError, RegistryError
from . import ranged_fetch

_DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
_ENTRY_RE = re.compile(r"^[0-9a-f]{64}$")
_READ_CHUNK = 8 << 20
_HASH_PIECE = 4 << 20
_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"
_STALE_SECONDS = 600.0
# Partial files this process is writing right now (threads share a PID).
_ACTIVE: set[str] = set()
_ACTIVE_LOCK = threading.Lock()


class BlobSource(abc.ABC):
    """Where the bytes of one blob come from (a registry artifact URL, in practice).

    ``label`` names the blob in messages, e.g. ``nlp/science@1.2.0``.
    """

    label: str = "blob"

    @abc.abstractmethod
    def open(self, start: int) -> AbstractContextManager[tuple[int, Iterator[bytes]]]:
        """Open the blob for reading from byte ``start``.

        Returns a context manager yielding ``(offset, chunks)``: ``offset`` is where the
        chunks begin, ``start`` when the source honoured the request or 0 when it sends
        the whole blob instead. Iterating ``chunks`` may raise
        :class:`~tvreg.errors.DownloadError` (``found=None``) when the body ends early;
        other failures raise the :class:`~tvreg.errors.RegistryError` family. The cache
        checks sizes and digests itself; the source need not.
        """


@dataclass(frozen=True)
class CacheEntry:
    """One complete blob in the cache, and what it was fetched as (when recorded)."""

    digest: str
    path: Path
    size: int
    mtime: float
    label: str | None


@dataclass(frozen=True)
class VerifyReport:
    """Result of :meth:`BlobCache.verify`: digests that checked out, and those evicted."""

    ok: tuple[str, ...]
    evicted: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PruneReport:
    """Result of :meth:`BlobCache.prune`: files removed and bytes freed."""

    removed: tuple[Path, ...]
    freed_bytes: int


def _hex(digest: str) -> str:
    m = _DIGEST_RE.match(digest or "")
    if not m:
        raise RegistryError(f"`{digest}` is not a sha256 digest (`sha256:` and 64 hex digits).")
    return m.group(1)


def _abandoned(partial: Path) -> bool:
    """Whether no download is writing ``partial``, so it may be resumed (or pruned).

    Only the lock holder writes partial files, so under a working lock every partial is
    abandoned; these checks keep a filesystem without working locks (some network
    filesystems) from resuming a file another download is still writing. The name
    carries the writer's host and PID (``.<hex>.<host>-<pid>-<random>.partial``).
    """
    try:
        host, pid_text, _ = partial.name.split(".")[2].rsplit("-", 2)
        pid = int(pid_text)
    except ValueError:
        return True
    if host != _HOST:
        try:
            return time.time() - partial.stat().st_mtime > _STALE_SECONDS
        except FileNotFoundError:
            return False
    if pid == os.getpid():
        return str(partial) not in _ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class _OverlappedHash:
    """SHA-256 fed in order on a worker thread, so hashing a download overlaps receiving it.

    hashlib drops the GIL for large updates, so on two cores the digest costs almost no
    wall time. Pieces are gathered to :data:`_HASH_PIECE` bytes and at most one is in
    flight, so memory stays two pieces whatever the download's size.
    """

    def __init__(self, h) -> None:
        self._h = h
        self._parts: list[bytes] = []
        self._held = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tvreg-hash")
        self._flight: Future[None] | None = None

    def update(self, data: bytes) -> None:
        self._parts.append(bytes(data))
        self._held += len(data)
        if self._held >= _HASH_PIECE:
            self._send()

    def _send(self) -> None:
        piece = b"".join(self._parts)
        self._parts, self._held = [], 0
        if self._flight is not None:
            self._flight.result()
        self._flight = self._pool.submit(self._h.update, piece)

    def finish(self):
        """The hash object with every byte given so far (waits for the worker)."""
        try:
            if self._parts:
                self._send()
            if self._flight is not None:
                self._flight.result()
        finally:
            self._pool.shutdown(wait=True)
        return self._h


class BlobCache:
    """The download cache. Cheap to construct; every method is safe across processes.

    Args:
        root: the ``sha256`` directory; defaults to ``cache_dir()/blobs/sha256``.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir() / "blobs" / "sha256"

    def path(self, digest: str) -> Path:
        """Where the blob ``digest`` lives once cached (it may not exist)."""
        hexd = _hex(digest)
        return self.root / hexd[:2] / hexd

    # -- reading ------------------------------------------------------------------------------

    def get(self, digest: str, *, progress: Progress = NULL_PROGRESS) -> Path | None:
        """The verified cached blob, or None. A tampered entry is evicted (and None returned)."""
        path = self.path(digest)
        if not path.is_file():
            return None
        found = self._check(path, digest, progress)
        if found is None:
            return path
        self._evict(path)
        progress.note(f"the cached copy of {digest} was corrupt (it hashed to {found}); evicted it.")
        return None

    def _check(self, path: Path, digest: str, progress: Progress) -> str | None:
        """None if ``path`` hashes to ``digest``, else the digest it does hash to."""
        progress.task(f"Verifying cached {path.name[:12]}", path.stat().st_size)
        try:
            found = file_sha256(path, progress=progress)
        finally:
            progress.done()
        if found == digest:
            with contextlib.suppress(OSError):
                os.utime(path)
            return None
        return found

    def _evict(self, path: Path) -> None:
        for p in (path, path.with_name(path.name + ".json")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    # -- fetching -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self, hexd: str, progress: Progress) -> Iterator[None]:
        shard = self.root / hexd[:2]
        shard.mkdir(parents=True, exist_ok=True)
        fd = os.open(shard / f".{hexd}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    raise
                progress.note("another tvreg process is downloading the same artifact; waiting for it.")
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _partials(self, hexd: str) -> list[Path]:
        shard = self.root / hexd[:2]
        found = []
        for p in shard.glob(f".{hexd}.*.partial"):
            with contextlib.suppress(FileNotFoundError):
                found.append((p.stat().st_size, p))
        return [p for _, p in sorted(found, key=lambda sp: sp[0], reverse=True)]

    def _claim_partial(self, hexd: str) -> Path:
        """A fresh unique partial file, taking over the largest one an ended download left."""
        mine = self.root / hexd[:2] / f".{hexd}.{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}.partial"
        with _ACTIVE_LOCK:
            for old in self._partials(hexd):
                if not _abandoned(old):
                    continue
                try:
                    os.rename(old, mine)
                    break
                except FileNotFoundError:
                    continue
            else:
                with disk_errors(mine):
                    mine.touch()
            _ACTIVE.add(str(mine))
        return mine

    def fetch(
        self,
        digest: str,
        size: int,
        source: BlobSource,
        *,
        meta: dict | None = None,
        progress: Progress = NULL_PROGRESS,
    ) -> Path:
        """The cached, verified blob ``digest``, downloaded from ``source`` if needed.

        Args:
            digest: ``sha256:<hex>`` the bytes must hash to.
            size: the number of bytes the blob must have.
            source: where to download it from.
            meta: what it is (``{"name", "version", "registry"}``), recorded for ``cache list``.

        Returns:
            The path of the cache entry; never a partial or unverified file.

        Raises:
            DownloadError: the body was short, longer than ``size``, or hashed to another
                digest (``expected`` and ``found`` name both); no entry is created.
            RegistryError: the source failed.
            DiskFull: no space for the download; the partial file is kept for resuming.
        """
        hexd = _hex(digest)
        final = self.path(digest)
        with self._lock(hexd, progress):
            if final.is_file():
                found = self._check(final, digest, progress)
                if found is None:
                    return final
                self._evict(final)
                progress.note(
                    f"the cached copy of {source.label} was corrupt (it hashed to {found}, not {digest}); "
                    "evicted it and downloading it again."
                )
            partial = None
            if ranged_fetch.wanted(size, source):
                partial = self._fetch_ranged(hexd, digest, size, source, progress)
            if partial is None:
                partial = self._claim_partial(hexd)
            try:
                if partial.suffix == ".partial":
                    self._download_resuming(partial, digest, size, source, progress)
                try:
                    os.replace(partial, final)
                except FileNotFoundError:
                    # Only where locks do not work: another process took our partial file.
                    if not (final.is_file() and self._check(final, digest, progress) is None):
                        raise DownloadError(
                            f"another process removed the download of {source.label} in progress.",
                            expected=digest,
                            hints=["run the command again"],
                        ) from None
                fsync_dir(final.parent)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    if partial.stat().st_size == 0:
                        partial.unlink()
                raise
            finally:
                with _ACTIVE_LOCK:
                    _ACTIVE.discard(str(partial))
            if meta:
                with contextlib.suppress(OSError):
                    atomic_write_text(final.with_name(final.name + ".json"), json.dumps(meta, sort_keys=True))
            return final

    def _download_resuming(
        self, partial: Path, digest: str, size: int, source: BlobSource, progress: Progress
    ) -> None:
        """One stream into ``partial``; a resumed download that fails verification is restarted once from 0."""
        resumed = partial.stat().st_size > 0
        try:
            self._download(partial, digest, size, source, progress)
        except DownloadError as exc:
            if not (resumed and exc.found is not None):
                raise
            progress.note(
                f"the resumed download of {source.label} did not verify; downloading it from the start."
            )
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            with disk_errors(partial):
                partial.touch()
            self._download(partial, digest, size, source, progress)

    def _fetch_ranged(
        self, hexd: str, digest: str, size: int, source: BlobSource, progress: Progress
    ) -> Path | None:
        """A verified ``.sparse`` file downloaded in ranged pieces, or None when the server ignores ``Range``."""
        shard = self.root / hexd[:2]
        with _ACTIVE_LOCK:
            sparse = ranged_fetch.claim(shard, hexd, _HOST, _abandoned)
            _ACTIVE.add(str(sparse))
        try:
            ranged_fetch.download(sparse, digest, size, source, progress)  # type: ignore[arg-type]
            return sparse
        except ranged_fetch.RangeIgnored:
            ranged_fetch.remove(sparse)
            progress.note(f"the registry ignores ranged requests; downloading {source.label} in one stream.")
            return None
        except BaseException:
            with _ACTIVE_LOCK:
                _ACTIVE.discard(str(sparse))
            raise

    def _download(
        self, partial: Path, digest: str, size: int, source: BlobSource, progress: Progress
    ) -> None:
        have = partial.stat().st_size
        if have > size:
            os.truncate(partial, 0)
            have = 0
        h = hashlib.sha256()
        if have:
            with open(partial, "rb") as f:
                while chunk := f.read(_READ_CHUNK):
                    h.update(chunk)
        progress.task(f"Downloading {source.label}", size)
        try:
            if have < size:
                with source.open(have) as (offset, chunks), disk_errors(partial, size - have):
                    with open(partial, "r+b", buffering=0) as f:
                        if offset != have:
                            # The server ignored Range: start again from byte 0.
                            f.truncate(0)
                            h, have = hashlib.sha256(), 0
                        f.seek(have)
                        progress.advance(have)
                        hasher = _OverlappedHash(h)
                        try:
                            for chunk in chunks:
                                if have + len(chunk) > size:
                                    raise DownloadError(
                                        f"the registry sent more than the {size} bytes it announced for "
                                        f"{source.label}.",
                                        expected=digest,
                                        found="",
                                    )
                                f.write(chunk)
                                hasher.update(chunk)
                                have += len(chunk)
                                progress.advance(len(chunk))
                                crash_point("download:chunk")
                        finally:
                            h = hasher.finish()
                            os.fsync(f.fileno())
            else:
                progress.advance(have)
        except DownloadError as exc:
            if exc.found is not None:
                raise
            raise DownloadError(
                f"the download of {source.label} stopped after {have} of {size} bytes.",
                expected=digest,
                hints=["run the command again: the download resumes where it stopped"],
            ) from exc
        finally:
            progress.done()
        if have < size:
            raise DownloadError(
                f"the registry sent {have} of the {size} bytes of {source.label}; refusing the short download.",
                expected=digest,
                hints=["run the command again: the download resumes where it stopped"],
            )
        found = "sha256:" + h.hexdigest()
        if found != digest:
            partial.unlink()
            raise DownloadError(
                f"the bytes of {source.label} hash to {found}, but the registry announced {digest}.",
                expected=digest,
                found=found,
                hints=[
                    "the registry's copy or the connection is corrupt; report it to the registry's admins"
                ],
            )

    # -- maintenance --------------------------------------------------------------------------

    def entries(self) -> list[CacheEntry]:
        """Every complete entry, newest first (not verified; see :meth:`verify`)."""
        out: list[CacheEntry] = []
        if not self.root.is_dir():
            return out
        for shard in self.root.iterdir():
            if not shard.is_dir():
                continue
            for p in shard.iterdir():
                if not _ENTRY_RE.match(p.name):
                    continue
                st = p.stat()
                label = None
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    meta = json.loads(p.with_name(p.name + ".json").read_text())
                    label = f"{meta['name']}@{meta['version']}"
                out.append(CacheEntry("sha256:" + p.name, p, st.st_size, st.st_mtime, label))
        return sorted(out, key=lambda e: e.mtime, reverse=True)

    def verify(self, *, progress: Progress = NULL_PROGRESS) -> VerifyReport:
        """Re-hash every entry; evict those whose bytes changed. Returns what was kept and evicted."""
        ok: list[str] = []
        evicted: list[tuple[str, str]] = []
        for entry in self.entries():
            with self._lock(entry.digest.split(":", 1)[1], progress):
                if not entry.path.is_file():
                    continue
                found = self._check(entry.path, entry.digest, progress)
                if found is None:
                    ok.append(entry.digest)
                else:
                    self._evict(entry.path)
                    evicted.append((entry.digest, found))
        return VerifyReport(tuple(ok), tuple(evicted))

    def prune(self, *, older_than_days: float | None = None, everything: bool = False) -> PruneReport:
        """Remove leftovers of killed downloads, and entries unused for a while (or all).

        A digest's partial files, entry and lock file are touched only while holding its
        lock, so a download in progress is never disturbed. Entries go when ``everything``
        is set or when they were last used more than ``older_than_days`` ago (each
        verified read refreshes an entry's mtime).
        """
        removed: list[Path] = []
        freed = 0
        if not self.root.is_dir():
            return PruneReport((), 0)
        cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None

        def expired(entry: Path) -> bool:
            return entry.is_file() and (everything or (cutoff is not None and entry.stat().st_mtime < cutoff))

        for shard in sorted(p for p in self.root.iterdir() if p.is_dir()):
            digests = {p.name for p in shard.iterdir() if _ENTRY_RE.match(p.name)}
            digests |= {p.name[1:-5] for p in shard.glob(".*.lock") if _ENTRY_RE.match(p.name[1:-5])}
            for hexd in sorted(digests):
                lock = shard / f".{hexd}.lock"
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        continue
                    leftovers = [*shard.glob(f".{hexd}.*.partial"), *shard.glob(f".{hexd}.*.sparse*")]
                    victims = [p for p in leftovers if _abandoned(p)]
                    entry = shard / hexd
                    if expired(entry):
                        victims += [entry, shard / f"{hexd}.json"]
                    for p in victims:
                        with contextlib.suppress(FileNotFoundError):
                            size = p.stat().st_size
                            p.unlink()
                            if p.suffix not in (".json", ".pieces"):
                                removed.append(p)
                                freed += size
                    if not entry.exists():
                        lock.unlink()
                finally:
                    os.close(fd)
            with contextlib.suppress(OSError):
                shard.rmdir()
        return PruneReport(tuple(removed), freed)
