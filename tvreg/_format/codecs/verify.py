"""Verify a stored tensor in bounded memory: every check a decode makes, without expanding it.

Why: the registry decodes every tensor of an upload before accepting it (docs/reliability.md row 15),
and a manifest's shape is a claim. Expanding a ``sparse`` tensor with no kept entries,
or a ``lowrank`` one of rank 0, allocates whatever shape it declares from a blob of zero
bytes. This module walks the raw stream frame by frame in pieces of :data:`PIECE` bytes
and checks what a decode would check — frame sizes, zero bitmaps against their counts,
delta indices, hashed positions, scales — and finiteness, from the stored values
themselves: an fp32 or bf16 value is NaN or infinite exactly when its 8 exponent bits are
all ones, and the ``exp`` plane layout stores those bits as one byte per value. A
low-rank product is finite when the largest row norm of L times the largest column
norm of R is (Cauchy–Schwarz), and with quantised factors when Σₖ topₖ²·(largest L scale
of component k)·(largest R scale of k) is, read off the streamed scales; only when the
bound fails are rows multiplied, a few at a time. Memory is a few pieces plus the codec's compact factors; time is the raw bytes,
which zstd bounds at :data:`~tvreg._format.codecs.zstd_frame.MAX_RATIO` times the stored ones.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator

import numpy as np
import torch
import zstandard

from ...errors import CorruptArtifact
from . import planes, varint, zstd_frame
from .base import numel_of, param

PIECE = 1 << 20
_FP32_MAX = float(np.finfo(np.float32).max)

Handler = Callable[[np.ndarray], None]


def _frame_pieces(src: memoryview, expected: int, where: str) -> Generator[np.ndarray, None, None]:
    """The decompressed bytes of one frame, :data:`PIECE` at a time, exactly ``expected`` of them."""
    zstd_frame.check_declared_size(src, expected, where=where)
    buf = np.empty(min(PIECE, max(expected, 1)), dtype=np.uint8)
    view = memoryview(buf)  # type: ignore[arg-type]  # numpy's stubs make ndarray a buffer only on 3.12+
    done = 0
    try:
        with zstd_frame._decompressor().stream_reader(src, read_across_frames=False) as reader:
            while done < expected:
                want = min(len(buf), expected - done)
                filled = 0
                while filled < want:
                    got = reader.readinto(view[filled:want])
                    if not got:
                        break
                    filled += got
                if filled:
                    yield buf[:filled]
                done += filled
                if filled < want:
                    break
            extra = reader.read(1)
    except zstandard.ZstdError as exc:
        raise CorruptArtifact(f"tensor `{where}` has corrupt compressed data ({exc}).") from exc
    if done != expected or extra:
        raise CorruptArtifact(
            f"tensor `{where}` decompresses to {'more than ' if extra else ''}{done} bytes, "
            f"but the manifest declares {expected}."
        )


def _walk(data: bytes | memoryview, spans: list[tuple[int, int, int, int]], regions: Iterator[tuple[int, Handler]], where: str) -> None:
    """Feed the raw stream of ``spans`` to ``regions`` — (length, handler) in stream order — piece by piece."""
    src = memoryview(data).cast("B")
    current: tuple[int, Handler] | None = next(regions, None)
    left = current[0] if current else 0
    for s_lo, s_hi, d_lo, d_hi in spans:
        for piece in _frame_pieces(src[s_lo:s_hi], d_hi - d_lo, where):
            pos = 0
            while pos < len(piece):
                while current is not None and left == 0:
                    current = next(regions, None)
                    left = current[0] if current else 0
                if current is None:
                    raise CorruptArtifact(f"tensor `{where}` holds more data than its parameters describe.")
                take = min(left, len(piece) - pos)
                current[1](piece[pos : pos + take])
                pos += take
                left -= take
    while current is not None and left == 0:
        current = next(regions, None)
        left = current[0] if current else 0
    if current is not None:
        raise CorruptArtifact(f"tensor `{where}` holds less data than its parameters describe.")


def _skip(_: np.ndarray) -> None:
    return None


def _no_inf_exponents(where: str) -> Handler:
    def check(exponents: np.ndarray) -> None:
        if exponents.size and bool((exponents == 0xFF).any()):
            raise CorruptArtifact(f"tensor `{where}` has NaN or infinite values.")

    return check


class _Bitmap:
    """A zero bitmap of ``count`` bits that must mark exactly ``k`` and leave its pad bits clear."""

    def __init__(self, count: int, k: int, where: str) -> None:
        self.count, self.k, self.where, self.seen, self.marked = count, k, where, 0, 0
        self.nbytes = (count + 7) // 8

    def __call__(self, chunk: np.ndarray) -> None:
        self.seen += chunk.size
        self.marked += int(np.bitwise_count(chunk).sum(dtype=np.int64))
        if self.seen == self.nbytes:
            if self.count % 8 and int(chunk[-1]) >> (self.count % 8):
                raise planes._bitmap_disagrees(self.where)
            if self.marked != self.k:
                raise planes._bitmap_disagrees(self.where)


class _Aligned:
    """Hand ``fn`` whole elements of ``itemsize`` bytes however the pieces fall."""

    def __init__(self, itemsize: int, fn: Handler) -> None:
        self.itemsize, self.fn, self.carry = itemsize, fn, np.zeros(0, dtype=np.uint8)

    def __call__(self, chunk: np.ndarray) -> None:
        if self.carry.size:
            chunk = np.concatenate([self.carry, chunk])
        cut = chunk.size - chunk.size % self.itemsize
        self.carry = chunk[cut:].copy()
        if cut:
            self.fn(chunk[:cut])


def _scales_check(dtype: np.dtype, where: str) -> Handler:
    def check(raw: np.ndarray) -> None:
        scales = raw.view(dtype)
        if not bool(np.isfinite(scales).all()) or bool((scales < 0).any()):
            raise CorruptArtifact(f"tensor `{where}` has negative or non-finite int8 scales.")

    return check


def _lowbit_scales(kind: str, where: str, *, top: int) -> Handler:
    """A handler of a ``bf16``/``fp16``/``fp32`` scale region (:mod:`~tvreg._format.codecs.lowbit`), whole scales at a time."""
    from . import lowbit

    dtype = lowbit.SCALE_DTYPES[kind]

    def check(raw: np.ndarray) -> None:
        scales = torch.from_numpy(raw.copy()).view(dtype).to(torch.float32).numpy()
        lowbit.check_scales(scales, where, top=top)

    return _Aligned(dtype.itemsize, check)


class _Packed:
    """Packed 4-bit or 1-bit codes streamed piece by piece: no −8 nibble, no bit set past ``count``."""

    def __init__(self, count: int, bits: int, where: str) -> None:
        from . import lowbit

        self.count, self.bits, self.where, self.seen = count, bits, where, 0
        self.nbytes = lowbit.packed_bytes(count, bits)

    def __call__(self, chunk: np.ndarray) -> None:
        from . import lowbit

        self.seen += chunk.size
        lowbit.check_packed(chunk, self.count, self.bits, self.where, last=self.seen == self.nbytes)


def _lowbit_regions(kind: str, count: int, scale_bytes: int, scales: str, where: str) -> list[tuple[int, Handler]]:
    """The scale region, then the packed codes, of ``count`` int4 or sign codes."""
    from . import lowbit

    bits = lowbit.bits_per_code(kind)
    codes = _Packed(count, bits, where)
    return [(scale_bytes, _lowbit_scales(scales, where, top=lowbit.top_code(kind))), (codes.nbytes, codes)]


def _check_lowbit(kind: str) -> Callable[..., None]:
    def check(data, shape, params, where) -> None:
        from . import lowbit

        n = numel_of(shape)
        _, scales, scale_bytes = lowbit.scale_layout(params, n, where)
        spans = zstd_frame.plan(data, scale_bytes + lowbit.packed_bytes(n, lowbit.bits_per_code(kind)), params, where=where)
        _walk(data, spans, iter(_lowbit_regions(kind, n, scale_bytes, scales, where)), where)

    return check


def _masked_regions(numel: int, params: dict, size: int, floating: bool, where: str):
    """Per frame of :func:`planes.encode_masked`: the bitmap, then (floats) the exponent plane, then the rest."""
    per = params.get("chunk_elems", max(numel, 1))
    nnz = params.get("nnz")
    layout = "exp" if floating else "none"
    if (
        params.get("zeros") != "bitmap"
        or params.get("planes") != layout
        or type(per) is not int
        or per <= 0
        or not isinstance(nnz, list)
        or len(nnz) != -(-numel // per)
    ):
        raise CorruptArtifact(f"tensor `{where}` has malformed zero-bitmap parameters.")
    sizes = [min(per, numel - lo) for lo in range(0, numel, per)]
    if not all(type(k) is int and 0 <= k <= c for k, c in zip(nnz, sizes, strict=True)):
        raise CorruptArtifact(f"tensor `{where}` declares more non-zero entries than it has.")
    segments = [(c + 7) // 8 + size * k for c, k in zip(sizes, nnz, strict=True)]

    def regions() -> Iterator[tuple[int, Handler]]:
        exps = _no_inf_exponents(where)
        for c, k in zip(sizes, nnz, strict=True):
            bitmap = _Bitmap(c, k, where)
            yield bitmap.nbytes, bitmap
            if floating:
                yield k, exps
                yield (size - 1) * k, _skip
            else:
                yield size * k, _skip

    return segments, regions()


def _check_masked(data, params: dict, numel: int, size: int, floating: bool, where: str) -> None:
    segments, regions = _masked_regions(numel, params, size, floating, where)
    spans = zstd_frame.plan_segments(data, segments, params, where=where)
    _walk(data, spans, regions, where)


def _check_plain_planes(data, params: dict, numel: int, size: int, where: str) -> None:
    """:func:`planes.encode`'s frames: each frame holds the planes of its own elements."""
    layout = params.get("planes", "exp")
    if layout not in planes.LAYOUTS:
        raise CorruptArtifact(f"tensor `{where}` uses an unknown plane layout {layout!r}.")
    spans = zstd_frame.plan(data, numel * size, params, where=where)
    if any(lo % size or hi % size for _, _, lo, hi in spans):
        raise CorruptArtifact(f"tensor `{where}` has frames that split an element.")
    if layout == "bytes":
        for span in spans:
            _check_byte_planes(data, span, size, where)
        return

    def regions() -> Iterator[tuple[int, Handler]]:
        exps = _no_inf_exponents(where)
        for _, _, lo, hi in spans:
            m = (hi - lo) // size
            yield m, exps
            yield (size - 1) * m, _skip

    _walk(data, spans, regions(), where)


