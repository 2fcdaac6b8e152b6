"""Evaluation attestations: measure a skill on *your* G and say so in a signed in-toto statement.

Why: a skill's publisher can only say what it did on their model. A team installing
it onto its own G wants "refusal rate 0.91 with ω = 0.3 on G = sha256:…", measured by
someone it trusts, bound to the exact artifact bytes. :func:`evaluate_skill` installs
the skill at ω into a scratch copy of the model environment (:func:`tvreg._env.sweep.sweep`
with one point: hard links, the model itself is never changed), runs the user's hook
(:mod:`tvreg._env.evaluate`) and returns an in-toto Statement v1::

    subject   = [{"name": "ns/skill@1.2.0", "digest": {"sha256": <artifact digest>}}]
    predicateType = "https://tvreg.dev/attestation/eval/v1"
    predicate = {skill, general: {fingerprint, hub_id}, base_fingerprint, weight,
                 weight_source, method, method_params, also_installed, metrics,
                 eval: {hook, source_sha256}, tvreg_version, created}

``also_installed`` lists the other skills the environment held at their locked ω, as
they were part of the measured model. :func:`tvreg._format.signing.sign_statement` signs it; an
attestation counts for a model only when it verifies, its subject is the artifact's
digest and its ``general.fingerprint`` is that model's G (:func:`attestation_applies`).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._env.evaluate import EvalHook
from .._format.artifact import Artifact, file_digest
from .._format.signing import EVAL_PREDICATE, STATEMENT_TYPE, artifact_digests
from .._util.progress import NULL_PROGRESS, Progress

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hook_source_digest(hook: EvalHook) -> str | None:
    """``sha256:`` of the source file defining the hook's function (None when it has none)."""
    try:
        path = inspect.getsourcefile(hook.function)
        if path:
            return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return "sha256:" + hashlib.sha256(inspect.getsource(hook.function).encode("utf-8")).hexdigest()
    except (OSError, TypeError):
        return None


def evaluate_skill(
    skill: str | os.PathLike[str],
    *,
    into: str | os.PathLike[str],
    evaluate: EvalHook,
    weight: float | None = None,
    source: Any = None,
    progress: Progress = NULL_PROGRESS,
) -> dict[str, Any]:
    """Install ``skill`` at ``weight`` (default |D|/|G|) into a scratch copy of ``into``,
    run ``evaluate`` on it, and return the unsigned evaluation statement.

    Args:
        skill: a ``.tvskill`` path (fetch a registry name first, as ``tvreg sweep`` does).
        into: the model environment; it is never changed.
        evaluate: the loaded hook (:func:`tvreg._env.evaluate.load_hook`).
        weight: ω; None uses the default |D|/|G|.
        source: the :class:`~tvreg._env.lockfile.Origin` of a fetched skill (names ``ns/skill@version``).

    Raises:
        WeightError: no ω was given and the default cannot be computed.
        EvaluationError: the hook fails.
        Anything :func:`tvreg._env.operations.install` raises.
    """
    from .._env.environment import require_lock
    from .._env.sweep import sweep

    model_dir = Path(into).resolve()
    path = Path(skill)
    with Artifact(path) as art:
        manifest = art.manifest
    digest = file_digest(path)
    label = getattr(source, "label", None) or manifest.label
    name, _, version = label.partition("@")
    result = sweep(
        path,
        into=model_dir,
        weights=[] if weight is None else [weight],
        evaluate=evaluate,
        include_default=weight is None,
        source=source,
        progress=progress,
    )
    if not result.points:
        from ..errors import WeightError

        raise WeightError(
            f"the default ω = |D|/|G| of `{label}` is unknown.", hints=["give the weight: `--weight 0.3`"]
        )
    point = result.points[0]
    lock = require_lock(model_dir)  # the sweep above needed it too
    hub = lock.general_hub_id or ""
    from .._version import __version__

    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": label, "digest": {"sha256": digest.split(":", 1)[1]}}],
        "predicateType": EVAL_PREDICATE,
        "predicate": {
            "skill": {"name": name, "version": version or manifest.version, "digest": digest},
            "general": {
                "fingerprint": lock.general_fingerprint,
                "hub_id": hub if _HUB_ID.match(hub) else None,
            },
            "base_fingerprint": lock.base_fingerprint,
            "weight": point.weight,
            "weight_source": "default" if point.is_default and weight is None else "given",
            "method": lock.method,
            "method_params": dict(lock.method_params),
            "also_installed": [
                {"name": s.name, "version": s.version, "digest": s.digest, "weight": s.weight}
                for s in lock.skills
                if s.name != manifest.name
            ],
            "metrics": dict(point.scores),
            "eval": {"hook": evaluate.spec, "source_sha256": hook_source_digest(evaluate)},
            "tvreg_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    }


def attestation_applies(statement: dict[str, Any], *, digest: str, general_fingerprint: str) -> str | None:
    """None when an evaluation statement is about artifact ``digest`` measured on this G,
    else the reason it does not count (another artifact, another G, not an evaluation)."""
    if statement.get("predicateType") != EVAL_PREDICATE:
        return f"it is a `{statement.get('predicateType')}` statement, not an evaluation"
    if digest not in artifact_digests(statement):
        return "it is about another artifact"
    general = (statement.get("predicate") or {}).get("general") or {}
    if not isinstance(general, dict) or general.get("fingerprint") != general_fingerprint:
        return "it was measured on another G"
    return None
