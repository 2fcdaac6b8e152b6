"""Codecs: exact is bit-exact, lossy codecs stay within the error they report, and hostile bytes fail clearly."""

from __future__ import annotations

import json
import threading

import pytest
import torch
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import read_state_dict

from tvreg._build.build import build_skill
from tvreg._format.artifact import Artifact
from tvreg._format.codecs import CODECS, get_codec, make_codec, planes, relative_error, zstd_frame
from tvreg._format.codecs.forms import Dense, Int8Groups, LowRank, Sparse
from tvreg._format.codecs.int8 import quantize
from tvreg.errors import CorruptArtifact, InvalidCodecOption, InvalidManifest

LOSSY = [
    ("bf16", {}),
    ("int8", {}),
    ("int8", {"group": 32, "scales": "fp32"}),
    ("sparse", {"density": 0.2}),
    ("sparse", {"density": 0.05, "values": "int8", "index": "bitmap"}),
    ("sparse", {"density": 0.3, "select": "random", "seed": 7}),
    ("lowrank", {"rank": 4}),
    ("int4", {}),
    ("int4", {"group": 0, "scales": "fp16"}),
    ("sign", {}),
    ("sign", {"per": "tensor"}),
    ("sparse", {"density": 0.2, "values": "int4", "group": 8}),
    ("sparse", {"density": 0.3, "select": "random", "values": "sign"}),
    ("sparse", {"density": 0.3, "select": "random", "values": "int4", "rescale": "row"}),
    ("auto", {"max_rel_error": 0.05, "min_numel": 0}),
]


@pytest.fixture(scope="module")
def taus(family_bf16):
    pre, ft = read_state_dict(family_bf16.pre), read_state_dict(family_bf16.science)
    return {n: ft[n].float() - pre[n].float() for n in pre}


def _round_trip(codec_name, opts, tau):
    enc = make_codec(codec_name, opts).encode(tau)
    used = get_codec(enc.codec or codec_name)
    form = used.decode_form(enc.data, tuple(tau.shape), enc.params, where="t")
    dense = used.decode(enc.data, tuple(tau.shape), enc.params, where="t")
    return used, enc, form, dense


def test_exact_round_trips_every_tensor_bit_for_bit(taus):
    codec = get_codec("exact")
    for name, tau in taus.items():
        enc = codec.encode(tau)
        assert torch.equal(codec.decode(enc.data, tuple(tau.shape), enc.params, where=name), tau)


def test_exact_round_trips_special_values():
    t = torch.tensor([0.0, -0.0, 1e-45, -3.4e38, float("inf"), float("nan")])
    codec = get_codec("exact")
    enc = codec.encode(t)
    back = codec.decode(enc.data, (6,), enc.params, where="t")
    assert torch.equal(back.view(torch.int32), t.view(torch.int32))


def test_exact_still_reads_older_layouts(taus):
    """tvreg 0.1 stored `{"shuffle": 4}` byte planes, early 0.2 builds planes of every entry."""
    tau = next(iter(taus.values()))
    legacy = zstd_frame.compress(planes.split(tau.contiguous(), "bytes").numpy().tobytes())
    assert torch.equal(get_codec("exact").decode(legacy, tuple(tau.shape), {"shuffle": 4}, where="w"), tau)
    data, params = planes.encode(tau.reshape(-1), "exp")
    assert torch.equal(get_codec("exact").decode(data, tuple(tau.shape), params, where="w"), tau)


