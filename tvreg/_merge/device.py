"""Where merges run: ``--device auto|cuda|cpu``, and the CUDA path around the fused kernel.

``auto`` picks CUDA when torch sees a GPU and Triton is installed, else the CPU. On
CUDA each install worker thread has its own stream: the stored forms are copied
host→device from pinned buffers, the kernel runs, and the result comes back into a
pinned buffer, so one thread's copies overlap another's kernel while the main thread
writes shards. Both paths return a CPU tensor with the same bits (see the tests; the
spec allows the kernel one ulp).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence

import torch

from .._format.codecs.forms import StoredForm
from ..errors import MergeError
from .engine import TensorPlan, merge_tensor

DEVICES = ("auto", "cuda", "cpu")

Merger = Callable[
    [TensorPlan, torch.Tensor, Sequence[StoredForm | None], torch.Tensor | None, torch.dtype, torch.Tensor | None],
    torch.Tensor,
]
"""``(plan, general, forms, pre, out_dtype, out)`` → the merged CPU tensor, written into ``out`` where the
device can (the CPU; CUDA returns its pinned copy)."""


def resolve_device(name: str) -> str:
    """``cpu`` or ``cuda`` for ``--device NAME``; a clear error when CUDA is asked for but absent."""
    if name not in DEVICES:
        raise MergeError(f"unknown device `{name}`; choose one of {', '.join(DEVICES)}.")
    from ..kernels import available

    if name == "cpu":
        return "cpu"
    usable = torch.cuda.is_available() and available()
    if name == "cuda" and not usable:
        why = "torch sees no CUDA GPU" if not torch.cuda.is_available() else "Triton is not installed"
        raise MergeError(
            f"`--device cuda` was asked for, but {why}.", hints=["use `--device cpu` (or `auto`)"]
        )
    return "cuda" if usable else "cpu"


def _cpu_merge(plan, general, forms, pre, out_dtype, out=None):
    return merge_tensor(plan, general, forms, pre=pre, out_dtype=out_dtype, consume=True, out=out)


def _to_device(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.pin_memory().to(device, non_blocking=True)
    if isinstance(value, StoredForm):
        value = value.resolved()  # a hashed sparse form computes its positions here, on the CPU
        changes = {
            f.name: _to_device(getattr(value, f.name), device)
            for f in dataclasses.fields(value)
            if isinstance(getattr(value, f.name), torch.Tensor)
        }
        return dataclasses.replace(value, **changes)
    return value


class _CudaMerger:
    """The fused kernel on the current GPU, one CUDA stream per calling thread."""

    def __init__(self) -> None:
        from ..kernels.fused_merge import merge_tensor_fused

        self._fused = merge_tensor_fused
        self._device = torch.device("cuda", torch.cuda.current_device())
        self._local = threading.local()

    def __call__(self, plan, general, forms, pre, out_dtype, out=None):
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(self._device)
        with torch.cuda.stream(stream):
            g = _to_device(general, self._device)
            p = _to_device(pre, self._device) if pre is not None else None
            fs = [_to_device(f.resolved(), self._device) if f is not None else None for f in forms]
            out = self._fused(plan, g, fs, pre=p, out_dtype=out_dtype)
            host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            host.copy_(out, non_blocking=True)
        stream.synchronize()
        return host


def merger_for(device: str) -> Merger:
    """The function that merges one tensor on ``device`` (``cpu`` or ``cuda``) into a CPU tensor."""
    return _CudaMerger() if device == "cuda" else _cpu_merge
