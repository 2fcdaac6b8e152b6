"""Fused GPU merge kernels (Triton). Importing this package imports Triton; callers check :func:`available` first."""

from __future__ import annotations


def available() -> bool:
    """Whether Triton can be imported (it is an optional dependency)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
