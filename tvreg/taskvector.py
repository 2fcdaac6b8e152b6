"""Task vectors as values: τ = θ_ft − θ_pre, combined by arithmetic and applied to a model.

Why this module: the idea tvreg is named after (Ilharco et al., *Editing Models with Task
Arithmetic*) is an algebra — ``τ_a + τ_b``, ``-τ``, ``0.3 * τ``, ``apply_to(G)`` — and it
should be typed into a REPL exactly as in mlfoundations/task_vectors. Unlike that code, a
:class:`TaskVector` here holds no tensors: it is a base fingerprint and an ordered list of
``(ω, source)`` terms, so the arithmetic is free and exact, and mixing bases is refused
(:class:`~tvreg.errors.IncompatibleBase`) instead of printing a warning. Tensors are read
only by :meth:`TaskVector.apply_to` and :meth:`TaskVector.save`, one tensor at a time,
through the same code that ``tvreg install`` and ``tvreg build`` run (the merge engine of
:mod:`tvreg._merge` via :mod:`tvreg._env.materialise`, the writer of :mod:`tvreg._build.build`), so
``(0.3 * (τ_a + τ_b)).apply_to(G, out)`` and ``install([a, b], weights=0.3 each)`` give the
same bits. Nothing is ever unpickled.

The terms keep their order because float addition is not associative: the engine adds
ω_k τ_k onto θ_G in the listed order, as install does, so ``τ_a + τ_b`` and ``τ_b + τ_a``
are equal as sums of reals but may differ in the last bit. A source that appears twice is
one term whose ω is the sum (``τ + τ == 2 * τ``); a term whose ω becomes 0 is dropped
(``τ - τ`` applies as θ_G unchanged).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

if TYPE_CHECKING:
    from ._format.artifact import Artifact
    from ._util.progress import Progress

__all__ = ["ArtifactSource", "CheckpointSource", "TaskVector"]


@dataclass(frozen=True)
class ArtifactSource:
    """τ stored in a ``.tvskill`` file, identified by the file's digest (the path is where it was found)."""

    digest: str
    path: Path = field(compare=False)
    label: str = field(compare=False)
    kind: ClassVar[str] = "artifact"

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True)
class CheckpointSource:
    """τ = θ_ft − θ_pre of two safetensors checkpoints, identified by both fingerprints."""

    pretrained_fingerprint: str
    finetuned_fingerprint: str
    pretrained: str = field(compare=False)
    finetuned: str = field(compare=False)
    label: str = field(compare=False)
    kind: ClassVar[str] = "checkpoints"

    def __str__(self) -> str:
        return self.label


Source = ArtifactSource | CheckpointSource


