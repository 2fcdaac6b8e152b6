"""Codecs that store task-vector tensors compactly, looked up by name.

One file per codec; each is a :class:`~tvreg.codecs.base.Codec`. The artifact
manifest records the codec of every tensor, so codecs can be mixed in one skill.
"""

from __future__ import annotations

from ..errors import InvalidManifest
from .base import Codec, Encoded
from .exact import ExactCodec

CODECS: dict[str, Codec] = {c.name: c for c in (ExactCodec(),)}


def get_codec(name: str) -> Codec:
    """Return the codec called ``name``.

    Raises:
        InvalidManifest: no codec of that name exists in this tvreg version.
    """
    try:
        return CODECS[name]
    except KeyError:
        raise InvalidManifest(
            f"unknown codec `{name}`; this tvreg knows {', '.join(sorted(CODECS))}.",
            hints=["upgrade tvreg if the skill was built by a newer version"],
        ) from None


__all__ = ["CODECS", "Codec", "Encoded", "get_codec"]