def test_masked_planes_use_the_planes_profile_and_level_1_frames_still_decode(monkeypatch):
    """Artifacts written before the planes profile (plain level 1) decode and install the same bits."""
    monkeypatch.setattr(zstd_frame, "CHUNK_BYTES", 1 << 16)
    g = torch.Generator().manual_seed(3)
    pre = (torch.randn(300_000, generator=g) * 0.02).to(torch.bfloat16)
    tau = (pre.float() + torch.randn(300_000, generator=g) * 1e-3).to(torch.bfloat16).float() - pre.float()
    tau[torch.rand(300_000, generator=g) < 0.4] = 0.0
    for name in ("exact", "bf16"):
        codec = get_codec(name)
        enc = codec.encode(tau)
        frames, at = [], 0
        for size in enc.params["frames"]:
            frames.append(bytes(enc.data[at : at + size]))
            at += size
        raws = [zstandard.ZstdDecompressor().decompress(f) for f in frames]
        assert len(frames) > 1 and frames == [zstd_frame.compress(r, profile=zstd_frame.PLANES) for r in raws]
        older = [zstd_frame.compress(r) for r in raws]  # what tvreg wrote before: level 1
        assert older != frames
        new = codec.decode(enc.data, (300_000,), enc.params, where="t")
        old = codec.decode(b"".join(older), (300_000,), dict(enc.params, frames=[len(f) for f in older]), where="t")
        assert torch.equal(new.view(torch.int32), old.view(torch.int32))
        if name == "exact":
            assert torch.equal(new.view(torch.int32), tau.view(torch.int32))
    with pytest.raises(ValueError, match="unknown zstd profile"):
        zstd_frame.compress(b"x", profile="fastest")


def test_exact_stores_zeros_as_a_bitmap_and_refuses_a_lying_count():
    t = torch.tensor([0.0, -0.0, 2.0**-130, 0.0, 1.5, 0.0, 0.0, 0.0, -3.0])
    enc = get_codec("exact").encode(t)
    assert enc.params["nnz"] == [4]
    back = get_codec("exact").decode(enc.data, (9,), enc.params, where="w")
    assert torch.equal(back.view(torch.int32), t.view(torch.int32))
    with pytest.raises(CorruptArtifact, match="(bitmap that disagrees|decompresses to)"):
        get_codec("exact").decode(enc.data, (9,), dict(enc.params, nnz=[3]), where="w")
    with pytest.raises(CorruptArtifact, match="more non-zero entries than it has"):
        get_codec("exact").decode(enc.data, (9,), dict(enc.params, nnz=[10]), where="w")


@pytest.mark.parametrize(("codec_name", "opts"), LOSSY, ids=lambda v: str(v))
def test_lossy_codecs_build_real_skills_within_their_reported_error(family_bf16, tmp_path, codec_name, opts):
    res = build_skill(
        family_bf16.pre,
        finetuned=family_bf16.science,
        output=tmp_path / "s.tvskill",
        name="science",
        version="1.0.0",
        codec=codec_name,
        codec_options=opts,
    )
    pre, ft = read_state_dict(family_bf16.pre), read_state_dict(family_bf16.science)
    with Artifact(res.path) as art:
        m = art.manifest
        assert m.lossy and m.source["codec"].startswith(codec_name)
        for name, entry in m.tensors.items():
            tau = ft[name].float() - pre[name].float()
            back = art.decode(name)
            assert entry.rel_error is not None
            assert relative_error(tau, back) <= entry.rel_error * (1 + 1e-6) + 1e-12, name
            if codec_name == "auto":
                assert entry.rel_error <= opts["max_rel_error"]
            assert torch.equal(art.decode_form(name).to_dense(), back)


def test_lossy_codecs_decode_to_their_compact_forms(taus):
    big = max(taus.values(), key=lambda t: t.numel() if t.dim() == 2 else 0)
    expected = {"bf16": Dense, "int8": Int8Groups, "sparse": Sparse, "lowrank": LowRank}
    for name, form_type in expected.items():
        used, _, form, dense = _round_trip(name, {"rank": 2} if name == "lowrank" else {}, big)
        assert used.name == name and isinstance(form, form_type)
        assert torch.equal(form.to_dense(), dense)
        assert form.nbytes < big.numel() * 4
    assert _round_trip("bf16", {}, big)[2].values.dtype == torch.bfloat16


def test_bf16_is_lossless_on_same_exponent_bf16_updates(family_bf16):
    """Where θ_ft and θ_pre share sign and exponent, τ is a whole number of bf16 ulps: bf16 keeps it exactly."""
    pre, ft = read_state_dict(family_bf16.pre), read_state_dict(family_bf16.science)
    for name in pre:
        tau = ft[name].float() - pre[name].float()
        same = (pre[name].view(torch.int16) >> 7) == (ft[name].view(torch.int16) >> 7)  # sign and exponent
        back = _round_trip("bf16", {}, tau)[3]
        assert torch.equal(back[same], tau[same]), name


