"""npm-style version ranges; kept as an import path for callers, the rules live in :mod:`tvreg._names`."""

from __future__ import annotations

from ._names import Comparator, Range, valid_range
from .errors import InvalidRange

__all__ = ["Comparator", "InvalidRange", "Range", "valid_range"]
