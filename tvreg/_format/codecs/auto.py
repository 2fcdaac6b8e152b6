"""``auto``: per tensor, the smallest coding whose relative error stays within a budget.

Small and 1-D tensors (norms, biases) are stored ``exact``: they cost little and merges
are sensitive to them. For every other tensor the candidates are ``bf16``, ``int8``,
``sparse`` at the smallest density meeting the budget (read off the sorted magnitudes),
and ``lowrank`` at the smallest rank meeting it (read off the singular values); each is
coded, decoded and measured, and the smallest one within ``max_rel_error`` wins, else
``exact``. The manifest records the winner's name, so decoding never runs ``auto``.
"""

from __future__ import annotations

import torch

from .base import Codec, Encoded, Option, relative_error


def _sparse_density(tau: torch.Tensor, budget: float) -> float | None:
    """Smallest density whose dropped entries alone stay under ``budget``² of ‖τ‖² (with room for rounding)."""
    sq = tau.reshape(-1).double().square()
    total = float(sq.sum())
    if total == 0.0:
        return None
    ordered = torch.sort(sq, descending=True).values
    tail = total - torch.cumsum(ordered, 0)
    allowed = (0.9 * budget) ** 2 * total
    k = int(torch.searchsorted(-tail, torch.tensor(-allowed, dtype=torch.float64))) + 1
    return min(1.0, k / sq.numel())


class AutoCodec(Codec):
    name = "auto"
    lossless = False
    options = {
        "max_rel_error": Option("largest ‖τ̂−τ‖/‖τ‖ allowed per tensor", 0.01, low=0.0),
        "min_numel": Option("tensors smaller than this stay exact", 65536, kind=int, low=0),
    }

    def _candidates(self, tau: torch.Tensor) -> list[Codec]:
        from .bf16 import Bf16Codec
        from .int8 import Int8Codec
        from .lowrank import LowRankCodec
        from .sparse import SparseCodec

        budget = float(self.opts["max_rel_error"])
        found: list[Codec] = [Bf16Codec(), Int8Codec()]
        density = _sparse_density(tau, budget)
        if density is not None and density < 0.5:
            found.append(SparseCodec(density=density))
        if tau.dim() == 2 and min(tau.shape) >= 2:
            energy = 1.0 - (0.9 * budget) ** 2
            if energy < 1.0:
                found.append(LowRankCodec(energy=energy, fallback="exact"))
        return found

    def encode(self, tensor: torch.Tensor) -> Encoded:
        from .exact import ExactCodec

        tau = tensor.detach().to(torch.float32)
        exact = ExactCodec().encode(tau)
        best = Encoded(exact.data, exact.params, codec="exact", rel_error=0.0)
        if tau.dim() < 2 or tau.numel() < int(self.opts["min_numel"]) or not bool(tau.any()):
            return best
        budget = float(self.opts["max_rel_error"])
        shape = tuple(tau.shape)
        for codec in self._candidates(tau):
            enc = codec.encode(tau)
            name = enc.codec or codec.name
            if name == "exact" or len(enc.data) >= len(best.data):
                continue
            from . import get_codec

            back = get_codec(name).decode(enc.data, shape, enc.params, where=name)
            err = relative_error(tau, back)
            if err <= budget:
                best = Encoded(enc.data, enc.params, codec=name, rel_error=err)
        return best

    def decode(self, data, shape, params, *, where):
        from ...errors import CorruptArtifact

        raise CorruptArtifact(f"tensor `{where}` names codec `auto`, which only chooses codecs at build time.")
