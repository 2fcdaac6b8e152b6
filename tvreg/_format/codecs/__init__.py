"""Codecs that store task-vector tensors compactly, looked up by name.

One file per codec; each is a :class:`~tvreg._format.codecs.base.Codec`. The artifact
manifest records the codec of every tensor, so codecs can be mixed in one skill.
``get_codec`` answers the decoder (default parameters; everything it needs is in the
manifest); ``make_codec`` builds a configured encoder from user parameters.

The table loads lazily (PEP 562): importing a torch-free submodule such as
:mod:`tvreg._format.codecs.report` (the compression report ``tvreg info`` prints for a registry
skill) does not import the codecs, and so not torch; and the codecs that look others
up by name (``auto``, ``lowrank``) do so at call time without an import cycle.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from ._table import CODEC_TYPES, CODECS, get_codec, make_codec
    from .base import Codec, Encoded, Option, relative_error

__all__ = ["CODECS", "CODEC_TYPES", "Codec", "Encoded", "Option", "get_codec", "make_codec", "relative_error"]

_SOURCES = {"CODECS": "_table", "CODEC_TYPES": "_table", "get_codec": "_table", "make_codec": "_table",
            "Codec": "base", "Encoded": "base", "Option": "base", "relative_error": "base"}


def __getattr__(name: str) -> _typing.Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
