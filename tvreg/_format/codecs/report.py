"""The compression report of a skill: which codecs, how much smaller, how far from the true τ.

Why in one place: ``tvreg build``, ``tvreg info`` (local and from a registry) and the
registry listings all say the same thing about a skill — lossless or lossy, and how
lossy — from the manifest's per-tensor ``codec``, ``stored_bytes`` and ``rel_error``.
Functions take plain values so a manifest fetched as JSON works as well as a parsed one.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeGuard

# Kept here, not read from the codec table, so that `tvreg info` of a registry skill does
# not import the codecs (and torch); tests/test_public_api.py holds it equal to the table.
LOSSLESS_CODECS = frozenset({"exact"})


def codec_is_lossless(name: str) -> bool:
    return name in LOSSLESS_CODECS


@dataclass(frozen=True)
class TensorLine:
    """One row of the report."""

    name: str
    codec: str
    numel: int
    stored_bytes: int
    rel_error: float | None

    @property
    def ratio(self) -> float:
        return self.numel * 4 / self.stored_bytes if self.stored_bytes else math.inf


def lines_from_json(tensors: Mapping[str, Mapping]) -> list[TensorLine]:
    """Report rows from a manifest's ``tensors`` object as JSON (malformed entries are skipped)."""
    rows = []
    for name, t in tensors.items():
        try:
            numel = math.prod(int(d) for d in t["shape"])
            rows.append(TensorLine(name, str(t["codec"]), numel, int(t["stored_bytes"]), t.get("rel_error")))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return rows


def worst_first(rows: Iterable[TensorLine]) -> list[TensorLine]:
    """Rows by decreasing relative error (unknown errors of lossy codecs first), then size."""

    def key(r: TensorLine):
        err = r.rel_error
        unknown = err is None and not codec_is_lossless(r.codec)
        return (not unknown, -(err or 0.0), -r.stored_bytes)

    return sorted(rows, key=key)


def summary(rows: Iterable[TensorLine]) -> str:
    """``lossless (exact)`` or ``lossy: max rel error 0.84%, int8 ×210, exact ×62``."""
    rows = list(rows)
    counts = Counter(r.codec for r in rows)
    codecs = ", ".join(f"{c} ×{n}" for c, n in counts.most_common())
    if all(codec_is_lossless(r.codec) for r in rows):
        return f"lossless ({codecs or 'no tensors'})"
    errors = [r.rel_error for r in rows if r.rel_error is not None]
    worst = f"max rel error {format_error(max(errors))}" if errors else "error not recorded"
    return f"lossy: {worst}, {codecs}"


def is_lossy(rows: Iterable[TensorLine]) -> bool:
    return not all(codec_is_lossless(r.codec) for r in rows)


def format_error(err: float | None) -> str:
    if err is None:
        return "?"
    if err == 0:
        return "0"
    return f"{err * 100:.3g}%"


def calibration_line(calibration: object, *, lossy: bool, detail: bool = True) -> str | None:
    """``lossy, retention 99.3% (≥ 98.9% at 95%) on 24 held-out texts (target 99%; sparse(density=0.1), 6 evaluations)``.

    ``calibration`` is the manifest's ``calibration`` object as JSON (None when the skill
    was not calibrated, or malformed: then there is no line). The bound in parentheses is
    the retention's bootstrap lower bound, shown when the build measured one. Without
    ``detail`` (a version listing) the line stops before the target and the setting.
    """
    if not isinstance(calibration, Mapping):
        return None
    kept, target = calibration.get("retention"), calibration.get("target")
    if not _number(kept) or not _number(target):
        return None
    texts = calibration.get("texts")
    on = f"{texts} held-out texts" if isinstance(texts, int) else f"hook `{calibration.get('data')}`"
    bound, margin = calibration.get("retention_bound"), calibration.get("margin")
    quantile = margin.get("quantile") if isinstance(margin, Mapping) else None
    if _number(bound) and _number(quantile) and 0 < quantile < 1:
        kept_text = f"{100 * kept:.1f}% (≥ {100 * bound:.1f}% at {100 * (1 - quantile):g}%)"
    else:
        kept_text = f"{100 * kept:.1f}%"
    line = f"{'lossy' if lossy else 'lossless'}, retention {kept_text} on {on}"
    if not detail:
        return line
    said = f"target {100 * target:g}%"
    if isinstance(calibration.get("chosen"), str):
        said += f"; {calibration['chosen']}"
    if isinstance(calibration.get("evaluations"), int):
        said += f", {calibration['evaluations']} evaluations"
    return f"{line} ({said})"


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
