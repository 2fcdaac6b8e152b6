"""The `.tvskill` format pinned byte for byte, and the manifest's JSON Schema held to what tvreg writes and reads.

``tests/data/golden/`` holds a small artifact and its manifest exactly as tvreg wrote them
(regenerate with ``python tests/test_format_golden.py``, and only on purpose: a change here
is a change of the format every published artifact's digest depends on). The schema
``tvreg/schemas/manifest.schema.json`` is what docs/format.md points third parties at; it
must accept every manifest the builder writes and refuse the hostile ones the reader refuses.
"""

from __future__ import annotations

import copy
import json
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
ARTIFACT = GOLDEN / "tiny.tvskill"
MANIFEST = GOLDEN / "tiny.manifest.json"


def _golden_tensors() -> dict[str, tuple[torch.Tensor, str, str]]:
    """name → (τ, codec, base dtype), in write order; values chosen to exercise zeros, signs and bf16 steps."""
    weight = (torch.arange(32, dtype=torch.float32) - 16).div_(64).reshape(4, 8)
    bias = torch.tensor([0.0, 0.5, -0.0, 0.0, -0.25, 0.0, 1.0, 0.0], dtype=torch.float32)
    head = torch.linspace(-1, 1, 64, dtype=torch.float32).reshape(8, 8).pow_(3)
    return {
        "model.layers.0.weight": (weight, "exact", "F32"),
        "model.layers.0.bias": (bias, "exact", "BF16"),
        "lm_head.weight": (head, "int8", "BF16"),
    }


def _write_golden(path: Path) -> None:
    from tvreg._format.artifact import ArtifactWriter
    from tvreg._format.codecs import make_codec, relative_error
    from tvreg._format.manifest import Manifest

    manifest = Manifest(
        name="golden",
        version="1.2.3-rc.1+build.5",
        base_fingerprint="0123456789abcdef" * 4,
        dataset_size=1000,
        description="a golden fixture: three tensors, two codecs",
        license="Apache-2.0",
        source={"kind": "checkpoints", "codec": "exact"},
        requires={"alice/base-skill": "^1.2"},
        conflicts={"other": "<2"},
        created_by="tvreg golden",
    )
    writer = ArtifactWriter(path, manifest)
    for name, (tau, codec_name, dtype) in _golden_tensors().items():
        coder = make_codec(codec_name, None)
        enc = coder.encode(tau)
        err = (
            0.0
            if coder.lossless
            else relative_error(tau, coder.decode(enc.data, tuple(tau.shape), enc.params, where=name))
        )
        writer.add(
            name,
            enc.data,
            codec=codec_name,
            shape=tuple(tau.shape),
            dtype=dtype,
            params=enc.params,
            rel_error=err,
        )
    writer.finish()


def _schema() -> dict:
    return json.loads(
        resources.files("tvreg").joinpath("schemas/manifest.schema.json").read_text(encoding="utf-8")
    )


def _validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = _schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# --------------------------------------------------------------------------- golden bytes


def test_writing_the_golden_artifact_gives_the_checked_in_bytes(tmp_path):
    _write_golden(tmp_path / "tiny.tvskill")
    assert (tmp_path / "tiny.tvskill").read_bytes() == ARTIFACT.read_bytes()


@pytest.mark.parametrize("reads", ["short reads", "short writes"])
def test_the_golden_bytes_and_digest_whatever_the_kernel_returns(tmp_path, monkeypatch, reads):
    """Finishing an artifact appends its body after the header; short reads and writes must give the
    same bytes and the same remembered digest (the hash runs on another thread over the same pages)."""
    import hashlib
    import os

    from tvreg._format.artifact import file_digest

    real_preadv, real_write = os.preadv, os.write
    calls = []

    def preadv(fd, buffers, offset):
        calls.append(offset)
        if reads == "short reads":
            buffers = [buffers[0][:7]]
        return real_preadv(fd, buffers, offset)

    def write(fd, data):
        return real_write(fd, data[:5] if reads == "short writes" and len(data) > 5 else data)

    monkeypatch.setattr(os, "preadv", preadv)
    monkeypatch.setattr(os, "write", write)
    _write_golden(tmp_path / "tiny.tvskill")
    data = (tmp_path / "tiny.tvskill").read_bytes()
    assert data == ARTIFACT.read_bytes() and calls
    assert file_digest(tmp_path / "tiny.tvskill") == "sha256:" + hashlib.sha256(data).hexdigest()


