"""An install's writes are durable before its swap, made beside the merge, and no error of theirs is lost.

WriteBehind syncs the shards while they are written; the store's copies of the artifacts are
made on a thread of their own while the merge runs, and both are complete before the swap.
"""

from __future__ import annotations

import errno
import os

import pytest
from helpers import tree_digest

from tvreg._env import materialise
from tvreg._env.operations import install
from tvreg._env.store import artifact_path
from tvreg._format.fsutil import WriteBehind
from tvreg.errors import DiskFull


class SyncLog:
    """Which inodes the real fsync/fdatasync were called on, in order (the calls still happen)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, int]] = []
        real_fsync, real_datasync = os.fsync, os.fdatasync

        def fsync(fd: int) -> None:
            self.calls.append(("fsync", os.fstat(fd).st_ino))
            real_fsync(fd)

        def fdatasync(fd: int) -> None:
            self.calls.append(("fdatasync", os.fstat(fd).st_ino))
            real_datasync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "fdatasync", fdatasync)

    def of(self, path) -> list[str]:
        ino = os.stat(path).st_ino
        return [kind for kind, i in self.calls if i == ino]


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_each_file_is_synced_as_it_grows_and_at_its_end(tmp_path, monkeypatch):
    log = SyncLog(monkeypatch)
    before = _open_fds()
    paths = [tmp_path / "a.bin", tmp_path / "b.bin"]
    block = os.urandom(1 << 16)
    with WriteBehind(every=1 << 18) as behind:
        for path in paths:
            with open(path, "wb") as f:
                for _ in range(16):  # 1 MiB: at least one sync on the way
                    f.write(block)
                    behind.wrote(f, len(block))
                behind.finished(f)
        behind.wait()
        for path in paths:
            kinds = log.of(path)
            assert kinds[-1] == "fsync", kinds
            assert "fdatasync" in kinds, kinds
    for path in paths:
        assert path.read_bytes() == block * 16
    assert _open_fds() == before


def test_an_error_of_a_sync_on_the_way_is_raised_though_the_last_fsync_succeeds(tmp_path, monkeypatch):
    real = os.fdatasync
    failed = []

    def fdatasync(fd: int) -> None:
        if not failed:
            failed.append(fd)
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    before = _open_fds()
    with pytest.raises(OSError) as caught:
        with WriteBehind(every=1 << 10) as behind, open(tmp_path / "a.bin", "wb") as f:
            for _ in range(4):
                f.write(b"x" * 2048)
                behind.wrote(f, 2048)
            behind.finished(f)
    assert caught.value.errno == errno.EIO and failed
    assert _open_fds() == before


def test_a_file_abandoned_by_an_error_leaves_no_descriptor_open(tmp_path):
    before = _open_fds()
    with pytest.raises(RuntimeError, match="stop"):
        with WriteBehind(every=1 << 10) as behind, open(tmp_path / "a.bin", "wb") as f:
            f.write(b"x" * 4096)
            behind.wrote(f, 4096)
            raise RuntimeError("stop")
    assert _open_fds() == before


def test_a_file_abandoned_midway_is_not_mistaken_for_the_next_one_with_its_descriptor_number(tmp_path, monkeypatch):
    log = SyncLog(monkeypatch)
    with WriteBehind(every=1 << 30) as behind:
        first = open(tmp_path / "a.bin", "wb")
        first.write(b"a" * 4096)
        behind.wrote(first, 4096)
        number = first.fileno()
        first.close()  # given up without finished(): its number is free again
        with open(tmp_path / "b.bin", "wb") as second:
            assert second.fileno() == number
            second.write(b"b" * 4096)
            behind.wrote(second, 4096)
            behind.finished(second)
        behind.wait()
        assert log.of(tmp_path / "b.bin") == ["fsync"]
        assert log.of(tmp_path / "a.bin") == []


@pytest.fixture
def setup(science_env):
    return science_env


def test_every_shard_of_an_install_is_fsynced_before_the_swap(setup, monkeypatch):
    model, skill = setup
    log = SyncLog(monkeypatch)
    seen = {}
    real_swap = materialise.swap_directories

    def swap(current, staged):
        shards = sorted(staged.glob("*.safetensors"))
        seen.update({p.name: log.of(p) for p in shards})
        real_swap(current, staged)

    monkeypatch.setattr(materialise, "swap_directories", swap)
    install([skill], into=model)
    assert len(seen) > 1, "the test model should be sharded"
    assert all(kinds and kinds[-1] == "fsync" for kinds in seen.values()), seen


def test_a_full_disk_at_a_shards_last_fsync_names_it_and_changes_nothing(setup, monkeypatch):
    model, skill = setup
    install([skill], into=model, method="task_arithmetic")
    before = tree_digest(model)
    real = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(DiskFull, match="no space left on the device while writing"):
        install([skill], into=model, method="ties", method_params={"density": 0.5})
    assert tree_digest(model) == before
    assert not list(model.parent.glob(f".{model.name}.tvreg-*.staging"))


def test_the_store_copies_are_complete_at_the_swap_and_their_failure_changes_nothing(setup, monkeypatch):
    model, skill = setup
    from tvreg._format.fsutil import file_sha256

    digest = file_sha256(skill)
    at_swap = []
    real_swap = materialise.swap_directories

    def swap(current, staged):
        stored = artifact_path(digest)
        at_swap.append(stored.is_file() and file_sha256(stored) == digest)
        real_swap(current, staged)

    monkeypatch.setattr(materialise, "swap_directories", swap)
    install([skill], into=model)
    assert at_swap == [True]

    before = tree_digest(model)
    real_keep = materialise.keep_artifact

    def full(src, digest):
        raise DiskFull(f"no space left on the device while writing `{src}`.")

    monkeypatch.setattr(materialise, "keep_artifact", full)
    with pytest.raises(DiskFull):
        install([skill], into=model, method="ties", method_params={"density": 0.5})
    assert tree_digest(model) == before
    assert not list(model.parent.glob(f".{model.name}.tvreg-*.staging"))
    monkeypatch.setattr(materialise, "keep_artifact", real_keep)
