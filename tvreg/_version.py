"""The version of tvreg, in one place: ``pyproject.toml`` reads it from here (``dynamic = ["version"]``).

Modules that need it import ``from ._version import __version__``, never ``from . import
__version__``, so no module loads the package ``__init__`` for a string.
"""

__version__ = "0.1.0"
