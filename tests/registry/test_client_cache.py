"""The download cache against a real registry: verified bytes only, resumable, tamper-evident.

docs/reliability.md rows 16 (tampered blob in the registry or in the cache), 17 (kill -9 mid-download)
and 19 (a server or middlebox that ignores ``Range`` or sends a short body).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

import pytest
from client_helpers import FaultProxy, build_artifacts, cli, find_blob, flip_byte, login, write_project

from tvreg._registry.cache import BlobCache
from tvreg._registry.fetch import fetch, fetch_skill
from tvreg._util.progress import Progress
from tvreg.errors import DownloadError


@pytest.fixture(scope="session")
def artifacts(family, tmp_path_factory):
    return build_artifacts(family, tmp_path_factory.mktemp("client-artifacts"))


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


def _partials(cache: BlobCache, digest: str):
    hexd = digest.split(":")[1]
    return sorted((cache.root / hexd[:2]).glob(f".{hexd}.*.partial"))


def test_fetch_verifies_and_reuses_the_cache_entry(registry, published):
    digest, data = published
    path = fetch_skill("alice/science", base_fingerprint=None)
    assert path == BlobCache().path(digest) and path.read_bytes() == data
    with FaultProxy(registry.url) as proxy:
        assert fetch_skill("alice/science@1.0.0", base_fingerprint=None, registry=proxy.url) == path
    assert proxy.artifact_requests == []  # the verified entry was used; no download
    res = cli("cache", "list")
    assert "alice/science@1.0.0" in res.stdout and digest[:19] in res.stdout


def test_a_tampered_cache_entry_is_evicted_and_fetched_again(registry, published):
    digest, data = published
    path = fetch_skill("alice/science", base_fingerprint=None)
    flip_byte(path)
    notes = Notes()
    assert fetch_skill("alice/science", base_fingerprint=None, progress=notes) == path
    assert path.read_bytes() == data
    assert len(notes.notes) == 1 and notes.notes[0].startswith(
        "the cached copy of alice/science@1.0.0 was corrupt"
    )
    assert digest in notes.notes[0]


def test_a_tampered_registry_blob_fails_naming_both_digests(registry, published):
    digest, data = published
    path = fetch_skill("alice/science", base_fingerprint=None)
    flip_byte(path)
    flip_byte(find_blob(registry.data_dir, digest))
    with pytest.raises(DownloadError) as exc:
        fetch_skill("alice/science", base_fingerprint=None)
    found = exc.value.found
    assert exc.value.expected == digest and found.startswith("sha256:") and found != digest
    assert exc.value.message == (
        f"the bytes of alice/science@1.0.0 hash to {found}, but the registry announced {digest}."
    )
    assert not path.exists() and _partials(BlobCache(), digest) == []


def test_an_interrupted_download_resumes_with_range(registry, published):
    digest, data = published
    cache = BlobCache()
    hexd = digest.split(":")[1]
    shard = cache.root / hexd[:2]
    shard.mkdir(parents=True)
    half = len(data) // 2
    (shard / f".{hexd}.4242-deadbeef.partial").write_bytes(data[:half])  # what a killed download leaves
    with FaultProxy(registry.url) as proxy:
        path = fetch_skill("alice/science", base_fingerprint=None, registry=proxy.url)
    assert proxy.artifact_requests == [(f"bytes={half}-", 206)]
    assert path.read_bytes() == data and _partials(cache, digest) == []


def test_a_corrupt_partial_download_is_restarted_from_zero(registry, published):
    digest, data = published
    cache = BlobCache()
    hexd = digest.split(":")[1]
    (cache.root / hexd[:2]).mkdir(parents=True)
    (cache.root / hexd[:2] / f".{hexd}.1-x.partial").write_bytes(b"\0" * 1000)
    notes = Notes()
    with FaultProxy(registry.url) as proxy:
        path = fetch_skill("alice/science", base_fingerprint=None, registry=proxy.url, progress=notes)
    assert proxy.artifact_requests == [("bytes=1000-", 206), (None, 200)]
    assert path.read_bytes() == data
    assert notes.notes == [
        "the resumed download of alice/science@1.0.0 did not verify; downloading it from the start."
    ]


def test_a_server_that_ignores_range_restarts_from_zero(registry, published):
    digest, data = published
    cache = BlobCache()
    hexd = digest.split(":")[1]
    (cache.root / hexd[:2]).mkdir(parents=True)
    (cache.root / hexd[:2] / f".{hexd}.1-x.partial").write_bytes(data[:5000])
    with FaultProxy(registry.url, ignore_range=True) as proxy:
        path = fetch_skill("alice/science", base_fingerprint=None, registry=proxy.url)
    assert proxy.artifact_requests == [("bytes=5000-", 200)]
    assert path.read_bytes() == data


def test_a_truncated_download_is_refused_then_resumed(registry, published):
    digest, data = published
    cache = BlobCache()
    cut = len(data) // 3
    with FaultProxy(registry.url, truncate_at=cut) as proxy, pytest.raises(DownloadError) as exc:
        fetch_skill("alice/science", base_fingerprint=None, registry=proxy.url)
    assert (
        exc.value.message == f"the download of alice/science@1.0.0 stopped after {cut} of {len(data)} bytes."
    )
    assert exc.value.hints == ["run the command again: the download resumes where it stopped"]
    assert not cache.path(digest).exists()
    assert [p.stat().st_size for p in _partials(cache, digest)] == [cut]
    with FaultProxy(registry.url) as proxy:
        got = fetch("alice/science", base_fingerprint=None, registry=proxy.url)
    assert proxy.artifact_requests == [(f"bytes={cut}-", 206)]
    assert got.path.read_bytes() == data and _partials(cache, digest) == []


def test_a_killed_download_leaves_no_entry_and_resumes(registry, published, tmp_path):
    digest, data = published
    script = textwrap.dedent(
        """
        import sys
        from tvreg._registry.fetch import fetch_skill
        fetch_skill("alice/science", base_fingerprint=None)
        """
    )
    import os

    env = dict(os.environ, TVREG_FAULT="download:chunk")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    cache = BlobCache()
    assert not cache.path(digest).exists()
    (partial,) = _partials(cache, digest)
    assert 0 < partial.stat().st_size < len(data)
    have = partial.stat().st_size
    with FaultProxy(registry.url) as proxy:
        path = fetch_skill("alice/science", base_fingerprint=None, registry=proxy.url)
    assert proxy.artifact_requests == [(f"bytes={have}-", 206)]
    assert path.read_bytes() == data


def test_cache_verify_and_prune(registry, published):
    digest, data = published
    path = fetch_skill("alice/science", base_fingerprint=None)
    res = cli("cache", "verify")
    assert (res.exit_code, res.stdout) == (0, "1 artifact(s) verified, 0 evicted.\n")
    flip_byte(path)
    res = cli("cache", "verify")
    assert res.exit_code == 1
    assert res.stdout == "0 artifact(s) verified, 1 evicted.\n"
    assert not path.exists()
    fetch_skill("alice/science", base_fingerprint=None)
    hexd = digest.split(":")[1]
    (path.parent / f".{hexd}.9-dead.partial").write_bytes(b"x" * 10)
    res = cli("cache", "prune")
    assert (res.exit_code, res.stdout) == (0, "Removed 1 file(s), freed 0.0 KiB.\n")
    assert path.exists()
    res = cli("cache", "prune", "--all")
    assert res.exit_code == 0 and not path.exists()
    assert cli("cache", "list").stdout == "The cache is empty.\n"


@pytest.mark.parametrize("locking", [True, False], ids=["locked", "flock-broken"])
def test_eight_concurrent_fetches_make_one_verified_entry(registry, published, monkeypatch, locking):
    """docs/reliability.md row 18: the lock saves bandwidth; without it every fetch still ends with the same verified entry."""
    from concurrent.futures import ThreadPoolExecutor

    import tvreg._registry.cache

    digest, data = published
    if not locking:
        monkeypatch.setattr(tvreg._registry.cache.fcntl, "flock", lambda fd, op: None)
    with FaultProxy(registry.url) as proxy, ThreadPoolExecutor(8) as pool:
        paths = list(
            pool.map(
                lambda _: fetch_skill("alice/science", base_fingerprint=None, registry=proxy.url), range(8)
            )
        )
    cache = BlobCache()
    assert set(paths) == {cache.path(digest)} and cache.path(digest).read_bytes() == data
    assert [e.digest for e in cache.entries()] == [digest]
    assert _partials(cache, digest) == []
    downloads = len(proxy.artifact_requests)
    assert downloads == 1 if locking else 1 <= downloads <= 8
