"""``tvreg verify``: do the weights in a model environment match what ``tvreg.lock`` records?

Every install writes ``tvreg.tensors.json`` beside the lock: the (dtype, shape,
sha256) of each tensor it wrote, whose fingerprint is the lock's
``output_fingerprint``. Keeping the per-tensor hashes out of the lock keeps the lock
short and its diffs about skills; keeping them at all is what lets ``verify`` name
exactly which tensors changed, by re-reading every byte (never the hash cache).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .._format.checkpoint import Checkpoint
from .._format.fingerprint import fingerprint_of_hashes, short, tensor_hashes
from .._format.fsutil import atomic_write_text
from .._util.progress import NULL_PROGRESS, Progress
from ..errors import ModelEnvironmentError
from .environment import require_lock
from .store import pristine_path

TENSORS_NAME = "tvreg.tensors.json"

Hashes = dict[str, tuple[str, list[int], str]]


def write_tensor_hashes(directory: Path, hashes: Hashes) -> None:
    """Record the per-tensor hashes of the weights just written (sorted, one tensor per line)."""
    lines = ",\n".join(
        f"  {json.dumps(name)}: {json.dumps([dtype, list(shape), digest])}"
        for name, (dtype, shape, digest) in sorted(hashes.items())
    )
    head = json.dumps({"fingerprint": fingerprint_of_hashes(hashes)})[:-1]
    text = f'{head}, "tensors": {{\n{lines}\n}}}}\n'
    atomic_write_text(directory / TENSORS_NAME, text)


def read_tensor_hashes(directory: Path) -> Hashes | None:
    path = directory / TENSORS_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {k: (v[0], list(v[1]), v[2]) for k, v in data["tensors"].items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelEnvironmentError(f"`{path}` is not a valid tvreg tensor record ({exc}).") from exc


@dataclass(frozen=True)
class TensorDiff:
    """One tensor that is not what the lock records: ``changed``, ``missing`` or ``unexpected``."""

    tensor: str
    problem: str
    expected: str | None = None
    found: str | None = None


@dataclass(frozen=True)
class VerifyResult:
    """``ok`` when the weights' fingerprint equals the lock's; otherwise ``diffs`` names each tensor."""

    model_dir: Path
    expected: str
    found: str
    diffs: tuple[TensorDiff, ...]

    @property
    def ok(self) -> bool:
        return self.expected == self.found


def verify(model_dir: str | os.PathLike[str], *, progress: Progress = NULL_PROGRESS) -> VerifyResult:
    """Re-hash every tensor of ``model_dir`` and compare with ``tvreg.lock`` and ``tvreg.tensors.json``.

    Returns:
        A :class:`VerifyResult`; a mismatch is a result, not an exception, so callers can
        report it (the CLI exits 1).

    Raises:
        ModelEnvironmentError: no lock, or the lock was never materialised (``tvreg lock``
            without ``tvreg sync``).
    """
    model_dir = Path(model_dir)
    lock = require_lock(model_dir)
    if lock.output_fingerprint is None:
        raise ModelEnvironmentError(
            f"`{model_dir}/tvreg.lock` has no weights fingerprint yet: it was locked but never synced.",
            hints=[f"materialise it: `tvreg sync --into {model_dir}`"],
        )
    with Checkpoint.open(model_dir) as ckpt:
        found = tensor_hashes(ckpt, progress=progress, fresh=True)
    expected = read_tensor_hashes(model_dir)
    if expected is None and lock.output_fingerprint == lock.general_fingerprint:
        with Checkpoint.open(pristine_path(lock.general_fingerprint)) as pristine:
            expected = tensor_hashes(pristine, progress=progress)
    if expected is not None and fingerprint_of_hashes(expected) != lock.output_fingerprint:
        expected = None
    diffs: list[TensorDiff] = []
    if expected is not None:
        for name in sorted(set(expected) | set(found)):
            want, got = expected.get(name), found.get(name)
            if want is None:
                diffs.append(TensorDiff(name, "unexpected", None, _describe(got)))
            elif got is None:
                diffs.append(TensorDiff(name, "missing", _describe(want), None))
            elif tuple(want[:2]) != tuple(got[:2]) or want[2] != got[2]:
                diffs.append(TensorDiff(name, "changed", _describe(want), _describe(got)))
    return VerifyResult(model_dir, lock.output_fingerprint, fingerprint_of_hashes(found), tuple(diffs))


def _describe(entry: tuple[str, list[int], str] | None) -> str | None:
    if entry is None:
        return None
    dtype, shape, digest = entry
    return f"{dtype}{list(shape)} sha256:{digest[:12]}"


def describe_result(result: VerifyResult) -> str:
    """One sentence for the user about a failed verification."""
    if result.diffs:
        named = ", ".join(f"`{d.tensor}` ({d.problem})" for d in result.diffs[:10])
        more = f" and {len(result.diffs) - 10} more" if len(result.diffs) > 10 else ""
        return f"{len(result.diffs)} tensor(s) of `{result.model_dir}` differ from tvreg.lock: {named}{more}."
    return (
        f"the weights of `{result.model_dir}` hash to {short(result.found)}, not {short(result.expected)} as "
        "tvreg.lock records (no per-tensor record to say which tensors changed)."
    )
