"""The compiled codec loops (Numba) against the NumPy code they replace: same bytes, same refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zstandard

from tvreg._format.codecs import get_codec, jit, planes, zstd_frame
from tvreg.errors import CorruptArtifact


@pytest.fixture(params=["compiled", "numpy"])
def path(request, monkeypatch):
    """Run the test once with the compiled kernels and once with the NumPy fallback."""
    monkeypatch.setattr(jit, "enabled", request.param == "compiled")
    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)  # the compiled path even for the small cases
    assert jit.ready(1) == (request.param == "compiled"), "numba is a dependency: the compiled path must load"
    return request.param


def _fine_tune_like(n: int, density: float, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """τ of a short fine-tune: a share of entries moved by a few ulps, including −0.0 and subnormals."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g).to(dtype)
    moved = torch.rand(n, generator=g) < density
    ulps = torch.randint(1, 4, (n,), generator=g).float() * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    ft = (base.float() * (1 + ulps * 2.0**-7)).to(dtype)
    tau = torch.where(moved, ft.float() - base.float(), torch.zeros(n))
    if n > 3:
        tau[1], tau[2] = -0.0, 2.0**-140
    return tau.to(dtype) if dtype != torch.float32 else tau


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 70_001])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.31, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_planes_decode_to_the_same_bits_on_both_paths(path, n, density, dtype):
    tau = _fine_tune_like(n, density, dtype, seed=n)
    data, params = planes.encode_masked(tau)
    back = planes.decode_masked(data, params, n, dtype, where="w")
    ints = {4: torch.int32, 2: torch.int16}[tau.element_size()]
    assert torch.equal(back.view(ints), tau.view(ints))


def test_masked_int8_codes_scatter_on_both_paths(path):
    codes = torch.randint(-127, 128, (5003,), dtype=torch.int8) * (torch.rand(5003) < 0.4)
    data, params = planes.encode_masked(codes)
    assert torch.equal(planes.decode_masked(data, params, codes.numel(), torch.int8, where="w"), codes)


def test_several_frames_decode_the_same_on_both_paths(path, monkeypatch):
    monkeypatch.setattr(zstd_frame, "CHUNK_BYTES", 4096)  # many frames, each its own bitmap
    tau = _fine_tune_like(50_003, 0.31, torch.float32, seed=3)
    data, params = planes.encode_masked(tau)
    assert len(params["nnz"]) > 10
    assert torch.equal(planes.decode_masked(data, params, tau.numel(), torch.float32, where="w"), tau)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["exp", "bytes"])
def test_plane_merge_matches_numpy_on_every_bit_pattern(monkeypatch, dtype, layout):
    """Random words cover NaN payloads, infinities, −0.0 and subnormals."""
    size = torch.empty(0, dtype=dtype).element_size()
    words = torch.randint(0, 256, (size * 10_007,), dtype=torch.uint8).view(dtype)
    split = planes.split(words, layout)
    outs = {}
    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    for compiled in (True, False):
        monkeypatch.setattr(jit, "enabled", compiled)
        outs[compiled] = planes.merge(split, layout, torch.empty_like(words))
    assert torch.equal(outs[True].view(torch.uint8), words.view(torch.uint8))
    assert torch.equal(outs[False].view(torch.uint8), words.view(torch.uint8))


def _segment(tau: torch.Tensor) -> tuple[bytes, dict]:
    enc = get_codec("exact").encode(tau)
    return zstandard.ZstdDecompressor().decompress(enc.data), enc.params


def _damaged(segment: bytes, n: int, damage: str, *, every_entry_set: bool = False) -> bytes:
    """The segment recompressed with its bitmap (entry 0 set, entry 5 clear unless every entry is set) damaged."""
    bitmap = bytearray(segment[: (n + 7) // 8])
    if damage == "extra bit":
        if every_entry_set:
            bitmap[-1] |= 0x80  # every entry is set: the only bit left is a pad bit
        else:
            bitmap[0] |= 0x20  # entry 5, which is zero
    elif damage == "missing bit":
        bitmap[0] &= ~0x01
    else:
        bitmap[-1] |= 0x80
        bitmap[0] &= ~0x01  # the set-bit count stays right: only the pad check can catch it
    return zstd_frame.compress(bytes(bitmap) + segment[len(bitmap) :])


@pytest.mark.parametrize("damage", ["extra bit", "missing bit", "pad bit"])
@pytest.mark.parametrize("density", [0.5, 1.0])
def test_a_bitmap_that_disagrees_with_the_count_is_refused_on_both_paths(path, damage, density):
    n = 1001  # the last bitmap byte has 7 pad bits
    tau = _fine_tune_like(n, density, torch.float32, seed=7)
    tau[0] = 1.0
    if density < 1:
        tau[5] = 0.0
    segment, params = _segment(tau)
    bad = _damaged(segment, n, damage, every_entry_set=density == 1)
    with pytest.raises(CorruptArtifact, match="bitmap that disagrees"):
        get_codec("exact").decode(bad, (n,), params, where="w")
    with pytest.raises(CorruptArtifact, match="bitmap that disagrees"):
        planes.add_masked(bad, params, n, where="w", acc=torch.zeros(n), weight=0.5)


def _anchor_like(n: int, seed: int) -> torch.Tensor:
    """θ_G in float32 with the values whose sums are delicate: ±0.0, subnormals, huge and tiny entries."""
    g = torch.Generator().manual_seed(seed)
    acc = torch.randn(n, generator=g).to(torch.bfloat16).float()
    specials = torch.tensor([-0.0, 0.0, -0.0, 2.0**-149, -(2.0**-130), 3.0e38, -1.0e-30])
    acc[: min(n, len(specials))] = specials[: min(n, len(specials))]
    if n > 40:
        acc[17::23] = -0.0  # more −0.0 under zero and non-zero τ alike
    return acc


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 70_001])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.31, 1.0])
@pytest.mark.parametrize("weight", [0.15, -0.3, 1.0, 2.0**-130])
def test_adding_masked_frames_equals_decoding_then_adding_on_both_paths(path, n, density, weight):
    """The fused add (τ never materialised) gives the bits of the engine's ``acc.add_(tau.mul_(ω))``,
    down to −0.0 + 0·ω = +0.0 and products that round to subnormals or zero."""
    tau = _fine_tune_like(n, density, torch.float32, seed=n + 1)
    data, params = planes.encode_masked(tau)
    w = float(torch.tensor(weight, dtype=torch.float32))
    expected = _anchor_like(n, seed=n)
    got = expected.clone()
    expected.add_(planes.decode_masked(data, params, n, torch.float32, where="w").mul_(w))
    planes.add_masked(data, params, n, where="w", acc=got, weight=w)
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))