def _check_byte_planes(data, span: tuple[int, int, int, int], size: int, where: str) -> None:
    """Byte planes (tvreg 0.1): the exponent straddles the top two planes, read side by side by two readers."""
    s_lo, s_hi, d_lo, d_hi = span
    m = (d_hi - d_lo) // size
    src = memoryview(data).cast("B")[s_lo:s_hi]
    _walk(data, [span], iter([(d_hi - d_lo, _skip)]), where)  # sizes and integrity of the whole frame
    if m == 0:
        return

    def plane(i: int) -> Iterator[np.ndarray]:
        pieces = _frame_pieces(src, d_hi - d_lo, where)
        skipped = 0
        for piece in pieces:
            if skipped + piece.size <= i * m:
                skipped += piece.size
                continue
            start = max(0, i * m - skipped)
            stop = min(piece.size, (i + 1) * m - skipped)
            skipped += piece.size
            if stop > start:
                yield piece[start:stop].copy()
            if skipped >= (i + 1) * m:
                pieces.close()
                return

    hi_it, lo_it = plane(size - 1), plane(size - 2)
    hi_buf = lo_buf = np.zeros(0, dtype=np.uint8)
    while True:
        if hi_buf.size == 0:
            hi_buf = next(hi_it, np.zeros(0, dtype=np.uint8))
        if lo_buf.size == 0:
            lo_buf = next(lo_it, np.zeros(0, dtype=np.uint8))
        n = min(hi_buf.size, lo_buf.size)
        if n == 0:
            return
        if bool((((hi_buf[:n] & 0x7F) == 0x7F) & ((lo_buf[:n] & 0x80) != 0)).any()):
            raise CorruptArtifact(f"tensor `{where}` has NaN or infinite values.")
        hi_buf, lo_buf = hi_buf[n:], lo_buf[n:]


