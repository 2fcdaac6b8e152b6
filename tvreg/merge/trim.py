"""TIES' trim: the exact per-tensor magnitude cutoff, found chunk by chunk.

TIES keeps the top ``k = max(1, ⌊density · n⌋)`` entries of each τ by magnitude, over
the *whole* tensor, while install only ever holds a chunk. The k-th largest magnitude
``t`` is found exactly in streaming passes: a strided sample brackets it, one pass
counts the entries above the bracket and collects those inside it, and a selection
among those gives ``t``. Should the sample miss, a radix select on the float32 bit
patterns of |τ| (bit order is value order for non-negative floats) finds ``t`` in two
more passes, whatever the data. Entries equal to
``t`` are kept in index order up to ``k`` in all (a third pass finds where to stop),
so exactly ``k`` entries survive, deterministically — mergekit leaves that tie order
to ``torch.topk``. The result is two numbers per (skill, tensor) that any chunk can
apply: keep ``|x| > t``, or ``|x| == t`` and ``index < tie_cut``.
"""

from __future__ import annotations

import math
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


#: Elements sampled (a fixed stride, so deterministic) to bracket the cutoff before the exact pass.
SAMPLE = 1 << 16


def _bracket(
    numel: int, k: int, chunks: Callable[[], Iterable[tuple[int, torch.Tensor]]]
) -> tuple[float, float]:
    """A magnitude range that very likely holds the k-th largest |x|, from a strided sample."""
    stride = max(1, numel // SAMPLE)
    parts = [chunk[(-start) % stride :: stride].abs() for start, chunk in chunks()]
    sample = torch.sort(torch.cat(parts)).values
    m = sample.numel()
    q = 1.0 - k / numel  # the cutoff's quantile
    margin = 4.0 / math.sqrt(m) + 2.0 / m
    lo = sample[max(0, math.floor((q - margin) * m))]
    hi = sample[min(m - 1, math.ceil((q + margin) * m))]
    return float(lo), float(hi)


def _radix_select(k: int, chunks: Callable[[], Iterable[tuple[int, torch.Tensor]]]) -> tuple[float, int]:
    """The k-th largest |x| and how many entries are strictly larger, by a two-digit radix select."""
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
    return float(torch.tensor([pattern], dtype=torch.int32).view(torch.float32)), higher + higher_low


def _top_bucket(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """The bucket holding the k-th largest item, and how many items lie in higher buckets."""
    above = torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])  # items in buckets ≥ b
    bucket = int(torch.nonzero(above >= k)[-1])
    higher = int(above[bucket + 1]) if bucket + 1 < hist.numel() else 0
    return bucket, higher


def _select(
    numel: int, k: int, chunks: Callable[[], Iterable[tuple[int, torch.Tensor]]]
) -> tuple[float, int, int]:
    """(t = the k-th largest |x|, entries > t, entries == t): one counting pass when the sample's bracket holds t."""
    lo, hi = _bracket(numel, k, chunks)
    above, candidates = 0, []
    for _, chunk in chunks():
        a = chunk.abs()
        above += int((a > hi).sum())
        candidates.append(a[(a >= lo) & (a <= hi)])
    cand = torch.cat(candidates)
    rank = k - above  # t's rank from the top among the candidates
    if 0 < rank <= cand.numel():
        t = float(torch.kthvalue(cand, cand.numel() - rank + 1).values)
        return t, above + int((cand > t).sum()), int((cand == t).sum())
    t, greater = _radix_select(k, chunks)  # the sample was unlucky: exact, whatever the data
    equal = sum(int((chunk.abs() == t).sum()) for _, chunk in chunks())
    return t, greater, equal


def magnitude_trim(
    numel: int, density: float, chunks: Callable[[], Iterable[tuple[int, torch.Tensor]]]
) -> Trim | None:
    """The :class:`Trim` keeping the top ``max(1, ⌊density·numel⌋)`` magnitudes; ``None`` when all are kept.

    At least one entry survives, as in mergekit 0.1.5's ``sparsify.magnitude``.
    ``chunks()`` yields ``(start, float32 chunk)`` over the tensor in order (chunks are
    only read); it is called two to four times.
    """
    k = max(1, int(density * numel))
    if k >= numel:
        return None
    threshold, greater, equal = _select(numel, k, chunks)
    ties_kept = k - greater
    if ties_kept == equal:
        return Trim(threshold, numel)
    seen = 0
    for start, chunk in chunks():
        where = torch.nonzero(chunk.abs() == threshold).reshape(-1)
        if seen + where.numel() >= ties_kept:
            return Trim(threshold, start + int(where[ties_kept - seen - 1]) + 1)
        seen += where.numel()
    raise AssertionError("lost count of the entries tied at the cutoff")
