"""``exact``: lossless fp32 task vectors: a bitmap of the non-zero entries, their exponent/mantissa planes, zstd.

Why this layout: a short fine-tune of a bf16 model leaves most weights bit-identical
(τ = 0 for ~70% of entries after 60 steps at lr 2e-5), and each non-zero τ is a small
whole number of bf16 ulps, so its fp32 bytes are an exponent, a sign, a few mantissa
bits and zeros. A bitmap says where the non-zeros are (< 1 bit per entry after zstd)
and the non-zeros alone go through the planes of :mod:`tvreg._format.codecs.planes`. Measured
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

import torch

from . import jit, planes, zstd_frame
from .base import Codec, Encoded, numel_of, raw_view
from .forms import Dense


class ExactCodec(Codec):
    name = "exact"
    lossless = True

    def encode(self, tensor: torch.Tensor) -> Encoded:
        data, params = planes.encode_masked(tensor.detach().to(torch.float32).contiguous().reshape(-1))
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
        return planes.decode_masked(data, params, n, torch.float32, where=where).reshape(shape)

    def decode_form_with_histogram(self, data, shape, params, *, where):
        """The zero-bitmap layout counts |τ|'s histogram from each frame's non-zeros as it decodes them."""
        n = numel_of(shape)
        if params.get("zeros") is None or "shuffle" in params or not jit.ready(n):
            return None
        lanes = jit.MagnitudeLanes()
        values = planes.decode_masked(data, params, n, torch.float32, where=where, lanes=lanes)
        return Dense(shape=tuple(shape), values=values), lanes.total()

    def add_into(self, data, shape, params, *, where, acc, weight):
        """The zero-bitmap layout adds each frame's non-zeros straight into ``acc`` (:func:`planes.add_masked`)."""
        if params.get("zeros") is None:
            return False
        planes.add_masked(data, params, numel_of(shape), where=where, acc=acc, weight=weight)
        return True

    def masked_blob(self, data, shape, params, *, where):
        """The zero-bitmap layout, which :func:`planes.add_round_masked` adds frame by frame beside other skills."""
        if params.get("zeros") is None:
            return None
        return planes.MaskedBlob(data=data, params=params, where=where)
