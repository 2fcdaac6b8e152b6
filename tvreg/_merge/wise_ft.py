"""WiSE-FT (Merge to Learn, Eqs. 5–6): (1 − ω) θ_G + ω θ_CFT = θ_G + ω τ with τ = θ_CFT − θ_G.

The skill is a ``delta_from_general`` (``tvreg build --general G --finetuned CFT``),
keyed to G's fingerprint rather than θ_pre's; the arithmetic is task arithmetic's.
"""

from __future__ import annotations

from .base import MergeMethod, Recipe, fp32, register


class WiseFT(MergeMethod):
    name = "wise_ft"
    summary = "θ_G + ω (θ_CFT − θ_G) for continued fine-tunes of G"
    kinds = ("delta_from_general",)

    def recipe(self, weights, kinds, params) -> Recipe:
        return Recipe(weights=tuple(fp32(w) for w in weights))


WISE_FT = register(WiseFT())
