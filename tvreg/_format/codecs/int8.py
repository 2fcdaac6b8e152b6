"""``int8``: symmetric absmax int8 per row (or per group of the flat tensor), then zstd.

Element ``i`` is stored as ``q[i] = round(τ[i] / s)`` with ``s = absmax(group) / 127``,
so its error is at most ``s / 2``. Scales are fp16 (half the bytes) unless a group's
scale is outside fp16's normal range, as the tiny updates of low-learning-rate
fine-tunes often are; then the tensor keeps fp32 scales.

Why the default picks between one scale per row and one per tensor: the bytes are set
by the entropy of the codes, and per-row scales mix rows whose codes spread over the
whole int8 range with rows (under an outlier) whose codes are nearly all 0, which costs
zstd about a bit per entry more than one scale for the tensor (measured on a
high-learning-rate SmolLM2 fine-tune: 5.4 vs 4.5 bits per entry). One scale is coarser
for the quiet rows, so it is used only where the tensor's ‖τ̂ − τ‖/‖τ‖ stays within
``max_rel_error`` and the tensor gets smaller.

Why a zero bitmap: zstd's Huffman stage spends at least a bit on every byte, however
common, and most codes of a short fine-tune are 0. Codes are stored as a bitmap of the
non-zero ones plus those codes (:func:`planes.encode_masked`) when that is smaller.
Sign/magnitude planes and zigzag codes were measured too and do not help: a Huffman
coder does not care how the symbols are numbered.

Layouts read (``params``): ``group`` and ``scales`` always; with ``"zeros": "bitmap"``
the blob is a zstd frame of the scales (``scale_frame`` bytes) followed by the bitmap
frames; without it (tvreg ≤ 0.2), one stream of scales then all codes.
"""

from __future__ import annotations

import torch

from ...errors import CorruptArtifact
from . import lowbit, planes, zstd_frame
from .base import Codec, Encoded, Option, numel_of, param, raw_view, relative_error
from .forms import Int8Groups

_SCALE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
_FP16_MIN_NORMAL = 2.0**-14


def group_size_for(shape: tuple[int, ...], group: int) -> int:
    """The flat group length: ``group`` elements, or one row (the last dimension) when 0."""
    if group:
        return group
    return max(1, shape[-1]) if shape else 1


