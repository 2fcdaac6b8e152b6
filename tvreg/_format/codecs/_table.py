"""The table of codecs by name (``tvreg._format.codecs`` loads it on first use; see the package docstring)."""

from __future__ import annotations

from collections.abc import Mapping

from ...errors import InvalidCodecOption, InvalidManifest
from .auto import AutoCodec
from .base import Codec
from .bf16 import Bf16Codec
from .exact import ExactCodec
from .int4 import Int4Codec
from .int8 import Int8Codec
from .lowrank import LowRankCodec
from .sign import SignCodec
from .sparse import SparseCodec

CODEC_TYPES: dict[str, type[Codec]] = {
    c.name: c for c in (ExactCodec, Bf16Codec, Int8Codec, Int4Codec, SignCodec, SparseCodec, LowRankCodec, AutoCodec)
}
CODECS: dict[str, Codec] = {name: cls() for name, cls in CODEC_TYPES.items() if name != "auto"}
"""The codecs a manifest may name (``auto`` only chooses among them at build time)."""


def get_codec(name: str) -> Codec:
    """Return the codec called ``name`` (for decoding: its parameters come from the manifest).

    Raises:
        InvalidManifest: no codec of that name exists in this tvreg version.
    """
    try:
        return CODECS[name]
    except (KeyError, TypeError):
        raise InvalidManifest(
            f"unknown codec `{name}`; this tvreg knows {', '.join(sorted(CODECS))}.",
            hints=["upgrade tvreg if the skill was built by a newer version"],
        ) from None


def make_codec(name: str, options: Mapping[str, object] | None = None) -> Codec:
    """A codec configured with build-time ``options`` (strings from the CLI are parsed).

    Raises:
        InvalidCodecOption: unknown codec, unknown parameter or a value out of range.
    """
    cls = CODEC_TYPES.get(name)
    if cls is None:
        raise InvalidCodecOption(
            f"unknown codec `{name}`; choose one of {', '.join(CODEC_TYPES)}.",
            hints=["`exact` is lossless; `auto` picks per tensor within `--max-rel-error`"],
        )
    return cls(**dict(options or {}))


