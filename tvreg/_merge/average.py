"""Averaging (What Matters for Model Merging at Scale): the mean of the expert models.

Expert k is θ_pre + τ_k (a task vector; θ_G + τ_k for a delta from the general
model), so the mean is θ_pre + (1/K) Σ τ_k when every skill is a task vector, which
needs θ_pre's weights (``--base-weights``); deltas from the general model alone average
around θ_G and need none. ω is not used: every expert counts 1/K.
G itself is not one of the averaged experts; rows G added to the vocabulary keep G's
values.
"""

from __future__ import annotations

from ..errors import MergeError
from .base import BASE_WEIGHTS, MergeMethod, Recipe, fp32, register
from .params import params_for


class Average(MergeMethod):
    name = "average"
    summary = "mean of the expert models θ_pre + τ_k (needs --base-weights)"
    # Optional here: a set of deltas from G alone averages around θ_G and needs no θ_pre.
    params = params_for("average")

    def recipe(self, weights, kinds, params) -> Recipe:
        k = len(weights)
        if k == 0:
            return Recipe(weights=())
        from_general = sum(1 for kind in kinds if kind == "delta_from_general")
        coef = None if from_general == k else fp32(from_general / k)
        if coef is not None and not params.get("base_weights"):
            raise MergeError(f"method `{self.name}` {BASE_WEIGHTS.missing}")
        return Recipe(weights=tuple(fp32(1.0 / k) for _ in weights), general_coef=coef)


AVERAGE = register(Average())