def test_the_golden_artifact_layout_is_the_documented_one():
    """docs/format.md, 'Bytes' and 'Header': length prefix, space padding to 8, metadata, U8 blobs back to back."""
    data = ARTIFACT.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header_bytes = data[8 : 8 + n]
    assert (8 + n) % 8 == 0 and header_bytes == header_bytes.rstrip(b" ") + b" " * (
        n - len(header_bytes.rstrip(b" "))
    )
    header = json.loads(header_bytes)
    assert list(header) == ["__metadata__", *_golden_tensors()]
    assert header["__metadata__"] == {
        "tvreg.manifest": MANIFEST.read_text(encoding="utf-8"),
        "format": "tvskill",
    }
    manifest = json.loads(header["__metadata__"]["tvreg.manifest"])
    offset = 0
    for name in _golden_tensors():
        entry = header[name]
        size = manifest["tensors"][name]["stored_bytes"]
        assert entry == {"dtype": "U8", "shape": [size], "data_offsets": [offset, offset + size]}
        offset += size
    assert len(data) == 8 + n + offset  # no trailing bytes


def test_the_golden_manifest_is_read_byte_for_byte():
    from tvreg._format.artifact import Artifact
    from tvreg._format.manifest import Manifest

    text = MANIFEST.read_text(encoding="utf-8")
    assert Manifest.from_json(text, where="golden").to_json() == text  # compact, sorted: one serialisation
    with Artifact(ARTIFACT) as art:
        assert art.manifest.to_json() == text
        m = art.manifest
        assert (m.label, m.kind, m.dataset_size, m.requires, m.conflicts) == (
            "golden@1.2.3-rc.1+build.5", "task_vector", 1000, {"alice/base-skill": "^1.2"}, {"other": "<2"},
        )  # fmt: skip
        assert m.lossy and list(m.tensors) == sorted(_golden_tensors())
        for name, (tau, codec, dtype) in _golden_tensors().items():
            assert (m.tensors[name].codec, m.tensors[name].dtype) == (codec, dtype)
            got = art.decode(name)
            if codec == "exact":
                assert torch.equal(got, tau) and torch.equal(got.signbit(), tau.signbit()), name  # −0.0 kept
            else:
                assert 0 < m.tensors[name].rel_error < 0.01
                torch.testing.assert_close(got, tau, atol=0.01, rtol=0)


def test_the_golden_artifact_verifies_and_a_flipped_byte_is_named():
    from tvreg._format.artifact import Artifact, verify_stored_artifact
    from tvreg.errors import CorruptArtifact

    assert verify_stored_artifact(ARTIFACT).name == "golden"
    data = bytearray(ARTIFACT.read_bytes())
    data[-1] ^= 0x01
    tampered = Path(pytest.importorskip("tempfile").mkdtemp()) / "tampered.tvskill"
    tampered.write_bytes(bytes(data))
    with Artifact(tampered) as art, pytest.raises(CorruptArtifact, match="is corrupt: its data hashes to"):
        art.decode(list(_golden_tensors())[-1])


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_verification_on_threads_names_the_first_corrupt_tensor_in_manifest_order(tmp_path, workers):
    """However many threads check the tensors, the error is the one a sequential check reports."""
    from tvreg._format.artifact import verify_stored_artifact
    from tvreg._format.safetensors_io import SafetensorsFile
    from tvreg.errors import CorruptArtifact

    order = list(verify_stored_artifact(ARTIFACT, workers=workers).tensors)
    assert len(order) >= 3
    with SafetensorsFile(ARTIFACT) as f:
        spans = {name: (info.start, info.end) for name, info in f.tensors.items()}
    data = bytearray(ARTIFACT.read_bytes())
    for name in order[1:]:  # every tensor but the first: the second in manifest order is the one to name
        data[spans[name][1] - 1] ^= 0x01
    tampered = tmp_path / "tampered.tvskill"
    tampered.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifact, match=f"tensor `{order[1]}` in `.*` is corrupt"):
        verify_stored_artifact(tampered, workers=workers)


