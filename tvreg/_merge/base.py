"""What a merge method is: a recipe of numbers that one shared engine applies to every tensor.

Why one engine and many small methods: every method of both papers (task arithmetic,
TIES, DARE, averaging, linear interpolation, WiSE-FT) is, per element, the same shape
of computation — an anchor (θ_G, or θ_pre pulled toward θ_G), plus weighted task
vectors that may be trimmed by magnitude, randomly dropped, sign-elected and
normalised. A method only fixes the numbers (:class:`Recipe`); the CPU engine
(:mod:`tvreg._merge.engine`) and the fused Triton kernel (:mod:`tvreg.kernels`) apply
them, so the two paths cannot drift apart method by method.
"""

from __future__ import annotations

import math
import struct
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import MergeError
from .params import REQUIRED, Param, params_for


def fp32(value: float) -> float:
    """The float32 value of ``value`` as a Python float, so every path rounds ω the same way.

    The C cast behind ``struct`` rounds to nearest-even exactly as torch's does; it is
    used so that choosing a method never imports torch (``tvreg --help`` reads the methods).
    """
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


@dataclass(frozen=True)
class Recipe:
    """The numbers a method fixes for a whole install, applied element by element.

    Attributes:
        weights: ω_k per skill, already rounded to float32, in the listed order.
        general_coef: ``None``: the anchor is θ_G. A float ``c``: the anchor is
            θ_pre + c·(θ_G − θ_pre) (θ_pre itself when ``c == 0``), and θ_pre's weights
            are needed.
        density: TIES trim: keep each τ_k's top ``density`` entries by magnitude (per tensor).
        drop_rate: DARE: drop each entry with this probability, rescale survivors by 1/(1−p).
        seed: DARE's random seed.
        consensus: TIES sign election and disjoint mean.
        normalize: divide the mix by the sum of the (agreeing) weights.
        lam: λ, the final scale of the mix.
    """

    weights: tuple[float, ...]
    general_coef: float | None = None
    density: float | None = None
    drop_rate: float | None = None
    seed: int = 0
    consensus: bool = False
    normalize: bool = False
    lam: float = 1.0

    @property
    def direct(self) -> bool:
        """Whether each weighted τ is added straight onto the anchor (task-arithmetic order)."""
        return not self.consensus and not self.normalize and self.lam == 1.0

    @property
    def needs_base_weights(self) -> bool:
        return self.general_coef is not None


BASE_WEIGHTS = params_for("linear")["base_weights"]


class MergeMethod(ABC):
    """A merge method: its parameters, which skills it accepts, and the :class:`Recipe` it makes.

    Contract:
      - :meth:`resolve_params` returns the complete parameter set (defaults filled in)
        that ``tvreg.lock`` records, or raises :class:`~tvreg.errors.MergeError` naming
        the parameter; an install from the lock must give the same bits.
      - :meth:`recipe` is pure: same skills, weights and parameters, same recipe.
    """

    name: str
    summary: str
    params: Mapping[str, Param] = {}
    #: Skill kinds the method accepts (``task_vector``, ``delta_from_general``).
    kinds: tuple[str, ...] = ("task_vector", "delta_from_general")

    def resolve_params(self, given: Mapping[str, object]) -> dict[str, object]:
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            takes = ", ".join(f"`--{p.replace('_', '-')}`" for p in self.params) or "no parameters"
            raise MergeError(
                f"method `{self.name}` does not take `--{unknown[0].replace('_', '-')}`; it takes {takes}."
            )
        resolved: dict[str, object] = {}
        for key, spec in self.params.items():
            if key in given and given[key] is not None:
                resolved[key] = spec.validate(self.name, key, given[key])
            elif spec.default is REQUIRED:
                raise MergeError(f"method `{self.name}` {spec.missing}")
            else:
                resolved[key] = spec.default
        return resolved

    def check_skills(self, kinds: Sequence[tuple[str, str]]) -> None:
        """Refuse skills whose kind the method cannot combine; ``kinds`` is (label, kind) per skill."""
        for label, kind in kinds:
            if kind not in self.kinds:
                what = "a delta from the general model" if kind == "delta_from_general" else "a task vector"
                raise MergeError(
                    f"method `{self.name}` cannot install skill `{label}`, which is {what}.",
                    hints=[f"methods for it: {', '.join(methods_for_kind(kind))}"],
                )

    @abstractmethod
    def recipe(self, weights: Sequence[float], kinds: Sequence[str], params: Mapping[str, object]) -> Recipe:
        """The recipe for skills with these ω (listed order), kinds and resolved parameters."""


_REGISTRY: dict[str, MergeMethod] = {}


def register(method: MergeMethod) -> MergeMethod:
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> MergeMethod:
    """The merge method called ``name``, or a :class:`~tvreg.errors.MergeError` listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MergeError(f"unknown merge method `{name}`; choose one of {', '.join(_REGISTRY)}.") from None


def method_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def methods_for_kind(kind: str) -> list[str]:
    return [m.name for m in _REGISTRY.values() if kind in m.kinds]
