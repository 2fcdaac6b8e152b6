"""Helpers the tests import by name (``from helpers import copy_model``).

They live here, not in ``conftest.py``: with a second ``conftest.py`` under
``tests/registry``, ``from conftest import ...`` would find whichever was imported last.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def wait_until(predicate: Callable[[], object], what: str, *, timeout: float = 30.0) -> object:
    """Poll ``predicate`` until it returns something truthy (returned); fail naming ``what`` after ``timeout`` s.

    Why: a fixed sleep is either too short on a loaded 2-core machine (a flaky test) or
    longer than needed everywhere; the deadline only bounds how long a broken build waits.
    """
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)
    return value


def importorskip_unless_ci(module: str, reason: str) -> object:
    """``pytest.importorskip(module)`` locally; under CI (env ``CI`` set) a missing component fails the module.

    Why: a skipped test under CI would hide a missing component, and CI must run everything.
    """
    if not os.environ.get("CI"):
        return pytest.importorskip(module, reason=reason)
    try:
        return __import__(module)
    except ImportError as exc:
        error = str(exc)
    pytest.fail(f"{reason} ({error}); CI must run these tests.", pytrace=False)


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def tree_digest(path: Path) -> dict[str, str]:
    """Every file under ``path`` (relative name → sha256), to prove a directory did not change."""
    out = {}
    for p in sorted(Path(path).rglob("*")):
        if p.is_file():
            out[str(p.relative_to(path))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


def reference_install(general: Path, pre: Path, skills: list[tuple[Path, float]]) -> dict[str, torch.Tensor]:
    """θ_G + Σ ω_k (θ_k − θ_pre) in plain torch, with the documented numerics (fp32, listed order, one rounding)."""
    from tiny_models import read_state_dict

    g, p = read_state_dict(general), read_state_dict(pre)
    fts = [(read_state_dict(d), w) for d, w in skills]
    out = {}
    for name, gt in g.items():
        acc = gt.to(torch.float32)
        for ft, w in fts:
            tau = ft[name].to(torch.float32) - p[name].to(torch.float32)
            w32 = float(torch.tensor(w, dtype=torch.float32))
            rows = tau.shape[0]
            acc = acc.clone()
            acc[:rows] = acc[:rows] + tau * w32
        out[name] = acc.to(gt.dtype)
    return out


_TORCH_PROBE = """
import sys
from tvreg.cli import main
try:
    main(sys.argv[1:], prog_name="tvreg")
except SystemExit as exc:
    code = exc.code
print("torch loaded" if "torch" in sys.modules else "torch not loaded", file=sys.stderr)
sys.exit(code)
"""


def cli_without_torch(*args: object) -> tuple[str, bool]:
    """Run ``tvreg ARGS`` in a fresh interpreter: its stdout, and whether torch stayed unloaded.

    The no-op and help paths promise not to import torch; only a new process can show it.
    """
    proc = subprocess.run(
        [sys.executable, "-c", _TORCH_PROBE, *map(str, args)], env=subprocess_env(), capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, "torch not loaded" in proc.stderr


def recoded(raw, params: dict) -> tuple[bytes, dict]:
    """A blob's raw (decompressed) stream framed again as tvreg frames it, with ``params`` updated to the new frames:
    how the codec tests hand a damaged stream to the decoder and to the registry's verification."""
    from tvreg._format.codecs import zstd_frame

    data, stream = zstd_frame.compress_stream(memoryview(raw.tobytes()))
    return data, {**{k: v for k, v in params.items() if k not in ("frames", "chunk_bytes")}, **stream}


def damaged_blobs_refused_alike(
    codec: str,
    raw,
    params: dict,
    shape: tuple[int, ...],
    decode: Callable[[bytes, dict], object],
    *,
    rounds: int,
    seed: int,
    same_message: bool,
) -> int:
    """Change 1-2 random bytes of ``raw`` ``rounds`` times; each time ``decode(data, params)`` and
    ``verify_stored`` must both accept or both refuse (with ``same_message``, in the same words).
    Returns how many damaged blobs were refused."""
    import numpy as np

    from tvreg._format.codecs.verify import verify_stored
    from tvreg.errors import CorruptArtifact

    rng = np.random.default_rng(seed)
    refused = 0
    for _ in range(rounds):
        bad = raw.copy()
        at = rng.integers(0, bad.size, size=rng.integers(1, 3))
        bad[at] = rng.integers(0, 256, size=at.size, dtype=np.uint8)
        data, changed = recoded(bad, params)
        outcomes: list[str | None] = []
        for check in (
            lambda d=data, c=changed: decode(d, c),
            lambda d=data, c=changed: verify_stored(codec, d, shape, c, where="w"),
        ):
            try:
                check()
                outcomes.append(None)
            except CorruptArtifact as exc:
                outcomes.append(str(exc))
        if same_message:
            assert outcomes[0] == outcomes[1], outcomes
        else:
            assert (outcomes[0] is None) == (outcomes[1] is None), outcomes
        refused += outcomes[0] is not None
    return refused
