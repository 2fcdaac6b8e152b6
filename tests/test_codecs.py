"""The exact codec is lossless on real task vectors, and decoding is bounded by the declared size."""

from __future__ import annotations

import pytest
import torch
import zstandard
from tiny_models import read_state_dict

from tvreg.codecs import get_codec
from tvreg.errors import CorruptArtifact, InvalidManifest


@pytest.fixture(scope="module")
def taus(family_bf16):
    pre, ft = read_state_dict(family_bf16.pre), read_state_dict(family_bf16.science)
    return {n: ft[n].float() - pre[n].float() for n in pre}


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


def test_zstd_bomb_is_refused_without_inflating_it():
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(64 * 1024 * 1024))
    with pytest.raises(CorruptArtifact, match="decompresses to more than 4000 bytes"):
        get_codec("exact").decode(bomb, (1000,), {}, where="w")


def test_frame_declaring_a_larger_size_is_refused_before_decoding():
    frame = zstandard.ZstdCompressor().compress(bytes(8000))
    with pytest.raises(CorruptArtifact, match="decompresses to 8000 bytes, but the manifest declares 4000"):
        get_codec("exact").decode(frame, (1000,), {}, where="w")


def test_short_and_garbage_frames_are_refused():
    codec = get_codec("exact")
    short = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(100))
    with pytest.raises(CorruptArtifact, match="decompresses to 100 bytes"):
        codec.decode(short, (1000,), {}, where="w")
    with pytest.raises(CorruptArtifact):
        codec.decode(b"not a zstd frame at all", (10,), {}, where="w")


def test_unknown_codec_names_the_known_ones():
    with pytest.raises(InvalidManifest, match="unknown codec `magic`; this tvreg knows exact"):
        get_codec("magic")
