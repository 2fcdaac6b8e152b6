"""A compact, comparable summary of a task vector: what ``tvreg check`` reads instead of τ.

Why: whether two skills interfere (opposite directions, sign conflicts on the parameters
both change most, one drowning the other) is a question about pairs of τ, and answering
it from the full vectors means downloading every skill. A sketch answers it from a few
KB per tensor, computed once when the skill is built or published.

Per tensor the sketch keeps (``docs/format.md``, "Sketches"):

- ``norm`` (‖τ‖₂), ``positive_fraction`` and ``top_threshold`` (the |τ| at which the
  tensor's top :data:`TOP_FRACTION` by magnitude begins), exactly;
- a CountSketch ``projection`` of ``projection_dim`` numbers: coordinate *i* is added,
  with sign s(i) (the hash's lowest bit), into bucket h(i) (its top bits). ⟨P a, P b⟩ is
  an unbiased estimate of ⟨a, b⟩;
- ``sample``: τ at ``sample_size`` coordinates drawn with replacement, for sign-conflict
  estimates on the top-magnitude parameters of both skills.

Bucket, sign and sample positions come from splitmix64 of a seed derived from
(:data:`SKETCH_VERSION`, tensor name), so two skills' sketches of the same tensor use
the same projection and the same positions, on any machine, and no projection matrix
exists anywhere. Tensors of at most ``projection_dim + sample_size`` elements are stored
whole (``exact``): a sketch would not be smaller. Sums run in float64 through numpy's serial
loops (``bincount``, pairwise ``add.reduce``; never BLAS or threaded reductions), so the
same τ gives the same bytes whatever the thread count or tensor order.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._merge.trim import kth_largest_magnitude
from ..errors import SketchError
from .codecs import jit, zstd_frame
from .safetensors_io import MAX_HEADER_BYTES, build_header

SKETCH_VERSION = 1
SKETCH_FORMAT = "tvsketch"
METADATA_KEY = "tvreg.sketch"
DEFAULT_PROJECTION_DIM = 512
DEFAULT_SAMPLE_SIZE = 2048
TOP_FRACTION = 0.2
"""The share of a tensor's coordinates, by magnitude, that counts as "changed most" (TIES's k=20%)."""

_CHUNK = 1 << 20
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SAMPLE_SALT = 0x5A4D504C45000001
_LAYER_RE = re.compile(r"^(.*?\.\d+)\.")


def layer_of(tensor: str) -> str:
    """The layer a tensor belongs to: the name up to its first numeric part, else the module.

    Example:
        >>> layer_of("model.layers.3.self_attn.q_proj.weight"), layer_of("lm_head.weight")
        ('model.layers.3', 'lm_head')
    """
    m = _LAYER_RE.match(tensor)
    if m:
        return m.group(1)
    return tensor.rsplit(".", 1)[0] if tensor.endswith((".weight", ".bias")) else tensor


def _seed(tensor: str) -> int:
    digest = hashlib.sha256(f"tvreg-sketch/{SKETCH_VERSION}/{tensor}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _splitmix(seed: int, start: int, stop: int) -> np.ndarray:
    """splitmix64 of counters ``start..stop-1`` under ``seed`` (uint64 arithmetic wraps by definition)."""
    x = np.arange(start + 1, stop + 1, dtype=np.uint64)
    x *= _GOLDEN
    x += np.uint64(seed)
    x ^= x >> np.uint64(30)
    x *= _MIX1
    x ^= x >> np.uint64(27)
    x *= _MIX2
    x ^= x >> np.uint64(31)
    return x


def sample_positions(tensor: str, numel: int, size: int) -> np.ndarray:
    """The ``size`` coordinates (with replacement) every skill samples from tensor ``tensor``."""
    return (_splitmix(_seed(tensor) ^ _SAMPLE_SALT, 0, size) % np.uint64(numel)).astype(np.int64)


@dataclass(frozen=True)
class TensorSketch:
    """The sketch of one tensor's τ. ``projection`` is None when ``sample`` holds τ whole."""

    numel: int
    norm: float
    positive_fraction: float
    top_threshold: float
    sample: np.ndarray
    projection: np.ndarray | None = None

    @property
    def exact(self) -> bool:
        return self.projection is None


