"""Bootstrap intervals over items and seeds, and a rank correlation, for the example's report.

Why a bootstrap that resamples both: the claims compare models fine-tuned with three
seeds and scored on the same held-out items, so a difference can come from the items
drawn or from the seed. Each replicate draws the seeds with replacement (one draw shared
by every model, so PTM of seed k stays paired with CFT of seed k) and, per task, the
items with replacement (one draw shared by every model, so the comparison stays paired
on items). A statistic is any function of the replicate's per-(model, task) means, so
ratios such as "general ÷ G's" and "PTM's gain ÷ CFT's gain" get intervals of their own.
A difference is called only when its 95% interval excludes zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

Key = tuple[str, str]  # (model group, task)
Means = Mapping[Key, float]


ITEM_SETS = {"general_margin": "general", "coding_margin": "coding", "science_margin": "science",
             "comply": "safety_refusal"}  # fmt: skip
"""Results measured on the same items (a margin and its accuracy; comply on safety's harmful prompts)."""


def item_set(task: str) -> str:
    return ITEM_SETS.get(task, task)


class Data:
    """Per-item results: ``arrays[(group, task)]`` has shape (seeds, items); one row for single-seed models."""

    def __init__(self) -> None:
        self.arrays: dict[Key, np.ndarray] = {}

    def add(self, group: str, task: str, per_seed: list[list[float]]) -> None:
        self.arrays[(group, task)] = np.asarray(per_seed, dtype=np.float64)

    def has(self, group: str, task: str) -> bool:
        return (group, task) in self.arrays

    def means(self, seed_idx: np.ndarray | None = None, item_idx: Mapping[str, np.ndarray] | None = None) -> Means:
        """The per-(model, task) means of one replicate, computed only for the keys a statistic reads."""
        return _LazyMeans(self.arrays, seed_idx, item_idx)

    def interval(
        self, stat: Callable[[Means], float], *, reps: int = 2000, seed: int = 0, over_seeds: bool = True
    ) -> tuple[float, float, float]:
        """(point estimate, 2.5th, 97.5th percentile) of ``stat`` under the paired two-level bootstrap."""
        point = stat(self.means())
        rng = np.random.default_rng(seed)
        n_seeds = max(a.shape[0] for a in self.arrays.values())
        n_items = {item_set(task): a.shape[1] for (_, task), a in self.arrays.items()}
        tasks = {task for _, task in self.arrays}
        values = []
        for _ in range(reps):
            seeds = rng.integers(0, n_seeds, n_seeds) if over_seeds else np.arange(n_seeds)
            drawn = {s: rng.integers(0, n, n) for s, n in n_items.items()}
            v = stat(self.means(seeds, {task: drawn[item_set(task)] for task in tasks}))
            if math.isfinite(v):
                values.append(v)
        if not values:
            return point, math.nan, math.nan
        lo, hi = np.percentile(values, [2.5, 97.5])
        return point, float(lo), float(hi)


class _LazyMeans(Mapping[Key, float]):
    def __init__(self, arrays: dict[Key, np.ndarray], seed_idx, item_idx) -> None:
        self.arrays, self.seed_idx, self.item_idx = arrays, seed_idx, item_idx
        self.cache: dict[Key, float] = {}

    def __getitem__(self, key: Key) -> float:
        if key not in self.cache:
            a = self.arrays[key]
            if self.seed_idx is not None:
                a = a[self.seed_idx % a.shape[0]]
            if self.item_idx is not None:
                a = a[:, self.item_idx[key[1]]]
            self.cache[key] = float(a.mean())
        return self.cache[key]

    def __iter__(self):
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)


def excludes_zero(lo: float, hi: float) -> bool:
    return lo > 0 or hi < 0


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's ρ (average ranks for ties); NaN when either side is constant."""

    def ranks(v: list[float]) -> np.ndarray:
        v_arr = np.asarray(v, dtype=np.float64)
        order = np.argsort(v_arr, kind="stable")
        r = np.empty(len(v_arr))
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v_arr[order[j + 1]] == v_arr[order[i]]:
                j += 1
            r[order[i : j + 1]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])
