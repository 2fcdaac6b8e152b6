"""A content hash of a checkpoint that ignores how it is stored.

The fingerprint (algorithm v1) is the SHA-256 of the lines
``name \\t dtype \\t dim,dim,... \\t sha256(tensor bytes) \\n`` sorted by tensor name.
Sharding, shard file names, file order and header padding do not enter it; one
changed element, dtype or shape does. Skills are keyed to their base model by it.

Per-file results are cached under ``$XDG_CACHE_HOME/tvreg/fingerprints`` keyed by
(device, inode, size, mtime), so asking again about an unchanged 10 GB model costs
a few ``stat`` calls. Hashing runs in threads: ``hashlib`` releases the GIL.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .checkpoint import Checkpoint
from .fsutil import atomic_write_text
from .paths import cache_dir
from .progress import NULL_PROGRESS, Progress
from .safetensors_io import SafetensorsFile, TensorInfo

FINGERPRINT_VERSION = 1
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


def _cache_path(file: Path) -> tuple[Path, str]:
    st = os.stat(file)
    key = f"v{FINGERPRINT_VERSION}:{os.path.realpath(file)}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()
    return cache_dir() / "fingerprints" / f"{digest}.json", key


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
        cache_file, key = _cache_path(file)
        try:
            cached = json.loads(cache_file.read_text())
            if cached.get("key") == key:
                result.update({k: (v[0], v[1], v[2]) for k, v in cached["tensors"].items()})
                continue
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            pass
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


def remember(file: Path, entries: dict[str, tuple[str, list[int], str]]) -> None:
    """Seed the cache for a file whose tensor hashes were computed while writing it."""
    cache_file, key = _cache_path(file)
    try:
        atomic_write_text(cache_file, json.dumps({"key": key, "tensors": entries}))
    except OSError:
        pass


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
