"""The environment commands, one pipeline each: resolve once → check (plan) → fetch → apply.

``install``, ``uninstall``, ``upgrade``, ``lock`` and ``sync`` all run the same stages, and
``dry_run`` stops after the check: a dry run gives the real run's refusals, warnings and
exit codes, downloads no artifact (it reports the bytes it would download) and writes
nothing to the model, its lock or the store. The CLI parses flags, calls one of these and
prints the result; ``tvreg.install(["alice/science"], into=...)`` is the same call.

Apply is declarative (θ_G + Σ ω_k τ_k from pristine G, :mod:`tvreg._env.materialise`) and
skips itself when nothing would change: same resolved set, ω, method, parameters and
output dtype as the lock, and the weights still carry the locked fingerprint (stat-cached).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from .._format import statcache
from .._format.artifact import file_digest
from .._format.checkpoint import Checkpoint
from .._format.fingerprint import fingerprint_of_hashes, tensor_hashes
from .._format.interference import InterferenceReport
from .._merge import get_method
from .._merge.device import merger_for, resolve_device
from .._registry.fetch import Resolved, download_resolved, fetch_locked, resolve_install
from .._util.progress import NULL_PROGRESS, Progress
from .._version import __version__
from ..errors import InstallInterrupted, LockOutdated, ModelEnvironmentError, TvregError
from . import noop
from .environment import (
    adopt_general,
    commit_environment,
    lock_model,
    open_pristine,
    plan_environment,
    require_lock,
)
from .lockfile import LOCK_VERSION, Lock, LockedSkill, Origin, read_lock, write_lock
from .materialise import _materialise, _Merge, _open_base_weights
from .plan import Plan, make_plan
from .policy import policy_check
from .skillset import (
    _check_tensors,
    _default_weight,
    _ident,
    _idents,
    _open_skills,
    _origins,
    _shown,
    _Skill,
    require_installed,
)
from .staging import _clean_stale_staging
from .store import artifact_path, keep_artifact, pristine_path
from .weights import _check_output_dtype, _resolve_params


@dataclass(frozen=True)
class InstallResult:
    """What a command did (or, for a dry run, would do).

    ``changed`` is False when nothing needed to change and no file was written ("Nothing
    to change"); ``plan`` is the checked plan (rows, bytes to download, peak memory).
    """

    model_dir: Path
    skills: tuple[LockedSkill, ...]
    output_fingerprint: str
    notes: tuple[str, ...]
    bytes_written: int
    seconds: float
    dry_run: bool = False
    changed: bool = True
    plan: Plan | None = None
    action: str = "install"


def _model_dir(into: str | os.PathLike[str] | None) -> Path:
    """``into``, or the current directory when it holds a ``tvreg.lock`` (like uv's project discovery)."""
    if into is not None:
        path = Path(into)
    elif (Path.cwd() / "tvreg.lock").is_file():
        path = Path.cwd()
    else:
        raise ModelEnvironmentError(
            "no model environment given, and the current directory has no `tvreg.lock`.",
            hints=["pass `--into DIR`, or run the command inside the model directory"],
        )
    if not path.is_dir():
        raise ModelEnvironmentError(f"`{path}` is not a directory.")
    return path.resolve()


def _with_settings(
    lock: Lock, method: str | None, method_params: Mapping[str, object] | None, output_dtype: str | None
) -> Lock:
    """``lock`` with the merge method, its parameters and the output dtype asked for (None: as locked).

    Given parameters update the locked ones of the same method; another method starts from its defaults.
    """
    chosen = method or lock.method
    params = dict(lock.method_params) if chosen == lock.method else {}
    params.update({k: v for k, v in (method_params or {}).items() if v is not None})
    params = _resolve_params(chosen, params)
    dtype_name = (
        lock.output_dtype if output_dtype is None else (None if output_dtype == "auto" else output_dtype)
    )
    _check_output_dtype(dtype_name)
    return replace(lock, method=chosen, method_params=params, output_dtype=dtype_name)


def require_general(lock: Lock, model_dir: Path) -> None:
    """Refuse (as the real run would) when pristine G is neither in the store nor in ``model_dir``."""
    from .environment import _holds_general

    if not pristine_path(lock.general_fingerprint).is_dir() and not _holds_general(model_dir, lock):
        open_pristine(lock, None if False else model_dir)  # raises the one missing-G error


def _weights_fingerprint(model_dir: Path) -> str | None:
    """The fingerprint of the weights in ``model_dir`` from the stat cache (no re-read when unchanged)."""
    try:
        with Checkpoint.open(model_dir) as ckpt:
            return fingerprint_of_hashes(tensor_hashes(ckpt))
    except TvregError:
        return None


def _same_inputs(a: Lock, b: Lock) -> bool:
    """Whether two locks describe the same weights (ignoring the recorded fingerprint and notes)."""
    strip: dict[str, Any] = {"output_fingerprint": None, "notes": (), "tvreg_version": "", "lock_version": LOCK_VERSION}
    return replace(a, **strip) == replace(b, **strip)


def _unchanged(model_dir: Path, current: Lock | None, new: Lock, *, weights_too: bool) -> bool:
    """The no-op test: the lock would not change and (for weights) they still carry its fingerprint."""
    if current is None or not _same_inputs(current, new):
        return False
    if not weights_too:
        return True
    return current.output_fingerprint is not None and _weights_fingerprint(model_dir) == current.output_fingerprint


def _locked(final: Sequence[_Skill]) -> tuple[LockedSkill, ...]:
    for skill in final:
        if not skill.digest:
            skill.digest = file_digest(skill.artifact.path)
    return tuple(
        LockedSkill(
            name=s.artifact.manifest.name,
            version=s.artifact.manifest.version,
            digest=s.digest,
            artifact=s.origin.label,
            weight=s.weight,
            weight_source=s.weight_source,
            dataset_size=s.artifact.manifest.dataset_size,
            dataset_unit=s.artifact.manifest.dataset_unit,
            registry=s.origin.registry,
            requested=s.origin.requested,
            size=s.artifact.path.stat().st_size,
        )
        for s in final
    )


def _apply(
    model_dir: Path,
    lock: Lock,
    final: list[_Skill],
    started: float,
    progress: Progress,
    *,
    write_weights: bool = True,
    expect_output: str | None = None,
    action: str = "install",
    device_kind: str | None = None,
    plan: Plan | None = None,
    policy=None,
    gate=None,
) -> InstallResult:
    """Make ``model_dir`` hold exactly ``final`` on top of pristine G, or nothing when it already does.

    ``lock`` carries the method and dtype settings; its skills are replaced by ``final``.
    ``write_weights=False`` only writes the new ``tvreg.lock`` (``tvreg lock``): its
    weights fingerprint is cleared unless nothing changed. Closes ``final``'s artifacts.
    ``policy`` (:class:`tvreg._env.policy.PolicyCheck`) refuses a set it does not allow and records
    ``signed_by``; ``gate`` (:class:`tvreg._env.policy.Gate`) evaluates the staged model before the swap.
    Caller holds :func:`lock_model`.
    """
    device_kind = device_kind or resolve_device("auto")
    current = read_lock(model_dir)
    try:
        locked = _locked(final)
        if policy is not None:
            locked = policy.stamp(locked, progress)
        new_lock = replace(lock, skills=locked, output_fingerprint=None, notes=current.notes if current else ())
        if _unchanged(model_dir, current, new_lock, weights_too=write_weights):
            on_disk = read_lock_version(model_dir)
            assert current is not None  # `_unchanged` is False without a current lock
            if on_disk is not None and on_disk < LOCK_VERSION:
                write_lock(model_dir, current)  # an older lock format is rewritten as the current one
            return InstallResult(
                model_dir, current.skills, current.output_fingerprint or "", current.notes, 0,
                time.monotonic() - started, changed=False, plan=plan, action=action,
            )  # fmt: skip
        general = open_pristine(lock, model_dir, progress=progress)
        try:
            known = tensor_hashes(general, progress=progress)
            if fingerprint_of_hashes(known) != lock.general_fingerprint:
                raise ModelEnvironmentError(
                    f"the pristine copy of the general model in the store no longer matches "
                    f"fingerprint {lock.general_fingerprint}.",
                    hints=[f"restore it: `tvreg sync --into {model_dir} --general PATH_TO_G`"],
                )
            notes = _check_tensors(final, general)
            merge_method = get_method(lock.method)
            merge_method.check_skills([(s.artifact.manifest.label, s.artifact.manifest.kind) for s in final])
            recipe = merge_method.recipe(
                [s.weight for s in final], [s.artifact.manifest.kind for s in final], lock.method_params
            )
            new_lock = replace(new_lock, notes=tuple(notes))
            if not write_weights:
                for skill in final:
                    keep_artifact(skill.artifact.path, skill.digest)
                new_lock = replace(new_lock, tvreg_version=__version__)
                write_lock(model_dir, new_lock)
                return InstallResult(
                    model_dir, locked, "", tuple(notes), 0, time.monotonic() - started, plan=plan, action=action
                )
            pre = (
                _open_base_weights(str(lock.method_params["base_weights"]), lock, general, progress)
                if recipe.needs_base_weights
                else None
            )
            try:
                merge = _Merge(recipe, pre, merger_for(device_kind))
                written_lock, written = _materialise(
                    model_dir, new_lock, final, general, known, progress, merge, expect_output,
                    before_swap=None if gate is None else (lambda staged: gate.check(staged, progress, action=action)),
                )  # fmt: skip
            finally:
                if pre is not None:
                    pre.close()
        finally:
            general.close()
    except KeyboardInterrupt:
        raise InstallInterrupted(f"{action} interrupted; `{model_dir}` is unchanged.") from None
    finally:
        for skill in final:
            skill.artifact.close()
    return InstallResult(
        model_dir, locked, written_lock.output_fingerprint or "", tuple(notes), written,
        time.monotonic() - started, plan=plan, action=action,
    )  # fmt: skip


def read_lock_version(model_dir: Path) -> int | None:
    """The ``lock_version`` written in ``model_dir``'s lock file (before any upgrade in memory)."""
    import json

    try:
        return int(json.loads((model_dir / "tvreg.lock").read_text(encoding="utf-8")).get("lock_version"))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _nothing(found, started: float) -> InstallResult:
    """The fast path's answer (:mod:`tvreg._env.noop`) as the pipeline's result."""
    return InstallResult(
        found.model_dir, found.skills, found.output_fingerprint, (), 0, time.monotonic() - started,
        changed=False, action=found.action,
    )  # fmt: skip


def _guarded(dry_run: bool, model_dir: Path):
    return statcache.read_only() if dry_run else lock_model(model_dir)


def _dry(model_dir: Path, plan: Plan, started: float, action: str) -> InstallResult:
    return InstallResult(model_dir, (), "", (), 0, time.monotonic() - started, dry_run=True, plan=plan, action=action)


def _interrupted(action: str, model_dir: Path):
    """Turn Ctrl-C before apply into the one sentence every command gives."""
    @contextlib.contextmanager
    def guard():
        try:
            yield
        except KeyboardInterrupt:
            raise InstallInterrupted(f"{action} interrupted; `{model_dir}` is unchanged.") from None

    return guard()


def install(
    skills: Sequence[str | os.PathLike[str]],
    *,
    into: str | os.PathLike[str] | None = None,
    weights: Mapping[str, float] | None = None,
    base: str | os.PathLike[str] | None = None,
    base_fingerprint: str | None = None,
    general_size: int | None = None,
    method: str | None = None,
    method_params: Mapping[str, object] | None = None,
    output_dtype: str | None = None,
    device: str = "auto",
    dry_run: bool = False,
    lock_only: bool = False,
    refresh_defaults: bool = False,
    sources: Sequence[str | Origin | None] | None = None,
    registry: str | None = None,
    token: str | None = None,
    resolution: str = "highest",
    offline: bool = False,
    namespaces: Sequence[str] | None = None,
    gate=None,
    progress: Progress = NULL_PROGRESS,
    on_interference: Callable[[InterferenceReport], None] | None = None,
) -> InstallResult:
    """Install skills into a model environment: θ = θ_G + Σ_k ω_k τ_k, recomputed from pristine G.

    The set installed is the skills already in ``tvreg.lock`` plus ``skills`` (a skill of
    the same identity replaces the locked one), always recomputed from pristine G, so
    installing twice or in another order gives identical bytes; installing what is already
    installed writes nothing (``result.changed`` is False).

    Args:
        skills: registry requirements (``alice/science``, ``alice/science@^1.2``, a bare
            ``science`` looked up in ``namespaces``) and ``.tvskill`` files, mixed freely.
        into: the model environment (default: the current directory when it holds ``tvreg.lock``).
        weights: ω per skill (identity ``ns/skill`` or an unambiguous short name), overriding |D|/|G|.
        base, base_fingerprint, general_size: initialise the environment on the fly
            (see :func:`~tvreg._env.environment.init_environment`).
        method, method_params: the merge method (see :data:`tvreg._merge.METHODS`) and its
            parameters; default: what ``tvreg.lock`` records.
        output_dtype: ``float32``, ``float16``, ``bfloat16`` or ``"auto"`` (G's own); default: as locked.
        device: ``auto``, ``cuda`` or ``cpu``.
        dry_run: resolve and check everything, download and write nothing; ``result.plan`` says
            what would happen (bytes to download, peak memory).
        lock_only: write ``tvreg.lock`` (and keep the artifacts) but not the weights (``tvreg lock``).
        refresh_defaults: recompute the default ω of skills already installed.
        sources: origins parallel to ``skills`` when they are files fetched by other means.
        registry, token, resolution, offline, namespaces: how requirements are resolved.
        on_interference: receives the interference report of the planned set (the check step,
            on this one resolution, from sketches only); default: each warning goes to
            ``progress.warn``. Never fails the install.
        gate: a :class:`tvreg._env.policy.Gate` (``--gate HOOK --require metric>=x``) the staged model
            must pass before it replaces the model; a failing gate raises ``GateFailed`` and
            changes nothing. A ``tvreg.toml`` policy beside the lock is always enforced.

    Returns:
        An :class:`InstallResult`.

    Raises:
        IncompatibleBase: a skill was built for another base; checked before any download.
        ResolutionImpossible / NotFound: no version fits, a bare name is ambiguous or unknown.
        ArtifactError: a file argument does not exist or cannot be read.
        WeightError: ω cannot be determined, or ``weights`` names no skill of the set.
        MergeError: an unknown method or a bad parameter.
        InstallInterrupted / DiskFull: the model directory is unchanged.

    Example:
        >>> install(["alice/science"], into="mymodel")  # doctest: +SKIP
    """
    started = time.monotonic()
    device_kind = resolve_device(device)
    model_dir = _model_dir(into)
    init = base is not None or base_fingerprint is not None or general_size is not None
    if not (dry_run or lock_only or refresh_defaults or sources is not None or gate is not None):
        found = noop.check_install(
            model_dir, [str(s) for s in skills], weights=weights, registry=registry, token=token,
            resolution=resolution, offline=offline, method=method, method_params=method_params,
            output_dtype=output_dtype, settings_given=init,
        )  # fmt: skip
        if found is not None:
            return _nothing(found, started)
    with _guarded(dry_run, model_dir), _interrupted("install", model_dir):
        # resolve once → check (plan) → [dry run stops] → fetch → apply
        if init:
            initial = plan_environment(
                model_dir, base=base, base_fingerprint=base_fingerprint, general_size=general_size,
                progress=progress,
            )  # fmt: skip
        else:
            initial = require_lock(model_dir)
        lock = _with_settings(initial, method, method_params, output_dtype)
        origins = _origins(sources, len(skills)) if sources is not None else None
        guard = policy_check(model_dir, lock, token=token)
        resolved = resolve_install(
            [str(s) for s in skills], lock=lock, into=model_dir, registry=registry, token=token,
            resolution=resolution, offline=offline, download=False, namespaces=namespaces,
            sources=origins, policy=guard, progress=progress,
            base=base or cast("str | os.PathLike[str] | None", (method_params or {}).get("base_weights")),
            dry_run=dry_run,
        )  # fmt: skip
        plan = make_plan(model_dir, lock, resolved, weights=weights, refresh_defaults=refresh_defaults)
        require_general(lock, model_dir)
        if not init:
            _check_interference(
                model_dir, lock, resolved, plan, weights=weights, registry=registry, token=token,
                progress=progress, report=on_interference,
            )  # fmt: skip
        if dry_run:
            return _dry(model_dir, plan, started, "install")
        resolved = [download_resolved(r, token=token, progress=progress) for r in resolved]
        if lock_only:
            ensure_artifacts(model_dir, offline=offline, progress=progress)
        if init:
            commit_environment(model_dir, initial, progress=progress)
        _clean_stale_staging(model_dir)
        final = _open_skills(
            [cast(Path, r.path) for r in resolved], lock, weights or {}, model_dir, [_origin_of(r) for r in resolved],
            refresh_defaults=refresh_defaults,
        )  # fmt: skip
    return _apply_locked(
        model_dir, lock, final, started, progress, write_weights=not lock_only, device_kind=device_kind,
        plan=plan, action="lock" if lock_only else "install", policy=guard, gate=gate,
    )  # fmt: skip


def _check_interference(
    model_dir: Path,
    lock: Lock,
    resolved: Sequence[Resolved],
    plan: Plan,
    *,
    weights: Mapping[str, float] | None,
    registry: str | None,
    token: str | None,
    progress: Progress,
    report: Callable[[InterferenceReport], None] | None,
) -> None:
    """The check step: interference of the planned set, from the one resolution, downloading nothing.

    Dry run and real run alike pass ``download=False``, so both warn the same; a version
    with no published sketch that is not cached is skipped with a note.
    """
    from ..errors import SketchError, SketchMismatch
    from .check import check_resolved

    if sum(1 for row in plan.skills if row.change != "remove") < 2 or not resolved:
        return
    if any(r.path is None and r.origin is not None and r.origin.label.startswith("hf://") for r in resolved):
        progress.note("interference check skipped: a Hub repo is not downloaded by a dry run")
        return
    try:
        found = check_resolved(
            resolved, lock=lock, into=model_dir, weights=weights, registry=registry, token=token,
            download=False, progress=progress,
        )  # fmt: skip
    except (SketchError, SketchMismatch) as exc:
        progress.note(f"interference check skipped: {exc.message}")
        return
    if report is not None:
        report(found)
        return
    for pair in found.flagged:
        for warning in pair.warnings:
            progress.warn(warning)


def _origin_of(r: Resolved) -> Origin:
    if r.origin is not None:
        return r.origin
    assert r.path is not None  # a local file always has its path
    return Origin(Path(r.path).name)


def _apply_locked(model_dir: Path, *args, **kwargs) -> InstallResult:
    with lock_model(model_dir):
        return _apply(model_dir, *args, **kwargs)


def uninstall(
    names: Sequence[str],
    *,
    into: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> InstallResult:
    """Remove skills (by identity, or an unambiguous short name): the weights become those of the rest.

    Like ``uv remove``, a dependency that only the removed skills needed (one the resolver
    added, not one the user asked for) is removed with them.

    Raises:
        ModelEnvironmentError: a name is not installed, is ambiguous, or a remaining skill requires it.
    """
    started = time.monotonic()
    model_dir = _model_dir(into)
    with _guarded(dry_run, model_dir), _interrupted("uninstall", model_dir):
        lock = require_lock(model_dir)
        require_installed(lock, names, model_dir)
        ids = [s.id for n in names if (s := lock.skill(n)) is not None]
        require_general(lock, model_dir)
        # The check runs on the skills' own manifests (read-only), for dry runs too: the same
        # "requires it" refusal and the same orphans removed.
        final = _open_skills([], lock, {}, model_dir, [], drop=set(ids))
        try:
            removed = _close_removal(final, set(ids), model_dir, progress)
            plan = make_plan(model_dir, lock, removing=ids + removed)
            if dry_run:
                for skill in final:
                    skill.artifact.close()
                return _dry(model_dir, plan, started, "uninstall")
            _clean_stale_staging(model_dir)
        except BaseException:
            for skill in final:
                skill.artifact.close()
            raise
        return _apply(
            model_dir, lock, final, started, progress, action="uninstall", plan=plan,
            policy=policy_check(model_dir, lock),
        )  # fmt: skip


def _close_removal(final: list[_Skill], gone: set[str], model_dir: Path, progress: Progress) -> list[str]:
    """Refuse removing a skill a remaining one requires; drop (from ``final``) the orphans, like ``uv remove``.

    Returns the lock identities of the orphans removed (each is also said through ``progress``).
    """
    removed: list[str] = []
    while True:
        blocked = [(_shown(s), d) for s in final for d in s.artifact.manifest.requires if d in gone]
        if blocked:
            who, what = blocked[0]
            raise ModelEnvironmentError(
                f"cannot uninstall `{what}`: `{who}` requires it.",
                hints=[f"uninstall both: `tvreg uninstall {what} {_ident(who)} --into {model_dir}`"],
            )
        needed = {d for s in final for d in s.artifact.manifest.requires}
        orphans = [
            s for s in final
            if s.origin.requested is None and s.origin.registry is not None and not (_idents(s) & needed)
        ]  # fmt: skip
        if not orphans:
            return removed
        for s in orphans:
            progress.note(f"removing `{_shown(s)}`: only the uninstalled skills required it.")
            gone |= _idents(s)
            removed.append(s.id)
            final.remove(s)
            s.artifact.close()


def upgrade_targets(lock: Lock, names: Sequence[str], model_dir: Path) -> list[str]:
    """The installed registry skills ``tvreg upgrade NAMES`` re-resolves (all of them when none are named)."""
    require_installed(lock, names, model_dir)
    for name in names:
        skill = lock.skill(name)
        assert skill is not None  # `require_installed` above
        if not skill.from_registry:
            raise ModelEnvironmentError(
                f"skill `{name}` was installed from a file (`{skill.artifact}`), so there is nothing to "
                "upgrade it from.",
                hints=[f"install the new file instead: `tvreg install NEW.tvskill --into {model_dir}`"],
            )
    chosen = [lock.skill(n) for n in names] if names else [s for s in lock.skills if s.from_registry]
    return [s.id for s in chosen if s is not None]


def upgrade(
    names: Sequence[str] = (),
    *,
    into: str | os.PathLike[str] | None = None,
    registry: str | None = None,
    token: str | None = None,
    resolution: str = "highest",
    offline: bool = False,
    dry_run: bool = False,
    gate=None,
    progress: Progress = NULL_PROGRESS,
) -> InstallResult:
    """Re-resolve installed registry skills (``names``, or all) to the highest versions allowed.

    Each skill stays within the requirement it was installed with; a weight the user set
    is kept, default weights are recomputed. Never a silent downgrade: a locked version
    that is now yanked is kept (with a warning giving the yank reason) unless a higher
    version is allowed. With nothing newer, nothing is written. ``gate`` (as for
    :func:`install`) evaluates the staged model before the swap; ``GateFailed`` changes nothing.
    """
    started = time.monotonic()
    model_dir = _model_dir(into)
    if not dry_run:
        found = noop.check_upgrade(
            model_dir, names, registry=registry, token=token, resolution=resolution, offline=offline
        )
        if found is not None:
            return _nothing(found, started)
    with _guarded(dry_run, model_dir), _interrupted("upgrade", model_dir):
        current = require_lock(model_dir)
        targets = upgrade_targets(current, names, model_dir)
        guard = policy_check(model_dir, current, token=token)
        resolved = resolve_install(
            [], lock=current, into=model_dir, registry=registry, token=token, resolution=resolution,
            upgrade=targets, offline=offline, download=False, policy=guard, progress=progress,
        )  # fmt: skip
        plan = make_plan(model_dir, current, resolved, refresh_defaults=True, keep_user_weights_of=targets)
        require_general(current, model_dir)
        if dry_run:
            return _dry(model_dir, plan, started, "upgrade")
        resolved = [download_resolved(r, token=token, progress=progress) for r in resolved]
        ensure_artifacts(model_dir, offline=offline, progress=progress)
        user = {s.id: s.weight for s in current.skills if s.weight_source == "user" and s.id in targets}
        _clean_stale_staging(model_dir)
        final = _open_skills(
            [cast(Path, r.path) for r in resolved], current, user, model_dir, [_origin_of(r) for r in resolved],
            refresh_defaults=True,
        )  # fmt: skip
        return _apply(
            model_dir, current, final, started, progress, action="upgrade", plan=plan, policy=guard, gate=gate
        )


def lock(
    requirements: Sequence[str] = (),
    *,
    into: str | os.PathLike[str] | None = None,
    weights: Mapping[str, float] | None = None,
    registry: str | None = None,
    token: str | None = None,
    resolution: str = "highest",
    offline: bool = False,
    namespaces: Sequence[str] | None = None,
    dry_run: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> InstallResult:
    """Resolve ``requirements`` with the installed skills and write ``tvreg.lock``; no weights are written.

    The artifacts are kept in the local store, so a later ``tvreg sync`` (even
    ``--offline``) can materialise the lock. The lock's weights fingerprint is cleared
    unless nothing changed.
    """
    return install(
        list(requirements), into=into, weights=weights, registry=registry, token=token,
        resolution=resolution, offline=offline, namespaces=namespaces, lock_only=True,
        refresh_defaults=True, dry_run=dry_run, progress=progress,
    )  # fmt: skip


def ensure_artifacts(
    into: str | os.PathLike[str],
    *,
    offline: bool = False,
    base: str | os.PathLike[str] | None = None,
    progress: Progress = NULL_PROGRESS,
) -> list[str]:
    """Put every artifact ``tvreg.lock`` pins into the local store, fetched by digest; returns those fetched.

    ``base`` is θ_pre for re-converting a locked Hub skill (``sync --base``).

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
            if skill.artifact.startswith("hf://"):
                from .._registry.hub import fetch_locked as fetch_from_hub

                path = fetch_from_hub(skill, lock, base=base, offline=offline, progress=progress)
            else:
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
    into: str | os.PathLike[str] | None = None,
    *,
    locked: bool = False,
    offline: bool = False,
    general: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    gate=None,
    base: str | os.PathLike[str] | None = None,
    progress: Progress = NULL_PROGRESS,
) -> InstallResult:
    """Re-create a model environment's weights from ``tvreg.lock`` alone (``tvreg sync``).

    Args:
        into: the model environment (default: the current directory when it holds ``tvreg.lock``).
        locked: fail instead of updating the lock when it is out of date (the CI use, like
            ``uv sync --locked``), and fail if the weights come out different from the
            fingerprint the lock records.
        offline: use only the local store and download cache.
        general: an untouched copy of G, kept in this machine's store when its fingerprint is
            the lock's (a lock from another machine names G only by fingerprint).
        gate: a :class:`tvreg._env.policy.Gate` the staged weights must pass before they replace
            the model's (``GateFailed``: model and lock unchanged). Weights that already
            carry the lock's fingerprint are not re-staged, so the gate does not run.
        base: θ_pre on this machine (a directory or cached Hub id), used to re-convert a
            locked Hub skill whose repo names no base; its fingerprint must be the lock's.

    Raises:
        LockOutdated: ``locked`` and the lock would change; the model is unchanged.
        LockMismatch: an artifact's bytes are not the digest the lock pins.
        IncompatibleBase: ``general`` is not the G the lock names.
        ModelEnvironmentError: ``offline`` and an artifact is missing, or G is missing (named).
    """
    started = time.monotonic()
    model_dir = _model_dir(into)
    if not dry_run:
        found = noop.check_sync(model_dir, general=general)
        if found is not None:
            return _nothing(found, started)
    with _guarded(dry_run, model_dir), _interrupted("sync", model_dir):
        lock = require_lock(model_dir)
        if general is not None and not dry_run:
            adopt_general(general, lock, progress=progress)
        elif general is not None:
            _check_general(general, lock)
        plan = make_plan(model_dir, lock, refresh_defaults=not locked)
        if general is None or not dry_run:
            require_general(lock, model_dir)
        if dry_run:
            from .._registry.cache import BlobCache

            cache = BlobCache()
            missing = [s for s in lock.skills if not artifact_path(s.digest).is_file()]
            need = sum(s.size or 0 for s in missing if not cache.path(s.digest).is_file())
            if locked and not missing:  # the real run's `--locked` refusal, from the stored manifests
                final = _open_skills([], lock, {}, model_dir, [], refresh_defaults=False)
                with _closing(final, always=True):
                    _require_current(final, lock, model_dir)
            return _dry(model_dir, replace(plan, download_bytes=need), started, "sync")
        ensure_artifacts(model_dir, offline=offline, base=base, progress=progress)
        _clean_stale_staging(model_dir)
        final = _open_skills([], lock, {}, model_dir, [], refresh_defaults=not locked)
        guard = policy_check(model_dir, lock)
        if locked:
            with _closing(final, always=False):
                _require_current(final, lock, model_dir)
                if guard is not None:
                    _require_same_signers(guard.stamp(_locked(final)), lock, model_dir)
        return _apply(
            model_dir, lock, final, started, progress,
            expect_output=lock.output_fingerprint if locked else None, action="sync", plan=plan,
            policy=guard, gate=gate,
        )  # fmt: skip


def _require_same_signers(stamped: Sequence[LockedSkill], lock: Lock, model_dir: Path) -> None:
    """``sync --locked`` under a policy: the key that verifies each skill now must be the one the lock records.

    Why: ``signed_by`` is a record of the last verification, never a credential; the policy
    re-verifies every bundle, and a lock whose record disagrees would have to change.
    """
    recorded = {s.id: s.signed_by for s in lock.skills}
    reasons = [
        f"the lock says {s.id} {s.version} was signed by {_key(recorded.get(s.id))}, "
        f"but it verifies with {_key(s.signed_by)}"
        for s in stamped
        if recorded.get(s.id) != s.signed_by
    ]
    if reasons:
        raise LockOutdated(
            f"`{model_dir}/tvreg.lock` needs to be updated, but `--locked` was given: " + "; ".join(reasons) + ".",
            reasons=reasons,
            hints=[f"update it with `tvreg lock --into {model_dir}`, or drop `--locked`"],
        )


def _key(key_id: str | None) -> str:
    return f"{key_id[:19]}…" if key_id else "no key"


def _require_current(final: Sequence[_Skill], lock: Lock, model_dir: Path) -> None:
    """``sync --locked``: raise LockOutdated when resolving again would change the lock (caller closes)."""
    reasons = outdated_reasons(lock, final, model_dir)
    if reasons:
        raise LockOutdated(
            f"`{model_dir}/tvreg.lock` needs to be updated, but `--locked` was given: " + "; ".join(reasons) + ".",
            reasons=reasons,
            hints=[f"update it with `tvreg lock --into {model_dir}`, or drop `--locked`"],
        )


def _closing(final: Sequence[_Skill], *, always: bool):
    """Close ``final``'s artifacts on the way out (``always``) or only when an error leaves."""

    @contextlib.contextmanager
    def guard():
        try:
            yield
        except BaseException:
            for skill in final:
                skill.artifact.close()
            raise
        if always:
            for skill in final:
                skill.artifact.close()

    return guard()


def _check_general(path: str | os.PathLike[str], lock: Lock) -> None:
    """What :func:`adopt_general` checks, without keeping anything (dry run)."""
    from ..errors import IncompatibleBase

    with Checkpoint.open(path) as ckpt:
        found = fingerprint_of_hashes(tensor_hashes(ckpt))
    if found != lock.general_fingerprint:
        raise IncompatibleBase(
            f"`{path}` is not the general model this lock was made on: its weights fingerprint is "
            f"{found}, the lock records {lock.general_fingerprint}.",
            expected=lock.general_fingerprint,
            found=found,
            hints=["give an untouched copy of G (the weights `tvreg init` was run on)"],
        )


def rebuild(
    into: str | os.PathLike[str], *, locked: bool = False, progress: Progress = NULL_PROGRESS
) -> InstallResult:
    """Recompute a model environment's weights from ``tvreg.lock`` and the local store alone."""
    return sync(into, locked=locked, offline=True, progress=progress)


def outdated_reasons(lock: Lock, final: Sequence[_Skill], model_dir: Path) -> list[str]:
    """Why ``lock`` would change if it were resolved again now; empty when it is up to date."""
    from .._names import Range, parse_requirement

    reasons: list[str] = []
    by_name = {s.artifact.manifest.name: s for s in final}
    for skill in final:
        m = skill.artifact.manifest
        if skill.weight_source != "user":
            weight, source = _default_weight(skill.artifact, lock, model_dir)
            if weight != skill.weight:
                reasons.append(
                    f"the default weight of `{m.name}` is now {source} = {weight:.6g}, not {skill.weight:.6g}"
                )
        if skill.origin.requested and skill.origin.registry is not None and not skill.id.startswith("hf://"):
            req = parse_requirement(skill.origin.requested)
            if req.spec and not req.tag and not Range(req.spec).satisfies(m.version, include_prerelease=True):
                reasons.append(f"`{m.label}` no longer satisfies the requirement `{skill.origin.requested}`")
        for dep, spec in sorted(m.requires.items()):
            have = by_name.get(dep)
            if have is None:
                reasons.append(f"`{m.label}` requires `{dep}`, which is not locked")
            elif spec and not Range(spec).satisfies(have.artifact.manifest.version, include_prerelease=True):
                reasons.append(
                    f"`{m.label}` requires `{dep}@{spec}`, but the lock has {have.artifact.manifest.version}"
                )
    return reasons
