"""Decode bombs (issue 18, class 1): a sub-kilobyte artifact costs a few MiB, on the registry and the client.

A ``sparse`` tensor with no kept entries or a ``lowrank`` one of rank 0 stores no bytes
whatever shape it declares; zero bitmaps compress 32768:1. Each artifact below is about
1 KiB (at most 1.5 KiB) and declares a 2^27-element tensor (512 MiB as fp32). The registry verifies
uploads without expanding them (``tvreg._format.codecs.verify``), compares shapes with the
first publish of the same base fingerprint, and refuses anything over the decode budget;
``tvreg check`` compares shapes with the model's header before decoding anything. Peak
RSS is read from ``/proc/<pid>/status`` (``VmHWM``, reset through ``clear_refs``) for the
server and from ``wait4`` for a client subprocess — memory, never time.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard
from helpers import copy_model, subprocess_env

CORPUS = Path(__file__).resolve().parent / "corpus"
sys.path.insert(0, str(CORPUS))
import make_corpus  # noqa: E402
from make_corpus import coded  # noqa: E402

ROWS, COLS = 2**13, 2**14
N = ROWS * COLS
DENSE = 4 * N
BOUND = 48 * 2**20  # "a few MiB" plus the allocator's slack, against 512 MiB dense


def _zeros_frame(n: int) -> bytes:
    return zstandard.ZstdCompressor(level=19, write_content_size=True).compress(bytes(n))


def bombs(shape: list[int] = [ROWS, COLS], base: str = "ab" * 32) -> dict[str, bytes]:  # noqa: B006
    """Valid, all-zero skills of a huge tensor, each stored in about 1 KiB; versions 1.0.1, 1.0.2, ..."""
    n = shape[0] * shape[1]
    versions = iter(range(1, 100))

    def coded(*args: object) -> bytes:
        return make_corpus.coded(*args, base_fingerprint=base, version=f"1.0.{next(versions)}")

    bitmap = _zeros_frame(n // 8)
    return {
        "sparse-empty": coded(b"", shape, "sparse", {"k": 0, "values": "bf16", "index": "delta", "index_bytes": 0}),
        "lowrank-rank-0": coded(b"", shape, "lowrank", {"rank": 0, "planes": "exp"}),
        "exact-zero-bitmap": coded(bitmap, shape, "exact", {"zeros": "bitmap", "planes": "exp", "nnz": [0]}),
        "bf16-zero-bitmap": coded(bitmap, shape, "bf16", {"zeros": "bitmap", "planes": "exp", "nnz": [0]}),
        "int8-zero-bitmap": (
            lambda head: coded(
                head + bitmap,
                shape,
                "int8",
                {"group": shape[1], "scales": "fp16", "zeros": "bitmap", "planes": "none", "nnz": [0],
                 "scale_frame": len(head)},
            )
        )(_zeros_frame(2 * shape[0])),
        "sign-zero-scales": coded(  # all signs +, every row's scale 0: a zero τ in 1 bit an entry
            _zeros_frame(4 * shape[0] + n // 8), shape, "sign", {"group": shape[1], "scales": "fp32"}
        ),
    }  # fmt: skip


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(key)


def _reset_peak(pid: int) -> int:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    return _status(pid, "VmHWM")


def test_the_bombs_are_small_and_decode_to_their_declared_shape(tmp_path):
    from tvreg._format.artifact import Artifact

    for name, data in bombs([64, 128]).items():
        path = tmp_path / f"{name}.tvskill"
        path.write_bytes(data)
        with Artifact(path) as art:
            tau = art.decode("layer.weight")
            assert tuple(tau.shape) == (64, 128) and not tau.any(), name
            art.verify("layer.weight")
    sizes = {name: len(data) for name, data in bombs().items()}
    assert max(sizes.values()) < 1536, sizes


@pytest.mark.parametrize("registry", ["sqlite"], indirect=True)
def test_the_registry_verifies_decode_bombs_in_a_few_mib(registry, api):
    token = registry.make_user("alice")
    pid = registry.proc.pid
    warmup = api.publish(token, "alice/science", "1.0.0", (CORPUS / "valid-small.tvskill").read_bytes())
    assert warmup.status_code == 201, warmup.text
    before = _reset_peak(pid)
    for i, (name, data) in enumerate(bombs(base="cd" * 32).items(), start=1):
        r = api.publish(token, "alice/science", f"1.0.{i}", data)
        assert r.status_code == 201, (name, r.text)
    grown = _status(pid, "VmHWM") - before
    assert grown < BOUND, f"the server's peak RSS grew {grown >> 20} MiB verifying {DENSE >> 20} MiB bombs"


@pytest.mark.parametrize("registry", ["sqlite"], indirect=True)
def test_the_registry_refuses_shapes_its_base_never_had_and_sizes_over_its_budget(registry, api):
    token = registry.make_user("alice")
    pid = registry.proc.pid
    before = _reset_peak(pid)
    for name in ("sparse-empty-huge-shape", "lowrank-rank-0-huge-shape", "int8-huge-shape"):
        r = api.publish(token, "alice/science", "1.0.0", (CORPUS / f"{name}.tvskill").read_bytes())
        assert r.status_code == 400 and "decode memory budget" in r.json()["error"]["message"], r.text
    first = api.publish(token, "alice/science", "1.0.0", (CORPUS / "valid-small.tvskill").read_bytes())
    assert first.status_code == 201, first.text
    # Same base fingerprint as valid-small, whose `layer.weight` is [2, 3].
    r = api.publish(token, "alice/science", "1.0.1", bombs()["sparse-empty"])
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"] == (
        "`alice/science@1.0.1` cannot be published: tensor `layer.weight` has shape [8192, 16384], but base "
        "abababababab's is [2, 3] (as its first published skill records it)."
    )
    assert _status(pid, "VmHWM") - before < BOUND
    assert registry.sql("SELECT version FROM versions") == [("1.0.0",)]
    assert registry.staged_files() == []


def _peak_of(args: list[str], env: dict[str, str]) -> tuple[int, int, str]:
    """Exit code, peak RSS (bytes) and stderr of ``tvreg ARGS`` in its own process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvreg.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024, err


