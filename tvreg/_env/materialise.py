"""The tensor stream: per tensor of pristine G, θ_G + Σ ω_k τ_k merged and written into a staged tree.

Per tensor of G in storage order: read G's tensor, decode every skill's τ for it, merge
in float32 (:mod:`tvreg._merge`), round once to the output dtype, hash and write it into
a staged copy of the model directory. A few tensors are in flight at once across
threads; nothing holds a whole model. When every shard is written and fsynced, the
staged directory and the model directory are swapped in one atomic rename, so a crash
at any moment leaves the old model or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .._format.checkpoint import INDEX_NAME, Checkpoint
from .._format.codecs.zstd_frame import Arena
from .._format.faults import crash_point
from .._format.fingerprint import fingerprint_of_hashes, remember, short
from .._format.fsutil import (
    WriteBehind,
    atomic_write_text,
    disk_errors,
    free_bytes,
    fsync_dir,
    swap_directories,
)
from .._format.safetensors_io import DTYPE_NAMES, SafetensorsWriter, itemsize
from .._merge import Recipe, plan_tensor
from .._merge.device import Merger
from .._util.pipeline import frozen_heap, ordered_map, torch_threads
from .._util.progress import Progress
from .._version import __version__
from ..errors import IncompatibleBase, LockOutdated
from ..taskvector import TaskVector
from .lockfile import Lock, write_lock
from .modelcard import write_model_card
from .skillset import _Skill
from .staging import _stage_other_files
from .store import keep_artifact, pristine_path
from .verify import write_tensor_hashes
from .weights import _check_output_dtype


@dataclass
class _Merge:
    """The merge an install runs: the method's recipe, θ_pre when it needs one, and the device."""

    recipe: Recipe
    pre: Checkpoint | None
    merger: Merger


def _open_base_weights(where: str, lock: Lock, general: Checkpoint, progress: Progress) -> Checkpoint:
    """θ_pre's checkpoint for ``linear``/``average``, checked to be this model's base."""
    from .._format.fingerprint import fingerprint
    from .environment import check_general_against_base

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

    def merged(name: str) -> tuple[str, torch.Tensor, str, torch.Tensor | None]:
        info = general.info(name)
        want = target_dtype(name)
        lent = None
        if name not in touched:
            if want == info.torch_dtype:
                return name, general.read(name), known_hashes[name][2], None
            out = general.read(name).to(want)
        else:
            crash_point("install:decode")
            with arena.active():
                # lazy: each blob is read and its digest checked now; the merge decodes it, or adds it
                # straight into its float32 sum (task arithmetic on the CPU), in this arena
                forms = [
                    s.artifact.decode_form(name, lazy=True) if name in s.artifact.manifest.tensors else None
                    for s in skills
                ]
                pre = merge.pre.read(name) if merge.pre is not None else None
                plan = plan_tensor(
                    merge.recipe, name, labels, forms, info.numel, pre_numel=pre.numel() if pre is not None else 0
                )
                # G's tensor and the merged one live in reused buffers, not fresh pages per tensor;
                # the merged one goes to the writer, which gives it back once it is on disk
                g = general.read(name, into=arena.take(info.nbytes))
                nbytes = info.numel * itemsize(DTYPE_NAMES[want])
                lent = arena.lend(nbytes)
                out = merge.merger(plan, g, forms, pre, want, lent[:nbytes].view(want))
            del forms, g
            arena.recycle()
            if out.data_ptr() != lent.data_ptr():  # a device merge returns its own copy
                arena.give_back(lent)
                lent = None
        raw = out.reshape(-1).view(torch.uint8).numpy() if out.numel() else b""
        return name, out, hashlib.sha256(raw).hexdigest(), lent  # type: ignore[arg-type]  # numpy's stubs make ndarray a buffer only on 3.12+

    hashes: dict[str, tuple[str, list[int], str]] = {}
    per_file: dict[str, dict] = {}
    arena = Arena()
    progress.task("Merging and writing weights", general.total_bytes)
    workers = max(1, min(3, os.cpu_count() or 1))
    names = general.names()
    with torch_threads(1 if workers > 1 else None), frozen_heap():
        stream = ordered_map(merged, names, workers=workers, in_flight=workers + 1)
        _write_files(general, staging, stream, target_dtype, hashes, per_file, progress, arena)
    progress.done()
    return hashes, per_file


