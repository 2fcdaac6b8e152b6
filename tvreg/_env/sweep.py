"""Sweep a skill's merge weight ω: install each setting into a scratch model, evaluate, optionally lock the best.

Why: the default ω = |D|/|G| is a prior, not a measurement. Merge to Learn (§3.2)
picks ω on a validation set when one exists and falls back to |D|/|G| otherwise;
this is that loop. Each point is a real install (the same code path and bytes as
``tvreg install``) into a scratch model environment beside the model: its files are
hard links of the model's, it shares the pristine copy of G in the store, and the
install writes only the new weights, so a sweep costs one model's disk at a time.
Scratch directories are removed as soon as each point is evaluated, and on any error.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._format.artifact import Artifact
from .._format.fsutil import link_or_copy
from .._util.progress import NULL_PROGRESS, Progress
from ..errors import EvaluationError, ModelEnvironmentError, WeightError
from .environment import lock_model, require_lock
from .evaluate import EvalHook, run_hook
from .operations import InstallResult, _default_weight, install


@dataclass(frozen=True)
class SweepPoint:
    """One ω setting and the scores the hook gave the model installed with it."""

    weight: float
    scores: dict[str, float]
    is_default: bool = False
    install_seconds: float = 0.0
    eval_seconds: float = 0.0


@dataclass(frozen=True)
class SweepResult:
    """Every point in ω order, the metric used to choose, the best point, and the install that locked it."""

    skill: str
    model_dir: Path
    points: tuple[SweepPoint, ...]
    default_weight: float | None
    metric: str | None = None
    best: SweepPoint | None = None
    locked: InstallResult | None = None
    notes: tuple[str, ...] = field(default=())


def parse_weight_grid(text: str) -> list[float]:
    """``START:STOP:STEP`` (both ends included) or a comma list ``0.1,0.3,1``, as sorted distinct floats.

    Raises:
        WeightError: malformed, non-finite, or a range that is empty or over 1000 points.
    """
    text = text.strip()
    try:
        if ":" in text:
            start, stop, step = (float(p) for p in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = math.floor((stop - start) / step + 1e-9) + 1
            if count > 1000:
                raise WeightError(f"`{text}` would sweep {count} weights; use a larger step.")
            values = [round(start + i * step, 10) for i in range(count)]
        else:
            values = [float(p) for p in text.split(",") if p.strip()]
        if not values or not all(math.isfinite(v) for v in values):
            raise ValueError
    except ValueError:
        raise WeightError(
            f"`{text}` is not a weight grid; expected START:STOP:STEP (e.g. 0.2:1.0:0.2) or a list (0.1,0.5,1)."
        ) from None
    return sorted(set(values))


def _snapshot(model_dir: Path, target: Path) -> None:
    """Hard-link every file of the model environment into ``target`` (no weight bytes are copied).

    The policy (``tvreg.toml``) stays behind: a scratch point only measures and never becomes
    the model, and ``tvreg eval`` must be able to measure a skill the policy does not admit yet
    (the attestation it writes is what would admit it). Locking the best ω goes through it.
    """
    shutil.copytree(
        model_dir, target, symlinks=True, copy_function=link_or_copy,
        ignore=lambda d, names: ["tvreg.toml"] if Path(d) == Path(model_dir) else [],
    )  # fmt: skip


def pick_best(points: Sequence[SweepPoint], metric: str, *, lower_is_better: bool = False) -> SweepPoint:
    """The point with the best ``metric``; ties go to the smaller ω (less interference with G)."""
    missing = [p.weight for p in points if metric not in p.scores]
    if missing:
        known = sorted({k for p in points for k in p.scores})
        raise EvaluationError(
            f"the evaluation hook returned no metric `{metric}` (at ω = {missing[0]:g}).",
            hints=[f"metrics it returned: {', '.join(known)}"],
        )
    sign = 1.0 if lower_is_better else -1.0
    return min(points, key=lambda p: (sign * p.scores[metric], p.weight))


def sweep(
    skill: str | os.PathLike[str],
    *,
    into: str | os.PathLike[str],
    weights: Sequence[float],
    evaluate: EvalHook,
    metric: str | None = None,
    lower_is_better: bool = False,
    lock_best: bool = False,
    include_default: bool = True,
    source: str | None = None,
    on_stage: Callable[[str, float, int, int], None] | None = None,
    on_point: Callable[[SweepPoint], None] | None = None,
    progress: Progress = NULL_PROGRESS,
) -> SweepResult:
    """Install ``skill`` at each ω into a scratch copy of the model ``into``, evaluate each, maybe lock the best.

    The skills already installed in ``into`` stay at their locked weights in every
    point; only this skill's ω varies (it is added, or replaces the installed one).

    Args:
        skill: a ``.tvskill`` path (fetch registry names first, see :func:`tvreg._registry.fetch.fetch_for_install`).
        into: the model environment.
        weights: the ω values to try.
        evaluate: the loaded hook (:func:`tvreg._env.evaluate.load_hook`).
        metric: the score to choose by; needed with ``lock_best`` unless the hook returns one metric.
        lock_best: install the best ω into ``into`` (and ``tvreg.lock``) at the end.
        include_default: add the default ω = |D|/|G| as a point when it can be computed.
        source: what ``tvreg.lock`` records as the skill's origin (e.g. ``ns/skill@1.2.0``).
        on_stage: called with ``("install" | "evaluate", ω, index, count)`` as each step starts.
        on_point: called with each finished point.

    Raises:
        WeightError: no weights to try.
        EvaluationError: the hook fails, or ``metric`` is missing from its scores.
        Anything :func:`tvreg._env.operations.install` raises; ``into`` is never changed unless ``lock_best``.
    """
    model_dir = Path(into).resolve()
    if not model_dir.is_dir():
        raise ModelEnvironmentError(f"`{model_dir}` is not a directory.")
    grid = sorted({float(w) for w in weights})
    with Artifact(skill) as art:
        name = art.manifest.name
        label = art.manifest.label
        default: float | None = None
        lock = require_lock(model_dir)
        if include_default:
            try:
                default, _ = _default_weight(art, lock, model_dir)
            except WeightError:
                default = None
    if default is not None and not any(math.isclose(default, w, abs_tol=1e-9) for w in grid):
        grid = sorted([*grid, default])
    if not grid:
        raise WeightError("the sweep has no weights to try.")
    notes: list[str] = []
    if include_default and default is None:
        notes.append(f"the default ω = |D|/|G| of `{label}` is unknown (no |D| or |G|), so it is not swept.")

    scratch = model_dir.parent / f".{model_dir.name}.tvreg-sweep-{os.getpid()}-{time.time_ns()}"
    points: list[SweepPoint] = []
    try:
        scratch.mkdir()
        snapshot = scratch / "snapshot"
        with lock_model(model_dir):
            _snapshot(model_dir, snapshot)
        for w in grid:
            point_dir = scratch / f"w{len(points)}"
            _snapshot(snapshot, point_dir)
            if on_stage:
                on_stage("install", w, len(points), len(grid))
            t0 = time.monotonic()
            install([skill], into=point_dir, weights={name: w}, sources=[source], progress=progress)
            t1 = time.monotonic()
            if on_stage:
                on_stage("evaluate", w, len(points), len(grid))
            scores = run_hook(evaluate, point_dir)
            point = SweepPoint(
                w,
                scores,
                is_default=default is not None and math.isclose(w, default, abs_tol=1e-9),
                install_seconds=t1 - t0,
                eval_seconds=time.monotonic() - t1,
            )
            points.append(point)
            if on_point:
                on_point(point)
            shutil.rmtree(point_dir, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    chosen: str | None = metric
    if chosen is None and lock_best:
        names = sorted({k for p in points for k in p.scores})
        if len(names) != 1:
            raise EvaluationError(
                f"the evaluation hook returned {len(names)} metrics; say which one picks the best ω.",
                hints=[f"pass `--metric NAME`, one of: {', '.join(names)}"],
            )
        chosen = names[0]
    best = pick_best(points, chosen, lower_is_better=lower_is_better) if chosen else None
    locked = None
    if lock_best and best is not None:
        locked = install(
            [skill], into=model_dir, weights={name: best.weight}, sources=[source], progress=progress
        )
    return SweepResult(label, model_dir, tuple(points), default, chosen, best, locked, tuple(notes))
