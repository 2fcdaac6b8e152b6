"""``lowrank``: a truncated SVD of each 2-D tensor, τ ≈ L @ R, factors in bf16 or quantised.

The rank is ``rank`` when given, else the smallest rank keeping ``energy`` of ‖τ‖²
(relative error ≈ √(1 − energy)). LoRA skills are exactly low rank; full fine-tunes
usually are not, so a tensor whose coded factors are not smaller than ``fallback``'s
coding of it — and every tensor that is not a matrix — is coded with ``fallback``, and
the manifest records that codec for it.

The singular values are split evenly (√σ into each factor) so both stay well scaled.

``values`` sets the factors' precision:

- ``bf16`` (default): L (rows × r) then R (r × cols), row-major bf16, as one plane-split
  array (params ``rank``, ``planes``; the bytes of tvreg ≤ 0.3).
- ``int8`` / ``int4``: symmetric absmax codes with one scale per ``group`` entries of one
  rank component (column k of L, row k of R), a group never straddling two components;
  int8 is :func:`~tvreg._format.codecs.int8.quantize`, int4
  :func:`~tvreg._format.codecs.lowbit.quantize_int4` ([−7, 7] nibbles). Why per
  component: the √σ split gives each component its own magnitude, so a group mixing two
  would quantise the smaller one with the larger's step. Why bf16 scales for both widths:
  fp32's range in 2 bytes; the tail components of a fine-tune's update have scales far
  below fp16's normal range (at rank 32 of a rank-16 + noise matrix they widened int8's
  fp16 scales to fp32 for the whole tensor), and codes are rounded against the stored
  scale, so the error stays within half a stored step.
- ``mixed``: per-rank mixed precision after Delta-CoMe (arXiv 2406.08903): the
  ``int8_rank`` = ⌈r/4⌉ components of largest σ in int8, the rest in int4. Why: a
  component's quantisation error is proportional to its own σ (same relative step for
  every component of one width), and the singular values of a fine-tune's update have a
  long tail, so the bits go where σ is large; a quarter keeps the cost at 0.625 bytes
  per factor entry (1.6x below int8) while the head components, which hold most of
  ‖τ‖², keep int8's precision.

Quantised raw stream (one :func:`zstd_frame.compress_stream` stream), with k = ``int8_rank``
(r for ``int8``, 0 for ``int4``) and G(m) = ⌈m/group⌉ groups per component of length m:
the k·(G(rows) + G(cols)) int8-part scales (``scales``: bf16 as written; fp16 and fp32 are
read), the k·(rows + cols) int8 codes (Lᵀ's first k rows, then R's first k rows; −128 is
invalid), the (r−k)·(G(rows) + G(cols)) int4-part scales, then the ⌈(r−k)·(rows + cols)/2⌉ bytes of
packed int4 codes (Lᵀ's last r−k rows, then R's). Scales run component by component,
L's components before R's. Decodes to :class:`~.forms.LowRank` with fp32 factors
(``q·scale``, one rounding), which every merge path reads as it reads bf16 ones.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import numpy as np
import torch

from ...errors import CorruptArtifact
from . import int8, lowbit, planes, zstd_frame
from .base import Codec, Encoded, Option, param, raw_view
from .forms import LowRank

VALUE_KINDS = ("bf16", "int8", "int4", "mixed")
MEMO_RANK = 128
"""Components of each SVD kept by :func:`reuse_svd`; a coding that needs more computes its SVD again."""
_SVD_MEMO: contextvars.ContextVar[dict | None] = contextvars.ContextVar("tvreg_lowrank_svd", default=None)


@contextlib.contextmanager
def reuse_svd() -> Iterator[None]:
    """Within the block, each tensor's SVD is computed once and its leading components reused.

    Why: a calibration search (:mod:`tvreg._build.calibrate`) codes the same τ at every
    low-rank candidate (four ranks and two energies, times three factor precisions), and the
    SVD is most of each coding's cost. The SVD of the same values gives the same bits, so
    the codings are those of a fresh SVD. Memory: σ and :data:`MEMO_RANK` components of
    each matrix (128·(rows + cols) floats, under a third of a 576 × 1536 τ), held until
    the block ends; a tensor changed in place (a new ``_version``) is decomposed again.
    """
    token = _SVD_MEMO.set({})
    try:
        yield
    finally:
        _SVD_MEMO.reset(token)


def _svd(tensor: torch.Tensor, tau: torch.Tensor, rank: int, energy: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``(u, s, vh, r)`` with at least r leading components, r from ``rank`` or ``energy``; memoised in :func:`reuse_svd`."""
    memo = _SVD_MEMO.get()
    key = (id(tensor), tensor._version)
    hit = memo.get(key) if memo is not None else None
    if hit is not None and hit[0] is tensor:
        _, u, s, vh = hit
        r = min(rank or rank_for_energy(s, energy), len(s))
        if r <= u.shape[1]:
            return u, s, vh, r
    u, s, vh = torch.linalg.svd(tau, full_matrices=False)
    r = min(rank or rank_for_energy(s, energy), len(s))
    if memo is not None and hit is None:
        keep = min(MEMO_RANK, len(s))
        memo[key] = (tensor, u[:, :keep].clone(), s, vh[:keep].clone())
    return u, s, vh, r
