"""DARE (Yu et al., 2023): drop and rescale, then TIES consensus (``dare_ties``) or a weighted sum (``dare_linear``).

Each entry of each τ_k is dropped with probability p and the survivors are scaled
by 1/(1−p), so each τ_k keeps its expectation. The mask is a counter-based hash of
(seed, skill name, tensor name, element index) (:mod:`tvreg._merge.rng`): the same
seed gives the same model on CPU and GPU, in any tensor order and chunking.

Differences from mergekit: mergekit's parameter is the keep probability ``density``
(= 1 − p) and its masks come from ``torch.bernoulli`` (not reproducible across devices);
current mergekit's ``rescale`` matches the L1 norm of the masked τ rather than
dividing by 1 − p (the DARE paper's rule, used here). ``normalize`` defaults to off
and λ to 1, as in mergekit.
"""

from __future__ import annotations

from .base import MergeMethod, Recipe, fp32, register
from .params import params_for


class DareTies(MergeMethod):
    name = "dare_ties"
    summary = "drop with probability p, rescale by 1/(1−p), TIES sign consensus"
    params = params_for("dare_ties")
    consensus = True

    def recipe(self, weights, kinds, params) -> Recipe:
        return Recipe(
            weights=tuple(fp32(w) for w in weights),
            drop_rate=float(params["drop_rate"]),
            seed=int(params["seed"]),
            consensus=self.consensus,
            normalize=bool(params["normalize"]),
            lam=fp32(params["lambda"]),
        )


class DareLinear(DareTies):
    name = "dare_linear"
    summary = "drop with probability p, rescale by 1/(1−p), weighted sum"
    params = params_for("dare_linear")
    consensus = False


DARE_TIES = register(DareTies())
DARE_LINEAR = register(DareLinear())
