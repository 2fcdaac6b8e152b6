"""``int8``: symmetric absmax int8 per row (or per group of the flat tensor), then zstd.

Element ``i`` is stored as ``q[i] = round(τ[i] / s)`` with ``s = absmax(group) / 127``,
so its error is at most ``s / 2``. Scales are fp16 (half the bytes) unless a group's
scale is outside fp16's normal range, as the tiny updates of low-learning-rate
fine-tunes often are; then the tensor keeps fp32 scales.
"""

from __future__ import annotations

import torch

from ..errors import CorruptArtifact
from . import zstd_frame
from .base import Codec, Encoded, Option, numel_of, param, raw_view
from .forms import Int8Groups

_SCALE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
_FP16_MIN_NORMAL = 2.0**-14


def group_size_for(shape: tuple[int, ...], group: int) -> int:
    """The flat group length: ``group`` elements, or one row (the last dimension) when 0."""
    if group:
        return group
    return max(1, shape[-1]) if shape else 1


class Int8Codec(Codec):
    name = "int8"
    lossless = False
    options = {
        "group": Option("elements per scale; 0 means one scale per row", 0, kind=int, low=0),
        "scales": Option("scale precision (fp16 widens to fp32 when needed)", "fp16", choices=("fp16", "fp32")),
    }

    def encode(self, tensor: torch.Tensor) -> Encoded:
        shape = tuple(tensor.shape)
        flat = tensor.detach().to(torch.float32).contiguous().reshape(-1)
        n = flat.numel()
        gs = group_size_for(shape, int(self.opts["group"]))
        groups = -(-n // gs)
        padded = torch.zeros(groups * gs, dtype=torch.float32)
        padded[:n] = flat
        scales = padded.view(groups, gs).abs().amax(dim=1).div_(127.0) if groups else torch.zeros(0)
        kind = self.opts["scales"]
        if kind == "fp16":
            nonzero = scales[scales > 0]
            if nonzero.numel() and (float(nonzero.min()) < _FP16_MIN_NORMAL or float(nonzero.max()) > 60000.0):
                kind = "fp32"
        stored = scales.to(_SCALE_DTYPES[kind])
        used = stored.to(torch.float32)
        safe = torch.where(used > 0, used, torch.ones_like(used))
        q = padded.view(groups, gs).div(safe[:, None]).round_().clamp_(-127, 127).to(torch.int8).reshape(-1)[:n]
        raw = torch.cat([stored.contiguous().view(torch.uint8), q.view(torch.uint8)])
        data, stream = zstd_frame.compress_stream(raw_view(raw))
        return Encoded(data, {"group": gs, "scales": kind, **stream})

    def decode_form(self, data, shape, params, *, where):
        n = numel_of(shape)
        gs = param(params, "group", int, where)
        kind = param(params, "scales", str, where)
        if gs < 1 or kind not in _SCALE_DTYPES:
            raise CorruptArtifact(f"tensor `{where}` has invalid int8 parameters (group {gs}, scales {kind!r}).")
        groups = -(-n // gs)
        dtype = _SCALE_DTYPES[kind]
        scale_bytes = groups * dtype.itemsize
        buf = zstd_frame.decompress_stream(data, scale_bytes + n, params, where=where)
        scales = buf[:scale_bytes].view(dtype).to(torch.float32)
        if not bool(torch.isfinite(scales).all()) or bool((scales < 0).any()):
            raise CorruptArtifact(f"tensor `{where}` has negative or non-finite int8 scales.")
        return Int8Groups(shape=tuple(shape), q=buf[scale_bytes:].view(torch.int8), scales=scales, group_size=gs)
