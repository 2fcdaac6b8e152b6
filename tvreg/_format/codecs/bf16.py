"""``bf16``: τ rounded to bfloat16, then a zero bitmap, the exponent/mantissa planes and zstd.

Why it is nearly lossless for bf16 checkpoints: where θ_ft and θ_pre share an exponent,
τ is a whole number of bf16 ulps, which has at most 8 significant bits and so is a
bf16 value itself. Only entries whose exponent changed, or fp32/fp16 checkpoints, round.
"""

from __future__ import annotations

import torch

from . import planes
from .base import Codec, Encoded, numel_of
from .forms import Dense


class Bf16Codec(Codec):
    name = "bf16"
    lossless = False

    def encode(self, tensor: torch.Tensor) -> Encoded:
        data, params = planes.encode_masked(tensor.detach().to(torch.bfloat16).contiguous().reshape(-1))
        return Encoded(data, params)

    def decode_form(self, data, shape, params, *, where):
        n = numel_of(shape)
        if params.get("zeros") is None:  # early 0.2 builds: planes of every entry
            values = planes.decode(data, params, n, torch.bfloat16, where=where)
        else:
            values = planes.decode_masked(data, params, n, torch.bfloat16, where=where)
        return Dense(shape=tuple(shape), values=values)
