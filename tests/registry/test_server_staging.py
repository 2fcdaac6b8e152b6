"""The staging writer's batched ``writev`` (``registry_server/storage.py``): every byte, in order.

The PATCH handler hands the disk batches of received chunks; ``writev`` may write fewer
bytes than asked, splitting a chunk anywhere, and the batch may hold chunks of any size,
including empty ones.
"""

from __future__ import annotations

import hashlib
import random
import uuid

from registry_server.storage import UploadStaging


def test_batches_of_parts_are_staged_in_order_and_verify(tmp_path):
    staging = UploadStaging(tmp_path / "staging")
    staging.create()
    upload = str(uuid.uuid4())
    staging.new(upload)
    rng = random.Random(7)
    parts = [rng.randbytes(rng.choice([0, 1, 7, 4096, 65536, 300_000]) if i % 3 else 5) for i in range(1500)]
    writer = staging.open(upload, 0)
    writer.write_parts(parts[:1400])  # more non-empty parts than one writev takes (IOV_MAX, 1024)
    writer.write_parts(parts[1400:])
    size = writer.finish()
    data = b"".join(parts)
    assert size == len(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert staging.verify(upload, size=size, digest=digest).read_bytes() == data
