"""A content hash of a checkpoint that ignores how it is stored.

The fingerprint (algorithm v1) is the SHA-256 of the lines
``name \\t dtype \\t dim,dim,... \\t sha256(tensor bytes) \\n`` sorted by tensor name.
Sharding, shard file names, file order and header padding do not enter it; one
changed element, dtype or shape does. Skills are keyed to their base model by it.

Per-file results are remembered by :mod:`tvreg._format.statcache` (keyed by path, inode, size,
mtime and ctime), so asking again about an unchanged 10 GB model costs a few ``stat``
calls. Hashing runs in threads: ``hashlib`` releases the GIL.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .._util.progress import NULL_PROGRESS, Progress
from . import statcache
from .checkpoint import Checkpoint
from .safetensors_io import SafetensorsFile, TensorInfo

FINGERPRINT_VERSION = 1
_KIND = f"fingerprints-v{FINGERPRINT_VERSION}"
_CHUNK = 8 * 1024 * 1024


def short(fingerprint: str) -> str:
    """The 12-character prefix shown to users, like a short git hash."""
    return fingerprint[:12]


def _hash_tensor(handle: SafetensorsFile, info: TensorInfo, progress: Progress) -> str:
    h = hashlib.sha256()
    buf = bytearray(min(_CHUNK, max(info.nbytes, 1)))
    view = memoryview(buf)
    pos = info.start
    while pos < info.end:
        n = min(len(buf), info.end - pos)
        got = handle.pread(view[:n], pos)
        h.update(view[:got])
        pos += got
        progress.advance(got)
    return h.hexdigest()


def tensor_hashes(
    ckpt: Checkpoint, *, progress: Progress = NULL_PROGRESS, fresh: bool = False
) -> dict[str, tuple[str, list[int], str]]:
    """Per-tensor (dtype, shape, sha256) of a checkpoint, cached per weight file.

    ``fresh=True`` ignores the cache and reads every byte (``tvreg verify``: a file
    changed in place with its mtime restored would fool the cache key).
    """
    result: dict[str, tuple[str, list[int], str]] = {}
    todo: list[tuple[Path, SafetensorsFile]] = []
    for file, handle in zip(ckpt.files, ckpt.handles, strict=True):
        if fresh:
            todo.append((file, handle))
            continue
        cached = _entries(statcache.lookup(_KIND, file))
        if cached is not None:
            result.update(cached)
            continue
        todo.append((file, handle))
    if todo:
        progress.task("Hashing weights", sum(sum(i.nbytes for i in h.tensors.values()) for _, h in todo))
        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            for file, handle in todo:
                futures = {
                    name: pool.submit(_hash_tensor, handle, info, progress)
                    for name, info in handle.tensors.items()
                }
                entries = {
                    name: (handle.tensors[name].dtype, list(handle.tensors[name].shape), fut.result())
                    for name, fut in futures.items()
                }
                result.update(entries)
                remember(file, entries)
        progress.done()
    return result


def _entries(cached: object) -> dict[str, tuple[str, list[int], str]] | None:
    if not isinstance(cached, dict):
        return None
    try:
        return {k: (str(v[0]), list(v[1]), str(v[2])) for k, v in cached.items()}
    except (TypeError, IndexError, KeyError):
        return None


def remember(file: Path, entries: dict[str, tuple[str, list[int], str]]) -> None:
    """Remember the tensor hashes of a file, e.g. ones computed while writing it."""
    statcache.remember(_KIND, file, entries)


def fingerprint_of_hashes(hashes: dict[str, tuple[str, list[int], str]]) -> str:
    lines = "".join(
        f"{name}\t{dtype}\t{','.join(map(str, shape))}\t{digest}\n"
        for name, (dtype, shape, digest) in sorted(hashes.items())
    )
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def fingerprint(model: str | os.PathLike[str] | Checkpoint, *, progress: Progress = NULL_PROGRESS) -> str:
    """Return the 64-hex-digit content fingerprint of a checkpoint.

    Args:
        model: a model directory, ``.safetensors`` file, cached Hub id, or open Checkpoint.
        progress: receives hashing progress (bytes).

    Returns:
        The fingerprint; :func:`short` gives the 12-character display form.

    Raises:
        CheckpointError: the model cannot be opened.

    Example:
        >>> fingerprint("path/to/model")  # doctest: +SKIP
        '3f2a9c...'
    """
    if isinstance(model, Checkpoint):
        return fingerprint_of_hashes(tensor_hashes(model, progress=progress))
    with Checkpoint.open(model) as ckpt:
        return fingerprint_of_hashes(tensor_hashes(ckpt, progress=progress))
