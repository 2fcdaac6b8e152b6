"""The ``tvreg`` command line: a thin click layer over the library, one module per area.

Errors from the library (:class:`~tvreg.errors.TvregError`) are printed as
``error: <sentence>`` plus ``hint:`` lines, with the family's exit code (1 for failures,
2 for bad usage, 130 for interrupts) and no traceback unless ``--debug``.
"""

from . import cache, check, environment_cmds, export, keys, models, registry, skills, sweep  # noqa: F401  (each registers its commands)
from .app import RichProgress, main

__all__ = ["RichProgress", "main"]