def sketch_tensor(
    name: str,
    tau: torch.Tensor,
    *,
    projection_dim: int = DEFAULT_PROJECTION_DIM,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
) -> TensorSketch:
    """Sketch one tensor of τ, streaming over it in 1M-element chunks.

    Args:
        name: the model tensor's name; it seeds the projection and the sample positions.
        tau: τ for that tensor (any float dtype; read as float32).
        projection_dim: buckets of the CountSketch, a power of two ≥ 2.
        sample_size: sampled coordinates for sign-conflict estimates.
    """
    flat = tau.detach().reshape(-1).to(torch.float32).contiguous().numpy()
    n = flat.size
    if n == 0:
        return TensorSketch(0, 0.0, 0.0, 0.0, np.zeros(0, np.float32))
    top = min(n, max(1, math.ceil(TOP_FRACTION * n)))
    whole = torch.from_numpy(flat)

    def chunks():
        return ((s, whole[s : s + _CHUNK]) for s in range(0, n, _CHUNK))

    starts = range(0, n, _CHUNK)
    positives, squares_of = [0] * len(starts), [0.0] * len(starts)
    seed = _seed(name)
    shift = np.uint64(64 - (projection_dim.bit_length() - 1))
    whole_kept = n <= projection_dim + sample_size
    compiled = not whole_kept and jit.ready(n)
    buckets = np.zeros((len(starts) if compiled else 0, projection_dim), np.float64)
    lanes = jit.MagnitudeLanes()  # the cutoff's first histogram, counted beside the CountSketch
    threshold = 0.0 if compiled else kth_largest_magnitude(n, top, chunks)

    def chunk(i: int) -> None:
        # Chunks run on several threads; each sum is kept apart and they are added in chunk order
        # below, so the result is the same bits as one thread going through them in turn.
        part = flat[starts[i] : starts[i] + _CHUNK]
        positives[i] = int(np.count_nonzero(part > 0))
        wide = zstd_frame.scratch(8 * part.size, name, slot="sketch").numpy().view(np.float64)
        np.copyto(wide, part)  # a reused buffer: fresh pages cost more than the sum
        squares_of[i] = float(np.add.reduce(np.multiply(wide, wide, out=wide)))
        if compiled:
            jit.count_sketch(part, seed, int(shift), starts[i], buckets[i], lanes.here())

    zstd_frame.each_chunk(len(starts), chunk)
    if compiled:
        threshold = kth_largest_magnitude(n, top, chunks, lanes=lanes.total())
    positive = sum(positives)
    squares = 0.0
    for part_squares in squares_of:
        squares += part_squares
    norm = math.sqrt(squares)
    if whole_kept:
        return TensorSketch(n, norm, positive / n, threshold, flat.copy())
    projection = np.zeros(projection_dim, np.float64)
    for start in starts:
        if compiled:  # the same hashes and sums as the NumPy loop (tests compare both paths)
            projection += buckets[start // _CHUNK]
            continue
        part = flat[start : start + _CHUNK].astype(np.float64)
        h = _splitmix(seed, start, start + part.size)
        part.view(np.uint64)[...] ^= h << np.uint64(63)  # the sign: flip where h is odd
        projection += np.bincount((h >> shift).view(np.int64), weights=part, minlength=projection_dim)
    sample = flat[sample_positions(name, n, sample_size)]
    return TensorSketch(n, norm, positive / n, threshold, sample, projection.astype(np.float32))


@dataclass(frozen=True)
class Sketch:
    """The sketch of a whole skill; compare two with :mod:`tvreg._format.interference`.

    ``artifact_digest`` binds it to one artifact's bytes (``sha256:<hex>``), so a registry
    can refuse a sketch uploaded for the wrong version.
    """

    skill: str
    version: str
    base_fingerprint: str
    artifact_digest: str
    tensors: dict[str, TensorSketch] = field(default_factory=dict)
    projection_dim: int = DEFAULT_PROJECTION_DIM
    sample_size: int = DEFAULT_SAMPLE_SIZE
    top_fraction: float = TOP_FRACTION
    sketch_version: int = SKETCH_VERSION

    @property
    def label(self) -> str:
        return f"{self.skill}@{self.version}"

    @property
    def norm(self) -> float:
        return math.sqrt(math.fsum(t.norm * t.norm for t in self.tensors.values()))

    def layer_norms(self) -> dict[str, float]:
        """‖τ‖ per layer (see :func:`layer_of`), in the order layers first appear by name."""
        squares: dict[str, list[float]] = {}
        for name in sorted(self.tensors, key=_natural):
            squares.setdefault(layer_of(name), []).append(self.tensors[name].norm ** 2)
        return {layer: math.sqrt(math.fsum(v)) for layer, v in squares.items()}

    def to_bytes(self) -> bytes:
        """The sketch as a safetensors file; equal sketches give equal bytes."""
        entries: list[tuple[str, str, tuple[int, ...]]] = []
        arrays: list[np.ndarray] = []
        meta_tensors = {}
        for name in sorted(self.tensors):
            t = self.tensors[name]
            meta_tensors[name] = {
                "numel": t.numel,
                "norm": t.norm,
                "positive_fraction": t.positive_fraction,
                "top_threshold": t.top_threshold,
                "exact": t.exact,
            }
            parts = [("values" if t.exact else "sample", t.sample)]
            if t.projection is not None:
                parts.append(("projection", t.projection))
            for suffix, arr in parts:
                entries.append((f"{name}::{suffix}", "F32", (int(arr.size),)))
                arrays.append(np.ascontiguousarray(arr, dtype="<f4"))
        meta = {
            "sketch_version": self.sketch_version,
            "skill": self.skill,
            "version": self.version,
            "base_fingerprint": self.base_fingerprint,
            "artifact_digest": self.artifact_digest,
            "projection_dim": self.projection_dim,
            "sample_size": self.sample_size,
            "top_fraction": self.top_fraction,
            "tensors": meta_tensors,
        }
        head, _ = build_header(
            entries,
            {"format": SKETCH_FORMAT, METADATA_KEY: json.dumps(meta, sort_keys=True, separators=(",", ":"))},
        )
        return head + b"".join(a.tobytes() for a in arrays)

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str = "the sketch") -> Sketch:
        """Parse and validate a sketch file.

        Raises:
            SketchError: not a tvreg sketch, a newer sketch version, or inconsistent sizes.
        """
        meta, tensors = read_sketch_header(data, where=where)
        body = memoryview(data)[8 + int.from_bytes(data[:8], "little") :]
        try:
            out: dict[str, TensorSketch] = {}
            for name, info in meta["tensors"].items():
                arrays = {}
                for suffix in ("values", "sample", "projection"):
                    span = tensors.get(f"{name}::{suffix}")
                    if span is not None:
                        arrays[suffix] = np.frombuffer(body[span[0] : span[1]], dtype="<f4").copy()
                values = arrays.get("values") if info["exact"] else arrays.get("sample")
                projection = None if info["exact"] else arrays.get("projection")
                if values is None or (not info["exact"] and projection is None):
                    raise KeyError(name)
                out[name] = TensorSketch(
                    int(info["numel"]),
                    float(info["norm"]),
                    float(info["positive_fraction"]),
                    float(info["top_threshold"]),
                    values,
                    projection,
                )
            return cls(
                skill=str(meta["skill"]),
                version=str(meta["version"]),
                base_fingerprint=str(meta["base_fingerprint"]),
                artifact_digest=str(meta["artifact_digest"]),
                tensors=out,
                projection_dim=int(meta["projection_dim"]),
                sample_size=int(meta["sample_size"]),
                top_fraction=float(meta["top_fraction"]),
                sketch_version=int(meta["sketch_version"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SketchError(
                f"{where} is not a valid tvreg sketch: its entry for {exc} is incomplete."
            ) from exc


def _natural(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def read_sketch_header(data: bytes, *, where: str = "the sketch") -> tuple[dict, dict[str, tuple[int, int]]]:
    """The metadata of a sketch file and the byte span of each of its arrays, checked.

    The registry calls this on every uploaded sketch, so it refuses anything that is not a
    well-formed sketch of a version it understands.

    Raises:
        SketchError: naming what is wrong.
    """

    def bad(what: str) -> SketchError:
        return SketchError(f"{where} is not a valid tvreg sketch: {what}.")

    if len(data) < 8:
        raise bad("it is shorter than the 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise bad("its header length is past the end of the data")
    try:
        header = json.loads(bytes(data[8 : 8 + n]))
        meta = json.loads(header.pop("__metadata__")[METADATA_KEY])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise bad("its header has no tvreg sketch metadata") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("tensors"), dict):
        raise bad("its metadata has no tensor table")
    version = meta.get("sketch_version")
    if version != SKETCH_VERSION:
        raise SketchError(
            f"{where} has sketch version {version!r}; this tvreg reads version {SKETCH_VERSION}.",
            hints=["upgrade tvreg"] if isinstance(version, int) and version > SKETCH_VERSION else [],
        )
    spans: dict[str, tuple[int, int]] = {}
    end = 0
    for key, entry in sorted(header.items(), key=lambda kv: kv[1].get("data_offsets", [0])[0]):
        try:
            a, b = (int(x) for x in entry["data_offsets"])
            shape = [int(x) for x in entry["shape"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"entry `{key}` is malformed") from exc
        if entry.get("dtype") != "F32" or len(shape) != 1 or b - a != 4 * shape[0] or a != end:
            raise bad(f"entry `{key}` does not describe a contiguous float32 vector")
        spans[key] = (a, b)
        end = b
    if 8 + n + end != len(data):
        raise bad(f"its arrays end at byte {8 + n + end} but the data has {len(data)}")
    for name in meta["tensors"]:
        if not isinstance(name, str) or "::" in name:
            raise bad(f"tensor name {name!r} is malformed")
    return meta, spans


class SketchBuilder:
    """Collects tensor sketches as τ streams by (from any thread, in any order)."""

    def __init__(
        self, *, projection_dim: int = DEFAULT_PROJECTION_DIM, sample_size: int = DEFAULT_SAMPLE_SIZE
    ) -> None:
        if projection_dim < 2 or projection_dim & (projection_dim - 1):
            raise ValueError("projection_dim must be a power of two, at least 2")
        self.projection_dim, self.sample_size = projection_dim, sample_size
        self._tensors: dict[str, TensorSketch] = {}

    def add(self, name: str, tau: torch.Tensor) -> None:
        self._tensors[name] = sketch_tensor(
            name, tau, projection_dim=self.projection_dim, sample_size=self.sample_size
        )

    def tensor(self, name: str) -> TensorSketch:
        """The sketch :meth:`add` made of tensor ``name``."""
        return self._tensors[name]

    def finish(self, *, skill: str, version: str, base_fingerprint: str, artifact_digest: str) -> Sketch:
        return Sketch(
            skill,
            version,
            base_fingerprint,
            artifact_digest,
            dict(self._tensors),
            self.projection_dim,
            self.sample_size,
        )


def sketch_artifact(path: str | os.PathLike[str], *, digest: str | None = None, progress=None) -> Sketch:
    """Sketch a ``.tvskill`` by decoding its tensors one at a time (for skills built before sketches)."""
    from .artifact import Artifact, file_digest

    builder = SketchBuilder()
    with Artifact(path) as art:
        m = art.manifest
        if progress is not None:
            progress.task(f"Sketching {m.label}", sum(t.stored_bytes for t in m.tensors.values()))
        try:
            for name, entry in m.tensors.items():
                builder.add(name, art.decode(name))
                if progress is not None:
                    progress.advance(entry.stored_bytes)
        finally:
            if progress is not None:
                progress.done()
    return builder.finish(
        skill=m.name,
        version=m.version,
        base_fingerprint=m.base_fingerprint,
        artifact_digest=digest or file_digest(Path(path)),
    )


# -- the local cache: one sketch per artifact digest -----------------------------------------


def cached_sketch_path(digest: str) -> Path:
    from .._util.paths import cache_dir

    return cache_dir() / "sketches" / "sha256" / f"{digest.split(':', 1)[-1]}.tvsketch"


def load_cached(digest: str) -> Sketch | None:
    """The cached sketch of the artifact with ``digest``, or None (also for an unreadable entry)."""
    path = cached_sketch_path(digest)
    try:
        sketch = Sketch.from_bytes(path.read_bytes(), where=f"`{path}`")
    except (OSError, SketchError):
        return None
    return sketch if sketch.artifact_digest == digest else None


def store_cached(sketch: Sketch) -> Path:
    """Keep ``sketch`` in the cache under its artifact's digest (atomically)."""
    from . import statcache
    from .fsutil import atomic_write_bytes

    path = cached_sketch_path(sketch.artifact_digest)
    if not statcache.writes_allowed():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, sketch.to_bytes())
    return path


def sketch_for(path: str | os.PathLike[str], *, digest: str | None = None, progress=None) -> Sketch:
    """The sketch of a local artifact: from the cache, else computed (and cached)."""
    from .artifact import file_digest

    digest = digest or file_digest(Path(path))
    cached = load_cached(digest)
    if cached is not None:
        return cached
    sketch = sketch_artifact(path, digest=digest, progress=progress)
    store_cached(sketch)
    return sketch
