"""Ranged multi-connection downloads against a real registry on loopback.

tvreg/ranged_fetch.py: a large artifact comes in pieces over several connections,
written with ``pwrite`` into a ``.sparse`` file and hashed in order; docs/reliability.md
rows 17 and 19 (kill -9 mid-download, a server that ignores ``Range`` or cuts a body
short) hold for it as for one stream. The piece size and threshold are lowered so the
tiny test artifact (tens of KiB) splits into several pieces.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap

import httpx
import pytest
from client_helpers import FaultProxy, build_artifacts, cli, find_blob, flip_byte, login, write_project

import tvreg._registry.ranged_fetch as ranged
from tvreg._registry.cache import BlobCache
from tvreg._registry.fetch import fetch_skill
from tvreg._util.progress import Progress
from tvreg.errors import ConfigError, DownloadError


@pytest.fixture(scope="session")
def artifacts(family, tmp_path_factory):
    return build_artifacts(family, tmp_path_factory.mktemp("ranged-artifacts"))


class Notes(Progress):
    def __init__(self):
        self.notes: list[str] = []

    def note(self, message):
        self.notes.append(message)


@pytest.fixture
def published(registry, artifacts, tmp_path):
    """alice/science@1.0.0 on the registry; returns (digest, bytes)."""
    login(registry, "alice")
    project = write_project(
        tmp_path / "p", name="alice/science", version="1.0.0", artifact=str(artifacts["science"])
    )
    assert cli("publish", project).exit_code == 0
    data = artifacts["science"].read_bytes()
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def _piece_size(data: bytes) -> int:
    return max(4096, len(data) // 5 + 1)


@pytest.fixture
def small_pieces(monkeypatch, published):
    """Pieces of a fifth of the artifact, from any size up."""
    piece = _piece_size(published[1])
    monkeypatch.setattr(ranged, "PIECE", piece)
    monkeypatch.setattr(ranged, "THRESHOLD", 0)
    monkeypatch.delenv(ranged.CONNECTIONS_ENV, raising=False)
    return piece


def _ranges(size: int, piece: int) -> list[str]:
    return [f"bytes={s}-{min(s + piece, size) - 1}" for s in range(0, size, piece)]


def _leftovers(digest: str) -> list[str]:
    hexd = digest.split(":")[1]
    shard = BlobCache().root / hexd[:2]
    return sorted(p.name for p in shard.glob(f".{hexd}.*") if not p.name.endswith(".lock"))


def test_a_large_artifact_arrives_in_ranged_pieces_with_the_same_bytes(registry, published, small_pieces):
    digest, data = published
    with FaultProxy(registry.url) as proxy:
        path = fetch_skill("alice/science", base_fingerprint=None, registry=proxy.url)
    assert path.read_bytes() == data
    assert sorted(proxy.artifact_requests) == sorted((r, 206) for r in _ranges(len(data), small_pieces))
    assert len(proxy.artifact_requests) >= 4
    assert _leftovers(digest) == []


def test_a_ranged_download_is_counted_once_whatever_its_pieces_and_retries(registry, published, small_pieces):
    """Pieces far below the 1 MiB header-read size, one cut short and asked for again: one download each time."""
    digest, data = published
    assert small_pieces < 1 << 20
    registry.stop()
    registry.start(env={"TVREG_DOWNLOAD_FLUSH": "3600"})  # counts reach the database at the clean stop
    with FaultProxy(registry.url, truncate_at=1000, truncate_times=1) as proxy:
        assert fetch_skill("alice/science", base_fingerprint=None, registry=proxy.url).read_bytes() == data
    shutil.rmtree(BlobCache().root)
    assert fetch_skill("alice/science", base_fingerprint=None).read_bytes() == data
    registry.stop()
    assert registry.sql("SELECT downloads FROM versions") == [(2,)]
    marks = [h.get("X-Tvreg-Download") for _, path, h in proxy.requests if path.endswith("/artifact")]
    assert marks.count("first") == 1 and len(marks) == len(_ranges(len(data), small_pieces)) + 1


def test_a_corrupt_piece_is_refused_and_nothing_is_kept(registry, published, small_pieces):
    digest, data = published
    flip_byte(find_blob(registry.data_dir, digest), offset=small_pieces * 2 + 10)  # inside the third piece
    with pytest.raises(DownloadError) as exc:
        fetch_skill("alice/science", base_fingerprint=None)
    found = exc.value.found
    assert exc.value.expected == digest and found and found != digest
    assert exc.value.message == (
        f"the bytes of alice/science@1.0.0 hash to {found}, but the registry announced {digest}."
    )
    assert not BlobCache().path(digest).exists()
    assert _leftovers(digest) == []


def test_a_server_that_ignores_range_gets_one_stream(registry, published, small_pieces):
    digest, data = published
    notes = Notes()
    with FaultProxy(registry.url, ignore_range=True) as proxy:
        path = fetch_skill("alice/science", base_fingerprint=None, registry=proxy.url, progress=notes)
    assert path.read_bytes() == data
    # The first piece's answer (200) stops the ranged download before any other piece is asked for.
    assert proxy.artifact_requests == [(f"bytes=0-{small_pieces - 1}", 200), (None, 200)]
    assert notes.notes == ["the registry ignores ranged requests; downloading alice/science@1.0.0 in one stream."]
    assert _leftovers(digest) == []


def test_a_piece_cut_short_is_asked_for_again_from_where_it_stopped(registry, published, small_pieces):
    digest, data = published
    cut = 1000
    with FaultProxy(registry.url, truncate_at=cut, truncate_times=1) as proxy:
        path = fetch_skill("alice/science", base_fingerprint=None, registry=proxy.url)
    assert path.read_bytes() == data
    pieces = _ranges(len(data), small_pieces)
    asked = [r for r, _ in proxy.artifact_requests]
    assert len(asked) == len(pieces) + 1 and set(pieces) <= set(asked)
    (retry,) = [r for r in asked if r not in pieces]
    start, end = (int(x) for x in retry.removeprefix("bytes=").split("-"))
    assert start % small_pieces == cut and end + 1 in (min(start - cut + small_pieces, len(data)),)


def test_a_piece_cut_short_every_time_fails_and_keeps_the_completed_pieces(registry, published, small_pieces):
    digest, data = published
    with FaultProxy(registry.url, truncate_at=1000) as proxy, pytest.raises(DownloadError) as exc:
        fetch_skill("alice/science", base_fingerprint=None, registry=proxy.url)
    assert "kept cutting the piece of alice/science@1.0.0" in exc.value.message
    assert exc.value.hints == ["run the command again: the download resumes from its completed pieces"]
    assert len(proxy.artifact_requests) >= ranged.RETRIES + 1
    assert not BlobCache().path(digest).exists()
    notes = Notes()
    with FaultProxy(registry.url) as proxy:
        path = fetch_skill("alice/science", base_fingerprint=None, registry=proxy.url, progress=notes)
    assert path.read_bytes() == data and _leftovers(digest) == []


_KILLED = """
import tvreg._registry.ranged_fetch as ranged
ranged.PIECE, ranged.THRESHOLD = {piece}, 0
from tvreg._registry.fetch import fetch_skill
fetch_skill("alice/science", base_fingerprint=None)
"""


def _kill_mid_download(piece: int) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TVREG_FAULT="download:piece", TVREG_DOWNLOAD_CONNECTIONS="2")
    script = textwrap.dedent(_KILLED.format(piece=piece))
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)


def test_a_download_killed_mid_way_resumes_from_its_completed_pieces(registry, published, small_pieces):
    digest, data = published
    proc = _kill_mid_download(small_pieces)
    assert proc.returncode == -9, proc.stderr
    assert not BlobCache().path(digest).exists()
    hexd = digest.split(":")[1]
    assert sorted(n.rsplit(".", 1)[-1] for n in _leftovers(digest)) == ["pieces", "sparse"]
    (journal,) = (BlobCache().root / hexd[:2]).glob(f".{hexd}.*.sparse.pieces")
    kept = [f"bytes={s}-{int(e) - 1}" for s, e in (line.split() for line in journal.read_text().splitlines())]
    pieces = _ranges(len(data), small_pieces)
    assert 1 <= len(kept) < len(pieces) and set(kept) <= set(pieces)  # killed after its first piece
    notes = Notes()
    with FaultProxy(registry.url) as proxy:
        path = fetch_skill("alice/science", base_fingerprint=None, registry=proxy.url, progress=notes)
    assert path.read_bytes() == data
    assert sorted(r for r, _ in proxy.artifact_requests) == sorted(set(pieces) - set(kept))
    assert len(notes.notes) == 1 and notes.notes[0].startswith(
        f"resuming the download of alice/science@1.0.0: {len(kept)} of {len(pieces)} pieces"
    )
    assert _leftovers(digest) == []


def test_a_sparse_file_without_its_journal_is_never_taken_as_valid(registry, published, small_pieces):
    digest, data = published
    assert _kill_mid_download(small_pieces).returncode == -9
    hexd = digest.split(":")[1]
    (journal,) = (BlobCache().root / hexd[:2]).glob(f".{hexd}.*.sparse.pieces")
    journal.unlink()  # as a kill between the journal's and the file's renames would leave it
    (sparse,) = (BlobCache().root / hexd[:2]).glob(f".{hexd}.*.sparse")
    assert sparse.stat().st_size == len(data)  # full length, holes and all
    notes = Notes()
    with FaultProxy(registry.url) as proxy:
        path = fetch_skill("alice/science", base_fingerprint=None, registry=proxy.url, progress=notes)
    assert path.read_bytes() == data
    assert sorted(r for r, _ in proxy.artifact_requests) == sorted(_ranges(len(data), small_pieces))
    assert notes.notes == [
        "an interrupted download of alice/science@1.0.0 left pieces with no record of which were complete; "
        "downloading it from the start."
    ]
    assert _leftovers(digest) == []


def test_the_single_stream_path_ignores_a_killed_ranged_download(registry, published, small_pieces, monkeypatch):
    """One connection never reads a ``.sparse`` file as if its length were a valid prefix."""
    digest, data = published
    assert _kill_mid_download(small_pieces).returncode == -9
    monkeypatch.setenv(ranged.CONNECTIONS_ENV, "1")
    notes = Notes()
    with FaultProxy(registry.url) as proxy:
        path = fetch_skill("alice/science", base_fingerprint=None, registry=proxy.url, progress=notes)
    assert path.read_bytes() == data
    assert proxy.artifact_requests == [(None, 200)] and notes.notes == []
    report = BlobCache().prune()
    assert _leftovers(digest) == [] and any(p.name.endswith(".sparse") for p in report.removed)


def test_small_artifacts_and_one_connection_use_one_stream(registry, published, monkeypatch):
    digest, data = published
    monkeypatch.setattr(ranged, "PIECE", _piece_size(data))  # the default threshold (64 MiB) stays
    with FaultProxy(registry.url) as proxy:
        assert fetch_skill("alice/science", base_fingerprint=None, registry=proxy.url).read_bytes() == data
    assert proxy.artifact_requests == [(None, 200)]


@pytest.mark.parametrize("value", ["0", "many", "65"])
def test_a_bad_connection_count_is_refused_in_one_sentence(registry, published, small_pieces, monkeypatch, value):
    monkeypatch.setenv(ranged.CONNECTIONS_ENV, value)
    with pytest.raises(ConfigError) as exc:
        fetch_skill("alice/science", base_fingerprint=None)
    assert exc.value.message == f"TVREG_DOWNLOAD_CONNECTIONS={value!r} is not a number of connections from 1 to 64."
    assert exc.value.hints[0].startswith("unset TVREG_DOWNLOAD_CONNECTIONS")


@pytest.mark.parametrize(
    ("mark", "ranges", "counted"),
    [
        ("first", ["bytes=0-99"], 1),  # a piece below the header-read size that begins a download
        ("more", ["bytes=0-99", "bytes=0-"], 0),  # a retry of piece 0, and even the whole file: never counted
        (None, ["bytes=0-99"], 0),  # an old client's short read from byte 0: a header read
        (None, ["bytes=0-"], 1),  # an old client's whole download
        ("first", ["bytes=100-199"], 0),  # `first` counts only from byte 0
    ],
)
def test_the_registry_counts_by_the_download_mark(registry, published, mark, ranges, counted):
    """The server's side of the rule, request by request (the client test above sends only what it sends)."""
    registry.stop()
    registry.start(env={"TVREG_DOWNLOAD_FLUSH": "3600"})  # counts reach the database at the clean stop
    headers = {"X-Tvreg-Download": mark} if mark else {}
    with httpx.Client(base_url=registry.url) as c:  # a public skill: no token needed
        for r in ranges:
            answer = c.get("/api/v1/skills/alice/science/versions/1.0.0/artifact", headers={**headers, "Range": r})
            assert answer.status_code == 206, answer.text
    registry.stop()
    assert registry.sql("SELECT downloads FROM versions") == [(counted,)]
