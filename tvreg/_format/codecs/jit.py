"""Compiled inner loops of the codecs (Numba), each with the NumPy version it must equal.

Why: an install decodes every element of every skill's τ, and the ``exact`` codec's last
two steps, putting a float's planes back together and scattering the non-zeros to their
bitmap positions, were NumPy passes: strided byte stores, ``unpackbits`` and index
arrays, each a trip through memory and several holding the GIL. One compiled loop per
step does the same work in one pass (the plane merge 6–13x faster; a whole
``exact`` decode, zstd included, 1.1–1.8x; ``benchmarks/codec_kernels.py``) and
releases the GIL, so the install's worker threads run in parallel.

Numba compiles each function on its first call and caches the machine code on disk
(``cache=True``), so only the first process on a machine pays the compile. Callers ask
:func:`ready` first; without Numba (a Python it has no wheels for yet), or with
``TVREG_JIT=0`` in the environment, they use their NumPy code: same bytes, slower.
The public functions here assume :func:`ready` returned True.
"""

from __future__ import annotations

import math
import os
import threading
from types import SimpleNamespace
from typing import Any

import numpy as np

#: Whether to use the compiled kernels (``TVREG_JIT=0`` turns them off; tests flip it to check both paths agree).
enabled = os.environ.get("TVREG_JIT", "1").strip().lower() not in {"0", "false", "no", "off"}

#: Work smaller than this (elements) stays on NumPy: loading Numba costs a process ~0.6 s once,
#: more than the kernels save on a small model's tensors.
MIN_ELEMENTS = 1 << 16

# A SimpleNamespace of the compiled kernels once `ready` returned True; the kernels are called only then.
_kernels: Any = None
_missing = False
_lock = threading.Lock()

_POPCOUNT = np.array([bin(b).count("1") for b in range(256)], dtype=np.int64)
_POSITIONS = np.zeros((256, 8), dtype=np.int64)
for _b in range(256):
    _ps = [t for t in range(8) if _b >> t & 1]
    _POSITIONS[_b, : len(_ps)] = _ps
del _b, _ps


def _merge_exp4_py(planes, k, out):  # pragma: no cover - compiled
    # Every hot loop here indexes slices by the bare loop variable: an index like `planes[k + j]`
    # may be negative as far as Numba knows, and its wraparound check per element keeps LLVM
    # from vectorising the loop (8x slower for a loop like this one).
    p0, p1, p2, p3 = planes[:k], planes[k : 2 * k], planes[2 * k : 3 * k], planes[3 * k : 4 * k]
    for j in range(k):
        e = np.uint32(p0[j])
        sm = np.uint32(p1[j])
        out[j] = ((sm & 0x80) << 24) | (e << 23) | ((sm & 0x7F) << 16) | (np.uint32(p2[j]) << 8) | np.uint32(p3[j])


def _merge_exp2_py(planes, k, out):  # pragma: no cover - compiled
    p0, p1 = planes[:k], planes[k : 2 * k]
    for j in range(k):
        e = np.uint16(p0[j])
        sm = np.uint16(p1[j])
        out[j] = ((sm & 0x80) << 8) | (e << 7) | (sm & 0x7F)


def _merge_bytes_py(planes, k, size, out):  # pragma: no cover - compiled
    for j in range(k):
        for i in range(size):
            out[j * size + i] = planes[i * k + j]


def _scatter_py(bits, values, count, out, popcount, positions):  # pragma: no cover - compiled
    out[:count] = 0
    k = values.size
    j = 0
    for q in range(bits.size):
        b = bits[q]
        if b == 0:
            continue
        c = popcount[b]
        base = q * 8
        if j + c > k or base + positions[b, c - 1] >= count:
            return -1
        for t in range(c):
            out[base + positions[b, t]] = values[j + t]
        j += c
    return j


def _scatter_add_py(bits, values, count, acc, weight, zero, popcount):  # pragma: no cover - compiled
    k = values.size - 1
    j = 0
    full = count // 8
    for q in range(full):
        b = np.int64(bits[q])
        if j + popcount[b] > k:
            return -1
        base = q * 8
        for t in range(8):
            # branch-free (random bits defeat a predictor): always load values[j], select it or +0.0,
            # and move j by the bit; a conditional load compiles to a branch and runs 4x slower
            bit = (b >> t) & 1
            v = values[j]
            x = v if bit else zero
            acc[base + t] = acc[base + t] + x * weight
            j += bit
    if full < bits.size:
        b = np.int64(bits[full])
        if j + popcount[b] > k:
            return -1
        for i in range(full * 8, count):
            bit = (b >> (i - full * 8)) & 1
            v = values[j]
            x = v if bit else zero
            acc[i] = acc[i] + x * weight
            j += bit
    return j


