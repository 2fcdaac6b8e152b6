"""The fused merge kernel: one pass per chunk over θ_G, θ_pre and every skill's stored form.

Its plain-torch reference is :func:`tvreg._merge.engine.merge_chunk` (the CPU path);
the tests run this kernel under ``TRITON_INTERPRET=1`` on CPU tensors against it,
for every method and stored form, and require equal bits (the spec allows one ulp).
The arithmetic is the engine's, operation for operation: float32, skills in listed
order, no fused multiply-add (compiled with ``enable_fp_fusion=False``), IEEE
division (``div_rn``), one rounding to the output dtype.

Per skill the kernel reads the compact form directly: bf16/fp16/fp32 values, or int8
values times their group's fp32 scale. Sparse forms are scattered into a chunk-sized
fp32 buffer by :func:`_scatter_kernel` just before, and low-rank factors are expanded
by one matmul just before, so no skill ever costs more than a chunk of float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import triton
import triton.language as tl

from .._format.codecs.forms import Sparse, StoredForm
from .._merge.engine import TensorPlan

#: Elements per chunk on the GPU path (64 Mi: 256 MiB of float32 per sparse/low-rank skill).
GPU_CHUNK = 1 << 26
BLOCK = 1024
_MASK32 = 0xFFFFFFFF


@triton.jit
def _term(
    vals,
    scales,
    offset,
    extent,
    group,
    weight,
    trim_t,
    trim_c,
    key0,
    key1,
    i,
    in_range,
    rescale,
    drop_threshold,
    SCALED: tl.constexpr,
    TRIM: tl.constexpr,
    DARE: tl.constexpr,
):
    """w_k = d_k·ω_k for the elements ``i`` (0 past the skill's extent)."""
    inside = in_range & (i < extent)
    v = tl.load(vals + (i - offset), mask=inside, other=0).to(tl.float32)
    if SCALED:
        s = tl.load(scales + (i // group), mask=inside, other=0.0)
        v = v * s
    if TRIM:
        a = tl.abs(v)
        keep = (a > trim_t) | ((a == trim_t) & (i < trim_c))
        v = tl.where(keep, v, 0.0)
    if DARE:
        lo = (i & 0xFFFFFFFF).to(tl.uint32)
        hi = (i >> 32).to(tl.uint32)
        # tvreg._merge.rng's lowbias32 mixer, twice (inlined: the interpreter cannot nest jit calls)
        h = lo ^ key0.to(tl.uint32)
        h = h ^ (h >> 16)
        h = h * 0x7FEB352D
        h = h ^ (h >> 15)
        h = h * 0x846CA68B
        h = h ^ (h >> 16)
        h = h ^ hi ^ key1.to(tl.uint32)
        h = h ^ (h >> 16)
        h = h * 0x7FEB352D
        h = h ^ (h >> 15)
        h = h * 0x846CA68B
        h = h ^ (h >> 16)
        kept = (h >> 8).to(tl.int64) >= drop_threshold
        v = tl.where(kept, v * rescale, 0.0)
    w = v * weight
    return tl.where(inside, w, 0.0), inside


@triton.jit
def _merge_kernel(
    out_ptr,
    g_ptr,
    p_ptr,
    start,
    stop,
    pre_numel,
    general_coef,
    vals,
    scales,
    offsets,
    extents,
    groups,
    weights,
    trim_ts,
    trim_cs,
    keys0,
    keys1,
    rescale,
    drop_threshold,
    divisor,
    lam,
    K: tl.constexpr,
    SCALED: tl.constexpr,
    TRIM: tl.constexpr,
    DARE: tl.constexpr,
    HAS_PRE: tl.constexpr,
    COEF_ZERO: tl.constexpr,
    DIRECT: tl.constexpr,
    CONSENSUS: tl.constexpr,
    NORMALIZE: tl.constexpr,
    SCALE_MIX: tl.constexpr,
    BF16_BITS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    i = start + tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    in_range = i < stop
    acc = tl.load(g_ptr + i, mask=in_range, other=0).to(tl.float32)
    if HAS_PRE:
        in_pre = in_range & (i < pre_numel)
        p = tl.load(p_ptr + i, mask=in_pre, other=0).to(tl.float32)
        if COEF_ZERO:
            acc = tl.where(in_pre, p, acc)
        else:
            acc = tl.where(in_pre, p + (acc - p) * general_coef, acc)
    if DIRECT:
        for k in tl.static_range(K):
            w, inside = _term(
                vals[k],
                scales[k],
                offsets[k],
                extents[k],
                groups[k],
                weights[k],
                trim_ts[k],
                trim_cs[k],
                keys0[k],
                keys1[k],
                i,
                in_range,
                rescale,
                drop_threshold,
                SCALED[k],
                TRIM,
                DARE,
            )
            acc = tl.where(inside, acc + w, acc)
    else:
        mix = tl.full([BLOCK], 0.0, tl.float32)
        if CONSENSUS:
            total = tl.full([BLOCK], 0.0, tl.float32)
            for k in tl.static_range(K):
                w, inside = _term(
                    vals[k],
                    scales[k],
                    offsets[k],
                    extents[k],
                    groups[k],
                    weights[k],
                    trim_ts[k],
                    trim_cs[k],
                    keys0[k],
                    keys1[k],
                    i,
                    in_range,
                    rescale,
                    drop_threshold,
                    SCALED[k],
                    TRIM,
                    DARE,
                )
                total = total + w
            positive = total >= 0
            div = tl.full([BLOCK], 0.0, tl.float32)
            for k in tl.static_range(K):
                w, inside = _term(
                    vals[k],
                    scales[k],
                    offsets[k],
                    extents[k],
                    groups[k],
                    weights[k],
                    trim_ts[k],
                    trim_cs[k],
                    keys0[k],
                    keys1[k],
                    i,
                    in_range,
                    rescale,
                    drop_threshold,
                    SCALED[k],
                    TRIM,
                    DARE,
                )
                agree = tl.where(positive, w > 0, w < 0)
                mix = mix + tl.where(agree, w, 0.0)
                div = div + tl.where(agree, weights[k], 0.0)
            div = tl.where(div == 0, 1.0, div)
        else:
            for k in tl.static_range(K):
                w, inside = _term(
                    vals[k],
                    scales[k],
                    offsets[k],
                    extents[k],
                    groups[k],
                    weights[k],
                    trim_ts[k],
                    trim_cs[k],
                    keys0[k],
                    keys1[k],
                    i,
                    in_range,
                    rescale,
                    drop_threshold,
                    SCALED[k],
                    TRIM,
                    DARE,
                )
                mix = mix + w
            div = tl.full([BLOCK], 0.0, tl.float32) + divisor
        if NORMALIZE:
            mix = tl.math.div_rn(mix, div)
        if SCALE_MIX:
            mix = mix * lam
        acc = acc + mix
    if BF16_BITS:
        # Round to nearest even by hand: Triton's interpreter truncates float32 → bfloat16,
        # and this is the same rounding the GPU's cvt.rn.bf16.f32 does for finite values.
        bits = acc.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        tl.store(out_ptr + i, bits.to(tl.uint16).to(tl.int16, bitcast=True), mask=in_range)
    else:
        tl.store(out_ptr + i, acc.to(out_ptr.dtype.element_ty), mask=in_range)


@triton.jit
def _scatter_kernel(out_ptr, idx_ptr, val_ptr, n, start, scale, HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr):
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = j < n
    idx = tl.load(idx_ptr + j, mask=m, other=0).to(tl.int64)
    v = tl.load(val_ptr + j, mask=m, other=0).to(tl.float32)
    if HAS_SCALE:
        v = v * scale
    tl.store(out_ptr + (idx - start), v, mask=m)


def _sparse_chunk(form: Sparse, start: int, stop: int, device: torch.device) -> torch.Tensor:
    idx = form.positions.reshape(-1)
    bounds = torch.tensor([start, stop], dtype=idx.dtype, device=idx.device)
    lo, hi = (int(x) for x in torch.searchsorted(idx, bounds))
    out = torch.zeros(stop - start, dtype=torch.float32, device=device)
    n = hi - lo
    if n:
        _scatter_kernel[(triton.cdiv(n, BLOCK),)](
            out,
            idx[lo:hi],
            form.values.reshape(-1)[lo:hi],
            n,
            start,
            float(form.scale) if form.scale is not None else 1.0,
            HAS_SCALE=form.scale is not None,
            BLOCK=BLOCK,
        )
    return out


def merge_tensor_fused(
    plan: TensorPlan,
    general: torch.Tensor,
    forms: Sequence[StoredForm | None],
    *,
    pre: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    chunk: int = GPU_CHUNK,
) -> torch.Tensor:
    """Merge one tensor with the fused kernel, on the device its inputs live on.

    Same contract as :func:`tvreg._merge.engine.merge_tensor`; every input must be on
    one device (CUDA, or CPU under ``TRITON_INTERPRET=1``).
    """
    r = plan.recipe
    device = general.device
    flat = general.reshape(-1)
    n = flat.numel()
    out = torch.empty(n, dtype=out_dtype or general.dtype, device=device)
    pre_flat = pre.reshape(-1) if pre is not None and plan.pre_numel else flat
    active = plan.active()
    k = len(active)
    coef = r.general_coef if r.general_coef is not None else 0.0
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        ops = [cast(StoredForm, forms[j]).registers(start, stop, term.numel, device, scatter=_sparse_chunk) for j, term in active]  # active: has its form
        _merge_kernel[(triton.cdiv(stop - start, BLOCK),)](
            out.view(torch.int16) if out.dtype == torch.bfloat16 else out,
            flat,
            pre_flat,
            start,
            stop,
            plan.pre_numel,
            float(coef),
            tuple(o[0] for o in ops),
            tuple(o[1] for o in ops),
            tuple(o[2] for o in ops),
            tuple(t.numel for _, t in active),
            tuple(o[3] for o in ops),
            tuple(t.weight for _, t in active),
            tuple(t.trim.threshold if t.trim else -1.0 for _, t in active),
            tuple(t.trim.tie_cut if t.trim else 0 for _, t in active),
            tuple(t.key[0] if t.key else 0 for _, t in active),
            tuple(t.key[1] if t.key else 0 for _, t in active),
            plan.rescale,
            plan.drop_threshold,
            plan.divisor,
            r.lam,
            K=k,
            SCALED=tuple(o[4] for o in ops),
            TRIM=r.density is not None,
            DARE=bool(r.drop_rate),
            HAS_PRE=bool(plan.pre_numel),
            COEF_ZERO=coef == 0.0,
            DIRECT=r.direct,
            CONSENSUS=r.consensus,
            NORMALIZE=r.normalize,
            SCALE_MIX=r.lam != 1.0,
            BF16_BITS=out.dtype == torch.bfloat16,
            BLOCK=BLOCK,
            enable_fp_fusion=False,
        )
    return out.reshape(general.shape)
