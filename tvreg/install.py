"""Install skills into a model environment: stream pristine G and each τ, merge, write, swap.

The pipeline, per tensor of G in storage order: read G's tensor, decode every skill's
τ for it, merge in float32 (:mod:`tvreg.merge`), round once to G's dtype, hash and
write it into a staged copy of the model directory. A few tensors are in flight at
once across threads; nothing holds a whole model. When every shard is written and
fsynced, the staged directory and the model directory are swapped in one atomic
rename, so a crash at any moment leaves the old model or the new one, never a mix.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ._version import __version__
from .artifact import Artifact, file_digest
from .checkpoint import INDEX_NAME, Checkpoint
from .codecs.zstd_frame import Arena
from .environment import init_environment, lock_model, open_pristine, require_lock, row_extension
from .errors import (
    IncompatibleBase,
    InstallInterrupted,
    LockOutdated,
    ModelEnvironmentError,
    TensorMismatch,
    WeightError,
)
from .faults import crash_point
from .fingerprint import fingerprint_of_hashes, remember, short, tensor_hashes
from .fsutil import atomic_write_text, disk_errors, free_bytes, fsync_dir, link_or_copy, swap_directories
from .lockfile import LOCK_NAME, Lock, LockedSkill, Origin, read_lock, require_locked_digest, write_lock
from .merge import Recipe, get_method, plan_tensor
from .merge.device import Merger, merger_for, resolve_device
from .modelcard import general_model_id, write_model_card
from .pipeline import ordered_map, torch_threads
from .progress import NULL_PROGRESS, Progress
from .safetensors_io import DTYPE_NAMES, SafetensorsWriter, itemsize
from .store import artifact_path, keep_artifact
from .verify import TENSORS_NAME, write_tensor_hashes


@dataclass(frozen=True)
class InstallResult:
    """What an install did: the locked skill set, the new weights' fingerprint, notes for the user."""

    model_dir: Path
    skills: tuple[LockedSkill, ...]
    output_fingerprint: str
    notes: tuple[str, ...]
    bytes_written: int
    seconds: float
    dry_run: bool = False


@dataclass
class _Skill:
    artifact: Artifact
    digest: str
    weight: float
    weight_source: str
    origin: Origin


OUTPUT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class _Merge:
    """The merge an install runs: the method's recipe, θ_pre when it needs one, and the device."""

    recipe: Recipe
    pre: Checkpoint | None
    merger: Merger


def _resolve_params(method: str, params: Mapping[str, object]) -> dict[str, object]:
    """The method's complete parameters; ``base_weights`` becomes an absolute path when it is one."""
    resolved = get_method(method).resolve_params(params)
    where = resolved.get("base_weights")
    if isinstance(where, str) and Path(where).expanduser().exists():
        resolved["base_weights"] = str(Path(where).expanduser().resolve())
    return resolved


def _open_base_weights(where: str, lock: Lock, general: Checkpoint, progress: Progress) -> Checkpoint:
    """θ_pre's checkpoint for ``linear``/``average``, checked to be this model's base."""
    from .environment import check_general_against_base
    from .fingerprint import fingerprint

    pre = Checkpoint.open(where)
    try:
        found = fingerprint(pre, progress=progress)
        if found != lock.base_fingerprint:
            raise IncompatibleBase(
                f"`--base-weights {where}` is not this model's base: its fingerprint is {short(found)}, "
                f"the model was initialised on base {short(lock.base_fingerprint)}.",
                expected=lock.base_fingerprint,
                found=found,
                hints=["pass the pretrained model the skills were built from"],
            )
        check_general_against_base(general, pre)
    except BaseException:
        pre.close()
        raise
    return pre


def _check_output_dtype(output_dtype: str | None) -> torch.dtype | None:
    if output_dtype is None:
        return None
    if output_dtype not in OUTPUT_DTYPES:
        raise ModelEnvironmentError(
            f"unsupported output dtype `{output_dtype}`.",
            hints=[f"choose one of: {', '.join(OUTPUT_DTYPES)} (or leave it out to keep G's dtypes)"],
        )
    return OUTPUT_DTYPES[output_dtype]


