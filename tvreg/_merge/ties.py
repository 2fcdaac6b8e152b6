"""TIES-merging (Yadav et al., 2023), as mergekit defines ``ties``.

Per tensor: trim each τ_k to its top ``density`` entries by magnitude; weight them,
w_k = ω_k τ_k; elect a sign per parameter from the sum Σ w_k (ties go to +); keep the
w_k that agree with it; with ``normalize`` (default, as in mergekit) divide by the sum
of the agreeing ω_k (the disjoint mean); scale by λ; add to θ_G.

Matched against mergekit 0.1.5 (``merge_methods/generalized_task_arithmetic.py`` and
``sparsify.magnitude``): k = max(1, ⌊density·n⌋) entries per tensor, the weighted sum
elects the sign (≥ 0 → +), the divisor is the sum of the agreeing weights (0 → 1),
λ scales the mix last. Differences: ties at the cutoff magnitude are kept in index
order (mergekit: ``argsort``'s unspecified order); mergekit's base model is θ_pre, here
τ_k are added to θ_G;
mergekit's ``rescale`` (off for ties) and ``int8_mask`` are not offered; arithmetic
is float32 with one final rounding (mergekit works in the model's dtype).
"""

from __future__ import annotations

from .base import MergeMethod, Recipe, fp32, register
from .params import params_for


class Ties(MergeMethod):
    name = "ties"
    summary = "trim to top density, elect signs, disjoint mean, scale by λ"
    params = params_for("ties")

    def recipe(self, weights, kinds, params) -> Recipe:
        return Recipe(
            weights=tuple(fp32(w) for w in weights),
            density=float(params["density"]),
            consensus=True,
            normalize=bool(params["normalize"]),
            lam=fp32(params["lambda"]),
        )


TIES = register(Ties())
