"""Estimate how two skills interfere when merged, from their sketches alone (:mod:`tvreg._format.sketch`).

For a pair (a, b) with weights ω_a, ω_b the report gives:

- ``cosine``: cos(τ_a, τ_b) over the whole model, and per layer (the worst, lowest, first).
  Per tensor ⟨τ_a, τ_b⟩ is estimated from the CountSketch projections and from the shared
  coordinate sample, combined by inverse variance with the sample never weighing more than
  the projection (its variance estimate is itself noisy on heavy-tailed tensors);
- ``sign_conflict``: among coordinates in the top :data:`~tvreg._format.sketch.TOP_FRACTION` by
  magnitude of *both* skills' tensors, the fraction where the signs differ (sample
  coordinates weighted by numel/sample size, so big tensors count as much as they are big);
- ``norm_ratio``: max/min of ω_a‖τ_a‖ and ω_b‖τ_b‖.

Thresholds (rationale in README, "Checking for interference"): a pair is flagged when
it pulls in opposite directions (:data:`OPPOSED_COSINE` for the model,
:data:`OPPOSED_LAYER_COSINE` for any layer), when its top parameters disagree in sign
more often than unrelated vectors would (:data:`SIGN_CONFLICT`), or when one scaled
vector is :data:`NORM_RATIO` times the other (the smaller skill is drowned out).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import SketchMismatch
from .sketch import Sketch, TensorSketch, layer_of

OPPOSED_COSINE = -0.1
OPPOSED_LAYER_COSINE = -0.3
SIGN_CONFLICT = 0.55
NORM_RATIO = 4.0
WORST_LAYERS = 3


@dataclass(frozen=True)
class PairReport:
    """Estimated interference of two skills; see the module docstring."""

    a: str
    b: str
    cosine: float
    worst_layers: list[tuple[str, float]]
    sign_conflict: float | None
    scaled_norms: tuple[float, float]
    weights: tuple[float, float]
    warnings: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)

    @property
    def norm_ratio(self) -> float:
        lo, hi = sorted(self.scaled_norms)
        return hi / lo if lo > 0 else math.inf

    def to_dict(self) -> dict:
        d = asdict(self)
        d["worst_layers"] = [{"layer": n, "cosine": c} for n, c in self.worst_layers]
        d["norm_ratio"] = self.norm_ratio if math.isfinite(self.norm_ratio) else None
        return d


def _tensor_dot(a: TensorSketch, b: TensorSketch) -> float:
    if a.exact:
        return float(np.dot(a.sample.astype(np.float64), b.sample.astype(np.float64)))
    assert a.projection is not None and b.projection is not None
    proj = float(np.dot(a.projection.astype(np.float64), b.projection.astype(np.float64)))
    proj_var = (a.norm**2 * b.norm**2 + proj * proj) / a.projection.size
    prod = a.sample.astype(np.float64) * b.sample.astype(np.float64)
    if prod.size < 2 or proj_var == 0:
        return proj
    samp = a.numel * float(prod.mean())
    samp_var = max(a.numel**2 * float(prod.var(ddof=1)) / prod.size, proj_var)
    return (proj / proj_var + samp / samp_var) / (1 / proj_var + 1 / samp_var)


def _conflicts(a: TensorSketch, b: TensorSketch) -> tuple[float, float]:
    """(weighted conflicting, weighted jointly-top) sample coordinates of one tensor."""
    both = (
        (np.abs(a.sample) >= a.top_threshold)
        & (np.abs(b.sample) >= b.top_threshold)
        & (a.sample != 0)
        & (b.sample != 0)
    )
    weight = 1.0 if a.exact else a.numel / a.sample.size
    differ = both & (np.signbit(a.sample) != np.signbit(b.sample))
    return weight * int(np.count_nonzero(differ)), weight * int(np.count_nonzero(both))


def _check_comparable(a: Sketch, b: Sketch) -> None:
    for attr in ("sketch_version", "projection_dim", "sample_size", "top_fraction"):
        if getattr(a, attr) != getattr(b, attr):
            raise SketchMismatch(
                f"the sketches of `{a.label}` and `{b.label}` differ in {attr.replace('_', ' ')} "
                f"({getattr(a, attr)} and {getattr(b, attr)}), so they cannot be compared."
            )


def compare(
    a: Sketch,
    b: Sketch,
    *,
    weight_a: float = 1.0,
    weight_b: float = 1.0,
    label_a: str | None = None,
    label_b: str | None = None,
) -> PairReport:
    """Estimate the interference of skills ``a`` and ``b`` merged with weights ω_a, ω_b.

    Tensors only one skill changes add to that skill's norm and nothing to the dot
    product (τ is zero there for the other); tensors whose sizes differ are skipped.

    Raises:
        SketchMismatch: the sketches were made with other parameters.
    """
    _check_comparable(a, b)
    dot = 0.0
    layers: dict[str, list[float]] = {}
    conflicting = jointly_top = 0.0
    for name, ta in a.tensors.items():
        tb = b.tensors.get(name)
        layer = layers.setdefault(layer_of(name), [0.0, 0.0, 0.0])
        layer[1] += ta.norm**2
        if tb is None or tb.numel != ta.numel or ta.numel == 0:
            continue
        d = _tensor_dot(ta, tb)
        dot += d
        layer[0] += d
        c, t = _conflicts(ta, tb)
        conflicting += c
        jointly_top += t
    for name, tb in b.tensors.items():
        layers.setdefault(layer_of(name), [0.0, 0.0, 0.0])[2] += tb.norm**2
    na, nb = a.norm, b.norm
    cosine = _clip(dot / (na * nb)) if na > 0 and nb > 0 else 0.0
    per_layer = [
        (layer, _clip(d / math.sqrt(sa * sb))) for layer, (d, sa, sb) in layers.items() if sa > 0 and sb > 0
    ]
    per_layer.sort(key=lambda lc: lc[1])
    conflict = conflicting / jointly_top if jointly_top > 0 else None
    report = PairReport(
        label_a or a.label,
        label_b or b.label,
        cosine,
        per_layer[:WORST_LAYERS],
        conflict,
        (weight_a * na, weight_b * nb),
        (weight_a, weight_b),
    )
    _judge(report, a.skill, b.skill)
    return report


def _clip(x: float) -> float:
    return max(-1.0, min(1.0, x))


def _judge(r: PairReport, name_a: str, name_b: str) -> None:
    merge_hint = "merge with `--method ties` or `--method dare_ties`, which elect one sign per parameter"
    if r.cosine <= OPPOSED_COSINE:
        r.warnings.append(
            f"`{r.a}` and `{r.b}` pull in opposite directions (cosine {r.cosine:+.2f} ≤ {OPPOSED_COSINE:+.2f}): "
            "merged, each undoes part of the other."
        )
    elif r.worst_layers and r.worst_layers[0][1] <= OPPOSED_LAYER_COSINE:
        layer, cos = r.worst_layers[0]
        r.warnings.append(
            f"`{r.a}` and `{r.b}` pull in opposite directions in `{layer}` "
            f"(cosine {cos:+.2f} ≤ {OPPOSED_LAYER_COSINE:+.2f})."
        )
    if r.sign_conflict is not None and r.sign_conflict >= SIGN_CONFLICT:
        r.warnings.append(
            f"`{r.a}` and `{r.b}` disagree in sign on {r.sign_conflict:.0%} of the parameters both change "
            f"most (≥ {SIGN_CONFLICT:.0%}; unrelated skills disagree on about half)."
        )
    if r.warnings:
        r.suggestions.append(merge_hint)
    if min(r.scaled_norms) > 0 and r.norm_ratio >= NORM_RATIO:
        big, small = (name_a, name_b) if r.scaled_norms[0] > r.scaled_norms[1] else (name_b, name_a)
        r.warnings.append(
            f"after ω, `{big}` moves the weights {r.norm_ratio:.1f}× as far as `{small}` "
            f"(≥ {NORM_RATIO:g}×): `{small}` may be drowned out."
        )
        big_w = r.weights[0] if big == name_a else r.weights[1]
        r.suggestions.append(f"lower ω of `{big}`: `--weight {big}={big_w / r.norm_ratio**0.5:.3g}`")


@dataclass(frozen=True)
class SkillEntry:
    """One skill in a check: its sketch and ω (``weight_source`` says where ω came from)."""

    label: str
    sketch: Sketch
    weight: float
    weight_source: str = ""


@dataclass(frozen=True)
class InterferenceReport:
    """Every pair of the skills checked, in the order given."""

    skills: list[SkillEntry]
    pairs: list[PairReport]

    @property
    def flagged(self) -> list[PairReport]:
        return [p for p in self.pairs if p.warnings]

    def to_dict(self) -> dict:
        return {
            "skills": [
                {
                    "skill": s.label,
                    "weight": s.weight,
                    "weight_source": s.weight_source,
                    "norm": s.sketch.norm,
                    "scaled_norm": s.weight * s.sketch.norm,
                }
                for s in self.skills
            ],
            "pairs": [p.to_dict() for p in self.pairs],
            "thresholds": {
                "opposed_cosine": OPPOSED_COSINE,
                "opposed_layer_cosine": OPPOSED_LAYER_COSINE,
                "sign_conflict": SIGN_CONFLICT,
                "norm_ratio": NORM_RATIO,
            },
        }


def check_sketches(skills: Sequence[SkillEntry]) -> InterferenceReport:
    """Compare every pair of ``skills``.

    Example:
        >>> check_sketches([]).pairs
        []
    """
    pairs = [
        compare(a.sketch, b.sketch, weight_a=a.weight, weight_b=b.weight, label_a=a.label, label_b=b.label)
        for i, a in enumerate(skills)
        for b in skills[i + 1 :]
    ]
    return InterferenceReport(list(skills), pairs)
