"""The strict safetensors reader refuses hostile files (docs/reliability.md rows 8-10) and round-trips real ones."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from tvreg._format.safetensors_io import DTYPE_NAMES, SafetensorsFile, SafetensorsWriter
from tvreg.errors import CorruptArtifact, CorruptCheckpoint


def _raw(path, header: str | bytes, data: bytes = b"") -> None:
    head = header.encode() if isinstance(header, str) else header
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)


@pytest.fixture
def tensors():
    torch.manual_seed(0)
    return {
        "w": torch.randn(5, 7).to(torch.bfloat16),
        "b": torch.randn(7, dtype=torch.float16),
        "ids": torch.arange(6, dtype=torch.int64),
        "empty": torch.zeros(0, 3),
    }


def test_reads_what_the_reference_library_writes(tmp_path, tensors):
    save_file(tensors, tmp_path / "m.safetensors", metadata={"format": "pt"})
    with SafetensorsFile(tmp_path / "m.safetensors") as f:
        assert f.metadata == {"format": "pt"}
        for name, t in tensors.items():
            got = f.read(name)
            assert got.dtype == t.dtype and torch.equal(got, t)


def test_streaming_writer_output_loads_in_the_reference_library(tmp_path, tensors):
    entries = [(n, DTYPE_NAMES[t.dtype], tuple(t.shape)) for n, t in tensors.items()]
    with open(tmp_path / "w.safetensors", "wb") as fo:
        writer = SafetensorsWriter(fo, entries, {"format": "pt"})
        for name, t in tensors.items():
            writer.write(name, t)
        writer.finish()
    loaded = load_file(tmp_path / "w.safetensors")
    assert set(loaded) == set(tensors)
    assert all(torch.equal(loaded[n], t) for n, t in tensors.items())
    assert (tmp_path / "w.safetensors").read_bytes()[8:].index(b"{") == 0


def test_writer_refuses_wrong_order_and_missing_tensors(tmp_path, tensors):
    with open(tmp_path / "w.safetensors", "wb") as fo:
        writer = SafetensorsWriter(fo, [("a", "F32", (2,)), ("b", "F32", (2,))])
        with pytest.raises(ValueError, match="expected tensor `a`"):
            writer.write("b", torch.zeros(2))
        writer.write("a", torch.zeros(2))
        with pytest.raises(ValueError, match="1 of 2"):
            writer.finish()


HOSTILE = [
    ("header longer than file", b"\xff" * 8, "header claims"),
    ("header over 100 MB", struct.pack("<Q", 200 * 1024 * 1024) + b"{}", "over the"),
    ("not json", struct.pack("<Q", 3) + b"{{{", "not valid JSON"),
    ("shorter than 8 bytes", b"abc", "shorter than the 8-byte"),
]


@pytest.mark.parametrize(("case", "raw", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_refuses_bad_header_bytes(tmp_path, case, raw, message):
    (tmp_path / "x.safetensors").write_bytes(raw)
    with pytest.raises(CorruptCheckpoint, match=message) as exc:
        SafetensorsFile(tmp_path / "x.safetensors")
    assert "x.safetensors" in str(exc.value)


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


LAYOUTS = [
    ("overlap", {"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(4, 12))}, 12, "overlaps"),
    ("gap", {"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(12, 20))}, 20, "gap"),
    ("alias", {"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(0, 8))}, 8, "overlaps"),
    ("trailing bytes", {"a": _entry()}, 12, "trailing"),
    ("truncated data", {"a": _entry()}, 4, "truncated"),
    ("span != shape x dtype", {"a": _entry(shape=(3,))}, 8, "12 bytes"),
    ("overflowing shape", {"a": _entry(shape=(2, 2**64 - 2))}, 8, "span"),
    ("negative offset", {"a": _entry(offsets=(-8, 0))}, 8, "invalid data_offsets"),
    ("unknown dtype", {"a": _entry(dtype="F128")}, 8, "unknown dtype"),
    ("bad metadata", {"__metadata__": {"k": 1}, "a": _entry()}, 8, "__metadata__"),
]


@pytest.mark.parametrize(("case", "header", "data_len", "message"), LAYOUTS, ids=[x[0] for x in LAYOUTS])
def test_refuses_bad_layouts_naming_the_problem(tmp_path, case, header, data_len, message):
    _raw(tmp_path / "x.safetensors", json.dumps(header), bytes(data_len))
    with pytest.raises(CorruptCheckpoint, match=message):
        SafetensorsFile(tmp_path / "x.safetensors")


def test_refuses_duplicate_tensor_names(tmp_path):
    header = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}'
    _raw(tmp_path / "x.safetensors", header, bytes(16))
    with pytest.raises(CorruptCheckpoint, match="duplicate key `a`"):
        SafetensorsFile(tmp_path / "x.safetensors")


def test_error_family_is_chosen_by_the_caller(tmp_path):
    (tmp_path / "x.tvskill").write_bytes(b"\x00" * 4)
    with pytest.raises(CorruptArtifact):
        SafetensorsFile(tmp_path / "x.tvskill", error=CorruptArtifact)
