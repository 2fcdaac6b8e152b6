"""Compatibility alias: the code lives in :mod:`tvreg._env.lockfile` (model environments)."""

import sys

from ._env import lockfile as _module

sys.modules[__name__] = _module
