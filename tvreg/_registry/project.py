"""A skill project: a directory with ``tvskill.toml`` saying what to publish and how to build it.

Why a file rather than flags: a published version must be reproducible and reviewable,
so its name, version, base, |D| and license live in version control beside the data
that made it. Two forms::

    name = "nlp/science"            # "namespace/skill", or "skill" for your own namespace
    version = "1.0.0"
    base = "../models/pre"          # θ_pre: a directory, a cached Hub id, or its fingerprint
    dataset_size = 61000
    dataset_unit = "examples"       # or "tokens"
    description = "Answers science questions."
    license = "Apache-2.0"
    artifact = "science-1.0.0.tvskill"      # publish this file as is ...

    [build]                          # ... or build it (into dist/) from one of these
    finetuned = "../models/science"  #     θ_D, a model directory or cached Hub id
    # adapter = "lora/"              #     a PEFT LoRA adapter trained on `base`
    codec = "exact"                  #     or bf16, int8, int4, sign, sparse, lowrank, auto
    codec_params = {}                #     e.g. { density = 0.1 } for sparse
    # calibration = "heldout.txt"    #     auto only: held-out texts (one per line) or `module:fn`
    # min_retention = 0.99           #     share of the fine-tune's gain the coding keeps
    # margin = true                  #     ... as a bootstrap lower bound over the texts, not only the mean
    # max_evaluations = 48           #     the most times calibration scores the model

    [sign]                           # optional: sign the artifact when publishing
    key = "release"                  #     a key name from `tvreg key generate`, or a path

Paths are relative to the project directory. Unknown keys are refused so a typo cannot
silently publish a default. :func:`prepare_artifact` builds when the artifact in
``dist/`` is missing or older than its inputs, and checks that the artifact agrees
with the file (name, version, base, and every field the file sets).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .._build import DEFAULT_MAX_EVALUATIONS
from .._format.artifact import Artifact, file_digest, known_verified, remember_verified
from .._format.fingerprint import short
from .._format.manifest import DATASET_UNITS, Manifest
from .._names import validate_name, validate_version
from .._util.progress import NULL_PROGRESS, Progress
from ..errors import ArtifactError, InvalidName, ProjectError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROJECT_FILE = "tvskill.toml"
_TOP_KEYS = {
    "name",
    "version",
    "base",
    "dataset_size",
    "dataset_unit",
    "description",
    "license",
    "artifact",
    "build",
    "requires",
    "conflicts",
    "sign",
}
_BUILD_KEYS = {"finetuned", "adapter", "codec", "codec_params", "calibration", "min_retention", "margin",
               "max_evaluations"}
_FP_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class SkillProject:
    """A parsed ``tvskill.toml``; paths are absolute."""

    root: Path
    namespace: str | None
    skill: str
    version: str
    base: str | None = None
    dataset_size: int | None = None
    dataset_unit: str | None = None
    description: str | None = None
    license: str | None = None
    artifact: Path | None = None
    finetuned: str | None = None
    adapter: str | None = None
    codec: str = "exact"
    codec_params: dict[str, object] | None = None
    calibration: str | None = None
    """``[build] calibration``: held-out texts (absolute path) or a hook ``module:fn`` for ``auto``."""
    min_retention: float = 0.99
    margin: bool = True
    """``[build] margin``: judge a calibration text file by the bootstrap lower bound of retention, not the mean."""
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS
    """``[build] max_evaluations``: the most times calibration scores the model."""
    requires: dict[str, str] | None = None
    conflicts: dict[str, str] | None = None
    sign_key: str | None = None
    """``[sign] key``: the private key (name or path) ``tvreg publish`` signs with."""

    @property
    def name(self) -> str:
        """``namespace/skill`` as written, or ``skill`` when the namespace is left to the publisher."""
        return f"{self.namespace}/{self.skill}" if self.namespace else self.skill

    @property
    def dist_path(self) -> Path:
        """Where a built artifact goes: ``dist/<skill>-<version>.tvskill``."""
        return self.root / "dist" / f"{self.skill}-{self.version}.tvskill"


def _bad(path: Path, what: str) -> ProjectError:
    return ProjectError(
        f"`{path}` is invalid: {what}.",
        hints=[f"see `tvreg publish --help` for the format of {PROJECT_FILE}"],
    )


def _resolve_model(root: Path, value: str) -> str:
    """A model given relative to the project if it exists there, else as written (a Hub id)."""
    candidate = root / os.path.expanduser(value)
    return str(candidate.resolve()) if candidate.exists() else value


def load_project(path: str | os.PathLike[str]) -> SkillProject:
    """Read and validate ``tvskill.toml`` in ``path`` (a project directory or the file itself).

    Raises:
        ProjectError: the file is missing, not TOML, has unknown keys or wrong types,
            or gives both (or neither) of ``artifact`` and ``[build]``.
        InvalidName: the name or version is malformed.

    Example:
        >>> load_project("/nonexistent")
        Traceback (most recent call last):
        tvreg.errors.ProjectError: `/nonexistent/tvskill.toml` does not exist.
    """
    p = Path(path)
    file = p if p.name == PROJECT_FILE or p.is_file() else p / PROJECT_FILE
    root = file.parent.resolve()
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProjectError(
            f"`{file}` does not exist.",
            hints=[f"a skill project is a directory with a {PROJECT_FILE}; see `tvreg publish --help`"],
        ) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise _bad(file, str(exc).rstrip(".")) from exc
    for key in sorted(set(data) - _TOP_KEYS):
        raise _bad(file, f"unknown key `{key}`")
    build = data.get("build", {})
    if not isinstance(build, dict):
        raise _bad(file, "`build` must be a table")
    for key in sorted(set(build) - _BUILD_KEYS):
        raise _bad(file, f"unknown key `build.{key}`")
    for key in ("name", "version"):
        if not isinstance(data.get(key), str):
            raise _bad(file, f"`{key}` is missing or not a string")
    for key in ("base", "dataset_unit", "description", "license", "artifact"):
        if key in data and not isinstance(data[key], str):
            raise _bad(file, f"`{key}` must be a string")
    for key in ("finetuned", "adapter", "codec", "calibration"):
        if key in build and not isinstance(build[key], str):
            raise _bad(file, f"`build.{key}` must be a string")
    min_retention = build.get("min_retention", 0.99)
    if isinstance(min_retention, bool) or not isinstance(min_retention, (int, float)) or not 0 < min_retention <= 1:
        raise _bad(file, "`build.min_retention` must be a number in (0, 1]")
    margin = build.get("margin", True)
    if not isinstance(margin, bool):
        raise _bad(file, "`build.margin` must be true or false")
    max_evaluations = build.get("max_evaluations", DEFAULT_MAX_EVALUATIONS)
    if type(max_evaluations) is not int or max_evaluations < 2:
        raise _bad(file, "`build.max_evaluations` must be an integer of at least 2")
    if "calibration" in build and build.get("codec", "exact") != "auto":
        raise _bad(file, '`build.calibration` chooses the coding only with `codec = "auto"`')
    codec_params = build.get("codec_params")
    if codec_params is not None and (
        not isinstance(codec_params, dict)
        or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in codec_params.values())
    ):
        raise _bad(file, "`build.codec_params` must map parameter names to numbers or strings")
    size = data.get("dataset_size")
    if size is not None and (type(size) is not int or size <= 0):
        raise _bad(file, "`dataset_size` must be a positive integer")
    unit = data.get("dataset_unit")
    if unit is not None and unit not in DATASET_UNITS:
        raise _bad(file, f"`dataset_unit` must be one of {', '.join(DATASET_UNITS)}")
    namespace, slash, skill = data["name"].rpartition("/")
    try:
        if slash:
            validate_name(namespace, what="namespace")
        validate_name(skill)
    except InvalidName as exc:
        raise InvalidName(f"`{file}`: {exc.message}") from exc
    validate_version(data["version"])
    has_build = bool(build.get("finetuned") or build.get("adapter"))
    if ("artifact" in data) == has_build:
        raise _bad(file, 'give exactly one of `artifact = "file.tvskill"` and a `[build]` table')
    if has_build and build.get("finetuned") and build.get("adapter"):
        raise _bad(file, "`[build]` takes one of `finetuned` and `adapter`, not both")
    if has_build and not data.get("base"):
        raise _bad(file, "building needs `base`, the pretrained model the skill was tuned from")
    deps: dict[str, dict[str, str] | None] = {}
    for key in ("requires", "conflicts"):
        table = data.get(key)
        if table is not None and (
            not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values())
        ):
            raise _bad(file, f'`[{key}]` must map skill names to version ranges, e.g. `"nlp/safety" = ">=2"`')
        if table is not None:
            from .._names import validate_dependencies

            validate_dependencies(table)
        deps[key] = dict(table) if table is not None else None
    sign = data.get("sign", {})
    if not isinstance(sign, dict) or set(sign) - {"key"} or not isinstance(sign.get("key", ""), str):
        raise _bad(file, '`[sign]` takes one string, `key = "NAME"` (a key from `tvreg key generate`, or a path)')
    base = data.get("base")
    if base is not None and not _FP_RE.match(base):
        base = _resolve_model(root, base)
    return SkillProject(
        root=root,
        namespace=namespace or None,
        skill=skill,
        version=data["version"],
        base=base,
        dataset_size=size,
        dataset_unit=unit,
        description=data.get("description"),
        license=data.get("license"),
        artifact=(root / data["artifact"]).resolve() if "artifact" in data else None,
        finetuned=_resolve_model(root, build["finetuned"]) if build.get("finetuned") else None,
        adapter=_resolve_model(root, build["adapter"]) if build.get("adapter") else None,
        codec=build.get("codec", "exact"),
        codec_params=dict(codec_params) if codec_params else None,
        calibration=_resolve_data(root, build["calibration"]) if build.get("calibration") else None,
        min_retention=float(min_retention),
        margin=margin,
        max_evaluations=max_evaluations,
        requires=deps["requires"],
        conflicts=deps["conflicts"],
        sign_key=_resolve_key(root, sign["key"]) if sign.get("key") else None,
    )


def _resolve_data(root: Path, value: str) -> str:
    """Calibration data relative to the project if that file exists, else as written (a hook ``module:fn``)."""
    candidate = root / os.path.expanduser(value)
    return str(candidate.resolve()) if candidate.is_file() else value


def _resolve_key(root: Path, value: str) -> str:
    """A key path relative to the project if it exists there, else as written (a key name)."""
    candidate = root / os.path.expanduser(value)
    return str(candidate.resolve()) if candidate.is_file() else value


def _newest_mtime(paths: list[Path]) -> float:
    newest = 0.0
    for p in paths:
        if p.is_file():
            newest = max(newest, p.stat().st_mtime)
        elif p.is_dir():
            for f in p.rglob("*"):
                if f.is_file():
                    newest = max(newest, f.stat().st_mtime)
    return newest


def _needs_build(project: SkillProject) -> bool:
    out = project.dist_path
    if not out.is_file():
        return True
    inputs = [project.root / PROJECT_FILE]
    for model in (project.base, project.finetuned, project.adapter, project.calibration):
        if model and os.path.isabs(model):
            inputs.append(Path(model))
    return _newest_mtime(inputs) > out.stat().st_mtime


def _check_manifest(project: SkillProject, m: Manifest, where: Path) -> None:
    def differs(field: str, said, found) -> ProjectError:
        return ProjectError(
            f"{PROJECT_FILE} of `{project.root}` says {field} {said!r} but the artifact `{where}` has {found!r}.",
            hints=["make them agree, or rebuild the artifact"],
        )

    if m.name != project.skill:
        raise differs("name", project.skill, m.name)
    if m.version != project.version:
        raise differs("version", project.version, m.version)
    for field in ("dataset_size", "dataset_unit", "description", "license", "requires", "conflicts"):
        said = getattr(project, field)
        if said is not None and said != getattr(m, field):
            raise differs(field, said, getattr(m, field))


def verify_artifact(
    path: Path,
    *,
    progress: Progress = NULL_PROGRESS,
    on_tensor: Callable[[str, torch.Tensor], None] | None = None,
) -> Manifest:
    """Decode every tensor of an artifact: digests, codec bounds, and no NaN/Inf (docs/reliability.md row 15).

    ``on_tensor(name, τ)`` sees each decoded tensor, so a caller can sketch the artifact
    in the same pass (publish does).

    Raises:
        ArtifactError: the artifact is corrupt or holds non-finite values.
    """
    with Artifact(path) as art:
        m = art.manifest
        progress.task(f"Checking {m.label}", sum(t.stored_bytes for t in m.tensors.values()))
        try:
            for name, entry in m.tensors.items():
                if on_tensor is None:  # nothing needs τ: check it without expanding it
                    art.verify(name)
                    progress.advance(entry.stored_bytes)
                    continue
                tau = art.decode(name)
                if not bool(torch.isfinite(tau).all()):
                    raise ArtifactError(
                        f"tensor `{name}` of `{path}` has NaN or infinite values; refusing to publish it.",
                        hints=["check the fine-tuned checkpoint for diverged training"],
                    )
                if on_tensor is not None:
                    on_tensor(name, tau)
                progress.advance(entry.stored_bytes)
        finally:
            progress.done()
    return m


def prepare_artifact(
    project: SkillProject,
    *,
    progress: Progress = NULL_PROGRESS,
    on_tensor: Callable[[str, torch.Tensor], None] | None = None,
    trust: Callable[[str], bool] | None = None,
) -> tuple[Path, Manifest, bool]:
    """The artifact to publish, built into ``dist/`` first when needed, fully verified.

    Decoding every tensor is most of a publish's CPU, and for an artifact tvreg built (or
    verified) and nobody has written to since, it cannot find anything new. With ``trust``,
    such an artifact (:func:`tvreg._format.artifact.known_verified`: same stat identity and digest)
    is not decoded again when ``trust(digest)`` says the caller has what the pass would
    have given it (publish: the cached sketch); its header is still parsed and checked
    against the project, and the registry still verifies every byte it receives.

    Returns:
        ``(path, manifest, built)``: ``built`` says whether it was (re)built just now.

    Raises:
        ProjectError: the artifact is missing or disagrees with ``tvskill.toml``.
        ArtifactError: the artifact is corrupt or holds NaN/Inf.
        TvregError: building failed (see :func:`tvreg._build.build.build_skill`).
    """
    built = False
    if project.artifact is not None:
        path = project.artifact
        if not path.is_file():
            raise ProjectError(
                f"the artifact `{path}` named in {PROJECT_FILE} does not exist.",
                hints=["build it with `tvreg build`, or use a `[build]` table instead of `artifact`"],
            )
    else:
        path = project.dist_path
        if _needs_build(project):
            from .._build.build import build_skill

            build_skill(
                project.base,
                finetuned=project.finetuned,
                adapter=project.adapter,
                output=path,
                name=project.skill,
                version=project.version,
                dataset_size=project.dataset_size,
                dataset_unit=project.dataset_unit or "examples",
                description=project.description or "",
                license=project.license,
                codec=project.codec,
                codec_options=project.codec_params,
                requires=project.requires,
                conflicts=project.conflicts,
                calibration=project.calibration,
                min_retention=project.min_retention,
                margin=project.margin,
                max_evaluations=project.max_evaluations,
                progress=progress,
            )
            built = True
    known = known_verified(path) if trust is not None else None
    if known is not None and trust is not None and trust(known):
        with Artifact(path) as art:
            manifest = art.manifest
    else:
        started = time.time_ns()
        manifest = verify_artifact(path, progress=progress, on_tensor=on_tensor)
        remember_verified(path, file_digest(path), read_since_ns=started)
    _check_manifest(project, manifest, path)
    if project.base is not None:
        if _FP_RE.match(project.base):
            base_fp = project.base
        else:
            from .._format.fingerprint import fingerprint

            base_fp = fingerprint(project.base, progress=progress)
        if manifest.kind == "task_vector" and manifest.base_fingerprint != base_fp:
            raise ProjectError(
                f"the artifact `{path}` was built for base {short(manifest.base_fingerprint)}, but "
                f"{PROJECT_FILE} names base {short(base_fp)}.",
                hints=["rebuild the artifact from the base named in the project"],
            )
    return path, manifest, built


CARD_FILE = "README.md"
MAX_CARD_BYTES = 256 * 1024
"""The registry's limit on a skill card (``registry_server.web.cards``)."""


def read_card(project: SkillProject) -> str | None:
    """The project's ``README.md``, published as the skill's card; None when there is none.

    Raises:
        ProjectError: the file is over :data:`MAX_CARD_BYTES` or not UTF-8 (found before any upload).
    """
    path = project.root / CARD_FILE
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CARD_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_CARD_BYTES:
        raise ProjectError(
            f"`{path}` is over {MAX_CARD_BYTES // 1024} KiB, the registry's limit for a skill card.",
            hints=["shorten the README, or move long material to a linked page"],
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProjectError(
            f"`{path}` is not UTF-8 text (byte {exc.start}); a skill card must be.",
            hints=["save the README as UTF-8"],
        ) from exc