def _staging_dirs(model_dir: Path) -> list[str]:
    return glob.glob(str(model_dir.parent / f".{glob.escape(model_dir.name)}.tvreg-*.staging"))


def _clean_stale_staging(model_dir: Path) -> None:
    """Remove staging trees left by killed installs (their PID is gone)."""
    for path in _staging_dirs(model_dir):
        pid = path.rsplit(".tvreg-", 1)[1].split("-", 1)[0]
        try:
            os.kill(int(pid), 0)
            alive = int(pid) != os.getpid()
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(path, ignore_errors=True)


def default_weight(
    label: str, name: str, dataset_size: int | None, dataset_unit: str, lock: Lock, model_dir: Path
) -> tuple[float, str]:
    """The default ω = |D|/|G| of a skill and how it was computed, or a WeightError saying what is missing."""
    if dataset_size is None:
        raise WeightError(
            f"skill `{label}` does not record its dataset size |D|, so its default weight |D|/|G| is unknown.",
            hints=[f"pass `--weight {name}=0.3` (any ω you choose)"],
        )
    if lock.general_size is None:
        raise WeightError(
            f"the size of the general model's instruction-tuning set |G| is unknown for `{model_dir}`, "
            f"so the default weight of `{name}` (|D|/|G|) cannot be computed.",
            hints=[
                f"pass `--general-size N` (or run `tvreg init {model_dir} --general-size N`)",
                f"or give the weight explicitly: `--weight {name}=0.3`",
            ],
        )
    if dataset_unit != lock.general_size_unit:
        raise WeightError(
            f"skill `{label}` counts |D| in {dataset_unit} but |G| of `{model_dir}` is in "
            f"{lock.general_size_unit}; the ratio would be meaningless.",
            hints=[f"give the weight explicitly: `--weight {name}=0.3`"],
        )
    return dataset_size / lock.general_size, f"|D|/|G| = {dataset_size}/{lock.general_size}"


def _default_weight(artifact: Artifact, lock: Lock, model_dir: Path) -> tuple[float, str]:
    m = artifact.manifest
    return default_weight(m.label, m.name, m.dataset_size, m.dataset_unit, lock, model_dir)


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
    """The final skill set: locked skills minus ``drop``, with the new ones added or replacing same-named ones.

    ``refresh_defaults`` recomputes the default ω of locked skills (|G| may have changed);
    a user's ω is always kept.
    """
    new: dict[str, _Skill] = {}
    opened: list[Artifact] = []
    try:
        for path, origin in zip(paths, sources, strict=True):
            art = Artifact(path)
            opened.append(art)
            name = art.manifest.name
            if name in new:
                raise ModelEnvironmentError(
                    f"skill `{name}` is given twice (`{new[name].artifact.path}` and `{path}`)."
                )
            _check_compatible(art, lock)
            new[name] = _Skill(art, "", 0.0, "", origin or Origin(str(Path(path).resolve())))
        final: list[_Skill] = []
        fresh = set(new)
        for locked in lock.skills:
            if locked.name in new:
                final.append(new.pop(locked.name))  # a replacement keeps its place in the sum's order
                continue
            if locked.name in drop:
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
        aliases = {s.artifact.manifest.name: s for s in final}
        aliases.update({s.origin.registry_name: s for s in final if s.origin.registry_name})
        for name in sorted(set(weights) - set(aliases)):
            raise WeightError(f"`--weight {name}=...` names a skill that is not being installed.")
        given = {id(aliases[n]): float(w) for n, w in weights.items()}
        for skill in final:
            name = skill.artifact.manifest.name
            if id(skill) in given:
                skill.weight, skill.weight_source = given[id(skill)], "user"
            elif name in fresh or (refresh_defaults and skill.weight_source != "user"):
                skill.weight, skill.weight_source = _default_weight(skill.artifact, lock, model_dir)
        return final
    except BaseException:
        for art in opened:
            art.close()
        raise


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


