"""The fused Triton kernel, run by Triton's interpreter on CPU tensors, equals the torch engine.

``TRITON_INTERPRET=1`` must be set before the kernel module is imported (``triton.jit``
reads it when decorating). Sizes stay tiny: the interpreter runs each block in numpy.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import importorskip_unless_ci  # noqa: E402

# `[test]` installs Triton, so this runs there; a client-only venv (`pip install tvreg`) skips it, CI fails.
importorskip_unless_ci("triton", reason="Triton is not installed (it comes with `pip install 'tvreg[test]'`)")

from test_merge_methods import PARAMS, kinds_for, rand_inputs  # noqa: E402

from tvreg._format.codecs.forms import Dense, Int8Groups, LowRank, Sparse  # noqa: E402
from tvreg._merge import METHODS, get_method, merge_tensor, plan_tensor  # noqa: E402
from tvreg.kernels.fused_merge import merge_tensor_fused  # noqa: E402

SHAPE = (13, 11)  # 143 elements: chunks of 64 leave a ragged end of 15
N = 143


def forms_of_every_kind(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [
        Dense(shape=SHAPE, values=(torch.randn(N, generator=gen) * 0.01).to(torch.bfloat16)),
        Dense(shape=SHAPE, values=torch.randn(N, generator=gen) * 0.01),
        Int8Groups(
            shape=SHAPE,
            q=torch.randint(-127, 128, (N,), dtype=torch.int8, generator=gen),
            scales=torch.rand(5, generator=gen) * 1e-4,
            group_size=32,
        ),
        Sparse(
            shape=SHAPE,
            indices=torch.tensor([0, 3, 63, 64, 65, 100, 142], dtype=torch.int32),
            values=torch.randn(7, generator=gen).to(torch.bfloat16),
        ),
        Sparse(
            shape=SHAPE,
            indices=torch.tensor([1, 70, 141], dtype=torch.int64),
            values=torch.tensor([5, -9, 127], dtype=torch.int8),
            scale=2e-4,
        ),
        LowRank(
            shape=SHAPE,
            left=torch.randn(13, 2, generator=gen) * 0.05,
            right=torch.randn(2, 11, generator=gen),
        ),
    ]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_kernel_equals_torch_engine_for_every_method_and_form(method, out_dtype):
    general, pre, _, _ = rand_inputs(1, shape=SHAPE, seed=11)
    general = general.to(torch.bfloat16)
    forms = forms_of_every_kind(12)
    weights = [0.3, -0.2, 0.5, 0.25, 0.4, 0.15]
    m = get_method(method)
    recipe = m.recipe(weights, kinds_for(method, len(forms)), m.resolve_params(PARAMS[method]))
    names = [f"skill{k}" for k in range(len(forms))]
    plan = plan_tensor(recipe, "w", names, forms, N, pre_numel=N, chunk=64)
    kwargs = dict(pre=pre if recipe.needs_base_weights else None, out_dtype=out_dtype, chunk=64)
    expected = merge_tensor(plan, general, forms, **kwargs)
    got = merge_tensor_fused(plan, general, forms, **kwargs)
    assert got.dtype == out_dtype and got.shape == SHAPE
    assert torch.equal(got, expected), (got - expected).abs().max()


def low_bit_forms(seed: int):
    """The stored forms the low-bit codecs decode to (issue 23): int8 codes of [−7, 7] or ±1, fp32 sparse values."""
    from tvreg._format.codecs import get_codec, make_codec

    tau = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)) * 0.01
    settings = [("int4", {"group": 16}), ("sign", {}), ("sparse", {"density": 0.3, "select": "random", "values": "int4", "group": 8}),
                ("sparse", {"density": 0.4, "values": "sign", "group": 8})]  # fmt: skip
    forms = []
    for name, opts in settings:
        enc = make_codec(name, opts).encode(tau)
        forms.append(get_codec(name).decode_form(enc.data, SHAPE, enc.params, where=name))
    return forms


@pytest.mark.parametrize("method", METHODS)
def test_kernel_equals_torch_engine_on_the_low_bit_forms(method):
    general, pre, _, _ = rand_inputs(1, shape=SHAPE, seed=13)
    forms = low_bit_forms(14)
    assert [type(f).__name__ for f in forms] == ["Int8Groups", "Int8Groups", "Sparse", "Sparse"]
    m = get_method(method)
    recipe = m.recipe([0.3, -0.2, 0.5, 0.25], kinds_for(method, len(forms)), m.resolve_params(PARAMS[method]))
    plan = plan_tensor(recipe, "w", [f"skill{k}" for k in range(len(forms))], forms, N, pre_numel=N, chunk=64)
    kwargs = dict(pre=pre if recipe.needs_base_weights else None, out_dtype=torch.float32, chunk=64)
    expected = merge_tensor(plan, general, forms, **kwargs)
    got = merge_tensor_fused(plan, general, forms, **kwargs)
    assert torch.equal(got, expected), (got - expected).abs().max()


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_linear"])
def test_kernel_equals_torch_engine_on_quantised_low_rank_factors(method):
    """``lowrank`` with int8/int4/mixed factors (issue 23) decodes to fp32 factors; the kernel reads them as bf16 ones."""
    from tvreg._format.codecs import get_codec, make_codec

    general, pre, _, _ = rand_inputs(1, shape=SHAPE, seed=15)
    gen = torch.Generator().manual_seed(16)
    tau = torch.randn(13, 3, generator=gen) @ torch.randn(3, 11, generator=gen) * 0.01
    forms = []
    for values in ("int8", "int4", "mixed"):
        enc = make_codec("lowrank", {"rank": 3, "values": values, "group": 4}).encode(tau)
        assert enc.codec is None
        forms.append(get_codec("lowrank").decode_form(enc.data, SHAPE, enc.params, where=values))
    assert all(isinstance(f, LowRank) and f.left.dtype == torch.float32 for f in forms)
    m = get_method(method)
    recipe = m.recipe([0.3, -0.2, 0.5], kinds_for(method, len(forms)), m.resolve_params(PARAMS[method]))
    plan = plan_tensor(recipe, "w", [f"skill{k}" for k in range(len(forms))], forms, N, pre_numel=N, chunk=64)
    kwargs = dict(pre=pre if recipe.needs_base_weights else None, out_dtype=torch.float32, chunk=64)
    expected = merge_tensor(plan, general, forms, **kwargs)
    got = merge_tensor_fused(plan, general, forms, **kwargs)
    assert torch.equal(got, expected), (got - expected).abs().max()


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_kernel_equals_torch_engine_on_a_hashed_sparse_form_whose_positions_wait(method):
    from tvreg._format.codecs import get_codec, make_codec

    general, pre, _, _ = rand_inputs(1, shape=SHAPE, seed=21)
    tau = torch.randn(SHAPE, generator=torch.Generator().manual_seed(22)) * 0.01
    enc = make_codec("sparse", {"density": 0.3, "select": "random", "values": "int4", "group": 8}).encode(tau)

    def fresh():
        return get_codec("sparse").decode_form(enc.data, SHAPE, enc.params, where="w")

    assert fresh().indices is None
    m = get_method(method)
    recipe = m.recipe([0.7], kinds_for(method, 1), m.resolve_params(PARAMS[method]))
    plan = plan_tensor(recipe, "w", ["skill0"], [fresh()], N, pre_numel=N, chunk=64)
    kwargs = dict(pre=pre if recipe.needs_base_weights else None, out_dtype=torch.float32, chunk=64)
    expected = merge_tensor(plan, general, [fresh()], **kwargs)
    got = merge_tensor_fused(plan, general, [fresh()], **kwargs)
    assert torch.equal(got, expected), (got - expected).abs().max()
    assert not torch.equal(expected, general.float())
