"""Compatibility alias: the code lives in :mod:`tvreg._env.environment` (model environments)."""

import sys

from ._env import environment as _module

sys.modules[__name__] = _module
