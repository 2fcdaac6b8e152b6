"""The registry speaks the read side of the Hugging Face Hub API: the real ``huggingface_hub``
client (``snapshot_download``, ``hf_hub_download``, ``HfApi``, the ``hf`` command) fetches
skills from it into the ordinary HF cache."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, ModelCard, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from registry_server.routes.hub import commit_hash
from tvreg._registry.project import load_project

pytestmark = pytest.mark.usefixtures("hf_home")


def _publish_two(registry, api, server_artifacts) -> tuple[str, bytes, bytes]:
    token = registry.make_user("alice")
    v1 = server_artifacts.make("science", "1.0.0", license="Apache-2.0", description="Answers science.")
    v2 = server_artifacts.make("science", "1.1.0", license="Apache-2.0", description="Answers science.")
    assert api.publish(token, "alice/science", "1.0.0", v1).status_code == 201
    assert api.publish(token, "alice/science", "1.1.0", v2, tag="latest").status_code == 201
    with api.client(token) as c:
        assert c.put("/skills/alice/science/tags/beta", json={"version": "1.0.0"}).status_code == 200
    return token, v1, v2


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_snapshot_download_fetches_a_version_into_the_hf_cache(registry, api, server_artifacts, tmp_path):
    _, v1, v2 = _publish_two(registry, api, server_artifacts)
    cache = tmp_path / "hf-cache"
    path = Path(
        snapshot_download(
            "alice/science", revision="1.0.0", endpoint=registry.url, cache_dir=cache, token=False
        )
    )
    sha = commit_hash("alice/science", "1.0.0", _digest(v1))
    assert path == cache / "models--alice--science" / "snapshots" / sha
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "science-1.0.0.tvskill", "tvskill.toml"]
    assert (path / "science-1.0.0.tvskill").read_bytes() == v1
    # The artifact's blob is named by its SHA-256, as the Hub's LFS files are.
    blob = (path / "science-1.0.0.tvskill").resolve()
    assert blob.name == hashlib.sha256(v1).hexdigest() and blob.parent.name == "blobs"
    assert (cache / "models--alice--science" / "refs" / "1.0.0").read_text() == sha

    card = ModelCard.load(path / "README.md")
    assert card.data.tags == ["tvreg", "task-vector"]
    assert card.data.license == "apache-2.0" and card.data.library_name == "tvreg"
    assert card.data.to_dict()["tvreg"]["digest"] == _digest(v1)
    assert "tvreg install alice/science@1.0.0" in card.text

    # The snapshot is a skill project tvreg reads: tvskill.toml names the artifact beside it.
    project = load_project(path)
    assert (project.namespace, project.skill, project.version) == ("alice", "science", "1.0.0")
    assert project.artifact == (path / "science-1.0.0.tvskill").resolve()
    assert tomllib.loads((path / "tvskill.toml").read_text())["license"] == "Apache-2.0"

    # `main` is the latest dist-tag, other dist-tags are revisions too, and so is a commit hash.
    main = Path(snapshot_download("alice/science", endpoint=registry.url, cache_dir=cache, token=False))
    assert (main / "science-1.1.0.tvskill").read_bytes() == v2
    assert main.name == commit_hash("alice/science", "1.1.0", _digest(v2))
    beta = snapshot_download(
        "alice/science", revision="beta", endpoint=registry.url, cache_dir=cache, token=False
    )
    assert Path(beta) == path
    again = snapshot_download("alice/science", revision=sha, endpoint=registry.url, cache_dir=tmp_path / "c2")
    assert (Path(again) / "science-1.0.0.tvskill").read_bytes() == v1

    with pytest.raises(RevisionNotFoundError):
        snapshot_download(
            "alice/science", revision="9.9.9", endpoint=registry.url, cache_dir=cache, token=False
        )
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("alice/nothing", endpoint=registry.url, cache_dir=cache, token=False)


def test_model_info_refs_and_single_files(registry, api, server_artifacts, tmp_path):
    _, v1, v2 = _publish_two(registry, api, server_artifacts)
    hf = HfApi(endpoint=registry.url, token=False)
    info = hf.model_info("alice/science", files_metadata=True)
    assert info.id == "alice/science" and info.private is False
    assert info.sha == commit_hash("alice/science", "1.1.0", _digest(v2))
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == {"README.md", "tvskill.toml", "science-1.1.0.tvskill"}
    artifact = siblings["science-1.1.0.tvskill"]
    assert artifact.size == len(v2) and artifact.lfs.sha256 == hashlib.sha256(v2).hexdigest()
    assert info.card_data.tags == ["tvreg", "task-vector"]
    assert hf.model_info("alice/science", revision="1.0.0").sha == commit_hash(
        "alice/science", "1.0.0", _digest(v1)
    )

    refs = hf.list_repo_refs("alice/science")
    assert {b.name: b.target_commit for b in refs.branches} == {
        "main": info.sha,
        "latest": info.sha,
        "beta": commit_hash("alice/science", "1.0.0", _digest(v1)),
    }
    assert [t.name for t in refs.tags] == ["1.0.0", "1.1.0"]
    assert hf.file_exists("alice/science", "tvskill.toml", revision="1.0.0")
    assert not hf.file_exists("alice/science", "model.safetensors", revision="1.0.0")

    one = hf_hub_download(
        "alice/science", "science-1.0.0.tvskill", revision="1.0.0", endpoint=registry.url,
        cache_dir=tmp_path / "c", token=False,
    )  # fmt: skip
    assert Path(one).read_bytes() == v1
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(
            "alice/science", "config.json", revision="1.0.0", endpoint=registry.url,
            cache_dir=tmp_path / "c", token=False,
        )  # fmt: skip

    # The headers hf_hub_download relies on, and Range on the artifact.
    url = f"{registry.url}/alice/science/resolve/1.0.0/science-1.0.0.tvskill"
    head = httpx.head(url)
    assert head.status_code == 200
    assert head.headers["x-repo-commit"] == commit_hash("alice/science", "1.0.0", _digest(v1))
    assert head.headers["etag"] == head.headers["x-linked-etag"] == f'"{hashlib.sha256(v1).hexdigest()}"'
    assert int(head.headers["x-linked-size"]) == int(head.headers["content-length"]) == len(v1)
    part = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == v1[100:200]
    card = httpx.get(f"{registry.url}/alice/science/resolve/main/README.md")
    assert card.status_code == 200 and card.headers["x-repo-commit"] == info.sha
    blob = b"blob %d\0" % len(card.content) + card.content
    assert card.headers["etag"] == f'"{hashlib.sha1(blob).hexdigest()}"'  # git's blob id, as on the Hub


def test_model_info_reports_the_versions_real_download_count(registry, api, server_artifacts, tmp_path):
    registry.stop()
    registry.start(env={"TVREG_DOWNLOAD_FLUSH": "0.2"})
    _publish_two(registry, api, server_artifacts)
    hf = HfApi(endpoint=registry.url, token=False)
    assert hf.model_info("alice/science", revision="1.0.0").downloads == 0
    for n in range(2):  # two machines, two HF caches: two downloads of 1.0.0's artifact
        snapshot_download(
            "alice/science", revision="1.0.0", endpoint=registry.url, cache_dir=tmp_path / f"c{n}", token=False
        )
    deadline = time.monotonic() + 10
    while hf.model_info("alice/science", revision="1.0.0").downloads != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hf.model_info("alice/science", revision="1.0.0").downloads == 2
    assert hf.model_info("alice/science").downloads == 0  # main is 1.1.0, never downloaded
    assert hf.model_info("alice/science", revision="beta").downloads == 2  # a dist-tag names 1.0.0


def test_private_skill_needs_the_registry_token(registry, api, server_artifacts, tmp_path):
    registry.make_user("bob")
    token = registry.make_user("alice")
    registry.make_team("lab", private=True)
    registry.add_member("lab", "alice", "write")
    data = server_artifacts.make("science", "1.0.0")
    assert api.publish(token, "lab/science", "1.0.0", data).status_code == 201
    outsider = registry.token("bob")

    def fetch(tok, cache):
        return snapshot_download(
            "lab/science", revision="1.0.0", endpoint=registry.url, cache_dir=tmp_path / cache, token=tok
        )

    assert (
        Path(fetch(registry.token("alice", role="read"), "ok")) / "science-1.0.0.tvskill"
    ).read_bytes() == data
    for tok in (False, outsider, "hf_" + "x" * 34):  # anonymous, another user, a huggingface.co token
        with pytest.raises(RepositoryNotFoundError):
            fetch(tok, "no")
    # Hidden and missing answer alike, to the byte (docs/reliability.md row 28).
    hidden = httpx.get(f"{registry.url}/lab/science/resolve/1.0.0/README.md")
    missing = httpx.get(f"{registry.url}/lab/nothing/resolve/1.0.0/README.md")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.headers["x-error-code"] == missing.headers["x-error-code"] == "RepoNotFound"
    assert hidden.content.replace(b"science", b"nothing") == missing.content
    # A registry token that is not valid is an authentication error, not a missing repo.
    with pytest.raises(HfHubHTTPError) as bad:
        fetch("tvr_" + "A" * 43, "bad")
    assert bad.value.response.status_code == 401 and not isinstance(bad.value, RepositoryNotFoundError)


def test_hf_download_command_fetches_a_skill(registry, api, server_artifacts, tmp_path):
    _, v1, _ = _publish_two(registry, api, server_artifacts)
    hf = Path(sys.executable).parent / "hf"
    env = {**os.environ, "HF_ENDPOINT": registry.url, "HF_HOME": str(tmp_path / "cli-home")}
    out = subprocess.run(
        [str(hf), "download", "alice/science", "--revision", "1.0.0", "--cache-dir", str(tmp_path / "cli"),
         "--quiet"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    snapshot = Path(out.stdout.strip().splitlines()[-1])
    assert snapshot.name == commit_hash("alice/science", "1.0.0", _digest(v1))
    assert (snapshot / "science-1.0.0.tvskill").read_bytes() == v1
