"""DARE's drop mask: a counter-based hash of (seed, skill, tensor, element index).

Why a hash and not a generator: a stateful RNG's draws depend on the order tensors
and chunks are visited and on the device. Hashing each element's coordinates gives
the same keep/drop decision on CPU and GPU, for any chunking, any tensor order and
any number of threads. The hash is 32-bit integer arithmetic only (xor, shifts and
multiplications modulo 2³²; the "lowbias32" mixer), so the Triton kernel computes
the identical bits with ``uint32`` and torch with ``int64`` (products split so they
never overflow).
"""

from __future__ import annotations

import hashlib

import torch

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


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & MASK32


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, MIX_A)
    x = x ^ (x >> 15)
    x = _mul32(x, MIX_B)
    return x ^ (x >> 16)


def draws(key: tuple[int, int], start: int, stop: int) -> torch.Tensor:
    """The 24-bit draws (int64) of elements ``[start, stop)`` of a tensor keyed ``key``."""
    idx = torch.arange(start, stop, dtype=torch.int64)
    h = _mix((idx & MASK32) ^ key[0])
    h = _mix(h ^ (idx >> 32) ^ key[1])
    return h >> (32 - DRAW_BITS)


def keep_mask(key: tuple[int, int], start: int, stop: int, threshold: int) -> torch.Tensor:
    """True where DARE keeps the element (its draw is at or above ``threshold``)."""
    return draws(key, start, stop) >= threshold