@dataclass(frozen=True)
class TaskVector:
    """Σ ω_k τ_k over one base model, as data: a base fingerprint and ordered ``(ω, source)`` terms.

    Build one with :meth:`load` (a ``.tvskill``) or :meth:`from_checkpoints`; combine with
    ``+``, ``-``, ``sum()``, and a number ``*``/``/``; write it with :meth:`save` or merge it
    into a model with :meth:`apply_to`.

    Attributes:
        base_fingerprint: θ_pre's fingerprint (for ``kind="task_vector"``), or G's for a
            ``delta_from_general`` (a WiSE-FT delta θ_CFT − θ_G).
        terms: ``(ω, source)`` pairs in the order the engine adds them.
        kind: ``task_vector`` or ``delta_from_general``.

    Example:
        >>> tau_a = TaskVector.load("science.tvskill")  # doctest: +SKIP
        >>> tau_b = TaskVector.from_checkpoints("pre", "coding-ft")  # doctest: +SKIP
        >>> (sum([tau_a, tau_b]) * 0.3).apply_to("G", "merged")  # doctest: +SKIP
    """

    base_fingerprint: str
    terms: tuple[tuple[float, Source], ...] = ()
    kind: str = "task_vector"

    # ------------------------------------------------------------------ constructors

    @classmethod
    def load(cls, path_or_artifact: str | os.PathLike[str] | Artifact) -> TaskVector:
        """The task vector stored in a ``.tvskill`` (a path, or an open :class:`~tvreg._format.artifact.Artifact`).

        Only the header is read (and the file's digest, remembered while the file is
        unchanged); tensors are decoded when the vector is applied or saved.

        Raises:
            ArtifactError: the path does not exist, is a directory, or is not a valid skill artifact.
        """
        from ._format.artifact import Artifact, file_digest
        from .errors import ArtifactError

        if isinstance(path_or_artifact, Artifact):
            path, manifest = path_or_artifact.path, path_or_artifact.manifest
        else:
            if isinstance(path_or_artifact, (bytes, bytearray)) or not isinstance(
                path_or_artifact, (str, os.PathLike)
            ):
                raise ArtifactError(
                    f"`TaskVector.load` takes a `.tvskill` path or an Artifact, not {type(path_or_artifact).__name__}."
                )
            path = Path(path_or_artifact)
            if path.is_dir():
                raise ArtifactError(
                    f"`{path}` is a directory, not a `.tvskill` file.",
                    hints=[
                        "for a fine-tuned model directory use `TaskVector.from_checkpoints(pretrained, finetuned)`"
                    ],
                )
            if not path.exists():
                raise ArtifactError(
                    f"`{path}` does not exist.",
                    hints=["build a skill with `tvreg build`, or fetch one with `tvreg fetch NAME`"],
                )
            with Artifact(path) as art:
                manifest = art.manifest
        path = Path(path).resolve()
        source = ArtifactSource(digest=file_digest(path), path=path, label=manifest.label)
        return cls(manifest.base_fingerprint, ((1.0, source),), manifest.kind)

    @classmethod
    def from_checkpoints(
        cls, pretrained: str | os.PathLike[str], finetuned: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> TaskVector:
        """τ = θ_finetuned − θ_pretrained of two safetensors checkpoints (directories, files or cached Hub ids).

        Both are fingerprinted (hashes are remembered while the files are unchanged) and
        their tensor names and shapes compared; no difference is computed until the vector
        is applied or saved.

        Raises:
            CheckpointError: a checkpoint cannot be read (pickle weights are never loaded).
            TensorMismatch: the two models differ in tensor names, shapes or float-ness.
        """
        from ._build.build import _finetune_deltas
        from ._format.checkpoint import Checkpoint
        from ._format.fingerprint import fingerprint
        from ._util.progress import NULL_PROGRESS

        progress = progress or NULL_PROGRESS
        with Checkpoint.open(pretrained) as pre, Checkpoint.open(finetuned) as ft:
            for _ in _finetune_deltas(pre, ft):
                break  # the structural checks run before the first item
            source = CheckpointSource(
                pretrained_fingerprint=fingerprint(pre, progress=progress),
                finetuned_fingerprint=fingerprint(ft, progress=progress),
                pretrained=str(pretrained),
                finetuned=str(finetuned),
                label=Path(str(finetuned)).name or str(finetuned),
            )
        return cls(source.pretrained_fingerprint, ((1.0, source),), "task_vector")

    # ------------------------------------------------------------------ arithmetic

    def _combined(self, other: TaskVector) -> TaskVector:
        if other.base_fingerprint != self.base_fingerprint or other.kind != self.kind:
            from ._format.fingerprint import short
            from .errors import IncompatibleBase

            def said(tv: TaskVector) -> str:
                what = "G" if tv.kind == "delta_from_general" else "base"
                named = ", ".join(f"`{s}`" for _, s in tv.terms) or "an empty task vector"
                return f"{named} on {what} {short(tv.base_fingerprint)}"

            raise IncompatibleBase(
                f"cannot combine task vectors of different base models: {said(self)}, {said(other)}.",
                expected=self.base_fingerprint,
                found=other.base_fingerprint,
                hints=["task vectors add only when built from the same pretrained model"],
            )
        return TaskVector(self.base_fingerprint, _collect([*self.terms, *other.terms]), self.kind)

    def __add__(self, other: object) -> TaskVector:
        if isinstance(other, TaskVector):
            return self._combined(other)
        if _is_zero(other):
            return self
        return NotImplemented

    def __radd__(self, other: object) -> TaskVector:
        # sum([...]) starts from 0
        if _is_zero(other):
            return self
        return NotImplemented

    def __sub__(self, other: object) -> TaskVector:
        if isinstance(other, TaskVector):
            return self._combined(-other)
        if _is_zero(other):
            return self
        return NotImplemented

    def __rsub__(self, other: object) -> TaskVector:
        if _is_zero(other):
            return -self
        return NotImplemented

    def __neg__(self) -> TaskVector:
        return self._scaled(-1.0)

    def __pos__(self) -> TaskVector:
        return self

    def __mul__(self, other: object) -> TaskVector:
        if not _is_scalar(other):
            return NotImplemented
        return self._scaled(_finite(other, "multiply a task vector by"))

    __rmul__ = __mul__

    def __truediv__(self, other: object) -> TaskVector:
        if not _is_scalar(other):
            return NotImplemented
        value = _finite(other, "divide a task vector by")
        if value == 0:
            raise ZeroDivisionError("cannot divide a task vector by 0")
        return self._scaled(1.0 / value)

    def _scaled(self, k: float) -> TaskVector:
        return TaskVector(self.base_fingerprint, _collect((w * k, s) for w, s in self.terms), self.kind)

    def __repr__(self) -> str:
        from ._format.fingerprint import short

        body = " + ".join(f"{w:g}·{s}" for w, s in self.terms) or "0"
        return f"TaskVector({body}; base {short(self.base_fingerprint)})"

    @property
    def weights(self) -> tuple[float, ...]:
        """ω of each term, in order."""
        return tuple(w for w, _ in self.terms)

    # ------------------------------------------------------------------ apply

    @classmethod
    def _of_skills(cls, skills: Sequence[Any], base_fingerprint: str) -> TaskVector:
        """Σ ω_k τ_k of an install's skills (``_Skill``: an open artifact, its digest and ω), in their order.

        Terms are kept as listed (not collected), one per skill, so term k is skill k; the
        vector's kind is the skills' own when they agree (the recipe carries each skill's kind).
        """
        kinds = {s.artifact.manifest.kind for s in skills}
        terms = tuple(
            (float(s.weight), ArtifactSource(s.digest, Path(s.artifact.path), s.artifact.manifest.label))
            for s in skills
        )
        return cls(base_fingerprint, terms, kinds.pop() if len(kinds) == 1 else "task_vector")

    def _write_into(
        self,
        general: Any,
        staging: Path,
        opened: Sequence[Any],
        known: Any,
        progress: Progress,
        merge: Any,
        out_dtype: Any = None,
    ) -> tuple[dict[str, tuple[str, list[int], str]], dict[str, dict]]:
        """Write θ_G merged with this vector into ``staging`` in G's shard layout: the one tensor stream.

        Both :meth:`apply_to` and install (:func:`tvreg._env.materialise._materialise`) write
        weights only through here, so a task vector and an install of the same terms are one
        arithmetic. ``opened`` holds this vector's terms opened for reading, in term order;
        ``merge`` is the method's recipe, θ_pre when it needs one and the device. Returns
        each tensor's (dtype, shape, sha256) and the same per shard file.
        """
        from ._env.materialise import _write_weights

        if len(opened) != len(self.terms):
            raise AssertionError(f"{len(opened)} sources opened for {len(self.terms)} terms")
        return _write_weights(general, opened, staging, known, progress, merge, out_dtype)


    def apply_to(
        self,
        general: str | os.PathLike[str],
        out: str | os.PathLike[str],
        *,
        scaling_coef: float = 1.0,
        method: str = "task_arithmetic",
        base: str | os.PathLike[str] | None = None,
        base_fingerprint: str | None = None,
        output_dtype: str | None = None,
        device: str = "auto",
        progress: Progress | None = None,
        **params: object,
    ) -> Path:
        """Write θ_G merged with this task vector into a new model directory ``out``.

        Tensor by tensor, in G's storage order and shard layout, through install's merge
        engine: the same method, parameters and ω give the same bits as ``tvreg install``
        of the same skills. At most a few tensors are in memory; the result is staged
        beside ``out`` and renamed into place, so ``out`` is complete or absent.

        Args:
            general: G — a model directory, ``.safetensors`` file or cached Hub id; θ_pre
                itself when G is the pretrained model.
            out: the new model directory (must not exist, or be empty). G's other files
                (config, tokenizer) are linked or copied beside the merged weights.
            scaling_coef: multiplies every ω (mlfoundations' ``apply_to(..., scaling_coef)``).
            method: a merge method of :mod:`tvreg._merge` (``task_arithmetic``, ``ties``, ...);
                ``params`` are its parameters (``density=0.2``, ``base_weights=PATH``, ...).
            base, base_fingerprint: which θ_pre G derives from, when G is not θ_pre itself
                (a path is fingerprinted and its tensors checked against G's); not needed
                when G is a ``tvreg init``-ed environment, whose lock records it.
            output_dtype: ``float32``, ``float16`` or ``bfloat16`` (default: G's own dtypes).
            device: ``auto`` (default, as install: CUDA when torch sees a GPU and Triton is
                installed), ``cuda`` or ``cpu``.

        Returns:
            ``out``.

        Raises:
            IncompatibleBase: G does not derive from this vector's base, or nothing says which base it does.
            TensorMismatch: a τ tensor is not in G or has another shape.
            MergeError: an unknown method or a bad parameter.
            ArtifactError / CheckpointError: a source changed since it was loaded, or cannot be read.
            TvregError: ``out`` already exists.
        """
        from ._env.lockfile import Lock
        from ._env.materialise import (
            _Merge,
            _open_base_weights,
            _set_config_dtype,
            _write_index,
        )
        from ._env.skillset import _check_tensors
        from ._env.staging import _clean_stale_staging, _stage_other_files
        from ._env.weights import _check_output_dtype, _resolve_params
        from ._format.checkpoint import INDEX_NAME, Checkpoint, resolve_model_path
        from ._format.fingerprint import fingerprint_of_hashes, remember, tensor_hashes
        from ._format.fsutil import disk_errors, free_bytes, fsync_dir
        from ._format.safetensors_io import itemsize
        from ._merge import get_method
        from ._merge.device import merger_for, resolve_device
        from ._util.progress import NULL_PROGRESS
        from .errors import TvregError

        progress = progress or NULL_PROGRESS
        vector = self if scaling_coef == 1.0 else self * scaling_coef
        out = Path(out)
        if out.exists() and not (out.is_dir() and not any(out.iterdir())):
            raise TvregError(
                f"`{out}` already exists; `apply_to` writes a new model directory.",
                hints=["choose a new path, or remove the old one first"],
            )
        merge_method = get_method(method)
        resolved = _resolve_params(method, params)
        out_dtype = _check_output_dtype(output_dtype)
        merger = merger_for(resolve_device(device))
        single_file = resolve_model_path(general).is_file()
        with contextlib.ExitStack() as stack:
            g = stack.enter_context(Checkpoint.open(general))
            known = tensor_hashes(g, progress=progress)
            gfp = fingerprint_of_hashes(known)
            bfp = vector._require_target(general, g, gfp, base, base_fingerprint, progress)
            pieces = [stack.enter_context(_opened(source, progress)) for _, source in vector.terms]
            merge_method.check_skills([(p.artifact.manifest.label, vector.kind) for p in pieces])
            skills = cast(Any, pieces)  # duck-typed: what materialise and skillset read of a _Skill
            _check_tensors(skills, g)
            recipe = merge_method.recipe(list(vector.weights), [vector.kind] * len(pieces), resolved)
            pre = None
            if recipe.needs_base_weights:
                lock = Lock(base_fingerprint=bfp, general_fingerprint=gfp)
                pre = stack.enter_context(
                    _open_base_weights(str(resolved["base_weights"]), lock, g, progress)
                )
            out.parent.mkdir(parents=True, exist_ok=True)
            needed = g.total_bytes + (1 << 20)
            if free_bytes(out.parent) < needed:
                with disk_errors(out, needed):
                    raise OSError(28, "No space left on device")
            _clean_stale_staging(out)
            staging = out.parent / f".{out.name}.tvreg-{os.getpid()}-{time.time_ns()}.staging"
            moved = False
            try:
                staging.mkdir()
                if not single_file:
                    with disk_errors(staging):
                        _stage_other_files(g.directory, staging, {p.name for p in g.files})
                hashes, per_file = vector._write_into(
                    g, staging, skills, known, progress, _Merge(recipe, pre, merger), out_dtype
                )
                with disk_errors(staging):
                    if g.is_sharded:
                        total = sum(math.prod(shape) * itemsize(dt) for dt, shape, _ in hashes.values())
                        _write_index(g.directory / INDEX_NAME, staging / INDEX_NAME, total, out_dtype)
                    if out_dtype is not None and not single_file:
                        _set_config_dtype(staging, output_dtype)
                fsync_dir(staging)
                if out.is_dir():
                    out.rmdir()
                os.rename(staging, out)
                moved = True
                fsync_dir(out.parent)
            finally:
                if not moved:
                    shutil.rmtree(staging, ignore_errors=True)
        for fname, entries in per_file.items():
            remember(out / fname, entries)
        return out

    def _require_target(
        self, where: object, general: Any, gfp: str, base: Any, base_fingerprint: str | None, progress: Any
    ) -> str:
        """θ_pre's fingerprint for G, checked to be this vector's base; else IncompatibleBase naming both."""
        from ._env.environment import check_general_against_base
        from ._env.lockfile import read_lock
        from ._format.checkpoint import Checkpoint
        from ._format.fingerprint import fingerprint, short
        from .errors import IncompatibleBase

        if self.kind == "delta_from_general":
            if gfp != self.base_fingerprint:
                raise IncompatibleBase(
                    f"`{where}` is not the general model this delta was built from: its fingerprint is "
                    f"{short(gfp)}, the delta's G is {short(self.base_fingerprint)}.",
                    expected=self.base_fingerprint,
                    found=gfp,
                    hints=["a WiSE-FT delta θ_CFT − θ_G applies only to that G"],
                )
            return gfp
        if base is not None:
            with Checkpoint.open(base) as pre:
                found = fingerprint(pre, progress=progress)
                check_general_against_base(general, pre)
            said = f"`base={base}`"
        elif base_fingerprint is not None:
            found, said = base_fingerprint, f"`base_fingerprint={short(base_fingerprint)}`"
        elif gfp == self.base_fingerprint:
            return gfp
        else:
            lock = read_lock(Path(general.directory)) if Path(general.directory).is_dir() else None
            if lock is None or lock.general_fingerprint != gfp:
                raise IncompatibleBase(
                    f"`{where}` (fingerprint {short(gfp)}) is not the base these task vectors were built on "
                    f"({short(self.base_fingerprint)}), and nothing says which base it derives from.",
                    expected=self.base_fingerprint,
                    found=gfp,
                    hints=[
                        "pass `base=PRETRAINED_DIR` (or `base_fingerprint=HEX`) when G is a fine-tune of it"
                    ],
                )
            found, said = lock.base_fingerprint, f"the `tvreg.lock` of `{where}`"
        if found != self.base_fingerprint:
            raise IncompatibleBase(
                f"these task vectors were built on base {short(self.base_fingerprint)}, but {said} says "
                f"`{where}` derives from base {short(found)}.",
                expected=self.base_fingerprint,
                found=found,
                hints=["build the task vectors from the pretrained model G was fine-tuned from"],
            )
        return found

    # ------------------------------------------------------------------ save

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        codec: str = "exact",
        codec_options: dict[str, object] | None = None,
        name: str | None = None,
        version: str = "1.0.0",
        dataset_size: int | None = None,
        description: str = "",
        progress: Progress | None = None,
    ) -> Path:
        """Write Σ ω_k τ_k as one ``.tvskill`` artifact (atomically), via the builder of ``tvreg build``.

        Per tensor, the terms' τ are summed in float32 in the listed order
        (``fp32(ω_1)·τ_1 + fp32(ω_2)·τ_2 + …``), checked for NaN/Inf, coded by ``codec``
        and written; a single term with ω = 1 is τ itself, so with the lossless ``exact``
        codec ``TaskVector.load(path)`` applies to the same bits as this vector.

        Args:
            path: the ``.tvskill`` to write.
            codec, codec_options: as ``tvreg build --codec`` (``exact`` is lossless).
            name, version: the manifest's skill name (default: the file's stem) and version.
            dataset_size: |D| for the default install weight, when meaningful.

        Returns:
            ``path``.

        Raises:
            InvalidName: the name or version is malformed.
            InvalidCodecOption: unknown codec or parameter.
            TensorMismatch: terms disagree on a tensor's shape, or the sum has NaN/Inf.
            ArtifactError / CheckpointError: a source changed since it was loaded.
        """
        from ._build.build import write_skill
        from ._format.codecs import make_codec
        from ._format.manifest import Manifest
        from ._merge import fp32
        from ._names import validate_name, validate_version
        from ._util.progress import NULL_PROGRESS
        from ._version import __version__
        from .errors import TensorMismatch, TvregError

        progress = progress or NULL_PROGRESS
        path = Path(path)
        name = name if name is not None else path.name.split(".")[0]
        validate_name(name)
        validate_version(version)
        if dataset_size is not None and (
            isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size <= 0
        ):
            raise TvregError(f"`dataset_size` must be a positive integer, not {dataset_size!r}.")
        if not self.terms:
            raise TvregError(
                "this task vector has no terms (every ω is 0); there is nothing to save.",
                hints=["add a task vector with a non-zero weight"],
            )
        coder = make_codec(codec, codec_options)
        with contextlib.ExitStack() as stack:
            pieces = [stack.enter_context(_opened(source, progress)) for _, source in self.terms]
            layout: dict[str, tuple[tuple[int, ...], str]] = {}
            for piece in pieces:
                for tname, entry in piece.artifact.manifest.tensors.items():
                    have = layout.setdefault(tname, (tuple(entry.shape), entry.dtype))
                    if have[0] != tuple(entry.shape):
                        raise TensorMismatch(
                            f"`{piece.artifact.manifest.label}` has tensor `{tname}` with shape "
                            f"{list(entry.shape)}, another term has {list(have[0])}.",
                            tensor=tname,
                        )
            weights = [fp32(w) for w in self.weights]

            def summed(tname: str):
                acc = None
                for w, piece in zip(weights, pieces, strict=True):
                    if tname not in piece.artifact.manifest.tensors:
                        continue
                    tau = piece.artifact.decode_form(tname).to_dense().reshape(layout[tname][0])
                    tau = tau.to(dtype=tau.dtype, copy=True).mul_(w)
                    acc = tau if acc is None else acc.add_(tau)
                return acc

            terms = [{"weight": w, "source": str(s), "id": _source_id(s)} for w, s in self.terms]
            manifest = Manifest(
                name=name,
                version=version,
                base_fingerprint=self.base_fingerprint,
                kind=self.kind,
                dataset_size=dataset_size,
                description=description,
                source={"codec": coder.describe(), "kind": "task_vector_sum", "terms": terms},
                created_by=f"tvreg {__version__}",
            )
            total = sum(math.prod(shape) * 4 for shape, _ in layout.values())
            write_skill(
                path, manifest, [(t, summed) for t in layout], lambda t: layout[t], coder,
                total=total, progress=progress,
            )  # fmt: skip
        return path


