"""Slices of a stored form, expanded to float32: what the chunked CPU engine merges.

Why slices: TIES' threshold and the merge itself walk a tensor chunk by chunk, so
at most a chunk of each τ is ever expanded, whatever the tensor's size. Every slice
equals the same range of :meth:`StoredForm.to_dense` bit for bit (for low-rank
factors, up to the matmul's summation order, which is fixed for a fixed chunking).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from .._format.codecs.forms import Dense, Int8Groups, LowRank, Sparse, StoredForm


def form_numel(form: StoredForm) -> int:
    return math.prod(form.shape)


def dense_chunk(form: StoredForm, start: int, stop: int, *, consume: bool = False) -> torch.Tensor:
    """Elements ``[start, stop)`` of the flattened τ as float32 (clipped to its size).

    The result is a fresh buffer the caller may modify, except that with ``consume``
    a float32 :class:`Dense` form hands out a view of its own storage (the caller
    promises to read each element once), which saves a copy on the hot path.
    """
    stop = min(stop, form_numel(form))
    if start >= stop:
        return torch.empty(0, dtype=torch.float32)
    if isinstance(form, Dense):
        flat = form.values.reshape(-1)[start:stop]
        return flat if consume and flat.dtype == torch.float32 else flat.to(torch.float32, copy=True)
    if isinstance(form, Int8Groups):
        q = form.q.reshape(-1)[start:stop].to(torch.float32)
        groups = torch.arange(start, stop, dtype=torch.int64).div_(form.group_size, rounding_mode="floor")
        return q.mul_(form.scales.reshape(-1).to(torch.float32)[groups])
    if isinstance(form, Sparse):
        idx = form.indices.reshape(-1)
        lo = int(torch.searchsorted(idx, torch.tensor([start], dtype=idx.dtype)))
        hi = int(torch.searchsorted(idx, torch.tensor([stop], dtype=idx.dtype)))
        out = torch.zeros(stop - start, dtype=torch.float32)
        values = form.values.reshape(-1)[lo:hi].to(torch.float32)
        if form.scale is not None:
            values = values.mul_(torch.tensor(form.scale, dtype=torch.float32))
        out[idx[lo:hi].to(torch.int64) - start] = values
        return out
    if isinstance(form, LowRank):
        cols = form.shape[-1] if len(form.shape) > 1 else 1
        r0, r1 = start // cols, -(-stop // cols)
        rows = form.left[r0:r1].to(torch.float32) @ form.right.to(torch.float32)
        return rows.reshape(-1)[start - r0 * cols : stop - r0 * cols].clone()
    raise TypeError(f"unknown stored form {type(form).__name__}")


def iter_chunks(form: StoredForm, chunk: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, dense_chunk)`` over the whole form, ``chunk`` elements at a time, to be read only."""
    n = form_numel(form)
    for start in range(0, n, chunk):
        yield start, dense_chunk(form, start, start + chunk, consume=True)
