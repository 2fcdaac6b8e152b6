"""Stored forms: what a codec hands the merge after undoing zstd, before expanding to fp32.

Why a form and not always a dense fp32 tensor: the fused merge kernel reads the compact
form (bf16 values, int8 plus scales, sparse values plus indices, low-rank factors) and
expands it in registers, so an install never materialises K full-size fp32 temporaries.
The CPU path calls :meth:`StoredForm.to_dense`; both give the same fp32 values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .planes import MaskedBlob

#: What the fused kernel reads of one skill over one chunk: ``(values, scales, offset, group, scaled)``;
#: element ``i`` is ``values[i - offset]``, times ``scales[i // group]`` when ``scaled``.
Registers = tuple[torch.Tensor, torch.Tensor, int, int, bool]
#: A device scatter for a sparse chunk (the kernel's own), used instead of :meth:`Sparse.chunk` when given.
Scatter = Callable[["Sparse", int, int, torch.device], torch.Tensor]


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

    def chunk(self, start: int, stop: int, *, consume: bool = False) -> torch.Tensor:
        """Elements ``[start, stop)`` of the flattened τ as float32, ``0 <= start < stop <= numel``.

        Equal bit for bit to the same range of :meth:`to_dense` (low-rank: for a fixed chunking),
        so the chunked engine never expands more than a chunk. A fresh buffer, except that with
        ``consume`` a float32 :class:`Dense` hands out a view of its storage (read each element once).
        """
        raise NotImplementedError

    def shared(self) -> StoredForm | None:
        """This form, ready for :meth:`chunk` from several threads at once, or None when it is not.

        Why: the engine spreads a big tensor's chunks over the shared threads, which must neither
        decode (they would wait on themselves) nor touch state another chunk writes. A decoded
        :class:`Dense` is a pure slice of one buffer; others keep their chunks on one thread.
        """
        return None

    def magnitude_lanes(self) -> np.ndarray | None:
        """The first radix histogram of |τ| (:func:`tvreg._format.codecs.jit.magnitude_hist`, ``high=-1``) when
        this form got it cheaper than a pass over its dense values (counted while decoding), else None.

        TIES' cutoff (:func:`tvreg._merge.trim.magnitude_trim`) then starts from it.
        """
        return None

    def add_scaled(self, acc: torch.Tensor, weight: float, *, chunk: int, consume: bool = False) -> None:
        """``acc ← acc + τ·weight`` over τ's first ``acc.numel()`` elements (float32, each product and sum rounded).

        Bit for bit the engine's chunked direct path: chunks start at multiples of
        ``chunk`` from 0 (a low-rank form's bits depend on its chunking), and each is
        ``acc_chunk.add_(chunk.mul_(weight))``. ``consume`` as for :meth:`chunk`.
        """
        n = acc.numel()
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            acc[start:stop].add_(self.chunk(start, stop, consume=consume).mul_(weight))

    def resolved(self) -> StoredForm:
        """This form with its arrays in memory (what a device copy reads); only :class:`Undecoded` differs."""
        return self

    def add_round(self, general: torch.Tensor, weight: float, out: torch.Tensor) -> bool:
        """``out ← bf16(θ_G + τ·weight)`` in one pass, the bits of :meth:`add_scaled` onto float32 θ_G and a rounding copy.

        For forms that can (a hashed :class:`Sparse`); False, having done nothing, otherwise
        (the engine then takes its float32 sum). ``general`` and ``out`` are flat, of τ's size.
        """
        return False

    def registers(
        self, start: int, stop: int, extent: int, device: torch.device, *, scatter: Scatter | None = None
    ) -> Registers:
        """What the fused kernel reads for elements ``[start, stop)``: by default this form's chunk
        expanded to float32 (nothing past ``extent``); compact forms the kernel expands in
        registers override it to hand over their stored arrays as they are."""
        stop = min(stop, extent)
        if start >= stop:
            empty = torch.empty(0, dtype=torch.float32, device=device)
            return empty, empty, start, 1, False
        expanded = self._expand_on(start, stop, device, scatter)
        return expanded, expanded, start, 1, False

    def _expand_on(self, start: int, stop: int, device: torch.device, scatter: Scatter | None) -> torch.Tensor:
        return self.chunk(start, stop).to(device)


@dataclass
class Dense(StoredForm):
    """All values, flat, in fp32 (exact) or bf16 (lossy ``bf16``)."""

    values: torch.Tensor

    def shared(self) -> StoredForm | None:
        return self

    def to_dense(self) -> torch.Tensor:
        if self.values.dtype == torch.float32:
            return self.values.reshape(self.shape)
        return self.values.to(torch.float32).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size()

    def chunk(self, start: int, stop: int, *, consume: bool = False) -> torch.Tensor:
        flat = self.values.reshape(-1)[start:stop]
        return flat if consume and flat.dtype == torch.float32 else flat.to(torch.float32, copy=True)

    def registers(
        self, start: int, stop: int, extent: int, device: torch.device, *, scatter: Scatter | None = None
    ) -> Registers:
        return self.values.reshape(-1), self.values, 0, 1, False


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

    def chunk(self, start: int, stop: int, *, consume: bool = False) -> torch.Tensor:
        q = self.q.reshape(-1)[start:stop].to(torch.float32)
        groups = torch.arange(start, stop, dtype=torch.int64).div_(self.group_size, rounding_mode="floor")
        return q.mul_(self.scales.reshape(-1).to(torch.float32)[groups])

    def registers(
        self, start: int, stop: int, extent: int, device: torch.device, *, scatter: Scatter | None = None
    ) -> Registers:
        return self.q.reshape(-1), self.scales.reshape(-1).to(torch.float32), 0, self.group_size, True


_NO_SLOTS = np.zeros(0, dtype=np.int64)
"""An empty output for :func:`~tvreg._format.codecs.jit.hash_positions`: count only."""
_NO_FLOAT32 = np.zeros(0, dtype=np.float32)
"""No float32 sums wanted from :func:`~tvreg._format.codecs.jit.hash_add_round_bf16`: round to bf16."""


def _place(indices: torch.Tensor, values: torch.Tensor, start: int, out: torch.Tensor) -> None:
    """``out[indices − start] = values`` (float32, CPU): compiled for big ranges, torch's indexed store otherwise."""
    from . import jit

    if (
        jit.ready(out.numel())
        and indices.dtype in (torch.int32, torch.int64)
        and values.is_contiguous()
        and out.device.type == indices.device.type == values.device.type == "cpu"
    ):
        jit.place(indices.numpy(), values.numpy(), start, out.numpy())
    else:
        out[indices.to(torch.int64) - start] = values


@dataclass
class Sparse(StoredForm):
    """Only the kept entries: ascending flat ``indices`` (int32 or int64) and their ``values``.

    ``values`` is fp32 or bf16, or int8 with one fp32 ``scale`` for the whole tensor.
    Entries not listed are exactly zero.

    ``hashed``: ``(seed, threshold)`` when the positions are a hash's (``select=random``) and
    ``indices`` is None until something asks for :attr:`positions`. Why lazily: adding the
    form into a sum (:meth:`add_scaled`, the install's direct path) hashes block by block
    and never needs the positions as an array. ``where`` names the tensor in errors.
    """

    indices: torch.Tensor | None
    values: torch.Tensor
    scale: float | None = None
    hashed: tuple[int, int] | None = None
    where: str = ""

    @property
    def positions(self) -> torch.Tensor:
        """``indices``, computed from the hash on first use (and checked against the values' count)."""
        if self.indices is None:
            from .sparse import hashed_positions

            seed, threshold = self._hash
            n, k = _numel(self.shape), self.values.numel()
            found = hashed_positions(n, threshold, seed, expected=k, dtype=np.int32 if n <= 2**31 - 1 else np.int64)
            self._check_count(len(found))
            self.indices = torch.from_numpy(found)
        return self.indices

    @property
    def _hash(self) -> tuple[int, int]:
        if self.hashed is None:
            raise ValueError("a sparse form needs its indices or its hash")
        return self.hashed

    def _check_count(self, found: int) -> None:
        if found != self.values.numel():
            from ...errors import CorruptArtifact

            raise CorruptArtifact(
                f"tensor `{self.where}` hashes to {found} kept entries but declares {self.values.numel()}."
            )

    def resolved(self) -> StoredForm:
        self.indices = self.positions
        return self

    def dense_values(self) -> torch.Tensor:
        v = self.values.to(torch.float32)
        if self.scale is not None:
            v = v.mul_(torch.tensor(self.scale, dtype=torch.float32))
        return v

    def to_dense(self) -> torch.Tensor:
        out = torch.zeros(_dense_numel(self.shape), dtype=torch.float32)
        _place(self.positions.reshape(-1), self.dense_values().reshape(-1), 0, out)
        return out.reshape(self.shape)

    @property
    def nbytes(self) -> int:
        index_bytes = 4 if _numel(self.shape) <= 2**31 - 1 else 8
        if self.indices is not None:
            index_bytes = self.indices.element_size()
        return self.values.numel() * (index_bytes + self.values.element_size())

    def chunk(self, start: int, stop: int, *, consume: bool = False) -> torch.Tensor:
        idx = self.positions.reshape(-1)
        lo = int(torch.searchsorted(idx, torch.tensor([start], dtype=idx.dtype)))
        hi = int(torch.searchsorted(idx, torch.tensor([stop], dtype=idx.dtype)))
        out = torch.zeros(stop - start, dtype=torch.float32)
        values = self.values.reshape(-1)[lo:hi].to(torch.float32)
        if self.scale is not None:
            values = values.mul_(torch.tensor(self.scale, dtype=torch.float32))
        _place(idx[lo:hi], values, start, out)
        return out

    def add_scaled(self, acc: torch.Tensor, weight: float, *, chunk: int, consume: bool = False) -> None:
        """As :meth:`StoredForm.add_scaled`, in one compiled pass over ``acc`` with τ never expanded (same bits).

        Hashed positions are hashed block by block as the pass goes (none stored).
        """
        from . import jit

        if not (
            jit.ready(acc.numel())
            and acc.dtype == torch.float32
            and acc.is_contiguous()
            and acc.device.type == self.values.device.type == "cpu"
            and (self.indices is None or self.indices.device.type == "cpu")
        ):
            return super().add_scaled(acc, weight, chunk=chunk, consume=consume)
        values = self._closed_values()
        n = acc.numel()
        seed, threshold = self.hashed or (0, 1 << 32)
        if self.indices is None and n <= 1 << 32 and threshold < 1 << 32:
            found = jit.hash_add(threshold, seed, values.numpy(), acc.numpy(), weight)
            total = _numel(self.shape)
            if total > n:
                found += jit.hash_positions(n, total, threshold, seed, _NO_SLOTS)
            self._check_count(found)
            return
        idx = self.positions.reshape(-1)
        below = int(torch.searchsorted(idx, torch.tensor([n], dtype=idx.dtype)))
        if jit.sparse_add(idx.numpy(), values.numpy(), acc.numpy(), weight) != below:
            raise ValueError("a sparse form's positions are out of order")

    def _closed_values(self) -> torch.Tensor:
        """The values in float32 (as :meth:`dense_values` scales them), then the +0.0 an absent entry reads."""
        k = self.values.numel()
        values = torch.empty(k + 1, dtype=torch.float32)
        values[:k] = self.values.reshape(-1)
        if self.scale is not None:
            values[:k].mul_(torch.tensor(self.scale, dtype=torch.float32))
        values[k] = 0.0
        return values

    def add_round(self, general: torch.Tensor, weight: float, out: torch.Tensor) -> bool:
        """Hashed positions onto bf16 θ_G and rounded in one compiled pass (:func:`~.jit.hash_add_round_bf16`).

        Why: otherwise the install widens θ_G to a float32 sum, adds, and rounds it back,
        three passes over a tensor-sized buffer; an ``exact`` blob already skips them
        (:func:`~.planes.add_round_masked`), and a random-sparse skill should install as fast.
        """
        from . import jit

        n = _numel(self.shape)
        if (
            self.indices is not None
            or self.hashed is None
            or self.hashed[1] >= 1 << 32
            or n > 1 << 32
            or general.dtype != torch.bfloat16
            or out.dtype != torch.bfloat16
            or general.numel() != n
            or out.numel() != n
            or not general.is_contiguous()
            or not out.is_contiguous()
            or general.device.type != "cpu"
            or out.device.type != "cpu"
            or self.values.device.type != "cpu"
            or not jit.ready(n)
        ):
            return False
        seed, threshold = self.hashed
        values = self._closed_values().numpy()
        g = general.reshape(-1).view(torch.int16).numpy().view(np.uint16)
        o = out.reshape(-1).view(torch.int16).numpy().view(np.uint16)
        found, nans = jit.hash_add_round_bf16(g, threshold, seed, values, weight, o, _NO_FLOAT32)
        self._check_count(found)
        if nans:  # torch rounds NaN sums to its own bits
            sums = torch.empty(n, dtype=torch.float32)
            jit.hash_add_round_bf16(g, threshold, seed, values, weight, o, sums.numpy())
            out.reshape(-1).copy_(sums)
        return True

    def registers(
        self, start: int, stop: int, extent: int, device: torch.device, *, scatter: Scatter | None = None
    ) -> Registers:
        values, _, offset, group, scaled = super().registers(start, stop, extent, device, scatter=scatter)
        return values, self.values if values.numel() else values, offset, group, scaled

    def _expand_on(self, start: int, stop: int, device: torch.device, scatter: Scatter | None) -> torch.Tensor:
        return scatter(self, start, stop, device) if scatter is not None else self.chunk(start, stop).to(device)


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

    def chunk(self, start: int, stop: int, *, consume: bool = False) -> torch.Tensor:
        cols = self.shape[-1] if len(self.shape) > 1 else 1
        r0, r1 = start // cols, -(-stop // cols)
        rows = self.left[r0:r1].to(torch.float32) @ self.right.to(torch.float32)
        return rows.reshape(-1)[start - r0 * cols : stop - r0 * cols].clone()

    def registers(
        self, start: int, stop: int, extent: int, device: torch.device, *, scatter: Scatter | None = None
    ) -> Registers:
        values, _, offset, group, scaled = super().registers(start, stop, extent, device, scatter=scatter)
        return values, self.left if values.numel() else values, offset, group, scaled

    def _expand_on(self, start: int, stop: int, device: torch.device, scatter: Scatter | None) -> torch.Tensor:
        return self.chunk(start, stop)  # the factors' device: the product is taken where they live


__all__ = ["Dense", "Int8Groups", "LowRank", "Registers", "Scatter", "Sparse", "StoredForm"]


@dataclass
class Undecoded(StoredForm):
    """A verified blob whose decode waits until the merge asks for it.

    Why: the CPU engine's direct path (task arithmetic) adds ω·τ onto θ_G; a codec that
    can add its frames straight into that float32 accumulator (``add``) spares the τ
    tensor, its page faults and three passes over it. Any other use (TIES' trim, the
    chunked engine, a device copy) decodes the blob once, on first use, with ``decode``,
    and reads that form; both give the same bits.
    """

    decode: Callable[[], StoredForm]
    add: Callable[[torch.Tensor, float], bool]
    #: the blob's frames when the codec can add them beside other skills' (:func:`planes.add_round_masked`)
    masked: MaskedBlob | None = field(default=None, repr=False)
    #: the decode that also counts |τ|'s first radix histogram, when the codec has one (else it returns None)
    decode_counting: Callable[[], tuple[StoredForm, np.ndarray] | None] | None = field(default=None, repr=False)
    _form: StoredForm | None = field(default=None, repr=False)

    def resolved(self) -> StoredForm:
        if self._form is None:
            self._form = self.decode()
        return self._form

    def magnitude_lanes(self) -> np.ndarray | None:
        if self._form is not None or self.decode_counting is None:
            return None
        got = self.decode_counting()
        if got is None:
            return None
        self._form, lanes = got
        return lanes

    def to_dense(self) -> torch.Tensor:
        return self.resolved().to_dense()

    def shared(self) -> StoredForm | None:
        return self.resolved().shared()

    @property
    def nbytes(self) -> int:
        return self.resolved().nbytes

    def chunk(self, start: int, stop: int, *, consume: bool = False) -> torch.Tensor:
        return self.resolved().chunk(start, stop, consume=consume)

    def registers(
        self, start: int, stop: int, extent: int, device: torch.device, *, scatter: Scatter | None = None
    ) -> Registers:
        return self.resolved().registers(start, stop, extent, device, scatter=scatter)

    def add_round(self, general: torch.Tensor, weight: float, out: torch.Tensor) -> bool:
        if self._form is None and self.masked is not None:
            return False  # an exact blob: the engine adds its frames (planes.add_round_masked) without a decode
        return self.resolved().add_round(general, weight, out)

    def add_scaled(self, acc: torch.Tensor, weight: float, *, chunk: int, consume: bool = False) -> None:
        if self._form is None and self.add(acc, weight):
            return
        self.resolved().add_scaled(acc, weight, chunk=chunk, consume=consume)
