"""Compatibility alias: the code lives in :mod:`tvreg._env.modelcard` (model environments)."""

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the checker cannot follow the `sys.modules` swap below
    from ._env.modelcard import *  # noqa: F403

from ._env import modelcard as _module

sys.modules[__name__] = _module
