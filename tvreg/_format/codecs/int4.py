"""``int4``: symmetric absmax int4 in groups of ``group`` elements of the flat tensor, two codes a byte, then zstd.

Element ``i`` is stored as ``q[i] = round(τ[i] / s)`` in [−7, 7] with ``s = absmax(group) / 7``,
so its error is at most ``s / 2``; a zero decodes to exactly zero. 4 bits per entry plus a
scale per group: 4.125 bits at the default group of 128 with bf16 scales, 3.9x smaller
than the bf16 τ before zstd.

Why groups of 128 along the flat tensor: it is the default of GPTQ and AWQ (llama.cpp's
``Q4_0`` uses blocks of 32 with an fp16 scale, 4.5 bits; its ``Q4_K`` super-blocks of
256 with 6-bit sub-block scales, ≈ 4.5 bits). Along the flat tensor a group is a run of
one row whenever the row length is a multiple of it, which holds for every matrix of
common transformers; per-row scales (``group=0``) are coarser where one outlier sets a
whole row's step, which 4 bits cannot afford.

Raw stream (one :func:`zstd_frame.compress_stream` stream): the ``⌈numel/group⌉`` scales
(bf16 by default; fp16, widened to fp32 when one is outside fp16's normal range; or fp32), then the ``⌈numel/2⌉`` packed
codes (:mod:`tvreg._format.codecs.lowbit`). zstd finds little in dense codes of a full
fine-tune (its raw blocks cost 3 bytes per 128 KiB) but much in the zero runs of a
short one. Decodes to :class:`~tvreg._format.codecs.forms.Int8Groups`, which every merge
path (CPU engine, fused kernel) already reads.
"""

from __future__ import annotations

import torch

from . import lowbit, zstd_frame
from .base import Codec, Encoded, Option, numel_of, raw_view
from .forms import Int8Groups
from .int8 import group_size_for


class Int4Codec(Codec):
    name = "int4"
    lossless = False
    options = {
        "group": Option("elements per scale along the flat tensor; 0 means one scale per row", 128, kind=int, low=0),
        "scales": Option(
            "scale precision (bf16: fp32's range in 2 bytes; fp16 widens to fp32 when needed)",
            "bf16",
            choices=("bf16", "fp16", "fp32"),
        ),
    }

    def encode(self, tensor: torch.Tensor) -> Encoded:
        shape = tuple(tensor.shape)
        flat = tensor.detach().to(torch.float32).contiguous().reshape(-1)
        gs = group_size_for(shape, int(self.opts["group"]))
        q, stored = lowbit.quantize_int4(flat, gs, str(self.opts["scales"]))
        kind = next(k for k, d in lowbit.SCALE_DTYPES.items() if d == stored.dtype)
        raw = torch.cat([stored.contiguous().view(torch.uint8), torch.from_numpy(lowbit.pack_int4(q))])
        data, stream = zstd_frame.compress_stream(raw_view(raw))
        return Encoded(data, {"group": gs, "scales": kind, **stream})

    def decode_form(self, data, shape, params, *, where):
        n = numel_of(shape)
        gs, kind, scale_bytes = lowbit.scale_layout(params, n, where)
        buf = zstd_frame.decompress_stream(data, scale_bytes + lowbit.packed_bytes(n, 4), params, where=where)
        scales = lowbit.scales_from(buf[:scale_bytes], kind, where, top=lowbit.top_code("int4"))
        q = lowbit.unpack(buf[scale_bytes:], n, 4, where)
        return Int8Groups(shape=tuple(shape), q=q, scales=scales, group_size=gs)

