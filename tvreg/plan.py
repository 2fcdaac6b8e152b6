"""Compatibility alias: the code lives in :mod:`tvreg._env.plan` (model environments)."""

import sys

from ._env import plan as _module

sys.modules[__name__] = _module
