"""UploadStaging's running SHA-256: trusted only for bytes this process staged in order, alone,
and recorded; every other case re-reads the file, and changed bytes are always refused."""

from __future__ import annotations

import hashlib
import os
import time
import uuid

import pytest

from registry_server.errors import DigestMismatch
from registry_server.storage import UploadStaging

DATA = os.urandom(3 * 1024 * 1024 + 17)
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
HALF = len(DATA) // 2


@pytest.fixture
def rereads(monkeypatch):
    """How many times verify read the staged file back."""
    calls = []
    real = UploadStaging._reread

    def counted(path, size):
        calls.append(path)
        return real(path, size)

    monkeypatch.setattr(UploadStaging, "_reread", staticmethod(counted))
    return calls


def _append(staging: UploadStaging, upload_id: str, offset: int, data: bytes, *, record: bool = True) -> int:
    """One PATCH as the route does it: write in pieces, fsync, then (lease kept) record."""
    w = staging.open(upload_id, offset)
    for i in range(0, len(data), 1 << 20):
        w.write(data[i : i + (1 << 20)])
    end = w.finish()
    if record:
        w.recorded()
    return end


def _new(staging: UploadStaging) -> str:
    upload_id = str(uuid.uuid4())
    staging.new(upload_id)
    return upload_id


def test_chunks_staged_in_order_by_one_process_are_verified_without_rereading(tmp_path, rereads):
    staging = UploadStaging(tmp_path)
    up = _new(staging)
    assert _append(staging, up, 0, DATA[:HALF]) == HALF
    assert _append(staging, up, HALF, DATA[HALF:]) == len(DATA)
    assert staging.verify(up, size=len(DATA), digest=DIGEST) == staging.path(up)
    assert rereads == []
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DigestMismatch):
        staging.verify(up, size=len(DATA), digest=wrong)


def test_an_upload_continued_by_another_replica_or_a_restart_is_read_back(tmp_path, rereads):
    first, second = UploadStaging(tmp_path), UploadStaging(tmp_path)  # two processes on one directory
    up = _new(first)
    _append(first, up, 0, DATA[:HALF])
    _append(second, up, HALF, DATA[HALF:])
    assert second.verify(up, size=len(DATA), digest=DIGEST) == second.path(up)
    assert first.verify(up, size=len(DATA), digest=DIGEST) == first.path(up)
    assert len(rereads) == 2


def test_bytes_whose_offset_was_not_recorded_are_read_back(tmp_path, rereads):
    staging = UploadStaging(tmp_path)
    up = _new(staging)
    _append(staging, up, 0, DATA, record=False)  # the lease was lost: another writer may own these bytes
    staging.verify(up, size=len(DATA), digest=DIGEST)
    assert len(rereads) == 1


def test_bytes_changed_after_they_were_hashed_are_refused(tmp_path, rereads):
    staging = UploadStaging(tmp_path)
    up = _new(staging)
    _append(staging, up, 0, DATA)
    time.sleep(0.02)
    fd = os.open(staging.path(up), os.O_WRONLY)
    try:
        os.pwrite(fd, bytes([DATA[HALF] ^ 1]), HALF)  # same size, one bit flipped
    finally:
        os.close(fd)
    with pytest.raises(DigestMismatch):
        staging.verify(up, size=len(DATA), digest=DIGEST)
    assert len(rereads) == 1


def test_a_writer_overlapping_a_stale_one_does_not_trust_its_hash(tmp_path, rereads):
    """A request whose lease expired may still write while its successor stages the same range."""
    staging = UploadStaging(tmp_path)
    up = _new(staging)
    stale = staging.open(up, 0)
    fresh = staging.open(up, 0)
    fresh.write(DATA)
    fd = os.open(staging.path(up), os.O_WRONLY)
    try:
        os.pwrite(fd, b"garbage", 0)  # the stale request's late write, before its successor's fsync
    finally:
        os.close(fd)
    assert fresh.finish() == len(DATA)
    fresh.recorded()
    with pytest.raises(DigestMismatch):
        staging.verify(up, size=len(DATA), digest=DIGEST)
    assert len(rereads) == 1
    stale.abort()


def test_a_discarded_upload_forgets_its_hash(tmp_path, rereads):
    staging = UploadStaging(tmp_path)
    up = _new(staging)
    _append(staging, up, 0, DATA)
    staging.discard(up)
    assert staging._running == {}
