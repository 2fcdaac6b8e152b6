"""Where artifact bytes live: uploads in flight in :class:`UploadStaging`, published bytes in a :class:`BlobStore`.

Two jobs, two classes. :class:`UploadStaging` holds the bytes of uploads in flight on
local disk (appends at a recorded offset, resumable, fsynced as they arrive) and checks
their size and digest; every backend stages the same way, because object stores have
neither appends nor cheap partial writes. A :class:`BlobStore` holds the checked bytes,
content-addressed: a blob is named by the SHA-256 of its bytes, so a stored blob can
never be silently replaced by other bytes, two versions with equal bytes share one
blob, and a blob linked by a publish that then failed to commit is an orphan that does
no harm (it is collected after a grace period, never served, since no version row
names it).

Locally the staging directory sits inside the blob directory (same filesystem), so a
checked upload becomes a blob with one atomic ``link(2)``: a reader sees the whole blob
or nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import IO, ClassVar

from tvreg._format.fsutil import fsync_dir

from .errors import Conflict, DigestMismatch, SizeMismatch

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_UPLOAD_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_READ = 8 * 1024 * 1024


def digest_hex(digest: str) -> str:
    """The hex part of ``sha256:<hex>``; raises ValueError for anything else."""
    m = _DIGEST.match(digest)
    if not m:
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return m.group(1)


class StagedWriter(ABC):
    """Appends bytes to one staged upload; :meth:`finish` makes them durable."""

    @abstractmethod
    def write(self, data: bytes | bytearray) -> None:
        """Append ``data``. Blocking; call it off the event loop."""

    @abstractmethod
    def finish(self) -> int:
        """Flush and fsync; return the staged length, which becomes the durable offset."""

    @abstractmethod
    def abort(self) -> None:
        """Drop everything written through this writer (truncate back to its start offset)."""


class BlobStore(ABC):
    """Content-addressed storage of published bytes, keyed by digest.

    Every method is safe to call from several threads and several processes (replicas)
    sharing the store.

    ``local`` says whether :meth:`path` is free (blobs are local files, served as they
    are); a remote store sets it to False and readers stream through :meth:`open`.
    """

    local: ClassVar[bool] = True

    def create(self) -> None:  # noqa: B027 - optional hook, a no-op unless a store needs it
        """Prepare the store and check it is usable; the server calls it at startup so a bad
        location fails before the first request. Idempotent."""

    def size(self, digest: str) -> int:
        """The length of blob ``digest`` in bytes. Raises FileNotFoundError when it is missing."""
        return os.stat(self.path(digest)).st_size

    def open(self, digest: str) -> IO[bytes]:
        """A seekable binary file of blob ``digest``, for streamed and ranged reads.

        Blocking (call it and its reads off the event loop); a remote store fetches only the
        bytes read (plus read-ahead). The caller closes it. Raises FileNotFoundError when the
        blob is missing.
        """
        return open(self.path(digest), "rb")

    @abstractmethod
    def link(self, src: Path, digest: str) -> None:
        """Atomically make the local file ``src`` (bytes already checked to hash to ``digest``) the blob ``digest``.

        Durable on return (file and directory fsynced). Idempotent: linking bytes whose
        blob already exists keeps the existing blob and refreshes its age for garbage
        collection. ``src`` stays where it is (the caller discards it).
        """

    @abstractmethod
    def exists(self, digest: str) -> bool:
        """Whether blob ``digest`` is stored."""

    @abstractmethod
    def path(self, digest: str) -> Path:
        """A local file holding blob ``digest``, for zero-copy sends and header parsing.

        Raises FileNotFoundError when the blob is missing.
        """

    @abstractmethod
    def delete(self, digest: str) -> None:
        """Remove blob ``digest`` (garbage collection only; callers prove it is unreferenced)."""

    @abstractmethod
    def blobs(self) -> Iterator[tuple[str, float]]:
        """Every stored blob as ``(digest, mtime)``, for garbage collection."""



class _LocalWriter(StagedWriter):
    def __init__(self, path: Path, offset: int) -> None:
        self._path = path
        self._offset = offset
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            size = os.fstat(self._fd).st_size
            if size < offset:
                raise Conflict(
                    f"the staged bytes of this upload end at {size}, before its recorded offset {offset}; "
                    "start a new upload."
                )
            if size > offset:
                os.ftruncate(self._fd, offset)
            os.lseek(self._fd, offset, os.SEEK_SET)
        except BaseException:
            os.close(self._fd)
            raise

    def write(self, data: bytes | bytearray) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def finish(self) -> int:
        try:
            os.fsync(self._fd)
            return os.fstat(self._fd).st_size
        finally:
            os.close(self._fd)
            self._fd = -1

    def abort(self) -> None:
        if self._fd >= 0:
            try:
                os.ftruncate(self._fd, self._offset)
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = -1


class UploadStaging:
    """The bytes of uploads in flight, one file per upload under ``root/<upload id>``, on local disk.

    Every method is safe to call from several threads and several processes (replicas)
    sharing the directory; uploads are keyed by their id, which is never reused.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def create(self) -> None:
        """Make the directory (the server does this at startup, so a bad path fails early). Idempotent."""
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, upload_id: str) -> Path:
        """The file holding upload ``upload_id``'s bytes; raises ValueError for a malformed id."""
        if not _UPLOAD_ID.match(upload_id):
            raise ValueError(f"not an upload id: {upload_id!r}")
        return self.root / upload_id

    def new(self, upload_id: str) -> None:
        """Create the empty staging file of a new upload (a fresh id, never reused)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path(upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)

    def open(self, upload_id: str, offset: int) -> StagedWriter:
        """Start appending to upload ``upload_id`` at ``offset``.

        Bytes already staged past ``offset`` (from a writer that crashed before its
        offset was recorded) are discarded. Raises :class:`Conflict` when fewer than
        ``offset`` bytes are staged (the staged bytes were lost).
        """
        return _LocalWriter(self.path(upload_id), offset)

    def verify(self, upload_id: str, *, size: int, digest: str) -> Path:
        """Stream the staged bytes through SHA-256, then return the path to them.

        Cost: one sequential read of the upload. Raises :class:`SizeMismatch` or
        :class:`DigestMismatch` (naming both digests) when the bytes are not what was
        declared; the caller then discards them.
        """
        path = self.path(upload_id)
        h = hashlib.sha256()
        received = 0
        buf = bytearray(_READ)
        view = memoryview(buf)
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                received += n
                if received > size:
                    break
                h.update(view[:n])
        if received != size:
            raise SizeMismatch(
                f"the upload received {received} of {size} bytes.", expected=size, received=received
            )
        found = "sha256:" + h.hexdigest()
        if found != digest:
            raise DigestMismatch(
                f"the uploaded bytes hash to {found}, not the declared {digest}; nothing was stored.",
                expected=digest,
                found=found,
            )
        return path

    def discard(self, upload_id: str) -> None:
        """Remove the staged bytes of ``upload_id``, if any. Never fails for a missing upload."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(upload_id))

    def entries(self) -> Iterator[tuple[str, float]]:
        """Every staged upload as ``(upload_id, mtime)``, for garbage collection."""
        if not self.root.is_dir():
            return
        for path in self.root.iterdir():
            if _UPLOAD_ID.match(path.name):
                yield path.name, path.stat().st_mtime


