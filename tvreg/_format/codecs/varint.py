"""Vectorised LEB128 varints for the gaps between sorted indices (``sparse``'s delta index).

Why varints: at low density the gap between kept entries is mostly one or two bytes,
smaller than a bitmap's ``numel / 8``; zstd then squeezes the common byte values.
"""

from __future__ import annotations

import numpy as np

MAX_BYTES = 9  # 63 bits: any index a tensor can have


def encode(values: np.ndarray) -> np.ndarray:
    """LEB128 bytes of non-negative int64 ``values`` (low 7 bits first, high bit = more follows)."""
    v = values.astype(np.uint64, copy=False)
    lengths = np.ones(len(v), dtype=np.int64)
    for j in range(1, MAX_BYTES):
        lengths += v >= np.uint64(1 << (7 * j))
    starts = np.cumsum(lengths) - lengths
    out = np.zeros(int(lengths.sum()), dtype=np.uint8)
    for j in range(MAX_BYTES):
        has = lengths > j
        if not has.any():
            break
        byte = (v[has] >> np.uint64(7 * j)) & np.uint64(0x7F)
        more = (lengths[has] > j + 1).astype(np.uint64) << np.uint64(7)
        out[starts[has] + j] = (byte | more).astype(np.uint8)
    return out


def decode(data: np.ndarray, count: int) -> np.ndarray | None:
    """The ``count`` int64 values in ``data``, or None if it is not exactly ``count`` varints of ≤ 9 bytes."""
    if count == 0:
        return np.zeros(0, dtype=np.int64) if len(data) == 0 else None
    ends = (data & 0x80) == 0
    end_pos = np.flatnonzero(ends)
    if len(end_pos) != count or end_pos[-1] != len(data) - 1:
        return None
    lengths = np.diff(end_pos, prepend=-1)
    if int(lengths.max()) > MAX_BYTES:
        return None
    starts = end_pos - lengths + 1
    group_of = np.repeat(np.arange(count), lengths)
    pos = np.arange(len(data)) - starts[group_of]
    parts = (data & 0x7F).astype(np.uint64) << (7 * pos).astype(np.uint64)
    values = np.add.reduceat(parts, starts)
    if (values >> np.uint64(63)).any():
        return None
    return values.astype(np.int64)