def _check_exact(data, shape, params, where) -> None:
    n = numel_of(shape)
    if "shuffle" in params:
        if n == 0 and not len(data):
            return
        _check_plain_planes(data, {**params, "planes": "bytes"}, n, 4, where)
    elif params.get("zeros") is None:
        _check_plain_planes(data, params, n, 4, where)
    else:
        _check_masked(data, params, n, 4, True, where)


def _check_bf16(data, shape, params, where) -> None:
    n = numel_of(shape)
    if params.get("zeros") is None:
        _check_plain_planes(data, params, n, 2, where)
    else:
        _check_masked(data, params, n, 2, True, where)


def _check_int8(data, shape, params, where) -> None:
    from .int8 import _SCALE_DTYPES

    n = numel_of(shape)
    gs = param(params, "group", int, where)
    kind = param(params, "scales", str, where)
    if gs < 1 or kind not in _SCALE_DTYPES:
        raise CorruptArtifact(f"tensor `{where}` has invalid int8 parameters (group {gs}, scales {kind!r}).")
    dtype = np.dtype("<f2") if kind == "fp16" else np.dtype("<f4")
    scale_bytes = -(-n // gs) * dtype.itemsize
    order = params.get("rows")
    if order not in (None, "by_spread"):
        raise CorruptArtifact(f"tensor `{where}` has an unknown int8 row order {order!r}.")
    rows = n // shape[-1] if order and len(shape) > 1 and shape[-1] else 1
    head_bytes = scale_bytes + (rows if order else 0)
    head: list[tuple[int, Handler]] = [(scale_bytes, _Aligned(dtype.itemsize, _scales_check(dtype, where))), (head_bytes - scale_bytes, _skip)]
    if params.get("zeros") is None:
        spans = zstd_frame.plan(data, head_bytes + n, params, where=where)
        _walk(data, spans, iter([*head, (n, _skip)]), where)
        return
    size = param(params, "scale_frame", int, where)
    if not 0 <= size <= len(data):
        raise CorruptArtifact(f"tensor `{where}` declares a scale frame of {size} bytes in a blob of {len(data)}.")
    view = memoryview(data).cast("B")
    _walk(view[:size], [(0, size, 0, head_bytes)] if head_bytes or size else [], iter(head), where)
    _check_masked(view[size:], params, n, 1, False, where)


def _check_sparse(data, shape, params, where) -> None:
    from .sparse import hash_params, hashed_count, int8_scale, layout

    n, k, kind, how, value_len, scale_bytes, scales, index_len = layout(shape, params, where)
    spans = zstd_frame.plan(data, value_len + index_len, params, where=where)
    values: list[tuple[int, Handler]]
    if kind in ("int4", "sign"):
        values = _lowbit_regions(kind, k, scale_bytes, scales, where)
    elif kind == "int8":
        int8_scale(params, where)
        values = [(value_len, _skip)]
    else:
        values = [(k, _no_inf_exponents(where)), (k, _skip)]
    if how == "hash":
        seed, threshold = hash_params(params, n, k, where)
        _walk(data, spans, iter(values), where)
        found = hashed_count(n, threshold, seed)
        if found != k:
            raise CorruptArtifact(f"tensor `{where}` hashes to {found} kept entries but declares {k}.")
        return
    index: Handler
    if how == "bitmap":
        index = _Bitmap(n, k, where)
    else:
        index = _DeltaIndex(n, k, where)
    _walk(data, spans, iter([*values, (index_len, index)]), where)
    if how == "delta":
        index.finish()  # type: ignore[union-attr]


class _DeltaIndex:
    """LEB128 gaps streamed piece by piece: exactly ``k`` varints, every index below ``n``."""

    def __init__(self, n: int, k: int, where: str) -> None:
        self.n, self.k, self.where = n, k, where
        self.carry = np.zeros(0, dtype=np.uint8)
        self.count, self.last = 0, -1

    def _bad(self) -> CorruptArtifact:
        return CorruptArtifact(f"tensor `{self.where}` has a malformed delta index.")

    def __call__(self, chunk: np.ndarray) -> None:
        data = np.concatenate([self.carry, chunk]) if self.carry.size else chunk
        ends = np.flatnonzero((data & 0x80) == 0)
        if ends.size == 0:
            if data.size > varint.MAX_BYTES:
                raise self._bad()
            self.carry = data.copy()
            return
        whole = data[: ends[-1] + 1]
        gaps = varint.decode(whole, ends.size)
        if gaps is None or (gaps >= self.n).any():
            raise self._bad()
        self.count += ends.size
        if self.count > self.k:
            raise self._bad()
        self.last += int(np.sum(gaps + 1, dtype=np.int64))
        if self.last >= self.n:
            raise CorruptArtifact(f"tensor `{self.where}` has indices past its end.")
        self.carry = data[ends[-1] + 1 :].copy()

    def finish(self) -> None:
        if self.carry.size or self.count != self.k:
            raise self._bad()


class _ComponentScales:
    """The scales of one part of quantised low-rank factors, whole scales at a time: each checked as a decode
    checks it, and the largest of every component's L and R scales kept for :func:`lowrank.product_bound`."""

    def __init__(self, layout, comps: int, top: int, where: str) -> None:
        from . import lowbit

        self.layout, self.comps, self.top, self.where, self.seen = layout, comps, top, where, 0
        self.dtype = lowbit.SCALE_DTYPES[layout.scales]
        self.left_max = np.zeros(comps, dtype=np.float64)
        self.right_max = np.zeros(comps, dtype=np.float64)
        self.handler = _Aligned(self.dtype.itemsize, self._scales)

    def _scales(self, raw: np.ndarray) -> None:
        from . import lowbit

        scales = torch.from_numpy(raw.copy()).view(self.dtype).to(torch.float32).numpy()
        lowbit.check_scales(scales, self.where, top=self.top)
        index = np.arange(self.seen, self.seen + scales.size, dtype=np.int64)
        self.seen += scales.size
        comp, is_r = self.layout.component_of_scale(index, self.comps)
        np.maximum.at(self.left_max, comp[~is_r], scales[~is_r])
        np.maximum.at(self.right_max, comp[is_r], scales[is_r])


def _check_lowrank_quantised(data, shape, params, where) -> None:
    """Quantised factors (``values`` int8/int4/mixed), streamed: scales, int8 codes (no −128), packed int4 codes.

    The product is finite when Σₖ topₖ²·max sₗ,ₖ·max sᵣ,ₖ is (each entry of L @ R is at most that);
    only when that bound fails are the factors decoded (the codec's compact form) and multiplied a
    few rows at a time.
    """
    from . import lowbit
    from .lowrank import INT8_MAX, Layout, _decode_quantised, check_int8_codes, product_bound

    lay = Layout(shape, params, where)
    spans = zstd_frame.plan(data, lay.raw_bytes, params, where=where)
    high = _ComponentScales(lay, lay.k, INT8_MAX, where)
    low = _ComponentScales(lay, lay.r - lay.k, lowbit.INT4_MAX, where)
    codes = _Packed(lay.count4, 4, where)

    def int8_codes(chunk: np.ndarray) -> None:
        check_int8_codes(chunk, where)

    regions: list[tuple[int, Handler]] = [
        (lay.scale8_bytes, high.handler),
        (lay.code8_bytes, int8_codes),
        (lay.scale4_bytes, low.handler),
        (lay.code4_bytes, codes),
    ]
    _walk(data, spans, iter(regions), where)
    bound = product_bound([INT8_MAX] * lay.k, high.left_max, high.right_max) + product_bound(
        [lowbit.INT4_MAX] * (lay.r - lay.k), low.left_max, low.right_max
    )
    if bound < _FP32_MAX / 2:
        return
    form = _decode_quantised(data, shape, params, where)
    _finite_product(form.left, form.right, where)


def _finite_product(left: torch.Tensor, right: torch.Tensor, where: str) -> None:
    """Refuse a product L @ R with a non-finite entry, a few rows of it at a time."""
    rows, cols = left.shape[0], right.shape[1]
    step = max(1, (PIECE // 4) // max(cols, 1))
    for lo in range(0, rows, step):
        if not bool(torch.isfinite(left[lo : lo + step] @ right).all()):
            raise CorruptArtifact(f"tensor `{where}` has NaN or infinite values.")


def _check_lowrank(data, shape, params, where) -> None:
    if param(params, "values", str, where, default="bf16") != "bf16":
        _check_lowrank_quantised(data, shape, params, where)
        return
    r = param(params, "rank", int, where)
    if len(shape) != 2 or not 0 <= r <= min(shape):
        raise CorruptArtifact(f"tensor `{where}` has rank {r}, impossible for shape {list(shape)}.")
    rows, cols = shape
    if r == 0:  # a product of empty factors is exactly zero
        _check_plain_planes(data, params, 0, 2, where)
        return
    flat = planes.decode(data, params, r * (rows + cols), torch.bfloat16, where=where)
    left, right = flat[: rows * r].view(rows, r).float(), flat[rows * r :].view(r, cols).float()
    if not bool(torch.isfinite(left).all()) or not bool(torch.isfinite(right).all()):
        raise CorruptArtifact(f"tensor `{where}` has NaN or infinite values.")
    bound = float(torch.linalg.vector_norm(left.double(), dim=1).max()) * float(
        torch.linalg.vector_norm(right.double(), dim=0).max()
    )
    if bound < _FP32_MAX / 2:
        return
    _finite_product(left, right, where)


_CHECKS = {
    "exact": _check_exact,
    "bf16": _check_bf16,
    "int8": _check_int8,
    "int4": _check_lowbit("int4"),
    "sign": _check_lowbit("sign"),
    "sparse": _check_sparse,
    "lowrank": _check_lowrank,
}


def verify_stored(codec: str, data: bytes | bytearray | memoryview, shape: tuple[int, ...], params: dict, *, where: str) -> None:
    """Check one stored tensor as its decode would, and that its values are finite, without expanding it.

    Raises:
        CorruptArtifact: the blob disagrees with its parameters, or a value is NaN/infinite.
        InvalidManifest: an unknown codec.
    """
    from . import get_codec

    get_codec(codec)
    _CHECKS[codec](data, tuple(shape), params, where)


__all__ = ["PIECE", "verify_stored"]