def _stage_other_files(model_dir: Path, staging: Path, weight_names: set[str]) -> None:
    """Hard-link everything but the weights and lockfile into the staged tree (no copies)."""
    for entry in os.scandir(model_dir):
        if entry.name in weight_names or entry.name in (LOCK_NAME, TENSORS_NAME):
            continue
        if entry.name.endswith(".safetensors") or entry.name == INDEX_NAME:
            continue
        src, dst = Path(entry.path), staging / entry.name
        if entry.is_dir(follow_symlinks=False):
            shutil.copytree(src, dst, symlinks=True, copy_function=link_or_copy)
        elif entry.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            link_or_copy(src, dst)


def _write_weights(
    general: Checkpoint,
    skills: Sequence[_Skill],
    staging: Path,
    known_hashes: Mapping[str, tuple[str, list[int], str]],
    progress: Progress,
    merge: _Merge,
    out_dtype: torch.dtype | None = None,
) -> tuple[dict[str, tuple[str, list[int], str]], dict[str, dict]]:
    touched = {name for s in skills for name in s.artifact.manifest.tensors}
    if merge.pre is not None:  # θ_pre + c·(θ_G − θ_pre) changes every float tensor
        touched |= {name for name, info in general.infos().items() if info.is_float}
    labels = [s.artifact.manifest.name for s in skills]

    def target_dtype(name: str) -> torch.dtype:
        info = general.info(name)
        return out_dtype if out_dtype is not None and info.is_float else info.torch_dtype

    def merged(name: str) -> tuple[str, torch.Tensor | bytes, str]:
        info = general.info(name)
        want = target_dtype(name)
        if name not in touched:
            if want == info.torch_dtype:
                return name, general.read(name), known_hashes[name][2]
            out = general.read(name).to(want)
        else:
            crash_point("install:decode")
            with arena.active():
                forms = [
                    s.artifact.decode_form(name) if name in s.artifact.manifest.tensors else None for s in skills
                ]
            pre = merge.pre.read(name) if merge.pre is not None else None
            plan = plan_tensor(
                merge.recipe, name, labels, forms, info.numel, pre_numel=pre.numel() if pre is not None else 0
            )
            out = merge.merger(plan, general.read(name), forms, pre, want)
            del forms
            arena.recycle()
        raw = out.reshape(-1).view(torch.uint8).numpy() if out.numel() else b""
        return name, out, hashlib.sha256(raw).hexdigest()

    hashes: dict[str, tuple[str, list[int], str]] = {}
    per_file: dict[str, dict] = {}
    arena = Arena()
    progress.task("Merging and writing weights", general.total_bytes)
    workers = max(1, min(3, os.cpu_count() or 1))
    names = general.names()
    with torch_threads(1 if workers > 1 else None):
        stream = ordered_map(merged, names, workers=workers, in_flight=workers + 1)
        _write_files(general, staging, stream, target_dtype, hashes, per_file, progress)
    progress.done()
    return hashes, per_file


def _write_files(
    general: Checkpoint,
    staging: Path,
    stream: Iterator[tuple[str, torch.Tensor | bytes, str]],
    target_dtype: Callable[[str], torch.dtype],
    hashes: dict[str, tuple[str, list[int], str]],
    per_file: dict[str, dict],
    progress: Progress,
) -> None:
    """Write each shard of G's layout from the stream of merged tensors, recording their hashes."""
    for handle in general.handles:
        target = staging / handle.path.name
        entries = [(n, DTYPE_NAMES[target_dtype(n)], i.shape) for n, i in handle.tensors.items()]
        metadata = dict(handle.metadata)
        metadata.setdefault("format", "pt")
        file_hashes: dict[str, tuple[str, list[int], str]] = {}
        with disk_errors(target, general.total_bytes), open(target, "wb") as f:
            writer = SafetensorsWriter(f, entries, metadata)
            for expected in handle.tensors:
                name, tensor, digest = next(stream)
                assert name == expected
                writer.write(name, tensor)
                info = handle.tensors[name]
                file_hashes[name] = (DTYPE_NAMES[target_dtype(name)], list(info.shape), digest)
                progress.advance(info.nbytes)
                crash_point("install:write")
            writer.finish()
        hashes.update(file_hashes)
        per_file[handle.path.name] = file_hashes