# ---------------------------------------------------------------------- helpers


def _is_zero(value: object) -> bool:
    return type(value) is int and value == 0


def _is_scalar(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite(value: object, what: str) -> float:
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        from .errors import WeightError

        raise WeightError(f"cannot {what} {number}; a weight ω must be a finite number.")
    return number


def _collect(terms: Iterable[tuple[float, Source]]) -> tuple[tuple[float, Source], ...]:
    """Terms with one entry per source (ω summed, first position kept), zero weights dropped."""
    order: list[Source] = []
    weight: dict[Source, float] = {}
    for w, s in terms:
        if s not in weight:
            order.append(s)
            weight[s] = 0.0
        weight[s] += float(w)
    return tuple((weight[s], s) for s in order if weight[s] != 0.0)


def _source_id(source: Source) -> str:
    if isinstance(source, ArtifactSource):
        return source.digest
    return f"{source.pretrained_fingerprint}..{source.finetuned_fingerprint}"


@dataclass(frozen=True)
class _Entry:
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class _PairManifest:
    """The parts of :class:`~tvreg._format.manifest.Manifest` the merge stream reads, for a checkpoint pair."""

    name: str
    label: str
    tensors: dict[str, _Entry]


class _PairArtifact:
    """θ_ft − θ_pre read tensor by tensor, shaped like an opened artifact (``manifest``, ``decode_form``)."""

    def __init__(self, source: CheckpointSource, pre: Any, ft: Any) -> None:
        from ._build.build import _finetune_deltas

        self._pre, self._ft = pre, ft
        self._delta: dict[str, Any] = dict(_finetune_deltas(pre, ft))
        entries = {n: _Entry(tuple(i.shape), i.dtype) for n, i in pre.infos().items() if i.is_float}
        self.manifest = _PairManifest(source.label, source.label, entries)
        self.path = Path(source.finetuned)

    def decode_form(self, name: str, *, lazy: bool = False) -> Any:
        """τ of ``name`` as a dense form (``lazy`` is accepted for the artifact's signature; a delta is computed now)."""
        from ._build.build import _check_finite
        from ._format.codecs.forms import Dense

        tau = self._delta[name](name)
        _check_finite(name, tau)
        return Dense(shape=tuple(tau.shape), values=tau.reshape(-1))


@dataclass
class _Piece:
    """One term opened for reading: what :func:`tvreg._env.materialise._write_weights` reads of a skill."""

    artifact: Any


@contextlib.contextmanager
def _opened(source: Source, progress: Any) -> Iterator[_Piece]:
    """Open a term's source, refusing one whose bytes changed since the vector was made."""
    from ._format.artifact import Artifact, file_digest
    from ._format.checkpoint import Checkpoint
    from ._format.fingerprint import fingerprint, short
    from .errors import CheckpointError, CorruptArtifact

    if isinstance(source, ArtifactSource):
        found = file_digest(source.path) if source.path.is_file() else None
        if found != source.digest:
            raise CorruptArtifact(
                f"`{source.path}` changed since it was loaded as a task vector"
                + (f": it now hashes to {found}, not {source.digest}." if found else " (it is gone)."),
                hints=["load it again with `TaskVector.load`"],
            )
        with Artifact(source.path) as art:
            yield _Piece(art)
        return
    with Checkpoint.open(source.pretrained) as pre, Checkpoint.open(source.finetuned) as ft:
        for ckpt, want, where in (
            (pre, source.pretrained_fingerprint, source.pretrained),
            (ft, source.finetuned_fingerprint, source.finetuned),
        ):
            found = fingerprint(ckpt, progress=progress)
            if found != want:
                raise CheckpointError(
                    f"`{where}` changed since the task vector was made from it: its fingerprint is now "
                    f"{short(found)}, not {short(want)}.",
                    hints=["make the task vector again with `TaskVector.from_checkpoints`"],
                )
        yield _Piece(_PairArtifact(source, pre, ft))