def _round_block_py(acc, lo, out, out32):  # pragma: no cover - compiled
    # a block of float32 sums into out[lo:] as bf16, rounded to nearest even (as torch's copy
    # rounds), or into out32[lo:] as they are when a caller asks for them; NaNs counted, for
    # torch to round (its vector and scalar paths give NaNs different bits)
    m = acc.size
    if out32.size:
        o32 = out32[lo : lo + m]
        for i in range(m):
            o32[i] = acc[i]
        return 0
    bits = acc.view(np.uint32)
    o = out[lo : lo + m]
    nans = 0
    for i in range(m):
        x = bits[i]
        nans += (x & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
        o[i] = np.uint16((x + np.uint32(0x7FFF) + ((x >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
    return nans


# The compiled `_round_block` once `ready` has compiled it; the add-and-round kernels call it by this name.
_round_block = _round_block_py


def _add_round_bf16_py(g, frames, nnz, weights, values, out, out32, popcount):  # pragma: no cover - compiled
    # One frame of K `exact` blobs added onto θ_G and rounded once: frames[k] is skill k's raw frame
    # (bitmap, then the exp planes of its nnz[k] values). Each skill's values are put back together
    # first (a loop LLVM vectorises); the float32 sum then lives in a block small enough for L1:
    # the same adds from memory cost twice as much per element.
    count = g.size
    skills = frames.shape[0]
    nbits = (count + 7) // 8
    words = values.view(np.uint32)
    starts = np.zeros(skills, np.int64)
    at = 0
    for k in range(skills):
        kk = nnz[k]
        row = frames[k]
        starts[k] = at
        e, sm, hi, lo = row[nbits : nbits + kk], row[nbits + kk : nbits + 2 * kk], row[nbits + 2 * kk : nbits + 3 * kk], row[nbits + 3 * kk : nbits + 4 * kk]
        dest = words[at : at + kk]
        for j in range(kk):
            s = np.uint32(sm[j])
            dest[j] = (
                ((s & np.uint32(0x80)) << np.uint32(24))
                | (np.uint32(e[j]) << np.uint32(23))
                | ((s & np.uint32(0x7F)) << np.uint32(16))
                | (np.uint32(hi[j]) << np.uint32(8))
                | np.uint32(lo[j])
            )
        words[at + kk] = 0  # +0.0: what a clear bit adds
        at += kk + 1
    block = 4096
    acc = np.empty(block, np.float32)
    acc_bits = acc.view(np.uint32)
    used = starts.copy()
    nans = 0
    full = count // 8
    for lo in range(0, count, block):
        hi = min(lo + block, count)
        m = hi - lo
        gb = g[lo:hi]
        for i in range(m):
            acc_bits[i] = np.uint32(gb[i]) << np.uint32(16)
        for k in range(skills):
            row = frames[k]
            end = np.uint64(starts[k] + nnz[k])
            w = weights[k]
            j = np.uint64(used[k])
            for q in range(lo // 8, min(hi // 8, full)):
                b = np.uint64(row[q])
                if j + np.uint64(popcount[b]) > end:
                    return -1 - k
                base = np.uint64(q * 8 - lo)
                for t in range(8):
                    # branch-free: a clear bit reads the +0.0 past the skill's values. The index is
                    # selected (an integer cmov), not the value: LLVM turns a float select, or a
                    # masked load, into a branch, mispredicted at random bits (2-3x slower here).
                    # Unsigned indices spare a wraparound check per load.
                    bit = (b >> np.uint64(t)) & np.uint64(1)
                    x = values[j if bit else end]
                    acc[base + np.uint64(t)] = acc[base + np.uint64(t)] + x * w
                    j += bit
            if hi == count and count % 8:
                b = np.uint64(row[full])
                if j + np.uint64(popcount[b]) > end:
                    return -1 - k
                for i in range(full * 8, count):
                    bit = (b >> np.uint64(i - full * 8)) & np.uint64(1)
                    x = values[j if bit else end]
                    acc[i - lo] = acc[i - lo] + x * w
                    j += bit
            used[k] = np.int64(j)
        nans += _round_block(acc[:m], lo, out, out32)
    for k in range(skills):
        if used[k] != starts[k] + nnz[k]:
            return -1 - k
    return nans


def _popcount_py(bits, popcount):  # pragma: no cover - compiled
    total = 0
    for q in range(bits.size):
        total += popcount[bits[q]]
    return total


def _mask_compact_py(ints, values, out):  # pragma: no cover - compiled
    count = ints.size
    nbits = (count + 7) // 8
    k = 0
    for q in range(count // 8):  # whole bytes: a fixed inner loop, unrolled
        byte = 0
        for t in range(8):
            nz = ints[q * 8 + t] != 0
            byte |= nz << t
            k += nz
        out[q] = byte
    if count % 8:
        byte = 0
        for t in range(count % 8):
            nz = ints[count - count % 8 + t] != 0
            byte |= nz << t
            k += nz
        out[nbits - 1] = byte
    j = 0
    for i in range(count):  # compaction: a zero is written at slot j too, then overwritten
        v = ints[i]
        values[j] = v
        j += v != 0
    return k


# One loop per plane, each over its own slice: LLVM vectorises these, not one loop storing to four places.
def _split_exp4_py(values, k, out):  # pragma: no cover - compiled
    p0, p1, p2, p3 = out[:k], out[k : 2 * k], out[2 * k : 3 * k], out[3 * k : 4 * k]
    for i in range(k):
        p0[i] = np.uint8((values[i] >> np.uint32(23)) & np.uint32(0xFF))
    for i in range(k):
        v = values[i]
        p1[i] = np.uint8(((v >> np.uint32(24)) & np.uint32(0x80)) | ((v >> np.uint32(16)) & np.uint32(0x7F)))
    for i in range(k):
        p2[i] = np.uint8((values[i] >> np.uint32(8)) & np.uint32(0xFF))
    for i in range(k):
        p3[i] = np.uint8(values[i] & np.uint32(0xFF))


def _split_exp2_py(values, k, out):  # pragma: no cover - compiled
    p0, p1 = out[:k], out[k : 2 * k]
    for i in range(k):
        p0[i] = np.uint8((values[i] >> np.uint16(7)) & np.uint16(0xFF))
    for i in range(k):
        v = values[i]
        p1[i] = np.uint8(((v >> np.uint16(8)) & np.uint16(0x80)) | (v & np.uint16(0x7F)))


def _bf16_delta_py(ft, pre, out):  # pragma: no cover - compiled
    for i in range(out.size):
        a = np.uint32(np.uint32(ft[i]) << 16)
        b = np.uint32(np.uint32(pre[i]) << 16)
        out[i] = a.view(np.float32) - b.view(np.float32)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SKETCH_BLOCK = 256
_NO_LANES = np.zeros((0, 1 << 15), np.int64)


def _count_sketch_py(part, seed, shift, start, buckets, lanes):  # pragma: no cover - compiled
    # A block's hashes and signed values first (vectorised; the sign is an XOR of the float's sign
    # bit, no branch: a branch on a random bit mispredicted half the time, 7.7 against 3.2 ns an
    # element), then the adds in index order, so every bucket sums in the same order as before.
    # With lanes of 5 rows, each block also adds to the first radix histogram of |x| (_top_hist_py).
    n = part.size
    words = part.view(np.uint32)
    hist = lanes.shape[0] == 5
    hashes = np.empty(_SKETCH_BLOCK, np.uint64)
    values = np.empty(_SKETCH_BLOCK, np.float64)
    bits = values.view(np.uint64)
    for lo in range(0, n, _SKETCH_BLOCK):
        m = min(_SKETCH_BLOCK, n - lo)
        pb = part[lo : lo + m]
        wb = words[lo : lo + m]
        first = np.uint64(start + lo + 1)
        for j in range(m):
            x = (first + np.uint64(j)) * _GOLDEN + seed
            x ^= x >> np.uint64(30)
            x *= _MIX1
            x ^= x >> np.uint64(27)
            x *= _MIX2
            x ^= x >> np.uint64(31)
            hashes[j] = x
            values[j] = np.float64(pb[j])
        for j in range(m):
            bits[j] ^= hashes[j] << np.uint64(63)
        for j in range(m):
            buckets[hashes[j] >> shift] += values[j]
        if hist:
            _top_hist(wb, lanes)


def _top_hist_py(bits, hist):  # pragma: no cover - compiled
    # The first radix histogram of |x|: its top 15 bits, in four interleaved rows (hist rows 0-3;
    # runs of equal values, which τ of bf16 weights is full of, would otherwise wait on one
    # counter), and row 4 ORs the low 16 bits of each bucket's entries (rarely set for τ of bf16
    # weights, so the branch is taken seldom). NaN is never among the largest, as in NumPy's
    # comparisons. The sketch's CountSketch calls it on each block it has in cache.
    nan = np.uint32(0x7F800000)
    for i in range(bits.size):
        b = bits[i] & np.uint32(0x7FFFFFFF)
        if b <= nan:
            hist[i & 3, b >> np.uint32(16)] += 1
            low = b & np.uint32(0xFFFF)
            if low:
                hist[4, b >> np.uint32(16)] |= low


# The compiled `_top_hist` once `ready` has compiled it; _count_sketch_py and _magnitude_hist_py call it by this name.
_top_hist = _top_hist_py


def _magnitude_hist_py(bits, high, hist):  # pragma: no cover - compiled
    # high < 0: the first radix histogram (_top_hist_py); else that of the low 16 bits of the |x|
    # whose top bits are `high`, in the same four interleaved rows.
    if high < 0:
        _top_hist(bits, hist)
        return
    n = bits.size
    nan = np.uint32(0x7F800000)
    top = np.uint32(high)
    for i in range(n):
        b = bits[i] & np.uint32(0x7FFFFFFF)
        if b <= nan and (b >> np.uint32(16)) == top:
            hist[i & 3, b & np.uint32(0xFFFF)] += 1


def _nth_magnitude_py(bits, t, need):  # pragma: no cover - compiled
    seen = 0
    for i in range(bits.size):
        if (bits[i] & np.uint32(0x7FFFFFFF)) == t:
            seen += 1
            if seen == need:
                return i
    return -1 - seen


_CONSENSUS_BLOCK = 2048


def _consensus_mix_py(acc, tb, weights, limits, cuts, start, normalize, lam, scale):  # pragma: no cover - compiled
    # In blocks that stay in L1, one simple pass per step so that each loop vectorises; masks and
    # selections are integer operations on the float bits, as in tvreg._merge.bitmasks. The float
    # operations and their order are merge_chunk's consensus path, element by element.
    kk = len(tb)
    n = acc.size
    wi = np.empty((kk, _CONSENSUS_BLOCK), np.int32)
    wf = wi.view(np.float32)
    ti = np.empty(_CONSENSUS_BLOCK, np.int32)
    tt = ti.view(np.float32)
    mi = np.empty(_CONSENSUS_BLOCK, np.int32)
    mf = mi.view(np.float32)
    ai = np.empty(_CONSENSUS_BLOCK, np.int32)
    af = ai.view(np.float32)
    mix = np.empty(_CONSENSUS_BLOCK, np.float32)
    div = np.empty(_CONSENSUS_BLOCK, np.float32)
    wbits = weights.view(np.int32)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for lo in range(0, n, _CONSENSUS_BLOCK):
        m = min(_CONSENSUS_BLOCK, n - lo)
        for j in range(m):
            tt[j] = zero
        for k in range(kk):
            bits = tb[k]
            limit = limits[k]
            cut = cuts[k] - start - lo  # entries before the tie cut keep |x| == threshold too
            wk = weights[k]
            bb = bits[lo : lo + m]
            for j in range(m):
                b = bb[j]
                mi[j] = b & -np.int32((b & 0x7FFFFFFF) > limit - np.int64(j < cut))
            for j in range(m):
                v = mf[j] * wk + zero  # + 0.0 turns −0.0 into +0.0, as the torch path's w.add_(0.0)
                wf[k, j] = v
                tt[j] = tt[j] + v
        for j in range(m):
            mix[j] = zero
            div[j] = zero
        for k in range(kk):
            wb = wbits[k]
            for j in range(m):
                e = ti[j] >> 31  # all ones where the elected sign is negative
                agree = -np.int32(((wi[k, j] ^ e) - e) > 0)
                mi[j] = agree & wb
                ai[j] = agree & wi[k, j]
            for j in range(m):
                div[j] = div[j] + mf[j]
                mix[j] = mix[j] + af[j]
        ab = acc[lo : lo + m]
        for j in range(m):
            d = div[j]
            d = d + (one if d == zero else zero)
            x = mix[j]
            if normalize:
                x = x / d
            if scale:
                x = x * lam
            ab[j] = ab[j] + x


def _hash_block_py(b0, keep, threshold, seed):  # pragma: no cover - compiled
    # keep[j] = hash(b0 + j) < threshold: murmur3's 32-bit finaliser, vectorised. uint64
    # throughout, masked to 32 bits: Numba turns int64 mixed with uint64 into float64
    m32 = np.uint64(0xFFFFFFFF)
    for j in range(keep.size):
        h = ((np.uint64(b0 + j) & m32) * np.uint64(0x9E3779B1)) & m32
        h ^= seed
        h ^= h >> np.uint64(16)
        h = (h * np.uint64(0x85EBCA6B)) & m32
        h ^= h >> np.uint64(13)
        h = (h * np.uint64(0xC2B2AE35)) & m32
        keep[j] = (h ^ (h >> np.uint64(16))) < threshold


# The compiled `_hash_block` once `ready` has compiled it; the kernels below call it by this name.
_hash_block = _hash_block_py
_HASH_BLOCK = 2048


def _hash_positions_py(lo, hi, threshold, seed, out):  # pragma: no cover - compiled
    # a block's hashes, then a branchless compaction (a kept position is a coin flip, a
    # branch on it mispredicts): every i is stored at the next free slot, and only a kept
    # one moves the slot on; the last slot of `out` is scratch, so an overflowing count
    # never writes past the end. An empty `out`: count only.
    t, s = np.uint64(threshold), np.uint64(seed)
    last = out.size - 1
    keep = np.empty(_HASH_BLOCK, dtype=np.uint8)
    c = 0
    for b0 in range(lo, hi, _HASH_BLOCK):
        m = min(_HASH_BLOCK, hi - b0)
        _hash_block(b0, keep[:m], t, s)
        if last < 0:
            for j in range(m):
                c += keep[j]
        else:
            for j in range(m):
                out[min(c, last)] = b0 + j
                c += keep[j]
    return c


def _hash_add_py(threshold, seed, values, acc, weight):  # pragma: no cover - compiled
    # sparse_add with the positions hashed on the fly: none are stored or read
    t, s = np.uint64(threshold), np.uint64(seed)
    k = np.uint64(values.size - 1)
    keep = np.empty(_HASH_BLOCK, dtype=np.uint8)
    c = np.uint64(0)
    for b0 in range(0, acc.size, _HASH_BLOCK):
        m = min(_HASH_BLOCK, acc.size - b0)
        _hash_block(b0, keep[:m], t, s)
        ab = acc[b0 : b0 + m]
        for j in range(m):
            hit = np.uint64(keep[j])
            x = values[min(c, k) if hit else k]
            ab[j] = ab[j] + x * weight
            c += hit
    return c


def _hash_add_round_bf16_py(g, threshold, seed, values, weight, out, out32, found):  # pragma: no cover - compiled
    # hash_add onto bf16 θ_G and rounded once, as _add_round_bf16_py does for exact frames:
    # the float32 sum of a block lives in L1, never in a tensor-sized buffer. Every entry
    # first gets θ_G + 0·ω (a vectorised loop); then the kept ones, listed by a branchless
    # compaction, are recomputed from θ_G as θ_G + v·ω: the bits of adding each entry once
    t, s = np.uint64(threshold), np.uint64(seed)
    k = values.size - 1
    z = values[k] * weight
    keep = np.empty(_HASH_BLOCK, dtype=np.uint8)
    kept = np.empty(_HASH_BLOCK, dtype=np.int64)
    base = np.empty(_HASH_BLOCK, dtype=np.float32)
    base_bits = base.view(np.uint32)
    acc = np.empty(_HASH_BLOCK, dtype=np.float32)
    c = 0
    total = 0
    nans = 0
    for b0 in range(0, g.size, _HASH_BLOCK):
        m = min(_HASH_BLOCK, g.size - b0)
        _hash_block(b0, keep[:m], t, s)
        gb = g[b0 : b0 + m]
        for j in range(m):
            base_bits[j] = np.uint32(gb[j]) << np.uint32(16)
        for j in range(m):
            acc[j] = base[j] + z
        q = 0
        for j in range(m):
            kept[q] = j
            q += keep[j]
        total += q
        q = min(q, k - c)  # a surplus (a count the values disagree with) is never read
        for i in range(q):
            j = kept[i]
            acc[j] = base[j] + values[c + i] * weight
        c += q
        nans += _round_block(acc[:m], b0, out, out32)
    found[0] = total
    return nans


def _place_py(indices, values, start, out):  # pragma: no cover - compiled
    # a position outside `out` is counted, never written: forms are built by decoders that
    # checked their indices, and one that did not must not turn into a wild store
    outside = 0
    for j in range(indices.size):
        at = indices[j] - start
        if 0 <= at < out.size:
            out[at] = values[j]
        else:
            outside += 1
    return outside


def _sparse_add_py(indices, values, acc, weight):  # pragma: no cover - compiled
    # `values` ends with a +0.0 that an absent entry reads: the index is selected (an integer
    # cmov), not the value, as in _add_round_bf16_py. A position out of order or past `acc`
    # is never matched, so the walk stops there and the count returned falls short
    k = np.uint64(indices.size)
    j = np.uint64(0)
    for i in range(acc.size):
        hit = (j < k) & (indices[min(j, k - np.uint64(1))] == i)
        x = values[j if hit else k]
        acc[i] = acc[i] + x * weight
        j += np.uint64(hit)
    return j


def _expand_int4_py(raw, scales, group, out):  # pragma: no cover - compiled
    # nibbles (two's complement, the even code low) times their group's scale, one rounding
    # each, as lowbit.expand(lowbit.unpack(...)) computes them; the code −8 is counted, not used
    bad = 0
    for j in range(out.size):
        b = np.int32(raw[j >> 1]) >> np.int32(4 * (j & 1))
        q = ((b & np.int32(0xF)) ^ np.int32(8)) - np.int32(8)
        bad += q == -8
        out[j] = np.float32(q) * scales[j // group]
    return bad


def ready(numel: int) -> bool:
    """Whether to use the compiled kernels for ``numel`` elements of work; loads them on first use.

    Why lazily: importing Numba and loading its cached code costs a process about 0.6 s
    and 60 MiB, which commands that decode nothing (``tvreg list``) or only a small
    model's tensors should not pay.
    """
    global _kernels, _missing
    if not enabled or _missing or numel < MIN_ELEMENTS:
        return False
    if _kernels is None:
        with _lock:
            if _kernels is None:
                try:
                    import numba
                except ImportError:  # pragma: no cover - a platform without Numba wheels
                    _missing = True
                    return False

                def compile_(fn):
                    return numba.njit(nogil=True, cache=True, boundscheck=False)(fn)

                global _hash_block, _round_block, _top_hist
                _hash_block = compile_(_hash_block_py)
                _round_block = compile_(_round_block_py)
                _top_hist = compile_(_top_hist_py)

                _kernels = SimpleNamespace(
                    merge_exp4=compile_(_merge_exp4_py),
                    merge_exp2=compile_(_merge_exp2_py),
                    merge_bytes=compile_(_merge_bytes_py),
                    scatter=compile_(_scatter_py),
                    scatter_add=compile_(_scatter_add_py),
                    add_round_bf16=compile_(_add_round_bf16_py),
                    popcount=compile_(_popcount_py),
                    mask_compact=compile_(_mask_compact_py),
                    split_exp4=compile_(_split_exp4_py),
                    split_exp2=compile_(_split_exp2_py),
                    bf16_delta=compile_(_bf16_delta_py),
                    count_sketch=compile_(_count_sketch_py),
                    magnitude_hist=compile_(_magnitude_hist_py),
                    nth_magnitude=compile_(_nth_magnitude_py),
                    consensus_mix=compile_(_consensus_mix_py),
                    place=compile_(_place_py),
                    sparse_add=compile_(_sparse_add_py),
                    hash_add=compile_(_hash_add_py),
                    expand_int4=compile_(_expand_int4_py),
                    hash_add_round_bf16=compile_(_hash_add_round_bf16_py),
                    hash_positions=compile_(_hash_positions_py),
                )
    return True


def popcount(bits: np.ndarray) -> int:
    """Number of set bits in a uint8 array."""
    return int(_kernels.popcount(bits, _POPCOUNT))


def merge_exp(planes: np.ndarray, out: np.ndarray) -> None:
    """Undo the ``exp`` split: ``planes`` is (itemsize, k) uint8, ``out`` k uint32 (fp32) or uint16 (bf16) words."""
    k = out.size
    flat = planes.reshape(-1)
    if out.dtype == np.uint32:
        _kernels.merge_exp4(flat, k, out)
    elif out.dtype == np.uint16:
        _kernels.merge_exp2(flat, k, out)
    else:  # pragma: no cover - callers pass only these
        raise TypeError(f"no exp layout for {out.dtype}")


def merge_bytes(planes: np.ndarray, out: np.ndarray) -> None:
    """Undo the ``bytes`` split: ``planes`` is (size, k) uint8, ``out`` the (k, size) uint8 element bytes."""
    size, k = planes.shape
    _kernels.merge_bytes(planes.reshape(-1), k, size, out.reshape(-1))


def scatter(bits: np.ndarray, values: np.ndarray, out: np.ndarray) -> int:
    """``out[i] = next value`` where bit ``i`` of the little-endian bitmap is set, else 0.

    ``values`` and ``out`` are words of one size (any unsigned dtype). Returns the number
    of values placed, or −1 when the bitmap marks more entries than there are values or
    an entry past ``out``'s end; it never writes outside ``out``.
    """
    if bits.size * 8 > out.size + 7 or bits.size * 8 < out.size:
        raise ValueError("bitmap and output sizes disagree")
    return _kernels.scatter(bits, values, out.size, out, _POPCOUNT, _POSITIONS)


def mask_split(ints: np.ndarray, out: np.ndarray, values: np.ndarray) -> int:
    """The ``zeros: bitmap`` segment of one chunk (:func:`tvreg._format.codecs.planes.encode_masked`) into ``out``.

    ``ints`` are the chunk's uint32 (fp32) or uint16 (bf16) words; ``out`` (uint8) must hold
    ``ceil(n/8) + itemsize·n`` bytes and ``values`` (scratch, ``ints``' dtype) ``n`` words.
    Writes the little-endian bitmap of the non-zero words, then their ``exp`` planes, and
    returns the number k of non-zeros: the segment is ``out[: ceil(n/8) + itemsize·k]``.
    """
    if out.size < (ints.size + 7) // 8 + ints.itemsize * ints.size or values.size < ints.size or values.dtype != ints.dtype:
        raise ValueError("output or scratch too small for the segment")
    split = {np.dtype(np.uint32): _kernels.split_exp4, np.dtype(np.uint16): _kernels.split_exp2}.get(ints.dtype)
    if split is None:  # pragma: no cover - callers pass only these
        raise TypeError(f"no exp layout for {ints.dtype}")
    k = int(_kernels.mask_compact(ints, values, out))
    split(values, k, out[(ints.size + 7) // 8 :])
    return k


def bf16_delta(ft: np.ndarray, pre: np.ndarray, out: np.ndarray) -> None:
    """``out = float32(ft) − float32(pre)`` for the uint16 bit patterns of two bf16 tensors (one pass, exact)."""
    if not (ft.size == pre.size == out.size):
        raise ValueError("sizes differ")
    _kernels.bf16_delta(ft, pre, out)


def count_sketch(
    part: np.ndarray, seed: int, shift: int, start: int, buckets: np.ndarray, lanes: np.ndarray | None = None
) -> None:
    """Add one chunk's CountSketch into ``buckets`` (float64, zeros for NumPy's result), as
    :func:`tvreg._format.sketch.sketch_tensor`'s NumPy loop does with ``np.bincount``: the same
    splitmix64 hashes of the indices ``start + 1, ...``, the same signs, the sums in index order.

    With ``lanes`` (int64, shape (5, 2¹⁵)), also adds what :func:`magnitude_hist` with ``high=-1``
    adds, in the same pass: the sketch's top-20% cutoff then needs no pass of its own over τ.
    """
    if part.dtype != np.float32 or buckets.dtype != np.float64 or buckets.size != 1 << (64 - shift):
        raise ValueError("a float32 chunk and float64 buckets, one per hash value")
    if lanes is None:
        lanes = _NO_LANES
    elif lanes.dtype != np.int64 or lanes.shape != (5, 1 << 15):
        raise ValueError("int64 lanes of shape (5, 2**15)")
    _kernels.count_sketch(part, np.uint64(seed), np.uint64(shift), start, buckets, lanes)


def magnitude_hist(x: np.ndarray, high: int, lanes: np.ndarray) -> None:
    """Add the radix histogram of ``|x|`` (float32) into ``lanes`` for :func:`tvreg._merge.trim._radix_select`.

    ``high < 0``: counts by the top 15 bits of ``|x|``'s float bits (2¹⁵ bins); otherwise
    counts, among the ``|x|`` whose top bits equal ``high``, by the low 16 bits (2¹⁶ bins).
    ``lanes`` is int64 of shape (5, bins), the histogram being ``lanes[:4].sum(axis=0)``; with
    ``high < 0``, ``lanes[4]`` ORs in the low 16 bits of each bin's entries, so a bin whose row-4
    value is 0 holds one value only (its top bits, then zeros: every bf16 number) and needs no
    second pass. NaNs are not counted.
    """
    bins = 1 << (15 if high < 0 else 16)
    if x.dtype != np.float32 or lanes.dtype != np.int64 or lanes.shape != (5, bins):
        raise ValueError("float32 input and int64 lanes of shape (5, bins)")
    _kernels.magnitude_hist(x.view(np.uint32), np.int64(high), lanes)


class MagnitudeLanes:
    """Per-thread lanes for :func:`magnitude_hist` (``high=-1``) over one tensor whose parts are counted on
    several threads at once; :meth:`total` adds them up (row 4 ORed), as one array over every entry would.

    The arrays come from a free list and go back to it: fresh pages for 1.3 MB a tensor and thread
    cost more than the pass that fills them. A thread that counts parts of two tensors at once
    (the shared decode threads do) counts each into that tensor's own lanes.
    """

    _free: list[np.ndarray] = []
    _free_lock = threading.Lock()

    def __init__(self) -> None:
        self._used: dict[int, np.ndarray] = {}

    def here(self) -> np.ndarray:
        """This thread's lanes for this tensor, zeroed on first use."""
        key = threading.get_ident()
        lanes = self._used.get(key)
        if lanes is None:
            with self._free_lock:
                lanes = self._free.pop() if self._free else None
            if lanes is None:
                lanes = np.zeros((5, 1 << 15), np.int64)
            else:
                lanes.fill(0)
            self._used[key] = lanes
        return lanes

    def total(self) -> np.ndarray:
        """The lanes of every thread added up (a fresh array); the per-thread ones go back to the free list."""
        parts = list(self._used.values())
        out = np.add.reduce(parts) if parts else np.zeros((5, 1 << 15), np.int64)
        if parts:
            out[4] = np.bitwise_or.reduce([one[4] for one in parts])
        self._used = {}
        with self._free_lock:
            self._free.extend(parts[: max(0, 16 - len(self._free))])
        return out


def nth_magnitude(x: np.ndarray, t: float, need: int) -> tuple[int, int]:
    """Where the ``need``-th entry with ``|x| == t`` (finite ``t``) lies in the float32 ``x``: ``(index, need)``,
    or ``(-1, how many there are)`` when ``x`` holds fewer. One pass that stops there, no temporaries:
    TIES' tie cut (:func:`tvreg._merge.trim.magnitude_trim`) otherwise took ``np.abs``, a comparison
    and ``np.flatnonzero`` of every chunk up to it.
    """
    if x.dtype != np.float32 or not math.isfinite(t) or need < 1:
        raise ValueError("float32 input, a finite magnitude and need ≥ 1")
    at = int(_kernels.nth_magnitude(x.view(np.uint32), np.float32(abs(t)).view(np.uint32), need))
    return (at, need) if at >= 0 else (-1, -1 - at)


def consensus_mix(
    acc: np.ndarray,
    taus: list[np.ndarray],
    weights: list[float],
    cutoffs: list[tuple[int, int]],
    start: int,
    *,
    normalize: bool,
    lam: float,
) -> None:
    """TIES' trim, sign election and disjoint mean of one chunk, added onto the float32 anchor ``acc``.

    ``taus[k]`` is skill k's float32 τ over the chunk (read only), ``cutoffs[k]`` its trim as
    (float32 bits of the threshold, tie cut) or (-1, 0) to keep every entry, and ``start`` the
    chunk's first index in the tensor. Every float32 operation and its order are those of
    :func:`tvreg._merge.engine.merge_chunk`'s consensus path, so the bits are the same; that path
    walks each chunk ~15 times through torch's vectorised passes, this one pass per step over L1-sized blocks
    (4x less CPU per element measured on a 2¹⁸-element chunk, 3 skills).
    """
    n = acc.size
    if acc.dtype != np.float32 or not taus or any(t.dtype != np.float32 or t.size != n for t in taus):
        raise ValueError("a float32 accumulator and float32 τ chunks of its size")
    if not (len(weights) == len(cutoffs) == len(taus)):
        raise ValueError("one weight and one cutoff per τ")
    _kernels.consensus_mix(
        acc,
        tuple(t.view(np.int32) for t in taus),
        np.array(weights, dtype=np.float32),
        np.array([c[0] for c in cutoffs], dtype=np.int64),
        np.array([c[1] for c in cutoffs], dtype=np.int64),
        np.int64(start),
        bool(normalize),
        np.float32(lam),
        lam != 1.0,
    )


def scatter_add(bits: np.ndarray, values: np.ndarray, acc: np.ndarray, weight: np.float32) -> int:
    """``acc[i] = acc[i] + τ_i·weight`` in float32 for every ``i``, where τ_i is the next of ``values``
    if bit ``i`` of the little-endian bitmap is set, else +0.0: one pass, τ never written out.

    Each product and each sum is rounded to float32, in that order, as torch's
    ``acc.add_(tau.mul_(weight))`` rounds them, so the bits equal the engine's; a clear bit
    adds ``+0.0·weight`` too (it turns an accumulated −0.0 into +0.0 when ``weight ≥ 0``, as
    adding a decoded zero does). ``values`` holds the k values plus one slot past them
    (read, never used, after the last set bit); ``acc`` is float32. Returns the number of
    values used, or −1 when the bitmap marks more than k entries; it never reads or writes
    outside the arrays. Bits past ``acc``'s end are ignored (the caller checks them).
    """
    if bits.size * 8 > acc.size + 7 or bits.size * 8 < acc.size or values.size < 1:
        raise ValueError("bitmap, values and accumulator sizes disagree")
    w = np.float32(weight)
    return int(_kernels.scatter_add(bits, values, acc.size, acc, w, np.float32(0.0), _POPCOUNT))


def add_round_bf16(
    general: np.ndarray,
    frames: np.ndarray,
    nnz: np.ndarray,
    weights: np.ndarray,
    values: np.ndarray,
    out: np.ndarray,
    out32: np.ndarray,
) -> int:
    """One frame of task arithmetic on bf16 weights: ``out = bf16(((θ_G + τ_1·ω_1) + τ_2·ω_2) + …)``, τ never written out.

    ``general`` and ``out`` are the frame's bf16 words (uint16) of θ_G and of the result;
    ``frames[k]`` (uint8, one row per skill) is skill k's raw ``exact`` frame: its
    little-endian bitmap of ``len(general)`` bits, then the ``exp`` planes of its
    ``nnz[k]`` non-zeros; ``weights`` are the float32 ω_k; ``values`` (float32 scratch)
    must hold ``Σ (nnz[k] + 1)`` words. Each element's float32 products and sums are
    rounded in the order :func:`scatter_add` rounds them, one skill after another, and
    the sum is rounded to nearest even once, as torch's float32 → bf16 copy rounds every
    number. A NaN sum gets no canonical bits here (torch's vector and scalar paths give
    different ones): the return value counts them, and a caller that gets a non-zero count
    asks again with ``out32`` (``len(general)`` float32) to have the float32 sums written
    there instead, for torch to round. Returns the NaN count, or ``-1 - k`` when skill k's
    bitmap marks more or fewer entries than ``nnz[k]``. Never reads or writes outside the
    arrays; the caller checks the pad bits past ``len(general)`` in the last bitmap byte.
    """
    count = general.size
    skills = frames.shape[0]
    if (
        out.size != count
        or (out32.size and out32.size != count)
        or nnz.size != skills
        or weights.size != skills
        or weights.dtype != np.float32
        or nnz.dtype != np.int64
        or any(not 0 <= int(k) <= count or frames.shape[1] < (count + 7) // 8 + 4 * int(k) for k in nnz)
        or values.dtype != np.float32
        or values.size < int(nnz.sum()) + skills
    ):
        raise ValueError("frames, counts, weights and outputs disagree")
    return int(_kernels.add_round_bf16(general, frames, nnz, weights, values, out, out32, _POPCOUNT))


def hash_positions(lo: int, hi: int, threshold: int, seed: int, out: np.ndarray) -> int:
    """The positions ``lo ≤ i < hi`` whose murmur3 hash of (``seed``, ``i``) is below ``threshold``, in order, into ``out``.

    One pass with no temporaries, and no branch on the coin flip: NumPy's version
    (:func:`~tvreg._format.codecs.sparse.hashed_positions`) makes eight passes over a uint32
    array of the range, then a ``flatnonzero`` and an int64 copy. ``out`` (int32 or
    int64) takes the first ``out.size − 1`` of them (its last slot is scratch); the return
    value counts them all, so a caller sizing ``out`` from an untrusted count sees a larger
    true count without a write past the end. An empty ``out`` only counts.
    """
    if not 0 <= lo <= hi <= 1 << 32 or not 0 <= threshold < 1 << 32 or not 0 <= seed < 1 << 32:
        raise ValueError("hash range, threshold or seed out of bounds")
    return int(_kernels.hash_positions(lo, hi, threshold, seed, out))


def place(indices: np.ndarray, values: np.ndarray, start: int, out: np.ndarray) -> None:
    """``out[indices − start] = values``: a sparse form's values into a zeroed dense range, in one pass.

    Why not torch's indexed store: it copies int32 positions to int64 first and then
    runs its general scatter, 2.7x this loop on a random 20% of 26M entries. Raises
    ValueError when a position falls outside ``out`` (nothing past it is written).
    """
    if indices.size != values.size or values.dtype != out.dtype:
        raise ValueError("positions, values and output disagree")
    if _kernels.place(indices, values, start, out):
        raise ValueError("a sparse position falls outside its tensor")


def sparse_add(indices: np.ndarray, values: np.ndarray, acc: np.ndarray, weight: float) -> int:
    """``acc[i] = acc[i] + τ_i·weight`` for every ``i``, τ_i the value at position ``i`` or +0.0: one pass, τ never expanded.

    The bits of :meth:`~tvreg._format.codecs.forms.StoredForm.add_scaled`'s chunked path: each
    product and each sum rounded to float32 in that order, and an absent entry adds
    ``+0.0·weight`` (turning an accumulated −0.0 into +0.0 when ``weight ≥ 0``, as adding a
    decoded zero does). ``values`` (float32) holds one value per position and then one
    +0.0 (:meth:`~tvreg._format.codecs.forms.Sparse._closed_values`). ``indices`` ascending; returns how many of them were
    matched (all those below ``acc.size`` unless they were out of order). Never reads or
    writes outside the arrays.
    """
    if values.size != indices.size + 1 or values.dtype != np.float32 or acc.dtype != np.float32 or values[-1] != 0:
        raise ValueError("positions, values and accumulator disagree")
    if not indices.size:
        np.add(acc, values[-1:] * np.float32(weight), out=acc)
        return 0
    return int(_kernels.sparse_add(indices, values, acc, np.float32(weight)))


def hash_add(threshold: int, seed: int, values: np.ndarray, acc: np.ndarray, weight: float) -> int:
    """:func:`sparse_add` for positions hashed as :func:`hash_positions` hashes them (same bits), none stored.

    Why: a ``select=random`` form's positions are a hash's; computing them into an array
    and walking it costs two passes and an int per kept entry, while the hash of a block
    is a vectorised loop. ``values`` as for :func:`sparse_add`; returns how many positions
    below ``acc.size`` the hash kept (a surplus reads the closing +0.0, never past it).
    """
    if values.size < 1 or values.dtype != np.float32 or acc.dtype != np.float32 or values[-1] != 0:
        raise ValueError("values and accumulator disagree")
    if acc.size > 1 << 32 or not 0 <= threshold < 1 << 32 or not 0 <= seed < 1 << 32:
        raise ValueError("hash range, threshold or seed out of bounds")
    return int(_kernels.hash_add(threshold, seed, values, acc, np.float32(weight)))


def hash_add_round_bf16(
    general: np.ndarray, threshold: int, seed: int, values: np.ndarray, weight: float, out: np.ndarray, out32: np.ndarray
) -> tuple[int, int]:
    """``out = bf16(θ_G + τ·weight)`` for a hashed sparse τ (:func:`hash_add`'s positions and values), in one pass.

    ``general`` and ``out`` are bf16 words (uint16) of one size; the float32 sum is rounded
    to nearest even as :func:`add_round_bf16` rounds it, and NaN sums are counted, not
    rounded: a caller that gets a non-zero count asks again with ``out32`` (float32, the
    size of ``general``) for torch to round. Returns ``(positions the hash kept, NaN sums)``.
    """
    if (
        out.size != general.size
        or (out32.size and out32.size != general.size)
        or values.size < 1
        or values.dtype != np.float32
        or values[-1] != 0
        or general.size > 1 << 32
        or not 0 <= threshold < 1 << 32
        or not 0 <= seed < 1 << 32
    ):
        raise ValueError("θ_G, values and outputs disagree")
    found = np.zeros(1, dtype=np.uint64)
    nans = int(_kernels.hash_add_round_bf16(general, threshold, seed, values, np.float32(weight), out, out32, found))
    return int(found[0]), nans


def expand_int4(raw: np.ndarray, scales: np.ndarray, group: int, out: np.ndarray) -> int:
    """``out[j] = q_j·scales[j // group]`` for the packed int4 codes ``raw``, in one pass; returns how many are −8.

    Why: the NumPy path checks every byte against a table, looks each up into an int8
    array, widens it and multiplies by a repeated scale array, four passes and two
    temporaries per code; a sparse skill's kept values are millions of them.
    """
    if raw.dtype != np.uint8 or raw.size * 2 < out.size or scales.dtype != np.float32 or out.dtype != np.float32:
        raise ValueError("codes, scales and output disagree")
    if group < 1 or scales.size * group < out.size:
        raise ValueError("too few scales for the codes")
    return int(_kernels.expand_int4(raw, scales, group, out))
