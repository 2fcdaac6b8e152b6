"""The decode memory budget: the most one tensor's decode may allocate in this process.

Why a budget: a manifest's shape is a claim. A ``sparse`` tensor with no kept entries
or a ``lowrank`` one of rank 0 stores no bytes whatever shape it declares, so without
a bound a sub-kilobyte artifact could ask any process that expands it for terabytes.
Every dense buffer a decode allocates (:func:`tvreg._format.codecs.zstd_frame.empty`, the
``to_dense`` of every stored form, :meth:`tvreg._format.artifact.Artifact.decode`) is checked
against the budget first, and going over it is a :class:`~tvreg.errors.DecodeBudgetExceeded`
naming the tensor, never an out-of-memory kill.

Setting: ``TVREG_DECODE_MEMORY`` — a byte count with an optional unit (``512MiB``,
``8GiB``, ``2GB``). Default: half the machine's physical memory, at most 16 GiB and at
least 1 GiB (the fp32 τ of the largest tensor of a 405B-parameter model is 8.4 GB). The
registry reads the same variable; its verification never expands a tensor (see
:mod:`tvreg._format.codecs.verify`), so there the budget only bounds the declared size it accepts.
"""

from __future__ import annotations

import os
import re

from ...errors import ConfigError, DecodeBudgetExceeded

ENV = "TVREG_DECODE_MEMORY"
_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, *, what: str = ENV) -> int:
    """``"8GiB"`` → 8589934592; plain digits are bytes.

    Raises:
        ConfigError: not a size.
    """
    m = _SIZE_RE.match(text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise ConfigError(
            f"`{what}` is {text!r}, not a size.", hints=[f"use bytes or a unit, e.g. `{what}=8GiB`"]
        )
    return int(float(m.group(1)) * _UNITS[unit])


def default_budget() -> int:
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        physical = 8 * 2**30
    return max(2**30, min(16 * 2**30, physical // 2))


def decode_budget() -> int:
    """The budget in bytes: ``TVREG_DECODE_MEMORY`` when set, else :func:`default_budget`."""
    text = os.environ.get(ENV)
    return parse_size(text) if text else default_budget()


def human(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def charge(nbytes: int, *, where: str, what: str = "decoding it", subject: str | None = None) -> None:
    """Refuse ``nbytes`` of decode memory for tensor ``where`` when it is over the budget.

    Raises:
        DecodeBudgetExceeded: naming the tensor, the size and the budget.
    """
    budget = decode_budget()
    if nbytes > budget:
        raise DecodeBudgetExceeded(
            f"{subject or f'tensor `{where}`'} declares a size that needs {human(nbytes)} for {what}, over this "
            f"process's decode memory budget of {human(budget)}.",
            hints=[
                f"if the model really has tensors this large, raise the budget: `{ENV}=<size>` (e.g. 32GiB)"
            ],
        )
