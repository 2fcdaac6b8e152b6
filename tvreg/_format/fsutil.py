"""Crash-safe file operations: write to a temporary path, fsync, rename.

Every file tvreg creates goes through here, so a kill -9 or a full disk leaves
either the old file or the new one, never a torn one, and ENOSPC/EFBIG become a
:class:`~tvreg.errors.DiskFull` that names the path.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO

from .._util.progress import NULL_PROGRESS, Progress
from ..errors import DiskFull

_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_temp(directory: Path, name: str, suffix: str = ".tmp") -> tuple[int, str]:
    """A temporary file beside ``name`` with ordinary permissions (mkstemp's are 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=directory)
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def disk_errors(path: Path, needed: int | None = None) -> Iterator[None]:
    """Translate out-of-space errors raised inside the block into :class:`DiskFull`."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _FULL:
            need = f"; about {needed / 2**20:.1f} MiB are needed" if needed else ""
            raise DiskFull(
                f"no space left on the device while writing `{path}`{need}.",
                hints=["free some space or point the output elsewhere; nothing was changed"],
            ) from exc
        raise


@contextlib.contextmanager
def atomic_writer(path: Path, mode: str = "wb", *, permissions: int | None = None) -> Iterator[IO]:
    """Open a temporary sibling of ``path``; on success fsync it and rename over ``path``.

    ``permissions`` (e.g. 0o600 for secrets) is applied before any byte is written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp(path.parent, path.name)
    try:
        if permissions is not None:
            os.fchmod(fd, permissions)
        with disk_errors(path), os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Hard-link ``src`` to ``dst`` (no extra disk), copying when links are impossible.

    Takes ``str`` too: ``shutil.copytree`` calls it as its ``copy_function`` with string paths.
    """
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def _renameat2_exchange(a: Path, b: Path) -> bool:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def swap_directories(current: Path, staged: Path) -> None:
    """Atomically put ``staged`` at ``current``'s path; the old tree ends up at ``staged``.

    On Linux this is one ``renameat2(RENAME_EXCHANGE)`` call: at every instant the
    path names either the complete old directory or the complete new one. Elsewhere it
    falls back to two renames, with a window where ``current`` does not exist.
    """
    if not _renameat2_exchange(current, staged):
        aside = staged.with_name(staged.name + ".old")
        os.rename(current, aside)
        os.rename(staged, current)
        os.rename(aside, staged)
    fsync_dir(current.parent)


class WriteBehind:
    """Make files durable off the critical path: written data is flushed to disk while more is written.

    Why: Linux starts writing a file's dirty pages back only once the machine's dirty memory
    passes ``vm.dirty_background_ratio`` (GiBs on a large machine), so the ``fsync`` that
    ends each 500 MB shard of an install waited for the whole shard with the CPUs idle,
    0.2-0.8 s a shard (1.7 s of a 12 s install of a 5.5e8-parameter model). Here one thread
    ``fdatasync``s a file each ``every`` bytes written to it, and a finished file's ``fsync``
    runs there too while the next file is written. Nothing is weaker: :meth:`wait` returns
    only once every finished file is durable and raises the first error any sync met, and
    callers rename nothing into place before it returns.

    Use as a context manager; :meth:`wrote` after each write, :meth:`finished` after the
    last (the file object may then be closed), :meth:`wait` before the rename.
    """

    def __init__(self, every: int = 64 << 20) -> None:
        self._every = every
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tvreg-sync")
        # file object (held, so it is never mistaken for a later one) → [own fd, bytes since the last sync, that sync]
        self._files: dict[IO, list] = {}
        self._syncs: list[Future] = []

    def wrote(self, f: IO, nbytes: int) -> None:
        """Count ``nbytes`` written to ``f``; past ``every`` since the last sync, start another (one at a time)."""
        state = self._state(f)
        state[1] += nbytes
        if state[1] >= self._every and (state[2] is None or state[2].done()):
            f.flush()
            state[1] = 0
            state[2] = self._pool.submit(_datasync, state[0])
            self._syncs.append(state[2])

    def finished(self, f: IO) -> None:
        """``f`` holds all its bytes: fsync it in the background (its own descriptor stays open till then)."""
        f.flush()
        fd = self._state(f)[0]
        del self._files[f]
        self._syncs.append(self._pool.submit(_fsync_close, fd))

    def wait(self) -> None:
        """Return once every finished file is on disk; raise the first error a sync met.

        Every sync's error counts, not only the last one's: once ``fdatasync`` has reported
        a failed write-back, a later ``fsync`` of the same descriptor succeeds.
        """
        errors = [exc for fut in self._syncs if (exc := fut.exception()) is not None]
        self._syncs = []
        if errors:
            raise errors[0]

    def _state(self, f: IO) -> list:
        if f not in self._files:
            self._files[f] = [os.dup(f.fileno()), 0, None]
        return self._files[f]

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if exc_info[0] is None:
                self.wait()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the sync thread once its syncs are done, raising nothing; files never finished are let go."""
        self._pool.shutdown(wait=True)
        for fd, _, _ in self._files.values():  # files abandoned by an error: nothing to make durable
            with contextlib.suppress(OSError):
                os.close(fd)
        self._files.clear()


def _datasync(fd: int) -> None:
    getattr(os, "fdatasync", os.fsync)(fd)


def _fsync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_DIGEST_CHUNK = 8 << 20


def file_sha256(path: Path, *, progress: Progress = NULL_PROGRESS, limit: int | None = None) -> str:
    """``sha256:<hex>`` of a file (or of its first ``limit`` bytes).

    Here rather than in the download cache: the artifact format (which the registry imports)
    needs it, and the format must not depend on the client's cache.
    """
    h = hashlib.sha256()
    left = limit
    with open(path, "rb") as f:
        while left is None or left > 0:
            chunk = f.read(_DIGEST_CHUNK if left is None else min(_DIGEST_CHUNK, left))
            if not chunk:
                break
            h.update(chunk)
            progress.advance(len(chunk))
            if left is not None:
                left -= len(chunk)
    return "sha256:" + h.hexdigest()


def hash_mapped(fd: int, size: int, h: hashlib._Hash, *, start: int = 0) -> None:
    """Feed ``size`` bytes of the file ``fd`` from offset ``start`` (a multiple of the page size) to ``h``,
    reading them mapped: pages already in the cache are hashed where they are, with no copy."""
    if size <= 0:
        return
    with mmap.mmap(fd, size, prot=mmap.PROT_READ, offset=start) as view:
        for lo in range(0, size, _DIGEST_CHUNK):
            h.update(memoryview(view)[lo : min(lo + _DIGEST_CHUNK, size)])


def append_hashed(src: int, size: int, out: int, h: hashlib._Hash, *, start: int = 0) -> None:
    """Append ``size`` bytes of the file ``src`` (an fd) from offset ``start`` (a multiple of the page
    size) to ``out`` (an fd, at its position) and feed them to ``h``, the hash on a thread of its own
    reading the same pages mapped.

    Why: finishing an artifact appends its body after a header known only at the end. One loop
    that read each block into fresh memory, wrote it and hashed it spent ~1.9 s on a 557 MiB body;
    reading into one reused buffer and writing costs ~0.12 s, and the hash (~0.3 s) runs beside it
    without the GIL. ``copy_file_range`` measured 1.4 s on a body tvreg had just written (0.17 s on
    a file written in one go), so it is not used.
    """
    if size <= 0:
        return
    hashed: list[BaseException] = []

    def digest() -> None:
        try:
            hash_mapped(src, size, h, start=start)
        except BaseException as exc:  # re-raised by the caller's thread
            hashed.append(exc)

    worker = threading.Thread(target=digest, name="tvreg-hash")
    worker.start()
    try:
        block = memoryview(bytearray(min(_DIGEST_CHUNK, size)))
        done = 0
        while done < size:
            n = os.preadv(src, [block[: min(len(block), size - done)]], start + done)
            if n == 0:
                raise OSError(errno.EIO, f"the file ended {size - done} bytes early")
            view = block[:n]
            while view:
                view = view[os.write(out, view) :]
            done += n
    finally:
        worker.join()
    if hashed:
        raise hashed[0]
