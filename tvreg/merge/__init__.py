"""Merge methods as pure functions on one tensor (or chunk) at a time.

Numerics, for every method: θ_final = round_to_dtype(fp32(θ_G) + Σ_k in listed order
(fp32(ω_k) · fp32(τ_k))), with the product rounded to fp32 before the add (no fused
multiply-add), so the same inputs in the same order give the same bits on any machine.
"""

from .task_arithmetic import task_arithmetic

METHODS = ("task_arithmetic",)

__all__ = ["METHODS", "task_arithmetic"]
