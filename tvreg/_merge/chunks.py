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

from .._format.codecs.forms import StoredForm


def form_numel(form: StoredForm) -> int:
    return math.prod(form.shape)


def dense_chunk(form: StoredForm, start: int, stop: int, *, consume: bool = False) -> torch.Tensor:
    """Elements ``[start, stop)`` of the flattened τ as float32 (clipped to its size).

    Each form expands its own slice (:meth:`StoredForm.chunk`). The result is a fresh
    buffer the caller may modify, except that with ``consume`` a float32 ``Dense`` form
    hands out a view of its own storage (the caller promises to read each element once),
    which saves a copy on the hot path.
    """
    stop = min(stop, form_numel(form))
    if start >= stop:
        return torch.empty(0, dtype=torch.float32)
    return form.chunk(start, stop, consume=consume)


def iter_chunks(form: StoredForm, chunk: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, dense_chunk)`` over the whole form, ``chunk`` elements at a time, to be read only."""
    n = form_numel(form)
    for start in range(0, n, chunk):
        yield start, dense_chunk(form, start, start + chunk, consume=True)
