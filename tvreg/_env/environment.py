"""Model environments: a model directory of G that tvreg manages, with its ``tvreg.lock``.

``init`` records which base θ_pre the general model G derives from (by fingerprint),
|G| (the size of G's instruction-tuning set, for the default ω = |D|/|G|), and keeps
G's pristine weights so every later install can recompute from them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from .._format.checkpoint import Checkpoint
from .._format.fingerprint import fingerprint, fingerprint_of_hashes, remember, short, tensor_hashes
from .._util.progress import NULL_PROGRESS, Progress
from .._version import __version__
from ..errors import IncompatibleBase, LockHeld, ModelEnvironmentError, TensorMismatch, TvregError
from .lockfile import LOCK_NAME, Lock, read_lock, write_lock
from .store import keep_pristine, pristine_path


def row_extension(tau_shape: tuple[int, ...], g_shape: tuple[int, ...]) -> int | None:
    """How many extra leading rows G has over τ: 0 if shapes match, None if incompatible.

    A general model that added tokens (chat markers, padding) has embedding and
    output matrices with more rows than θ_pre's; τ applies to the rows both share.
    """
    if tau_shape == g_shape:
        return 0
    if len(tau_shape) == len(g_shape) >= 1 and tau_shape[1:] == g_shape[1:] and tau_shape[0] < g_shape[0]:
        return g_shape[0] - tau_shape[0]
    return None


def check_general_against_base(general: Checkpoint, base: Checkpoint) -> None:
    """Refuse a G whose tensors do not line up with θ_pre's, naming the first culprit."""
    g, b = general.infos(), base.infos()
    for name in sorted(set(b) - set(g)):
        raise TensorMismatch(f"the general model lacks tensor `{name}` of the base model.", tensor=name)
    for name in sorted(set(g) - set(b)):
        raise TensorMismatch(
            f"the general model has tensor `{name}`, which the base model lacks.", tensor=name
        )
    for name in sorted(b):
        if row_extension(b[name].shape, g[name].shape) is None:
            raise TensorMismatch(
                f"tensor `{name}` has shape {list(g[name].shape)} in the general model but "
                f"{list(b[name].shape)} in the base model.",
                tensor=name,
            )


@contextlib.contextmanager
def lock_model(model_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on a model environment, or name the process that holds it.

    The lock file sits beside the directory, not in it, because installs swap the
    whole directory.
    """
    model_dir = Path(model_dir).resolve()
    lock_path = model_dir.parent / f".{model_dir.name}.tvreg.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise LockHeld(
                f"`{model_dir}` is being changed by tvreg process {holder}; wait for it to finish.",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def require_lock(model_dir: Path) -> Lock:
    lock = read_lock(model_dir)
    if lock is None:
        raise ModelEnvironmentError(
            f"`{model_dir}` is not a tvreg model environment (no `{LOCK_NAME}`).",
            hints=[
                f"run `tvreg init {model_dir} --base PRE --general-size N` first, "
                "or pass `--base` and `--general-size` to install"
            ],
        )
    return lock


def open_pristine(lock: Lock, model_dir: Path | None = None, *, progress: Progress = NULL_PROGRESS) -> Checkpoint:
    """Pristine G from this machine's store, found by the fingerprint the lock records.

    A lock copied from another machine names G only by fingerprint. When the store lacks
    it but the model directory itself still holds G's weights (a fresh copy of G with the
    lock dropped in), they are kept in the store first, so that order works too.

    Raises:
        ModelEnvironmentError: G is in neither place; the hint is the one command that fixes it.
    """
    where = pristine_path(lock.general_fingerprint)
    if not where.is_dir() and model_dir is not None and _holds_general(model_dir, lock):
        with Checkpoint.open(model_dir) as general:
            keep_pristine(general, lock.general_fingerprint, progress=progress)
    if not where.is_dir():
        known = f" (`{lock.general_hub_id}`)" if lock.general_hub_id else ""
        into = f" --into {model_dir}" if model_dir is not None else ""
        raise ModelEnvironmentError(
            f"the general model G{known} with fingerprint {lock.general_fingerprint} is not in this "
            f"machine's store (`{where.parent}`).",
            hints=[
                f"point tvreg at an untouched copy of G: `tvreg sync{into} --general PATH_TO_G` "
                "(it is checked against the fingerprint and kept in the store)"
            ],
        )
    return Checkpoint.open(where)


def _holds_general(model_dir: Path, lock: Lock) -> bool:
    """Whether ``model_dir``'s weights are G's own (stat-cached hashes; no weights: False)."""
    try:
        with Checkpoint.open(model_dir) as ckpt:
            return fingerprint_of_hashes(tensor_hashes(ckpt)) == lock.general_fingerprint
    except TvregError:
        return False


def adopt_general(path: str | os.PathLike[str], lock: Lock, *, progress: Progress = NULL_PROGRESS) -> Path:
    """Keep a copy of G found at ``path`` in the store, if it is the G ``lock`` names.

    Raises:
        IncompatibleBase: the weights at ``path`` have another fingerprint (both named).
    """
    with Checkpoint.open(path) as general:
        hashes = tensor_hashes(general, progress=progress)
        found = fingerprint_of_hashes(hashes)
        if found != lock.general_fingerprint:
            raise IncompatibleBase(
                f"`{path}` is not the general model this lock was made on: its weights fingerprint is "
                f"{found}, the lock records {lock.general_fingerprint}.",
                expected=lock.general_fingerprint,
                found=found,
                hints=["give an untouched copy of G (the weights `tvreg init` was run on)"],
            )
        kept = keep_pristine(general, found, progress=progress)
        for handle in general.handles:
            remember(kept / handle.path.name, {n: hashes[n] for n in handle.tensors})
    return kept


def plan_environment(
    model_dir: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    base_fingerprint: str | None = None,
    general_size: int | None = None,
    general_size_unit: str = "examples",
    progress: Progress = NULL_PROGRESS,
) -> Lock:
    """The lock ``init`` would leave in ``model_dir``, computed without writing anything (reads G and θ_pre).

    Raises:
        ModelEnvironmentError: neither base given, or the base changes under installed skills.
        TensorMismatch: G's tensors do not match θ_pre's.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelEnvironmentError(f"`{model_dir}` is not a directory.")
    if base_fingerprint is not None and not re.fullmatch(r"[0-9a-f]{64}", base_fingerprint):
        raise ModelEnvironmentError(f"`{base_fingerprint}` is not a fingerprint (64 hex digits).")
    if general_size is not None and general_size <= 0:
        raise ModelEnvironmentError(f"the general-model dataset size must be positive, not {general_size}.")
    existing = read_lock(model_dir)
    if base is not None:
        with Checkpoint.open(base) as pre:
            base_fingerprint = fingerprint(pre, progress=progress)
            with Checkpoint.open(model_dir) as general:
                check_general_against_base(general, pre)
    if existing is not None:
        if base_fingerprint and base_fingerprint != existing.base_fingerprint and existing.skills:
            raise ModelEnvironmentError(
                f"`{model_dir}` already has skills installed for base {short(existing.base_fingerprint)}; "
                f"it cannot be switched to base {short(base_fingerprint)}.",
                hints=["uninstall its skills first"],
            )
        return replace(
            existing,
            base_fingerprint=base_fingerprint or existing.base_fingerprint,
            general_size=general_size if general_size is not None else existing.general_size,
            general_size_unit=general_size_unit if general_size is not None else existing.general_size_unit,
        )
    if base_fingerprint is None:
        raise ModelEnvironmentError(
            f"tvreg needs to know which base model `{model_dir}` derives from.",
            hints=["pass `--base PRE` (a model directory or Hub id) or `--base-fingerprint HEX`"],
        )
    with Checkpoint.open(model_dir) as general:
        gfp = fingerprint_of_hashes(tensor_hashes(general, progress=progress))
    hub_id, revision = general_hub_id(model_dir)
    return Lock(
        base_fingerprint=base_fingerprint,
        general_fingerprint=gfp,
        general_hub_id=hub_id,
        general_revision=revision,
        general_size=general_size,
        general_size_unit=general_size_unit,
        output_fingerprint=gfp,
        tvreg_version=__version__,
    )


