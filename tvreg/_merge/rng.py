"""DARE's drop mask: a counter-based hash of (seed, skill, tensor, element index).

Why a hash and not a generator: a stateful RNG's draws depend on the order tensors
and chunks are visited and on the device. Hashing each element's coordinates gives
the same keep/drop decision on CPU and GPU, for any chunking, any tensor order and
any number of threads. The hash is 32-bit integer arithmetic only (xor, shifts and
multiplications modulo 2³²; the "lowbias32" mixer), so the Triton kernel computes
the identical bits with ``uint32`` and the CPU path with numpy's ``uint32`` (whose
multiplication wraps modulo 2³² by definition).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from . import bitmasks

MIX_A = 0x7FEB352D
MIX_B = 0x846CA68B
MASK32 = 0xFFFFFFFF
#: A uniform draw is the top 24 bits of the hash; an element is dropped when it is below
#: ``round(p · 2²⁴)``, so p is honoured to 6e-8 and the comparison is exact integer math.
DRAW_BITS = 24


def tensor_key(seed: int, skill: str, tensor: str) -> tuple[int, int]:
    """Two 32-bit keys for one (seed, skill, tensor); the element index is mixed in per element."""
    digest = hashlib.sha256(f"tvreg-dare\0{seed}\0{skill}\0{tensor}".encode()).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:8], "little")


def drop_threshold(drop_rate: float) -> int:
    return round(drop_rate * (1 << DRAW_BITS))


def _mix(h: np.ndarray) -> None:
    """lowbias32, in place on uint32 (numpy's unsigned multiply wraps modulo 2³², as Triton's does)."""
    h ^= h >> np.uint32(16)
    h *= np.uint32(MIX_A)
    h ^= h >> np.uint32(15)
    h *= np.uint32(MIX_B)
    h ^= h >> np.uint32(16)


def draws(key: tuple[int, int], start: int, stop: int) -> torch.Tensor:
    """The 24-bit draws (int32) of elements ``[start, stop)`` of a tensor keyed ``key``."""
    if stop <= 1 << 32:
        h = np.arange(start, stop, dtype=np.uint32)
        high = None
    else:
        idx = np.arange(start, stop, dtype=np.uint64)
        h = (idx & np.uint64(MASK32)).astype(np.uint32)
        high = (idx >> np.uint64(32)).astype(np.uint32)
    h ^= np.uint32(key[0])
    _mix(h)
    if high is not None:
        h ^= high
    h ^= np.uint32(key[1])
    _mix(h)
    h >>= np.uint32(32 - DRAW_BITS)
    return torch.from_numpy(h.view(np.int32))


def keep_bits(key: tuple[int, int], start: int, stop: int, threshold: int) -> torch.Tensor:
    """The int32 mask (:mod:`tvreg._merge.bitmasks`): all ones where the draw is at or above ``threshold``."""
    return bitmasks.above_(draws(key, start, stop), threshold - 1)


def keep_mask(key: tuple[int, int], start: int, stop: int, threshold: int) -> torch.Tensor:
    """True where DARE keeps the element (its draw is at or above ``threshold``)."""
    return keep_bits(key, start, stop, threshold) != 0
