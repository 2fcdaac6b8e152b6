"""Local content-addressed store: pristine general models and installed skill artifacts.

Why: installs are declarative (always θ_G + Σ ω τ from pristine G), so G's original
weights and every installed artifact must outlive the files the user pointed at.
Both are keyed by content (G by fingerprint, artifacts by SHA-256) under
``$XDG_DATA_HOME/tvreg``; a G whose weight files are symlinks into the Hugging Face
cache is referenced there by symlink instead of copied again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from .._format import statcache
from .._format.checkpoint import INDEX_NAME, Checkpoint
from .._format.fsutil import disk_errors, free_bytes, fsync_dir
from .._util.paths import data_dir
from .._util.progress import NULL_PROGRESS, Progress

_FICLONE = 0x40049409


def _clone_or_copy(src: Path, dst: Path, progress: Progress) -> None:
    """Copy ``src`` to ``dst``, as a copy-on-write reflink where the filesystem allows."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
            progress.advance(size)
        except OSError:
            done = 0
            while done < size:
                # copy_file_range copies inside the kernel, never through user space.
                got = os.copy_file_range(fin.fileno(), fout.fileno(), min(64 << 20, size - done))
                if got == 0:
                    break
                done += got
                progress.advance(got)
        os.fsync(fout.fileno())


def pristine_path(general_fingerprint: str) -> Path:
    return data_dir() / "generals" / general_fingerprint


def keep_pristine(model: Checkpoint, general_fingerprint: str, *, progress: Progress = NULL_PROGRESS) -> Path:
    """Keep G's weight files under its fingerprint and return that directory.

    Files that are symlinks (into the HF cache) are kept as symlinks to their target;
    others are copied (reflinked when possible), never hard-linked, because tools that
    rewrite weights in place would silently change a hard-linked pristine copy.
    """
    final = pristine_path(general_fingerprint)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    members = list(model.files)
    index = model.directory / INDEX_NAME
    if model.is_sharded:
        members.append(index)
    to_copy = [p for p in members if not p.is_symlink()]
    needed = sum(p.stat().st_size for p in to_copy)
    if needed and free_bytes(final.parent) < needed:
        with disk_errors(final, needed):
            raise OSError(28, "No space left on device")
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        progress.task("Keeping a pristine copy of the general model", needed or None)
        with disk_errors(final, needed):
            for src in members:
                dst = tmp / src.name
                if src.is_symlink():
                    os.symlink(os.path.realpath(src), dst)
                else:
                    _clone_or_copy(src, dst, progress)
            fsync_dir(tmp)
        progress.done()
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
        fsync_dir(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def artifact_path(digest: str) -> Path:
    hexd = digest.split(":", 1)[1]
    return data_dir() / "artifacts" / hexd[:2] / f"{hexd}.tvskill"


def keep_artifact(src: Path, digest: str) -> Path:
    """Copy an artifact into the store under its digest (no-op when already there)."""
    dst = artifact_path(digest)
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dst.parent)
    os.close(fd)
    try:
        with disk_errors(dst, src.stat().st_size):
            _clone_or_copy(src, Path(tmp), NULL_PROGRESS)
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    # tvreg wrote these bytes, checked as ``digest``: remembered, so a no-op can trust the store unread.
    statcache.remember("digests", dst, digest)
    return dst