class LocalBlobStore(BlobStore):
    """Blobs under ``root/sha256/ab/abcdef…``.

    The server stages uploads in ``root/uploads`` (:class:`UploadStaging`), on the same
    filesystem, so a checked upload becomes a blob with one ``link(2)``, without copying.
    Point several replicas at one shared directory.
    """

    def __init__(self, root: str | os.PathLike[str], *, create: bool = False) -> None:
        self.root = Path(root)
        self._blobs = self.root / "sha256"
        if create:
            self.create()

    def create(self) -> None:
        """Make the directory (the server does this at startup, so a bad path fails early)."""
        self._blobs.mkdir(parents=True, exist_ok=True)

    def _blob(self, digest: str) -> Path:
        hexd = digest_hex(digest)
        return self._blobs / hexd[:2] / hexd

    def link(self, src: Path, digest: str) -> None:
        dst = self._blob(digest)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(src, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(src, dst)
        except FileExistsError:
            # Refresh the mtime so garbage collection sees the blob as young while the
            # version naming it is being committed.
            os.utime(dst)
            return
        fsync_dir(dst.parent)

    def exists(self, digest: str) -> bool:
        return self._blob(digest).is_file()

    def path(self, digest: str) -> Path:
        path = self._blob(digest)
        if not path.is_file():
            raise FileNotFoundError(path)
        return path

    def delete(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._blob(digest))

    def blobs(self) -> Iterator[tuple[str, float]]:
        if not self._blobs.is_dir():
            return
        for sub in sorted(self._blobs.iterdir()):
            for blob in sorted(sub.iterdir()):
                if re.fullmatch(r"[0-9a-f]{64}", blob.name):
                    yield "sha256:" + blob.name, blob.stat().st_mtime
