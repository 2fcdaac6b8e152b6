"""A large build writes its body in place behind room left for the header, synced while it grows.

The room is padded with spaces after the JSON (safetensors allows it), so any reader sees the
same artifact; a header that outgrows the room is written the old way, header then a copy of
the body. Small builds keep the compact layout, so their bytes are what they were.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from test_install_durability import SyncLog

from tvreg._build import build as build_mod
from tvreg._build.build import build_skill
from tvreg._format import artifact as artifact_mod
from tvreg._format.artifact import MANIFEST_KEY, Artifact
from tvreg._format.fsutil import file_sha256


def _build(family, out, monkeypatch, *, reserve_from: int):
    monkeypatch.setattr(build_mod, "RESERVE_FROM_BYTES", reserve_from)
    return build_skill(family.pre, finetuned=family.science, output=out, name="science", version="1.0.0",
                       dataset_size=1000)  # fmt: skip


def _header_bytes(path) -> tuple[int, bytes]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return n, f.read(n)


def test_a_large_build_leaves_room_for_its_header_and_reads_as_the_compact_one(family, tmp_path, monkeypatch):
    compact = _build(family, tmp_path / "out" / "compact.tvskill", monkeypatch, reserve_from=1 << 62)
    roomy = _build(family, tmp_path / "out" / "roomy.tvskill", monkeypatch, reserve_from=0)
    n_compact, raw_compact = _header_bytes(compact.path)
    n, raw = _header_bytes(roomy.path)
    assert (8 + n) % 4096 == 0 and n > n_compact
    assert raw.rstrip(b" ") == raw_compact.rstrip(b" ")  # the same JSON, then spaces
    assert roomy.path.stat().st_size - (8 + n) == compact.path.stat().st_size - (8 + n_compact)
    assert artifact_mod.file_digest(roomy.path) == file_sha256(roomy.path)  # the digest the writer remembered
    assert roomy.sketch.artifact_digest == file_sha256(roomy.path)
    with Artifact(compact.path) as a, Artifact(roomy.path) as b:
        assert a.manifest.tensors == b.manifest.tensors
        for name in a.manifest.tensors:
            assert torch.equal(a.decode(name), b.decode(name))
    with safe_open(roomy.path, framework="pt") as f:  # the reference reader accepts the padding
        assert json.loads(f.metadata()[MANIFEST_KEY])["tensors"].keys() == compact.manifest.tensors.keys()
        assert set(f.keys()) == set(compact.manifest.tensors)


def test_the_body_is_synced_while_it_is_written_and_the_file_before_its_rename(family, tmp_path, monkeypatch):
    log = SyncLog(monkeypatch)
    renamed: list[list[str]] = []
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(".tvskill"):
            renamed.append(log.of(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(artifact_mod.WriteBehind.__init__, "__defaults__", (1 << 12,))  # sync every 4 KiB
    out = _build(family, tmp_path / "out" / "s.tvskill", monkeypatch, reserve_from=0).path
    assert len(renamed) == 1
    kinds = renamed[0]
    assert "fdatasync" in kinds and kinds[-1] == "fsync", kinds
    assert out.is_file() and not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_a_header_that_outgrows_its_room_is_written_before_a_copy_of_the_body(family, tmp_path, monkeypatch):
    compact = _build(family, tmp_path / "out" / "compact.tvskill", monkeypatch, reserve_from=1 << 62)
    monkeypatch.setattr(build_mod, "header_reserve", lambda manifest, tensors: 4096 - 8)
    small = _build(family, tmp_path / "out" / "small.tvskill", monkeypatch, reserve_from=0)
    assert _header_bytes(compact.path)[0] > 4096 - 8  # the room was too small
    assert small.path.read_bytes() == compact.path.read_bytes()
    assert file_sha256(small.path) == small.sketch.artifact_digest
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["compact.tvskill", "small.tvskill"]


def test_a_build_that_fails_midway_leaves_no_file(family, tmp_path, monkeypatch):
    real = build_mod.SketchBuilder.add
    seen = []

    def add(self, name, tau):
        seen.append(name)
        if len(seen) == 3:
            raise OSError(5, "Input/output error")
        return real(self, name, tau)

    monkeypatch.setattr(build_mod.SketchBuilder, "add", add)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError):
        _build(family, tmp_path / "out" / "x.tvskill", monkeypatch, reserve_from=0)
    assert list((tmp_path / "out").iterdir()) == []
    assert set(os.listdir("/proc/self/fd")) <= before