INT8_MAX = 127
SCALES = "bf16"


def rank_for_energy(singular: torch.Tensor, energy: float) -> int:
    """Smallest r whose top singular values hold ``energy`` of the squared norm."""
    sq = singular.double().square()
    total = float(sq.sum())
    if total == 0.0:
        return 0
    cum = torch.cumsum(sq, 0) / total
    return min(len(singular), int(torch.searchsorted(cum, torch.tensor(energy, dtype=torch.float64))) + 1)


def int8_rank_for(kind: str, r: int) -> int:
    """Components stored in int8 (the first, largest-σ ones): all for ``int8``, none for ``int4``, ⌈r/4⌉ for ``mixed``."""
    return {"int8": r, "int4": 0}.get(kind, -(-r // 4))


class Layout:
    """Byte sizes of a quantised factor stream, from the shape and parameters alone (manifests are untrusted)."""

    def __init__(self, shape: tuple[int, ...], params: dict, where: str) -> None:
        r = param(params, "rank", int, where)
        if len(shape) != 2 or not 0 <= r <= min(shape):
            raise CorruptArtifact(f"tensor `{where}` has rank {r}, impossible for shape {list(shape)}.")
        self.rows, self.cols = shape
        self.r = r
        self.kind = param(params, "values", str, where)
        gs = param(params, "group", int, where)
        k = param(params, "int8_rank", int, where) if self.kind == "mixed" else int8_rank_for(self.kind, r)
        if self.kind not in VALUE_KINDS[1:] or gs < 1 or not 0 <= k <= r:
            raise CorruptArtifact(
                f"tensor `{where}` has invalid low-rank factor parameters "
                f"(values {self.kind!r}, group {gs}, int8 rank {k} of {r})."
            )
        self.group, self.k = gs, k
        self.scales = param(params, "scales", str, where)
        if self.scales not in lowbit.SCALE_DTYPES:
            raise CorruptArtifact(f"tensor `{where}` has invalid low-rank factor parameters (scales {self.scales!r}).")
        self.groups_l, self.groups_r = -(-self.rows // gs), -(-self.cols // gs)
        per = (self.groups_l + self.groups_r) * lowbit.SCALE_DTYPES[self.scales].itemsize
        self.scale8_bytes = k * per
        self.code8_bytes = k * (self.rows + self.cols)
        self.scale4_bytes = (r - k) * per
        self.count4 = (r - k) * (self.rows + self.cols)
        self.code4_bytes = lowbit.packed_bytes(self.count4, 4)

    @property
    def raw_bytes(self) -> int:
        return self.scale8_bytes + self.code8_bytes + self.scale4_bytes + self.code4_bytes

    def component_of_scale(self, index: np.ndarray, comps: int) -> tuple[np.ndarray, np.ndarray]:
        """For scale indices of a part of ``comps`` components: (component, whether it scales R)."""
        in_l = comps * self.groups_l
        is_r = index >= in_l
        comp = np.where(is_r, (index - in_l) // max(self.groups_r, 1), index // max(self.groups_l, 1))
        return comp, is_r


def _padded(components: torch.Tensor, group: int) -> torch.Tensor:
    """Each row (one rank component) zero-padded to a whole number of groups, flat: groups never straddle rows."""
    n, m = components.shape
    out = torch.zeros(n, -(-m // group) * group, dtype=torch.float32)
    out[:, :m] = components
    return out.reshape(-1)


def _unpadded(flat: torch.Tensor, n: int, m: int, group: int) -> torch.Tensor:
    return flat.view(n, -1)[:, :m].reshape(-1)


def _split_codes(q: torch.Tensor, comps: int, rows: int, cols: int, group: int) -> torch.Tensor:
    """Padded codes of (Lᵀ part, R part) → the unpadded codes, Lᵀ's then R's."""
    cut = comps * -(-rows // group) * group
    return torch.cat([_unpadded(q[:cut], comps, rows, group), _unpadded(q[cut:], comps, cols, group)])


def _expand(q: torch.Tensor, scales: torch.Tensor, comps: int, length: int, groups: int, group: int) -> torch.Tensor:
    """fp32 ``q·scale`` of ``comps`` components of ``length`` codes, ``groups`` scales each (one rounding per entry)."""
    per = scales.view(comps, groups).repeat_interleave(group, dim=1)[:, :length]
    return q.view(comps, length).to(torch.float32).mul_(per)


class LowRankCodec(Codec):
    name = "lowrank"
    lossless = False
    options = {
        "rank": Option("rank of the factors; 0 picks it from `energy`", 0, kind=int, low=0),
        "energy": Option("share of ‖τ‖² to keep when rank is 0", 0.99, low=0.0, high=1.0, low_open=True),
        "fallback": Option("codec for tensors where factors do not pay", "bf16", choices=("bf16", "int8", "exact")),
        "values": Option(
            "precision of the factors: bf16, int8 or int4 (a scale per `group` of a component), "
            "mixed (the top ⌈r/4⌉ components int8, the rest int4)",
            "bf16",
            choices=VALUE_KINDS,
        ),
        "group": Option("factor entries per scale within one rank component (int8, int4, mixed)", 128, kind=int, low=1),
    }

    def _fallback(self, tensor: torch.Tensor) -> Encoded:
        from . import get_codec

        codec = get_codec(str(self.opts["fallback"]))
        enc = codec.encode(tensor)
        return Encoded(enc.data, enc.params, codec=enc.codec or codec.name)

    def encode(self, tensor: torch.Tensor) -> Encoded:
        if tensor.dim() != 2 or min(tensor.shape) < 2:
            return self._fallback(tensor)
        rows, cols = tensor.shape
        tau = tensor.detach().to(torch.float32)
        u, s, vh, r = _svd(tensor, tau, int(self.opts["rank"]), float(self.opts["energy"]))
        kind = str(self.opts["values"])
        # bf16 factors hold 2 bytes an entry, like the fallback's worst case, so an element count
        # decides without coding; quantised ones are compared by their real coded sizes below.
        if kind == "bf16" and r * (rows + cols) >= rows * cols:
            return self._fallback(tensor)
        root = s[:r].sqrt()
        left = u[:, :r] * root
        right = root[:, None] * vh[:r]
        if kind == "bf16":
            data, params = planes.encode(torch.cat([left.to(torch.bfloat16).reshape(-1), right.to(torch.bfloat16).reshape(-1)]))
            params = {"rank": r, **params}
        else:
            data, params = self._quantised(left.T.contiguous(), right.contiguous(), kind)
        fallback = self._fallback(tensor)
        if len(fallback.data) <= len(data):
            return fallback
        return Encoded(data, params)

    def _quantised(self, left_t: torch.Tensor, right: torch.Tensor, kind: str) -> tuple[bytes, dict]:
        r, rows = left_t.shape
        cols = right.shape[1]
        gs = int(self.opts["group"])
        k = int8_rank_for(kind, r)
        parts: list[torch.Tensor] = []
        params: dict = {"rank": r, "values": kind, "group": gs, "scales": SCALES}
        if kind == "mixed":
            params["int8_rank"] = k
        if k:
            form = int8.quantize(torch.cat([_padded(left_t[:k], gs), _padded(right[:k], gs)]), gs, SCALES)
            codes = _split_codes(form.q, k, rows, cols, gs)
            parts += [form.scales.contiguous().view(torch.uint8), codes.view(torch.uint8)]
        if k < r:
            q, stored = lowbit.quantize_int4(torch.cat([_padded(left_t[k:], gs), _padded(right[k:], gs)]), gs, SCALES)
            codes = _split_codes(q, r - k, rows, cols, gs)
            parts += [stored.contiguous().view(torch.uint8), torch.from_numpy(lowbit.pack_int4(codes))]
        raw = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8)
        data, stream = zstd_frame.compress_stream(raw_view(raw))
        return data, {**params, **stream}

    def decode_form(self, data, shape, params, *, where):
        if param(params, "values", str, where, default="bf16") != "bf16":
            return _decode_quantised(data, tuple(shape), params, where)
        r = param(params, "rank", int, where)
        if len(shape) != 2 or not 0 <= r <= min(shape):
            raise CorruptArtifact(f"tensor `{where}` has rank {r}, impossible for shape {list(shape)}.")
        rows, cols = shape
        flat = planes.decode(data, params, r * (rows + cols), torch.bfloat16, where=where)
        return LowRank(
            shape=tuple(shape), left=flat[: rows * r].view(rows, r), right=flat[rows * r :].view(r, cols)
        )


def check_int8_codes(codes: np.ndarray, where: str) -> None:
    """Refuse the int8 code −128: the quantiser's codes are symmetric, in [−127, 127]."""
    if codes.size and bool((codes.view(np.int8) == -128).any()):
        raise CorruptArtifact(f"tensor `{where}` has an int8 code of −128, outside the symmetric range [−127, 127].")


def _decode_quantised(data, shape: tuple[int, ...], params: dict, where: str) -> LowRank:
    lay = Layout(shape, params, where)
    rows, cols, r, k, gs = lay.rows, lay.cols, lay.r, lay.k, lay.group
    buf = zstd_frame.decompress_stream(data, lay.raw_bytes, params, where=where)
    left = zstd_frame.empty(rows * r, torch.float32, where=where).view(rows, r)
    right = zstd_frame.empty(r * cols, torch.float32, where=where).view(r, cols)
    at = 0
    for comps, lo, bits, scale_bytes, code_bytes in (
        (k, 0, 8, lay.scale8_bytes, lay.code8_bytes),
        (r - k, k, 4, lay.scale4_bytes, lay.code4_bytes),
    ):
        if not comps:
            continue
        top = INT8_MAX if bits == 8 else lowbit.INT4_MAX
        # a copy: odd-length int8 codes before it leave the int4 part's scales unaligned
        scales = lowbit.scales_from(buf[at : at + scale_bytes].clone(), lay.scales, where, top=top)
        raw = buf[at + scale_bytes : at + scale_bytes + code_bytes]
        at += scale_bytes + code_bytes
        if bits == 8:
            check_int8_codes(raw.numpy(), where)
            q = raw.view(torch.int8)
        else:
            q = lowbit.unpack(raw, comps * (rows + cols), 4, where)
        cut = comps * lay.groups_l
        left[:, lo : lo + comps].t().copy_(_expand(q[: comps * rows], scales[:cut], comps, rows, lay.groups_l, gs))
        right[lo : lo + comps] = _expand(q[comps * rows :], scales[cut:], comps, cols, lay.groups_r, gs)
    return LowRank(shape=shape, left=left, right=right)


def product_bound(top: list[int], left_max: np.ndarray, right_max: np.ndarray) -> float:
    """An upper bound of |(L @ R)ᵢⱼ| from each component's largest scales: Σₖ topₖ²·max sₗ,ₖ·max sᵣ,ₖ (float64)."""
    return float(np.sum(np.asarray(top, dtype=np.float64) ** 2 * left_max.astype(np.float64) * right_max.astype(np.float64)))


__all__ = [
    "VALUE_KINDS", "Layout", "LowRankCodec", "check_int8_codes", "int8_rank_for", "product_bound", "rank_for_energy",
    "reuse_svd",
]  # fmt: skip
