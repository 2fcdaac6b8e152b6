"""What an install, upgrade or uninstall would do, without doing it (``--dry-run``).

Why a separate module: a dry run must not download, so it works from what is known
without the artifacts' bytes — local artifact headers, the download cache, and the
registry's metadata — and estimates what the streaming pipeline would cost: bytes to
download, peak memory and the output size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._names import version_key
from .artifact import Artifact
from .environment import open_pristine, require_lock
from .fetch import Resolved
from .install import OUTPUT_DTYPES, default_weight, require_installed
from .lockfile import Lock
from .safetensors_io import itemsize


@dataclass(frozen=True)
class PlannedSkill:
    """One row of the plan. ``change``: ``add``, ``keep``, ``upgrade``/``downgrade``/``replace`` or ``remove``."""

    name: str
    version: str
    weight: float | None
    weight_source: str
    change: str
    previous: str | None = None
    size: int | None = None
    download: int = 0


@dataclass(frozen=True)
class Plan:
    """The resolved set and its cost; ``download_bytes`` excludes what is cached already (``cached_bytes``)."""

    model_dir: Path
    skills: tuple[PlannedSkill, ...]
    download_bytes: int
    cached_bytes: int
    peak_memory_bytes: int
    output_bytes: int


def _header(resolved: Resolved) -> tuple[str, str, int | None, str]:
    """Name, version and |D| of a skill: from its header when it is local, else the registry's metadata."""
    if resolved.path is None:
        return str(resolved.name), str(resolved.version), resolved.dataset_size, resolved.dataset_unit
    with Artifact(resolved.path) as art:
        m = art.manifest
        return m.name, m.version, m.dataset_size, m.dataset_unit


def make_plan(
    into: str | os.PathLike[str],
    adding: Sequence[Resolved] = (),
    *,
    removing: Sequence[str] = (),
    weights: Mapping[str, float] | None = None,
    refresh_defaults: bool = False,
    keep_user_weights_of: Sequence[str] = (),
    output_dtype: str | None = None,
) -> Plan:
    """The skill set a command would leave in ``into`` and what materialising it costs.

    Args:
        adding: skills to add or replace (from :func:`tvreg.fetch.resolve_install` with
            ``download=False``); a registry skill not yet cached counts toward ``download_bytes``.
        removing: installed skill names to remove.
        weights: ω given by the user.
        refresh_defaults: recompute default weights of the skills kept (upgrade).
        keep_user_weights_of: replaced skills whose user-set ω carries over (upgrade).
        output_dtype: as for :func:`tvreg.install.install` (None: as locked).
    """
    model_dir = Path(into)
    lock = require_lock(model_dir)
    require_installed(lock, removing, model_dir)
    weights = dict(weights or {})
    rows: dict[str, PlannedSkill] = {}
    for s in lock.skills:
        if s.name in removing or s.registry_name in removing:
            rows[s.name] = PlannedSkill(s.registry_name, s.version, None, "", "remove", size=s.size)
            continue
        weight, source = s.weight, s.weight_source
        given = weights.get(s.name, weights.get(s.registry_name))
        if given is not None:
            weight, source = given, "user"
        elif refresh_defaults and source != "user":
            weight, source = default_weight(s.label, s.name, s.dataset_size, s.dataset_unit, lock, model_dir)
        rows[s.name] = PlannedSkill(s.registry_name, s.version, weight, source, "keep", size=s.size)
    download = cached = 0
    for r in adding:
        name, version, dataset_size, unit = _header(r)
        old = lock.skill(name)
        shown = r.origin.registry_name if r.origin and r.origin.registry_name else name
        given = weights.get(name, weights.get(shown))
        if given is not None:
            weight, source = given, "user"
        elif old is not None and old.weight_source == "user" and old.registry_name in keep_user_weights_of:
            weight, source = old.weight, "user"
        else:
            weight, source = default_weight(f"{name}@{version}", name, dataset_size, unit, lock, model_dir)
        size = r.size if r.size is not None else (r.path.stat().st_size if r.path else None)
        fetch = 0 if r.cached else (size or 0)
        download += fetch
        cached += (size or 0) if r.cached and r.origin is not None else 0
        if old is None:
            change, previous = "add", None
        elif old.version == version:
            change, previous = (
                "keep" if old.digest == r.digest or r.digest is None else "replace",
                old.version,
            )
        else:
            newer = version_key(version) > version_key(old.version)
            change, previous = ("upgrade" if newer else "downgrade"), old.version
        rows[old.name if old else name] = PlannedSkill(
            shown, version, weight, source, change, previous, size, fetch
        )
    dtype = lock.output_dtype if output_dtype is None else (None if output_dtype == "auto" else output_dtype)
    count = sum(1 for row in rows.values() if row.change != "remove")
    peak, output = _estimate(lock, count, dtype)
    return Plan(model_dir, tuple(rows.values()), download, cached, peak, output)


def _estimate(lock: Lock, skills: int, dtype: str | None) -> tuple[int, int]:
    """Peak working memory of the merge and the size of the weights written, from G's headers alone.

    The pipeline holds ``workers + 1`` tensors in flight; each needs G's tensor, a float32
    accumulator, one float32 τ per skill and the output tensor.
    """
    workers = max(1, min(3, os.cpu_count() or 1))
    out_item = OUTPUT_DTYPES[dtype].itemsize if dtype else None
    largest = 0
    output = 0
    with open_pristine(lock) as general:
        for name in general.names():
            info = general.info(name)
            numel = math.prod(info.shape)
            g_item = itemsize(info.dtype)
            o_item = out_item if (out_item and info.is_float) else g_item
            output += numel * o_item
            largest = max(largest, numel * (g_item + 4 * (skills + 1) + o_item))
        headers = sum(p.stat().st_size for p in general.files) - general.total_bytes
    return largest * (workers + 1), output + max(0, headers)
