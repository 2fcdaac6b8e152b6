"""Low-bit codecs (issue 23): ``int4`` and ``sign`` (BitDelta), and ``sparse`` with ``values=int4`` / ``values=sign``.

Each quantiser's bound, the exact raw sizes, rejection of hostile bytes by the decoder
and by the registry's bounded-memory verification alike, and installs that equal the
decoded τ added to G.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import copy_model, damaged_blobs_refused_alike, recoded
from merge_reference import reference_merge
from tiny_models import read_state_dict

from tvreg._build.build import build_skill
from tvreg._env.operations import install
from tvreg._format.artifact import Artifact
from tvreg._format.codecs import get_codec, lowbit, make_codec, zstd_frame
from tvreg._format.codecs.forms import Int8Groups, Sparse
from tvreg._format.codecs.sparse import hashed_positions
from tvreg._format.codecs.verify import verify_stored
from tvreg.errors import CorruptArtifact


def _tau(rows: int = 48, cols: int = 160, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(rows, 4, generator=g) @ torch.randn(4, cols, generator=g)
    t = low * 1e-3 + torch.randn(rows, cols, generator=g) * 2e-4
    t[rows - 1, :17] = 0.0  # exact zeros, as a short fine-tune leaves them
    t[rows // 2, 7] = 0.05  # one outlier
    return t


def _coded(codec: str, opts: dict, tau: torch.Tensor):
    enc = make_codec(codec, opts).encode(tau)
    form = get_codec(codec).decode_form(enc.data, tuple(tau.shape), enc.params, where="w")
    return enc, form, form.to_dense()


def _raw(enc, length: int) -> np.ndarray:
    return zstd_frame.decompress_stream(enc.data, length, enc.params, where="w").numpy()


def _both_refuse(codec: str, shape, data: bytes, params: dict, match: str) -> None:
    """The decoder and the registry's verification give the same clear error."""
    with pytest.raises(CorruptArtifact, match=match):
        get_codec(codec).decode(data, shape, params, where="w")
    with pytest.raises(CorruptArtifact, match=match):
        verify_stored(codec, data, shape, params, where="w")


# -- int4 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opts", [{}, {"group": 32, "scales": "fp16"}, {"group": 0, "scales": "fp32"}, {"group": 7}])
def test_int4_error_is_at_most_half_a_step_per_group(opts):
    tau = _tau()
    enc, form, dense = _coded("int4", opts, tau)
    gs = {0: tau.shape[1]}.get(opts.get("group", 128), opts.get("group", 128))
    assert isinstance(form, Int8Groups) and form.group_size == gs == enc.params["group"]
    assert int(form.q.abs().max()) <= 7
    steps = form.scales.repeat_interleave(gs)[: tau.numel()].reshape(tau.shape)
    assert bool(((dense - tau).abs() <= steps / 2 * (1 + 1e-6) + 1e-12).all())
    absmax = torch.nn.functional.pad(tau.reshape(-1), (0, -tau.numel() % gs)).view(-1, gs).abs().amax(dim=1)
    assert torch.allclose(form.scales, absmax / 7, rtol=2**-8)  # bf16 / fp16 rounding of absmax / 7
    assert bool((dense[-1, :17] == 0).all())
    assert torch.equal(dense, get_codec("int4").decode(enc.data, tuple(tau.shape), enc.params, where="w"))


