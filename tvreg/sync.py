"""Compatibility alias: the code lives in :mod:`tvreg._env.operations` (model environments)."""

import sys

from ._env import operations as _module

sys.modules[__name__] = _module