def test_tvreg_check_refuses_a_decode_bomb_before_decoding_it(family, tmp_path):
    env = subprocess_env()
    model = copy_model(family.general, tmp_path / "mymodel")
    subprocess.run(
        [sys.executable, "-m", "tvreg.cli", "init", str(model), "--base", str(family.pre), "--general-size", "1000"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    base = json.loads((model / "tvreg.lock").read_text())["base_fingerprint"]
    target = "model.layers.0.mlp.down_proj.weight"
    # The same tiny bomb, aimed at a real tensor, with the model's true shape (harmless) and a huge one.
    honest, bomb = tmp_path / "honest.tvskill", tmp_path / "bomb.tvskill"
    from tvreg._format.checkpoint import Checkpoint

    with Checkpoint.open(model) as ckpt:
        true_shape = list(ckpt.info(target).shape)
    for path, shape in ((honest, true_shape), (bomb, [ROWS, COLS])):
        data = coded(b"", shape, "sparse", {"k": 0, "values": "bf16", "index": "delta", "index_bytes": 0})
        path.write_bytes(_rebase(data, base, target))
    code, calm, err = _peak_of(["check", str(honest), "--into", str(model)], env)
    assert code == 0, err
    code, peak, err = _peak_of(["check", str(bomb), "--into", str(model)], env)
    assert code == 1 and "Traceback" not in err, err
    assert err.splitlines()[0] == (
        f"error: skill `science@1.0.0` has tensor `{target}` with shape [8192, 16384], "
        f"but this model's is {true_shape}."
    )
    assert peak - calm < BOUND, f"`tvreg check` peaked {(peak - calm) >> 20} MiB above an honest check"


def _rebase(data: bytes, base: str, tensor: str) -> bytes:
    """``data`` (a corpus skill) with another base fingerprint and its tensor renamed; digests kept valid."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    manifest = json.loads(header["__metadata__"]["tvreg.manifest"])
    manifest["base_fingerprint"] = base
    manifest["tensors"] = {tensor: manifest["tensors"]["layer.weight"]}
    header[tensor] = header.pop("layer.weight")
    header["__metadata__"]["tvreg.manifest"] = json.dumps(manifest, separators=(",", ":"))
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % 8)
    body = data[8 + n :]
    assert hashlib.sha256(body).hexdigest() == manifest["tensors"][tensor]["sha256"]
    return len(raw).to_bytes(8, "little") + raw + body
