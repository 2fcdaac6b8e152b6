"""Compatibility alias: the code lives in :mod:`tvreg._env.modelcard` (model environments)."""

import sys

from ._env import modelcard as _module

sys.modules[__name__] = _module
