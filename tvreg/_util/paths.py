"""Where tvreg keeps its files, following the XDG base directory convention.

``TVREG_CACHE_DIR``, ``TVREG_DATA_DIR`` and ``TVREG_CONFIG_DIR`` override the defaults, so tests and CI
can sandbox everything in a temporary directory.
"""

from __future__ import annotations

import os
from pathlib import Path


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value and os.path.isabs(value) else Path.home() / fallback


def cache_dir() -> Path:
    """Disposable data (fingerprint cache); safe to delete at any time."""
    override = os.environ.get("TVREG_CACHE_DIR")
    return Path(override) if override else _xdg("XDG_CACHE_HOME", ".cache") / "tvreg"


def data_dir() -> Path:
    """Data that must survive: pristine copies of general models for uninstall."""
    override = os.environ.get("TVREG_DATA_DIR")
    return Path(override) if override else _xdg("XDG_DATA_HOME", ".local/share") / "tvreg"


def config_dir() -> Path:
    """Settings the user wrote (registry URL and token in ``config.toml``)."""
    override = os.environ.get("TVREG_CONFIG_DIR")
    return Path(override) if override else _xdg("XDG_CONFIG_HOME", ".config") / "tvreg"
