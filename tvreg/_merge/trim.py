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

import numpy as np
import torch

from .._format.codecs import jit
from . import bitmasks


@dataclass(frozen=True)
class Trim:
    """Keep an element when ``|x| > threshold`` or (``|x| == threshold`` and ``index < tie_cut``)."""

    threshold: float
    tie_cut: int

    def keep_bits(self, chunk: torch.Tensor, start: int) -> torch.Tensor:
        """The int32 mask (:mod:`tvreg._merge.bitmasks`) of the float32 ``chunk`` starting at index ``start``."""
        keep = bitmasks.magnitude_bits(chunk)
        t = bitmasks.float_bits(self.threshold)
        tied = min(max(self.tie_cut - start, 0), chunk.numel())  # entries before the tie cut keep |x| == t too
        bitmasks.above_(keep[:tied], t - 1)
        bitmasks.above_(keep[tied:], t)
        return keep

    def mask(self, chunk: torch.Tensor, start: int) -> torch.Tensor:
        """True where the entry survives the trim."""
        return self.keep_bits(chunk, start) != 0


def _bits(chunk: torch.Tensor) -> torch.Tensor:
    return chunk.abs().view(torch.int32)


#: Elements sampled (a fixed stride, so deterministic) to bracket the cutoff before the exact pass.
SAMPLE = 1 << 16