# --------------------------------------------------------------------------- schema


def test_the_schema_is_shipped_and_docs_point_at_it():
    schema = _schema()
    assert schema["$id"] == "urn:tvreg:schema:manifest:1"
    assert schema["properties"]["format_version"] == {"const": 1}
    docs = (Path(__file__).resolve().parents[1] / "docs" / "format.md").read_text(encoding="utf-8")
    assert "tvreg/schemas/manifest.schema.json" in docs


def test_the_schema_ships_as_package_data():
    import fnmatch

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["tvreg"]
    assert any(fnmatch.fnmatch("schemas/manifest.schema.json", p) for p in patterns)


def test_the_schema_accepts_the_golden_manifest():
    _validator().validate(json.loads(MANIFEST.read_text(encoding="utf-8")))


def test_the_schema_accepts_every_manifest_the_builder_writes(family, tmp_path):
    from tiny_models import SCIENCE_TEXTS, make_lora_adapter

    from tvreg._build.build import build_skill
    from tvreg._format.artifact import Artifact
    from tvreg.taskvector import TaskVector

    validator = _validator()
    built = [
        build_skill(
            family.pre, finetuned=family.science, output=tmp_path / f"{codec}.tvskill", name="science",
            version="1.0.0", codec=codec, dataset_size=3000, requires={"alice/coding": "^1"},
            conflicts={"bob/legacy": "<2 || >=3.1.0-beta.2"}, description="ünïcode ✓", license="MIT",
        ).path
        for codec in ("exact", "bf16", "int8", "int4", "sign", "sparse", "lowrank", "auto")
    ]  # fmt: skip
    built.append(
        build_skill(
            general=family.general, finetuned=family.general, output=tmp_path / "delta.tvskill", name="delta",
            version="0.0.1-alpha.1",
        ).path
    )  # fmt: skip
    adapter = make_lora_adapter(family.pre, tmp_path / "adapter", SCIENCE_TEXTS)
    built.append(
        build_skill(
            family.pre, adapter=adapter, output=tmp_path / "lora.tvskill", name="lora", version="2.0.0"
        ).path
    )
    tau = TaskVector.load(built[0]) * 0.5 - TaskVector.from_checkpoints(family.pre, family.coding)
    built.append(tau.save(tmp_path / "mix.tvskill", codec="int8"))
    kinds = set()
    for path in built:
        with Artifact(path) as art:
            manifest = json.loads(art.manifest.to_json())
        errors = sorted(validator.iter_errors(manifest), key=str)
        assert not errors, f"{path.name}: {errors[0].message}"
        kinds.add((manifest["kind"], manifest["source"]["kind"]))
    assert kinds == {
        ("task_vector", "checkpoints"), ("delta_from_general", "checkpoints"), ("task_vector", "lora_adapter"),
        ("task_vector", "task_vector_sum"),
    }  # fmt: skip


def _m(**changes) -> dict:
    """The golden manifest with fields replaced (``None``: removed; ``tensor=...``: one tensor entry's fields)."""
    manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
    tensor = changes.pop("tensor", None)
    for key, value in changes.items():
        if value is None:
            manifest.pop(key)
        else:
            manifest[key] = value
    if tensor is not None:
        entry = manifest["tensors"]["model.layers.0.weight"]
        for key, value in tensor.items():
            if value is None:
                entry.pop(key)
            else:
                entry[key] = value
    return manifest


def _renamed_tensor(name: str) -> dict:
    manifest = _m()
    manifest["tensors"][name] = manifest["tensors"].pop("model.layers.0.weight")
    return manifest


_CAL = {"retention": 0.995, "target": 0.99, "loss_pre": 2.5, "loss_finetuned": 2.0, "loss_chosen": 2.0025}

