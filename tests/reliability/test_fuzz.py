"""Fuzzing the artifact reader and the manifest parser: any bytes give a tvreg error or a valid skill.

Never a foreign exception (a crash), a hang, memory beyond a fixed bound, or a file
written anywhere. Seeds are real artifacts built from the tiny model family plus the
handcrafted hostile corpus; hypothesis mutates them (bit flips, overwritten ranges,
truncation, insertion, a rewritten header length) and also builds safetensors headers
and manifests from scratch.

CI runs a bounded, derandomized number of examples (``TVREG_FUZZ_EXAMPLES``, default
below). A longer, randomized campaign::

    TVREG_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest -q tests/reliability/test_fuzz.py

(setting the variable also switches off derandomization, so every run explores new
inputs; a failure prints the minimal input and the ``@reproduce_failure`` line).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tvreg._format.artifact import Artifact
from tvreg._format.manifest import Manifest
from tvreg._format.safetensors_io import DTYPES, SafetensorsFile
from tvreg._registry.project import verify_artifact
from tvreg.errors import TvregError

CORPUS = Path(__file__).resolve().parent / "corpus"
EXAMPLES = int(os.environ.get("TVREG_FUZZ_EXAMPLES", "150"))
HANG_SECONDS = 20
MEMORY_BOUND = 1024**3  # extra address space an example may map beyond what the process had

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # hangs are caught by an alarm instead; a busy CI machine is slow, not hung
    derandomize="TVREG_FUZZ_EXAMPLES" not in os.environ,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


class Hang(Exception):
    """An example ran for longer than HANG_SECONDS."""


@contextlib.contextmanager
def bounded() -> Iterator[None]:
    """Run the body with a wall-clock alarm and a cap on the process's data segment.

    ``RLIMIT_DATA`` covers heap and private anonymous mappings (torch's allocations), so
    an input that makes the reader allocate by a declared size fails with MemoryError
    (or torch's RuntimeError) instead of exhausting the machine, and the test sees it.
    """
    status = Path("/proc/self/status").read_text()
    vm_data = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmData:"))
    old_limit = resource.getrlimit(resource.RLIMIT_DATA)
    cap = vm_data + MEMORY_BOUND
    if old_limit[1] != resource.RLIM_INFINITY:
        cap = min(cap, old_limit[1])

    def alarm(_signum, _frame):
        raise Hang(f"an example ran for over {HANG_SECONDS} s")

    old_handler = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(HANG_SECONDS)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, old_limit)
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_handler)


def read_artifact(data: bytes, workdir: Path) -> None:
    """Open ``data`` as a skill and decode every tensor, as install and publish do.

    Passes when the bytes are a valid skill or are refused with a TvregError; any other
    exception, a hang, or a new file in ``workdir`` fails the test.
    """
    path = workdir / "fuzzed.tvskill"
    path.write_bytes(data)
    try:
        with bounded():
            try:
                manifest = verify_artifact(path)
            except TvregError:
                return
            with Artifact(path) as art:
                for name, entry in manifest.tensors.items():
                    assert tuple(art.decode(name).shape) == entry.shape
    finally:
        assert sorted(p.name for p in workdir.iterdir()) == ["fuzzed.tvskill"]
        path.unlink()


def _seeds(extra: list[bytes]) -> list[bytes]:
    corpus = [p.read_bytes() for p in sorted(CORPUS.iterdir()) if p.suffix in (".tvskill", ".pt")]
    return extra + [s for s in corpus if s]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "overwrite", "truncate", "insert", "length", "header"]))
        n = len(data)
        if op == "flip" and n:
            i = draw(st.integers(0, n - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite" and n:
            i = draw(st.integers(0, n - 1))
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[i : i + len(chunk)] = chunk
        elif op == "truncate":
            del data[draw(st.integers(0, n)) :]
        elif op == "insert":
            i = draw(st.integers(0, n))
            data[i:i] = draw(st.binary(min_size=1, max_size=64))
        elif op == "length" and n >= 8:
            data[:8] = struct.pack("<Q", draw(st.one_of(st.integers(0, n + 16), st.integers(0, 2**64 - 1))))
        elif op == "header" and n >= 8:
            # Rewrite one byte inside the JSON header, where the parser's decisions are.
            length = min(int.from_bytes(data[:8], "little"), n - 8)
            if length > 0:
                i = 8 + draw(st.integers(0, length - 1))
                data[i] = ord(draw(st.sampled_from('{}[]",:-0123456789eE.tfn \\')))
    return bytes(data)


@pytest.fixture(scope="module")
def real_seeds(server_artifacts) -> list[bytes]:
    """Artifacts tvreg itself built from the tiny model family."""
    return [server_artifacts.science.read_bytes(), server_artifacts.coding.read_bytes()]


def test_mutated_artifacts_give_a_tvreg_error_or_a_valid_skill(real_seeds, tmp_path):
    seeds = _seeds(real_seeds)

    @FUZZ
    @given(data=mutated(seeds))
    def check(data: bytes) -> None:
        read_artifact(data, tmp_path)

    check()


_dims = st.lists(st.one_of(st.integers(0, 8), st.integers(0, 2**64)), max_size=3)
_entry = st.fixed_dictionaries(
    {
        "dtype": st.one_of(st.sampled_from(sorted(DTYPES)), st.text(max_size=4)),
        "shape": st.one_of(_dims, st.just("x"), st.lists(st.floats(), max_size=2)),
        "data_offsets": st.one_of(
            st.lists(st.integers(-4, 96), min_size=2, max_size=2),
            st.lists(st.integers(-(2**70), 2**70), max_size=3),
            st.none(),
        ),
    }
)


@FUZZ
@given(
    entries=st.dictionaries(st.text(max_size=6), _entry, max_size=4),
    metadata=st.one_of(st.none(), st.dictionaries(st.text(max_size=4), st.text(max_size=8), max_size=2)),
    body=st.binary(max_size=96),
)
def test_generated_safetensors_headers_are_read_or_refused(entries, metadata, body):
    header = dict(entries)
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "h.safetensors"
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
        with bounded():
            try:
                with SafetensorsFile(path) as f:
                    for name, info in f.tensors.items():
                        assert len(f.read_bytes(name)) == info.nbytes
            except TvregError:
                pass


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
_VALID_MANIFEST = {
    "name": "science",
    "version": "1.0.0",
    "base_fingerprint": "ab" * 32,
    "kind": "task_vector",
    "format_version": 1,
    "tensors": {"w": {"codec": "exact", "shape": [2], "dtype": "F32", "stored_bytes": 9, "sha256": "0" * 64}},
}


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=64),
        _json.map(json.dumps),
        st.tuples(st.sampled_from(sorted(_VALID_MANIFEST)), _json).map(
            lambda kv: json.dumps({**_VALID_MANIFEST, kv[0]: kv[1]})
        ),
        st.tuples(
            st.sampled_from(["codec", "shape", "dtype", "stored_bytes", "sha256", "params"]), _json
        ).map(
            lambda kv: json.dumps(
                {**_VALID_MANIFEST, "tensors": {"w": {**_VALID_MANIFEST["tensors"]["w"], kv[0]: kv[1]}}}
            )
        ),
    )
)
def test_any_manifest_text_parses_or_is_refused(text):
    try:
        manifest = Manifest.from_json(text, where="fuzzed.tvskill")
    except TvregError:
        return
    # What parses has the types every consumer (install, the registry's columns) relies on.
    assert isinstance(manifest.description, str) and isinstance(manifest.created_by, str)
    assert manifest.license is None or isinstance(manifest.license, str)
    assert isinstance(manifest.source, dict) and isinstance(manifest.dataset_unit, str)
    assert all(isinstance(d, int) and d >= 0 for t in manifest.tensors.values() for d in t.shape)
    assert Manifest.from_json(manifest.to_json(), where="again") == manifest
