"""Task arithmetic (Merge to Learn's parallel train-then-merge): θ_G + Σ_k ω_k τ_k."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def fp32(weight: float) -> float:
    """The float32 value of ``weight`` as a Python float, so every path rounds ω the same way."""
    return float(torch.tensor(weight, dtype=torch.float32))


def task_arithmetic(
    general: torch.Tensor,
    deltas: Sequence[tuple[float, torch.Tensor]],
    *,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Return ``general + Σ ω_k τ_k`` accumulated in float32 and rounded once to ``out_dtype``.

    A τ with fewer rows than ``general`` (a general model that added tokens to its
    vocabulary) updates only the rows both share; the extra rows keep G's values.
    The τ tensors are scaled in place (callers hand over freshly decoded buffers).

    Example:
        >>> g = torch.ones(2, 2, dtype=torch.bfloat16)
        >>> task_arithmetic(g, [(0.5, torch.ones(2, 2))]).tolist()
        [[1.5, 1.5], [1.5, 1.5]]
    """
    out_dtype = out_dtype or general.dtype
    if deltas and deltas[0][1].shape == general.shape:
        # Reuse the first τ's buffer as the accumulator: G + ω₀τ₀ == ω₀τ₀ + G bit for bit
        # (IEEE addition commutes), and one model-tensor-sized fp32 allocation is saved.
        weight, acc = deltas[0]
        acc.mul_(fp32(weight)).add_(general)
        rest = deltas[1:]
    else:
        acc, rest = general.to(torch.float32, copy=True), deltas
    for weight, tau in rest:
        target = acc if tau.shape == acc.shape else acc[: tau.shape[0]]
        target.add_(tau.mul_(fp32(weight)))
    return acc.to(out_dtype)
