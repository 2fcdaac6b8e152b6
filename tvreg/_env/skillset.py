"""The skill set of a command: the locked skills plus the requested ones, keyed by identity.

A registry skill's identity is ``namespace/name``; a skill installed from a file keeps its
manifest name. The set owns the artifacts it opens and closes them on every exit path.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .._format.artifact import Artifact
from .._format.checkpoint import Checkpoint
from .._format.fingerprint import short
from ..errors import IncompatibleBase, ModelEnvironmentError, TensorMismatch, WeightError
from .environment import row_extension
from .lockfile import Lock, LockedSkill, Origin, require_locked_digest
from .store import artifact_path
from .weights import _default_weight


@dataclass
class _Skill:
    artifact: Artifact
    digest: str
    weight: float
    weight_source: str
    origin: Origin

    @property
    def id(self) -> str:
        """``ns/skill`` for a registry skill, the manifest name for one from a file."""
        return self.origin.registry_name or self.artifact.manifest.name

    @property
    def source(self) -> str:
        """Where this skill's bytes came from, for messages: the registry label or the file."""
        return self.origin.label


def _check_compatible(artifact: Artifact, lock: Lock) -> None:
    m = artifact.manifest
    want = lock.base_fingerprint if m.kind == "task_vector" else lock.general_fingerprint
    what = "base model" if m.kind == "task_vector" else "general model"
    if m.base_fingerprint != want:
        raise IncompatibleBase(
            f"skill `{m.label}` was built for base {short(m.base_fingerprint)}, but this model's {what} "
            f"is {short(want)}.",
            expected=want,
            found=m.base_fingerprint,
            hints=[
                "build the skill from the same pretrained model that this model environment was initialised with"
            ],
        )


def _check_tensors(skills: Sequence[_Skill], general: Checkpoint) -> list[str]:
    notes: list[str] = []
    extended: dict[str, int] = {}
    for skill in skills:
        label = skill.artifact.manifest.label
        for name, entry in skill.artifact.manifest.tensors.items():
            if name not in general:
                raise TensorMismatch(
                    f"skill `{label}` changes tensor `{name}`, which the general model does not have.",
                    tensor=name,
                )
            info = general.info(name)
            extra = row_extension(entry.shape, info.shape)
            if extra is None or not info.is_float:
                raise TensorMismatch(
                    f"skill `{label}` has tensor `{name}` with shape {list(entry.shape)}, "
                    f"but the general model's is {list(info.shape)} {info.dtype}.",
                    tensor=name,
                )
            if extra:
                extended[name] = extra
    for name, extra in sorted(extended.items()):
        rows = general.info(name).shape[0]
        notes.append(
            f"`{name}`: skills applied to the first {rows - extra} rows; the general model's "
            f"{extra} extra rows (added tokens) are unchanged."
        )
    return notes


def _open_skills(
    paths: Sequence[str | os.PathLike[str]],
    lock: Lock,
    weights: Mapping[str, float],
    model_dir: Path,
    sources: Sequence[Origin | None],
    *,
    drop: Collection[str] = (),
    refresh_defaults: bool = False,
) -> list[_Skill]:
    """The final skill set: locked skills minus ``drop``, with new ones added or replacing the same identity.

    ``drop`` holds identities. ``refresh_defaults`` recomputes the default ω of locked
    skills (|G| may have changed); a user's ω is always kept.
    """
    new: dict[str, _Skill] = {}
    opened: list[Artifact] = []
    try:
        for path, origin in zip(paths, sources, strict=True):
            art = Artifact(path)
            opened.append(art)
            skill = _Skill(art, "", 0.0, "", origin or Origin(Path(path).name))
            if skill.id in new:
                raise ModelEnvironmentError(
                    f"skill `{skill.id}` is given twice: from `{new[skill.id].source}` and from `{skill.source}`.",
                    hints=["give each skill once"],
                )
            _check_compatible(art, lock)
            new[skill.id] = skill
        final: list[_Skill] = []
        fresh = set(new)
        for locked in lock.skills:
            if locked.id in new:
                final.append(new.pop(locked.id))  # a replacement keeps its place in the sum's order
                continue
            if locked.id in drop:
                continue
            art = Artifact(stored_artifact(locked, model_dir))
            opened.append(art)
            final.append(
                _Skill(
                    art,
                    locked.digest,
                    locked.weight,
                    locked.weight_source,
                    Origin(locked.artifact, locked.registry, locked.requested),
                )
            )
        final.extend(new.values())
        given = {id(weight_target(n, final)): float(w) for n, w in weights.items()}
        for skill in final:
            if id(skill) in given:
                skill.weight, skill.weight_source = given[id(skill)], "user"
            elif skill.id in fresh or (refresh_defaults and skill.weight_source != "user"):
                skill.weight, skill.weight_source = _default_weight(skill.artifact, lock, model_dir)
        return final
    except BaseException:
        for art in opened:
            art.close()
        raise


