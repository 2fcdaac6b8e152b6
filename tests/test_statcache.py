"""Remembered digests: an unchanged file is not read again; any change, even with its mtime put back, is."""

from __future__ import annotations

import os
import time

import pytest

from tvreg._format import artifact, statcache
from tvreg._format.artifact import file_digest
from tvreg._registry.cache import file_sha256


@pytest.fixture
def settled(monkeypatch):
    """Files count as settled at once (the racy window is tested on its own)."""
    monkeypatch.setattr(statcache, "SETTLE_NS", 0)


def _no_reading(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the file was read again")

    monkeypatch.setattr(artifact, "file_sha256", fail)


def test_an_unchanged_file_is_not_read_again(tmp_path, monkeypatch, settled):
    path = tmp_path / "a.tvskill"
    path.write_bytes(b"x" * 10000)
    first = file_digest(path)
    assert first == file_sha256(path)
    _no_reading(monkeypatch)
    assert file_digest(path) == first
    with pytest.raises(AssertionError, match="read again"):
        file_digest(path, fresh=True)


def test_a_rewrite_with_its_mtime_put_back_is_read_again(tmp_path, monkeypatch, settled):
    path = tmp_path / "a.tvskill"
    path.write_bytes(b"x" * 10000)
    st = os.stat(path)
    first = file_digest(path)
    time.sleep(0.05)  # past the coarse timestamp tick (the racy case is the test below)
    with open(path, "r+b") as f:  # same size, same mtime afterwards: only ctime tells
        f.write(b"y")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_digest(path) == file_sha256(path) != first


def test_a_file_replaced_by_rename_is_read_again(tmp_path, settled):
    path, other = tmp_path / "a.tvskill", tmp_path / "b.tvskill"
    path.write_bytes(b"x" * 10000)
    other.write_bytes(b"z" * 10000)
    file_digest(path)
    os.replace(other, path)
    assert file_digest(path) == file_sha256(path)


def test_a_file_changed_just_before_it_was_read_is_not_remembered(tmp_path, monkeypatch):
    """Timestamps tick coarsely: a write in the same tick after the read would keep the key."""
    monkeypatch.setattr(statcache, "SETTLE_NS", 3600 * 10**9)
    path = tmp_path / "a.tvskill"
    path.write_bytes(b"x" * 10000)
    file_digest(path)
    _no_reading(monkeypatch)
    with pytest.raises(AssertionError, match="read again"):
        file_digest(path)


def test_a_damaged_cache_entry_is_a_miss(tmp_path, settled):
    path = tmp_path / "a.tvskill"
    path.write_bytes(b"x" * 10000)
    file_digest(path)
    for entry in (statcache.cache_dir() / "digests").iterdir():
        entry.write_text('{"key": ')
    assert file_digest(path) == file_sha256(path)