def test_adding_several_frames_equals_decoding_then_adding_on_both_paths(path, monkeypatch):
    monkeypatch.setattr(zstd_frame, "CHUNK_BYTES", 4096)  # many frames, each its own bitmap
    n = 50_003
    tau = _fine_tune_like(n, 0.31, torch.float32, seed=5)
    data, params = planes.encode_masked(tau)
    assert len(params["nnz"]) > 10
    expected = _anchor_like(n, seed=6)
    got = expected.clone()
    expected.add_(tau.mul(0.25))
    planes.add_masked(data, params, n, where="w", acc=got, weight=0.25)
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))


def test_the_exact_codec_adds_only_the_layout_it_can_add_in_one_pass():
    tau = _fine_tune_like(5000, 0.31, torch.float32, seed=9)
    codec = get_codec("exact")
    enc = codec.encode(tau)
    acc = torch.ones(5000)
    assert codec.add_into(enc.data, (50, 100), enc.params, where="w", acc=acc, weight=0.5)
    assert torch.equal(acc, torch.ones(5000).add_(tau.mul(0.5)))
    shuffled = zstd_frame.compress(planes.split(tau, "bytes").numpy().tobytes())
    assert codec.add_into(shuffled, (5000,), {"shuffle": 4}, where="w", acc=acc, weight=0.5) is False
    with pytest.raises(ValueError, match="float32 value"):
        planes.add_masked(enc.data, enc.params, 5000, where="w", acc=acc, weight=0.1)


def test_scatter_add_never_reads_past_the_values_it_has():
    assert jit.ready(jit.MIN_ELEMENTS)
    bits = np.full(4, 0xFF, dtype=np.uint8)
    values = np.arange(1, 21, dtype=np.float32)  # 19 values (+ the slot past them) for 32 set bits
    acc = np.zeros(32, dtype=np.float32)
    assert jit.scatter_add(bits, values, acc, np.float32(1.0)) == -1
    tail = np.array([0xFF, 0x01 | 0x02], dtype=np.uint8)  # 9 entries, 10 set bits counting a pad bit
    assert jit.scatter_add(tail, np.arange(1, 11, dtype=np.float32), np.zeros(9, dtype=np.float32), np.float32(1)) == -1
    with pytest.raises(ValueError):
        jit.scatter_add(bits, values, np.zeros(40, dtype=np.float32), np.float32(1))


def test_scatter_never_writes_past_the_values_it_has():
    assert jit.ready(jit.MIN_ELEMENTS)
    bits = np.full(4, 0xFF, dtype=np.uint8)
    values = np.arange(1, 20, dtype=np.uint32)  # 19 values for 32 set bits
    out = np.zeros(32, dtype=np.uint32)
    assert jit.scatter(bits, values, out) == -1
    padded = np.array([0xFF, 0x01 | 0x80], dtype=np.uint8)  # 9 entries; bit 15 is a pad bit
    assert jit.scatter(padded, np.arange(1, 11, dtype=np.uint32), np.zeros(9, dtype=np.uint32)) == -1
    with pytest.raises(ValueError):
        jit.scatter(bits, values, np.zeros(40, dtype=np.uint32))


def test_small_work_stays_on_numpy_and_never_loads_numba(monkeypatch):
    """A small model's install must not pay Numba's start-up."""
    monkeypatch.setattr(jit, "_kernels", None)
    assert not jit.ready(jit.MIN_ELEMENTS - 1)
    assert jit._kernels is None
    assert jit.ready(jit.MIN_ELEMENTS) and jit._kernels is not None


# --------------------------------------------------------------------------- the build's kernels


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 70_001])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.31, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_planes_encode_to_the_same_bytes_on_both_paths(monkeypatch, n, density, dtype):
    """The artifact's bytes do not depend on whether Numba is there (golden files pin one of them)."""
    tau = _fine_tune_like(n, density, dtype, seed=n + 1)
    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    got = {}
    for compiled in (True, False):
        monkeypatch.setattr(jit, "enabled", compiled)
        got[compiled] = planes.encode_masked(tau)
    assert got[True] == got[False]


