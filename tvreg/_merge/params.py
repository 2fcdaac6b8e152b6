"""The merge methods' parameters: one row each, holding its type, check, help text and default per method.

Why one table: the library validates with it, ``tvreg.lock`` records its keys, and the
CLI generates its flags and their help from it (``tvreg install --help``), so a new
parameter is one row here (plus the recipe that reads it) and the three cannot drift
apart. The parameter ``some_name`` is the flag ``--some-name`` and the key in
``tvreg.lock``'s ``method_params``. This module imports no torch, so help stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import MergeError

#: The default of a parameter the user must give.
REQUIRED = object()

_DARE = ("dare_ties", "dare_linear")


@dataclass(frozen=True)
class ParamRow:
    """One parameter as every method that takes it sees it.

    Attributes:
        kind: ``float``, ``int`` (non-negative), ``bool`` or ``str`` (non-empty).
        help: what the value does, shown by ``--help`` beside the defaults.
        defaults: method name → default (:data:`REQUIRED` when the user must give it,
            ``None`` when it is optional and unset); a method takes exactly the
            parameters whose row names it here.
        check: ``"unit"``: 0 < x ≤ 1; ``"drop"``: 0 ≤ x < 1; ``""``: any value of ``kind``.
        metavar: the CLI's placeholder for the value.
        missing: the message when a :data:`REQUIRED` parameter is not given.
    """

    kind: type
    help: str
    defaults: Mapping[str, object] = field(default_factory=dict)
    check: str = ""
    metavar: str | None = None
    missing: str = ""


PARAMS: dict[str, ParamRow] = {
    "density": ParamRow(
        float, "TIES trim: keep this fraction of each τ's largest entries, per tensor.",
        {"ties": 0.2}, check="unit",
    ),
    "drop_rate": ParamRow(
        float, "DARE: drop each entry of τ with probability p; survivors are scaled by 1/(1−p).",
        dict.fromkeys(_DARE, 0.9), check="drop",
    ),
    "seed": ParamRow(int, "DARE: seed of the drop mask (same seed, same model on CPU and GPU).", dict.fromkeys(_DARE, 0)),
    "lambda": ParamRow(float, "λ, the scale of the merged τ.", {"ties": 1.0, **dict.fromkeys(_DARE, 1.0)}),
    "normalize": ParamRow(
        bool, "Divide the mix by the sum of the (agreeing) weights.",
        {"ties": True, **dict.fromkeys(_DARE, False)},
    ),
    "base_weights": ParamRow(
        str, "θ_pre's weights (directory or cached Hub id); average needs them unless every skill is a delta from G.",
        {"linear": REQUIRED, "average": None}, metavar="PATH",
        missing="needs θ_pre's weights: pass `--base-weights PATH` (the pretrained model's directory).",
    ),
}  # fmt: skip


def flag(name: str) -> str:
    """The CLI flag of parameter ``name`` (``drop_rate`` → ``--drop-rate``)."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Param:
    """One parameter of one method: its default and the check its value must pass."""

    default: object
    kind: type
    check: str = ""
    missing: str = ""
    help: str = ""

    def validate(self, method: str, name: str, value: object) -> object:
        where = f"`{flag(name)}` of method `{method}`"
        if self.kind is str:
            if not isinstance(value, str) or not value:
                raise MergeError(f"{where} must be a non-empty string, not {value!r}.")
            return value
        if self.kind is bool:
            if not isinstance(value, bool):
                raise MergeError(f"{where} must be true or false, not {value!r}.")
            return value
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
                raise MergeError(f"{where} must be a non-negative integer, not {value!r}.")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise MergeError(f"{where} must be a finite number, not {value!r}.")
        value = float(value)
        if self.check == "unit" and not 0 < value <= 1:
            raise MergeError(f"{where} must be in (0, 1], not {value}.")
        if self.check == "drop" and not 0 <= value < 1:
            raise MergeError(f"{where} must be in [0, 1), not {value}.")
        return value


def params_for(method: str) -> dict[str, Param]:
    """The parameters method ``method`` takes, in table order, with its defaults."""
    return {
        name: Param(row.defaults[method], row.kind, row.check, row.missing, row.help)
        for name, row in PARAMS.items()
        if method in row.defaults
    }


def defaults_text(name: str) -> str:
    """The defaults of parameter ``name`` per method, as ``--help`` shows them: ``ties: on; dare_ties, dare_linear: off``."""
    groups: dict[str, list[str]] = {}
    for method, default in PARAMS[name].defaults.items():
        if default is REQUIRED:
            shown = "required"
        elif default is None:
            shown = "optional"
        elif isinstance(default, bool):
            shown = "on" if default else "off"
        else:
            shown = str(default)
        groups.setdefault(shown, []).append(method)
    return "; ".join(f"{', '.join(methods)}: {shown}" for shown, methods in groups.items())
