"""Packed 4-bit and 1-bit codes with one scale per group: what ``int4``, ``sign`` and ``sparse``'s
``values=int4`` / ``values=sign`` share.

Why here and not in each codec: the dense codecs and the sparse codec's kept values use
the same quantisers, packings and checks, and the registry's verification
(:mod:`tvreg._format.codecs.verify`) checks the packed bytes piece by piece with the same
rules a decode applies.

Packings (little end first, as :func:`numpy.packbits` with ``bitorder="little"``):

- 4-bit: code ``j`` is a two's-complement nibble, ``j`` even in the low nibble of byte
  ``j // 2``, odd in the high one; codes are in [−7, 7], so the nibble ``0x8`` (−8) never
  occurs, and the high nibble past an odd count is 0. Why symmetric: a zero τ entry
  decodes to exactly 0 and the scale is absmax/7, so every error is at most half a step.
- 1-bit: bit ``j % 8`` of byte ``j // 8`` is 1 for a negative entry (−scale) and 0 for a
  non-negative one (+scale); bits past the count are 0.

Scales: bf16 (fp32's range in 2 bytes; 8 significant bits move a scale by at most 2⁻⁹,
far below a 4-bit step), fp32, or fp16 where every non-zero scale is inside fp16's
normal range, else fp32 for the whole tensor, as ``int8`` does.
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import CorruptArtifact
from . import zstd_frame
from .base import param

SCALE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_FP16_MIN_NORMAL = 2.0**-14
_FP16_SAFE_MAX = 60000.0
INT4_MAX = 7

# byte → its two codes, and whether a byte holds the invalid nibble 0x8 (either half)
_NIBBLES = np.array([[((b & 0xF) ^ 8) - 8, ((b >> 4) ^ 8) - 8] for b in range(256)], dtype=np.int8)
_BAD_NIBBLE = np.array([(b & 0xF) == 8 or (b >> 4) == 8 for b in range(256)], dtype=bool)
# byte → its eight signs, +1 for a 0 bit and −1 for a 1 bit
_SIGNS = np.array([[1 - 2 * ((b >> t) & 1) for t in range(8)] for b in range(256)], dtype=np.int8)


def bits_per_code(kind: str) -> int:
    return 4 if kind == "int4" else 1


def top_code(kind: str) -> int:
    """The largest code magnitude of ``kind``: what a scale is multiplied by at most."""
    return INT4_MAX if kind == "int4" else 1


def scale_layout(params: dict, count: int, where: str, *, what: str = "scale") -> tuple[int, str, int]:
    """``(group, scales, scale bytes)`` of ``count`` codes in groups, parameters checked (manifests are untrusted)."""
    gs = param(params, "group", int, where)
    kind = param(params, "scales", str, where)
    if gs < 1 or kind not in SCALE_DTYPES:
        raise CorruptArtifact(f"tensor `{where}` has invalid {what} parameters (group {gs}, scales {kind!r}).")
    return gs, kind, groups_of(count, gs) * SCALE_DTYPES[kind].itemsize


def packed_bytes(count: int, bits: int) -> int:
    """Bytes of ``count`` packed codes of ``bits`` bits."""
    return (count * bits + 7) // 8


def groups_of(count: int, group: int) -> int:
    return -(-count // group) if count else 0


def choose_scales(raw: torch.Tensor, kind: str) -> str:
    """``kind`` (``fp16``/``fp32``), widened to fp32 when a non-zero scale is outside fp16's normal range."""
    if kind == "fp16":
        nonzero = raw[raw > 0]
        if nonzero.numel() and (float(nonzero.min()) < _FP16_MIN_NORMAL or float(nonzero.max()) > _FP16_SAFE_MAX):
            return "fp32"
    return kind


def _grouped(flat: torch.Tensor, group: int) -> torch.Tensor:
    n = flat.numel()
    groups = groups_of(n, group)
    padded = torch.zeros(groups * group, dtype=torch.float32)
    padded[:n] = flat
    return padded.view(groups, group)


