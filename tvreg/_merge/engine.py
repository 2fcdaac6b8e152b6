"""The chunked CPU merge engine, and the plain-torch reference the Triton kernel must equal.

For one tensor: :func:`plan_tensor` fixes the per-skill numbers (ω, TIES cutoff, DARE
key), then :func:`merge_chunk` computes any range of elements from θ_G, θ_pre and
each τ's slice of that range. The per-element arithmetic, all in float32, one
operation at a time (no fused multiply-add), in the listed order of skills:

    anchor = g                                 (θ_G), or p + c·(g − p) with θ_pre
    d_k    = τ_k, zeroed where TIES trims it; DARE: dropped → 0, kept → τ_k·s, s = fp32(1/(1−p))
    w_k    = d_k·ω_k
    direct (no consensus, no normalize, λ = 1):   out = ((anchor + w_1) + w_2) + …
    otherwise:
      consensus:  S = Σ w_k; agree_k = sign(w_k) == (S ≥ 0 ? +1 : −1)
                  mix = Σ agree_k·w_k, div = Σ agree_k·ω_k (0 → 1)
      else:       mix = Σ w_k,        div = Σ_all ω_k (|div| < 1e-8 → 1)
      normalize:  mix = mix / div;  λ ≠ 1: mix = mix·λ;  out = anchor + mix
    then one rounding, to nearest even, to the output dtype.

Elements past a τ's extent (a G with added vocabulary rows) count as τ = 0, and
rows past θ_pre's extent are anchored at θ_G.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch

from .._format.codecs import jit, planes
from .._format.codecs.forms import StoredForm
from .._format.codecs.zstd_frame import buffer, each_chunk
from . import bitmasks, rng
from .base import Recipe, fp32
from .chunks import dense_chunk, form_numel, iter_chunks
from .trim import Trim, magnitude_trim

#: Elements per chunk on the CPU path: 256 Ki float32 = 1 MiB per skill, so a chunk's passes stay in cache.
CPU_CHUNK = 1 << 18
ONE_BITS = 0x3F800000


@dataclass(frozen=True)
class Term:
    """One skill's part in one tensor."""

    weight: float
    numel: int
    trim: Trim | None = None
    key: tuple[int, int] | None = None


@dataclass(frozen=True)
class TensorPlan:
    """Everything needed to merge any chunk of one tensor; the kernel gets the same numbers."""

    recipe: Recipe
    numel: int
    pre_numel: int
    terms: tuple[Term | None, ...]
    drop_threshold: int = 0
    rescale: float = 1.0
    divisor: float = 1.0

    def active(self) -> list[tuple[int, Term]]:
        return [(k, t) for k, t in enumerate(self.terms) if t is not None]


def plan_tensor(
    recipe: Recipe,
    tensor: str,
    skills: Sequence[str],
    forms: Sequence[StoredForm | None],
    numel: int,
    *,
    pre_numel: int = 0,
    chunk: int = CPU_CHUNK,
) -> TensorPlan:
    """Fix the per-skill numbers of ``tensor``: ω, the TIES cutoff (one streaming pass) and DARE keys.

    ``forms[k]`` is ``None`` for a skill that leaves this tensor unchanged.
    """
    terms: list[Term | None] = []
    for name, weight, form in zip(skills, recipe.weights, forms, strict=True):
        if form is None:
            terms.append(None)
            continue
        n = form_numel(form)
        trim = None
        if recipe.density is not None:
            # an `exact` blob decoded now counts the cutoff's first histogram from its non-zeros
            trim = magnitude_trim(
                n, recipe.density, functools.partial(iter_chunks, form, chunk), lanes=form.magnitude_lanes()
            )
        key = rng.tensor_key(recipe.seed, name, tensor) if recipe.drop_rate else None
        terms.append(Term(weight=weight, numel=n, trim=trim, key=key))
    divisor = 0.0
    for w in recipe.weights:
        divisor = fp32(divisor + w)
    if abs(divisor) < 1e-8:
        divisor = 1.0
    drop = recipe.drop_rate or 0.0
    return TensorPlan(
        recipe=recipe,
        numel=numel,
        pre_numel=pre_numel if recipe.needs_base_weights else 0,
        terms=tuple(terms),
        drop_threshold=rng.drop_threshold(drop),
        rescale=fp32(1.0 / (1.0 - drop)),
        divisor=divisor,
    )


def _anchor(
    plan: TensorPlan, start: int, general: torch.Tensor, pre: torch.Tensor | None, into: torch.Tensor | None = None
) -> torch.Tensor:
    acc = general.to(torch.float32, copy=True) if into is None else into.copy_(general)
    coef = plan.recipe.general_coef
    if coef is None or pre is None or pre.numel() == 0:
        return acc
    m = pre.numel()
    p = pre.to(torch.float32)
    if coef == 0.0:
        acc[:m] = p
    else:
        acc[:m] = p + (acc[:m] - p).mul_(fp32(coef))
    return acc


