"""Model environments: a model directory of G that tvreg manages, with its ``tvreg.lock``.

``init`` records which base θ_pre the general model G derives from (by fingerprint),
|G| (the size of G's instruction-tuning set, for the default ω = |D|/|G|), and keeps
G's pristine weights so every later install can recompute from them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path

from ._version import __version__
from .checkpoint import Checkpoint
from .errors import LockHeld, ModelEnvironmentError, TensorMismatch
from .fingerprint import fingerprint, fingerprint_of_hashes, remember, short, tensor_hashes
from .lockfile import LOCK_NAME, Lock, read_lock, write_lock
from .progress import NULL_PROGRESS, Progress
from .store import keep_pristine


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


def open_pristine(lock: Lock) -> Checkpoint:
    """G's untouched weights that every install recomputes from, or a sentence saying they are gone.

    They live in this machine's data directory, so a model directory copied to another
    machine (or a wiped ``$TVREG_DATA_DIR``) has a lock that points at nothing.
    """
    if not Path(lock.pristine).exists():
        raise ModelEnvironmentError(
            f"the pristine copy of the general model (fingerprint {short(lock.general_fingerprint)}) is not at "
            f"`{lock.pristine}`.",
            hints=[
                "restore it there, or run `tvreg init DIR --base PRE` on an untouched copy of the general model "
                "and copy this tvreg.lock into DIR"
            ],
        )
    return Checkpoint.open(lock.pristine)


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

    Args:
        model_dir: G's Hugging Face model directory; its weights become pristine G.
        base: θ_pre, to fingerprint and to check G's tensors against.
        base_fingerprint: θ_pre's fingerprint, when θ_pre itself is not at hand.
        general_size: |G|, the number of examples (or tokens) G was instruction-tuned on.

    Returns:
        The written :class:`~tvreg.lockfile.Lock`.

    Raises:
        ModelEnvironmentError: neither base given, or the base changes under installed skills.
        TensorMismatch: G's tensors do not match θ_pre's.
    """
    model_dir = Path(model_dir)
    if base_fingerprint is not None and not re.fullmatch(r"[0-9a-f]{64}", base_fingerprint):
        raise ModelEnvironmentError(f"`{base_fingerprint}` is not a fingerprint (64 hex digits).")
    if general_size is not None and general_size <= 0:
        raise ModelEnvironmentError(f"the general-model dataset size must be positive, not {general_size}.")
    with lock_model(model_dir):
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
            from dataclasses import replace

            lock = replace(
                existing,
                base_fingerprint=base_fingerprint or existing.base_fingerprint,
                general_size=general_size if general_size is not None else existing.general_size,
                general_size_unit=general_size_unit
                if general_size is not None
                else existing.general_size_unit,
            )
        else:
            if base_fingerprint is None:
                raise ModelEnvironmentError(
                    f"tvreg needs to know which base model `{model_dir}` derives from.",
                    hints=["pass `--base PRE` (a model directory or Hub id) or `--base-fingerprint HEX`"],
                )
            with Checkpoint.open(model_dir) as general:
                hashes = tensor_hashes(general, progress=progress)
                gfp = fingerprint_of_hashes(hashes)
                pristine = keep_pristine(general, gfp, progress=progress)
                for handle in general.handles:
                    remember(pristine / handle.path.name, {n: hashes[n] for n in handle.tensors})
            lock = Lock(
                base_fingerprint=base_fingerprint,
                general_fingerprint=gfp,
                pristine=str(pristine),
                general_size=general_size,
                general_size_unit=general_size_unit,
                output_fingerprint=gfp,
                tvreg_version=__version__,
            )
        write_lock(model_dir, lock)
        return lock