def quantize_int4(flat: torch.Tensor, group: int, scales: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax int4 codes (int8 tensor in [−7, 7]) of a flat fp32 tensor and the stored scales, one per ``group``."""
    n = flat.numel()
    g = _grouped(flat, group)
    raw = g.abs().amax(dim=1).div_(float(INT4_MAX)) if g.shape[0] else torch.zeros(0)
    stored = raw.to(SCALE_DTYPES[choose_scales(raw, scales)])
    used = stored.to(torch.float32)
    safe = torch.where(used > 0, used, torch.ones_like(used))
    q = g.div(safe[:, None]).round_().clamp_(-INT4_MAX, INT4_MAX).to(torch.int8).reshape(-1)[:n]
    return q, stored


def sign_scales(flat: torch.Tensor, group: int, scales: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The negative-entry mask of a flat fp32 tensor and its stored scales: mean |τ| per ``group``.

    Why the mean: for a fixed sign pattern b, Σ(τᵢ − s·bᵢ)² is least at s = Σ τᵢbᵢ / n = mean |τᵢ|
    (BitDelta's initial scale, arXiv 2402.10193); padding of the last group is not counted.
    """
    n = flat.numel()
    g = _grouped(flat, group)
    counts = torch.full((g.shape[0],), float(group), dtype=torch.float64)
    if g.shape[0] and n % group:
        counts[-1] = float(n % group)
    raw = (g.abs().sum(dim=1, dtype=torch.float64) / counts).to(torch.float32) if g.shape[0] else torch.zeros(0)
    stored = raw.to(SCALE_DTYPES[choose_scales(raw, scales)])
    return flat < 0, stored


def pack_int4(q: torch.Tensor) -> np.ndarray:
    """Codes in [−7, 7] → ``⌈count/2⌉`` bytes, two's-complement nibbles, even codes low."""
    nib = q.numpy().view(np.uint8) & np.uint8(0xF)
    if nib.size % 2:
        nib = np.concatenate([nib, np.zeros(1, dtype=np.uint8)])
    return (nib[0::2] | (nib[1::2] << np.uint8(4))).astype(np.uint8)


def pack_signs(negative: torch.Tensor) -> np.ndarray:
    """A bool mask → ``⌈count/8⌉`` bytes, 1 for negative, little bit order."""
    return np.packbits(negative.numpy(), bitorder="little")


def check_packed(raw: np.ndarray, count: int, bits: int, where: str, *, last: bool = True) -> None:
    """Refuse an invalid nibble (4-bit) and, when ``raw`` ends the codes (``last``), set bits past ``count``."""
    if bits == 4 and raw.size and bool(_BAD_NIBBLE[raw].any()):
        raise CorruptArtifact(f"tensor `{where}` has an int4 code of −8, outside the symmetric range [−7, 7].")
    pad = raw.size * 8 - count * bits
    if last and raw.size and pad > 0 and int(raw[-1]) >> (8 - pad):
        raise CorruptArtifact(f"tensor `{where}` has code bits set past its last entry.")


def unpack(raw: torch.Tensor, count: int, bits: int, where: str) -> torch.Tensor:
    """Packed codes → ``count`` int8 codes (4-bit: [−7, 7]; 1-bit: ±1), every byte checked first."""
    arr = raw.numpy()
    if arr.size != packed_bytes(count, bits):
        raise CorruptArtifact(f"tensor `{where}` holds {arr.size} bytes of codes, not the {packed_bytes(count, bits)} it declares.")
    check_packed(arr, count, bits, where)
    per = 8 // bits
    out = zstd_frame.empty(arr.size * per, torch.int8, where=where)
    table = _NIBBLES if bits == 4 else _SIGNS
    np.take(table, arr, axis=0, out=out.numpy().reshape(-1, per))
    return out[:count]


def scales_from(raw: torch.Tensor, kind: str, where: str, *, top: int) -> torch.Tensor:
    """Stored scale bytes → fp32 scales, refusing negative, non-finite or overflowing (``top``·scale) ones."""
    scales = raw.view(SCALE_DTYPES[kind]).to(torch.float32)
    check_scales(scales.numpy(), where, top=top)
    return scales


def check_scales(scales: np.ndarray, where: str, *, top: int) -> None:
    with np.errstate(over="ignore", invalid="ignore"):
        ok = np.isfinite(scales).all() and not (scales < 0).any() and np.isfinite(scales.astype(np.float32) * np.float32(top)).all()
    if not ok:
        raise CorruptArtifact(f"tensor `{where}` has negative or non-finite scales.")


def unpack_expand(raw: torch.Tensor, count: int, bits: int, scales: torch.Tensor, group: int, where: str) -> torch.Tensor:
    """``expand(unpack(raw, count, bits, where), scales, group)``, the same checks and values, compiled for int4."""
    from . import jit

    if bits != 4 or not jit.ready(count) or scales.dtype != torch.float32:
        return expand(unpack(raw, count, bits, where), scales, group)
    arr = raw.numpy()
    if arr.size != packed_bytes(count, bits):
        raise CorruptArtifact(f"tensor `{where}` holds {arr.size} bytes of codes, not the {packed_bytes(count, bits)} it declares.")
    check_packed(arr[-1:], count - 2 * (arr.size - 1), bits, where)  # the pad bits; every nibble is checked below
    if scales.numel() * group < count:
        raise CorruptArtifact(f"tensor `{where}` has fewer scales than its codes need.")
    out = zstd_frame.empty(count, torch.float32, where=where)
    if jit.expand_int4(arr, scales.contiguous().numpy(), group, out.numpy()):
        raise CorruptArtifact(f"tensor `{where}` has an int4 code of −8, outside the symmetric range [−7, 7].")
    return out


def expand(q: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """fp32 ``q[j]·scales[j // group]`` (one rounding per element: the product :class:`~.forms.Int8Groups` takes)."""
    count = q.numel()
    return q.to(torch.float32).mul_(scales.repeat_interleave(group)[:count])


__all__ = [
    "INT4_MAX", "SCALE_DTYPES", "bits_per_code", "check_packed", "check_scales", "choose_scales", "expand",
    "groups_of", "pack_int4", "pack_signs", "packed_bytes", "quantize_int4", "scales_from", "sign_scales", "unpack",
    "unpack_expand",
]  # fmt: skip