def _contribution(plan: TensorPlan, term: Term, start: int, tau: torch.Tensor) -> torch.Tensor:
    """w_k = d_k·ω_k for this chunk (``tau`` is consumed)."""
    if term.trim is not None:
        tau = bitmasks.keep(tau, term.trim.keep_bits(tau, start))
    if term.key is not None:
        keep = rng.keep_bits(term.key, start, start + tau.numel(), plan.drop_threshold)
        tau = bitmasks.keep(tau.mul_(plan.rescale), keep)
    return tau.mul_(term.weight)


def merge_chunk(
    plan: TensorPlan,
    start: int,
    general: torch.Tensor,
    pre: torch.Tensor | None,
    taus: Sequence[torch.Tensor | None],
) -> torch.Tensor:
    """Merged float32 values of elements ``[start, start + len(general))``, before the final rounding.

    ``pre`` is θ_pre's slice of the range (clipped to its extent) when the recipe
    needs it; ``taus[k]`` is τ_k's slice (clipped to its extent; consumed).
    """
    r = plan.recipe
    acc = _anchor(plan, start, general, pre)
    if r.direct:
        for k, term in plan.active():
            w = _contribution(plan, term, start, cast(torch.Tensor, taus[k]))  # an active term has its τ
            acc[: w.numel()].add_(w)
        return acc
    n = acc.numel()
    ws: list[torch.Tensor] = []
    for k, term in plan.active():
        w = _contribution(plan, term, start, cast(torch.Tensor, taus[k]))
        if w.numel() < n:
            w = torch.cat([w, torch.zeros(n - w.numel(), dtype=torch.float32)])
        ws.append(w)
    mix = torch.zeros(n, dtype=torch.float32)
    if r.consensus:
        total = torch.zeros(n, dtype=torch.float32)
        for w in ws:
            total.add_(w.add_(0.0))  # −0.0 → +0.0: it agrees with no sign either way, and now no word is −2³¹
        elected_negative = total.view(torch.int32).bitwise_right_shift(31)  # all ones where S < 0
        div = torch.zeros(n, dtype=torch.float32)
        scratch = torch.empty(n, dtype=torch.int32)
        for (_, term), w in zip(plan.active(), ws, strict=True):
            # sign-adjusted bits, (w ^ e) − e, are > 0 exactly where w is non-zero with the elected sign
            agree = w.view(torch.int32).bitwise_xor(elected_negative).sub_(elected_negative)
            bitmasks.above_(agree, 0)
            div.add_(torch.bitwise_and(agree, bitmasks.float_bits(term.weight), out=scratch).view(torch.float32))
            mix.add_(bitmasks.keep(w, agree))
        # no agreeing weight: divide by 1 (div holds no −0.0, so 0 ⇔ all its bits are 0)
        unset = bitmasks.magnitude_bits(div)
        bitmasks.above_(unset, 0).bitwise_not_().bitwise_and_(ONE_BITS)
        div.add_(unset.view(torch.float32))
    else:
        for w in ws:
            mix.add_(w)
        div = torch.tensor(plan.divisor, dtype=torch.float32)
    if r.normalize:
        mix.div_(div)
    if r.lam != 1.0:
        mix.mul_(r.lam)
    return acc.add_(mix)


def _consensus_compiled(
    plan: TensorPlan,
    start: int,
    general: torch.Tensor,
    pre: torch.Tensor | None,
    taus: Sequence[torch.Tensor | None],
) -> torch.Tensor | None:
    """:func:`merge_chunk` for TIES (trim, consensus, no DARE drop) in one compiled pass, the same bits; None
    when the chunk is not that case (DARE keys, a τ shorter than the chunk, no compiled kernels)."""
    r, n = plan.recipe, general.numel()
    active = plan.active()
    if not (r.consensus and active and jit.ready(n)):
        return None
    chunks, weights, cutoffs = [], [], []
    for k, term in active:
        tau = taus[k]
        if term.key is not None or tau is None or tau.numel() != n or tau.dtype != torch.float32:
            return None
        chunks.append(tau.contiguous().numpy())
        weights.append(term.weight)
        trim = term.trim
        cutoffs.append((bitmasks.float_bits(trim.threshold), trim.tie_cut) if trim is not None else (-1, 0))
    acc = _anchor(plan, start, general, pre)
    jit.consensus_mix(acc.numpy(), chunks, weights, cutoffs, start, normalize=r.normalize, lam=r.lam)
    return acc