def weight_target(name: str, skills: Sequence[_Skill]) -> _Skill:
    """The skill ``--weight NAME=ω`` means: by identity, or by a short name only one skill has.

    Raises:
        WeightError: no such skill in the set (a typo), or a short name two skills share.
    """
    exact = [s for s in skills if s.id == name]
    if exact:
        return exact[0]
    short_matches = [s for s in skills if s.artifact.manifest.name == name] if "/" not in name else []
    if len(short_matches) == 1:
        return short_matches[0]
    if short_matches:
        listed = " and ".join(f"`{s.id}`" for s in short_matches)
        raise WeightError(
            f"`--weight {name}=...` is ambiguous: {listed} are both in the set.",
            hints=[f"name the skill in full: `--weight {short_matches[0].id}=...`"],
        )
    listed = ", ".join(f"`{s.id}`" for s in skills) or "none"
    raise WeightError(
        f"`--weight {name}=...` names a skill that is not being installed (the set: {listed}).",
        hints=["check the spelling; a weight applies to a skill in the model or on the command line"],
    )


def stored_artifact(locked: LockedSkill, model_dir: Path) -> Path:
    """The local store's copy of a locked artifact, checked against the lock's digest (no fallback)."""
    stored = artifact_path(locked.digest)
    if not stored.is_file():
        hint = (
            f"fetch it by digest: `tvreg sync --into {model_dir}`"
            if locked.from_registry
            else f"reinstall it: `tvreg install {locked.artifact} --into {model_dir}`"
        )
        raise ModelEnvironmentError(
            f"the artifact of installed skill `{locked.label}` ({locked.digest}) is missing from the local "
            f"store (`{stored}`).",
            hints=[hint],
        )
    return require_locked_digest(
        locked,
        stored,
        what="the stored artifact",
        hint=f"delete `{stored}` and run `tvreg sync --into {model_dir}` to fetch it again by digest",
    )


def require_installed(lock: Lock, names: Sequence[str], model_dir: Path) -> None:
    """Raise naming the first of ``names`` that is not installed (and what is)."""
    for name in names:
        if lock.skill(name) is None:
            listed = ", ".join(sorted(s.registry_name for s in lock.skills)) or "none"
            raise ModelEnvironmentError(
                f"skill `{name}` is not installed in `{model_dir}` (installed: {listed})."
            )


def _idents(skill: _Skill) -> set[str]:
    return {n for n in (skill.artifact.manifest.name, skill.origin.registry_name) if n is not None}


def _shown(skill: _Skill) -> str:
    """``ns/skill@1.2.0`` for a registry skill, ``skill@1.2.0`` for a local one."""
    return skill.origin.label if skill.origin.registry is not None else skill.artifact.manifest.label


def _ident(label: str) -> str:
    return label.rpartition("@")[0]


def _origins(sources: Sequence[str | Origin | None] | None, count: int) -> list[Origin | None]:
    origins = list(sources) if sources is not None else [None] * count
    if len(origins) != count:
        raise ValueError("`sources` must have one entry per skill")
    return [Origin(o) if isinstance(o, str) else o for o in origins]
