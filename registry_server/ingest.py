"""Check an upload while it arrives, so that publishing it does not start with a full re-read.

Why: ``PUT .../versions/{v}`` used to hash the whole staged upload and then decode-check
every tensor after the last byte had arrived, which made a publish roughly upload time
plus two passes over the artifact. Here, each time a PATCH makes more bytes durable
(fsynced and recorded as the upload's offset), a background worker of this process reads
the newly durable range of the staged file, feeds it to a running SHA-256, parses the
header once it is complete, and checks every tensor blob that now lies wholly inside the
durable range exactly as :meth:`tvreg.artifact.Artifact.verify` would (its digest, codec
bounds, finiteness). The publish then waits for the worker to catch up and uses what it
found: the whole-file digest and the names of the tensors already checked.

Nothing gets weaker: bytes below an upload's durable offset are never rewritten (a new
writer truncates only past it, :mod:`registry_server.uploads`), so what the worker read is
what the publish links; the digest it computed must equal the declared one, or the publish
falls back to the full checks (which then name the fault); tensors it did not check (a
parse it could not do, an upload continued on another replica, a worker error) are
checked at publish as before. Memory: one read buffer and one blob at a time, as the
check at publish time holds. The state lives in this process only; it is an optimisation,
never a source of truth.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tvreg.artifact import MANIFEST_KEY
from tvreg.codecs.budget import charge
from tvreg.codecs.verify import verify_stored
from tvreg.errors import TvregError
from tvreg.manifest import Manifest
from tvreg.safetensors_io import MAX_HEADER_BYTES

_READ = 8 << 20
_MAX_STATES = 256
"""Uploads followed at once; the oldest is forgotten beyond this (its publish checks everything)."""

_pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="tvreg-ingest")
_states: OrderedDict[str, _State] = OrderedDict()
_lock = threading.Lock()


@dataclass
class Checked:
    """What the worker established about a complete upload."""

    digest: str
    verified: frozenset[str]


@dataclass
class _State:
    path: Path
    target: int = 0
    hashed: int = 0
    running: bool = False
    broken: bool = False
    hasher: object = field(default_factory=hashlib.sha256)
    blobs: list[tuple[int, int, str]] | None = None
    manifest: Manifest | None = None
    next_blob: int = 0
    verified: set[str] = field(default_factory=set)
    idle: threading.Condition = field(default_factory=threading.Condition)


def advanced(store: object, upload_id: str, start: int, durable: int) -> None:
    """Bytes ``[start, durable)`` of ``upload_id`` are now durable: check them in the background.

    Only a local store's staged file is followed, and only from byte 0 (an upload this
    process did not see begin is checked at publish, as before).
    """
    staged = getattr(store, "staged_path", None)
    if staged is None or durable <= start:
        return
    with _lock:
        state = _states.get(upload_id)
        if state is None:
            if start != 0:
                return
            state = _states[upload_id] = _State(Path(staged(upload_id)))
            while len(_states) > _MAX_STATES:
                _states.popitem(last=False)
    with state.idle:
        if state.broken:
            return
        state.target = max(state.target, durable)
        if state.running:
            return
        state.running = True
    _pool.submit(_run, state)


def forget(upload_id: str) -> None:
    with _lock:
        _states.pop(upload_id, None)


def take(upload_id: str, size: int) -> Checked | None:
    """Wait for the worker to reach the end of a complete upload; what it found, or None.

    None means: check everything (the worker did not follow this upload, fell behind
    the durable offset, or could not parse it). The state is forgotten either way.
    """
    with _lock:
        state = _states.pop(upload_id, None)
    if state is None:
        return None
    with state.idle:
        while state.running:
            state.idle.wait()
        if state.broken or state.hashed != size:
            return None
        return Checked("sha256:" + state.hasher.hexdigest(), frozenset(state.verified))


def _run(state: _State) -> None:
    try:
        with open(state.path, "rb", buffering=0) as f:
            while True:
                with state.idle:
                    target = state.target
                    if state.hashed >= target or state.broken:
                        state.running = False
                        state.idle.notify_all()
                        return
                _hash_until(state, f, target)
                _check_blobs(state, f.fileno(), target)
    except Exception:  # noqa: BLE001 - any failure only means "check everything at publish"
        with state.idle:
            state.broken = True
            state.running = False
            state.idle.notify_all()


def _hash_until(state: _State, f, target: int) -> None:
    buf = bytearray(_READ)
    view = memoryview(buf)
    f.seek(state.hashed)
    while state.hashed < target:
        n = f.readinto(view[: min(_READ, target - state.hashed)])
        if not n:
            raise OSError("the staged file is shorter than its durable offset")
        state.hasher.update(view[:n])
        state.hashed += n


def _check_blobs(state: _State, fd: int, durable: int) -> None:
    if state.blobs is None:
        if durable < 8:
            return
        n = int.from_bytes(os.pread(fd, 8, 0), "little")
        if n > MAX_HEADER_BYTES:
            raise ValueError("header too large")
        if durable < 8 + n:
            return
        header = json.loads(os.pread(fd, n, 8).decode("utf-8"))
        state.manifest = Manifest.from_json(header["__metadata__"][MANIFEST_KEY], where="the upload")
        blobs = []
        for name in state.manifest.tensors:
            lo, hi = header[name]["data_offsets"]
            if not (type(lo) is int and type(hi) is int and 0 <= lo <= hi):
                raise ValueError("bad offsets")
            blobs.append((8 + n + lo, 8 + n + hi, name))
        state.blobs = sorted(blobs)
    assert state.manifest is not None
    while state.next_blob < len(state.blobs) and state.blobs[state.next_blob][1] <= durable:
        start, end, name = state.blobs[state.next_blob]
        state.next_blob += 1
        entry = state.manifest.tensors[name]
        if end - start != entry.stored_bytes:
            continue
        with contextlib.suppress(TvregError):
            charge(4 * entry.numel, where=name)
            data = os.pread(fd, end - start, start)
            if len(data) == end - start and hashlib.sha256(data).hexdigest() == entry.sha256:
                verify_stored(entry.codec, data, entry.shape, entry.params, where=name)
                state.verified.add(name)