def test_int8_error_is_at_most_half_a_step(taus):
    tau = max(taus.values(), key=lambda t: t.numel())
    _, enc, form, dense = _round_trip("int8", {"group": 64}, tau)
    steps = form.scales.repeat_interleave(64)[: tau.numel()].reshape(tau.shape)
    assert bool(((dense - tau).abs() <= steps / 2 + 1e-12).all())


def test_int8_takes_one_scale_per_tensor_only_within_its_budget_and_reads_older_layouts():
    torch.manual_seed(3)
    quiet = torch.randn(64, 96) * 1e-3
    quiet[0] = torch.randn(96)  # one loud row: a tensor-wide scale would zero the others
    mostly_zero = torch.randn(64, 96) * (torch.rand(64, 96) < 0.1)
    for tau, whole in ((quiet, False), (mostly_zero, True)):
        _, enc, form, dense = _round_trip("int8", {}, tau)
        assert (form.group_size == tau.numel()) is whole and enc.params["rows"] == "by_spread"
        assert relative_error(tau, dense) <= 0.01
    assert enc.params["zeros"] == "bitmap"  # mostly zero codes: a bitmap plus the non-zero codes
    assert _round_trip("int8", {"max_rel_error": 0}, mostly_zero)[2].group_size == 96
    # tvreg 0.2 wrote fp16 scales then every code, rows in order, in one stream
    old = quantize(mostly_zero.reshape(-1), 96, "fp16")
    raw = torch.cat([old.scales.view(torch.uint8), old.q.view(torch.uint8)]).numpy().tobytes()
    back = get_codec("int8").decode(zstd_frame.compress(raw), (64, 96), {"group": 96, "scales": "fp16"}, where="w")
    assert torch.equal(back, old.to_dense().reshape(64, 96))
    with pytest.raises(CorruptArtifact, match="unknown int8 row order"):
        get_codec("int8").decode(enc.data, (64, 96), dict(enc.params, rows="random"), where="w")
    with pytest.raises(CorruptArtifact, match="scale frame of"):
        get_codec("int8").decode(enc.data, (64, 96), dict(enc.params, scale_frame=10**9), where="w")


