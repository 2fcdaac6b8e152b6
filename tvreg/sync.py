"""Operations that bring a model environment in line with requirements or its lock: lock, sync, upgrade.

They sit on top of :mod:`tvreg.fetch` (resolution and downloads) and :mod:`tvreg.install`
(the declarative pipeline), as ``uv lock`` / ``uv sync`` / ``uv lock --upgrade`` sit on
top of uv's resolver and installer. ``lock`` resolves and writes ``tvreg.lock`` without
touching the weights; ``sync`` re-creates the weights from the lock alone, fetching
artifacts by digest; ``upgrade`` re-resolves installed registry skills to the highest
versions their requirements allow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .environment import require_lock
from .errors import ModelEnvironmentError
from .fetch import fetch_locked, resolve_install
from .install import InstallResult, install, rebuild, require_installed
from .lockfile import Lock
from .progress import NULL_PROGRESS, Progress
from .store import artifact_path, keep_artifact


def ensure_artifacts(
    into: str | os.PathLike[str], *, offline: bool = False, progress: Progress = NULL_PROGRESS
) -> list[str]:
    """Put every artifact ``tvreg.lock`` pins into the local store, fetched by digest; returns those fetched.

    Raises:
        LockMismatch: a candidate file or the registry has other bytes than the lock names.
        ModelEnvironmentError: an artifact is not local and ``offline`` (the message names it).
    """
    lock = require_lock(Path(into))
    fetched: list[str] = []
    missing: list[str] = []
    for skill in lock.skills:
        if artifact_path(skill.digest).is_file():
            continue
        try:
            path = fetch_locked(skill, offline=offline, progress=progress)
        except ModelEnvironmentError as exc:
            if offline and type(exc) is ModelEnvironmentError:
                missing.append(f"{skill.label} ({skill.digest})")
                continue
            raise
        keep_artifact(path, skill.digest)
        fetched.append(skill.label)
    if missing:
        raise ModelEnvironmentError(
            f"`--offline`: {len(missing)} locked artifact(s) are not in the local store or cache: "
            + ", ".join(missing)
            + ".",
            hints=[
                "run without `--offline` to download registry skills by digest; a skill installed from a file "
                "must be installed again from that file"
            ],
        )
    return fetched


def sync(
    into: str | os.PathLike[str],
    *,
    locked: bool = False,
    offline: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> InstallResult:
    """Re-create a model environment's weights from ``tvreg.lock`` alone (``tvreg sync``).

    Args:
        into: the model environment.
        locked: fail instead of updating the lock when it is out of date (the CI use, like
            ``uv sync --locked``), and fail if the weights come out different from the
            fingerprint the lock records.
        offline: use only the local store and download cache.

    Raises:
        LockOutdated: ``locked`` and the lock would change; the model is unchanged.
        LockMismatch: an artifact's bytes are not the digest the lock pins.
        ModelEnvironmentError: ``offline`` and an artifact is missing (named).
    """
    ensure_artifacts(into, offline=offline, progress=progress)
    return rebuild(into, locked=locked, progress=progress)


def lock(
    requirements: Sequence[str] = (),
    *,
    into: str | os.PathLike[str],
    weights: Mapping[str, float] | None = None,
    registry: str | None = None,
    resolution: str = "highest",
    offline: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> InstallResult:
    """Resolve ``requirements`` with the installed skills and write ``tvreg.lock``; no weights are written.

    The artifacts are downloaded into the cache and kept in the local store, so a later
    ``tvreg sync`` (even ``--offline``) can materialise the lock. Default weights are
    refreshed. The lock's weights fingerprint is cleared unless nothing changed.
    """
    got = resolve_install(
        list(requirements),
        into=into,
        registry=registry,
        resolution=resolution,
        offline=offline,
        progress=progress,
    )
    ensure_artifacts(into, offline=offline, progress=progress)
    return install(
        [str(r.path) for r in got],
        into=into,
        weights=weights,
        sources=[r.origin for r in got],
        lock_only=True,
        refresh_defaults=True,
        progress=progress,
    )


def upgrade_targets(lock: Lock, names: Sequence[str], model_dir: Path) -> list[str]:
    """The installed registry skills ``tvreg upgrade NAMES`` re-resolves (all of them when none are named)."""
    require_installed(lock, names, model_dir)
    for name in names:
        skill = lock.skill(name)
        if not skill.from_registry:
            raise ModelEnvironmentError(
                f"skill `{name}` was installed from a file (`{skill.artifact}`), so there is nothing to "
                "upgrade it from.",
                hints=[f"install the new file instead: `tvreg install NEW.tvskill --into {model_dir}`"],
            )
    chosen = [lock.skill(n) for n in names] if names else [s for s in lock.skills if s.from_registry]
    return [s.registry_name for s in chosen]


def upgrade(
    names: Sequence[str] = (),
    *,
    into: str | os.PathLike[str],
    registry: str | None = None,
    resolution: str = "highest",
    offline: bool = False,
    dry_run: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> InstallResult:
    """Re-resolve installed registry skills (``names``, or all) to the highest versions allowed, and install.

    Each skill keeps the requirement it was installed with (``ns/skill@^1.2`` stays within
    ``^1.2``); a weight the user set is kept, default weights are recomputed from the new
    versions' |D| (and the current |G|). The result is byte-identical to a fresh install
    of the new set.
    """
    model_dir = Path(into)
    current = require_lock(model_dir)
    targets = upgrade_targets(current, names, model_dir)
    got = resolve_install(
        [],
        into=into,
        registry=registry,
        resolution=resolution,
        upgrade=targets,
        offline=offline,
        progress=progress,
    )
    ensure_artifacts(into, offline=offline, progress=progress)
    user = {
        s.name: s.weight for s in current.skills if s.weight_source == "user" and s.registry_name in targets
    }
    return install(
        [str(r.path) for r in got],
        into=into,
        weights=user,
        sources=[r.origin for r in got],
        refresh_defaults=True,
        dry_run=dry_run,
        progress=progress,
    )
