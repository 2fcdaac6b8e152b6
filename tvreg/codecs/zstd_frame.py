"""Bounded zstandard decompression: the declared size is a hard cap (no zstd bomb)."""

from __future__ import annotations

import io

import zstandard

from ..errors import CorruptArtifact

_LEVEL = 1


def compress(data: bytes | memoryview) -> bytes:
    return zstandard.ZstdCompressor(level=_LEVEL, write_content_size=True).compress(data)


def check_declared_size(data: bytes | memoryview, expected: int, *, where: str) -> None:
    """Refuse a frame whose header does not declare exactly ``expected`` bytes of content.

    Called before the output buffer is allocated, so that a frame and a manifest that
    disagree cost no memory. A frame without a content size is checked while it is
    decompressed (:func:`decompress_into` never writes past ``expected``).
    """
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise CorruptArtifact(f"tensor `{where}` is not a valid zstd frame ({exc}).") from exc
    if declared not in (-1, expected):
        raise CorruptArtifact(
            f"tensor `{where}` decompresses to {declared} bytes, but the manifest declares {expected}."
        )


def decompress_into(data: bytes | memoryview, out: memoryview, *, where: str) -> None:
    """Decompress one frame into ``out``, which must be filled exactly.

    The frame's own content-size field is checked before any allocation, and the
    stream is read into the preallocated buffer, so a frame that claims or produces
    more than ``len(out)`` bytes is refused without decompressing it.
    """
    expected = len(out)
    check_declared_size(data, expected, where=where)
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=False) as reader:
            done = 0
            while done < expected:
                got = reader.readinto(out[done:])
                if not got:
                    break
                done += got
            extra = reader.read(1)
    except zstandard.ZstdError as exc:
        raise CorruptArtifact(f"tensor `{where}` has corrupt compressed data ({exc}).") from exc
    if done != expected or extra:
        raise CorruptArtifact(
            f"tensor `{where}` decompresses to {'more than ' if extra else ''}{done} bytes, "
            f"but the manifest declares {expected}."
        )
