"""``lowrank`` with quantised factors (issue 23): ``values=int8``, ``int4`` and ``mixed`` (Delta-CoMe).

The bf16 default keeps its bytes; each quantised kind stays within half a stored step per
factor entry; the fallback is chosen by real coded sizes; the decoder and the registry's
bounded-memory verification refuse the same hostile bytes; the merge paths read the new
factors as they read bf16 ones; and calibration keeps each ``values`` kind a family.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import damaged_blobs_refused_alike, recoded
from merge_reference import reference_merge
from test_merge_methods import REF_KW, engine, rand_inputs

from tvreg._build import calibrate
from tvreg._format.codecs import get_codec, make_codec, relative_error, zstd_frame
from tvreg._format.codecs.forms import LowRank
from tvreg._format.codecs.lowrank import Layout
from tvreg._format.codecs.verify import verify_stored
from tvreg._merge.chunks import dense_chunk
from tvreg.errors import CorruptArtifact

QUANTISED = ("int8", "int4", "mixed")


def _lora_like(rows: int = 96, cols: int = 80, rank: int = 8, noise: float = 1e-6, seed: int = 0) -> torch.Tensor:
    """A rank-``rank`` update with a decaying spectrum (as a LoRA's) plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, rank, generator=g))
    v, _ = torch.linalg.qr(torch.randn(cols, rank, generator=g))
    sigma = torch.tensor([0.6**i for i in range(rank)])
    return (u * sigma) @ v.T * 1e-2 + torch.randn(rows, cols, generator=g) * noise


def _coded(opts: dict, tau: torch.Tensor):
    enc = make_codec("lowrank", opts).encode(tau)
    used = get_codec(enc.codec or "lowrank")
    form = used.decode_form(enc.data, tuple(tau.shape), enc.params, where="w")
    return enc, form


def _both_refuse(shape, data: bytes, params: dict, match: str) -> None:
    with pytest.raises(CorruptArtifact, match=match) as decoded:
        get_codec("lowrank").decode(data, shape, params, where="w")
    with pytest.raises(CorruptArtifact, match=match) as verified:
        verify_stored("lowrank", data, shape, params, where="w")
    for exc in (decoded.value, verified.value):
        assert "`w`" in str(exc) and str(exc).count(". ") == 0, str(exc)  # one sentence naming the tensor


def _raw(enc, tau) -> np.ndarray:
    lay = Layout(tuple(tau.shape), enc.params, "w")
    return zstd_frame.decompress_stream(enc.data, lay.raw_bytes, enc.params, where="w").numpy().copy()


# -- the bf16 default ------------------------------------------------------------------------------


def test_the_bf16_default_writes_the_bytes_and_params_it_wrote_before():
    """SHA-256 of the blobs tvreg wrote before ``values`` existed (c3eb6ca), for the same τ."""
    g = torch.Generator().manual_seed(23)
    tau = (torch.randn(48, 3, generator=g) @ torch.randn(3, 40, generator=g)) * 1e-3 + torch.randn(48, 40, generator=g) * 1e-6
    golden = {
        "9677c2cc7bb00576a562c781b0c4c30bbc036f14cf6375bc397a7f819d780eb2": [{"rank": 3}, {"energy": 0.999}, {"rank": 3, "values": "bf16"}],
        "e435fcdb053c06b01b11e4a0d146fd8750f0c4761f71ace2b48e4213196a9b6e": [{"rank": 2, "fallback": "int8"}],
    }  # fmt: skip
    for digest, settings in golden.items():
        for opts in settings:
            enc = make_codec("lowrank", opts).encode(tau)
            assert enc.codec is None and hashlib.sha256(enc.data).hexdigest() == digest, opts
            assert enc.params == {"rank": opts.get("rank", 3), "planes": "exp"}, opts
            assert make_codec("lowrank", opts).describe() == "lowrank(" + ", ".join(
                f"{k}={v}" for k, v in opts.items() if k != "values"
            ) + ")"


# -- round trips -----------------------------------------------------------------------------------


@pytest.mark.parametrize("values", QUANTISED)
@pytest.mark.parametrize("group", [128, 16, 7])
def test_each_factor_entry_is_within_half_a_stored_step_of_its_component_group(values, group):
    tau = _lora_like(rows=50, cols=37, rank=8)
    r = 8
    enc, form = _coded({"rank": r, "values": values, "group": group}, tau)
    assert enc.codec is None and isinstance(form, LowRank)
    assert form.left.dtype == form.right.dtype == torch.float32 and form.left.shape == (50, r)  # τ is rank 8
    k = {"int8": r, "int4": 0, "mixed": 2}[values]  # ⌈8/4⌉ = 2 components in int8 when mixed
    assert enc.params.get("int8_rank", k) == k and enc.params["scales"] == "bf16" and enc.params["group"] == group
    u, s, vh = torch.linalg.svd(tau, full_matrices=False)
    root = s[:r].sqrt()
    for got, want in ((form.left.T, (u[:, :r] * root).T), (form.right, root[:, None] * vh[:r])):
        for c in range(r):
            top = 127 if c < k else 7
            for lo in range(0, want.shape[1], group):
                exact = want[c, lo : lo + group]
                step = float(exact.abs().max()) / top * (1 + 2**-7)  # the bf16-rounded scale
                assert float((got[c, lo : lo + group] - exact).abs().max()) <= step / 2 + 1e-12, (c, lo)
    err = relative_error(tau, form.to_dense())
    assert err < {"int8": 0.01, "int4": 0.2, "mixed": 0.1}[values], err


def test_mixed_sits_between_int4_and_int8_in_size_and_error_on_a_decaying_spectrum():
    tau = _lora_like(rows=256, cols=384, rank=16)
    sizes, errors = {}, {}
    for values in ("bf16", *QUANTISED):
        enc, form = _coded({"rank": 16, "values": values}, tau)
        assert enc.codec is None
        sizes[values], errors[values] = len(enc.data), relative_error(tau, form.to_dense())
    assert sizes["int4"] < sizes["mixed"] < sizes["int8"] < sizes["bf16"], sizes
    assert errors["bf16"] < errors["int8"] < errors["mixed"] < errors["int4"], errors
    assert errors["mixed"] < errors["int4"] / 2, errors  # the int8 head holds most of ‖τ‖²


@pytest.mark.parametrize("values", QUANTISED)
def test_a_zero_matrix_and_rank_zero_decode_to_zeros(values):
    enc, form = _coded({"values": values}, torch.zeros(40, 30))
    assert enc.codec is None and enc.params["rank"] == 0 and not bool(form.to_dense().any())
    verify_stored("lowrank", enc.data, (40, 30), enc.params, where="w")


def test_the_fallback_is_chosen_by_the_real_coded_sizes():
    noise = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
    # 40 · (64 + 64) factor entries ≥ 64², which decides bf16 factors unseen; int4 factors are still smaller.
    enc = make_codec("lowrank", {"rank": 40, "values": "int4"}).encode(noise)
    fallback = make_codec("bf16").encode(noise)
    assert enc.codec is None and len(enc.data) < len(fallback.data)
    assert make_codec("lowrank", {"rank": 40}).encode(noise).codec == "bf16"
    # int8 factors of rank 40 hold more bytes than int8 codes of the whole matrix: the fallback wins.
    enc = make_codec("lowrank", {"rank": 40, "values": "int8", "fallback": "int8"}).encode(noise)
    assert enc.codec == "int8" and enc.data == make_codec("int8").encode(noise).data
    # rank 1 of noise in int8 is smaller than its int8 coding: kept, however poor.
    assert make_codec("lowrank", {"rank": 1, "values": "int8", "fallback": "int8"}).encode(noise).codec is None
    assert make_codec("lowrank", {"values": "mixed", "fallback": "int8"}).encode(torch.randn(50)).codec == "int8"


# -- the merge paths -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_the_chunked_engine_merges_quantised_factors_like_their_dense_expansion(method):
    general, _, taus, weights = rand_inputs(3, shape=(24, 10), seed=5)
    forms = [_coded({"rank": 3, "values": v, "group": 4}, _lora_like(24, 10, 4, seed=i))[1] for i, v in enumerate(QUANTISED)]
    assert all(isinstance(f, LowRank) and f.left.dtype == torch.float32 for f in forms)
    dense_taus = [f.to_dense() for f in forms]
    expected = reference_merge(method, general, dense_taus, weights, **REF_KW.get(method, {}))
    for chunk in (1 << 20, 30):  # chunks of whole rows: the same products as to_dense
        assert torch.equal(engine(method, general, forms, weights, chunk=chunk), expected), chunk
    for f, d in zip(forms, dense_taus, strict=True):
        assert torch.equal(torch.cat([dense_chunk(f, 0, 100), dense_chunk(f, 100, 240)]), d.reshape(-1))


# -- hostile bytes ---------------------------------------------------------------------------------


def _mixed(rows: int = 9, cols: int = 13, group: int = 4):
    tau = _lora_like(rows, cols, 4, seed=3)
    enc = make_codec("lowrank", {"rank": 4, "values": "mixed", "group": group}).encode(tau)
    assert enc.codec is None and enc.params["int8_rank"] == 1
    return tau, enc, Layout(tuple(tau.shape), enc.params, "w")


def test_decode_and_verify_refuse_every_corruption_class_with_one_sentence_naming_the_tensor():
    tau, enc, lay = _mixed()
    shape = tuple(tau.shape)
    verify_stored("lowrank", enc.data, shape, enc.params, where="w")
    raw = _raw(enc, tau)
    s8, c8, s4 = lay.scale8_bytes, lay.code8_bytes, lay.scale4_bytes
    int4_codes = s8 + c8 + s4
    # an int8 code of −128
    bad = raw.copy()
    bad[s8 + 3] = 0x80
    _both_refuse(shape, *recoded(bad, enc.params), "int8 code of −128")
    # an int4 nibble of −8; bits set past the last int4 code (a 9 × 12 matrix leaves 3 · 21 codes: a pad nibble)
    bad = raw.copy()
    bad[int4_codes + 1] = (bad[int4_codes + 1] & 0xF0) | 0x8
    _both_refuse(shape, *recoded(bad, enc.params), "int4 code of −8")
    t2, e2, l2 = _mixed(rows=9, cols=12)
    assert l2.count4 % 2 == 1
    bad = _raw(e2, t2)
    bad[-1] |= 0x70
    _both_refuse(tuple(t2.shape), *recoded(bad, e2.params), "bits set past its last entry")
    # negative, non-finite and overflowing scales, in both parts
    for at in (0, s8 + c8):
        for scale in (-1.0, float("inf"), float("nan")):
            bad = raw.copy()
            bad[at : at + 2] = torch.tensor([scale], dtype=torch.bfloat16).view(torch.uint8).numpy()
            _both_refuse(shape, *recoded(bad, enc.params), "negative or non-finite scales")
    bad = raw.copy()
    bad[0:2] = torch.tensor([3e38], dtype=torch.bfloat16).view(torch.uint8).numpy()  # finite, but 127·scale is not
    _both_refuse(shape, *recoded(bad, enc.params), "negative or non-finite scales")
    # lying sizes: a rank, group, split or shape that does not match the bytes; a truncated blob
    for params in ({**enc.params, "rank": 3}, {**enc.params, "group": 5}, {**enc.params, "int8_rank": 2}):
        _both_refuse(shape, enc.data, params, "decompresses to|declares")
    _both_refuse((9, 14), enc.data, enc.params, "decompresses to|declares")
    _both_refuse(shape, enc.data[: len(enc.data) // 2], enc.params, "corrupt|decompresses")
    _both_refuse(shape, *recoded(raw[:-1], enc.params), "decompresses to|declares")
    # parameters impossible for the shape or malformed
    _both_refuse(shape, enc.data, {**enc.params, "rank": 10}, "rank 10, impossible for shape")
    _both_refuse((9,), enc.data, enc.params, "impossible for shape")
    for params in (
        {**enc.params, "int8_rank": 5},
        {**enc.params, "int8_rank": -1},
        {**enc.params, "group": 0},
        {**enc.params, "values": "int2"},
        {**enc.params, "scales": "fp8"},
    ):
        _both_refuse(shape, enc.data, params, "invalid low-rank factor parameters")
    for key in ("int8_rank", "group", "scales"):
        params = {k: v for k, v in enc.params.items() if k != key}
        _both_refuse(shape, enc.data, params, f"malformed codec parameter `{key}`")
    _both_refuse(shape, enc.data, {**enc.params, "group": "4"}, "malformed codec parameter `group`")


def test_a_decode_bomb_is_refused_before_anything_is_allocated():
    """A huge shape and rank from a sub-KiB blob: the declared raw size disagrees with the frames."""
    _, enc, _ = _mixed()
    huge = (1 << 30, 1 << 30)
    for params in ({**enc.params, "rank": 1 << 30, "int8_rank": 1 << 28}, {"rank": 1 << 20, "values": "int4", "group": 1, "scales": "bf16"}):
        _both_refuse(huge, enc.data, params, "decompresses to|declares|more than")


def test_verify_refuses_an_overflowing_product_that_each_factor_alone_would_pass():
    """Scales of 1e30 in L and R: every factor entry is finite, their product is not. The decoder does not
    multiply; the registry, which must accept only finite τ, does. A bound that fails on a product that is
    finite (R's codes all 0) is checked by multiplying, and passes."""
    tau = _lora_like(6, 5, 2, seed=4)
    enc = make_codec("lowrank", {"rank": 1, "values": "int8", "group": 8}).encode(tau)
    lay = Layout(tuple(tau.shape), enc.params, "w")
    raw = _raw(enc, tau)
    big = torch.tensor([1e30, 1e30], dtype=torch.bfloat16).view(torch.uint8).numpy()
    bad = raw.copy()
    bad[0:4] = big  # L's one scale, R's one scale
    data, params = recoded(bad, enc.params)
    get_codec("lowrank").decode_form(data, tuple(tau.shape), params, where="w")
    with pytest.raises(CorruptArtifact, match="tensor `w` has NaN or infinite values."):
        verify_stored("lowrank", data, tuple(tau.shape), params, where="w")
    bad[lay.scale8_bytes + 6 :] = 0  # R's codes
    data, params = recoded(bad, enc.params)
    verify_stored("lowrank", data, tuple(tau.shape), params, where="w")


@pytest.mark.parametrize("values", QUANTISED)
def test_the_registry_verification_refuses_exactly_what_the_decoder_refuses(values):
    """Random byte changes in the raw stream: verify_stored (bounded memory) and decode agree."""
    tau = _lora_like(7, 11, 3, seed=6)
    enc = make_codec("lowrank", {"rank": 3, "values": values, "group": 4}).encode(tau)
    raw = _raw(enc, tau)
    refused = damaged_blobs_refused_alike(
        "lowrank", raw, enc.params, tuple(tau.shape),
        lambda d, p: get_codec("lowrank").decode_form(d, tuple(tau.shape), p, where="w"),
        rounds=120, seed=1, same_message=True,
    )  # fmt: skip
    assert 0 < refused < 120


# -- calibration -----------------------------------------------------------------------------------


def test_calibration_tries_int8_and_mixed_factors_as_families_of_their_own():
    lowrank = [(c, o) for c, o in calibrate.CANDIDATES if c == "lowrank" and "rank" in o]
    assert sorted((o.get("values", "bf16"), o["rank"]) for _, o in lowrank) == sorted(
        (v, r) for v in ("bf16", "int8", "mixed") for r in (64, 32, 16, 8)
    )
    fams = {v: {calibrate.family(c, o) for c, o in lowrank if o.get("values", "bf16") == v} for v in ("bf16", "int8", "mixed")}
    assert all(len(f) == 1 for f in fams.values()) and len(set.union(*fams.values())) == 3
    sizes = Counter(calibrate.family(c, o) for c, o in calibrate.CANDIDATES).values()
    # the docstring's counts: settings, families, worst-case evaluations of the uniform pick
    assert (len(calibrate.CANDIDATES), len(sizes), sum(math.ceil(math.log2(n + 1)) for n in sizes)) == (48, 13, 33)
    assert "48 settings in 13 families (at most 33 evaluations" in Path(calibrate.__file__).read_text(encoding="utf-8")
    assert 2 + 33 < calibrate.DEFAULT_MAX_EVALUATIONS


# -- one SVD per matrix within a calibration search ----------------------------------------------


def test_reuse_svd_decomposes_each_matrix_once_and_codes_the_same_bytes(monkeypatch):
    from tvreg._format.codecs.lowrank import MEMO_RANK, reuse_svd

    g = torch.Generator().manual_seed(5)
    tau = torch.randn(160, 2 * MEMO_RANK + 40, generator=g) * 1e-3
    settings = [{"rank": r, "values": v, "fallback": "int8"} for r in (64, 16, 8) for v in ("bf16", "int8", "mixed")]
    settings += [{"energy": 0.5}, {"energy": 0.9999}]  # the second needs more than MEMO_RANK components
    fresh = [make_codec("lowrank", o).encode(tau) for o in settings]
    calls = []
    real = torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: calls.append(1) or real(*a, **k))
    with reuse_svd():
        memo = [make_codec("lowrank", o).encode(tau) for o in settings]
        assert len(calls) == 2, "one SVD, plus one for the coding past the kept components"
        tau.mul_(2)  # changed in place: its version moves, so it is decomposed again
        again = make_codec("lowrank", {"rank": 8}).encode(tau)
        assert len(calls) == 3
    assert [(e.data, e.params, e.codec) for e in memo] == [(e.data, e.params, e.codec) for e in fresh]
    assert again.data == make_codec("lowrank", {"rank": 8}).encode(tau).data
    make_codec("lowrank", {"rank": 8}).encode(tau)
    assert len(calls) == 5, "outside the block nothing is kept"
