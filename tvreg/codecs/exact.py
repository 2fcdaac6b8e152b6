"""``exact``: lossless fp32 task vectors, byte-plane shuffled then zstd-compressed.

Why the shuffle: τ of two bf16/fp16 checkpoints has many zero low-mantissa bytes and
similar exponent bytes; grouping byte 0 of every float, then byte 1, ... puts those
runs together, which zstd then squeezes (measured ~1.3x smaller than plain zstd on
fp32, and ~4x faster to compress).
"""

from __future__ import annotations

import torch

from ..errors import CorruptArtifact
from . import zstd_frame
from .base import Codec, Encoded


def _shuffle(t: torch.Tensor) -> torch.Tensor:
    # One strided copy per plane: ~6x faster than ``.t().contiguous()`` on 1-byte elements.
    interleaved = t.reshape(-1).view(torch.uint8).view(-1, 4)
    planes = torch.empty((4, interleaved.shape[0]), dtype=torch.uint8)
    for i in range(4):
        planes[i] = interleaved[:, i]
    return planes


def _unshuffle(planes: torch.Tensor) -> torch.Tensor:
    out = torch.empty((planes.shape[1], 4), dtype=torch.uint8)
    for i in range(4):
        out[:, i] = planes[i]
    return out.view(torch.float32)


class ExactCodec(Codec):
    name = "exact"
    lossless = True

    def encode(self, tensor: torch.Tensor) -> Encoded:
        flat = tensor.detach().to(torch.float32).contiguous()
        planes = _shuffle(flat)
        return Encoded(zstd_frame.compress(memoryview(planes.numpy()).cast("B")), {"shuffle": 4})

    def decode(self, data, shape, params, *, where):
        numel = 1
        for d in shape:
            numel *= d
        zstd_frame.check_declared_size(data, 4 * numel, where=where)
        try:
            planes = torch.empty((4, numel), dtype=torch.uint8)
        except (RuntimeError, MemoryError) as exc:
            raise CorruptArtifact(f"tensor `{where}` declares {numel} elements, too many to decode.") from exc
        if numel:
            zstd_frame.decompress_into(data, memoryview(planes.numpy()).cast("B"), where=where)
        return _unshuffle(planes).reshape(shape)
