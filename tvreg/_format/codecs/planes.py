"""Reversible byte layouts that make float tensors compress well under zstd.

Why: a float's bytes mix fields with very different statistics. In τ of two bf16/fp16
checkpoints most low mantissa bytes are zero, the exponents of the non-zero entries
cluster in a few values, and the sign and top mantissa bits look random. Putting each
field in its own *plane* (all elements' exponents, then all signs+top mantissas, ...)
hands zstd long runs of similar bytes.

Layouts, as stored in a codec's ``params["planes"]``:

- ``"exp"`` (the default since tvreg 0.2): an exponent/mantissa split. For fp32 the
  planes are the 8 exponent bits, then sign + mantissa bits 22..16, then mantissa bits
  15..8, then 7..0; for bf16 the exponent, then sign + the 7 mantissa bits.
- ``"bytes"``: plain byte planes (byte 0 of every element, then byte 1, ...), the layout
  of tvreg 0.1 ``exact`` artifacts (``{"shuffle": 4}``), still decoded.

All functions work on little-endian byte views of contiguous tensors, plane by plane
with uint8 vector ops, so they run at memory speed and release the GIL.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import jit, zstd_frame

if sys.byteorder != "little":  # pragma: no cover
    raise ImportError("tvreg's codecs assume a little-endian machine")

LAYOUTS = ("exp", "bytes")
_WORDS = {4: np.uint32, 2: np.uint16, 1: np.uint8}


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """(n, itemsize) uint8 view of a contiguous tensor."""
    flat = t.reshape(-1)
    return flat.view(torch.uint8).view(flat.numel(), flat.element_size())


def split(t: torch.Tensor, layout: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """The planes of a contiguous fp32 or bf16 tensor as a (itemsize, n) uint8 tensor."""
    b = _as_bytes(t)
    n, size = b.shape
    planes = torch.empty((size, n), dtype=torch.uint8) if out is None else out
    if layout == "bytes":
        for i in range(size):
            planes[i] = b[:, i]
        return planes
    hi, lo = b[:, size - 1], b[:, size - 2]
    torch.bitwise_or(torch.bitwise_left_shift(hi, 1), torch.bitwise_right_shift(lo, 7), out=planes[0])
    torch.bitwise_or(torch.bitwise_and(hi, 0x80), torch.bitwise_and(lo, 0x7F), out=planes[1])
    for i in range(2, size):
        planes[i] = b[:, size - 1 - i]
    return planes


def merge(planes: torch.Tensor, layout: str, out: torch.Tensor) -> torch.Tensor:
    """Undo :func:`split` into the contiguous tensor ``out`` (fp32 or bf16) and return it.

    NumPy rather than torch here: its strided uint8 stores into the interleaved bytes
    are about twice as fast as torch's on this path, which every ``exact`` install walks.
    """
    b = _as_bytes(out).numpy()
    p = planes.numpy()
    size = b.shape[1]
    if p.flags.c_contiguous and jit.ready(out.numel()):
        if layout == "bytes":
            jit.merge_bytes(p, b)
            return out
        if size in _WORDS:
            jit.merge_exp(p, b.view(_WORDS[size]).reshape(-1))
            return out
    if layout == "bytes":
        for i in range(size):
            b[:, i] = p[i]
        return out
    exp, sm = p[0], p[1]
    tmp = np.empty_like(exp)
    np.bitwise_and(sm, 0x80, out=tmp)
    b[:, size - 1] = np.bitwise_or(tmp, np.right_shift(exp, 1), out=tmp)
    np.bitwise_and(exp, 1, out=tmp)
    np.left_shift(tmp, 7, out=tmp)
    b[:, size - 2] = np.bitwise_or(tmp, np.bitwise_and(sm, 0x7F), out=tmp)
    for i in range(2, size):
        b[:, size - 1 - i] = p[i]
    return out


def encode(flat: torch.Tensor, layout: str = "exp") -> tuple[bytes, dict]:
    """Split a flat fp32/bf16 tensor chunk by chunk and zstd each chunk as its own frame.

    Returns the blob and its parameters (``planes`` and, when there are several frames,
    the frame table), so every frame can be decompressed and un-split independently.
    """
    from .base import raw_view

    size = flat.element_size()
    per = zstd_frame.CHUNK_BYTES // size
    n = flat.numel()
    raw = torch.empty(n * size, dtype=torch.uint8)
    for lo in range(0, n, per):
        hi = min(n, lo + per)
        split(flat[lo:hi], layout, out=raw[size * lo : size * hi].view(size, hi - lo))
    data, stream = zstd_frame.compress_stream(raw_view(raw))
    return data, {"planes": layout, **stream}


def decode(data: bytes | memoryview, params: dict, numel: int, dtype: torch.dtype, *, where: str) -> torch.Tensor:
    """Undo :func:`encode`: a fresh flat tensor of ``numel`` fp32 or bf16 values.

    Sizes are checked against the frames before anything is allocated; each frame is
    un-split by the worker that decompressed it.
    """
    from ...errors import CorruptArtifact

    layout = params.get("planes", "exp")
    if layout not in LAYOUTS:
        raise CorruptArtifact(f"tensor `{where}` uses an unknown plane layout {layout!r}.")
    size = dtype.itemsize
    spans = zstd_frame.plan(data, numel * size, params, where=where)
    if any(lo % size or hi % size for _, _, lo, hi in spans):
        raise CorruptArtifact(f"tensor `{where}` has frames that split an element.")
    out = zstd_frame.empty(numel, dtype, where=where)

    def finish(i: int, raw: torch.Tensor) -> None:
        a, b = spans[i][2] // size, spans[i][3] // size
        merge(raw.view(size, b - a), layout, out[a:b])

    zstd_frame.decompress_frames(data, spans, where=where, each=finish)
    return out


_INT_OF = {4: torch.int32, 2: torch.int16, 1: torch.int8}


def _layout_of(dtype: torch.dtype) -> str:
    """Floats are split into ``exp`` planes; int8 codes are stored as they are (``none``)."""
    return "exp" if dtype.is_floating_point else "none"


def _bitmap_bytes(n: int) -> int:
    return (n + 7) // 8


def encode_masked(flat: torch.Tensor) -> tuple[bytes, dict]:
    """A bitmap of the non-zero entries, then the non-zeros' ``exp`` planes; one frame per chunk.

    Why: most entries of a short fine-tune's τ are exactly zero; a bitmap costs under a
    bit per entry after zstd, where the planes of a zero cost a few bits (and zstd's
    Huffman stage spends at least one bit on any byte, however common). −0.0 counts as
    non-zero, so decoding is bit-exact. Takes fp32, bf16 or int8 (``int8`` codes are
    stored without a plane split).
    """

    size = flat.element_size()
    layout = _layout_of(flat.dtype)
    n = flat.numel()
    per = zstd_frame.CHUNK_BYTES // size
    count = -(-n // per)
    nnz = [0] * count
    compiled = layout == "exp" and size in _WORDS and jit.ready(n)

    def segment(i: int) -> bytes | memoryview:
        chunk = flat[i * per : (i + 1) * per]
        if compiled:
            m = chunk.numel()
            out = zstd_frame.scratch(_bitmap_bytes(m) + size * m, "encode", slot="segment").numpy()
            words = zstd_frame.scratch(size * m, "encode", slot="values").numpy().view(_WORDS[size])
            k = nnz[i] = jit.mask_split(chunk.view(_INT_OF[size]).numpy().view(_WORDS[size]), out, words)
            return memoryview(out[: _bitmap_bytes(m) + size * k])  # type: ignore[arg-type]  # numpy's stubs make ndarray a buffer only on 3.12+
        ints = chunk.view(_INT_OF[size]).numpy()  # NumPy: torch's compare and select are far slower here
        nonzero = ints != 0
        picked = ints[nonzero]
        values = torch.from_numpy(picked).view(chunk.dtype) if picked.size else chunk[:0].contiguous()
        bits = np.packbits(nonzero, bitorder="little")
        stored = split(values, "exp") if layout == "exp" else values.view(torch.uint8)
        nnz[i] = values.numel()
        return bits.tobytes() + stored.numpy().tobytes()

    data, stream = zstd_frame.compress_made(count, segment, profile=zstd_frame.PLANES)  # in parallel, joined in order
    params = {"zeros": "bitmap", "planes": layout, "nnz": nnz, **stream}
    if count > 1:
        params["chunk_elems"] = per
    return data, params


def _masked_frames(
    data: bytes | memoryview, params: dict, n: int, dtype: torch.dtype, where: str
) -> tuple[int, list[int], list[int], list[tuple[int, int, int, int]]]:
    """``(chunk_elems, entries per frame, non-zeros per frame, frame spans)`` of a masked stream, every size
    (bitmap, non-zero count, frame) checked against the manifest, nothing allocated."""
    from ...errors import CorruptArtifact

    size = dtype.itemsize
    nnz = params.get("nnz")
    per = params.get("chunk_elems", max(n, 1))
    if (
        params.get("zeros") != "bitmap"
        or params.get("planes") != _layout_of(dtype)
        or type(per) is not int
        or per <= 0
        or not isinstance(nnz, list)
        or len(nnz) != -(-n // per)
    ):
        raise CorruptArtifact(f"tensor `{where}` has malformed zero-bitmap parameters.")
    sizes = [min(per, n - lo) for lo in range(0, n, per)]
    if not all(type(k) is int and 0 <= k <= c for k, c in zip(nnz, sizes, strict=True)):
        raise CorruptArtifact(f"tensor `{where}` declares more non-zero entries than it has.")
    segments = [_bitmap_bytes(c) + size * k for c, k in zip(sizes, nnz, strict=True)]
    return per, sizes, nnz, zstd_frame.plan_segments(data, segments, params, where=where)


def decode_masked(
    data: bytes | memoryview,
    params: dict,
    numel: int,
    dtype: torch.dtype,
    *,
    where: str,
    out: torch.Tensor | None = None,
    lanes: jit.MagnitudeLanes | None = None,
) -> torch.Tensor:
    """Undo :func:`encode_masked`: a flat tensor of ``numel`` fp32, bf16 or int8 values (in ``out`` when given).

    Every size (bitmap, non-zero count, frame) is checked against the manifest before
    anything is allocated, and each frame's bitmap must mark exactly its declared count.

    ``lanes`` (fp32, compiled kernels only) also counts the first radix histogram of |τ| that TIES'
    cutoff starts from (:func:`tvreg._merge.trim.magnitude_trim`), from each frame's non-zeros
    while they are in cache, the zeros added as one count: a pass over the dense τ fewer.
    """
    n = numel
    if lanes is not None and not (dtype == torch.float32 and jit.ready(n)):
        raise ValueError("a magnitude histogram comes with fp32 values and the compiled kernels only")
    per, sizes, nnz, spans = _masked_frames(data, params, n, dtype, where)
    out = zstd_frame.empty(n, dtype, where=where) if out is None else _check_out(out, n, dtype)

    def finish(i: int, raw: torch.Tensor) -> None:
        _decode_frame(raw, sizes[i], nnz[i], out[i * per : i * per + sizes[i]], where, lanes)

    zstd_frame.decompress_frames(data, spans, where=where, each=finish)
    if lanes is not None:
        lanes.here()[0, 0] += n - sum(nnz)  # every zero entry: bucket 0, no low bits
    return out


def add_masked(data: bytes | memoryview, params: dict, numel: int, *, where: str, acc: torch.Tensor, weight: float) -> None:
    """``acc ← acc + τ·weight`` over the fp32 τ of :func:`encode_masked`, frame by frame, τ never materialised.

    Why: an install adds each skill's ω·τ onto θ_G in float32. Decoding τ to a tensor and
    then multiplying and adding walks τ's 4 bytes per entry three more times; here each
    frame's bitmap and planes are read once, straight into the accumulator. The float32
    roundings are those of ``acc.add_(decode_masked(...).mul_(weight))``, bit for bit,
    and the frames are checked exactly as :func:`decode_masked` checks them, each before
    it touches ``acc`` (a corrupt frame can leave earlier frames added: ``acc`` is scratch).
    ``weight`` must be a float32 value.
    """
    per, sizes, nnz, spans = _masked_frames(data, params, numel, torch.float32, where)
    if acc.dtype != torch.float32 or not acc.is_contiguous() or acc.numel() != numel:
        raise ValueError(f"`acc` must be a contiguous float32 tensor of {numel} elements")
    flat = acc.reshape(-1)
    w = np.float32(weight)
    if float(w) != weight:
        raise ValueError(f"weight {weight!r} is not a float32 value")

    def finish(i: int, raw: torch.Tensor) -> None:
        count, k = sizes[i], nnz[i]
        target = flat[i * per : i * per + count]
        nbits = _bitmap_bytes(count)
        bits = raw[:nbits].numpy()
        if jit.ready(count):
            if _pad_bits_set(bits, count):
                raise _bitmap_disagrees(where)
            values = zstd_frame.scratch(4 * (k + 1), where, slot="values").numpy().view(np.uint32)
            jit.merge_exp(raw[nbits:].numpy().reshape(4, k), values[:k])
            values[k] = 0
            if jit.scatter_add(bits, values.view(np.float32), target.numpy(), w) != k:
                raise _bitmap_disagrees(where)
            return
        tau = zstd_frame.scratch(4 * count, where, slot="tau").view(torch.float32)
        _decode_frame(raw, count, k, tau, where)
        t = tau.numpy()
        np.multiply(t, w, out=t)
        np.add(target.numpy(), t, out=target.numpy())

    zstd_frame.decompress_frames(data, spans, where=where, each=finish)


@dataclass(frozen=True)
class MaskedBlob:
    """A digest-checked fp32 blob of :func:`encode_masked`: what :func:`add_round_masked` reads frame by frame."""

    data: bytes | memoryview
    params: dict
    where: str


_NO_FLOAT32 = np.empty(0, dtype=np.float32)


def add_round_masked(blobs: Sequence[tuple[MaskedBlob, float]], general: torch.Tensor, out: torch.Tensor) -> bool:
    """``out ← bf16(((θ_G + τ_1·ω_1) + τ_2·ω_2) + …)`` for bf16 ``general``, frame by frame; τ and the sum never in memory.

    Why: task arithmetic on the CPU otherwise walks a tensor-sized float32 sum once to
    fill it from θ_G, once per skill to add τ_k·ω_k (:func:`add_masked`) and once more to
    round it, each pass from memory. Here the k-th frame of every blob is decompressed
    side by side and one compiled loop (:func:`tvreg._format.codecs.jit.add_round_bf16`)
    adds them onto θ_G in a cache-sized block and rounds, with the same float32 roundings
    in the same order, so the bits equal :func:`add_masked` for each blob in turn and a
    float32 → bf16 copy. Every blob's frames are checked as :func:`decode_masked` checks
    them, each frame before it is used.

    Returns False, having done nothing, unless ``general`` and ``out`` are contiguous bf16
    of one size, every blob is a zero-bitmap fp32 blob of that many entries, their frames
    hold the same entries (one ``chunk_elems``), and the work is large enough for the
    compiled kernels. ``ω_k`` must be float32 values.
    """
    n = general.numel()
    if (
        not blobs
        or general.dtype != torch.bfloat16
        or out.dtype != torch.bfloat16
        or out.numel() != n
        or not general.is_contiguous()
        or not out.is_contiguous()
        or not jit.ready(n)
    ):
        return False
    layouts = [_masked_frames(b.data, b.params, n, torch.float32, b.where) for b, _ in blobs]
    per = layouts[0][0]
    if any(layout[0] != per for layout in layouts):
        return False
    weights = np.array([w for _, w in blobs], dtype=np.float32)
    if any(float(w) != weight for w, (_, weight) in zip(weights, blobs, strict=True)):
        raise ValueError(f"weights {[w for _, w in blobs]!r} are not all float32 values")
    g = general.reshape(-1).view(torch.int16).numpy().view(np.uint16)
    flat_out = out.reshape(-1)
    o = flat_out.view(torch.int16).numpy().view(np.uint16)
    sizes = layouts[0][1]
    skills = len(blobs)
    sources = [memoryview(b.data).cast("B") for b, _ in blobs]

    def one(i: int) -> None:
        count = sizes[i]
        nbits = _bitmap_bytes(count)
        stride = max(layout[3][i][3] - layout[3][i][2] for layout in layouts)
        need = skills * stride
        rows = zstd_frame.scratch(need, "", slot="frames", limit=max(need, zstd_frame.SCRATCH_MAX)).numpy()
        rows = rows.reshape(skills, stride)
        for k, (blob, _) in enumerate(blobs):
            s_lo, s_hi, d_lo, d_hi = layouts[k][3][i]
            zstd_frame.decompress_into(sources[k][s_lo:s_hi], memoryview(rows[k, : d_hi - d_lo]), where=blob.where)  # type: ignore[arg-type]  # numpy's stubs make ndarray a buffer only on 3.12+
            if _pad_bits_set(rows[k, :nbits], count):
                raise _bitmap_disagrees(blob.where)
        nnz = np.array([layout[2][i] for layout in layouts], dtype=np.int64)
        words = 4 * (int(nnz.sum()) + skills)
        values = zstd_frame.scratch(words, "", slot="values", limit=max(words, zstd_frame.SCRATCH_MAX)).numpy().view(np.float32)
        lo = i * per
        found = jit.add_round_bf16(g[lo : lo + count], rows, nnz, weights, values, o[lo : lo + count], _NO_FLOAT32)
        if found < 0:
            raise _bitmap_disagrees(blobs[-1 - found][0].where)
        if found:  # NaN sums: torch's float32 → bf16 copy gives them its own bits
            acc = zstd_frame.scratch(4 * count, "", slot="sum").view(torch.float32)
            jit.add_round_bf16(g[lo : lo + count], rows, nnz, weights, values, o[lo : lo + count], acc.numpy())
            flat_out[lo : lo + count].copy_(acc)

    zstd_frame.each_chunk(len(sizes), one)
    return True


def _decode_frame(
    raw: torch.Tensor, count: int, k: int, target: torch.Tensor, where: str, lanes: jit.MagnitudeLanes | None = None
) -> None:
    """One frame of :func:`decode_masked` (its raw bitmap and planes in ``raw``) into ``target``."""
    dtype = target.dtype
    size = target.element_size()
    nbits = _bitmap_bytes(count)
    bits = raw[:nbits].numpy()
    if jit.ready(count) or lanes is not None:
        return _finish_compiled(bits, raw[nbits:], count, k, target, where, lanes)
    keep = np.unpackbits(bits, count=count, bitorder="little").view(np.bool_)
    if np.count_nonzero(keep) != k or _pad_bits_set(bits, count):
        raise _bitmap_disagrees(where)
    planes_ = raw[nbits:].view(size, k)
    if not dtype.is_floating_point:  # int8 codes: stored as they are
        values = planes_.reshape(-1).view(dtype)
    elif k == count:  # nothing to scatter: write the values in place
        merge(planes_, "exp", target)
        return
    else:
        values = merge(planes_, "exp", torch.empty(k, dtype=dtype))
    ints = target.view(_INT_OF[size]).numpy()
    ints.fill(0)
    # a boolean store wins when almost every entry is kept, an index store otherwise
    ints[keep if 8 * k > 7 * count else np.flatnonzero(keep)] = values.view(_INT_OF[size]).numpy()


def _finish_compiled(
    bits: np.ndarray,
    stored: torch.Tensor,
    count: int,
    k: int,
    target: torch.Tensor,
    where: str,
    lanes: jit.MagnitudeLanes | None = None,
) -> None:
    """One frame of :func:`decode_masked` with the compiled kernels: same checks, same bytes."""
    if _pad_bits_set(bits, count):
        raise _bitmap_disagrees(where)
    size = target.element_size()
    words = _WORDS[size]
    dest = target.view(torch.uint8).numpy().view(words)
    if not target.dtype.is_floating_point:
        values = stored.numpy()[:k]
    elif k == count:
        if jit.popcount(bits) != k:
            raise _bitmap_disagrees(where)
        merge(stored.view(size, k), "exp", target)
        if lanes is not None:
            jit.magnitude_hist(target.numpy(), -1, lanes.here())
        return
    else:
        values = zstd_frame.scratch(k * size, where, slot="values").numpy().view(words)
        jit.merge_exp(stored.numpy().reshape(size, k), values)
        if lanes is not None:
            jit.magnitude_hist(values.view(np.float32), -1, lanes.here())
    if jit.scatter(bits, values, dest) != k:
        raise _bitmap_disagrees(where)


def _pad_bits_set(bits: np.ndarray, count: int) -> bool:
    """Whether the last bitmap byte has bits set past entry ``count``."""
    return bool(count % 8 and int(bits[-1]) >> (count % 8))


def _bitmap_disagrees(where: str) -> Exception:
    from ...errors import CorruptArtifact

    return CorruptArtifact(f"tensor `{where}` has a zero bitmap that disagrees with its manifest.")


def _check_out(out: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    if out.dtype != dtype or not out.is_contiguous() or out.numel() < n:
        raise ValueError(f"`out` must be a contiguous {dtype} buffer of at least {n} elements")
    return out.reshape(-1)[:n]
