"""``exact``: lossless fp32 task vectors: a bitmap of the non-zero entries, their exponent/mantissa planes, zstd.

Why this layout: a short fine-tune of a bf16 model leaves most weights bit-identical
(τ = 0 for ~70% of entries after 60 steps at lr 2e-5), and each non-zero τ is a small
whole number of bf16 ulps, so its fp32 bytes are an exponent, a sign, a few mantissa
bits and zeros. A bitmap says where the non-zeros are (< 1 bit per entry after zstd)
and the non-zeros alone go through the planes of :mod:`tvreg.codecs.planes`. Measured
on SmolLM2-135M fine-tunes this is ~1.8x smaller than zstd of the fp32 bytes (see
benchmarks/README.md).

Why not an integer-ulp difference against the base, which needs no exponents: decoding
it needs θ_pre, and installing a skill onto a general model G ≠ θ_pre does not have
θ_pre at hand. The blob alone must be enough.

Layouts read: ``{"zeros": "bitmap", "planes": "exp", "nnz": [...]}`` (this one; one
frame per chunk of ``chunk_elems`` entries, each chunk its own bitmap then planes),
``{"planes": "exp"}`` (planes of every entry) and ``{"shuffle": 4}`` (tvreg 0.1's byte
planes).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import CorruptArtifact
from . import planes, zstd_frame
from .base import Codec, Encoded, numel_of, raw_view


def _bitmap_bytes(n: int) -> int:
    return (n + 7) // 8


class ExactCodec(Codec):
    name = "exact"
    lossless = True

    def encode(self, tensor: torch.Tensor) -> Encoded:
        flat = tensor.detach().to(torch.float32).contiguous().reshape(-1)
        n = flat.numel()
        per = zstd_frame.CHUNK_BYTES // 4
        segments, nnz = [], []
        for lo in range(0, n, per):
            chunk = flat[lo : lo + per]
            nonzero = chunk.view(torch.int32) != 0  # keeps -0.0, whose bits are not zero
            values = chunk[nonzero].contiguous()
            bits = np.packbits(nonzero.numpy(), bitorder="little")
            segments.append(bits.tobytes() + planes.split(values, "exp").numpy().tobytes())
            nnz.append(values.numel())
        data, stream = zstd_frame.compress_segments(segments)
        params = {"zeros": "bitmap", "planes": "exp", "nnz": nnz, **stream}
        if len(segments) > 1:
            params["chunk_elems"] = per
        return Encoded(data, params)

    def decode(self, data, shape, params, *, where):
        n = numel_of(shape)
        if "shuffle" in params:  # tvreg 0.1: one frame of byte planes over the whole tensor
            if n or len(data):
                zstd_frame.check_declared_size(data, 4 * n, where=where)
            buf = zstd_frame.empty(4 * n, torch.uint8, where=where)
            if n or len(data):
                zstd_frame.decompress_into(data, raw_view(buf), where=where)
            out = zstd_frame.empty(n, torch.float32, where=where)
            return planes.merge(buf.view(4, n), "bytes", out).reshape(shape)
        if params.get("zeros") is None:
            return planes.decode(data, params, n, torch.float32, where=where).reshape(shape)
        return _decode_masked(data, n, params, where).reshape(shape)


def _decode_masked(data, n: int, params: dict, where: str) -> torch.Tensor:
    nnz = params.get("nnz")
    per = params.get("chunk_elems", max(n, 1))
    if (
        params.get("zeros") != "bitmap"
        or params.get("planes") != "exp"
        or type(per) is not int
        or per <= 0
        or not isinstance(nnz, list)
        or len(nnz) != -(-n // per)
    ):
        raise CorruptArtifact(f"tensor `{where}` has malformed `exact` parameters.")
    sizes = [min(per, n - lo) for lo in range(0, n, per)]
    if not all(type(k) is int and 0 <= k <= size for k, size in zip(nnz, sizes, strict=True)):
        raise CorruptArtifact(f"tensor `{where}` declares more non-zero entries than it has.")
    segments = [_bitmap_bytes(size) + 4 * k for size, k in zip(sizes, nnz, strict=True)]
    spans = zstd_frame.plan_segments(data, segments, params, where=where)
    out = zstd_frame.empty(n, torch.float32, where=where)
    buf = zstd_frame.empty(sum(segments), torch.uint8, where=where)

    def finish(i: int, lo: int, hi: int) -> None:
        size, k = sizes[i], nnz[i]
        bits = buf[lo : lo + _bitmap_bytes(size)].numpy()
        where_nonzero = np.flatnonzero(np.unpackbits(bits, bitorder="little").view(np.bool_))
        if len(where_nonzero) != k or (k and where_nonzero[-1] >= size):
            raise CorruptArtifact(f"tensor `{where}` has a zero bitmap that disagrees with its manifest.")
        values = torch.empty(k, dtype=torch.float32)
        planes.merge(buf[lo + _bitmap_bytes(size) : hi].view(4, k), "exp", values)
        target = out[i * per : i * per + size].numpy()
        target.fill(0)
        target[where_nonzero] = values.numpy()

    zstd_frame.decompress_spans_into(data, raw_view(buf), spans, where=where, finish=finish)
    return out
