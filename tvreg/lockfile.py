"""``tvreg.lock``: what a model environment is made of, pinned exactly.

JSON with sorted keys and two-space indents, so it diffs well and the same state
always gives the same bytes. Everything needed to recompute the installed weights
from pristine G is here: G's and the base's fingerprints, |G|, and for each skill its
version, artifact digest, weight ω and where ω came from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ModelEnvironmentError
from .fsutil import atomic_write_text

LOCK_NAME = "tvreg.lock"
LOCK_VERSION = 1


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


@dataclass(frozen=True)
class Lock:
    base_fingerprint: str
    general_fingerprint: str
    pristine: str
    general_size: int | None = None
    general_size_unit: str = "examples"
    method: str = "task_arithmetic"
    skills: tuple[LockedSkill, ...] = ()
    output_fingerprint: str | None = None
    tvreg_version: str = ""
    lock_version: int = LOCK_VERSION
    notes: tuple[str, ...] = field(default=())

    def to_text(self) -> str:
        data = asdict(self)
        data["skills"] = [asdict(s) for s in self.skills]
        data["notes"] = list(self.notes)
        return json.dumps(data, sort_keys=True, indent=2) + "\n"

    @classmethod
    def from_text(cls, text: str, *, where: Path) -> Lock:
        try:
            data = json.loads(text)
            if data.get("lock_version") != LOCK_VERSION:
                raise ValueError(f"lock_version {data.get('lock_version')!r} is not {LOCK_VERSION}")
            data["skills"] = tuple(LockedSkill(**s) for s in data.get("skills", []))
            data["notes"] = tuple(data.get("notes", []))
            return cls(**data)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ModelEnvironmentError(
                f"`{where}` is not a valid tvreg lockfile ({exc}).",
                hints=["restore it from version control, or run `tvreg init` again"],
            ) from exc


def read_lock(model_dir: Path) -> Lock | None:
    path = Path(model_dir) / LOCK_NAME
    if not path.is_file():
        return None
    return Lock.from_text(path.read_text(encoding="utf-8"), where=path)


def write_lock(model_dir: Path, lock: Lock) -> None:
    atomic_write_text(Path(model_dir) / LOCK_NAME, lock.to_text())
