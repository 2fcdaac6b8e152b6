"""The contract every task-vector codec meets."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from .forms import Dense, StoredForm


@dataclass(frozen=True)
class Encoded:
    """One coded tensor: the bytes stored in the artifact and the codec parameters the decoder needs."""

    data: bytes
    params: dict = field(default_factory=dict)


class Codec(ABC):
    """Turns one fp32 task-vector tensor into bytes and back.

    Guarantees a codec must give:
      - ``decode(encode(t).data, t.shape, params)`` has ``t``'s shape and dtype float32;
        lossless codecs return ``t`` bit for bit.
      - ``decode`` never allocates more than the declared size (4 bytes per element plus
        a constant): hostile data fails with :class:`~tvreg.errors.CorruptArtifact`.
      - ``encode`` and ``decode`` are thread-safe and release the GIL in their heavy parts,
        so tensors can be coded in parallel.
    """

    name: str
    lossless: bool

    @abstractmethod
    def encode(self, tensor: torch.Tensor) -> Encoded:
        """Code a contiguous float32 tensor."""

    @abstractmethod
    def decode(
        self, data: bytes | memoryview, shape: tuple[int, ...], params: dict, *, where: str
    ) -> torch.Tensor:
        """Decode into a fresh float32 tensor of ``shape``; ``where`` names the tensor in errors."""

    def decode_form(
        self, data: bytes | memoryview, shape: tuple[int, ...], params: dict, *, where: str
    ) -> StoredForm:
        """Decode to the codec's compact stored form; the fused merge kernel expands it in place.

        The default wraps :meth:`decode`; lossy codecs override it to skip the fp32 expansion.
        """
        return Dense(shape=tuple(shape), values=self.decode(data, shape, params, where=where).reshape(-1))
