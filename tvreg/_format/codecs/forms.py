"""Stored forms: what a codec hands the merge after undoing zstd, before expanding to fp32.

Why a form and not always a dense fp32 tensor: the fused merge kernel reads the compact
form (bf16 values, int8 plus scales, sparse values plus indices, low-rank factors) and
expands it in registers, so an install never materialises K full-size fp32 temporaries.
The CPU path calls :meth:`StoredForm.to_dense`; both give the same fp32 values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _dense_numel(shape: tuple[int, ...]) -> int:
    """``numel`` of a form about to be expanded to fp32, checked against the decode memory budget."""
    from .budget import charge

    n = _numel(shape)
    charge(4 * n, where="", subject=f"a tensor of shape {list(shape)}")
    return n


@dataclass
class StoredForm:
    """Base of every stored form; ``shape`` is the task-vector tensor's logical shape."""

    shape: tuple[int, ...]

    def to_dense(self) -> torch.Tensor:
        """The fp32 task-vector tensor this form stands for (a fresh buffer the caller may modify)."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Bytes this form holds in memory (what the kernel reads)."""
        raise NotImplementedError


@dataclass
class Dense(StoredForm):
    """All values, flat, in fp32 (exact) or bf16 (lossy ``bf16``)."""

    values: torch.Tensor

    def to_dense(self) -> torch.Tensor:
        if self.values.dtype == torch.float32:
            return self.values.reshape(self.shape)
        return self.values.to(torch.float32).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size()


@dataclass
class Int8Groups(StoredForm):
    """Symmetric absmax int8: element i is ``q[i] * scales[i // group_size]`` over the flat tensor.

    A per-row codec uses ``group_size = shape[-1]``; ``scales`` is fp32 (fp16 scales are
    widened on decode) so every path multiplies in the same precision.
    """

    q: torch.Tensor
    scales: torch.Tensor
    group_size: int

    def to_dense(self) -> torch.Tensor:
        n = _dense_numel(self.shape)
        out = self.q.to(torch.float32).reshape(-1)
        groups = self.scales.to(torch.float32).repeat_interleave(self.group_size)[:n]
        return out.mul_(groups).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        return self.q.numel() + self.scales.numel() * self.scales.element_size()


@dataclass
class Sparse(StoredForm):
    """Only the kept entries: ascending flat ``indices`` (int32 or int64) and their ``values``.

    ``values`` is fp32 or bf16, or int8 with one fp32 ``scale`` for the whole tensor.
    Entries not listed are exactly zero.
    """

    indices: torch.Tensor
    values: torch.Tensor
    scale: float | None = None

    def dense_values(self) -> torch.Tensor:
        v = self.values.to(torch.float32)
        if self.scale is not None:
            v = v.mul_(torch.tensor(self.scale, dtype=torch.float32))
        return v

    def to_dense(self) -> torch.Tensor:
        out = torch.zeros(_dense_numel(self.shape), dtype=torch.float32)
        out[self.indices.to(torch.int64)] = self.dense_values()
        return out.reshape(self.shape)

    @property
    def nbytes(self) -> int:
        return self.indices.numel() * self.indices.element_size() + self.values.numel() * self.values.element_size()


@dataclass
class LowRank(StoredForm):
    """Truncated factors of a 2-D tensor: τ ≈ ``left @ right`` with ``left`` (rows, r), ``right`` (r, cols).

    The product is taken in fp32 so CPU and GPU agree up to matmul summation order.
    """

    left: torch.Tensor
    right: torch.Tensor

    def to_dense(self) -> torch.Tensor:
        _dense_numel(self.shape)
        return (self.left.to(torch.float32) @ self.right.to(torch.float32)).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        return self.left.numel() * self.left.element_size() + self.right.numel() * self.right.element_size()


__all__ = ["Dense", "Int8Groups", "LowRank", "Sparse", "StoredForm"]
