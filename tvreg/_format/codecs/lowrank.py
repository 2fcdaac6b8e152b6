"""``lowrank``: a truncated SVD of each 2-D tensor, τ ≈ L @ R, factors in bf16.

The rank is ``rank`` when given, else the smallest rank keeping ``energy`` of ‖τ‖²
(relative error ≈ √(1 − energy)). LoRA skills are exactly low rank; full fine-tunes
usually are not, so a tensor whose factors would not be smaller than ``fallback``'s
coding of it — and every tensor that is not a matrix — is coded with ``fallback``, and
the manifest records that codec for it.

Raw stream: L (rows × r) then R (r × cols), row-major bf16, as one plane-split array.
The singular values are split evenly (√σ into each factor) so both stay well scaled.
"""

from __future__ import annotations

import torch

from ...errors import CorruptArtifact
from . import planes
from .base import Codec, Encoded, Option, param
from .forms import LowRank


def rank_for_energy(singular: torch.Tensor, energy: float) -> int:
    """Smallest r whose top singular values hold ``energy`` of the squared norm."""
    sq = singular.double().square()
    total = float(sq.sum())
    if total == 0.0:
        return 0
    cum = torch.cumsum(sq, 0) / total
    return min(len(singular), int(torch.searchsorted(cum, torch.tensor(energy, dtype=torch.float64))) + 1)


class LowRankCodec(Codec):
    name = "lowrank"
    lossless = False
    options = {
        "rank": Option("rank of the factors; 0 picks it from `energy`", 0, kind=int, low=0),
        "energy": Option("share of ‖τ‖² to keep when rank is 0", 0.99, low=0.0, high=1.0, low_open=True),
        "fallback": Option("codec for tensors where factors do not pay", "bf16", choices=("bf16", "int8", "exact")),
    }

    def _fallback(self, tensor: torch.Tensor) -> Encoded:
        from . import get_codec

        codec = get_codec(str(self.opts["fallback"]))
        enc = codec.encode(tensor)
        return Encoded(enc.data, enc.params, codec=enc.codec or codec.name)

    def encode(self, tensor: torch.Tensor) -> Encoded:
        if tensor.dim() != 2 or min(tensor.shape) < 2:
            return self._fallback(tensor)
        rows, cols = tensor.shape
        tau = tensor.detach().to(torch.float32)
        u, s, vh = torch.linalg.svd(tau, full_matrices=False)
        r = int(self.opts["rank"]) or rank_for_energy(s, float(self.opts["energy"]))
        r = min(r, len(s))
        if r * (rows + cols) >= rows * cols:
            return self._fallback(tensor)
        root = s[:r].sqrt()
        left = (u[:, :r] * root).to(torch.bfloat16)
        right = (root[:, None] * vh[:r]).to(torch.bfloat16)
        data, params = planes.encode(torch.cat([left.reshape(-1), right.reshape(-1)]))
        fallback = self._fallback(tensor)
        if len(fallback.data) <= len(data):
            return fallback
        return Encoded(data, {"rank": r, **params})

    def decode_form(self, data, shape, params, *, where):
        r = param(params, "rank", int, where)
        if len(shape) != 2 or not 0 <= r <= min(shape):
            raise CorruptArtifact(f"tensor `{where}` has rank {r}, impossible for shape {list(shape)}.")
        rows, cols = shape
        flat = planes.decode(data, params, r * (rows + cols), torch.bfloat16, where=where)
        return LowRank(
            shape=tuple(shape), left=flat[: rows * r].view(rows, r), right=flat[rows * r :].view(r, cols)
        )