def _one_skill_at_a_time(plan: TensorPlan) -> bool:
    """Whether each skill can be added over the whole tensor in turn: a direct recipe, no trim, no drop.

    Per element that is the direct path's ``((anchor + w_1) + w_2) + …``, the same roundings
    in the same order, so a form may add its τ in one pass of its own (an ``exact`` blob
    straight from its frames) instead of chunk by chunk beside the others.
    """
    return plan.recipe.direct and all(
        t.trim is None and t.key is None and t.numel <= plan.numel for _, t in plan.active()
    )


def _add_round_fused(
    plan: TensorPlan,
    general: torch.Tensor,
    forms: Sequence[StoredForm | None],
    pre: torch.Tensor | None,
    out: torch.Tensor,
) -> bool:
    """Task arithmetic of bf16 θ_G and ``exact`` blobs in one compiled pass per frame (:func:`planes.add_round_masked`),
    or of one skill whose form adds and rounds itself (:meth:`StoredForm.add_round`).

    The direct path's ``((θ_G + w_1) + w_2) + …`` and its one rounding, bit for bit, when
    every active skill covers the whole tensor with a zero-bitmap blob and nothing
    anchors at θ_pre; False (nothing done) otherwise.
    """
    if pre is not None and plan.recipe.general_coef is not None:
        return False
    active = list(plan.active())
    if len(active) == 1 and active[0][1].numel == plan.numel:
        k, term = active[0]
        if cast(StoredForm, forms[k]).add_round(general, term.weight, out):
            return True
    blobs = []
    for k, term in plan.active():
        masked = getattr(forms[k], "masked", None)
        if masked is None or term.numel != plan.numel:
            return False
        blobs.append((masked, term.weight))
    return planes.add_round_masked(blobs, general, out)


def merge_tensor(
    plan: TensorPlan,
    general: torch.Tensor,
    forms: Sequence[StoredForm | None],
    *,
    pre: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    chunk: int = CPU_CHUNK,
    consume: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Merge one whole tensor chunk by chunk on the CPU; the result has G's shape and ``out_dtype``.

    With ``consume`` the forms' float32 buffers are overwritten (freshly decoded forms
    the caller drops afterwards), saving one copy per chunk. The result is written into
    ``out`` when given (contiguous, ``out_dtype``, G's element count).
    """
    out_dtype = out_dtype or general.dtype
    flat = general.reshape(-1)
    pre_flat = pre.reshape(-1) if pre is not None else None
    if out is None:
        out = torch.empty(flat.numel(), dtype=out_dtype)
    elif out.dtype != out_dtype or not out.is_contiguous() or out.numel() != flat.numel():
        raise ValueError(f"`out` must be a contiguous {out_dtype} tensor of {flat.numel()} elements")
    out = out.reshape(-1)
    if _one_skill_at_a_time(plan) and _add_round_fused(plan, flat, forms, pre_flat, out):
        return out.reshape(general.shape)
    if _one_skill_at_a_time(plan):
        # the float32 sum comes from the install's buffer arena when one is active (no fresh pages per tensor)
        acc = _anchor(plan, 0, flat, pre_flat, into=buffer(flat.numel(), torch.float32))
        for k, term in plan.active():
            # an active term has its form
            cast(StoredForm, forms[k]).add_scaled(acc[: term.numel], term.weight, chunk=chunk, consume=consume)
        return out.copy_(acc).reshape(general.shape)
    shared = _shared_forms(forms) if flat.numel() > chunk else None
    starts = range(0, flat.numel(), chunk)
    reads = shared if shared is not None else forms

    def one(i: int) -> None:
        start = starts[i]
        stop = min(start + chunk, flat.numel())
        p = pre_flat[start : min(stop, pre_flat.numel())] if pre_flat is not None else None
        taus = [dense_chunk(f, start, stop, consume=consume) if f is not None else None for f in reads]
        merged = _consensus_compiled(plan, start, flat[start:stop], p, taus)
        out[start:stop] = merged if merged is not None else merge_chunk(plan, start, flat[start:stop], p, taus)

    if shared is not None:
        each_chunk(len(starts), one)
    else:
        for i in range(len(starts)):
            one(i)
    return out.reshape(general.shape)


def _shared_forms(forms: Sequence[StoredForm | None]) -> list[StoredForm | None] | None:
    """Every form ready for its chunks to be read on the shared threads (:meth:`StoredForm.shared`), else None.

    Why: an install merges two or three tensors at once, one thread each, and takes them
    in order, so one big tensor (the embeddings, ``lm_head``) merged chunk after chunk left
    the other cores idle. Its chunks are independent: they run on the shared threads
    (:func:`tvreg._format.codecs.zstd_frame.each_chunk`) when every form can be read there.
    """
    shared: list[StoredForm | None] = []
    for form in forms:
        ready = form.shared() if form is not None else None
        if form is not None and ready is None:
            return None
        shared.append(ready)
    return shared
