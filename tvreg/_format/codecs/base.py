"""The contract every task-vector codec meets, and how codecs take parameters."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ...errors import CorruptArtifact, InvalidCodecOption
from .forms import Dense, StoredForm

if TYPE_CHECKING:
    import numpy as np

    from .planes import MaskedBlob


@dataclass(frozen=True)
class Encoded:
    """One coded tensor: the stored bytes, the parameters the decoder needs, and who coded it.

    ``codec`` is set when a codec handed the tensor to another one (``lowrank`` falling
    back, ``auto`` choosing); the manifest records that name, so decoding never needs
    the chooser. ``rel_error`` is set when the encoder already measured it.
    """

    data: bytes
    params: dict = field(default_factory=dict)
    codec: str | None = None
    rel_error: float | None = None


@dataclass(frozen=True)
class Option:
    """One build-time parameter of a codec (``--codec-param KEY=VALUE``)."""

    help: str
    default: object
    kind: type = float
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def parse(self, codec: str, key: str, value: Any) -> object:
        def bad(why: str) -> InvalidCodecOption:
            return InvalidCodecOption(f"codec `{codec}` parameter `{key}` {why}, not {value!r}.")

        if self.choices:
            if str(value) not in self.choices:
                raise bad(f"must be one of {', '.join(self.choices)}")
            return str(value)
        parsed: float
        try:
            if self.kind is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                parsed = int(value)
            else:
                parsed = float(value)
        except (TypeError, ValueError):
            raise bad(f"must be {'an integer' if self.kind is int else 'a number'}") from None
        if not math.isfinite(parsed):
            raise bad("must be finite")
        if self.low is not None and (parsed < self.low or (self.low_open and parsed == self.low)):
            raise bad(f"must be {'>' if self.low_open else '≥'} {self.low:g}")
        if self.high is not None and parsed > self.high:
            raise bad(f"must be ≤ {self.high:g}")
        return parsed


class Codec(ABC):
    """Turns one fp32 task-vector tensor into bytes and back.

    Guarantees a codec must give:
      - ``decode(encode(t).data, t.shape, params)`` has ``t``'s shape and dtype float32;
        lossless codecs return ``t`` bit for bit.
      - ``decode`` never allocates more than the declared size (4 bytes per element plus
        a constant): hostile data fails with :class:`~tvreg.errors.CorruptArtifact`.
      - ``encode`` and ``decode`` are thread-safe and release the GIL in their heavy parts,
        so tensors can be coded in parallel.

    Build-time parameters (``density``, ``rank``, ...) are declared in ``options`` and
    given to the constructor; decode-time parameters travel in ``Encoded.params``.
    """

    name: ClassVar[str]
    lossless: ClassVar[bool]
    options: ClassVar[dict[str, Option]] = {}

    def __init__(self, **opts: object) -> None:
        unknown = sorted(set(opts) - set(self.options))
        if unknown:
            takes = ", ".join(sorted(self.options)) or "no parameters"
            raise InvalidCodecOption(
                f"codec `{self.name}` has no parameter `{unknown[0]}`; it takes {takes}."
            )
        # Each value has its option's `kind`, which the checker cannot follow per key.
        self.opts: dict[str, Any] = {k: o.default for k, o in self.options.items()}
        self.opts.update({k: self.options[k].parse(self.name, k, v) for k, v in opts.items()})

    def describe(self) -> str:
        """``name`` plus the parameters that differ from the defaults, e.g. ``sparse(density=0.05)``."""
        changed = {k: v for k, v in self.opts.items() if v != self.options[k].default}
        return self.name + (f"({', '.join(f'{k}={v}' for k, v in changed.items())})" if changed else "")

    @abstractmethod
    def encode(self, tensor: torch.Tensor) -> Encoded:
        """Code a float32 tensor."""

    def encode_named(self, name: str, tensor: torch.Tensor) -> Encoded:
        """Code ``tensor``, the model tensor ``name``; what the artifact writer calls.

        The same as :meth:`encode` unless a coder codes by name: calibrated ``auto`` hands
        back, per tensor, the coding it measured (a per-layer plan mixes settings).
        """
        return self.encode(tensor)

    def decode(
        self, data: bytes | bytearray | memoryview, shape: tuple[int, ...], params: dict, *, where: str
    ) -> torch.Tensor:
        """Decode into a fresh float32 tensor of ``shape``; ``where`` names the tensor in errors."""
        return self.decode_form(data, shape, params, where=where).to_dense()

    def decode_form(
        self, data: bytes | bytearray | memoryview, shape: tuple[int, ...], params: dict, *, where: str
    ) -> StoredForm:
        """Decode to the codec's compact stored form; the fused merge kernel expands it in place.

        The default wraps :meth:`decode`; lossy codecs override it to skip the fp32 expansion.
        """
        return Dense(shape=tuple(shape), values=self.decode(data, shape, params, where=where).reshape(-1))

    def add_into(
        self,
        data: bytes | bytearray | memoryview,
        shape: tuple[int, ...],
        params: dict,
        *,
        where: str,
        acc: torch.Tensor,
        weight: float,
    ) -> bool:
        """``acc ← acc + τ·weight`` (float32, each product and sum rounded) without materialising τ, if this
        codec can for these ``params``; returns False, having done nothing, when it cannot.

        ``acc`` is a contiguous float32 tensor of τ's element count and ``weight`` a float32
        value. The bits must equal ``acc.add_(decode(...).reshape(-1).mul_(weight))``; the
        data must pass every check :meth:`decode` makes. Default: False (callers then add
        :meth:`decode_form`'s chunks).
        """
        return False

    def decode_form_with_histogram(
        self, data: bytes | bytearray | memoryview, shape: tuple[int, ...], params: dict, *, where: str
    ) -> tuple[StoredForm, np.ndarray] | None:
        """:meth:`decode_form` and the first radix histogram of |τ| (:func:`tvreg._format.codecs.jit.magnitude_hist`,
        ``high=-1``) counted while decoding, when this codec can count it cheaper than a pass over the dense
        τ; None, having done nothing, when it cannot. Default: None."""
        return None

    def masked_blob(self, data: bytes | memoryview, shape: tuple[int, ...], params: dict, *, where: str) -> MaskedBlob | None:
        """The blob as frames :func:`tvreg._format.codecs.planes.add_round_masked` can add beside other
        skills' (an ``exact`` zero-bitmap blob), or None. Default: None."""
        return None


def relative_error(tau: torch.Tensor, approx: torch.Tensor) -> float:
    """‖approx − τ‖ / ‖τ‖ in float64 (0 when both are zero, inf when only τ is)."""
    ref = float(torch.linalg.vector_norm(tau.reshape(-1).double()))
    diff = float(torch.linalg.vector_norm(approx.reshape(-1).double() - tau.reshape(-1).double()))
    if ref == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / ref


def numel_of(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def raw_view(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous tensor as a writable memoryview (no copy)."""
    return memoryview(t.reshape(-1).view(torch.uint8).numpy()).cast("B")  # type: ignore[arg-type]  # numpy's stubs make ndarray a buffer only on 3.12+


def param(params: dict, key: str, kinds: type | tuple[type, ...], where: str, *, default: object = None):
    """``params[key]`` checked against ``kinds``: manifests are untrusted input."""
    value = params.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, kinds):
        raise CorruptArtifact(f"tensor `{where}` has a missing or malformed codec parameter `{key}`.")
    return value


def options_from_strings(pairs: Mapping[str, str] | list[str]) -> dict[str, str]:
    """``["density=0.1", "values=int8"]`` → ``{"density": "0.1", "values": "int8"}``."""
    if isinstance(pairs, Mapping):
        return dict(pairs)
    out: dict[str, str] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidCodecOption(f"codec parameter `{item}` is not KEY=VALUE.")
        out[key.strip().replace("-", "_")] = value.strip()
    return out
