"""Compatibility alias: the code lives in :mod:`tvreg._env.store` (model environments)."""

import sys

from ._env import store as _module

sys.modules[__name__] = _module