HOSTILE = [
    ("a format this reader does not know", lambda: _m(format_version=2)),
    ("no name", lambda: _m(name=None)),
    ("a path for a name", lambda: _m(name="../evil")),
    ("an uppercase name", lambda: _m(name="Science")),
    ("a name with a trailing newline", lambda: _m(name="science\n")),
    ("a name with '..'", lambda: _m(name="sci..ence")),
    ("a name over 100 characters", lambda: _m(name="a" * 101)),
    ("a name that is not a string", lambda: _m(name=7)),
    ("a two-part version", lambda: _m(version="1.0")),
    ("a leading zero", lambda: _m(version="01.0.0")),
    ("a 'v' prefix", lambda: _m(version="v1.0.0")),
    ("a version with an escape", lambda: _m(version="1.0.0\x1b[31m")),
    ("a short fingerprint", lambda: _m(base_fingerprint="ab" * 31)),
    ("an uppercase fingerprint", lambda: _m(base_fingerprint="AB" * 32)),
    ("a fingerprint with a newline", lambda: _m(base_fingerprint="ab" * 32 + "\n")),
    ("an unknown kind", lambda: _m(kind="pickle")),
    ("a zero dataset size", lambda: _m(dataset_size=0)),
    ("a negative dataset size", lambda: _m(dataset_size=-5)),
    ("a dataset size as text", lambda: _m(dataset_size="1000")),
    ("a dataset size as a boolean", lambda: _m(dataset_size=True)),
    ("an unknown dataset unit", lambda: _m(dataset_unit="bytes")),
    ("a description that is not text", lambda: _m(description=["x"])),
    ("a license that is not text", lambda: _m(license=5)),
    ("a source that is not an object", lambda: _m(source="checkpoints")),
    ("a dependency on a path", lambda: _m(requires={"../x": "^1"})),
    ("a dependency range that is not text", lambda: _m(conflicts={"other": 2})),
    ("no tensors", lambda: _m(tensors=None)),
    ("tensors as a list", lambda: _m(tensors=[])),
    ("an empty tensor name", lambda: _renamed_tensor("")),
    ("a tensor name with a terminal escape", lambda: _renamed_tensor("lm_head\x1b[2J")),
    ("a negative dimension", lambda: _m(tensor={"shape": [-4, 8]})),
    ("a fractional dimension", lambda: _m(tensor={"shape": [4.5, 8]})),
    ("a shape as text", lambda: _m(tensor={"shape": "4,8"})),
    ("a boolean dimension", lambda: _m(tensor={"shape": [True, 8]})),
    ("a size as text", lambda: _m(tensor={"stored_bytes": "12"})),
    ("no digest", lambda: _m(tensor={"sha256": None})),
    ("no codec", lambda: _m(tensor={"codec": None})),
    ("a codec that is not a name", lambda: _m(tensor={"codec": 5})),
    ("codec parameters as a list", lambda: _m(tensor={"params": [1]})),
    ("a negative relative error", lambda: _m(tensor={"rel_error": -0.1})),
    ("a relative error as text", lambda: _m(tensor={"rel_error": "0"})),
    ("a calibration that is not an object", lambda: _m(calibration="99%")),
    ("a calibration retention as text", lambda: _m(calibration={**_CAL, "retention": "0.99"})),
    ("a calibration without the base model's loss", lambda: _m(calibration={k: v for k, v in _CAL.items() if k != "loss_pre"})),
    ("a retention bound as text", lambda: _m(calibration={**_CAL, "retention_bound": "0.98"})),
    ("a retention bound as a boolean", lambda: _m(calibration={**_CAL, "retention_bound": True})),
    ("a margin that is not an object", lambda: _m(calibration={**_CAL, "margin": "bootstrap"})),
    ("a plan that is not an object", lambda: _m(calibration={**_CAL, "plan": ["lm_head"]})),
]

