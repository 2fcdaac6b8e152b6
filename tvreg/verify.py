"""Compatibility alias: the code lives in :mod:`tvreg._env.verify` (model environments)."""

import sys

from ._env import verify as _module

sys.modules[__name__] = _module
