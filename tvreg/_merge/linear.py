"""Linear interpolation (Merge to Learn, Eq. 4): θ_pre + Σ_k ω_k τ_k + (1 − Σ_k ω_k) τ_G.

τ_G = θ_G − θ_pre is G's own task vector, so this needs θ_pre's weights
(``--base-weights``). With one skill it is the paper's θ_pre + ω τ_D + (1 − ω) τ_G.
1 − Σ ω is computed in double precision and rounded once to float32.
"""

from __future__ import annotations

from .base import MergeMethod, Recipe, fp32, register
from .params import params_for


class Linear(MergeMethod):
    name = "linear"
    summary = "θ_pre + Σ ω_k τ_k + (1 − Σ ω_k) τ_G (needs --base-weights)"
    params = params_for("linear")
    kinds = ("task_vector",)

    def recipe(self, weights, kinds, params) -> Recipe:
        ws = tuple(fp32(w) for w in weights)
        return Recipe(weights=ws, general_coef=fp32(1.0 - sum(ws)))


LINEAR = register(Linear())
