"""Compatibility alias: the code lives in :mod:`tvreg._env.store` (model environments)."""

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the checker cannot follow the `sys.modules` swap below
    from ._env.store import *  # noqa: F403

from ._env import store as _module

sys.modules[__name__] = _module