def commit_environment(model_dir: Path, lock: Lock, *, progress: Progress = NULL_PROGRESS) -> Lock:
    """Write what :func:`plan_environment` computed: keep pristine G in the store, then the lock.

    Caller holds :func:`lock_model`. G is kept only while ``model_dir`` still holds G's own
    weights (a fresh environment, or a copy of G with a lock dropped in).
    """
    if not pristine_path(lock.general_fingerprint).is_dir() and _holds_general(model_dir, lock):
        with Checkpoint.open(model_dir) as general:
            hashes = tensor_hashes(general, progress=progress)
            kept = keep_pristine(general, lock.general_fingerprint, progress=progress)
            for handle in general.handles:
                remember(kept / handle.path.name, {n: hashes[n] for n in handle.tensors})
    if read_lock(model_dir) != lock:
        write_lock(model_dir, lock)
    return lock


def general_hub_id(model_dir: Path) -> tuple[str | None, str | None]:
    """G's Hugging Face Hub id (from ``config.json``'s ``_name_or_path``) and revision, when recorded."""
    try:
        data = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    name = data.get("_name_or_path")
    revision = data.get("_commit_hash")
    ok = isinstance(name, str) and re.match(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", name)
    return (name if ok else None), (revision if ok and isinstance(revision, str) else None)


def init_environment(
    model_dir: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    base_fingerprint: str | None = None,
    general_size: int | None = None,
    general_size_unit: str = "examples",
    progress: Progress = NULL_PROGRESS,
) -> Lock:
    """Make ``model_dir`` (a model directory of G) a tvreg model environment.

    Run on a copy of G that already holds a ``tvreg.lock`` (copied from another machine),
    it keeps G's pristine copy in this machine's store and leaves the lock as it is.

    Args:
        model_dir: G's Hugging Face model directory; its weights become pristine G.
        base: θ_pre, to fingerprint and to check G's tensors against.
        base_fingerprint: θ_pre's fingerprint, when θ_pre itself is not at hand.
        general_size: |G|, the number of examples (or tokens) G was instruction-tuned on.

    Returns:
        The written :class:`~tvreg._env.lockfile.Lock`.

    Raises:
        ModelEnvironmentError: neither base given, or the base changes under installed skills.
        TensorMismatch: G's tensors do not match θ_pre's.
    """
    model_dir = Path(model_dir)
    with lock_model(model_dir):
        lock = plan_environment(
            model_dir,
            base=base,
            base_fingerprint=base_fingerprint,
            general_size=general_size,
            general_size_unit=general_size_unit,
            progress=progress,
        )
        return commit_environment(model_dir, lock, progress=progress)
