"""Every handcrafted hostile artifact is refused with one tvreg sentence, everywhere it can enter.

The corpus (``corpus/``, made by ``corpus/make_corpus.py``) covers docs/reliability.md rows 7-12
and 15: header length past EOF or over 100 MB, overlapping/gapped offsets, trailing
bytes, shape x dtype overflow, duplicate names, zstd bombs, NaN/Inf, ``..``, absolute,
NUL and look-alike names, pickles. Each file goes through the reader, ``tvreg info`` and
the registry's publish endpoint; the fuzz tests (test_fuzz.py) start from the same seeds.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
from client_helpers import cli

from tvreg._format.artifact import Artifact
from tvreg._registry.project import verify_artifact
from tvreg.errors import TvregError

CORPUS = Path(__file__).resolve().parent / "corpus"
sys.path.insert(0, str(CORPUS))
from make_corpus import VALID, cases  # noqa: E402

HOSTILE = sorted(p.name for p in CORPUS.iterdir() if p.suffix in (".tvskill", ".pt") and p.name not in VALID)
# Tensor names are matched against the base model's names, never used as paths: a `..`
# in one is harmless to read, and install refuses it as a tensor the base lacks.
HARMLESS = {"tensor-name-dot-dot.tvskill"}
PICKLE_MARKER = "tvreg-pickle-was-loaded"


def test_the_committed_corpus_is_what_the_script_makes():
    made = cases()
    on_disk = {p.name for p in CORPUS.iterdir() if p.suffix in (".tvskill", ".pt")}
    assert on_disk == set(made)
    for name, data in made.items():
        assert (CORPUS / name).read_bytes() == data, f"regenerate: python {CORPUS / 'make_corpus.py'}"


@pytest.mark.parametrize("name", sorted(set(HOSTILE) - HARMLESS))
def test_the_reader_and_publish_checks_refuse_each_hostile_file(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a pickle payload would drop its marker
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(TvregError) as caught:
        verify_artifact(CORPUS / name)
    message = caught.value.message
    assert "\n" not in message and message.endswith("."), message
    assert sorted(os.listdir(tmp_path)) == before
    assert not (tmp_path / PICKLE_MARKER).exists()


@pytest.mark.parametrize("name", sorted(VALID))
def test_the_valid_seeds_open_and_decode(name):
    with Artifact(CORPUS / name) as art:
        for tensor, entry in art.manifest.tensors.items():
            assert tuple(art.decode(tensor).shape) == entry.shape


def _header_refused(path: Path) -> bool:
    try:
        Artifact(path).close()
    except TvregError:
        return True
    return False


def test_tvreg_info_says_one_sentence_for_every_hostile_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in HOSTILE:
        res = cli("info", CORPUS / name)
        assert res.exit_code in (0, 1), (name, res.exit_code, res.stderr)
        assert "Traceback" not in res.stderr, (name, res.stderr)
        if res.exit_code == 1 or _header_refused(CORPUS / name):
            assert res.exit_code == 1 and res.stderr.startswith("error: "), (name, res.stdout, res.stderr)
    assert not (tmp_path / PICKLE_MARKER).exists()


@pytest.mark.parametrize("registry", ["sqlite"], indirect=True)
def test_the_registry_refuses_every_hostile_upload_and_keeps_nothing(registry, api):
    token = registry.make_user("alice")
    for name in HOSTILE:
        data = (CORPUS / name).read_bytes()
        if not data or name in HARMLESS:
            continue  # an upload must declare at least one byte
        r = api.publish(token, "alice/science", "1.0.0", data)
        assert r.status_code == 400, (name, r.status_code, r.text)
        body = r.json()["error"]
        assert body["code"] == "invalid_artifact", (name, body)
        assert str(registry.data_dir) not in body["message"]
    assert registry.sql("SELECT count(*) FROM versions") == [(0,)]
    assert registry.blob_files() == [] and registry.staged_files() == []
    # The valid seed still publishes: refusals left nothing behind that blocks it.
    data = (CORPUS / "valid-small.tvskill").read_bytes()
    r = api.publish(token, "alice/science", "1.0.0", data)
    assert r.status_code == 201, r.text
    assert r.json()["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