_MARGIN = {"method": "paired bootstrap", "resamples": 1000, "quantile": 0.05, "seed": 0}
CALIBRATIONS = [
    ("a bound and how it was computed", {**_CAL, "retention_bound": 0.991, "margin": _MARGIN, "margin_reason": None}),
    ("a hook: no bound, and why", {**_CAL, "retention_bound": None, "margin": None, "margin_reason": "a hook"}),
    ("written before margins existed", _CAL),
    ("a per-group plan", {**_CAL, "max_evaluations": 40, "plan_reason": None, "plan": {
        "method": "per-group sensitivity", "setting": "lowrank(energy=0.99)", "smaller": "sparse(density=0.5)",
        "groups": [{"group": "model.layers.0", "tensors": 7, "bytes_saved": 9040, "retention": 0.99,
                    "retention_bound": 0.96, "smaller": True},
                   {"group": "lm_head", "tensors": 1, "bytes_saved": -5, "retention": None,
                    "retention_bound": None, "smaller": False}],
        "moved": 1, "probes": 1, "verifications": 1, "evaluations": 2}}),
    ("no per-group search, and why", {**_CAL, "max_evaluations": 5, "plan": None, "plan_reason": "budget"}),
]


@pytest.mark.parametrize("calibration", [c for _, c in CALIBRATIONS], ids=[why for why, _ in CALIBRATIONS])
def test_calibration_figures_are_valid_and_round_trip(calibration):
    from tvreg._format.manifest import Manifest

    manifest = _m(calibration=calibration)
    _validator().validate(manifest)
    read = Manifest.from_json(json.dumps(manifest), where="calibrated.tvskill")
    assert read.calibration == calibration
    assert json.loads(read.to_json())["calibration"] == calibration


def test_the_schema_refuses_a_margin_it_cannot_reproduce():
    """The schema pins the margin's fields (tvreg's reader, like any reader, may ignore them)."""
    for margin in ({**_MARGIN, "method": "t-test"}, {**_MARGIN, "quantile": 1.5}, {k: v for k, v in _MARGIN.items() if k != "seed"}):
        assert not _validator().is_valid(_m(calibration={**_CAL, "retention_bound": 0.99, "margin": margin}))


@pytest.mark.parametrize("make", [m for _, m in HOSTILE], ids=[why for why, _ in HOSTILE])
def test_hostile_manifests_are_refused_by_the_schema_and_the_reader(make):
    from tvreg._format.manifest import Manifest
    from tvreg.errors import InvalidManifest

    manifest = make()
    assert not _validator().is_valid(manifest)
    with pytest.raises(InvalidManifest) as exc:
        Manifest.from_json(json.dumps(manifest), where="hostile.tvskill")
    message = str(exc.value)
    assert message.startswith(
        ("the manifest of `hostile.tvskill` is invalid: ", "`hostile.tvskill` uses tvreg format")
    )
    assert "\n" not in message and "\x1b" not in message


def test_what_only_the_reader_can_refuse():
    """Duplicate keys are gone once JSON is parsed, so the schema cannot see them; the reader refuses them."""
    from tvreg._format.manifest import Manifest
    from tvreg.errors import InvalidManifest

    text = MANIFEST.read_text(encoding="utf-8")
    duplicated = text.replace('"name":"golden"', '"name":"golden","name":"evil"', 1)
    assert duplicated != text
    with pytest.raises(InvalidManifest, match="not JSON"):
        Manifest.from_json(duplicated, where="hostile.tvskill")


def test_unknown_fields_stay_readable_and_valid():
    """docs/format.md: unknown manifest fields are ignored, so minor additions stay readable."""
    from tvreg._format.manifest import Manifest

    manifest = _m(homepage="https://example.org", tensor={"future": {"x": 1}})
    assert _validator().is_valid(copy.deepcopy(manifest))
    assert Manifest.from_json(json.dumps(manifest), where="future.tvskill").name == "golden"


if __name__ == "__main__":  # regenerate the fixtures, on purpose only
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    GOLDEN.mkdir(parents=True, exist_ok=True)
    _write_golden(ARTIFACT)
    from tvreg._format.artifact import Artifact

    with Artifact(ARTIFACT) as art:
        MANIFEST.write_text(art.manifest.to_json(), encoding="utf-8")
    print(f"wrote {ARTIFACT} and {MANIFEST}")
