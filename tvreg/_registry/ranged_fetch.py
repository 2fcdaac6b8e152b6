"""Ranged downloads of large blobs over several connections, for the download cache.

Why: one HTTP connection on loopback or a fast link is bound by one core's receive
path (parser, copies, writes); several connections each fetching a byte range of the
same artifact spread that over the cores, as the Hub's transfer tool does. Small blobs
gain nothing and keep the single-stream path.

How (``BlobCache.fetch`` calls :func:`download` under the digest's lock):

- The blob is cut into pieces of :data:`PIECE` bytes; ``TVREG_DOWNLOAD_CONNECTIONS``
  workers (default 4) each request one piece at a time with ``Range: bytes=a-b`` and
  ``pwrite`` it into a ``.sparse`` temporary file of the final size.
- One thread hashes the file in order, through a read-only mapping of the bytes below the lowest point
  not yet written, so the SHA-256 is ready when the last piece lands; nothing is used
  unless the whole file hashes to the announced digest (the caller renames it).
- A piece that ends early is asked for again from where it stopped (``Range``),
  :data:`RETRIES` times; a server that ignores ``Range`` (answers 200 to the first
  piece) raises :class:`RangeIgnored` before any byte is written, and the caller falls
  back to one stream.
- The request for the piece at byte 0, first try, carries ``X-Tvreg-Download: first``
  and every other request ``more``, so the registry counts the download once whatever
  the piece size and retries (docs/registry-api.md).
- Completed pieces are appended to a journal beside the file (``.sparse.pieces``).
  A killed download is resumed from its journal: only the pieces it lists are kept
  (and hashed again with the rest). A ``.sparse`` file without its journal cannot tell
  written bytes from holes, so it is discarded, never taken as a valid prefix; the
  single-stream path never looks at ``.sparse`` files at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from .._format.faults import crash_point
from .._format.fsutil import disk_errors
from .._util.progress import Progress
from ..errors import ConfigError, DownloadError, RegistryError

CONNECTIONS_ENV = "TVREG_DOWNLOAD_CONNECTIONS"
DEFAULT_CONNECTIONS = 4
THRESHOLD = 64 << 20  # blobs smaller than this use one connection
PIECE = 32 << 20
RETRIES = 3
_HASH_READ = 8 << 20


class RangeIgnored(RegistryError):
    """The server answered a bounded ``Range`` request with the whole blob (200)."""


class RangedSource(Protocol):
    label: str

    def open_range(self, start: int, end: int, *, first: bool = False) -> AbstractContextManager[Iterator[bytes]]:
        """Bytes ``[start, end)``; raises :class:`RangeIgnored` when the server sends all instead.

        ``first`` is set on the one request that begins the download (the first try of the
        piece at byte 0), so the registry counts the download once.
        """
        ...


def connections() -> int:
    """``TVREG_DOWNLOAD_CONNECTIONS`` (default 4); 1 turns ranged downloads off."""
    raw = os.environ.get(CONNECTIONS_ENV, "").strip()
    if not raw:
        return DEFAULT_CONNECTIONS
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= 64:
        raise ConfigError(
            f"{CONNECTIONS_ENV}={raw!r} is not a number of connections from 1 to 64.",
            hints=[f"unset {CONNECTIONS_ENV} for the default ({DEFAULT_CONNECTIONS}), or set 1 for one stream"],
        )
    return n


def wanted(size: int, source: object) -> bool:
    """Whether a blob of ``size`` bytes from ``source`` is downloaded in ranged pieces."""
    return size >= max(THRESHOLD, 1) and size > PIECE and hasattr(source, "open_range") and connections() > 1


def claim(shard: Path, hexd: str, host: str, abandoned) -> Path:
    """A fresh ``.sparse`` file for ``hexd``, taking over one (with its journal) a killed download left.

    The journal is renamed first: a kill between the two renames leaves a file without
    a journal, which :func:`download` discards rather than trusts.
    """
    mine = shard / f".{hexd}.{host}-{os.getpid()}-{uuid.uuid4().hex[:12]}.sparse"
    for old in sorted(shard.glob(f".{hexd}.*.sparse")):
        if not abandoned(old):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.rename(_journal(old), _journal(mine))
        try:
            os.rename(old, mine)
            break
        except FileNotFoundError:
            with contextlib.suppress(FileNotFoundError):
                _journal(mine).unlink()
            continue
    return mine


def _journal(path: Path) -> Path:
    return path.with_name(path.name + ".pieces")


def remove(path: Path) -> None:
    """Delete a ``.sparse`` file and its journal."""
    for p in (_journal(path), path):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _pieces(size: int) -> list[tuple[int, int]]:
    return [(s, min(s + PIECE, size)) for s in range(0, size, PIECE)]


def _done_pieces(path: Path, size: int, progress: Progress, label: str) -> set[tuple[int, int]]:
    """The pieces a killed download of this file completed, by its journal; discards what it cannot trust."""
    if not path.exists():
        return set()
    journal = _journal(path)
    have = path.stat().st_size
    try:
        lines = journal.read_text().splitlines()
    except FileNotFoundError:
        if have:
            progress.note(
                f"an interrupted download of {label} left pieces with no record of which were complete; "
                "downloading it from the start."
            )
            os.truncate(path, 0)
        return set()
    valid = set(_pieces(size))
    done = set()
    for line in lines:
        parts = line.split()
        with contextlib.suppress(ValueError):
            piece = (int(parts[0]), int(parts[1]))
            if len(parts) == 2 and piece in valid and piece[1] <= have:
                done.add(piece)
    return done


class _Writer:
    """The shared state of one ranged download: the file, what is written, and the in-order hash."""

    def __init__(self, fd: int, size: int, pieces: list[tuple[int, int]], done: set[tuple[int, int]]) -> None:
        self.fd, self.size = fd, size
        self.pieces = pieces
        self.written = {p: (p[1] - p[0] if p in done else 0) for p in pieces}
        self.cond = threading.Condition()
        self.failed: BaseException | None = None
        self.hashed = 0

    def prefix(self) -> int:
        """The end of the contiguous written region from byte 0."""
        end = 0
        for p in self.pieces:
            end = p[0] + self.written[p]
            if self.written[p] < p[1] - p[0]:
                break
        return end

    def wrote(self, piece: tuple[int, int], n: int, progress: Progress) -> None:
        with self.cond:
            self.written[piece] += n
            progress.advance(n)
            self.cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self.cond:
            if self.failed is None:
                self.failed = exc
            self.cond.notify_all()

    def hash_in_order(self, h) -> None:
        """Hash the file front to back as its prefix fills (runs on its own thread).

        The bytes are hashed where the writers left them, in the page cache, through a
        read-only mapping of at most :data:`_HASH_READ` bytes at a time: no copy back into
        this process (hashlib drops the GIL on them), and no more of the file mapped than that.
        """
        while self.hashed < self.size:
            with self.cond:
                while (upto := self.prefix()) <= self.hashed and self.failed is None:
                    self.cond.wait()
                if self.failed is not None:
                    return
            while self.hashed < upto:
                end = min(self.hashed + _HASH_READ, upto)
                base = self.hashed - self.hashed % mmap.ALLOCATIONGRANULARITY
                with mmap.mmap(self.fd, end - base, prot=mmap.PROT_READ, offset=base) as window:
                    with memoryview(window) as view, view[self.hashed - base :] as part:
                        h.update(part)
                self.hashed = end


def download(path: Path, digest: str, size: int, source: RangedSource, progress: Progress) -> None:
    """Download ``source`` into ``path`` in ranged pieces; a resumed download that fails verification restarts once."""
    try:
        resumed = _download(path, digest, size, source, progress)
    except DownloadError as exc:
        if not (exc.found and getattr(exc, "resumed", False)):
            raise
        progress.note(f"the resumed download of {source.label} did not verify; downloading it from the start.")
        _download(path, digest, size, source, progress)
        return
    del resumed


def _download(
    path: Path, digest: str, size: int, source: RangedSource, progress: Progress, *, workers: int | None = None
) -> bool:
    """Download ``source`` into ``path`` (a ``.sparse`` file) in ranged pieces and verify it.

    Returns whether pieces of an earlier, killed download were reused. Raises
    :class:`RangeIgnored` (nothing written) when the server does not honour ``Range``;
    :class:`DownloadError` for a short, long or corrupt body (a corrupt file and its
    journal are deleted; a short one keeps its completed pieces for the next run).
    """
    label = source.label
    pieces = _pieces(size)
    with disk_errors(path):
        done = _done_pieces(path, size, progress, label)
    journal = _journal(path)
    if not done:
        with contextlib.suppress(FileNotFoundError):
            journal.unlink()
    todo = [p for p in pieces if p not in done]
    if done:
        kept = sum(e - s for s, e in done)
        progress.note(
            f"resuming the download of {label}: {len(done)} of {len(pieces)} pieces "
            f"({kept / 2**20:.0f} of {size / 2**20:.0f} MiB) were already downloaded; all bytes are hashed again."
        )
    n_workers = max(1, min(workers or connections(), len(todo) or 1))
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    h = hashlib.sha256()
    state = _Writer(fd, size, pieces, done)
    queue = list(todo)
    queue_lock = threading.Lock()
    journal_lock = threading.Lock()
    probe_ok = threading.Event()
    progress.task(f"Downloading {label} ({n_workers} connections)", size)
    progress.advance(sum(e - s for s, e in done))
    try:
        with disk_errors(path, size):
            journal.touch()
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)

        def fetch_piece(piece: tuple[int, int], probe: bool) -> None:
            start, end = piece
            attempts = 0
            while True:
                pos = start + state.written[piece]
                if pos >= end:
                    break
                try:
                    with source.open_range(pos, end, first=pos == 0 and attempts == 0) as chunks:
                        if probe:
                            probe_ok.set()
                        for chunk in chunks:
                            if state.failed is not None:
                                return
                            if pos + len(chunk) > end:
                                raise DownloadError(
                                    f"the registry sent more than the {end - start} bytes asked for at byte "
                                    f"{start} of {label}.",
                                    expected=digest,
                                    found="",
                                )
                            with disk_errors(path, size):
                                os.pwrite(fd, chunk, pos)
                            pos += len(chunk)
                            state.wrote(piece, len(chunk), progress)
                except DownloadError as exc:
                    if exc.found is not None:
                        raise
                if pos >= end:
                    break
                attempts += 1
                if attempts > RETRIES:
                    raise DownloadError(
                        f"the registry kept cutting the piece of {label} at bytes {start}-{end - 1} short "
                        f"(stopped at {pos}, {RETRIES + 1} tries).",
                        expected=digest,
                        hints=["run the command again: the download resumes from its completed pieces"],
                    )
            with journal_lock, disk_errors(journal):
                with open(journal, "a") as f:
                    f.write(f"{start} {end}\n")
            crash_point("download:piece")

        def worker(probe: bool) -> None:
            try:
                if not probe:
                    while not probe_ok.wait(0.05):
                        if state.failed is not None:
                            return
                while state.failed is None:
                    with queue_lock:
                        if not queue:
                            return
                        piece = queue.pop(0)
                    fetch_piece(piece, probe)
                    probe = False
            except BaseException as exc:
                state.fail(exc)

        if not queue:
            probe_ok.set()
        with ThreadPoolExecutor(n_workers + 1, thread_name_prefix="tvreg-range") as pool:
            hashing = pool.submit(state.hash_in_order, h)
            for i in range(n_workers):
                pool.submit(worker, i == 0)
            try:
                hashing.result()
            except BaseException as exc:
                state.fail(exc)
                raise
        if state.failed is not None:
            raise state.failed
    finally:
        progress.done()
        with contextlib.suppress(OSError):
            if state.failed is None:
                os.fsync(fd)
        os.close(fd)
    found = "sha256:" + h.hexdigest()
    if found != digest:
        remove(path)
        error = DownloadError(
            f"the bytes of {label} hash to {found}, but the registry announced {digest}.",
            expected=digest,
            found=found,
            hints=["the registry's copy or the connection is corrupt; report it to the registry's admins"],
        )
        error.resumed = bool(done)  # type: ignore[attr-defined]
        raise error
    journal.unlink()
    return bool(done)
