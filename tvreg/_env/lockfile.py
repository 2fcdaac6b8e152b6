"""``tvreg.lock``: what a model environment is made of, pinned exactly.

JSON with sorted keys and two-space indents, so it diffs well and the same state
always gives the same bytes. Everything needed to recompute the installed weights
from pristine G is here: G's and the base's fingerprints, |G|, the merge method and
its parameters, the output dtype, and for each skill its version, artifact digest and
size, the registry it came from, the requirement the user asked for, its weight ω and
where ω came from. ``output_fingerprint`` is the fingerprint of the weights the lock
produces; it is None after ``tvreg lock`` until ``tvreg sync`` materialises them.

A lock is portable: G is named by its fingerprint (plus its Hub id and revision when
known), never by a path on the writer's machine; each machine keeps its own pristine
copy of G in its store under that fingerprint (:mod:`tvreg._env.store`). A skill
installed from a file records only the file's name.

Skills are keyed by identity: ``namespace/name`` for a registry skill, the manifest name
for one installed from a file, so two teams' ``…/science`` live side by side.

Version history: 1 had no ``registry``/``requested``/``size`` per skill and no
``method_params``/``output_dtype``; 2 recorded ``pristine``, an absolute path into the
writer's data directory, and a local skill's absolute path. Both are read (the path is
dropped; G is found by fingerprint) and written back as version 3.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._format.fsutil import atomic_write_text
from ..errors import LockMismatch, ModelEnvironmentError

LOCK_NAME = "tvreg.lock"
LOCK_VERSION = 3
_READABLE_VERSIONS = (1, 2, 3)


@dataclass(frozen=True)
class Origin:
    """Where an installed artifact came from: a display label and, for downloads, the registry.

    ``label`` is ``ns/skill@1.2.0`` for a registry skill or the file's path for a local one;
    ``requested`` is the requirement the user typed (``ns/skill@^1.2``), None for a skill
    the resolver added as a dependency.
    """

    label: str
    registry: str | None = None
    requested: str | None = None

    @property
    def registry_name(self) -> str | None:
        """``ns/skill`` for a registry download (the manifest's own name has no namespace)."""
        return self.label.rpartition("@")[0] if self.registry is not None else None


@dataclass(frozen=True)
class LockedSkill:
    name: str
    version: str
    digest: str
    artifact: str
    weight: float
    weight_source: str
    dataset_size: int | None = None
    dataset_unit: str = "examples"
    registry: str | None = None  # "" for "the configured registry" (version-1 locks)
    requested: str | None = None
    size: int | None = None
    signed_by: str | None = None  # the trusted key that verified it, under a policy (tvreg.toml)

    @property
    def label(self) -> str:
        """``ns/skill@1.2.0`` for a registry skill, ``skill@1.2.0`` for one installed from a file."""
        return f"{self.registry_name}@{self.version}"

    @property
    def from_registry(self) -> bool:
        return self.registry is not None

    @property
    def registry_name(self) -> str:
        """``ns/skill`` for a registry skill, else the manifest name; commands accept either."""
        return self.artifact.rpartition("@")[0] if self.from_registry else self.name

    @property
    def id(self) -> str:
        """The skill's identity in this model: ``ns/skill`` from a registry, the manifest name from a file."""
        return self.registry_name


@dataclass(frozen=True)
class Lock:
    base_fingerprint: str
    general_fingerprint: str
    general_hub_id: str | None = None
    general_revision: str | None = None
    general_size: int | None = None
    general_size_unit: str = "examples"
    method: str = "task_arithmetic"
    method_params: dict = field(default_factory=dict)
    output_dtype: str | None = None
    skills: tuple[LockedSkill, ...] = ()
    output_fingerprint: str | None = None
    tvreg_version: str = ""
    lock_version: int = LOCK_VERSION
    notes: tuple[str, ...] = field(default=())

    def skill(self, name: str) -> LockedSkill | None:
        """The installed skill ``name``: its identity, or a short name only one installed skill has.

        Raises:
            ModelEnvironmentError: a short name two installed skills share (both are named).
        """
        exact = next((s for s in self.skills if s.id == name), None)
        if exact is not None or "/" in name:
            return exact
        short_matches = [s for s in self.skills if s.name == name]
        if len(short_matches) > 1:
            listed = " and ".join(f"`{s.id}`" for s in short_matches)
            raise ModelEnvironmentError(
                f"`{name}` is ambiguous: both {listed} are installed.",
                hints=[f"name one in full, e.g. `{short_matches[0].id}`"],
            )
        return short_matches[0] if short_matches else None

    def skill_by_id(self, ident: str) -> LockedSkill | None:
        """The installed skill with exactly this identity (no short-name matching)."""
        return next((s for s in self.skills if s.id == ident), None)

    def to_text(self) -> str:
        data = asdict(self)
        # ``signed_by`` is written only when a policy verified a signature, so locks made
        # without a policy keep their bytes.
        data["skills"] = [
            {k: v for k, v in asdict(s).items() if k != "signed_by" or v is not None} for s in self.skills
        ]
        data["notes"] = list(self.notes)
        data["lock_version"] = LOCK_VERSION
        return json.dumps(data, sort_keys=True, indent=2) + "\n"

    @classmethod
    def from_text(cls, text: str, *, where: Path) -> Lock:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            version = data.get("lock_version")
            if isinstance(version, int) and version > LOCK_VERSION:
                raise ModelEnvironmentError(
                    f"`{where}` is lockfile version {version}, newer than this tvreg understands "
                    f"(up to {LOCK_VERSION}).",
                    hints=["upgrade tvreg: `pip install -U tvreg`"],
                )
            if version not in _READABLE_VERSIONS:
                raise ValueError(f"lock_version {version!r} is not one of {list(_READABLE_VERSIONS)}")
            data["lock_version"] = LOCK_VERSION
            data.pop("pristine", None)  # v2: a path on the writer's machine; G is found by fingerprint
            skills = [dict(s) for s in data.get("skills", [])]
            for s in skills:
                if s.get("registry") is None and version != 1 and "artifact" in s:
                    s["artifact"] = _file_name(s["artifact"])
            if version == 1:
                for s in skills:
                    # Version 1 did not record the registry: a `ns/skill@1.0.0` label came from the configured one.
                    if "/" in s.get("artifact", "") and "@" in s["artifact"] and s["artifact"][0] not in "/.":
                        s.setdefault("registry", "")
                    if s.get("registry") is None:
                        s["artifact"] = _file_name(s.get("artifact", ""))
            data["skills"] = tuple(LockedSkill(**s) for s in skills)
            data["notes"] = tuple(data.get("notes", []))
            if not isinstance(data.get("method_params", {}), dict):
                raise ValueError("method_params must be an object")
            return cls(**data)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ModelEnvironmentError(
                f"`{where}` is not a valid tvreg lockfile ({exc}).",
                hints=["restore it from version control, or run `tvreg init` again"],
            ) from exc


def _file_name(artifact: str) -> str:
    """A local skill's file name without the directories of the machine that installed it."""
    return artifact.replace("\\", "/").rsplit("/", 1)[-1]


def read_lock(model_dir: Path) -> Lock | None:
    path = Path(model_dir) / LOCK_NAME
    if not path.is_file():
        return None
    return Lock.from_text(path.read_text(encoding="utf-8"), where=path)


def write_lock(model_dir: Path, lock: Lock) -> None:
    atomic_write_text(Path(model_dir) / LOCK_NAME, lock.to_text())


def require_locked_digest(skill: LockedSkill, path: Path, *, what: str, hint: str) -> Path:
    """Return ``path`` if its bytes hash to the digest the lock pins for ``skill``; refuse otherwise.

    There is no fallback on purpose: a lock names exact bytes, and anything else is tampering
    or damage (docs/reliability.md row 23). ``what`` says which copy it is, e.g. "the stored artifact".
    """
    from .._format.artifact import file_digest

    found = file_digest(Path(path))
    if found != skill.digest:
        raise LockMismatch(
            f"tvreg.lock pins `{skill.label}` to {skill.digest}, but {what} `{path}` hashes to "
            f"{found}; refusing to use it.",
            expected=skill.digest,
            found=found,
            hints=[hint],
        )
    return Path(path)
