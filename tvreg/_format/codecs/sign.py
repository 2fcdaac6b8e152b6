"""``sign``: one bit per entry, the sign of τ, times one scale per row or per tensor (BitDelta).

Element ``i`` decodes to exactly ``+s`` or ``−s`` of its group, ``s = mean |τ|`` over the
group: for the sign pattern fixed, that is the scale with the least ‖τ̂ − τ‖ (BitDelta,
arXiv 2402.10193, starts from it and then distils the scales; tvreg keeps the closed
form, so a build needs no training). Zeros decode to ``+s``: one bit cannot say zero.
1 bit per entry: 16x smaller than the bf16 τ, plus a scale per row.

Why per row by default (``per=row``): BitDelta uses one scale per matrix, but rows of
a τ differ in size by orders of magnitude, and a row's fp32 scale costs 32 bits against
its ``cols`` bits of signs (2% on a 1536-wide row). ``per=tensor`` is the paper's form.

Raw stream (one :func:`zstd_frame.compress_stream` stream): the fp32 scales (one per
row, or one), then ``⌈numel/8⌉`` bytes of signs (:mod:`tvreg._format.codecs.lowbit`:
bit ``i % 8`` of byte ``i // 8`` set for a negative entry). Decodes to
:class:`~tvreg._format.codecs.forms.Int8Groups` with codes ±1, which every merge path reads.
"""

from __future__ import annotations

import torch

from . import lowbit, zstd_frame
from .base import Codec, Encoded, Option, numel_of, raw_view
from .forms import Int8Groups


class SignCodec(Codec):
    name = "sign"
    lossless = False
    options = {
        "per": Option("one fp32 scale (mean |τ|) per row, or one for the tensor (BitDelta)", "row", choices=("row", "tensor")),
    }

    def encode(self, tensor: torch.Tensor) -> Encoded:
        shape = tuple(tensor.shape)
        flat = tensor.detach().to(torch.float32).contiguous().reshape(-1)
        n = flat.numel()
        per_row = self.opts["per"] == "row" and len(shape) > 1 and shape[-1] > 0
        gs = max(1, shape[-1] if per_row else n)
        negative, stored = lowbit.sign_scales(flat, gs, "fp32")
        raw = torch.cat([stored.contiguous().view(torch.uint8), torch.from_numpy(lowbit.pack_signs(negative))])
        data, stream = zstd_frame.compress_stream(raw_view(raw))
        return Encoded(data, {"group": gs, "scales": "fp32", **stream})

    def decode_form(self, data, shape, params, *, where):
        n = numel_of(shape)
        gs, kind, scale_bytes = lowbit.scale_layout(params, n, where)
        buf = zstd_frame.decompress_stream(data, scale_bytes + lowbit.packed_bytes(n, 1), params, where=where)
        scales = lowbit.scales_from(buf[:scale_bytes], kind, where, top=lowbit.top_code("sign"))
        q = lowbit.unpack(buf[scale_bytes:], n, 1, where)
        return Int8Groups(shape=tuple(shape), q=q, scales=scales, group_size=gs)
