"""``tvreg check``: gather the sketches of a planned skill set and estimate how its pairs interfere.

Why a step of its own: the interference of a set of skills is known before anything is
merged, from sketches of a few KB per tensor (:mod:`tvreg._format.sketch`), so a user can see
that coding and safety will fight *before* downloading either. The set checked is what
``tvreg install`` would produce: the skills the model already has (at their locked ω)
plus the requested ones (local files, or registry requirements resolved like install).

Where each sketch comes from, cheapest first: the local sketch cache (by artifact
digest); the registry's copy (``GET .../sketch``); and, for a version published before
sketches existed, its artifact, downloaded (after saying how much) and sketched locally.
Local files and installed skills are sketched from the artifact on disk when not cached.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .._format.checkpoint import Checkpoint
from .._format.interference import InterferenceReport, SkillEntry, check_sketches
from .._format.sketch import Sketch, load_cached, sketch_for, store_cached
from .._registry.refs import SkillRef, parse_ref
from .._util.progress import NULL_PROGRESS, Progress
from ..errors import SketchError, SketchMissing, TensorMismatch
from .lockfile import Lock

if TYPE_CHECKING:
    from .._registry.client import RegistryClient
    from .._registry.fetch import Resolved


def _human(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def check_shapes(path: str | os.PathLike[str], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse an artifact whose tensors are not the model's, from its header, before any tensor is decoded.

    Why before: a manifest's shape is a claim, and sketching expands each tensor to the
    shape it declares; a skill of this model can only have this model's shapes (or, for
    a general model that added tokens, fewer leading rows), so nothing else is decoded.

    Raises:
        TensorMismatch: a tensor the model lacks, or one of another shape.
    """
    from .._format.artifact import Artifact
    from .environment import row_extension

    with Artifact(path) as art:
        m = art.manifest
    for name, entry in m.tensors.items():
        if name not in shapes:
            raise TensorMismatch(
                f"skill `{m.label}` changes tensor `{name}`, which this model does not have.", tensor=name
            )
        if row_extension(entry.shape, shapes[name]) is None:
            raise TensorMismatch(
                f"skill `{m.label}` has tensor `{name}` with shape {list(entry.shape)}, "
                f"but this model's is {list(shapes[name])}.",
                tensor=name,
            )


def default_weight(dataset_size: int | None, dataset_unit: str, lock: Lock) -> tuple[float, str]:
    """ω = |D|/|G| as install computes it, or 1 (said so) when |D| or |G| is unknown."""
    if dataset_size and lock.general_size and dataset_unit == lock.general_size_unit:
        return dataset_size / lock.general_size, f"|D|/|G| = {dataset_size}/{lock.general_size}"
    return 1.0, "assumed (|D| or |G| unknown; pass --weight)"