@pytest.mark.parametrize("threads", [1, 3])
def test_frames_made_on_several_threads_join_to_the_bytes_of_one(monkeypatch, threads):
    monkeypatch.setattr(zstd_frame, "CHUNK_BYTES", 4096)
    tau = _fine_tune_like(50_003, 0.31, torch.float32, seed=4)
    before = zstd_frame.decode_threads()
    zstd_frame.set_decode_threads(1)
    try:
        one = planes.encode_masked(tau)
        zstd_frame.set_decode_threads(threads)
        assert planes.encode_masked(tau) == one
    finally:
        zstd_frame.set_decode_threads(before)
    assert len(one[1]["frames"]) > 10


def test_bf16_delta_is_the_fp32_subtraction_on_every_bit_pattern():
    """Random bf16 words cover NaN payloads, infinities, −0.0 and subnormals; the result must be
    bit for bit torch's ``ft.float() - pre.float()`` (NaNs compared as NaN, whatever their payload)."""
    assert jit.ready(jit.MIN_ELEMENTS)
    g = torch.Generator().manual_seed(11)
    ft, pre = (torch.randint(-(2**15), 2**15, (100_003,), generator=g, dtype=torch.int32).to(torch.int16) for _ in "ab")
    want = ft.view(torch.bfloat16).float() - pre.view(torch.bfloat16).float()
    got = np.empty(ft.numel(), np.float32)
    jit.bf16_delta(ft.numpy().view(np.uint16), pre.numpy().view(np.uint16), got)
    nan = torch.isnan(want)
    assert torch.equal(torch.from_numpy(np.isnan(got)), nan)
    assert torch.equal(torch.from_numpy(got)[~nan].view(torch.int32), want[~nan].view(torch.int32))


@pytest.mark.parametrize("start", [0, 1 << 20, 3 * (1 << 20) + 5])
def test_count_sketch_chunk_is_numpys_bincount_bit_for_bit(start):
    from tvreg._format import sketch

    assert jit.ready(jit.MIN_ELEMENTS)
    part = _fine_tune_like(100_000, 0.6, torch.float32, seed=5).numpy()
    seed, shift = sketch._seed("model.layers.0.mlp.up_proj.weight"), np.uint64(64 - 9)
    h = sketch._splitmix(seed, start, start + part.size)
    signed = part.astype(np.float64)
    signed.view(np.uint64)[...] ^= h << np.uint64(63)
    want = np.bincount((h >> shift).view(np.int64), weights=signed, minlength=512)
    got = np.zeros(512, np.float64)
    jit.count_sketch(part, seed, int(shift), start, got)
    assert got.tobytes() == want.tobytes()


def test_count_sketch_with_lanes_adds_the_first_magnitude_histogram_in_the_same_pass():
    assert jit.ready(jit.MIN_ELEMENTS)
    part = _fine_tune_like(100_003, 0.6, torch.float32, seed=9).numpy().copy()
    part[:6] = [np.nan, -np.inf, np.inf, -0.0, 2.0**-140, -np.nan]
    part[7::1001] = np.float32(1.0 + 2.0**-20)  # low bits set in one bucket only
    seed, shift = 12345, 64 - 9
    want_buckets, got_buckets = np.zeros(512), np.zeros(512)
    jit.count_sketch(part, seed, shift, 77, want_buckets)
    want = np.zeros((5, 1 << 15), np.int64)
    jit.magnitude_hist(part, -1, want)
    lanes = np.zeros((5, 1 << 15), np.int64)
    jit.count_sketch(part, seed, shift, 77, got_buckets, lanes)
    assert got_buckets.tobytes() == want_buckets.tobytes()
    assert np.array_equal(lanes[:4].sum(axis=0), want[:4].sum(axis=0)) and np.array_equal(lanes[4], want[4])
    assert lanes[4].any() and int(lanes[:4].sum()) == part.size - 2  # the NaNs are not counted
    with pytest.raises(ValueError, match="lanes"):
        jit.count_sketch(part, seed, shift, 0, got_buckets, np.zeros((4, 1 << 15), np.int64))


def test_tensors_sketched_at_once_on_shared_threads_keep_their_own_cutoffs():
    """Two workers sketch two big tensors at once while the shared threads take chunks of both:
    each tensor's cutoff histogram stays its own (the bytes equal sketching them one by one)."""
    from concurrent.futures import ThreadPoolExecutor

    from tvreg._format import sketch
    from tvreg._format.codecs import zstd_frame

    g = torch.Generator().manual_seed(4)
    a = torch.randn(3_000_000, generator=g) * 1e-3
    b = (torch.randn(2_500_000, generator=g) * 0.5).to(torch.bfloat16).float()  # other magnitudes, bf16 values
    alone = [sketch.sketch_tensor("a.weight", a), sketch.sketch_tensor("b.weight", b)]
    before = zstd_frame.decode_threads()
    zstd_frame.set_decode_threads(3)
    try:
        for _ in range(3):
            with ThreadPoolExecutor(2) as pool:
                both = list(pool.map(lambda nt: sketch.sketch_tensor(*nt), [("a.weight", a), ("b.weight", b)]))
            for got, want in zip(both, alone, strict=True):
                assert got.top_threshold == want.top_threshold and got.norm == want.norm
                assert got.projection is not None and want.projection is not None
                assert got.projection.tobytes() == want.projection.tobytes()
    finally:
        zstd_frame.set_decode_threads(before)
    flat = a.abs().numpy()
    assert alone[0].top_threshold == float(np.sort(flat)[::-1][int(np.ceil(0.2 * flat.size)) - 1])