def _bracket(
    numel: int, k: int, chunks: Callable[[], Iterable[tuple[int, torch.Tensor]]]
) -> tuple[float, float]:
    """A magnitude range that very likely holds the k-th largest |x|, from a strided sample."""
    stride = max(1, numel // SAMPLE)
    sample = np.abs(np.concatenate([chunk[(-start) % stride :: stride].numpy() for start, chunk in chunks()]))
    m = sample.size
    q = 1.0 - k / numel  # the cutoff's quantile
    margin = 4.0 / math.sqrt(m) + 2.0 / m
    at = [max(0, math.floor((q - margin) * m)), min(m - 1, math.ceil((q + margin) * m))]
    lo, hi = np.partition(sample, at)[at]
    return float(lo), float(hi)


def _radix_select(k: int, chunks: Callable[[], Iterable[tuple[int, torch.Tensor]]]) -> tuple[float, int]:
    """The k-th largest |x| and how many entries are strictly larger, by a two-digit radix select."""
    hist = torch.zeros(1 << 15, dtype=torch.int64)
    for _, chunk in chunks():
        hist += torch.bincount(_bits(chunk) >> 16, minlength=1 << 15)[: 1 << 15]
    high, higher = _top_bucket(hist.numpy(), k)
    hist = torch.zeros(1 << 16, dtype=torch.int64)
    for _, chunk in chunks():
        bits = _bits(chunk)
        inside = bits[(bits >> 16) == high]
        hist += torch.bincount(inside & 0xFFFF, minlength=1 << 16)
    low, higher_low = _top_bucket(hist.numpy(), k - higher)
    pattern = (high << 16) | low
    return float(torch.tensor([pattern], dtype=torch.int32).view(torch.float32)), higher + higher_low


def _radix_select_compiled(
    k: int,
    chunks: Callable[[], Iterable[tuple[int, torch.Tensor]]],
    first: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[float, int, int]:
    """:func:`_select`'s (t, entries > t, entries == t) by :func:`_radix_select`'s two histograms, compiled.

    Why not the bracket: τ of bf16 weights takes few distinct values, so the bracket holds
    a tenth of the tensor and selecting among those cost more than both passes here.

    The second pass reads every entry again only to split the bucket of ``t``'s top 16 bits
    by its low 16. The first pass ORs those low bits per bucket; when the bucket's are all
    zero (every entry of it is the same float, as every bf16 number is), ``t`` is that value
    and the pass would find exactly that, so it is skipped: one pass instead of two on τ of
    bf16 weights, whose differences of nearby bf16 values are themselves bf16 values.
    """

    def histogram(high: int) -> tuple[np.ndarray, np.ndarray]:
        # One chunk at a time, as they come: a compact form expands each chunk afresh (install's TIES).
        lanes = np.zeros((5, 1 << (15 if high < 0 else 16)), np.int64)
        for _, chunk in chunks():
            jit.magnitude_hist(chunk.detach().to(torch.float32).reshape(-1).contiguous().numpy(), high, lanes)
        return lanes[:4].sum(axis=0), lanes[4]

    counts, low_bits = histogram(-1) if first is None else first
    if int(counts.sum()) < k:  # NaNs are not counted: no k-th largest (a build refuses such τ next)
        return float("nan"), int(counts.sum()), 0
    high, higher = _top_bucket(counts, k)
    if low_bits[high]:
        hist, _ = histogram(high)
        low, higher_low = _top_bucket(hist, k - higher)
        equal = int(hist[low])
    else:  # every entry of the bucket is `high << 16`: the second pass would find just that
        low, higher_low, equal = 0, 0, int(counts[high])
    t = float(np.array([(high << 16) | low], dtype=np.uint32).view(np.float32)[0])
    return t, higher + higher_low, equal


def _top_bucket(hist: np.ndarray, k: int) -> tuple[int, int]:
    """The bucket holding the k-th largest item, and how many items lie in higher buckets."""
    above = np.cumsum(hist[::-1])[::-1]  # items in buckets ≥ b
    bucket = int(np.flatnonzero(above >= k)[-1])
    higher = int(above[bucket + 1]) if bucket + 1 < hist.size else 0
    return bucket, higher


def _select(
    numel: int, k: int, chunks: Callable[[], Iterable[tuple[int, torch.Tensor]]], lanes: np.ndarray | None = None
) -> tuple[float, int, int]:
    """(t = the k-th largest |x|, entries > t, entries == t): one counting pass when the sample's bracket holds t.

    The counting runs in NumPy: its float comparisons and boolean selection are several
    times faster than torch's on the CPU, and this pass reads every entry of every skill.
    With the compiled kernels (:mod:`tvreg._format.codecs.jit`) the radix select runs instead,
    always: the same three numbers, since each is determined by the data alone.
    """
    if jit.ready(numel):  # exact whatever the data, in two compiled passes
        return _radix_select_compiled(k, chunks, None if lanes is None else (lanes[:4].sum(axis=0), lanes[4]))
    lo, hi = _bracket(numel, k, chunks)
    lo32, hi32 = np.float32(lo), np.float32(hi)
    above, candidates = 0, []
    for _, chunk in chunks():
        a = np.abs(chunk.numpy())
        above += int(np.count_nonzero(a > hi32))
        # a bracket of one value (τ of bf16 weights is made of few distinct steps) needs no collecting
        candidates.append(np.full(np.count_nonzero(a == hi32), hi32) if lo == hi else a[(a >= lo32) & (a <= hi32)])
    cand = np.concatenate(candidates) if candidates else np.empty(0, np.float32)
    rank = k - above  # t's rank from the top among the candidates
    if 0 < rank <= cand.size:
        i = cand.size - rank
        t32 = np.partition(cand, i)[i]
        return float(t32), above + int(np.count_nonzero(cand > t32)), int(np.count_nonzero(cand == t32))
    t, greater = _radix_select(k, chunks)  # the sample was unlucky: exact, whatever the data
    t32 = np.float32(t)
    equal = sum(int(np.count_nonzero(np.abs(chunk.numpy()) == t32)) for _, chunk in chunks())
    return t, greater, equal


def kth_largest_magnitude(
    numel: int, k: int, chunks: Callable[[], Iterable[tuple[int, torch.Tensor]]], *, lanes: np.ndarray | None = None
) -> float:
    """The k-th largest |x| (1 ≤ k ≤ numel) of a tensor read chunk by chunk, exactly.

    Why not ``np.partition`` over the whole tensor: it needs a full float32 copy, and on
    τ of bf16 weights (most entries 0, the rest a few ulp steps) its introselect ran
    20x slower than these passes. ``lanes``: the first radix histogram of every entry, when
    the caller counted it in a pass of its own (:func:`tvreg._format.codecs.jit.magnitude_hist`
    with ``high=-1``; the sketch counts it beside its CountSketch): τ is then read once more at
    most, only when the cutoff's bucket must be split.
    """
    if not 1 <= k <= numel:
        raise ValueError(f"k must be in 1..{numel}, not {k}")
    return _select(numel, k, chunks, lanes)[0]


def magnitude_trim(
    numel: int,
    density: float,
    chunks: Callable[[], Iterable[tuple[int, torch.Tensor]]],
    *,
    lanes: np.ndarray | None = None,
) -> Trim | None:
    """The :class:`Trim` keeping the top ``max(1, ⌊density·numel⌋)`` magnitudes; ``None`` when all are kept.

    At least one entry survives, as in mergekit 0.1.5's ``sparsify.magnitude``.
    ``chunks()`` yields ``(start, float32 chunk)`` over the tensor in order (chunks are
    only read); it is called two to four times. ``lanes``: the first radix histogram of every entry,
    when the caller counted it already (:meth:`tvreg._format.codecs.forms.StoredForm.magnitude_lanes`).
    """
    k = max(1, int(density * numel))
    if k >= numel:
        return None
    threshold, greater, equal = _select(numel, k, chunks, lanes)
    ties_kept = k - greater
    if ties_kept == equal:
        return Trim(threshold, numel)
    seen, t32 = 0, np.float32(threshold)
    if jit.ready(numel) and math.isfinite(threshold):
        for start, chunk in chunks():
            at, found = jit.nth_magnitude(
                chunk.detach().to(torch.float32).reshape(-1).contiguous().numpy(), threshold, ties_kept - seen
            )
            if at >= 0:
                return Trim(threshold, start + at + 1)
            seen += found
        raise AssertionError("lost count of the entries tied at the cutoff")
    for start, chunk in chunks():
        where = np.flatnonzero(np.abs(chunk.numpy()) == t32)
        if seen + where.size >= ties_kept:
            return Trim(threshold, start + int(where[ties_kept - seen - 1]) + 1)
        seen += where.size
    raise AssertionError("lost count of the entries tied at the cutoff")
