"""What an install, upgrade or uninstall would do, without doing it (``--dry-run``).

Every command plans before it fetches, for real and as a dry run alike, so the two share
every refusal. Planning never downloads: it works from local artifact headers, the
download cache and the registry's metadata, and estimates what the streaming pipeline
would cost: bytes to download, peak memory and the output size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .._format.artifact import Artifact
from .._format.checkpoint import Checkpoint
from .._format.safetensors_io import itemsize
from .._names import version_key
from .._registry.fetch import Resolved
from ..errors import ModelEnvironmentError, WeightError
from .lockfile import Lock
from .skillset import _check_compatible, require_installed
from .store import pristine_path
from .weights import OUTPUT_DTYPES, default_weight


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
    digest: str | None = None


@dataclass(frozen=True)
class Plan:
    """The resolved set and its cost; ``download_bytes`` excludes what is cached already (``cached_bytes``)."""

    model_dir: Path
    skills: tuple[PlannedSkill, ...]
    download_bytes: int
    cached_bytes: int
    peak_memory_bytes: int
    output_bytes: int


def _header(resolved: Resolved, lock: Lock) -> tuple[str, str, str, int | None, str]:
    """Identity, name, version and |D| of a skill: from its header when it is local (checked against
    the model's base), else the registry's metadata (the resolver already filtered by base)."""
    if resolved.path is None:
        name = str(resolved.name)
        return name, name.rpartition("/")[2], str(resolved.version), resolved.dataset_size, resolved.dataset_unit
    with Artifact(resolved.path) as art:
        _check_compatible(art, lock)
        m = art.manifest
        ident = resolved.origin.registry_name if resolved.origin and resolved.origin.registry_name else m.name
        return ident, m.name, m.version, m.dataset_size, m.dataset_unit


def _source(resolved: Resolved) -> str:
    return resolved.origin.label if resolved.origin is not None else str(resolved.path)


def make_plan(
    model_dir: str | os.PathLike[str],
    lock: Lock,
    adding: Sequence[Resolved] = (),
    *,
    removing: Sequence[str] = (),
    weights: Mapping[str, float] | None = None,
    refresh_defaults: bool = False,
    keep_user_weights_of: Sequence[str] = (),
) -> Plan:
    """The skill set a command would leave in ``model_dir`` and what materialising it costs.

    This is the *check* stage every command runs, for real and as a dry run alike, before
    anything is downloaded or written: it refuses a skill built for another base, one
    identity given twice, a ``--weight`` naming no skill of the set, and a default ω that
    cannot be computed; and it reports what would be downloaded.

    Args:
        lock: the model's lock with the settings asked for (method, dtype) applied.
        adding: skills to add or replace (from :func:`tvreg._registry.fetch.resolve_install` with
            ``download=False``); a registry skill not yet cached counts toward ``download_bytes``.
        removing: installed skill identities to remove.
        weights: ω given by the user, by identity or unambiguous short name.
        refresh_defaults: recompute default weights of the skills kept (upgrade).
        keep_user_weights_of: replaced skills whose user-set ω carries over (upgrade).
    """
    model_dir = Path(model_dir)
    require_installed(lock, removing, model_dir)
    removing_ids = {s.id for n in removing if (s := lock.skill(n)) is not None}
    weights = dict(weights or {})
    seen: dict[str, str] = {}
    heads = []
    for r in adding:
        ident, name, version, dataset_size, unit = _header(r, lock)
        if ident in seen:
            raise ModelEnvironmentError(
                f"skill `{ident}` is given twice: from `{seen[ident]}` and from `{_source(r)}`.",
                hints=["give each skill once"],
            )
        seen[ident] = _source(r)
        heads.append((r, ident, name, version, dataset_size, unit))
    idents = [s.id for s in lock.skills if s.id not in removing_ids] + [h[1] for h in heads if lock.skill_by_id(h[1]) is None]
    shorts = {i: i.rpartition("/")[2] for i in idents}
    given: dict[str, float] = {}
    for key, value in weights.items():
        if key in shorts:
            given[key] = value
            continue
        matches = [i for i, s in shorts.items() if s == key] if "/" not in key else []
        if len(matches) == 1:
            given[matches[0]] = value
        elif matches:
            raise WeightError(
                f"`--weight {key}=...` is ambiguous: {' and '.join(f'`{m}`' for m in matches)} are both in the set.",
                hints=[f"name the skill in full: `--weight {matches[0]}=...`"],
            )
        else:
            listed = ", ".join(f"`{i}`" for i in idents) or "none"
            raise WeightError(
                f"`--weight {key}=...` names a skill that is not being installed (the set: {listed}).",
                hints=["check the spelling; a weight applies to a skill in the model or on the command line"],
            )
    rows: dict[str, PlannedSkill] = {}
    for s in lock.skills:
        if s.id in removing_ids:
            rows[s.id] = PlannedSkill(s.id, s.version, None, "", "remove", size=s.size)
            continue
        weight, source = s.weight, s.weight_source
        if s.id in given:
            weight, source = given[s.id], "user"
        elif refresh_defaults and source != "user":
            weight, source = default_weight(s.label, s.name, s.dataset_size, s.dataset_unit, lock, model_dir)
        rows[s.id] = PlannedSkill(s.id, s.version, weight, source, "keep", size=s.size, digest=s.digest)
    download = cached = 0
    for r, ident, name, version, dataset_size, unit in heads:
        old = lock.skill_by_id(ident)
        if ident in given:
            weight, source = given[ident], "user"
        elif old is not None and old.weight_source == "user" and old.id in keep_user_weights_of:
            weight, source = old.weight, "user"
        else:
            weight, source = default_weight(f"{ident}@{version}", name, dataset_size, unit, lock, model_dir)
        size = r.size if r.size is not None else (r.path.stat().st_size if r.path else None)
        fetch = 0 if r.cached else (size or 0)
        download += fetch
        cached += (size or 0) if r.cached and r.origin is not None and r.origin.registry is not None else 0
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
        rows[ident] = PlannedSkill(ident, version, weight, source, change, previous, size, fetch, r.digest)
    count = sum(1 for row in rows.values() if row.change != "remove")
    peak, output = _estimate(model_dir, lock, count, lock.output_dtype)
    return Plan(model_dir, tuple(rows.values()), download, cached, peak, output)


def _estimate(model_dir: Path, lock: Lock, skills: int, dtype: str | None) -> tuple[int, int]:
    """Peak working memory of the merge and the size of the weights written, from G's headers alone.

    The pipeline holds ``workers + 1`` tensors in flight; each needs G's tensor, a float32
    accumulator, one float32 τ per skill and the output tensor.
    """
    workers = max(1, min(3, os.cpu_count() or 1))
    out_item = OUTPUT_DTYPES[dtype].itemsize if dtype else None
    largest = 0
    output = 0
    where = pristine_path(lock.general_fingerprint)
    with Checkpoint.open(where if where.is_dir() else model_dir) as general:
        for name in general.names():
            info = general.info(name)
            numel = math.prod(info.shape)
            g_item = itemsize(info.dtype)
            o_item = out_item if (out_item and info.is_float) else g_item
            output += numel * o_item
            largest = max(largest, numel * (g_item + 4 * (skills + 1) + o_item))
        headers = sum(p.stat().st_size for p in general.files) - general.total_bytes
    return largest * (workers + 1), output + max(0, headers)