def quantize(flat: torch.Tensor, gs: int, scales: str) -> Int8Groups:
    """Absmax int8 codes of a flat fp32 tensor in groups of ``gs``; fp16 scales widen to fp32 when needed.

    ``scales`` may also be ``bf16`` (what ``lowrank``'s quantised factors store; the int8
    codec itself writes fp16 or fp32): codes are rounded against the stored scale, so the
    error stays within half a stored step.
    """
    n = flat.numel()
    groups = -(-n // gs)
    padded = torch.zeros(groups * gs, dtype=torch.float32)
    padded[:n] = flat
    absmax = padded.view(groups, gs).abs().amax(dim=1).div_(127.0) if groups else torch.zeros(0)
    if scales == "fp16":
        nonzero = absmax[absmax > 0]
        if nonzero.numel() and (float(nonzero.min()) < _FP16_MIN_NORMAL or float(nonzero.max()) > 60000.0):
            scales = "fp32"
    stored = absmax.to(lowbit.SCALE_DTYPES[scales])
    used = stored.to(torch.float32)
    safe = torch.where(used > 0, used, torch.ones_like(used))
    q = padded.view(groups, gs).div(safe[:, None]).round_().clamp_(-127, 127).to(torch.int8).reshape(-1)[:n]
    return Int8Groups(shape=(n,), q=q, scales=stored, group_size=gs)


def spread_keys(q: torch.Tensor, rows: int) -> torch.Tensor:
    """One byte per row ranking how widely its codes spread: 16 steps per octave of mean |q|, 0 for all-zero rows."""
    mean = q.view(rows, -1).abs().to(torch.float32).mean(dim=1)
    keys = torch.log2(mean).mul_(16).round_().add_(128).clamp_(1, 255)
    return torch.where(mean > 0, keys, torch.zeros_like(keys)).to(torch.uint8)


def row_order(keys: torch.Tensor) -> torch.Tensor:
    """The stored order of the rows: stable by key, so the keys alone rebuild it."""
    return torch.sort(keys.to(torch.int16), stable=True).indices


def _pack(form: Int8Groups, scales: str, rows: int) -> Encoded:
    """The smaller of the two stream layouts for these codes, rows sorted by spread when there are several.

    Why sort: zstd fits a Huffman table to each 128 KiB block, so rows with alike code
    distributions side by side cost fewer bits (2% on a high-LR fine-tune); the row
    keys that rebuild the order cost a byte per row.
    """
    params: dict = {"group": form.group_size, "scales": scales}
    head = form.scales.contiguous().view(torch.uint8)
    q = form.q
    if rows > 1:
        keys = spread_keys(q, rows)
        q = q.view(rows, -1)[row_order(keys)].reshape(-1)
        head = torch.cat([head, keys])
        params["rows"] = "by_spread"
    data, stream = zstd_frame.compress_stream(raw_view(torch.cat([head, q.view(torch.uint8)])))
    best = Encoded(data, {**params, **stream})
    head_frame = zstd_frame.compress(raw_view(head))
    codes, masked = planes.encode_masked(q)
    if len(head_frame) + len(codes) < len(best.data):
        best = Encoded(head_frame + codes, {**params, "scale_frame": len(head_frame), **masked})
    return best


class Int8Codec(Codec):
    name = "int8"
    lossless = False
    options = {
        "group": Option("elements per scale; 0 means one scale per row", 0, kind=int, low=0),
        "scales": Option("scale precision (fp16 widens to fp32 when needed)", "fp16", choices=("fp16", "fp32")),
        "max_rel_error": Option(
            "with group 0, use one scale per tensor where that is smaller and its error stays within this; 0 never",
            0.01,
            low=0.0,
        ),
    }

    def encode(self, tensor: torch.Tensor) -> Encoded:
        shape = tuple(tensor.shape)
        flat = tensor.detach().to(torch.float32).contiguous().reshape(-1)
        group = int(self.opts["group"])
        kind = str(self.opts["scales"])
        rows = flat.numel() // shape[-1] if len(shape) > 1 and shape[-1] else 1
        form = quantize(flat, group_size_for(shape, group), kind)
        best = _pack(form, _kind_of(form), rows)
        budget = float(self.opts["max_rel_error"])
        if group == 0 and budget > 0 and flat.numel() > form.group_size:
            whole = quantize(flat, flat.numel(), kind)
            if relative_error(flat, whole.to_dense()) <= budget:
                packed = _pack(whole, _kind_of(whole), rows)
                if len(packed.data) < len(best.data):
                    best = packed
        return best

    def decode_form(self, data, shape, params, *, where):
        n = numel_of(shape)
        gs = param(params, "group", int, where)
        kind = param(params, "scales", str, where)
        if gs < 1 or kind not in _SCALE_DTYPES:
            raise CorruptArtifact(f"tensor `{where}` has invalid int8 parameters (group {gs}, scales {kind!r}).")
        groups = -(-n // gs)
        dtype = _SCALE_DTYPES[kind]
        scale_bytes = groups * dtype.itemsize
        order = params.get("rows")
        if order not in (None, "by_spread"):
            raise CorruptArtifact(f"tensor `{where}` has an unknown int8 row order {order!r}.")
        rows = n // shape[-1] if order and len(shape) > 1 and shape[-1] else 1
        head_bytes = scale_bytes + (rows if order else 0)
        if params.get("zeros") is None:
            buf = zstd_frame.decompress_stream(data, head_bytes + n, params, where=where)
            head, q = buf[:head_bytes], buf[head_bytes:].view(torch.int8)
        else:
            size = param(params, "scale_frame", int, where)
            if not 0 <= size <= len(data):
                raise CorruptArtifact(f"tensor `{where}` declares a scale frame of {size} bytes in a blob of {len(data)}.")
            view = memoryview(data).cast("B")
            zstd_frame.check_declared_size(view[:size], head_bytes, where=where)
            q = planes.decode_masked(view[size:], params, n, torch.int8, where=where)
            head = zstd_frame.empty(head_bytes, torch.uint8, where=where)
            zstd_frame.decompress_into(view[:size], raw_view(head), where=where)
        if order:
            stored, q = q, zstd_frame.empty(n, torch.int8, where=where)
            q.view(rows, -1)[row_order(head[scale_bytes:])] = stored.view(rows, -1)
        scales = head[:scale_bytes].view(dtype).to(torch.float32)
        if not bool(torch.isfinite(scales).all()) or bool((scales < 0).any()):
            raise CorruptArtifact(f"tensor `{where}` has negative or non-finite int8 scales.")
        return Int8Groups(shape=tuple(shape), q=q, scales=scales, group_size=gs)


def _kind_of(form: Int8Groups) -> str:
    return "fp16" if form.scales.dtype == torch.float16 else "fp32"
