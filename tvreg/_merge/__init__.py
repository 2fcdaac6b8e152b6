"""Merge methods: each fixes a :class:`Recipe`; one engine applies it chunk by chunk.

Methods: ``task_arithmetic`` (default), ``ties``, ``dare_ties``, ``dare_linear``,
``average``, ``linear``, ``wise_ft`` — one module each. The numerics, for every
method, are in :mod:`tvreg._merge.engine` and ``docs/architecture.md``: float32 in a
fixed order, no fused multiply-add, one rounding to the output dtype. Their
parameters, with help text and defaults, are one table: :mod:`tvreg._merge.params`.
"""

from typing import TYPE_CHECKING

from . import average, dare, linear, task_arithmetic, ties, wise_ft  # noqa: F401  (register)
from .base import MergeMethod, Recipe, fp32, get_method, method_names

if TYPE_CHECKING:
    from .engine import TensorPlan, merge_chunk, merge_tensor, plan_tensor

# The engine needs torch; choosing a method and reading its parameters (``tvreg --help``) must not.
_ENGINE = ("TensorPlan", "merge_chunk", "merge_tensor", "plan_tensor")

METHODS = method_names()
DEFAULT_METHOD = "task_arithmetic"

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "MergeMethod",
    "Recipe",
    "TensorPlan",
    "fp32",
    "get_method",
    "merge_chunk",
    "merge_tensor",
    "plan_tensor",
]


def __getattr__(name: str) -> object:
    if name in _ENGINE:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