def _write_files(
    general: Checkpoint,
    staging: Path,
    stream: Iterator[tuple[str, torch.Tensor, str, torch.Tensor | None]],
    target_dtype: Callable[[str], torch.dtype],
    hashes: dict[str, tuple[str, list[int], str]],
    per_file: dict[str, dict],
    progress: Progress,
    arena: Arena,
) -> None:
    """Write each shard of G's layout from the stream of merged tensors, recording their hashes.

    A tensor that came in a buffer lent by ``arena`` is given back once it is written. Each
    shard is synced to disk while it and the next are written (:class:`WriteBehind`); every
    shard is durable when this returns."""
    with disk_errors(staging, general.total_bytes), WriteBehind() as behind:
        for handle in general.handles:
            target = staging / handle.path.name
            entries = [(n, DTYPE_NAMES[target_dtype(n)], i.shape) for n, i in handle.tensors.items()]
            metadata = dict(handle.metadata)
            metadata.setdefault("format", "pt")
            file_hashes: dict[str, tuple[str, list[int], str]] = {}
            with disk_errors(target, general.total_bytes), open(target, "wb") as f:
                writer = SafetensorsWriter(f, entries, metadata, behind=behind)
                for expected in handle.tensors:
                    name, tensor, digest, lent = next(stream)
                    assert name == expected
                    writer.write(name, tensor)
                    del tensor
                    if lent is not None:
                        arena.give_back(lent)
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
    *,
    before_swap: Callable[[Path], object] | None = None,
) -> tuple[Lock, int]:
    """Write θ_G + Σ ω_k τ_k for ``final`` into a staged copy of ``model_dir`` and swap it in.

    ``lock`` is the new lock without its output fingerprint; the written lock (with it),
    the per-tensor record and the model card go into the staged tree too, so all of them
    change in the one swap. Returns the written lock and the bytes of weights written.
    With ``expect_output``, weights with another fingerprint are refused before the swap;
    ``before_swap`` (the install gate) is called with the complete staged tree and may
    refuse it by raising, which removes the staged tree and leaves ``model_dir`` as it was.
    Caller holds :func:`lock_model`.
    """
    out_dtype = _check_output_dtype(lock.output_dtype)
    needed = general.total_bytes + (1 << 20)
    if free_bytes(model_dir.parent) < needed:
        with disk_errors(model_dir, needed):
            raise OSError(28, "No space left on device")
    staging: Path | None
    staging = model_dir.parent / f".{model_dir.name}.tvreg-{os.getpid()}-{time.time_ns()}.staging"
    # The store's copies of the artifacts (which the lock names) are made beside the merge, which
    # reads the artifacts where they are: a first install copied and fsynced every one before
    # merging anything (~1.5 s for three 150 MiB skills). They are complete before the swap.
    kept = ThreadPoolExecutor(1, thread_name_prefix="tvreg-keep")
    keeping = kept.submit(_keep_artifacts, final)
    try:
        staging.mkdir()
        weight_names = {p.name for p in general.files}
        with disk_errors(staging):
            _stage_other_files(model_dir, staging, weight_names)
        vector = TaskVector._of_skills(final, lock.base_fingerprint)
        hashes, per_file = vector._write_into(general, staging, final, known, progress, merge, out_dtype)
        written = sum((staging / name).stat().st_size for name in per_file)
        with disk_errors(staging):
            if general.is_sharded:
                tensor_bytes = sum(math.prod(shape) * itemsize(dtype) for dtype, shape, _ in hashes.values())
                _write_index(pristine_path(lock.general_fingerprint) / INDEX_NAME, staging / INDEX_NAME, tensor_bytes, out_dtype)
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
        keeping.result()
        new_lock = replace(lock, output_fingerprint=output_fp, tvreg_version=__version__)
        write_lock(staging, new_lock)
        write_tensor_hashes(staging, hashes)
        write_model_card(staging, new_lock)
        fsync_dir(staging)
        if before_swap is not None:
            before_swap(staging)
        crash_point("install:before-swap")
        swap_directories(model_dir, staging)
        crash_point("install:after-swap")
        old, staging = staging, None
        shutil.rmtree(old, ignore_errors=True)
        for fname, entries in per_file.items():
            remember(model_dir / fname, entries)
        return new_lock, written
    finally:
        kept.shutdown(wait=True)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _keep_artifacts(final: Sequence[_Skill]) -> None:
    for skill in final:
        keep_artifact(skill.artifact.path, skill.digest)


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