def test_sparse_keeps_exactly_the_largest_entries(taus):
    tau = max(taus.values(), key=lambda t: t.numel())
    for index in ("bitmap", "delta"):
        _, enc, form, dense = _round_trip("sparse", {"density": 0.1, "index": index}, tau)
        assert enc.params["index"] == index
        k = enc.params["k"]
        kept = dense != 0
        assert int(kept.sum()) <= k and k == -(-tau.numel() // 10)
        assert float(tau.abs()[~kept].max()) <= float(tau.abs()[kept].min())


def test_sparse_random_selection_rescales_and_stores_no_positions():
    torch.manual_seed(4)
    tau = torch.randn(200, 150)
    _, enc, form, dense = _round_trip("sparse", {"density": 0.1, "select": "random"}, tau)
    assert enc.params["index"] == "hash" and abs(enc.params["k"] / tau.numel() - 0.1) < 0.01
    kept = dense != 0
    assert kept.sum() == enc.params["k"]
    assert torch.allclose(dense[kept], tau[kept] / (enc.params["threshold"] / 2**32), rtol=1e-2)
    assert len(enc.data) < 2 * enc.params["k"] + 64  # bf16 values, no index bytes
    other = make_codec("sparse", {"density": 0.1, "select": "random", "seed": 1}).encode(tau)
    assert other.params["k"] != enc.params["k"] or other.data != enc.data
    codec = get_codec("sparse")
    with pytest.raises(CorruptArtifact, match="hashes to|impossible at its hash threshold"):
        codec.decode(enc.data, (200, 150), dict(enc.params, threshold=enc.params["threshold"] // 2), where="w")
    with pytest.raises(CorruptArtifact, match="hashed-index parameters"):
        codec.decode(enc.data, (200, 150), dict(enc.params, seed=-1), where="w")


@pytest.mark.parametrize("select", ["random", "magnitude"])
def test_sparse_row_rescale_gives_each_row_its_whole_projection_at_the_same_positions(select):
    torch.manual_seed(5)
    tau = torch.randn(120, 90) * torch.rand(120, 1)
    tau[3] = 0.0
    opts = {"density": 0.1, "select": select}
    _, plain, _, before = _round_trip("sparse", opts, tau)
    _, enc, _, dense = _round_trip("sparse", {**opts, "rescale": "row"}, tau)
    assert enc.params["k"] == plain.params["k"] and torch.equal(dense != 0, before != 0)
    proj = (dense * tau).sum(1)
    norm = (tau * tau).sum(1)
    live = (dense != 0).any(1)  # a magnitude trim may keep nothing of a small row: nothing to scale there
    assert torch.allclose(proj[live] / norm[live], torch.ones(int(live.sum())), atol=1e-2)
    assert not dense[3].any()
    ratio = (dense[live] / tau[live]).where(dense[live] != 0, torch.nan)
    assert torch.allclose(ratio.nanmean(1), ratio.nan_to_num(-1).amax(1), rtol=1e-2)
    if select == "random":  # DARE's constant leaves rows far from their length, which is what row fixes
        spread = (before * tau).sum(1)[live] / norm[live]
        assert float(spread.max() - spread.min()) > 0.5


def test_sparse_row_rescale_leaves_a_row_without_kept_energy_at_zero():
    tau = torch.zeros(4, 64)
    tau[1, 0] = 1.0
    enc = make_codec("sparse", {"density": 0.1, "select": "random", "rescale": "row"}).encode(tau)
    dense = get_codec("sparse").decode(enc.data, (4, 64), enc.params, where="t")
    kept_first = bool(dense[1, 0] != 0)
    assert torch.isfinite(dense).all() and float(dense.abs().sum()) == (1.0 if kept_first else 0.0)


def test_lowrank_recovers_a_low_rank_update_and_falls_back_elsewhere():
    torch.manual_seed(0)
    lora_like = torch.randn(96, 3) @ torch.randn(3, 80) * 1e-3
    used, enc, form, dense = _round_trip("lowrank", {}, lora_like)
    assert used.name == "lowrank" and enc.params["rank"] == 3
    assert relative_error(lora_like, dense) < 0.01
    noise = torch.randn(64, 64)
    assert _round_trip("lowrank", {}, noise)[0].name == "bf16"
    assert _round_trip("lowrank", {"fallback": "int8"}, torch.randn(50))[0].name == "int8"


def test_auto_keeps_small_and_1d_tensors_exact_and_respects_the_budget():
    torch.manual_seed(0)
    codec = make_codec("auto", {"max_rel_error": "0.02"})
    assert codec.encode(torch.randn(300)).codec == "exact"
    lora_like = torch.randn(512, 4) @ torch.randn(4, 256)
    enc = codec.encode(lora_like)
    assert enc.codec == "lowrank" and enc.rel_error <= 0.02
    assert make_codec("auto", {"max_rel_error": 0}).encode(lora_like).codec == "exact"


def test_exact_refuses_a_bitmap_with_bits_set_past_its_end():
    t = torch.tensor([0.0, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -3.0])  # 9 entries: the 2nd byte has 7 pad bits
    enc = get_codec("exact").encode(t)
    segment = zstandard.ZstdDecompressor().decompress(enc.data)
    bitmap = bytearray(segment[:2])
    bitmap[1] |= 0x80  # a pad bit; the non-zero count is unchanged if we clear a real one
    bitmap[0] &= ~0x02
    bad = zstd_frame.compress(bytes(bitmap) + segment[2:])
    with pytest.raises(CorruptArtifact, match="bitmap that disagrees"):
        get_codec("exact").decode(bad, (9,), enc.params, where="w")


def test_an_arena_reuses_its_buffers_tensor_after_tensor_and_decodes_the_same(taus):
    """An install decodes into an arena; every value must equal a plain decode, with a bounded buffer count."""
    codec = get_codec("exact")
    encoded = [(tuple(t.shape), codec.encode(t), t) for t in list(taus.values())[:6]]
    arena = zstd_frame.Arena()
    for _ in range(2):
        for shape, enc, tau in encoded:
            with arena.active():
                a = codec.decode_form(enc.data, shape, enc.params, where="w")
                b = codec.decode_form(enc.data, shape, enc.params, where="w")
            assert torch.equal(a.to_dense(), tau) and torch.equal(b.to_dense(), tau)
            assert a.values.data_ptr() != b.values.data_ptr()  # both in use at once: two buffers
            del a, b
            arena.recycle()
            assert len(arena._free) == 2  # never more than were in use at once
    plain = codec.decode_form(encoded[0][1].data, encoded[0][0], encoded[0][1].params, where="w")
    assert plain.values.data_ptr() not in {b.data_ptr() for b in arena._free}  # no arena active: its own buffer


def test_threads_sharing_an_arena_keep_only_what_they_used_at_once(taus):
    codec = get_codec("exact")
    shape, tau = next((tuple(t.shape), t) for t in taus.values() if t.dim() == 2)
    enc = codec.encode(tau)
    arena = zstd_frame.Arena()
    ready = threading.Barrier(2)

    def worker() -> None:
        with arena.active():
            form = codec.decode_form(enc.data, shape, enc.params, where="w")
        ready.wait()  # both buffers are taken before either thread hands its back
        assert torch.equal(form.to_dense(), tau)
        del form
        arena.recycle()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kept = {b.data_ptr() for b in arena._free}
    assert len(kept) == 2
    with arena.active():  # a later tensor reuses one of them
        again = codec.decode_form(enc.data, shape, enc.params, where="w")
    assert again.values.data_ptr() in kept and len(arena._free) == 1
    assert torch.equal(again.to_dense(), tau)


def test_big_tensors_are_chunked_and_decode_in_parallel(monkeypatch):
    monkeypatch.setattr(zstd_frame, "CHUNK_BYTES", 4096)
    zstd_frame.set_decode_threads(3)
    try:
        torch.manual_seed(1)
        t = (torch.randn(100, 70).to(torch.bfloat16).float() - torch.randn(100, 70).to(torch.bfloat16).float())
        for name, opts in [("exact", {}), ("bf16", {}), ("int8", {}), ("sparse", {"density": 0.5}), ("lowrank", {"rank": 20})]:
            used, enc, _, dense = _round_trip(name, opts, t)
            assert len(enc.params["frames"]) > 1 and sum(enc.params["frames"]) == len(enc.data)
            if name == "exact":
                assert torch.equal(dense, t)
        enc = get_codec("exact").encode(t)
        bad = dict(enc.params, frames=enc.params["frames"][:-1])
        with pytest.raises(CorruptArtifact, match="lists 6 frames"):
            get_codec("exact").decode(enc.data, (100, 70), bad, where="w")
        with pytest.raises(CorruptArtifact, match="malformed zero-bitmap parameters"):
            get_codec("exact").decode(enc.data, (100, 70), dict(enc.params, chunk_elems="x"), where="w")
        enc = make_codec("int8", {"max_rel_error": 0}).encode(t)
        assert "zeros" not in enc.params
        with pytest.raises(CorruptArtifact, match="malformed frame table"):
            get_codec("int8").decode(enc.data, (100, 70), dict(enc.params, chunk_bytes="x"), where="w")
        enc = get_codec("int8").encode(t * (torch.rand(100, 70) < 0.05))
        assert enc.params["zeros"] == "bitmap" and len(enc.params["frames"]) > 1
        with pytest.raises(CorruptArtifact, match="malformed zero-bitmap"):
            get_codec("int8").decode(enc.data, (100, 70), dict(enc.params, nnz=[1]), where="w")
    finally:
        zstd_frame.set_decode_threads(2)


def test_each_chunk_runs_chunks_on_the_calling_thread_and_never_waits_for_a_queued_helper():
    """With every shared thread busy elsewhere (another tensor's frames), the caller does all
    its chunks itself and returns; it used to wait for threads that were never free."""
    import threading

    zstd_frame.set_decode_threads(2)
    release = threading.Event()
    busy = [zstd_frame._executor().submit(release.wait, 30) for _ in range(2)]
    try:
        ran: list[tuple[int, int]] = []
        done = threading.Event()

        def caller() -> None:
            zstd_frame.each_chunk(5, lambda i: ran.append((i, threading.get_ident())))
            done.set()

        worker = threading.Thread(target=caller)
        worker.start()
        assert done.wait(10), "each_chunk waited for shared threads that were busy elsewhere"
        worker.join()
        assert sorted(i for i, _ in ran) == [0, 1, 2, 3, 4]
        assert {tid for _, tid in ran} == {worker.ident}
    finally:
        release.set()
        for fut in busy:
            fut.result()


def test_each_chunk_raises_the_lowest_failing_chunk_and_starts_no_new_one():
    import threading

    zstd_frame.set_decode_threads(2)
    started: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        with lock:
            started.append(i)
        if i in (3, 5):
            raise ValueError(f"chunk {i} is bad")

    with pytest.raises(ValueError, match="chunk 3 is bad"):
        zstd_frame.each_chunk(200, one)
    # at most one chunk per thread (two shared, the caller) can be under way when the first fails
    assert len(started) < 3 + 3 + 3 and sorted(started) == list(range(len(started)))


def test_zstd_bomb_is_refused_without_inflating_it():
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(64 * 1024 * 1024))
    with pytest.raises(CorruptArtifact, match="decompresses to more than 4000 bytes"):
        get_codec("exact").decode(bomb, (1000,), {}, where="w")


def test_frame_declaring_a_larger_size_is_refused_before_decoding():
    frame = zstandard.ZstdCompressor().compress(bytes(8000))
    with pytest.raises(CorruptArtifact, match="decompresses to 8000 bytes, but the manifest declares 4000"):
        get_codec("exact").decode(frame, (1000,), {}, where="w")


@pytest.mark.parametrize("codec_name", sorted(CODECS))
def test_every_codec_refuses_a_wrong_declared_size_and_a_corrupt_frame(codec_name):
    torch.manual_seed(2)
    t = torch.randn(40, 30)
    opts = {"rank": 3} if codec_name == "lowrank" else {}
    enc = make_codec(codec_name, opts).encode(t)
    codec = get_codec(codec_name)
    with pytest.raises(CorruptArtifact, match="(decompresses to|declares|impossible|malformed delta)"):
        if codec_name == "sparse":  # its sizes follow from the kept count, not the shape
            codec.decode(enc.data, (40, 30), dict(enc.params, k=enc.params["k"] + 1), where="w")
        else:
            codec.decode(enc.data, (40, 31), enc.params, where="w")
    broken = bytearray(enc.data)
    broken[len(broken) // 2] ^= 0xFF
    broken[-3] ^= 0x55
    with pytest.raises(CorruptArtifact):
        codec.decode(bytes(broken), (40, 30), enc.params, where="w")
    with pytest.raises(CorruptArtifact):
        codec.decode(enc.data[: len(enc.data) // 2], (40, 30), enc.params, where="w")


def test_short_and_garbage_frames_are_refused():
    codec = get_codec("exact")
    short = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(100))
    with pytest.raises(CorruptArtifact, match="decompresses to 100 bytes"):
        codec.decode(short, (1000,), {}, where="w")
    with pytest.raises(CorruptArtifact):
        codec.decode(b"not a zstd frame at all", (10,), {}, where="w")


def test_malformed_codec_parameters_in_a_manifest_are_corruption_not_crashes():
    enc = make_codec("sparse", {"density": 0.5}).encode(torch.randn(20))
    for bad in ({"k": -1}, {"k": "7"}, {"values": "fp8"}, {"index": "delta", "index_bytes": 10**12}):
        with pytest.raises(CorruptArtifact):
            get_codec("sparse").decode(enc.data, (20,), {**enc.params, **bad}, where="w")
    with pytest.raises(CorruptArtifact, match="rank 9, impossible"):
        get_codec("lowrank").decode(b"", (4, 4), {"rank": 9}, where="w")
    with pytest.raises(CorruptArtifact, match="int8 parameters"):
        get_codec("int8").decode(b"", (4, 4), {"group": 0, "scales": "fp16"}, where="w")


def test_truncated_and_tampered_artifacts_fail_clearly(family_bf16, tmp_path):
    res = build_skill(
        family_bf16.pre, finetuned=family_bf16.science, output=tmp_path / "s.tvskill",
        name="science", version="1.0.0", codec="int8",
    )  # fmt: skip
    data = res.path.read_bytes()
    cut = tmp_path / "cut.tvskill"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(CorruptArtifact):
        Artifact(cut)
    flipped = tmp_path / "flip.tvskill"
    flipped.write_bytes(data[:-10] + bytes([data[-10] ^ 1]) + data[-9:])
    with Artifact(flipped) as art, pytest.raises(CorruptArtifact, match="is corrupt: its data hashes"):
        for name in art.manifest.tensors:
            art.decode(name)
    with Artifact(flipped) as art, pytest.raises(CorruptArtifact, match="is corrupt: its data hashes"):
        for name in art.manifest.tensors:
            art.decode_form(name, lazy=True)  # the digest is checked when the blob is read, not at the merge


def test_unknown_codec_names_the_known_ones():
    with pytest.raises(InvalidManifest, match="unknown codec `magic`; this tvreg knows bf16, exact, int4, int8, lowrank, sign, sparse"):
        get_codec("magic")
    with pytest.raises(InvalidManifest, match="unknown codec `auto`"):
        get_codec("auto")


def test_codec_parameters_are_validated_with_one_sentence():
    with pytest.raises(InvalidCodecOption, match="codec `sparse` has no parameter `rank`; it takes density, group, index, rescale, seed, select, values"):
        make_codec("sparse", {"rank": 3})
    with pytest.raises(InvalidCodecOption, match="parameter `density` must be > 0, not '0'"):
        make_codec("sparse", {"density": "0"})
    with pytest.raises(InvalidCodecOption, match="must be one of fp16, fp32"):
        make_codec("int8", {"scales": "fp8"})
    with pytest.raises(InvalidCodecOption, match="unknown codec `zip`"):
        make_codec("zip")
    assert make_codec("sparse", {"density": "0.05"}).describe() == "sparse(density=0.05)"


def test_manifest_refuses_a_malformed_rel_error(family_bf16, tmp_path):
    from tvreg._format.manifest import Manifest

    res = build_skill(
        family_bf16.pre, finetuned=family_bf16.science, output=tmp_path / "s.tvskill",
        name="science", version="1.0.0", codec="bf16",
    )  # fmt: skip
    data = json.loads(res.manifest.to_json())
    name = next(iter(data["tensors"]))
    for bad in (-1, "small", True):
        data["tensors"][name]["rel_error"] = bad
        with pytest.raises(InvalidManifest, match="invalid `rel_error`"):
            Manifest.from_json(json.dumps(data), where="x")


# -- properties over odd shapes, empty and 0-d tensors, zero τ and every input dtype -----------------

_shapes = st.one_of(
    st.just(()),
    st.lists(st.integers(0, 7), min_size=1, max_size=3).map(tuple),
    st.tuples(st.integers(1, 40), st.integers(1, 40)),
)


@st.composite
def _taus(draw):
    shape = draw(_shapes)
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from([0.0, 1e-6, 1e-3, 1.0, 300.0]))
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g).to(dtype)
    tuned = (base.float() + scale * torch.randn(shape, generator=g)).to(dtype)
    return tuned.float() - base.float()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tau=_taus(), pick=st.integers(0, len(LOSSY)))
def test_every_codec_round_trips_any_shape_and_dtype(tau, pick):
    codec_name, opts = ([("exact", {})] + LOSSY)[pick]
    used, enc, form, dense = _round_trip(codec_name, opts, tau)
    assert dense.shape == tau.shape and dense.dtype == torch.float32
    assert form.shape == tuple(tau.shape)
    err = relative_error(tau, dense)
    if used.lossless:
        assert torch.equal(dense, tau)
    if not bool(tau.any()):
        assert not bool(dense.any())
    if used.name == "bf16":
        assert err <= 2**-8
    if used.name == "int8":
        assert err <= 0.5 / 127 * (tau.numel() ** 0.5) + 1e-12
    if used.name == "int4":
        assert err <= 0.5 / 7 * (tau.numel() ** 0.5) * (1 + 2**-7) + 1e-12
    if used.name == "sign":
        assert err <= 1.0 + 1e-6  # mean |τ| is the L2-optimal scale: never worse than τ̂ = 0
    if enc.rel_error is not None:
        assert abs(enc.rel_error - err) <= 1e-9
    if codec_name == "auto":
        assert err <= opts["max_rel_error"]
