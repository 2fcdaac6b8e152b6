"""The no-op fast path: decide "Nothing to change" before the merge pipeline (and torch) loads.

Why: re-running an install, an ``upgrade`` with nothing newer or ``sync --locked`` on a
synced model is the most common command in CI and in scripts, and the full pipeline
costs seconds just to import torch and open G. This module answers from what is cheap:
the request compared with ``tvreg.lock``, the registry's version list for the skills
asked for (one metadata call each, never an artifact), and the weights' fingerprint from
the stat cache (:mod:`tvreg._format.statcache`: a few ``stat`` calls, no re-read). It imports
nothing that imports torch; a test checks that in a subprocess.

It is conservative: whenever it cannot prove the full pipeline would change nothing (a
file argument, a bare name, a tag, a flag that changes settings, a file the stat cache
has not seen, a yanked locked version whose warning must be printed), it answers None
and the full pipeline runs — which reaches the same "Nothing to change" the slow way.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .._format import statcache
from .._names import Range, is_tag, parse_requirement, version_key
from .._util.paths import data_dir
from ..errors import TvregError
from .lockfile import LOCK_NAME, LOCK_VERSION, Lock, LockedSkill, read_lock

_FINGERPRINTS = "fingerprints-v1"  # tvreg._format.fingerprint's stat-cache kind (algorithm v1)


@dataclass(frozen=True)
class NothingToChange:
    """The answer of the fast path: the model already is what the command asks for."""

    model_dir: Path
    skills: tuple[LockedSkill, ...]
    output_fingerprint: str
    action: str
    changed: bool = False
    dry_run: bool = False


def _weight_files(model_dir: Path) -> list[Path] | None:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        if any("/" in n or n.startswith(".") for n in names):
            return None
        return [model_dir / n for n in names]
    single = model_dir / "model.safetensors"
    return [single] if single.is_file() else None


def cached_fingerprint(model_dir: Path) -> str | None:
    """The weights' fingerprint from the stat cache alone; None when any weight file is not remembered.

    Computes exactly :func:`tvreg._format.fingerprint.fingerprint_of_hashes` (a test holds the two equal).
    """
    files = _weight_files(model_dir)
    if not files:
        return None
    hashes: dict[str, list] = {}
    for file in files:
        cached = statcache.lookup(_FINGERPRINTS, file)
        if not isinstance(cached, dict):
            return None
        hashes.update(cached)
    try:
        lines = "".join(
            f"{name}\t{v[0]}\t{','.join(map(str, v[1]))}\t{v[2]}\n" for name, v in sorted(hashes.items())
        )
    except (TypeError, IndexError, KeyError):
        return None
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def _artifact_in_store(digest: str) -> bool:
    """The store holds this artifact and the stat cache vouches for its bytes (untouched since hashed)."""
    hexd = digest.partition(":")[2]
    path = data_dir() / "artifacts" / hexd[:2] / f"{hexd}.tvskill"
    return bool(hexd) and path.is_file() and statcache.lookup("digests", path) == digest


def _default_weight(skill: LockedSkill, lock: Lock) -> float | None:
    if skill.dataset_size is None or lock.general_size is None or skill.dataset_unit != lock.general_size_unit:
        return None
    return skill.dataset_size / lock.general_size


def _synced(model_dir: Path, lock: Lock) -> bool:
    """The lock is current on disk, its artifacts are stored, and the weights carry its fingerprint."""
    try:
        on_disk = json.loads((model_dir / LOCK_NAME).read_text(encoding="utf-8")).get("lock_version")
    except (OSError, ValueError, AttributeError):
        return False
    if on_disk != LOCK_VERSION or not lock.output_fingerprint:
        return False
    if not all(_artifact_in_store(s.digest) for s in lock.skills):
        return False
    return cached_fingerprint(model_dir) == lock.output_fingerprint


def _highest_allowed(info: dict, skill: LockedSkill, lock: Lock, spec: str) -> str | None:
    """The highest version the resolver could pick for ``skill`` within ``spec`` (yanked: only the locked one)."""
    allowed = Range(spec) if spec else None
    best = None
    for v in info.get("versions", []):
        version = v.get("version")
        if v.get("kind", "task_vector") == "delta_from_general":
            fits = v.get("base_fingerprint") == lock.general_fingerprint
        else:
            fits = v.get("base_fingerprint") == lock.base_fingerprint
        if not fits or not isinstance(version, str):
            continue
        if v.get("yanked") and version != skill.version:
            continue
        if allowed is not None and version != skill.version and not allowed.satisfies(version):
            continue
        if best is None or version_key(version) > version_key(best):
            best = version
    return best


def _nothing_newer(skills: Sequence[tuple[LockedSkill, str]], lock: Lock, registry: str | None, token) -> bool:
    """Whether each (locked skill, range) is already at the highest version the registry allows."""
    if not skills:
        return True
    from .._registry.client import client_for

    by_registry: dict[str, list[tuple[LockedSkill, str]]] = {}
    for skill, spec in skills:
        if skill.registry is None or (registry is not None and registry.rstrip("/") != skill.registry.rstrip("/")):
            return False
        by_registry.setdefault(skill.registry, []).append((skill, spec))
    for url, group in by_registry.items():
        with client_for(url, token) as client:
            for skill, spec in group:
                try:
                    info = client.skill(skill.id)
                except TvregError:
                    return False  # the full path reports it
                versions = {v.get("version"): v for v in info.get("versions", [])}
                if (versions.get(skill.version) or {}).get("yanked"):
                    return False  # the full path prints the yank reason
                if _highest_allowed(info, skill, lock, spec) != skill.version:
                    return False
    return True


def _policed(model_dir: Path) -> bool:
    """A ``tvreg.toml`` policy is judged on every run (a key may have been revoked since the
    lock was written), and that needs the full pipeline: no shortcut for such a model."""
    return (model_dir / "tvreg.toml").exists()


def check_install(
    model_dir: Path,
    skills: Sequence[str],
    *,
    weights: Mapping[str, float] | None = None,
    registry: str | None = None,
    token: str | None = None,
    resolution: str = "highest",
    offline: bool = False,
    method: str | None = None,
    method_params: Mapping[str, object] | None = None,
    output_dtype: str | None = None,
    settings_given: bool = False,
) -> NothingToChange | None:
    """The no-op answer for ``install``, or None when the full pipeline must decide.

    A no-op when every argument is already locked — a registry requirement with that exact
    requirement, at the highest version it allows, or a file whose stat-cached digest and
    name the lock records — with the same ω (or a default ω again), the method, parameters
    and dtype asked for are the locked ones, and the model is synced. ``settings_given``:
    a flag that re-initialises the environment (``--base``, ``--general-size``).
    """
    if settings_given or resolution != "highest" or _policed(model_dir):
        return None
    lock = read_lock(model_dir)
    if lock is None or not _same_settings(lock, method, method_params, output_dtype):
        return None
    weights = dict(weights or {})
    asked: list[tuple[LockedSkill, str]] = []
    for arg in skills:
        arg = str(arg)
        if arg.startswith("hf://"):
            return None  # a Hub repo's revision may have moved: the full path asks the Hub
        name, _, spec = arg.partition("@")
        if arg.endswith(".tvskill") or arg.startswith(("./", "../", "/", "~")) or os.path.isfile(arg):
            skill = _locked_file(lock, Path(arg).expanduser())
            if skill is None:
                return None
        else:
            if "/" not in name or (spec and is_tag(spec)):
                return None
            try:
                parse_requirement(arg)
            except TvregError:
                return None  # the full path refuses it with its own message
            skill = lock.skill_by_id(name)
            if skill is None or skill.requested != arg:
                return None
            asked.append((skill, spec))
        given = weights.pop(skill.id, None)
        if skill.name in weights and sum(1 for s in lock.skills if s.name == skill.name) == 1:
            given = weights.pop(skill.name) if given is None else None
        if skill.name in weights or (given is None and skill.id != skill.name and skill.id in weights):
            return None
        if given is None and skill.weight_source == "user":
            return None
        if given is not None and (skill.weight_source != "user" or given != skill.weight):
            return None
    for key, value in weights.items():
        skill = lock.skill_by_id(key) if "/" in key else None
        if skill is None or skill.weight_source != "user" or skill.weight != value:
            return None
    if not _synced(model_dir, lock):
        return None
    if offline and asked:
        return None
    if not _nothing_newer(asked, lock, registry, token):
        return None
    return NothingToChange(model_dir, lock.skills, lock.output_fingerprint or "", "install")


def _same_settings(
    lock: Lock, method: str | None, params: Mapping[str, object] | None, output_dtype: str | None
) -> bool:
    """Whether the method, parameters and dtype asked for are literally the locked ones (None: as locked)."""
    if method is not None and method != lock.method:
        return False
    if any(v is not None and lock.method_params.get(k) != v for k, v in (params or {}).items()):
        return False
    if output_dtype is not None and (None if output_dtype == "auto" else output_dtype) != lock.output_dtype:
        return False
    return True


def _locked_file(lock: Lock, path: Path) -> LockedSkill | None:
    """The locked skill installed from this very file (same name, stat-cached digest), else None."""
    from .._util.paths import cache_dir

    try:
        if not path.is_file() or path.resolve().is_relative_to(cache_dir().resolve()):
            return None  # a file in the download cache is a registry version: the full path decides
    except OSError:
        return None
    digest = statcache.lookup("digests", path)  # tvreg._format.artifact.file_digest's kind
    if not isinstance(digest, str):
        return None
    return next(
        (s for s in lock.skills if s.digest == digest and not s.from_registry and s.artifact == path.name), None
    )


def check_upgrade(
    model_dir: Path,
    names: Sequence[str],
    *,
    registry: str | None = None,
    token: str | None = None,
    resolution: str = "highest",
    offline: bool = False,
) -> NothingToChange | None:
    """The no-op answer for ``upgrade``: nothing newer is allowed for any target and defaults hold."""
    if resolution != "highest" or offline or _policed(model_dir):
        return None
    lock = read_lock(model_dir)
    if lock is None:
        return None
    try:
        chosen = [lock.skill(n) for n in names] if names else [s for s in lock.skills if s.from_registry]
    except TvregError:
        return None
    if any(s is None or not s.from_registry for s in chosen):
        return None
    targets: list[tuple[LockedSkill, str]] = []
    for s in chosen:
        assert s is not None  # refused just above
        spec = parse_requirement(s.requested).spec if s.requested else ""
        if spec and is_tag(spec):
            return None
        targets.append((s, spec))
    if any(s.weight_source != "user" and _default_weight(s, lock) != s.weight for s in lock.skills):
        return None
    if not _synced(model_dir, lock) or not _nothing_newer(targets, lock, registry, token):
        return None
    return NothingToChange(model_dir, lock.skills, lock.output_fingerprint or "", "upgrade")


def check_sync(model_dir: Path, *, general: object = None) -> NothingToChange | None:
    """The no-op answer for ``sync``: the weights carry the lock's fingerprint (and defaults hold)."""
    if general is not None or _policed(model_dir):
        return None
    lock = read_lock(model_dir)
    if lock is None:
        return None
    if any(s.weight_source != "user" and _default_weight(s, lock) != s.weight for s in lock.skills):
        return None
    if not _synced(model_dir, lock):
        return None
    return NothingToChange(model_dir, lock.skills, lock.output_fingerprint or "", "sync")
