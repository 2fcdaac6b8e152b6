"""Element masks as int32 words (all ones = keep, 0 = drop), computed with integer arithmetic.

Why not boolean tensors: on the CPU, torch's comparisons, ``where`` and ``masked_fill``
with bool tensors run element by element (1-5 ns each here), while int32 subtract, shift
and ``and`` run vectorised at memory speed. For non-negative IEEE floats the bit
pattern orders like the value, so ``|x| > t`` is the sign of ``t_bits − |x|_bits``,
and applying a mask is an ``and`` on the float's bits, which yields +0.0 exactly
where the Triton kernel's ``tl.where(keep, x, 0.0)`` does.
"""

from __future__ import annotations

import struct

import torch

_ABS = 0x7FFFFFFF


def float_bits(value: float) -> int:
    """The float32 bit pattern of ``value`` as a signed 32-bit int."""
    return struct.unpack("<i", struct.pack("<f", value))[0]


def magnitude_bits(x: torch.Tensor) -> torch.Tensor:
    """|x|'s bit patterns (int32, a new tensor) of a float32 tensor: ordered like |x| for non-NaN values."""
    return x.view(torch.int32).bitwise_and(_ABS)


def above_(bits: torch.Tensor, limit: int) -> torch.Tensor:
    """Overwrite ``bits`` with all ones where ``bits > limit``, 0 elsewhere; returns it.

    ``limit − bits`` must fit in int32, as it does for the callers: magnitudes' bit
    patterns and 24-bit draws against limits ≥ −1.
    """
    return bits.neg_().add_(limit).bitwise_right_shift_(31)


def keep(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` where ``mask`` is all ones, +0.0 elsewhere, in place; returns ``x``."""
    x.view(torch.int32).bitwise_and_(mask)
    return x