def test_int4_raw_stream_is_scales_then_two_codes_a_byte():
    tau = _tau(rows=5, cols=51)  # odd numel: a pad nibble
    n = tau.numel()
    enc, form, _ = _coded("int4", {"group": 16}, tau)
    groups = -(-n // 16)
    raw = _raw(enc, 2 * groups + (n + 1) // 2)
    assert enc.params["scales"] == "bf16"
    assert torch.equal(torch.from_numpy(raw[: 2 * groups].copy()).view(torch.bfloat16).float(), form.scales)
    codes = raw[2 * groups :]
    lo = (codes & 0xF).astype(np.int8)
    hi = (codes >> 4).astype(np.int8)
    unpacked = np.stack([np.where(lo > 7, lo - 16, lo), np.where(hi > 7, hi - 16, hi)], axis=1).reshape(-1)
    assert np.array_equal(unpacked[:n], form.q.numpy()) and unpacked[n] == 0
    for wrong in (len(raw) - 1, len(raw) + 1):
        with pytest.raises(CorruptArtifact, match="decompresses to|declares"):
            zstd_frame.decompress_stream(enc.data, wrong, enc.params, where="w")


def test_int4_widens_fp16_scales_only_when_out_of_range():
    tiny = _tau() * 1e-4  # absmax / 7 below fp16's normal range
    assert make_codec("int4", {"scales": "fp16"}).encode(tiny).params["scales"] == "fp32"
    assert make_codec("int4", {"scales": "fp16"}).encode(_tau()).params["scales"] == "fp16"
    assert make_codec("int4").encode(tiny).params["scales"] == "bf16"


def test_int4_refuses_a_minus_eight_nibble_set_pad_bits_and_bad_scales():
    tau = _tau(rows=3, cols=11)
    enc = make_codec("int4", {"group": 8}).encode(tau)
    n, sb = tau.numel(), 2 * -(-tau.numel() // 8)
    raw = _raw(enc, sb + (n + 1) // 2).copy()
    verify_stored("int4", enc.data, tuple(tau.shape), enc.params, where="w")
    bad = raw.copy()
    bad[sb + 2] = (bad[sb + 2] & 0xF0) | 0x8
    _both_refuse("int4", tau.shape, *recoded(bad, enc.params), "int4 code of −8")
    bad = raw.copy()
    bad[-1] |= 0x30
    _both_refuse("int4", tau.shape, *recoded(bad, enc.params), "bits set past its last entry")
    for scale in (-1.0, float("inf"), float("nan")):
        bad = raw.copy()
        bad[2:4] = torch.tensor([scale], dtype=torch.bfloat16).view(torch.uint8).numpy()
        _both_refuse("int4", tau.shape, *recoded(bad, enc.params), "negative or non-finite scales")
    fp32 = np.concatenate([np.full(-(-n // 8), 1e38, dtype="<f4").view(np.uint8), raw[sb:]])  # 7·scale overflows
    _both_refuse("int4", tau.shape, *recoded(fp32, {**enc.params, "scales": "fp32"}), "negative or non-finite scales")
    for params in ({**enc.params, "group": 0}, {**enc.params, "scales": "fp8"}, {**enc.params, "group": "8"}):
        _both_refuse("int4", tau.shape, enc.data, params, "scale parameters|malformed codec parameter")
    _both_refuse("int4", tau.shape, enc.data[: len(enc.data) // 2], enc.params, "corrupt|decompresses")
    _both_refuse("int4", (3, 12), enc.data, enc.params, "decompresses to|declares")


# -- sign ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("per", ["row", "tensor"])
def test_sign_decodes_to_exactly_plus_or_minus_mean_abs(per):
    tau = _tau()
    enc, form, dense = _coded("sign", {"per": per}, tau)
    rows, cols = tau.shape
    assert isinstance(form, Int8Groups) and enc.params["scales"] == "fp32"
    means = tau.abs().double().mean(dim=1) if per == "row" else tau.abs().double().mean().reshape(1)
    assert torch.equal(form.scales, means.float())
    scale = form.scales.repeat_interleave(cols) if per == "row" else form.scales.expand(tau.numel())
    signs = torch.where(tau.reshape(-1) < 0, -1.0, 1.0)
    assert torch.equal(dense.reshape(-1), signs * scale)  # ±scale exactly; zeros take +scale
    n = tau.numel()
    raw = _raw(enc, 4 * form.scales.numel() + (n + 7) // 8)
    assert np.array_equal(np.unpackbits(raw[4 * form.scales.numel() :], bitorder="little")[:n], (tau.reshape(-1) < 0).numpy())


def test_mean_abs_is_the_l2_optimal_sign_scale():
    tau = _tau()
    _, form, dense = _coded("sign", {"per": "tensor"}, tau)
    base = float((dense - tau).square().sum())
    for factor in (0.97, 1.03):
        assert float((dense * factor - tau).square().sum()) > base


def test_sign_refuses_set_pad_bits_bad_scales_and_lying_sizes():
    tau = _tau(rows=3, cols=13)  # 39 signs: 1 pad bit
    enc = make_codec("sign").encode(tau)
    raw = _raw(enc, 12 + 5).copy()
    verify_stored("sign", enc.data, tuple(tau.shape), enc.params, where="w")
    bad = raw.copy()
    bad[-1] |= 0x80
    _both_refuse("sign", tau.shape, *recoded(bad, enc.params), "bits set past its last entry")
    bad = raw.copy()
    bad[4:8] = np.array([-2.0], dtype="<f4").view(np.uint8)
    _both_refuse("sign", tau.shape, *recoded(bad, enc.params), "negative or non-finite scales")
    _both_refuse("sign", (3, 14), enc.data, enc.params, "decompresses to|declares")
    _both_refuse("sign", tau.shape, enc.data, {**enc.params, "group": 5}, "decompresses to|declares")
    _both_refuse("sign", tau.shape, enc.data, {**enc.params, "group": -1}, "scale parameters")


# -- sparse with int4 / sign values ----------------------------------------------------------------


@pytest.mark.parametrize("select", ["random", "magnitude"])
def test_sparse_int4_keeps_the_same_positions_within_half_a_group_step(select):
    tau = _tau()
    opts = {"density": 0.2, "select": select, "group": 16}
    ref_enc, ref, _ = _coded("sparse", {**opts, "values": "bf16"}, tau)
    enc, form, dense = _coded("sparse", {**opts, "values": "int4"}, tau)
    assert isinstance(form, Sparse) and form.values.dtype == torch.float32 and form.scale is None
    assert torch.equal(form.positions, ref.positions)
    if select == "random":
        threshold = enc.params["threshold"]
        assert np.array_equal(form.positions.numpy(), hashed_positions(tau.numel(), threshold, 0))
        kept = tau.reshape(-1)[form.positions.long()] / torch.tensor(threshold / 2**32, dtype=torch.float32)
    else:
        kept = tau.reshape(-1)[form.positions.long()]
    k = kept.numel()
    groups = -(-k // 16)
    index = {"hash": 0, "bitmap": (tau.numel() + 7) // 8}.get(enc.params["index"], enc.params.get("index_bytes"))
    raw = _raw(enc, 2 * groups + (k + 1) // 2 + index)
    scales = torch.from_numpy(raw[: 2 * groups].copy()).view(torch.bfloat16).float()
    steps = scales.repeat_interleave(16)[:k]
    assert bool(((form.values - kept).abs() <= steps / 2 * (1 + 1e-6) + 1e-12).all())
    assert torch.equal(form.values, lowbit.expand(lowbit.unpack(torch.from_numpy(raw[2 * groups : 2 * groups + (k + 1) // 2].copy()), k, 4, "w"), scales, 16))
    assert int((dense != 0).sum()) <= k


def test_sparse_sign_values_are_plus_or_minus_their_group_mean():
    tau = _tau()
    enc, form, _ = _coded("sparse", {"density": 0.3, "select": "random", "values": "sign", "group": 64}, tau)
    p = torch.tensor(enc.params["threshold"] / 2**32, dtype=torch.float32)
    kept = tau.reshape(-1)[form.positions.long()] / p
    k = kept.numel()
    means = torch.nn.functional.pad(kept.abs().double(), (0, -k % 64)).view(-1, 64).sum(dim=1)
    means /= torch.tensor([64.0] * (len(means) - 1) + [float(k - 64 * (len(means) - 1))], dtype=torch.float64)
    expect = means.float().to(torch.bfloat16).float().repeat_interleave(64)[:k] * torch.where(kept < 0, -1.0, 1.0)
    assert torch.equal(form.values, expect)
    assert len(enc.data) < 2 * k // 8 + 200  # a bit a value, bf16 scale per 64, no index bytes


@pytest.mark.parametrize("values", ["int4", "sign"])
def test_sparse_low_bit_values_are_refused_when_tampered(values):
    tau = _tau(rows=6, cols=50)
    enc = make_codec("sparse", {"density": 0.1, "values": values, "group": 8, "index": "delta"}).encode(tau)
    k, bits = enc.params["k"], 4 if values == "int4" else 1
    sb = 2 * -(-k // 8)
    raw = _raw(enc, sb + lowbit.packed_bytes(k, bits) + enc.params["index_bytes"]).copy()
    verify_stored("sparse", enc.data, tuple(tau.shape), enc.params, where="w")
    bad = raw.copy()
    bad[0:2] = torch.tensor([float("nan")], dtype=torch.bfloat16).view(torch.uint8).numpy()
    _both_refuse("sparse", tau.shape, *recoded(bad, enc.params), "negative or non-finite scales")
    if k * bits % 8:
        bad = raw.copy()
        bad[sb + lowbit.packed_bytes(k, bits) - 1] |= 0x80
        _both_refuse("sparse", tau.shape, *recoded(bad, enc.params), "bits set past its last entry")
    if values == "int4":
        bad = raw.copy()
        bad[sb] = 0x88
        _both_refuse("sparse", tau.shape, *recoded(bad, enc.params), "int4 code of −8")
    _both_refuse("sparse", tau.shape, enc.data, {**enc.params, "k": k + 1}, "decompresses to|declares|malformed")
    _both_refuse("sparse", tau.shape, enc.data, {**enc.params, "scales": "fp8"}, "sparse scale parameters")
    _both_refuse("sparse", tau.shape, enc.data, {**enc.params, "group": 0}, "sparse scale parameters")
    params = {k_: v for k_, v in enc.params.items() if k_ != "group"}
    _both_refuse("sparse", tau.shape, enc.data, params, "malformed codec parameter `group`")


# -- whole skills ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codec", "opts"),
    [
        ("int4", {}),
        ("sign", {}),
        ("sparse", {"density": 0.2, "select": "random", "values": "int4"}),
        ("sparse", {"density": 0.3, "values": "sign"}),
    ],
    ids=str,
)
def test_install_of_a_low_bit_skill_equals_its_decoded_tau_added(codec, opts, family, tmp_path):
    path = build_skill(
        family.pre, finetuned=family.science, output=tmp_path / "s.tvskill", name="science", version="1.0.0",
        codec=codec, codec_options=opts,
    ).path  # fmt: skip
    model = copy_model(family.general, tmp_path / "model")
    install([path], into=model, base=family.pre, weights={"science": 0.4})
    g, got = read_state_dict(family.general), read_state_dict(model)
    with Artifact(path) as art:
        assert {e.codec for e in art.manifest.tensors.values() if len(e.shape) == 2} == {codec}
        for name, gt in g.items():
            art.verify(name)
            tau = art.decode(name)
            rows = tau.shape[0]
            head = reference_merge("task_arithmetic", gt[:rows], [tau], [0.4]).to(gt.dtype)
            want = torch.cat([head, gt[rows:]]) if rows < gt.shape[0] else head
            assert torch.equal(got[name], want), name


def test_the_cli_builds_low_bit_skills_and_explains_a_bad_option(run, family, tmp_path):
    skill = tmp_path / "s.tvskill"
    res = run(
        "build", "--base", family.pre, "--finetuned", family.science, "--name", "science", "--version", "1.0.0",
        "--codec", "sparse", "--density", 0.2, "-P", "select=random", "-P", "values=int4", "-P", "group=32", "-o", skill,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    with Artifact(skill) as art:
        matrices = [e for e in art.manifest.tensors.values() if len(e.shape) == 2]
        assert matrices and all(e.codec == "sparse" and e.params["values"] == "int4" and e.params["group"] == 32 for e in matrices)
    res = run(
        "build", "--base", family.pre, "--finetuned", family.science, "--name", "science", "--version", "1.0.0",
        "--codec", "sign", "-P", "per=column", "-o", tmp_path / "t.tvskill",
    )  # fmt: skip
    assert res.exit_code == 2 and "Traceback" not in res.stderr, res.output  # a usage error
    assert res.stderr.startswith("error: codec `sign` parameter `per` must be one of row, tensor, not 'column'."), res.stderr


@pytest.mark.parametrize(
    ("codec", "opts"),
    [
        ("int4", {"group": 8, "scales": "fp16"}),
        ("sign", {}),
        ("sparse", {"density": 0.3, "values": "int4", "group": 8, "index": "bitmap"}),
        ("sparse", {"density": 0.3, "select": "random", "values": "sign", "group": 8}),
    ],
    ids=str,
)
def test_the_registry_verification_refuses_exactly_what_the_decoder_refuses(codec, opts):
    """Random byte changes in the raw stream: verify_stored (bounded memory, no expansion) and decode agree."""
    tau = _tau(rows=7, cols=21)
    enc = make_codec(codec, opts).encode(tau)
    raw_len = sum(hi - lo for _, _, lo, hi in zstd_frame.plan(enc.data, _declared(codec, enc, tau), enc.params, where="w"))
    raw = _raw(enc, raw_len)
    refused = damaged_blobs_refused_alike(
        codec, raw, enc.params, tuple(tau.shape),
        lambda d, p: get_codec(codec).decode(d, tuple(tau.shape), p, where="w"),
        rounds=150, seed=0, same_message=False,
    )  # fmt: skip
    assert 0 < refused < 150


def _declared(codec: str, enc, tau: torch.Tensor) -> int:
    n = tau.numel()
    if codec == "int4":
        return 2 * -(-n // enc.params["group"]) + (n + 1) // 2
    if codec == "sign":
        return 4 * tau.shape[0] + (n + 7) // 8
    k, bits = enc.params["k"], 4 if enc.params["values"] == "int4" else 1
    index = (n + 7) // 8 if enc.params["index"] == "bitmap" else 0
    return 2 * -(-k // enc.params["group"]) + lowbit.packed_bytes(k, bits) + index


@pytest.mark.parametrize("scale", [float("inf"), 1e39, 3e38, -1e-3])
def test_sparse_int8_scale_that_overflows_or_flips_signs_is_refused_by_decoder_and_registry_alike(scale):
    """1e39 is not an fp32, 127 × 3e38 is not one either, a negative scale flips τ: one check on both sides."""
    tau = _tau()
    enc = make_codec("sparse", {"density": 0.1, "values": "int8"}).encode(tau)
    assert enc.params["values"] == "int8"
    _both_refuse("sparse", tuple(tau.shape), enc.data, dict(enc.params, scale=scale), "negative or non-finite scales")