def _materialise(
    model_dir: Path,
    lock: Lock,
    final: Sequence[_Skill],
    general: Checkpoint,
    known: Mapping[str, tuple[str, list[int], str]],
    progress: Progress,
    merge: _Merge,
    expect_output: str | None = None,
) -> tuple[Lock, int]:
    """Write θ_G + Σ ω_k τ_k for ``final`` into a staged copy of ``model_dir`` and swap it in.

    ``lock`` is the new lock without its output fingerprint; the written lock (with it),
    the per-tensor record and the model card go into the staged tree too, so all of them
    change in the one swap. Returns the written lock and the bytes of weights written.
    With ``expect_output``, weights with another fingerprint are refused before the swap.
    Caller holds :func:`lock_model`.
    """
    out_dtype = _check_output_dtype(lock.output_dtype)
    for skill in final:
        keep_artifact(skill.artifact.path, skill.digest)
    needed = general.total_bytes + (1 << 20)
    if free_bytes(model_dir.parent) < needed:
        with disk_errors(model_dir, needed):
            raise OSError(28, "No space left on device")
    staging: Path | None = (
        model_dir.parent / f".{model_dir.name}.tvreg-{os.getpid()}-{time.time_ns()}.staging"
    )
    try:
        staging.mkdir()
        weight_names = {p.name for p in general.files}
        with disk_errors(staging):
            _stage_other_files(model_dir, staging, weight_names)
        hashes, per_file = _write_weights(general, final, staging, known, progress, merge, out_dtype)
        written = sum((staging / name).stat().st_size for name in per_file)
        with disk_errors(staging):
            if general.is_sharded:
                tensor_bytes = sum(math.prod(shape) * itemsize(dtype) for dtype, shape, _ in hashes.values())
                _write_index(Path(lock.pristine) / INDEX_NAME, staging / INDEX_NAME, tensor_bytes, out_dtype)
            if out_dtype is not None:
                _set_config_dtype(staging, lock.output_dtype)
        output_fp = fingerprint_of_hashes(hashes)
        if expect_output is not None and output_fp != expect_output:
            raise LockOutdated(
                f"the weights recomputed from `{model_dir}/tvreg.lock` hash to {short(output_fp)}, but the lock "
                f"records {short(expect_output)}; `{model_dir}` is unchanged.",
                reasons=["the recorded weights fingerprint differs"],
                hints=[
                    "the lock was written by another tvreg version or edited; run `tvreg sync` without `--locked`"
                ],
            )
        new_lock = replace(lock, output_fingerprint=output_fp, tvreg_version=__version__)
        write_lock(staging, new_lock)
        write_tensor_hashes(staging, hashes)
        write_model_card(staging, new_lock, general_id=general_model_id(model_dir))
        fsync_dir(staging)
        crash_point("install:before-swap")
        swap_directories(model_dir, staging)
        crash_point("install:after-swap")
        old, staging = staging, None
        shutil.rmtree(old, ignore_errors=True)
        for fname, entries in per_file.items():
            remember(model_dir / fname, entries)
        return new_lock, written
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _write_index(src: Path, dst: Path, total_size: int, out_dtype: torch.dtype | None) -> None:
    if out_dtype is None:
        shutil.copyfile(src, dst)
        return
    index = json.loads(src.read_text(encoding="utf-8"))
    index.setdefault("metadata", {})["total_size"] = total_size
    atomic_write_text(dst, json.dumps(index, indent=2) + "\n")


