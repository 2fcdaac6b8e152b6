"""Build a skill artifact: τ = θ_FT − θ_PRE (or from a LoRA adapter), streamed tensor by tensor."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .._names import validate_name, validate_version
from . import DEFAULT_MAX_EVALUATIONS
from .._version import __version__
from .._format.artifact import RESERVE_FROM_BYTES, ArtifactWriter, file_digest, header_reserve, remember_verified
from .._format.codecs.zstd_frame import Arena
from .._format.checkpoint import Checkpoint
from .._format.codecs import Codec, get_codec, jit, make_codec, relative_error, zstd_frame
from ..errors import TensorMismatch, TvregError
from .._format.fingerprint import fingerprint
from .._format.manifest import DATASET_UNITS, Manifest
from .._util.pipeline import ordered_map
from .._util.progress import NULL_PROGRESS, Progress
from .._format.sketch import Sketch, SketchBuilder, store_cached

_PENDING = "0" * 64
"""The manifest's fingerprint until θ_pre's, hashed beside the build, is in (:func:`write_skill`)."""


@dataclass(frozen=True)
class BuildResult:
    """What ``build`` produced: the artifact, its manifest, and sizes for the summary."""

    path: Path
    manifest: Manifest
    raw_bytes: int
    stored_bytes: int
    sketch: Sketch | None = None

    @property
    def lossy(self) -> bool:
        return self.manifest.lossy


def _check_finite(name: str, tau: torch.Tensor) -> None:
    # NumPy's isfinite is vectorised; torch's bool-producing ops run element by element on the CPU
    if not bool(np.isfinite(tau.detach().to(torch.float32).numpy()).all()):
        bad = int((~torch.isfinite(tau)).sum())
        raise TensorMismatch(
            f"tensor `{name}` of the task vector has {bad} NaN or infinite values; refusing to build a skill from it.",
            tensor=name,
            hints=["check the fine-tuned checkpoint for diverged training"],
        )


def _read_reused(ckpt: Checkpoint, name: str) -> np.ndarray:
    """The uint16 words of a bf16 tensor, read into :func:`zstd_frame.buffer` memory."""
    info = ckpt.info(name)
    raw = zstd_frame.buffer(info.nbytes, torch.uint8)
    ckpt.file_of(name).read_into(info, memoryview(raw.numpy()).cast("B"))  # type: ignore[arg-type]  # numpy's stubs make ndarray a buffer only on 3.12+
    return raw.numpy().view(np.uint16)


def _finetune_deltas(base: Checkpoint, finetuned: Checkpoint) -> Iterator[tuple[str, Callable[[str], torch.Tensor | None]]]:
    base_names, ft_names = set(base.names()), set(finetuned.names())
    for name in sorted(ft_names - base_names):
        raise TensorMismatch(
            f"the fine-tuned model has tensor `{name}`, which the base model lacks.",
            tensor=name,
            hints=["both models must share one architecture; is `--base` the model that was fine-tuned?"],
        )
    for name in base.names():
        if name not in ft_names:
            raise TensorMismatch(
                f"the fine-tuned model lacks tensor `{name}` of the base model.", tensor=name
            )
        b, f = base.info(name), finetuned.info(name)
        if b.shape != f.shape:
            raise TensorMismatch(
                f"tensor `{name}` has shape {list(b.shape)} in the base model but {list(f.shape)} in the fine-tuned one.",
                tensor=name,
            )
        if b.is_float != f.is_float:
            raise TensorMismatch(f"tensor `{name}` is a float in one model and not the other.", tensor=name)

    def delta(name: str) -> torch.Tensor | None:
        if not base.info(name).is_float:
            if not torch.equal(base.read(name), finetuned.read(name)):
                raise TensorMismatch(
                    f"non-float tensor `{name}` differs between base and fine-tuned models; it cannot be a task vector.",
                    tensor=name,
                )
            return None
        info = base.info(name)
        if info.dtype == finetuned.info(name).dtype == "BF16" and jit.ready(info.numel):
            # One compiled pass, the same fp32 subtraction: no fp32 copies of either model's tensor.
            # Buffers come from the writer's arena when it has one: fresh pages cost more than the pass.
            f, b = _read_reused(finetuned, name), _read_reused(base, name)
            tau = zstd_frame.buffer(info.numel, torch.float32)
            jit.bf16_delta(f, b, tau.numpy())
            return tau.reshape(info.shape)
        return finetuned.read_float32(name).sub_(base.read_float32(name))

    for name in base.names():
        yield name, delta


def build_skill(
    base: str | os.PathLike[str] | None = None,
    *,
    general: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str],
    name: str,
    version: str,
    finetuned: str | os.PathLike[str] | None = None,
    adapter: str | os.PathLike[str] | None = None,
    dataset_size: int | None = None,
    dataset_unit: str = "examples",
    description: str = "",
    license: str | None = None,
    codec: str = "exact",
    codec_options: dict[str, object] | None = None,
    requires: dict[str, str] | None = None,
    conflicts: dict[str, str] | None = None,
    source_label: str | None = None,
    calibration: str | os.PathLike[str] | None = None,
    min_retention: float = 0.99,
    margin: bool = True,
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
    progress: Progress = NULL_PROGRESS,
) -> BuildResult:
    """Build a ``.tvskill`` holding τ = θ_finetuned − θ_base, or τ of a PEFT LoRA adapter.

    Exactly one of ``finetuned`` and ``adapter`` is given, and exactly one of ``base``
    and ``general``: with ``general`` the skill is a ``delta_from_general``, τ = θ_CFT − θ_G
    for a continued fine-tune of G, keyed to G's fingerprint and installed with
    ``--method wise_ft`` (Merge to Learn's WiSE-FT). Tensors are read, differenced
    in float32, checked for NaN/Inf, coded and written one at a time (a few in flight
    across threads), so memory stays at a few tensors whatever the model size.

    Args:
        base: θ_pre as a model directory or cached Hub id.
        general: G instead of θ_pre, for a ``delta_from_general`` skill.
        output: the ``.tvskill`` path; written atomically.
        name, version: skill name and semantic version.
        finetuned: θ_D, a model directory or cached Hub id.
        adapter: a PEFT LoRA adapter directory trained on ``base``, or a Hub repo holding one
            (``hf://org/repo[@revision]``, downloaded with ``huggingface_hub``).
        dataset_size: |D|, used for the default merge weight |D|/|G|.
        codec: the codec for every float tensor (``exact`` is lossless; ``auto`` picks
            per tensor); a lossy codec's error ‖τ̂ − τ‖/‖τ‖ is measured per tensor and
            recorded in the manifest.
        codec_options: build parameters of the codec, e.g. ``{"density": 0.1}``.
        requires, conflicts: other skills this one needs or cannot live with, as
            ``{"ns/skill": "npm range"}``; the resolver honours them at install.
        source_label: what the manifest records as the fine-tune or adapter instead of its local
            path (``hf://org/repo@sha``), so a conversion gives the same bytes on every machine.
        calibration: with ``codec="auto"``, held-out data (a text file, one text per line, or a
            hook ``module:fn``): ``auto`` then picks the smallest coding whose gain retention on
            it is at least ``min_retention`` (:mod:`tvreg._build.calibrate`), and the manifest records
            the figures. τ is then held in memory (fp32) while candidates are measured.
        min_retention: the retention target of a calibrated build, in (0, 1]; 1 keeps τ exact.
        margin: with a calibration text file, a coding passes only when the lower bound of its
            retention (5th percentile of a paired bootstrap over the texts) meets the target;
            ``False`` judges the mean alone. A hook is always judged on its mean.
        max_evaluations: the most times a calibrated build scores the model (the 2 references,
            the uniform bisection, then the per-group search); it stops there with the best
            coding measured.

    Returns:
        A :class:`BuildResult`.

    Raises:
        TensorMismatch: the two models differ in tensor names or shapes, or τ has NaN/Inf.
        CheckpointError: a model cannot be read; UnsafeCheckpoint for pickle weights.
        InvalidName: malformed name or version.
        InvalidCodecOption: unknown codec or codec parameter.
        EvaluationError: calibration data that cannot be read or scored, or a hook that fails;
            nothing is written then.
    """
    validate_name(name)
    validate_version(version)
    if (base is None) == (general is None):
        raise TvregError(
            "give exactly one of a pretrained model (`--base`, for a task vector) or a general model "
            "(`--general`, for a WiSE-FT delta θ_CFT − θ_G)."
        )
    kind = "task_vector" if base is not None else "delta_from_general"
    reference = base if base is not None else general
    assert reference is not None  # exactly one of the two, checked just above
    if (finetuned is None) == (adapter is None):
        raise TvregError(
            "give exactly one of a fine-tuned model (`--finetuned`) or a LoRA adapter (`--adapter`)."
        )
    if dataset_unit not in DATASET_UNITS:
        raise TvregError(f"dataset unit must be one of {', '.join(DATASET_UNITS)}, not `{dataset_unit}`.")
    if dataset_size is not None and dataset_size <= 0:
        raise TvregError(f"dataset size must be a positive number, not {dataset_size}.")
    from .._names import validate_dependencies

    validate_dependencies({**(requires or {}), **(conflicts or {})})
    coder = make_codec(codec, codec_options)
    if calibration is not None and codec != "auto":
        raise TvregError(
            f"calibration data chooses the coding only for codec `auto`, not `{codec}`.",
            hints=["pass `--codec auto` with `--calibration`, or drop `--calibration`"],
        )
    if adapter is not None and str(adapter).startswith("hf://"):
        from .._registry.hub import download_adapter

        adapter, hub_origin = download_adapter(str(adapter), progress=progress)
        source_label = source_label or hub_origin
    with Checkpoint.open(reference) as pre, ThreadPoolExecutor(1, thread_name_prefix="tvreg-fingerprint") as beside:
        # θ_pre is hashed beside the build (on a first build from it; later ones find it cached):
        # the fingerprint is needed only when the header is written, and the cores have room
        base_fp = beside.submit(fingerprint, pre)
        source: dict = {"codec": coder.describe()}
        deltas: Iterable[tuple[str, Callable[[str], torch.Tensor | None]]]
        if finetuned is not None:
            ft = Checkpoint.open(finetuned)
            source.update(kind="checkpoints", finetuned=source_label or str(finetuned))
            deltas = list(_finetune_deltas(pre, ft))
        else:
            from .adapter import adapter_deltas, read_adapter

            ft = None
            assert adapter is not None  # exactly one of `finetuned` and `adapter`, checked above
            info = read_adapter(Path(adapter))
            source.update(kind="lora_adapter", adapter=source_label or str(adapter), r=info.r, lora_alpha=info.lora_alpha)
            pre_shapes = {n: i.shape for n, i in pre.infos().items()}

            def adapter_delta_fn(item):
                def fn(_name: str, item=item) -> torch.Tensor:
                    if item.kind == "replace":
                        return item.tensor.to(torch.float32).sub_(pre.read_float32(item.name))
                    return item.tensor.to(torch.float32)

                return item.name, fn

            deltas = (adapter_delta_fn(item) for item in adapter_deltas(Path(adapter), pre_shapes))
        try:
            calibrated = None
            if calibration is not None:
                from .calibrate import calibrate

                deltas = list(deltas)
                taus = {}
                for tname, fn in deltas:
                    tau = fn(tname)
                    if tau is not None:
                        _check_finite(tname, tau)
                        taus[tname] = tau
                progress.task(f"Calibrating on {Path(str(calibration)).name}", max_evaluations)
                coder, figures = calibrate(
                    taus, base=reference, data=calibration, min_retention=min_retention, margin=margin,
                    max_evaluations=max_evaluations, on_evaluation=lambda what, score: progress.advance(1),
                )  # fmt: skip
                progress.done()
                calibrated = figures.to_dict()
                source["codec"] = f"auto({figures.chosen})"
                deltas = [(tname, lambda n: taus.get(n)) for tname, _ in deltas]
            manifest = Manifest(
                name=name,
                version=version,
                base_fingerprint=_PENDING,
                kind=kind,
                dataset_size=dataset_size,
                dataset_unit=dataset_unit,
                description=description,
                license=license,
                source=source,
                requires=dict(requires or {}),
                conflicts=dict(conflicts or {}),
                created_by=f"tvreg {__version__}",
                calibration=calibrated,
            )
            total = pre.total_bytes if ft is None else sum(pre.info(n).numel * 4 for n, _ in deltas)
            result = write_skill(
                Path(output), manifest, deltas, lambda n: (pre.info(n).shape, pre.info(n).dtype), coder,
                total=total, progress=progress, base_fingerprint=base_fp.result,
            )  # fmt: skip
        finally:
            if ft is not None:
                ft.close()
    return result


def write_skill(
    output: Path,
    manifest: Manifest,
    deltas: Iterable[tuple[str, Callable[[str], torch.Tensor | None]]],
    layout: Callable[[str], tuple[tuple[int, ...], str]],
    coder: Codec,
    *,
    total: int,
    progress: Progress = NULL_PROGRESS,
    base_fingerprint: Callable[[], str] | None = None,
) -> BuildResult:
    """Code and write τ tensor by tensor into a ``.tvskill`` at ``output`` (atomically), and cache its sketch.

    The one writer behind :func:`build_skill` and :meth:`tvreg.taskvector.TaskVector.save`:
    ``deltas`` yields ``(name, fn)`` in the artifact's tensor order, and ``fn(name)`` gives
    that tensor's fp32 τ (``None`` for a tensor the skill leaves alone). ``layout(name)`` is
    the base tensor's shape and dtype name. A few tensors are in flight at once; each is
    checked for NaN/Inf before it is coded. ``base_fingerprint``, when given, is asked for the
    manifest's ``base_fingerprint`` only once every tensor is written (it may be computing meanwhile).
    """
    reserve = 0
    if isinstance(deltas, Sequence) and total >= RESERVE_FROM_BYTES:
        reserve = header_reserve(manifest, [(n, math.prod(layout(n)[0])) for n, _ in deltas])
    writer = ArtifactWriter(Path(output), manifest, reserve=reserve)
    sketcher = SketchBuilder()
    raw = 0
    try:
        progress.task(f"Building {manifest.label}", total)

        arena = Arena()  # a worker's temporaries are handed back after each tensor and taken again

        def work(item):
            with arena.active():
                try:
                    return code(item)
                finally:
                    arena.recycle()

        def code(item):
            tname, fn = item
            tau = fn(tname)
            if tau is None:
                return tname, None, 0
            # ‖τ‖² summed in float64 is finite exactly when every entry is (a float32 squared is
            # below 2^256), so the sketch's pass is the NaN/Inf check; the named refusal follows.
            sketcher.add(tname, tau)
            if not math.isfinite(sketcher.tensor(tname).norm):
                _check_finite(tname, tau)
            enc = coder.encode_named(tname, tau)
            used = get_codec(enc.codec or coder.name)
            err = enc.rel_error
            if err is None:
                err = 0.0 if used.lossless else relative_error(
                    tau, used.decode(enc.data, tuple(tau.shape), enc.params, where=tname)
                )
            return tname, (used.name, enc, err), tau.numel() * 4

        workers = max(1, min(4, os.cpu_count() or 1))
        for tname, coded, nbytes in ordered_map(work, deltas, workers=workers, in_flight=workers + 1):
            shape, dtype = layout(tname)
            if coded is not None:
                used, enc, err = coded
                writer.add(
                    tname,
                    enc.data,
                    codec=used,
                    shape=shape,
                    dtype=dtype,
                    params=enc.params,
                    rel_error=err if err != float("inf") else None,
                )
                raw += nbytes
            progress.advance(math.prod(shape) * 4)
        if base_fingerprint is not None:
            manifest = writer.manifest = replace(manifest, base_fingerprint=base_fingerprint())
        result_manifest = writer.finish()
        progress.done()
    except BaseException:
        writer.abort()
        raise
    digest = writer.digest or file_digest(Path(output))
    sketch = sketcher.finish(
        skill=manifest.name,
        version=manifest.version,
        base_fingerprint=manifest.base_fingerprint,
        artifact_digest=digest,
    )
    store_cached(sketch)
    # Every tensor was checked finite and encoded by this build, so publish need not decode it again.
    remember_verified(Path(output), digest)
    return BuildResult(Path(output), result_manifest, raw, Path(output).stat().st_size, sketch)