def _select_cases() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(8)
    pre = (torch.randn(300_001, generator=g) * 0.02).to(torch.bfloat16)
    ft = (torch.randn(300_001, generator=g) * 1e-3 + pre.float()).to(torch.bfloat16)
    steps = torch.randint(-3, 4, (300_001,), generator=g).float()  # a handful of values, many ties
    return [ft.float() - pre.float(), torch.randn(300_001, generator=g), torch.zeros(300_001), steps, -steps]


@pytest.mark.parametrize("case", range(5))
def test_trim_cutoff_and_counts_are_the_same_on_both_paths(monkeypatch, case):
    """The compiled radix select gives the NumPy bracket's (t, entries > t, entries == t) exactly."""
    from tvreg._merge import trim

    x = _select_cases()[case]
    n = x.numel()

    def chunks():
        return ((s, x[s : s + (1 << 16)]) for s in range(0, n, 1 << 16))

    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    for k in (1, 7, n // 5, n // 2, n - 1, n):
        got = {}
        for compiled in (True, False):
            monkeypatch.setattr(jit, "enabled", compiled)
            got[compiled] = trim._select(n, k, chunks)
        assert got[True] == got[False], k


def test_a_build_writes_the_same_artifact_and_sketch_on_both_paths(monkeypatch, family_bf16, tmp_path):
    """bf16 models take the compiled delta, bitmap, sketch and cutoff; Numba or not, the same bytes."""
    from tvreg._build.build import build_skill

    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    out = {}
    for compiled in (True, False):
        monkeypatch.setattr(jit, "enabled", compiled)
        res = build_skill(family_bf16.pre, finetuned=family_bf16.science, output=tmp_path / f"{compiled}.tvskill",
                          name="science", version="1.0.0", dataset_size=10)  # fmt: skip
        assert res.sketch is not None
        out[compiled] = (res.path.read_bytes(), res.sketch.to_bytes())
    assert out[True] == out[False]


@pytest.mark.parametrize("case", range(5))
def test_trim_tie_cut_is_the_same_on_both_paths(monkeypatch, case):
    """The compiled tie cut (``jit.nth_magnitude``) stops at the entry the NumPy scan finds, across chunk edges."""
    from tvreg._merge import trim

    x = _select_cases()[case]
    n = x.numel()

    def chunks():
        return ((s, x[s : s + 5000]) for s in range(0, n, 5000))  # ties straddle chunk edges

    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    for density in (1e-5, 0.05, 0.2, 0.5, 0.9):
        got = {}
        for compiled in (True, False):
            monkeypatch.setattr(jit, "enabled", compiled)
            got[compiled] = trim.magnitude_trim(n, density, chunks)
        assert got[True] == got[False], density


def test_compiled_select_reads_bf16_valued_tau_once(monkeypatch):
    """The second radix pass is skipped only when the cutoff's bucket holds one value (every bf16 number)."""
    from tvreg._merge import trim

    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    steps = _select_cases()[3] * 2.0**-10  # a few bf16 values
    mixed = steps.clone()
    mixed[123] = float(np.nextafter(np.float32(3 * 2.0**-10), np.float32(1.0)))  # in the cutoff's bucket, low bits set
    for x, passes in ((steps, 1), (mixed, 2), (_select_cases()[1], 2)):
        calls = 0

        def chunks(x=x):
            nonlocal calls
            calls += 1
            return ((s, x[s : s + (1 << 16)]) for s in range(0, x.numel(), 1 << 16))

        k = x.numel() // 5
        t, greater, equal = trim._select(x.numel(), k, chunks)
        assert calls == passes
        magnitudes = np.abs(x.numpy())
        assert (greater, equal) == (int((magnitudes > t).sum()), int((magnitudes == t).sum()))
        assert greater < k <= greater + equal


def test_exact_decode_counts_the_magnitude_histogram_a_pass_over_the_dense_tau_would(monkeypatch):
    """From each frame's non-zeros (the zeros as one count), on the shared threads: the same lanes as
    ``magnitude_hist`` over the decoded τ, whole frames, partial ones, a short tail frame, NaN and −0.0."""
    from tvreg._format.codecs import zstd_frame

    monkeypatch.setattr(zstd_frame, "CHUNK_BYTES", 1 << 18)  # 64Ki entries a frame
    before = zstd_frame.decode_threads()
    zstd_frame.set_decode_threads(3)
    try:
        x = torch.cat([_select_cases()[1], _select_cases()[2]])[: 5 * (1 << 16) + 1000]
        x[: 1 << 16] = torch.randn(1 << 16) * 1e-3  # a frame with no zero: its values merge in place
        x[70_000:70_010] = float("nan")
        x[70_010:70_020] = -0.0
        enc = get_codec("exact").encode(x)
        assert len(enc.params["frames"]) == 6 and enc.params["nnz"][0] == 1 << 16
        got = get_codec("exact").decode_form_with_histogram(enc.data, (x.numel(),), enc.params, where="t")
        assert got is not None
        form, lanes = got
        assert torch.equal(form.to_dense().view(torch.int32), x.view(torch.int32))
        want = np.zeros((5, 1 << 15), np.int64)
        jit.magnitude_hist(x.numpy(), -1, want)
        assert np.array_equal(lanes[:4].sum(axis=0), want[:4].sum(axis=0)) and np.array_equal(lanes[4], want[4])
    finally:
        zstd_frame.set_decode_threads(before)


def test_ties_cutoff_of_an_exact_blob_starts_from_the_decode_s_histogram(tmp_path, monkeypatch):
    """plan_tensor takes the lanes the lazy decode counted: the same trim as from the decoded τ, with one
    read of τ fewer (for bf16-valued τ, the tie cut's is then its only one)."""
    from tvreg._format.artifact import Artifact, ArtifactWriter
    from tvreg._format.manifest import Manifest
    from tvreg._merge import engine
    from tvreg._merge.ties import TIES

    steps = _select_cases()[3] * 2.0**-10  # bf16 values: one histogram pass, then the tie cut
    mixed = (torch.randn(steps.numel()) * 1e-3).contiguous()  # low bits everywhere: two histogram passes, no ties
    passes = []
    real_iter = engine.iter_chunks

    def counting_iter(form, chunk):
        passes.append(1)
        return real_iter(form, chunk)

    monkeypatch.setattr(engine, "iter_chunks", counting_iter)
    recipe = TIES.recipe([1.0], ["task_vector"], {"density": 0.2, "normalize": True, "lambda": 1.0})
    for i, tau in enumerate((steps, mixed)):
        path = tmp_path / f"s{i}.tvskill"
        writer = ArtifactWriter(path, Manifest(name="s", version="1.0.0", base_fingerprint="0123456789abcdef" * 4))
        enc = get_codec("exact").encode(tau)
        writer.add("w", enc.data, codec="exact", shape=(tau.numel(),), dtype="F32", params=enc.params, rel_error=0.0)
        writer.finish()
        counted = []
        for lazy in (True, False):
            form = Artifact(path).decode_form("w", lazy=lazy)
            passes.clear()
            plan = engine.plan_tensor(recipe, "w", ["s"], [form], tau.numel())
            counted.append((len(passes), plan.terms))
            assert form.magnitude_lanes() is None  # counted once, by the decode that made the form
        assert counted[0][1] == counted[1][1] and counted[0][1][0].trim is not None
        assert counted[0][0] == counted[1][0] - 1 and counted[1][0] == 2, counted  # steps: 1 + the tie cut


@pytest.mark.parametrize("compiled", [True, False])
def test_trim_holds_one_chunk_at_a_time_on_both_paths(monkeypatch, compiled):
    """Install's TIES expands a compact form chunk by chunk; the cutoff must not keep them all."""
    import weakref

    from tvreg._merge import trim

    x = _select_cases()[0]
    alive: weakref.WeakSet[torch.Tensor] = weakref.WeakSet()

    def chunks():
        for s in range(0, x.numel(), 1 << 14):
            assert len(alive) <= 1, "an earlier chunk is still held"  # the caller's loop variable may hold one
            chunk = x[s : s + (1 << 14)].clone()
            alive.add(chunk)
            yield s, chunk

    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(jit, "enabled", compiled)
    assert trim.magnitude_trim(x.numel(), 0.2, chunks) is not None


def _general_bf16(n: int, seed: int, *, nans: bool) -> torch.Tensor:
    """θ_G in bf16 with the delicate values: ±0.0, subnormals, ±inf, the largest finite, and (``nans``) NaNs."""
    g = _anchor_like(n, seed).to(torch.bfloat16)
    words = g.view(torch.int16)
    specials = [0x7F80, -0x80, 0x0001, -0x7FFF, 0x7F7F]  # +inf, −inf, subnormals ±, the largest finite
    if nans:
        specials += [0x7FC0, 0x7F81, -0x3F]  # quiet, signalling and negative NaN
    for i, bits in enumerate(specials):
        words[(i * 37 + 11) % n] = bits
    return g


def _added_then_rounded(general: torch.Tensor, blobs: list[tuple[bytes, dict]], weights: list[float]) -> torch.Tensor:
    """What the engine computed before: a float32 sum filled from θ_G, each blob added in turn, one bf16 copy."""
    acc = general.float()
    for (data, params), w in zip(blobs, weights, strict=True):
        planes.add_masked(data, params, acc.numel(), where="w", acc=acc, weight=w)
    return acc.to(torch.bfloat16)


@pytest.mark.parametrize("n", [9, 1000, 70_001])
@pytest.mark.parametrize("skills", [1, 3])
@pytest.mark.parametrize("nans", [False, True])
def test_adding_every_skill_and_rounding_in_one_pass_gives_the_engines_bits(monkeypatch, n, skills, nans):
    """``bf16(((θ_G + τ_1·ω_1) + τ_2·ω_2) + …)`` frame by frame equals adding each blob into a float32 sum
    and copying it to bf16, down to −0.0, infinities, subnormals and the bits torch gives a NaN sum."""
    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(zstd_frame, "CHUNK_BYTES", 4096)  # several frames, the last one short
    weights = [float(torch.tensor(w, dtype=torch.float32)) for w in (0.15, -0.3, 2.0**-130)[:skills]]
    densities = (0.31, 1.0, 0.0)
    blobs = [planes.encode_masked(_fine_tune_like(n, densities[k], torch.float32, seed=n + k)) for k in range(skills)]
    general = _general_bf16(n, seed=n, nans=nans)
    out = torch.full((n,), 7.0, dtype=torch.bfloat16)
    masked = [(planes.MaskedBlob(data, params, "w"), w) for (data, params), w in zip(blobs, weights, strict=True)]
    assert planes.add_round_masked(masked, general, out)
    expected = _added_then_rounded(general, blobs, weights)
    assert torch.equal(out.view(torch.int16), expected.view(torch.int16))


def test_blobs_cut_into_other_frames_are_left_to_the_per_skill_path(monkeypatch):
    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    n = 20_000
    general = _general_bf16(n, seed=1, nans=False)
    one = planes.encode_masked(_fine_tune_like(n, 0.31, torch.float32, seed=1))
    monkeypatch.setattr(zstd_frame, "CHUNK_BYTES", 4096)
    other = planes.encode_masked(_fine_tune_like(n, 0.31, torch.float32, seed=2))
    out = torch.zeros(n, dtype=torch.bfloat16)
    blobs = [(planes.MaskedBlob(data, params, "w"), 0.5) for data, params in (one, other)]
    assert planes.add_round_masked(blobs, general, out) is False
    assert planes.add_round_masked(blobs[:1], general.float(), out) is False  # only bf16 θ_G
    assert not out.any(), "nothing is written when the blobs cannot be added together"


@pytest.mark.parametrize("damage", ["extra bit", "missing bit", "pad bit"])
def test_a_bitmap_that_disagrees_is_refused_naming_its_blob_when_skills_are_added_together(monkeypatch, damage):
    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    n = 1001
    tau = _fine_tune_like(n, 0.5, torch.float32, seed=7)
    tau[0], tau[5] = 1.0, 0.0
    segment, params = _segment(tau)
    bad = _damaged(segment, n, damage)
    good = planes.encode_masked(_fine_tune_like(n, 0.31, torch.float32, seed=8))
    blobs = [(planes.MaskedBlob(good[0], good[1], "good"), 0.5), (planes.MaskedBlob(bad, params, "bad"), 0.5)]
    general = _general_bf16(n, seed=2, nans=False)
    with pytest.raises(CorruptArtifact, match="tensor `bad` has a zero bitmap that disagrees"):
        planes.add_round_masked(blobs, general, torch.empty(n, dtype=torch.bfloat16))


def _delicate_taus(n: int, seed: int) -> list[torch.Tensor]:
    """τ chunks with what the consensus must treat bit for bit: ±0.0, ties at one magnitude, subnormals,
    ±inf, and opposite signs that cancel in the election."""
    g = torch.Generator().manual_seed(seed)
    specials = torch.tensor([1e-45, -1e-45, float("inf"), -float("inf")])
    out = []
    for k in range(3):
        steps = torch.randint(-3, 4, (n,), generator=g).float() * 2.0**-10
        steps[torch.rand(n, generator=g) < 0.3] = 0.0
        steps[torch.rand(n, generator=g) < 0.05] = -0.0
        steps[torch.rand(n, generator=g) < 0.2] = float(torch.randn(1, generator=g)) * 1e-3  # one more tied value
        at = steps[k * 7 + 3 :: 9973]
        at.copy_(specials.repeat(at.numel())[: at.numel()])
        out.append(steps)
    out[1][::5] = -out[0][::5]  # sums of exactly zero: no elected sign
    return out


@pytest.mark.parametrize(
    "normalize, lam, weights, cut",
    [(True, 1.0, (0.1, 0.15, 0.2), True), (False, 0.7, (0.3, -0.25, 1.0), True), (True, 1.3, (0.5, 0.5, 0.5), False)],
)
def test_ties_consensus_compiled_equals_the_torch_path_bit_for_bit(monkeypatch, normalize, lam, weights, cut):
    """The one-pass consensus loop (``jit.consensus_mix``) gives :func:`merge_chunk`'s float32 bits,
    trims with ties cut mid-chunk, skills that skip the tensor, and every sign case included."""
    from tvreg._merge import engine
    from tvreg._merge.base import Recipe
    from tvreg._merge.trim import magnitude_trim

    n, start = 70_001, 1_000_000
    taus = _delicate_taus(n, 11)
    general = torch.randn(n, generator=torch.Generator().manual_seed(12)) * 0.02
    terms = []
    for k, tau in enumerate(taus):
        trim = magnitude_trim(n, 0.2 + 0.1 * k, lambda tau=tau: [(start, tau)]) if cut else None
        terms.append(engine.Term(weight=weights[k], numel=n, trim=trim))
    terms.insert(1, None)  # a skill that leaves this tensor unchanged
    recipe = Recipe(weights=(weights[0], 0.5, *weights[1:]), consensus=True, normalize=normalize, lam=lam)
    plan = engine.TensorPlan(recipe=recipe, numel=n + start, pre_numel=0, terms=tuple(terms))
    chunks = [taus[0], None, taus[1], taus[2]]
    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    got = engine._consensus_compiled(plan, start, general, None, [c.clone() if c is not None else None for c in chunks])
    want = engine.merge_chunk(plan, start, general, None, [c.clone() if c is not None else None for c in chunks])
    assert got is not None
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    if cut:
        assert any(t is not None and t.trim is not None and start < t.trim.tie_cut < start + n for t in terms)


@pytest.mark.parametrize("n", [1, 2047, 2048, 2049, 70_001])
@pytest.mark.parametrize("threshold", [0, 1, round(0.2 * 2**32), 2**31, 2**32 - 1])
@pytest.mark.parametrize("seed", [0, 12345, 2**32 - 1])
def test_hashed_positions_and_counts_are_the_same_on_both_paths(monkeypatch, n, threshold, seed):
    from tvreg._format.codecs.sparse import hashed_count, hashed_positions

    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    got = {}
    for compiled in (True, False):
        monkeypatch.setattr(jit, "enabled", compiled)
        got[compiled] = (hashed_positions(n, threshold, seed), hashed_count(n, threshold, seed))
    (pos, count), (ref, ref_count) = got[True], got[False]
    assert np.array_equal(pos, ref) and count == ref_count == len(ref)
    monkeypatch.setattr(jit, "enabled", True)
    for wrong in (max(0, len(ref) - 1), len(ref) + 1):  # a declared count the hash disagrees with
        assert np.array_equal(hashed_positions(n, threshold, seed, expected=wrong, dtype=np.int32), ref)


def test_the_hash_loop_never_writes_past_the_slots_it_has():
    jit.ready(1 << 20)
    ref_count = jit.hash_positions(0, 10_000, 2**31, 7, np.zeros(0, dtype=np.int64))
    out = np.full(11, -1, dtype=np.int64)
    guard = np.full(4, -9, dtype=np.int64)
    room = np.concatenate([out, guard])
    assert jit.hash_positions(0, 10_000, 2**31, 7, room[:11]) == ref_count > 11
    assert (room[11:] == -9).all()


@pytest.mark.parametrize("select", ["random", "magnitude"])
def test_sparse_forms_expand_the_same_on_both_paths(monkeypatch, select):
    from tvreg._format.codecs import make_codec

    g = torch.Generator().manual_seed(5)
    tau = torch.randn(300, 257, generator=g)
    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    codec = make_codec("sparse", {"density": 0.2, "select": select, "values": "int4"})
    enc = codec.encode(tau)
    got = {}
    for compiled in (True, False):
        monkeypatch.setattr(jit, "enabled", compiled)
        form = codec.decode_form(enc.data, tau.shape, enc.params, where="t")
        got[compiled] = (form.to_dense(), torch.cat([form.chunk(a, min(a + 9_999, tau.numel())) for a in range(0, tau.numel(), 9_999)]))
    assert torch.equal(got[True][0], got[False][0]) and torch.equal(got[True][1], got[False][1])
    assert torch.equal(got[True][0].reshape(-1), got[True][1])


def test_placing_a_position_outside_the_range_is_refused_without_a_write():
    jit.ready(1 << 20)
    out = np.zeros(8, dtype=np.float32)
    room = np.concatenate([out, np.full(4, 7.0, dtype=np.float32)])
    with pytest.raises(ValueError, match="outside"):
        jit.place(np.array([1, 8, 9], dtype=np.int32), np.ones(3, dtype=np.float32), 0, room[:8])
    assert room[1] == 1.0 and (room[8:] == 7.0).all()


@pytest.mark.parametrize("weight", [0.37, -1.25, 0.0])
@pytest.mark.parametrize("kind", ["float32", "bfloat16", "int8", "empty"])
@pytest.mark.parametrize("extent", [1.0, 0.6])
def test_adding_a_sparse_form_in_one_pass_gives_the_chunked_paths_bits(monkeypatch, weight, kind, extent):
    from tvreg._format.codecs.forms import Sparse, StoredForm

    n = 50_003
    g = torch.Generator().manual_seed(11)
    picked = torch.rand(n, generator=g) < (0.0 if kind == "empty" else 0.2)
    idx = torch.nonzero(picked).reshape(-1).to(torch.int32)
    values = torch.randn(idx.numel(), generator=g) * 1e-3
    values[:3] = torch.tensor([-0.0, 1e-45, -1e-45])[: values.numel()]
    scale = None
    if kind == "bfloat16":
        values = values.to(torch.bfloat16)
    elif kind == "int8":
        values, scale = torch.randint(-127, 128, (idx.numel(),), generator=g).to(torch.int8), 3e-4
    form = Sparse(shape=(n,), indices=idx, values=values, scale=scale)
    acc = torch.randn(int(n * extent), generator=g)
    acc[::7] = -0.0
    acc[5] = float("nan")
    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    assert jit.ready(1)
    one_pass, chunked = acc.clone(), acc.clone()
    form.add_scaled(one_pass, weight, chunk=4096)
    StoredForm.add_scaled(form, chunked, weight, chunk=4096)
    assert torch.equal(one_pass.view(torch.int32), chunked.view(torch.int32))
    if kind != "empty" and weight:
        assert not torch.equal(one_pass.view(torch.int32), acc.view(torch.int32))


def test_a_sparse_form_with_positions_out_of_order_is_refused_when_added(monkeypatch):
    from tvreg._format.codecs.forms import Sparse

    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    form = Sparse(shape=(100,), indices=torch.tensor([5, 3, 9], dtype=torch.int32), values=torch.ones(3))
    with pytest.raises(ValueError, match="out of order"):
        form.add_scaled(torch.zeros(100), 1.0, chunk=64)


@pytest.mark.parametrize("weight", [0.37, -1.25])
@pytest.mark.parametrize("extent", [1.0, 0.6])
@pytest.mark.parametrize("density", [0.2, 1.0])
def test_a_hashed_sparse_form_adds_with_the_chunked_paths_bits_and_no_positions(monkeypatch, weight, extent, density):
    from tvreg._format.codecs import make_codec
    from tvreg._format.codecs.forms import StoredForm

    g = torch.Generator().manual_seed(3)
    tau = torch.randn(200, 301, generator=g) * 1e-3
    codec = make_codec("sparse", {"density": density, "select": "random", "values": "int4"})
    enc = codec.encode(tau)
    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    acc = torch.randn(int(tau.numel() * extent), generator=g)
    acc[::5] = -0.0
    one_pass, chunked = acc.clone(), acc.clone()
    form = codec.decode_form(enc.data, tau.shape, enc.params, where="w")
    form.add_scaled(one_pass, weight, chunk=4096)
    if density < 1.0:
        assert form.indices is None, "the hashed add must not compute the positions"
    reference = codec.decode_form(enc.data, tau.shape, enc.params, where="w")
    StoredForm.add_scaled(reference, chunked, weight, chunk=4096)
    assert torch.equal(one_pass.view(torch.int32), chunked.view(torch.int32))
    assert not torch.equal(one_pass.view(torch.int32), acc.view(torch.int32))


@pytest.mark.parametrize("use", ["add", "round", "dense", "chunk"])
@pytest.mark.parametrize("off", [-1, 1])
def test_a_hashed_form_whose_count_disagrees_is_refused_on_use(monkeypatch, use, off):
    from tvreg._format.codecs import make_codec
    from tvreg._format.codecs.forms import Sparse

    tau = torch.randn(100, 300, generator=torch.Generator().manual_seed(4))
    enc = make_codec("sparse", {"density": 0.2, "select": "random", "values": "int4"}).encode(tau)
    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    good = get_codec("sparse").decode_form(enc.data, tau.shape, enc.params, where="blk.0")
    assert isinstance(good, Sparse)
    values = good.values[:-1] if off < 0 else torch.cat([good.values, good.values[:1]])
    bad = Sparse(shape=good.shape, indices=None, values=values, hashed=good.hashed, where="blk.0")
    with pytest.raises(CorruptArtifact, match=r"`blk\.0` hashes to \d+ kept entries but declares"):
        if use == "add":
            bad.add_scaled(torch.zeros(tau.numel()), 1.0, chunk=4096)
        elif use == "round":
            general = torch.zeros(tau.numel(), dtype=torch.bfloat16)
            bad.add_round(general, 1.0, torch.empty_like(general))
        elif use == "dense":
            bad.to_dense()
        else:
            bad.chunk(0, 10)


@pytest.mark.parametrize("weight", [0.37, -1.25])
@pytest.mark.parametrize("nans", [False, True])
@pytest.mark.parametrize("values", ["int4", "bf16", "int8"])
def test_a_hashed_sparse_form_added_onto_bf16_and_rounded_in_one_pass_gives_the_engines_bits(monkeypatch, weight, nans, values):
    from tvreg._format.codecs import make_codec
    from tvreg._format.codecs.forms import StoredForm
    from tvreg._merge import get_method, merge_tensor, plan_tensor

    g = torch.Generator().manual_seed(8)
    shape = (150, 301)
    tau = torch.randn(shape, generator=g) * 1e-2
    codec = make_codec("sparse", {"density": 0.3, "select": "random", "values": values})
    enc = codec.encode(tau)
    general = _general_bf16(tau.numel(), 9, nans=nans).view(shape)
    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    calls = []
    real = jit.hash_add_round_bf16
    monkeypatch.setattr(jit, "hash_add_round_bf16", lambda *a: calls.append(1) or real(*a))

    def fresh():
        return codec.decode_form(enc.data, shape, enc.params, where="w")

    out = torch.empty(tau.numel(), dtype=torch.bfloat16)
    assert fresh().add_round(general.reshape(-1), weight, out)
    acc = general.reshape(-1).float()
    StoredForm.add_scaled(fresh(), acc, weight, chunk=4096)
    assert torch.equal(out.view(torch.int16), acc.to(torch.bfloat16).view(torch.int16))
    assert bool(out.isnan().any()) == nans

    m = get_method("task_arithmetic")
    recipe = m.recipe([weight], ["delta"], m.resolve_params({}))
    calls.clear()
    plan = plan_tensor(recipe, "w", ["s"], [fresh()], tau.numel())
    merged = merge_tensor(plan, general, [fresh()])
    assert calls, "the engine must take the one-pass path for a lone hashed skill on bf16 θ_G"
    assert torch.equal(merged.reshape(-1).view(torch.int16), out.view(torch.int16))


@pytest.mark.parametrize("count", [1, 2, 3, 999, 70_001])
@pytest.mark.parametrize("group", [1, 16, 64])
def test_int4_codes_unpack_and_scale_the_same_on_both_paths(monkeypatch, count, group):
    from tvreg._format.codecs import lowbit

    g = torch.Generator().manual_seed(count)
    codes = torch.randint(-7, 8, (count,), generator=g, dtype=torch.int8)
    raw = torch.from_numpy(lowbit.pack_int4(codes))
    scales = torch.rand(-(-count // group), generator=g) * 1e-3
    scales[0] = 2.0**-140  # a subnormal scale: the product still rounds once
    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    got = {}
    for compiled in (True, False):
        monkeypatch.setattr(jit, "enabled", compiled)
        got[compiled] = lowbit.unpack_expand(raw, count, 4, scales, group, "w")
    assert torch.equal(got[True].view(torch.int32), got[False].view(torch.int32))
    assert torch.equal(got[False], codes.float() * scales.repeat_interleave(group)[:count])


@pytest.mark.parametrize("damage", ["minus eight", "pad bits", "short"])
def test_damaged_int4_codes_are_refused_alike_on_both_paths(monkeypatch, damage):
    from tvreg._format.codecs import lowbit

    count = 1001
    raw = torch.from_numpy(lowbit.pack_int4(torch.ones(count, dtype=torch.int8)))
    if damage == "minus eight":
        raw[17] = 0x81
    elif damage == "pad bits":
        raw[-1] = raw[-1] | 0x30
    else:
        raw = raw[:-1]
    monkeypatch.setattr(jit, "MIN_ELEMENTS", 0)
    messages = set()
    for compiled in (True, False):
        monkeypatch.setattr(jit, "enabled", compiled)
        with pytest.raises(CorruptArtifact) as caught:
            lowbit.unpack_expand(raw, count, 4, torch.ones(count), 1, "blk.3")
        messages.add(caught.value.message)
    assert len(messages) == 1 and "`blk.3`" in messages.pop()
