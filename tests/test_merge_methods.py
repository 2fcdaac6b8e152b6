"""Merge methods on single tensors: the chunked engine equals whole-tensor references bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from merge_reference import reference_merge, topk_mask

from tvreg._format.codecs import get_codec
from tvreg._format.codecs.forms import Dense, Int8Groups, LowRank, Sparse, Undecoded
from tvreg._merge import METHODS, get_method, merge_tensor, plan_tensor, rng
from tvreg._merge.chunks import dense_chunk
from tvreg._merge.trim import kth_largest_magnitude, magnitude_trim
from tvreg.errors import MergeError

PARAMS = {
    "task_arithmetic": {},
    "ties": {"density": 0.3, "lambda": 1.25},
    "dare_ties": {"drop_rate": 0.5, "seed": 7},
    "dare_linear": {"drop_rate": 0.3, "seed": 3, "lambda": 0.5},
    "average": {"base_weights": "/unused"},
    "linear": {"base_weights": "/unused"},
    "wise_ft": {},
}
REF_KW = {
    "ties": {"density": 0.3, "lam": 1.25},
    "dare_ties": {"drop_rate": 0.5, "seed": 7},
    "dare_linear": {"drop_rate": 0.3, "seed": 3, "lam": 0.5},
}


def kinds_for(method: str, k: int) -> list[str]:
    return ["delta_from_general"] * k if method == "wise_ft" else ["task_vector"] * k


def engine(
    method, general, forms, weights, *, pre=None, chunk=1 << 20, params=None, names=None, kinds=None, out_dtype=torch.float32
):
    m = get_method(method)
    kinds = kinds or kinds_for(method, len(forms))
    recipe = m.recipe(weights, kinds, m.resolve_params(PARAMS[method] if params is None else params))
    names = names or [f"s{k}" for k in range(len(forms))]
    plan = plan_tensor(
        recipe,
        "t",
        names,
        forms,
        general.numel(),
        pre_numel=pre.numel() if pre is not None else 0,
        chunk=chunk,
    )
    return merge_tensor(plan, general, forms, pre=pre, out_dtype=out_dtype, chunk=chunk)


def dense(t: torch.Tensor) -> Dense:
    return Dense(shape=tuple(t.shape), values=t.reshape(-1).clone())


def rand_inputs(k: int, shape=(37, 29), seed=0, ties=False):
    gen = torch.Generator().manual_seed(seed)
    general = torch.randn(shape, generator=gen)
    pre = general - 0.1 * torch.randn(shape, generator=gen)
    if ties:  # few distinct magnitudes: trim must break ties by index
        taus = [torch.randint(-3, 4, shape, generator=gen).float() * 0.25 for _ in range(k)]
    else:
        taus = [torch.randn(shape, generator=gen) * 0.01 for _ in range(k)]
    weights = [0.1 + 0.2 * j for j in range(k)]
    return general, pre, taus, weights


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ties", [False, True])
def test_engine_equals_whole_tensor_reference_for_any_chunking(method, ties):
    general, pre, taus, weights = rand_inputs(3, ties=ties)
    expected = reference_merge(
        method, general, taus, weights, pre=pre, kinds=kinds_for(method, 3), **REF_KW.get(method, {})
    )
    for chunk in (1 << 20, 97, 64):
        got = engine(method, general, [dense(t) for t in taus], weights, pre=pre, chunk=chunk)
        assert torch.equal(got, expected), (method, chunk)


def test_ties_matches_mergekit_definition_on_distinct_magnitudes():
    """mergekit: weighted deltas, sign from their sum, disjoint mean over agreeing weights, λ."""
    general, _, taus, weights = rand_inputs(4, seed=1)
    got = engine("ties", general, [dense(t) for t in taus], weights, params={"density": 0.5, "lambda": 0.8})
    deltas = torch.stack([torch.where(topk_mask(t, 0.5), t, 0.0) for t in taus])
    w = torch.tensor(weights).reshape(-1, 1, 1)
    wd = deltas * w
    majority = (wd.sum(0) >= 0).float() * 2 - 1
    mask = wd.sign() == majority
    divisor = (w * mask).sum(0)
    divisor[divisor == 0] = 1
    expected = general + (wd * mask).sum(0) / divisor * 0.8
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


def test_trim_keeps_exactly_k_with_ties_broken_by_index():
    t = torch.tensor([1.0, -2.0, 2.0, 0.5, -2.0, 2.0, 0.0, 1.0])
    trim = magnitude_trim(8, 0.375, lambda: [(0, t[:3]), (3, t[3:])])  # k = 3 of four |2|s
    assert (trim.threshold, trim.tie_cut) == (2.0, 5)
    kept = torch.cat([trim.mask(t[:4], 0), trim.mask(t[4:], 4)])
    assert (
        kept.tolist() == topk_mask(t, 0.375).tolist() == [False, True, True, False, True, False, False, False]
    )
    assert magnitude_trim(8, 1.0, lambda: [(0, t)]) is None
    assert magnitude_trim(8, 0.1, lambda: [(0, t)]).mask(t, 0).tolist() == [False, True] + [False] * 6


@pytest.mark.parametrize("density", [0.05, 0.2, 0.33])
def test_trim_on_few_distinct_magnitudes_keeps_the_first_k_by_magnitude_then_index(density):
    """τ of bf16 weights is a few ulp steps, so the cutoff sits in a run of equal magnitudes."""
    gen = torch.Generator().manual_seed(3)
    steps = torch.randint(-3, 4, (300_000,), generator=gen).float() * 2.0**-10
    steps[torch.rand(300_000, generator=gen) < 0.6] = 0.0
    n, k = steps.numel(), int(density * steps.numel())
    trim = magnitude_trim(n, density, lambda: [(s, steps[s : s + 65536]) for s in range(0, n, 65536)])
    kept = torch.cat([trim.mask(steps[s : s + 65536], s) for s in range(0, n, 65536)])
    order = np.lexsort((np.arange(n), -steps.abs().numpy()))  # by magnitude, ties by index
    expected = np.zeros(n, dtype=bool)
    expected[order[:k]] = True
    assert int(kept.sum()) == k and np.array_equal(kept.numpy(), expected)


def test_kth_largest_magnitude_equals_a_full_partition():
    gen = torch.Generator().manual_seed(4)
    steps = torch.randint(-2, 3, (50_000,), generator=gen).float() * 2.0**-9
    for t in (steps, torch.randn(50_000, generator=gen)):
        expected = np.sort(np.abs(t.numpy()))[::-1]
        for k in (1, 7, 10_000, 49_999, 50_000):
            got = kth_largest_magnitude(t.numel(), k, lambda t=t: [(s, t[s : s + 8192]) for s in range(0, 50_000, 8192)])
            assert got == float(expected[k - 1])
    with pytest.raises(ValueError):
        kth_largest_magnitude(10, 11, lambda: [(0, torch.zeros(10))])


def test_dare_mask_is_a_pure_function_of_coordinates():
    key = rng.tensor_key(5, "science", "model.layers.0.mlp.up_proj.weight")
    whole = rng.draws(key, 0, 10_000)
    assert torch.equal(torch.cat([rng.draws(key, 0, 3333), rng.draws(key, 3333, 10_000)]), whole)
    keep = rng.keep_mask(key, 0, 200_000, rng.drop_threshold(0.9))
    assert abs(keep.float().mean().item() - 0.1) < 0.005
    other = rng.keep_mask(rng.tensor_key(5, "coding", "model.layers.0.mlp.up_proj.weight"), 0, 200_000, 0)
    assert other.all()
    # the int64 emulation of 32-bit arithmetic equals plain Python modular arithmetic, past 2**32 too
    for index in (0, 1, 12345, 2**32 + 7):

        def mix(x):
            x ^= x >> 16
            x = (x * rng.MIX_A) & rng.MASK32
            x ^= x >> 15
            x = (x * rng.MIX_B) & rng.MASK32
            return x ^ (x >> 16)

        h = mix(mix((index & rng.MASK32) ^ key[0]) ^ (index >> 32) ^ key[1])
        assert int(rng.draws(key, index, index + 1)) == h >> 8


@pytest.mark.parametrize("method", ["ties", "dare_ties", "task_arithmetic"])
def test_every_stored_form_merges_like_its_dense_expansion(method):
    general, _, taus, weights = rand_inputs(4, shape=(24, 10), seed=2)
    q = torch.randint(-127, 128, (240,), dtype=torch.int8)
    forms = [
        Dense(shape=(24, 10), values=taus[0].reshape(-1).to(torch.bfloat16)),
        Int8Groups(shape=(24, 10), q=q, scales=torch.rand(24) * 1e-3, group_size=10),
        Sparse(
            shape=(24, 10),
            indices=torch.tensor([0, 5, 17, 239], dtype=torch.int32),
            values=torch.tensor([3, -7, 100, -2], dtype=torch.int8),
            scale=1e-3,
        ),
        LowRank(shape=(24, 10), left=torch.randn(24, 2) * 0.1, right=torch.randn(2, 10) * 0.1),
    ]
    dense_taus = [f.to_dense() for f in forms]
    expected = reference_merge(method, general, dense_taus, weights, **REF_KW.get(method, {}))
    for chunk in (1 << 20, 30, 7):
        got = engine(method, general, forms, weights, chunk=chunk)
        if chunk == 7:  # low-rank rows are recomputed per chunk; only matmul order may differ
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        else:
            assert torch.equal(got, expected), chunk
    for f, d in zip(forms, dense_taus, strict=True):
        assert torch.equal(torch.cat([dense_chunk(f, 0, 100), dense_chunk(f, 100, 240)]), d.reshape(-1))


def test_each_stored_form_expands_its_own_chunks_and_nobody_asks_its_type():
    """``chunk``/``registers`` live on the forms, so the engine and the kernel hold no ``isinstance`` ladder:
    a new form is one class, not three edits. Read from the sources, so the kernel needs no Triton here."""
    import ast
    from pathlib import Path

    import tvreg
    from tvreg._format.codecs import forms

    for cls in (forms.Dense, forms.Int8Groups, forms.Sparse, forms.LowRank):
        assert "chunk" in vars(cls), cls.__name__
    root = Path(tvreg.__file__).parent
    for module in ("_merge/chunks.py", "_merge/engine.py", "kernels/fused_merge.py"):
        calls = [
            node.lineno
            for node in ast.walk(ast.parse((root / module).read_text()))
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance"
        ]
        assert calls == [], module


def test_sixteen_skills_and_skills_that_skip_a_tensor():
    general, _, taus, weights = rand_inputs(17, shape=(9, 5), seed=3)
    forms = [dense(t) for t in taus]
    forms[4] = None  # a LoRA skill that does not touch this tensor counts as τ = 0
    taus[4] = torch.zeros_like(taus[4])
    for method in ("ties", "dare_linear", "task_arithmetic"):
        expected = reference_merge(method, general, taus, weights, **REF_KW.get(method, {}))
        assert torch.equal(engine(method, general, forms, weights, chunk=8), expected)


def test_shorter_tau_and_pre_leave_added_rows_to_general():
    general, pre, taus, weights = rand_inputs(2, shape=(10, 4), seed=4)
    short = [t[:7] for t in taus]
    for method in ("ties", "linear"):
        got = engine(method, general, [dense(t) for t in short], weights, pre=pre[:7].clone(), chunk=9)
        head = reference_merge(method, general[:7], short, weights, pre=pre[:7], **REF_KW.get(method, {}))
        assert torch.equal(got[:7], head) and torch.equal(got[7:], general[7:])


def undecoded(t: torch.Tensor) -> Undecoded:
    """τ stored by the ``exact`` codec and handed over undecoded, as an install hands it to the engine."""
    codec, shape = get_codec("exact"), tuple(t.shape)
    enc = codec.encode(t)

    def add(acc, weight):
        return codec.add_into(enc.data, shape, enc.params, where="t", acc=acc, weight=weight)

    masked = codec.masked_blob(enc.data, shape, enc.params, where="t")
    return Undecoded(
        shape=shape, decode=lambda: codec.decode_form(enc.data, shape, enc.params, where="t"), add=add, masked=masked
    )


@pytest.mark.parametrize("method", METHODS)
def test_undecoded_exact_forms_merge_like_their_decode_for_every_method(method, monkeypatch):
    """Task arithmetic adds each blob straight into the float32 sum; every other path decodes it first.
    Both equal the whole-tensor reference bit for bit, −0.0 in θ_G under zero and non-zero τ included."""
    from tvreg._format.codecs import jit

    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)  # the compiled kernels even on these small tensors
    general, pre, taus, weights = rand_inputs(3, shape=(41, 37), seed=5)
    general.view(-1)[::7] = -0.0
    for t in taus:
        t.view(-1)[::3] = 0.0
        t.view(-1)[1::14] = -0.0
        t.view(-1)[::21] = -0.0  # under θ_G's −0.0: the sum stays −0.0 only if no +0.0 is added there
    expected = reference_merge(
        method, general, taus, weights, pre=pre, kinds=kinds_for(method, 3), **REF_KW.get(method, {})
    )
    for chunk in (1 << 20, 97):
        forms = [undecoded(t) for t in taus]
        got = engine(method, general, forms, weights, pre=pre, chunk=chunk)
        assert torch.equal(got.view(torch.int32), expected.view(torch.int32)), (method, chunk)
        assert torch.equal(engine(method, general, [dense(t) for t in taus], weights, pre=pre, chunk=chunk), got)
        if method == "task_arithmetic":  # added from its frames, never decoded to a τ tensor
            assert all(f._form is None for f in forms)


def test_task_arithmetic_on_bf16_adds_every_skill_in_one_pass_with_the_same_bits(monkeypatch):
    """bf16 θ_G with ``exact`` blobs (an install's usual case): every skill's frames are added together
    and rounded once (:func:`planes.add_round_masked`), never one skill at a time, and the bits equal
    the chunked engine's on the decoded forms."""
    from tvreg._format.codecs import jit, zstd_frame

    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(zstd_frame, "CHUNK_BYTES", 4096)  # several frames per blob
    general, _, taus, weights = rand_inputs(3, shape=(83, 41), seed=8)
    general = general.to(torch.bfloat16)
    general.view(-1)[::7] = -0.0
    for t in taus:
        t.view(-1)[::3] = 0.0
    forms = [undecoded(t) for t in taus]
    for f in forms:
        f.add = lambda acc, weight: pytest.fail("a skill was added on its own")  # type: ignore[method-assign]
    got = engine("task_arithmetic", general, forms, weights, out_dtype=torch.bfloat16)
    assert all(f._form is None for f in forms), "no blob is decoded to a τ tensor"
    expected = engine("task_arithmetic", general, [dense(t) for t in taus], weights, chunk=97, out_dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got.view(torch.int16), expected.view(torch.int16))


def test_skills_added_one_at_a_time_leave_added_rows_to_general():
    general, _, taus, weights = rand_inputs(2, shape=(10, 4), seed=6)
    short = [t[:7] for t in taus]
    for forms in ([dense(t) for t in short], [undecoded(t) for t in short]):
        got = engine("task_arithmetic", general, forms, weights, chunk=9)
        head = reference_merge("task_arithmetic", general[:7], short, weights)
        assert torch.equal(got[:7], head) and torch.equal(got[7:], general[7:])


def test_bad_parameters_name_the_flag():
    with pytest.raises(MergeError, match="does not take `--density`"):
        get_method("task_arithmetic").resolve_params({"density": 0.5})
    with pytest.raises(MergeError, match=r"`--density` of method `ties` must be in \(0, 1\]"):
        get_method("ties").resolve_params({"density": 1.5})
    with pytest.raises(MergeError, match=r"`--drop-rate` .* must be in \[0, 1\)"):
        get_method("dare_ties").resolve_params({"drop_rate": 1.0})
    with pytest.raises(MergeError, match="needs θ_pre's weights: pass `--base-weights PATH`"):
        get_method("linear").resolve_params({})
    with pytest.raises(MergeError, match="unknown merge method `slerp`"):
        get_method("slerp")
    with pytest.raises(MergeError, match="cannot install skill `sci@1.0.0`, which is a task vector"):
        get_method("wise_ft").check_skills([("sci@1.0.0", "task_vector")])
    assert get_method("ties").resolve_params({}) == {"density": 0.2, "lambda": 1.0, "normalize": True}