def _set_config_dtype(staging: Path, dtype_name: str | None) -> None:
    """Record a changed output dtype in ``config.json`` (replacing the hard link, never writing through it)."""
    config = staging / "config.json"
    if not config.is_file():
        return
    data = json.loads(config.read_text(encoding="utf-8"))
    for key in ("dtype", "torch_dtype"):
        if key in data:
            data[key] = dtype_name
    if "dtype" not in data and "torch_dtype" not in data:
        data["torch_dtype"] = dtype_name
    atomic_write_text(config, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _origins(sources: Sequence[str | Origin | None] | None, count: int) -> list[Origin | None]:
    origins = list(sources) if sources is not None else [None] * count
    if len(origins) != count:
        raise ValueError("`sources` must have one entry per skill")
    return [Origin(o) if isinstance(o, str) else o for o in origins]


def install(
    skills: Sequence[str | os.PathLike[str]],
    *,
    into: str | os.PathLike[str],
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
    progress: Progress = NULL_PROGRESS,
) -> InstallResult:
    """Install skill artifacts into a model environment: θ = θ_G + Σ_k ω_k τ_k.

    The set installed is the skills already in ``tvreg.lock`` plus ``skills`` (a skill
    of the same name replaces the locked one), always recomputed from pristine G, so
    installing twice or in another order gives identical bytes.

    Args:
        skills: ``.tvskill`` paths.
        into: the model environment (a model directory of G).
        weights: ω per skill name, overriding the default |D|/|G|.
        base, base_fingerprint, general_size: initialise the environment on the fly
            (see :func:`~tvreg.environment.init_environment`).
        method, method_params: the merge method (see :data:`tvreg.merge.METHODS`) and its
            parameters (``density``, ``lambda``, ``drop_rate``, ``seed``, ``normalize``,
            ``base_weights``; each method takes some); default: what ``tvreg.lock`` records
            (``task_arithmetic``). Given parameters update the locked ones of the same method.
        output_dtype: ``float32``, ``float16`` or ``bfloat16`` for every float tensor,
            ``"auto"`` for G's own dtypes; default: what ``tvreg.lock`` records.
        device: ``auto`` (CUDA when torch sees a GPU and Triton is installed), ``cuda`` or
            ``cpu``; the result is the same up to one ulp (bit-identical run to run).
        dry_run: check everything and return the plan without writing.
        lock_only: write ``tvreg.lock`` (and keep the artifacts) but not the weights, like
            ``tvreg lock``; ``tvreg sync`` materialises them later.
        refresh_defaults: recompute the default ω of skills already installed (``tvreg upgrade``).
        sources: each skill's origin, parallel to ``skills``: an :class:`~tvreg.lockfile.Origin`
            (label, registry URL, the requirement asked for) or just a label such as
            ``nlp/science@1.2.0``; default: the artifact's path.

    Returns:
        An :class:`InstallResult`.

    Raises:
        IncompatibleBase: a skill was built for another base; checked before any tensor data is read.
        TensorMismatch: a skill's tensor is missing from G or has another shape.
        WeightError: ω cannot be determined.
        MergeError: an unknown method, a bad parameter, θ_pre's weights missing, a skill
            kind the method cannot combine, or ``device="cuda"`` without a GPU.
        InstallInterrupted / DiskFull: the model directory is unchanged.
    """
    started = time.monotonic()
    device_kind = resolve_device(device)
    model_dir = Path(into)
    if not model_dir.is_dir():
        raise ModelEnvironmentError(f"`{model_dir}` is not a directory.")
    if base is not None or base_fingerprint is not None or general_size is not None:
        init_environment(
            model_dir,
            base=base,
            base_fingerprint=base_fingerprint,
            general_size=general_size,
            progress=progress,
        )
    model_dir = model_dir.resolve()
    with lock_model(model_dir):
        lock = require_lock(model_dir)
        lock = _with_settings(lock, method, method_params, output_dtype)
        _clean_stale_staging(model_dir)
        final = _open_skills(
            skills,
            lock,
            weights or {},
            model_dir,
            _origins(sources, len(skills)),
            refresh_defaults=refresh_defaults,
        )
        return _apply(
            model_dir,
            lock,
            final,
            started,
            progress,
            dry_run=dry_run,
            write_weights=not lock_only,
            device_kind=device_kind,
        )


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


def _apply(
    model_dir: Path,
    lock: Lock,
    final: list[_Skill],
    started: float,
    progress: Progress,
    *,
    dry_run: bool = False,
    write_weights: bool = True,
    expect_output: str | None = None,
    action: str = "install",
    device_kind: str | None = None,
) -> InstallResult:
    """Make ``model_dir`` hold exactly ``final`` on top of pristine G (the declarative core of every command).

    ``lock`` carries the method and dtype settings; its skills are replaced by ``final``.
    ``write_weights=False`` only writes the new ``tvreg.lock`` (``tvreg lock``): its
    weights fingerprint is cleared unless nothing changed. Closes ``final``'s artifacts.
    """
    device_kind = device_kind or resolve_device("auto")
    try:
        general = open_pristine(lock)
        try:
            known = tensor_hashes(general, progress=progress)
            if fingerprint_of_hashes(known) != lock.general_fingerprint:
                raise ModelEnvironmentError(
                    f"the pristine copy of the general model at `{lock.pristine}` no longer matches "
                    f"fingerprint {short(lock.general_fingerprint)}.",
                    hints=["run `tvreg init` again on an untouched copy of the general model"],
                )
            notes = _check_tensors(final, general)
            merge_method = get_method(lock.method)
            merge_method.check_skills([(s.artifact.manifest.label, s.artifact.manifest.kind) for s in final])
            recipe = merge_method.recipe(
                [s.weight for s in final], [s.artifact.manifest.kind for s in final], lock.method_params
            )
            for skill in final:
                if not skill.digest:
                    skill.digest = file_digest(skill.artifact.path)
            locked = tuple(
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
            new_lock = replace(lock, skills=locked, output_fingerprint=None, notes=tuple(notes))
            if dry_run:
                return InstallResult(model_dir, locked, "", tuple(notes), 0, time.monotonic() - started, True)
            if not write_weights:
                for skill in final:
                    keep_artifact(skill.artifact.path, skill.digest)
                current = read_lock(model_dir)
                if current is not None and _same_inputs(current, new_lock):
                    new_lock = current
                else:
                    new_lock = replace(new_lock, tvreg_version=__version__)
                write_lock(model_dir, new_lock)
                return InstallResult(
                    model_dir,
                    locked,
                    new_lock.output_fingerprint or "",
                    tuple(notes),
                    0,
                    time.monotonic() - started,
                )
            pre = (
                _open_base_weights(str(lock.method_params["base_weights"]), lock, general, progress)
                if recipe.needs_base_weights
                else None
            )
            try:
                merge = _Merge(recipe, pre, merger_for(device_kind))
                written_lock, written = _materialise(
                    model_dir, new_lock, final, general, known, progress, merge, expect_output
                )
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
        model_dir,
        locked,
        written_lock.output_fingerprint or "",
        tuple(notes),
        written,
        time.monotonic() - started,
    )


def _same_inputs(a: Lock, b: Lock) -> bool:
    """Whether two locks describe the same weights (ignoring the recorded fingerprint and notes)."""
    strip = {"output_fingerprint": None, "notes": (), "tvreg_version": ""}
    return replace(a, **strip) == replace(b, **strip)


def require_installed(lock: Lock, names: Sequence[str], model_dir: Path) -> None:
    """Raise naming the first of ``names`` that is not installed (and what is)."""
    for name in names:
        if lock.skill(name) is None:
            listed = ", ".join(sorted(s.registry_name for s in lock.skills)) or "none"
            raise ModelEnvironmentError(
                f"skill `{name}` is not installed in `{model_dir}` (installed: {listed})."
            )


def uninstall(
    names: Sequence[str],
    *,
    into: str | os.PathLike[str],
    dry_run: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> InstallResult:
    """Remove skills from a model environment: the weights become exactly those of installing the rest.

    Like ``uv remove``, a dependency that only the removed skills needed (one the resolver
    added, not one the user asked for) is removed with them.

    Raises:
        ModelEnvironmentError: a name is not installed, or a remaining skill requires it.
    """
    started = time.monotonic()
    model_dir = Path(into).resolve()
    with lock_model(model_dir):
        lock = require_lock(model_dir)
        require_installed(lock, names, model_dir)
        names = [lock.skill(n).name for n in names]
        _clean_stale_staging(model_dir)
        final = _open_skills([], lock, {}, model_dir, [], drop=set(names))
        try:
            gone = {n for s in lock.skills if s.name in names for n in (s.name, s.registry_name)}
            while True:
                blocked = [
                    (_shown(s), d) for s in final for d in s.artifact.manifest.requires if d in gone
                ]
                if blocked:
                    who, what = blocked[0]
                    raise ModelEnvironmentError(
                        f"cannot uninstall `{what}`: `{who}` requires it.",
                        hints=[f"uninstall both: `tvreg uninstall {what} {_ident(who)} --into {into}`"],
                    )
                needed = {d for s in final for d in s.artifact.manifest.requires}
                orphans = [
                    s
                    for s in final
                    if s.origin.requested is None
                    and s.origin.registry is not None
                    and not (_idents(s) & needed)
                ]
                if not orphans:
                    break
                for s in orphans:
                    progress.note(f"removing `{_shown(s)}`: only the uninstalled skills required it.")
                    gone |= _idents(s)
                    final.remove(s)
                    s.artifact.close()
        except BaseException:
            for skill in final:
                skill.artifact.close()
            raise
        return _apply(model_dir, lock, final, started, progress, dry_run=dry_run, action="uninstall")


def _idents(skill: _Skill) -> set[str]:
    return {skill.artifact.manifest.name, skill.origin.registry_name} - {None}


def _shown(skill: _Skill) -> str:
    """``ns/skill@1.2.0`` for a registry skill, ``skill@1.2.0`` for a local one."""
    return skill.origin.label if skill.origin.registry is not None else skill.artifact.manifest.label


def _ident(label: str) -> str:
    return label.rpartition("@")[0]


def rebuild(
    into: str | os.PathLike[str],
    *,
    locked: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> InstallResult:
    """Recompute a model environment's weights from ``tvreg.lock`` alone (``tvreg sync``).

    Every locked artifact must already be in the local store (:func:`tvreg.sync.sync`
    fetches them by digest first). Without ``locked``, default weights are refreshed
    (|G| may have changed) and the lock rewritten; with it, the lock must already be up
    to date and the weights must come out with the fingerprint it records.

    Raises:
        LockOutdated: ``locked`` and the lock would change; nothing is written.
        LockMismatch: a stored artifact is not the bytes the lock pins.
    """
    started = time.monotonic()
    model_dir = Path(into).resolve()
    with lock_model(model_dir):
        lock = require_lock(model_dir)
        _clean_stale_staging(model_dir)
        final = _open_skills([], lock, {}, model_dir, [], refresh_defaults=not locked)
        try:
            if locked:
                reasons = outdated_reasons(lock, final, model_dir)
                if reasons:
                    raise LockOutdated(
                        f"`{model_dir}/tvreg.lock` needs to be updated, but `--locked` was given: "
                        + "; ".join(reasons)
                        + ".",
                        reasons=reasons,
                        hints=[f"update it with `tvreg lock --into {model_dir}`, or drop `--locked`"],
                    )
        except BaseException:
            for skill in final:
                skill.artifact.close()
            raise
        return _apply(
            model_dir,
            lock,
            final,
            started,
            progress,
            expect_output=lock.output_fingerprint if locked else None,
            action="sync",
        )


def outdated_reasons(lock: Lock, final: Sequence[_Skill], model_dir: Path) -> list[str]:
    """Why ``lock`` would change if it were resolved again now; empty when it is up to date."""
    from ._names import Range, parse_requirement

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
        if skill.origin.requested and skill.origin.registry is not None:
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