def registry_sketch(
    client: RegistryClient,
    ref: SkillRef,
    version: dict,
    *,
    download: bool = True,
    progress: Progress = NULL_PROGRESS,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> Sketch:
    """The sketch of one registry version (``version`` is its version object).

    ``shapes`` (the model's tensor shapes) are checked against a downloaded artifact
    before it is decoded (:func:`check_shapes`).

    Raises:
        SketchMissing: the version has no sketch and ``download`` is False.
        SketchError: the registry's sketch is malformed or of another artifact.
    """
    digest = version["digest"]
    label = f"{ref.name}@{version['version']}"
    cached = load_cached(digest)
    if cached is not None:
        return cached
    if version.get("sketch"):
        try:
            sketch = Sketch.from_bytes(
                client.sketch(ref, version["version"]), where=f"the sketch of `{label}`"
            )
        except SketchMissing:
            sketch = None
        if sketch is not None:
            if sketch.artifact_digest != digest:
                raise SketchError(
                    f"the registry's sketch of `{label}` describes artifact {sketch.artifact_digest}, "
                    f"not {digest}."
                )
            store_cached(sketch)
            return sketch
    size = int(version.get("size") or 0)
    if not download:
        raise SketchMissing(
            f"`{label}` was published without a sketch, so checking it needs its whole artifact "
            f"({_human(size)}).",
            hints=[
                "run without `--no-download` to fetch it, or ask the publisher to run `tvreg publish` "
                "again, which uploads only the sketch"
            ],
        )
    progress.warn(
        f"`{label}` was published without a sketch; downloading its artifact ({_human(size)}) to compute one."
    )
    from .._registry.fetch import fetch

    got = fetch(ref, base_fingerprint=None, client=client, info={"versions": [version]}, progress=progress)
    if shapes is not None:
        check_shapes(got.path, shapes)
    return sketch_for(got.path, digest=digest, progress=progress)


def check(
    skills: Sequence[str],
    *,
    into: str | os.PathLike[str],
    weights: Mapping[str, float] | None = None,
    registry: str | None = None,
    token: str | None = None,
    resolution: str = "highest",
    download: bool = True,
    progress: Progress = NULL_PROGRESS,
) -> InterferenceReport:
    """Estimate the pairwise interference of the skills an install into ``into`` would merge.

    Args:
        skills: ``.tvskill`` paths and registry requirements, as for ``tvreg install``.
        into: the model environment; its installed skills are included at their locked ω.
        weights: ω per skill name (``ns/skill`` or the bare skill name), as ``--weight``.
        download: for registry versions published without a sketch, download the artifact
            and sketch it locally (saying how much first); False raises instead.

    Returns:
        An :class:`~tvreg._format.interference.InterferenceReport` over every pair.

    Raises:
        ModelEnvironmentError: ``into`` is not a model environment.
        ResolutionImpossible / NotFound: as for install.
        SketchMissing: a version has no sketch and ``download`` is False.
    """
    from .._registry.fetch import resolve_install
    from .environment import require_lock

    lock = require_lock(Path(into))
    planned = resolve_install(
        list(skills), into=into, registry=registry, token=token, resolution=resolution, download=False
    )
    return check_resolved(
        planned, lock=lock, into=into, weights=weights, registry=registry, token=token, download=download,
        progress=progress,
    )  # fmt: skip


def check_resolved(
    planned: Sequence[Resolved],
    *,
    lock: Lock,
    into: str | os.PathLike[str],
    weights: Mapping[str, float] | None = None,
    registry: str | None = None,
    token: str | None = None,
    download: bool = True,
    progress: Progress = NULL_PROGRESS,
) -> InterferenceReport:
    """The interference report of skills already resolved (the install pipeline's check step).

    Install resolves once and hands its resolution here, so the check sees exactly the set
    the install will merge. With ``download=False`` (what install passes, for dry runs and
    real runs alike) nothing is downloaded: registry versions are judged by their
    published sketch and local files are sketched from their own bytes.
    """
    from .._format.artifact import Artifact
    from .store import artifact_path

    weights = dict(weights or {})
    with Checkpoint.open(Path(into)) as model:
        shapes = {name: tuple(info.shape) for name, info in model.infos().items()}

    def weight(names: Sequence[str], dataset_size: int | None, unit: str) -> tuple[float, str]:
        for n in names:
            if n in weights:
                return float(weights[n]), "user"
        return default_weight(dataset_size, unit, lock)

    entries: list[SkillEntry] = []
    new_names: set[str] = set()
    sketch: Sketch | None
    with contextlib.ExitStack() as stack:
        clients: dict[str | None, RegistryClient] = {}
        for item in planned:
            if item.origin is None:
                assert item.path is not None
                check_shapes(item.path, shapes)
                sketch = sketch_for(item.path, progress=progress)
                with Artifact(item.path) as art:
                    m = art.manifest
                new_names.add(m.name)
                w, source = weight([m.name], m.dataset_size, m.dataset_unit)
                entries.append(SkillEntry(m.label, sketch, w, source))
                continue
            assert item.name and item.version and item.digest
            ref = parse_ref(f"{item.name}@{item.version}")
            sketch = load_cached(item.digest)
            if sketch is None:
                url = item.origin.registry or registry
                if url not in clients:
                    from .._registry.client import client_for  # imported here: local files need no HTTP stack

                    clients[url] = stack.enter_context(client_for(url, token))
                version = clients[url].version(ref, item.version)
                if not version.get("sketch") and item.path is not None:
                    check_shapes(item.path, shapes)
                    sketch = sketch_for(item.path, digest=item.digest, progress=progress)
                else:
                    sketch = registry_sketch(
                        clients[url], ref, version, download=download, progress=progress, shapes=shapes
                    )
            new_names.update({item.name, ref.skill})
            w, source = weight([item.name, ref.skill], item.dataset_size, item.dataset_unit)
            entries.append(SkillEntry(f"{item.name}@{item.version}", sketch, w, source))
    installed: list[SkillEntry] = []
    for locked in lock.skills:
        if locked.name in new_names:
            continue
        sketch = load_cached(locked.digest)
        if sketch is None:
            stored = artifact_path(locked.digest)
            if not stored.is_file():
                progress.warn(
                    f"installed skill `{locked.label}` is missing from the local store; left out of the check."
                )
                continue
            check_shapes(stored, shapes)
            sketch = sketch_for(stored, digest=locked.digest, progress=progress)
        if locked.name in weights:
            w, source = float(weights[locked.name]), "user"
        else:
            w, source = locked.weight, f"installed ({locked.weight_source})"
        installed.append(SkillEntry(locked.label, sketch, w, source))
    return check_sketches(installed + entries)
