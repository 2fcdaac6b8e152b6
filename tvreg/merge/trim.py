"""TIES' trim: the exact per-tensor magnitude cutoff, found chunk by chunk.

TIES keeps the top ``k = max(1, ⌊density · n⌋)`` entries of each τ by magnitude, over the
*whole* tensor, while install only ever holds a chunk. The cutoff is found by a radix
select on the float32 bit patterns of |τ| (for non-negative floats, bit order is
value order): one pass counts the high 16 bits, a second the low 16 bits inside the
chosen bucket, giving the k-th largest magnitude ``t`` exactly. Entries equal to
``t`` are kept in index order up to ``k`` in all (a third pass finds where to stop),
so exactly ``k`` entries survive, deterministically — mergekit leaves that tie order
to ``torch.topk``. The result is two numbers per (skill, tensor) that any chunk can
apply: keep ``|x| > t``, or ``|x| == t`` and ``index < tie_cut``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Trim:
    """Keep an element when ``|x| > threshold`` or (``|x| == threshold`` and ``index < tie_cut``)."""

    threshold: float
    tie_cut: int

    def mask(self, chunk: torch.Tensor, start: int) -> torch.Tensor:
        a = chunk.abs()
        keep = a > self.threshold
        if self.tie_cut > start:
            ties = a == self.threshold
            if self.tie_cut < start + chunk.numel():
                ties[self.tie_cut - start :] = False
            keep |= ties
        return keep


def _bits(chunk: torch.Tensor) -> torch.Tensor:
    return chunk.abs().view(torch.int32)


def _top_bucket(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """The bucket holding the k-th largest item, and how many items lie in higher buckets."""
    above = torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])  # items in buckets ≥ b
    bucket = int(torch.nonzero(above >= k)[-1])
    higher = int(above[bucket + 1]) if bucket + 1 < hist.numel() else 0
    return bucket, higher


def magnitude_trim(
    numel: int, density: float, chunks: Callable[[], Iterable[tuple[int, torch.Tensor]]]
) -> Trim | None:
    """The :class:`Trim` keeping the top ``max(1, ⌊density·numel⌋)`` magnitudes; ``None`` when all are kept.

    At least one entry survives, as in mergekit 0.1.5's ``sparsify.magnitude``.

    ``chunks()`` yields ``(start, float32 chunk)`` over the tensor in order; it is
    called up to three times (one pass per radix digit, one for the tie cut).
    """
    k = max(1, int(density * numel))
    if k >= numel:
        return None
    hist = torch.zeros(1 << 15, dtype=torch.int64)
    for _, chunk in chunks():
        hist += torch.bincount(_bits(chunk) >> 16, minlength=1 << 15)[: 1 << 15]
    high, higher = _top_bucket(hist, k)
    hist = torch.zeros(1 << 16, dtype=torch.int64)
    for _, chunk in chunks():
        bits = _bits(chunk)
        inside = bits[(bits >> 16) == high]
        hist += torch.bincount(inside & 0xFFFF, minlength=1 << 16)
    low, higher_low = _top_bucket(hist, k - higher)
    pattern = (high << 16) | low
    threshold = float(torch.tensor([pattern], dtype=torch.int32).view(torch.float32))
    ties_kept = k - higher - higher_low
    seen = 0
    for start, chunk in chunks():
        where = torch.nonzero(_bits(chunk) == pattern).reshape(-1)
        if seen + where.numel() >= ties_kept:
            return Trim(threshold, start + int(where[ties_kept - seen - 1]) + 1)
        seen += where.numel()
    raise AssertionError("radix select lost count of the tied entries")
