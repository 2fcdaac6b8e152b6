"""Staged trees beside a model directory: create, fill with links, clean up after killed runs."""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

from .._format.checkpoint import INDEX_NAME
from .._format.fsutil import link_or_copy
from .lockfile import LOCK_NAME
from .verify import TENSORS_NAME


def _staging_dirs(model_dir: Path) -> list[str]:
    return glob.glob(str(model_dir.parent / f".{glob.escape(model_dir.name)}.tvreg-*.staging"))


def _clean_stale_staging(model_dir: Path) -> None:
    """Remove staging trees left by killed installs (their PID is gone)."""
    for path in _staging_dirs(model_dir):
        pid = path.rsplit(".tvreg-", 1)[1].split("-", 1)[0]
        try:
            os.kill(int(pid), 0)
            alive = int(pid) != os.getpid()
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(path, ignore_errors=True)


def _stage_other_files(model_dir: Path, staging: Path, weight_names: set[str]) -> None:
    """Hard-link everything but the weights and lockfile into the staged tree (no copies)."""
    for entry in os.scandir(model_dir):
        if entry.name in weight_names or entry.name in (LOCK_NAME, TENSORS_NAME):
            continue
        if entry.name.endswith(".safetensors") or entry.name == INDEX_NAME:
            continue
        src, dst = Path(entry.path), staging / entry.name
        if entry.is_dir(follow_symlinks=False):
            shutil.copytree(src, dst, symlinks=True, copy_function=link_or_copy)
        elif entry.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            link_or_copy(src, dst)
