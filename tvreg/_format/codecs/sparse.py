"""``sparse``: keep a ``density`` fraction of τ and drop the rest.

Two selections:

- ``select=magnitude`` (default): the largest entries (the TIES trim). Raw stream, then
  chunked zstd: the kept values (bf16 in exponent/mantissa planes; int8 with one fp32
  scale for the tensor; or, in groups of ``group`` kept values with one scale each, int4
  or a sign bit — see :mod:`tvreg._format.codecs.lowbit`), then the positions, either as a bitmap of ``numel`` bits
  (dense-ish keeps) or as LEB128 varints of the gaps between ascending indices (sparse
  keeps) — whichever is smaller for this tensor when ``index=auto``.
- ``select=random``: each entry kept with probability ``density`` and the kept ones
  scaled by 1/density (DARE's drop-and-rescale, which keeps τ's expectation). The kept
  positions are those whose 32-bit hash of (seed, position) is under a threshold, so
  they cost no bytes: the decoder recomputes them (``index: "hash"``). Why: the indices
  of a magnitude trim cost as much as the values, and on a low-learning-rate
  fine-tune, where most updates are one or two ulps wherever the weight is, magnitude
  says little about importance — measured on SmolLM2-135M, a random 10% keeps 99.7% of
  the gain where the top 10% keeps 85%.

``rescale=row`` (issue 23) scales each row's kept values so that together they carry the
row's whole squared norm, ⟨τ̂_r, τ_r⟩ = ‖τ_r‖², instead of multiplying every kept value by
1/density. DARE's constant is right only on average: a row whose random share happens to
hold 8% of its energy comes back at 0.8 of its length, one holding 12% at 1.2, and these
swings are most of what random dropping loses. The ratio fixes each row exactly (and so the
whole tensor's projection on τ: no amplification along τ). The decoder does not know: the
stored values are the scaled ones either way. Measured on SmolLM2-135M's low-learning-rate
pair (calibration texts, random 0.2 with int4 values): 0.979 → 0.998 of the gain kept, its
bootstrap bound 0.965 → 0.984 (benchmarks/README.md, ``calibrated.py``).

Entries not kept decode to exactly zero.

Why low-bit values: once positions are hashed the kept values are the whole artifact,
so their precision sets the ratio. At density 0.1, per entry of τ before zstd: bf16
values 1.6 bits (10x smaller than the bf16 τ), int8 0.8 (20x), int4 in groups of 64
with bf16 scales 0.1·(4 + 16/64) = 0.425 (38x), signs 0.1·(1 + 16/64) = 0.125 (128x).
Group scales, not one per tensor: with 4 bits or 1, one outlier would set every kept
value's step. bf16 scales: fp32's range (no widening for the tiny updates of a
low-learning-rate fine-tune) in 2 bytes; their 8 significant bits move a scale by at
most 2⁻⁹, far below a 4-bit step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from ...errors import CorruptArtifact
from . import jit, lowbit, planes, varint, zstd_frame
from .base import Codec, Encoded, Option, numel_of, param, raw_view
from .forms import Sparse

_VALUE_BYTES = {"bf16": 2, "int8": 1}
VALUE_KINDS = ("bf16", "int8", "int4", "sign")


def value_layout(params: dict, kind: str, k: int, where: str) -> tuple[int, int, str]:
    """``(value region bytes, scale bytes, scale kind)`` of ``k`` kept values of ``kind``, parameters checked.

    bf16 and int8 have no scale region (int8's one scale is a parameter); int4 and sign
    store ``⌈k/group⌉`` scales, then the packed codes.
    """
    if kind in _VALUE_BYTES:
        return k * _VALUE_BYTES[kind], 0, ""
    _, scales, scale_bytes = lowbit.scale_layout(params, k, where, what="sparse scale")
    return scale_bytes + lowbit.packed_bytes(k, lowbit.bits_per_code(kind)), scale_bytes, scales


class Layout(NamedTuple):
    """Where a sparse blob's regions lie, read off its parameters (checked): what the decoder and the
    registry's verification (:mod:`tvreg._format.codecs.verify`) both start from, so they accept the same blobs.
    """

    n: int
    k: int
    kind: str
    how: str
    value_len: int
    scale_bytes: int
    scale_kind: str
    index_len: int


def layout(shape: tuple[int, ...], params: dict, where: str) -> Layout:
    n = numel_of(shape)
    k = param(params, "k", int, where)
    kind = param(params, "values", str, where)
    how = param(params, "index", str, where)
    if not 0 <= k <= n or kind not in VALUE_KINDS or how not in ("bitmap", "delta", "hash"):
        raise CorruptArtifact(f"tensor `{where}` has invalid sparse parameters.")
    value_len, scale_bytes, scale_kind = value_layout(params, kind, k, where)
    if how == "hash":
        index_len = 0
    elif how == "bitmap":
        index_len = (n + 7) // 8
    else:
        index_len = param(params, "index_bytes", int, where)
    if index_len < 0 or index_len > varint.MAX_BYTES * k + (n + 7) // 8:
        raise CorruptArtifact(f"tensor `{where}` declares an implausible index size {index_len}.")
    return Layout(n, k, kind, how, value_len, scale_bytes, scale_kind, index_len)


def hash_params(params: dict, n: int, k: int, where: str) -> tuple[int, int]:
    """``(seed, threshold)`` of hashed positions, checked, and ``k`` plausible for them (before hashing n positions)."""
    seed = param(params, "seed", int, where)
    threshold = param(params, "threshold", int, where)
    if not (0 <= seed < 1 << 32 and 0 <= threshold <= 1 << 32 and n < 1 << 32):
        raise CorruptArtifact(f"tensor `{where}` has invalid hashed-index parameters.")
    if not plausible_hash_count(n, threshold, k):
        raise CorruptArtifact(f"tensor `{where}` declares {k} kept entries, impossible at its hash threshold.")
    return seed, threshold


def int8_scale(params: dict, where: str) -> float:
    """The one scale of int8 kept values, by the rule of every low-bit scale (:func:`lowbit.check_scales`):
    not negative, and finite in fp32 times 127, the largest code — the product the decode takes.
    """
    scale = float(param(params, "scale", (int, float), where))
    lowbit.check_scales(np.array([scale]), where, top=127)
    return scale


def keep_count(n: int, density: float) -> int:
    """How many entries a density keeps: at least one of a non-empty tensor."""
    return min(n, max(1, math.ceil(density * n))) if n else 0


_HASH_CHUNK = 1 << 22


def _kept(lo: int, hi: int, threshold: int, seed: int) -> np.ndarray:
    h = np.arange(lo, hi, dtype=np.uint32)
    h *= np.uint32(0x9E3779B1)
    h ^= np.uint32(seed)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h < np.uint32(threshold)


def hashed_positions(n: int, threshold: int, seed: int, *, expected: int | None = None, dtype=np.int64) -> np.ndarray:
    """Ascending positions ``i < n`` whose hash of (``seed``, ``i``) is below ``threshold`` (out of 2³²).

    The hash is murmur3's 32-bit finaliser of ``i·0x9E3779B1 ^ seed``: plain uint32
    arithmetic, so every platform and version computes the same positions. ``expected``
    (a decoder's declared count) sizes the result for the compiled one-pass loop
    (:func:`~tvreg._format.codecs.jit.hash_positions`); when the hash disagrees with it
    the true positions come back all the same, for the caller to refuse by their length.
    ``dtype``: int32 spares a decoder the int64 → int32 copy of every position.
    """
    if threshold >= 1 << 32:
        return np.arange(n, dtype=dtype)
    if jit.ready(n) and n <= 1 << 32:
        if expected is None:
            expected = jit.hash_positions(0, n, threshold, seed, np.zeros(0, dtype=dtype))
        out = np.empty(expected + 1, dtype=dtype)
        if jit.hash_positions(0, n, threshold, seed, out) == expected:
            return out[:expected]
    found = [np.flatnonzero(_kept(lo, min(n, lo + _HASH_CHUNK), threshold, seed)) + lo for lo in range(0, n, _HASH_CHUNK)]
    return (np.concatenate(found) if found else np.zeros(0, dtype=np.int64)).astype(dtype, copy=False)


def plausible_hash_count(n: int, threshold: int, k: int) -> bool:
    """Whether ``k`` kept of ``n`` at ``threshold`` is within 10 standard deviations of the binomial mean.

    Checked before hashing, so a manifest claiming an impossible count for a huge tensor
    costs nothing; an honest count is never this far off (p < 1e-20).
    """
    p = min(1.0, threshold / 2**32)
    mean = n * p
    return abs(k - mean) <= 10 * math.sqrt(mean * (1 - p)) + 10


def hashed_count(n: int, threshold: int, seed: int, *, chunk: int = 1 << 18) -> int:
    """How many positions :func:`hashed_positions` keeps, in memory of ``chunk`` elements (verification)."""
    if threshold >= 1 << 32:
        return n
    if jit.ready(n) and n <= 1 << 32:
        return jit.hash_positions(0, n, threshold, seed, np.zeros(0, dtype=np.int64))
    return sum(int(np.count_nonzero(_kept(lo, min(n, lo + chunk), threshold, seed))) for lo in range(0, n, chunk))


def _index_bytes(indices: np.ndarray, n: int, how: str) -> tuple[str, np.ndarray]:
    bitmap = None
    if how in ("auto", "bitmap"):
        bits = np.zeros(n, dtype=np.uint8)
        bits[indices] = 1
        bitmap = np.packbits(bits, bitorder="little")
        if how == "bitmap":
            return "bitmap", bitmap
    gaps = np.diff(indices, prepend=-1) - 1
    delta = varint.encode(gaps)
    if how == "delta" or bitmap is None or len(delta) < len(bitmap):
        return "delta", delta
    return "bitmap", bitmap


def _row_rescaled(flat: torch.Tensor, idx: torch.Tensor, rows: int) -> torch.Tensor:
    """The kept entries ``flat[idx]``, each row's scaled by ‖τ_r‖² / ‖τ_r kept‖² (float64 sums).

    A row whose kept entries are all zero keeps them (there is nothing to scale).
    """
    row = idx // (flat.numel() // rows)
    kept = flat[idx].double()
    whole = torch.linalg.vector_norm(flat.view(rows, -1), dim=1, dtype=torch.float64).square()
    part = torch.zeros(rows, dtype=torch.float64).index_add_(0, row, kept.square())
    factor = torch.where(part > 0, whole / part.where(part > 0, torch.ones((), dtype=torch.float64)), 1.0)
    return (kept * factor[row]).float()


class SparseCodec(Codec):
    name = "sparse"
    lossless = False
    options = {
        "density": Option("fraction of entries kept, by magnitude", 0.1, low=0.0, high=1.0, low_open=True),
        "values": Option(
            "precision of the kept values: bf16, int8 (one scale), int4 or sign (a scale per `group`)",
            "bf16",
            choices=VALUE_KINDS,
        ),
        "group": Option("kept values per scale (int4, sign)", 64, kind=int, low=1),
        "index": Option("how positions are stored", "auto", choices=("auto", "bitmap", "delta")),
        "select": Option(
            "magnitude: the largest entries; random: a hashed random share, rescaled (DARE)",
            "magnitude",
            choices=("magnitude", "random"),
        ),
        "seed": Option("seed of the random selection", 0, kind=int, low=0, high=2**32 - 1),
        "rescale": Option(
            "how kept values are scaled: density (random: 1/density, DARE; magnitude: not at all) or row "
            "(each row's kept values carry the row's whole squared norm)",
            "density",
            choices=("density", "row"),
        ),
    }

    def encode(self, tensor: torch.Tensor) -> Encoded:
        flat = tensor.detach().to(torch.float32).contiguous().reshape(-1)
        n = flat.numel()
        density = float(self.opts["density"])
        params: dict = {}
        if self.opts["select"] == "random" and n < 1 << 32:
            threshold = min(1 << 32, round(density * 2**32))
            idx = torch.from_numpy(hashed_positions(n, threshold, int(self.opts["seed"])))
            values = flat[idx]
            if self.opts["rescale"] == "density":
                values.div_(torch.tensor(threshold / 2**32, dtype=torch.float32))
            params = {"seed": int(self.opts["seed"]), "threshold": threshold}
        else:
            k = min(keep_count(n, density), int(torch.count_nonzero(flat)))
            idx = torch.topk(flat.abs(), k, sorted=False).indices if k else torch.zeros(0, dtype=torch.int64)
            idx = torch.sort(idx).values
            values = flat[idx]
        if self.opts["rescale"] == "row" and idx.numel():
            values = _row_rescaled(flat, idx, tensor.shape[0] if tensor.dim() >= 2 else 1)
        k = idx.numel()
        params.update(k=k, values=self.opts["values"])
        if self.opts["values"] == "int8":
            top = float(values.abs().max()) if k else 0.0
            scale = float(torch.tensor(top / 127.0 if top > 0 else 1.0, dtype=torch.float32))
            q = values.div(torch.tensor(scale, dtype=torch.float32)).round_().clamp_(-127, 127).to(torch.int8)
            value_raw = q.view(torch.uint8)
            params["scale"] = scale
        elif self.opts["values"] in ("int4", "sign"):
            gs = int(self.opts["group"])
            if self.opts["values"] == "int4":
                q, stored = lowbit.quantize_int4(values, gs, "bf16")
                packed = lowbit.pack_int4(q)
            else:
                negative, stored = lowbit.sign_scales(values, gs, "bf16")
                packed = lowbit.pack_signs(negative)
            value_raw = torch.cat([stored.contiguous().view(torch.uint8), torch.from_numpy(packed)])
            params.update(group=gs, scales="bf16")
        else:
            value_raw = planes.split(values.to(torch.bfloat16).contiguous(), "exp").reshape(-1)
        if "threshold" in params:
            how, index_raw = "hash", np.zeros(0, dtype=np.uint8)
        else:
            how, index_raw = _index_bytes(idx.numpy(), n, str(self.opts["index"]))
        params["index"] = how
        if how == "delta":
            params["index_bytes"] = int(len(index_raw))
        raw = torch.cat([value_raw, torch.from_numpy(index_raw)])
        data, stream = zstd_frame.compress_stream(raw_view(raw))
        return Encoded(data, {**params, **stream})

    def decode_form(self, data, shape, params, *, where):
        n, k, kind, how, value_len, scale_bytes, scale_kind, index_len = layout(shape, params, where)
        buf = zstd_frame.decompress_stream(data, value_len + index_len, params, where=where)
        if kind in ("int4", "sign"):
            bits = lowbit.bits_per_code(kind)
            scales = lowbit.scales_from(buf[:scale_bytes], scale_kind, where, top=lowbit.top_code(kind))
            gs = param(params, "group", int, where)
            expanded = lowbit.unpack_expand(buf[scale_bytes:value_len], k, bits, scales, gs, where)
        index_raw = buf[value_len:].numpy()
        hashed = None
        if how == "hash":
            hashed = hash_params(params, n, k, where)
            indices = None
        elif how == "bitmap":
            bits = np.unpackbits(index_raw, bitorder="little")
            if bits[n:].any():
                raise CorruptArtifact(f"tensor `{where}` has index bits past its end.")
            indices = np.flatnonzero(bits[:n])
            if len(indices) != k:
                raise CorruptArtifact(f"tensor `{where}` marks {len(indices)} entries but declares {k}.")
        else:
            gaps = varint.decode(index_raw, k)
            if gaps is None or (gaps >= n).any():
                raise CorruptArtifact(f"tensor `{where}` has a malformed delta index.")
            indices = np.cumsum(gaps + 1) - 1
            if k and indices[-1] >= n:
                raise CorruptArtifact(f"tensor `{where}` has indices past its end.")
        index_dtype = torch.int32 if n <= 2**31 - 1 else torch.int64
        index_t = torch.from_numpy(indices).to(index_dtype) if indices is not None else None
        found = {"shape": tuple(shape), "indices": index_t, "hashed": hashed, "where": where}
        if kind == "int8":
            return Sparse(**found, values=buf[:value_len].view(torch.int8), scale=int8_scale(params, where))
        if kind in ("int4", "sign"):
            return Sparse(**found, values=expanded)
        values = torch.empty(k, dtype=torch.bfloat16)
        planes.merge(buf[:value_len].view(2, k), "exp", values)
        return Sparse(**found, values=values)
