"""Task arithmetic (Merge to Learn's parallel train-then-merge, PTM): θ_G + Σ_k ω_k τ_k."""

from __future__ import annotations

from .base import MergeMethod, Recipe, fp32, register


class TaskArithmetic(MergeMethod):
    name = "task_arithmetic"
    summary = "θ_G + Σ ω_k τ_k (the default)"

    def recipe(self, weights, kinds, params) -> Recipe:
        return Recipe(weights=tuple(fp32(w) for w in weights))


TASK_ARITHMETIC = register(TaskArithmetic())
