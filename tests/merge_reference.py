"""Whole-tensor plain-torch references for every merge method (no chunks, no plans).

Written from the method definitions (mergekit's ``generalized_task_arithmetic`` for
TIES/DARE, the papers for the rest), independently of ``tvreg._merge``'s engine, so
the chunked CPU engine, the Triton kernel and installs can all be checked against it.
"""

from __future__ import annotations

import torch

from tvreg._merge import rng


def f32(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.float32))


def topk_mask(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Keep max(1, ⌊density·n⌋) largest |τ|, ties broken by lower index first (a stable sort)."""
    flat = tau.reshape(-1)
    k = max(1, int(density * flat.numel()))
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    if k >= flat.numel():
        mask[:] = True
    else:
        order = torch.sort(flat.abs(), descending=True, stable=True).indices
        mask[order[:k]] = True
    return mask.reshape(tau.shape)


def reference_merge(
    method: str,
    general: torch.Tensor,
    taus: list[torch.Tensor],
    weights: list[float],
    *,
    tensor: str = "t",
    names: list[str] | None = None,
    pre: torch.Tensor | None = None,
    density: float = 0.2,
    drop_rate: float = 0.9,
    seed: int = 0,
    lam: float = 1.0,
    normalize: bool | None = None,
    kinds: list[str] | None = None,
) -> torch.Tensor:
    """The merged fp32 tensor (before rounding) for same-shape θ_G, θ_pre and τ_k."""
    names = names or [f"s{k}" for k in range(len(taus))]
    g = general.to(torch.float32).reshape(-1)
    ds = [t.to(torch.float32).reshape(-1).clone() for t in taus]
    ws = [f32(w) for w in weights]
    if method == "average":
        kinds = kinds or ["task_vector"] * len(taus)
        n_general = kinds.count("delta_from_general")
        ws = [f32(1.0 / len(taus))] * len(taus)
        if n_general == len(taus):
            acc = g.clone()
        else:
            p = pre.to(torch.float32).reshape(-1)
            c = f32(n_general / len(taus))
            acc = p.clone() if c == 0 else p + (g - p) * c
        for d, w in zip(ds, ws, strict=True):
            acc = acc + d * w
        return acc.reshape(general.shape)
    if method == "linear":
        p = pre.to(torch.float32).reshape(-1)
        c = f32(1.0 - sum(ws))
        acc = p + (g - p) * c
        for d, w in zip(ds, ws, strict=True):
            acc = acc + d * w
        return acc.reshape(general.shape)
    if method in ("task_arithmetic", "wise_ft"):
        acc = g.clone()
        for d, w in zip(ds, ws, strict=True):
            acc = acc + d * w
        return acc.reshape(general.shape)
    if method == "ties":
        ds = [torch.where(topk_mask(d, density), d, torch.zeros_like(d)) for d in ds]
        consensus, normalize = True, True if normalize is None else normalize
    elif method in ("dare_ties", "dare_linear"):
        s = f32(1.0 / (1.0 - drop_rate))
        thr = rng.drop_threshold(drop_rate)
        out = []
        for name, d in zip(names, ds, strict=True):
            keep = rng.keep_mask(rng.tensor_key(seed, name, tensor), 0, d.numel(), thr)
            out.append(torch.where(keep, d * s, torch.zeros_like(d)))
        ds = out
        consensus, normalize = method == "dare_ties", bool(normalize)
    else:
        raise ValueError(method)
    # mergekit's GTATask.execute, in float32:
    wd = [d * w for d, w in zip(ds, ws, strict=True)]
    if consensus:
        total = torch.zeros_like(g)
        for x in wd:
            total = total + x
        majority = torch.where(total >= 0, 1.0, -1.0)
        agree = [torch.sign(x) == majority for x in wd]
        mixed = torch.zeros_like(g)
        divisor = torch.zeros_like(g)
        for x, a, w in zip(wd, agree, ws, strict=True):
            mixed = mixed + torch.where(a, x, torch.zeros_like(x))
            divisor = divisor + torch.where(a, w, 0.0)
        divisor[divisor == 0] = 1
    else:
        mixed = torch.zeros_like(g)
        for x in wd:
            mixed = mixed + x
        divisor = torch.tensor(0.0)
        for w in ws:
            divisor = divisor + w
        if divisor.abs() < 1e-8:
            divisor = torch.tensor(1.0)
    if normalize:
        mixed = mixed / divisor
    if lam != 1:
        mixed = mixed * f32(lam)
    return (g + mixed).reshape(general.shape)
