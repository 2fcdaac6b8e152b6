"""``exact``: lossless fp32 task vectors, split into exponent/mantissa planes, then zstd.

Why this layout and not an integer-ulp difference against the base: the ulp form is
smaller (it needs no exponents), but decoding it needs θ_pre, and installing a skill
onto a general model G ≠ θ_pre does not have θ_pre at hand. The planes need nothing
but the blob. See :mod:`tvreg.codecs.planes` for the layouts and benchmarks/README.md
for the numbers.
"""

from __future__ import annotations

import torch

from . import planes, zstd_frame
from .base import Codec, Encoded, numel_of, raw_view


class ExactCodec(Codec):
    name = "exact"
    lossless = True

    def encode(self, tensor: torch.Tensor) -> Encoded:
        data, params = planes.encode(tensor.detach().to(torch.float32).contiguous().reshape(-1))
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
        return planes.decode(data, params, n, torch.float32, where=where).reshape(shape)
