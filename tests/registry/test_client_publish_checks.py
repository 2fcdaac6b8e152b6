"""The fast paths of a publish stay as safe as the slow ones.

``tvreg publish`` does not decode an artifact again that tvreg built (or verified) and
that is unchanged since (:func:`tvreg._format.artifact.known_verified`), so the registry's own
check is the last line. These tests pin that a changed artifact is decoded again and
refused before any upload, and that the registry still refuses a corrupt upload sent in
many pieces.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from client_helpers import cli, flip_byte, login, write_project

from tvreg._format.artifact import file_digest, known_verified
from tvreg._format.statcache import SETTLE_NS
from tvreg._registry.project import load_project, prepare_artifact
from tvreg.errors import ArtifactError

CORPUS = Path(__file__).resolve().parents[1] / "reliability" / "corpus"


def _project(family, root: Path) -> Path:
    return write_project(
        root,
        name="alice/science",
        version="1.0.0",
        base=family.pre,
        dataset_size=61000,
        build={"finetuned": str(family.science)},
    )


def _edit_after_build(path: Path) -> None:
    """Flip the artifact's last byte (inside its last tensor's blob), as an editor or a bad disk would.

    The pause is the stat cache's settle time: a file rewritten within the same clock tick
    as tvreg's own write keeps its stat identity (tvreg._format.statcache, "racy files").
    """
    time.sleep(2 * SETTLE_NS / 1e9)  # deliberately waits out the clock, as the docstring says
    flip_byte(path, -1)


def test_a_built_artifact_is_trusted_until_it_changes(family, tmp_path):
    project = load_project(_project(family, tmp_path / "science"))
    decoded: list[str] = []
    path, manifest, built = prepare_artifact(project, on_tensor=lambda n, t: decoded.append(n), trust=lambda d: True)
    assert built and decoded == [] and manifest.tensors
    assert known_verified(path) == file_digest(path, fresh=True)

    # The caller lacks what the decoding pass gives (publish: the sketch): decoded after all.
    prepare_artifact(project, on_tensor=lambda n, t: decoded.append(n), trust=lambda d: False)
    assert decoded == list(manifest.tensors)

    _edit_after_build(path)
    assert known_verified(path) is None
    with pytest.raises(ArtifactError) as caught:
        prepare_artifact(project, on_tensor=lambda n, t: None, trust=lambda d: True)
    assert "is corrupt" in caught.value.message


def test_publish_refuses_an_artifact_edited_after_its_build_before_uploading(registry, family, tmp_path):
    login(registry, "alice")
    project = _project(family, tmp_path / "science")
    res = cli("publish", project, "--dry-run")
    assert res.exit_code == 0, res.output
    _edit_after_build(project / "dist" / "science-1.0.0.tvskill")
    res = cli("publish", project)
    assert res.exit_code != 0
    assert "is corrupt" in res.output and "Traceback" not in res.output
    assert registry.sql("SELECT count(*) FROM uploads") == [(0,)]
    assert registry.sql("SELECT count(*) FROM versions") == [(0,)]


@pytest.mark.parametrize("name", ["manifest-tensor-wrong-digest.tvskill", "inf-values.tvskill"])
def test_the_registry_refuses_a_corrupt_tensor_arriving_in_many_pieces(registry, api, name):
    token = registry.make_user("alice")
    data = (CORPUS / name).read_bytes()
    r = api.publish(token, "alice/science", "1.0.0", data, chunk=max(1, len(data) // 7))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_artifact"
    assert registry.sql("SELECT count(*) FROM versions") == [(0,)]
    assert registry.blob_files() == [] and registry.staged_files() == []


def test_an_artifact_arriving_in_many_pieces_is_stored_as_sent(registry, api):
    token = registry.make_user("alice")
    data = (CORPUS / "valid-small.tvskill").read_bytes()
    r = api.publish(token, "alice/science", "1.0.0", data, chunk=max(1, len(data) // 9))
    assert r.status_code == 201, r.text
    assert r.json()["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    (blob,) = registry.blob_files()
    assert blob.read_bytes() == data and os.path.getsize(blob) == len(data)
