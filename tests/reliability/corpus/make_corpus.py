"""Write the hostile-artifact corpus beside this script (docs/reliability.md rows 7-12 and 15).

Run ``python tests/reliability/corpus/make_corpus.py`` to regenerate the committed
files. Each file is a small ``.tvskill`` (or a pickle) that a reader must refuse with a
tvreg error, except the ``valid-*`` ones, which must open and decode. The fuzz tests
use them as seeds; the reliability tests feed each one to the reader, ``tvreg info``
and the registry's publish endpoint.

The files are built byte by byte, not with tvreg's writer, because most of them are
things that writer refuses to produce.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
import sys
from pathlib import Path

import zstandard

HERE = Path(__file__).resolve().parent
BASE = "ab" * 32


def _header(entries: dict[str, object] | str, metadata: dict[str, str] | None) -> bytes:
    if isinstance(entries, str):  # hand-written JSON, e.g. with duplicate keys
        raw = entries.encode("utf-8")
    else:
        header: dict[str, object] = {"__metadata__": metadata} if metadata is not None else {}
        header.update(entries)
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-(len(raw) + 8) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _frame(values: list[float]) -> bytes:
    """The ``exact`` codec's stored bytes for float32 ``values`` (byte planes, then zstd)."""
    raw = struct.pack(f"<{len(values)}f", *values)
    planes = b"".join(raw[i::4] for i in range(4))
    return zstandard.ZstdCompressor(level=1, write_content_size=True).compress(planes)


def _lying_frame(declared: int, produced: int) -> bytes:
    """A zstd frame whose header declares ``declared`` bytes but whose one RLE block holds ``produced``."""
    header = b"\x28\xb5\x2f\xfd" + b"\xe0" + struct.pack("<Q", declared)  # single segment, 8-byte size
    block = (1 | 1 << 1 | produced << 3).to_bytes(3, "little") + b"\x00"  # last block, RLE of zero bytes
    return header + block


def _manifest(tensors: dict[str, tuple[bytes, list[int]]], **fields: object) -> dict[str, object]:
    manifest: dict[str, object] = {
        "name": "science",
        "version": "1.0.0",
        "base_fingerprint": BASE,
        "kind": "task_vector",
        "dataset_size": 1000,
        "dataset_unit": "examples",
        "description": "hostile corpus seed",
        "license": None,
        "source": {},
        "requires": {},
        "conflicts": {},
        "created_by": "make_corpus",
        "format_version": 1,
        "tensors": {
            name: {
                "codec": "exact",
                "shape": shape,
                "dtype": "F32",
                "stored_bytes": len(blob),
                "sha256": hashlib.sha256(blob).hexdigest(),
                "params": {"shuffle": 4},
            }
            for name, (blob, shape) in tensors.items()
        },
    }
    manifest.update(fields)
    return manifest


def skill(
    tensors: dict[str, tuple[bytes, list[int]]] | None = None,
    *,
    manifest: dict[str, object] | str | None = None,
    entries: dict[str, object] | str | None = None,
    **fields: object,
) -> bytes:
    """A tvskill holding ``tensors`` (name -> (stored blob, shape)); parts can be overridden."""
    if tensors is None:
        tensors = {"layer.weight": (_frame([0.5, -0.25, 0.0, 1.0, 2.0, -3.0]), [2, 3])}
    if manifest is None:
        manifest = _manifest(tensors, **fields)
    text = manifest if isinstance(manifest, str) else json.dumps(manifest, separators=(",", ":"))
    body = b""
    if entries is None:
        entries = {}
        for name, (blob, _shape) in tensors.items():
            entries[name] = {
                "dtype": "U8",
                "shape": [len(blob)],
                "data_offsets": [len(body), len(body) + len(blob)],
            }
            body += blob
    else:
        body = b"".join(blob for blob, _shape in tensors.values())
    return _header(entries, {"tvreg.manifest": text, "format": "tvskill"}) + body


def coded(blob: bytes, shape: list[int], codec: str, params: dict[str, object], **fields: object) -> bytes:
    """A one-tensor skill whose tensor ``layer.weight`` is stored by ``codec`` with ``params`` as given."""
    tensors = {"layer.weight": (blob, shape)}
    manifest = _manifest(tensors, **fields)
    entry = manifest["tensors"]["layer.weight"]  # type: ignore[index]
    entry.update(codec=codec, params=params)
    return skill(tensors, manifest=manifest)


def _decode_bombs() -> dict[str, bytes]:
    """Tiny blobs declaring huge tensors (issue 18, class 1): refused by the decode budget or zstd's ratio.

    Before that issue the registry expanded the first two to their declared 4 TiB.
    """
    huge = [2**20, 2**20]
    return {
        "sparse-empty-huge-shape.tvskill": coded(
            b"", huge, "sparse", {"k": 0, "values": "bf16", "index": "delta", "index_bytes": 0}
        ),
        "lowrank-rank-0-huge-shape.tvskill": coded(b"", huge, "lowrank", {"rank": 0, "planes": "exp"}),
        "int8-huge-shape.tvskill": coded(
            _lying_frame(2**40 * 2, 1000), huge, "int8", {"group": 1, "scales": "fp16"}
        ),
        "exact-bitmap-past-zstd-ratio.tvskill": coded(
            _lying_frame(2**23, 2**20), [2**26], "exact", {"zeros": "bitmap", "planes": "exp", "nnz": [0]}
        ),
        "sparse-bitmap-past-zstd-ratio.tvskill": coded(
            _lying_frame(2**23, 2**20), [2**26], "sparse", {"k": 0, "values": "bf16", "index": "bitmap"}
        ),
        "sparse-hash-count-impossible.tvskill": coded(
            b"", [2**28], "sparse", {"k": 0, "values": "bf16", "index": "hash", "seed": 0, "threshold": 2**31}
        ),
    }


def _with_length(data: bytes, length: int) -> bytes:
    return struct.pack("<Q", length) + data[8:]


def cases() -> dict[str, bytes]:
    """File name -> bytes for every corpus entry."""
    good = skill()
    blob = _frame([1.0, 2.0, 3.0, 4.0])
    out: dict[str, bytes] = {
        "valid-small.tvskill": good,
        "valid-two-tensors.tvskill": skill({"a.weight": (blob, [2, 2]), "b.bias": (_frame([0.0] * 8), [8])}),
        "empty.tvskill": b"",
        "seven-bytes.tvskill": b"\x10\x00\x00\x00\x00\x00\x00",
        "header-past-eof.tvskill": _with_length(good, len(good)),
        "header-length-2-64.tvskill": _with_length(good, 2**64 - 1),
        "header-over-100mb.tvskill": _with_length(good, 200 * 1024 * 1024),
        "header-not-utf8.tvskill": _header("{}", None)[:8] + b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8",
        "header-deep-nesting.tvskill": _header("[" * 5000 + "]" * 5000, None),
        "header-not-object.tvskill": _header("[1, 2, 3]", None),
        "metadata-not-strings.tvskill": _header({}, {"tvreg.manifest": 5}),  # type: ignore[dict-item]
        "overlapping-offsets.tvskill": skill(
            {"a": (blob, [2, 2]), "b": (blob, [2, 2])},
            entries={
                "a": {"dtype": "U8", "shape": [len(blob)], "data_offsets": [0, len(blob)]},
                "b": {"dtype": "U8", "shape": [len(blob)], "data_offsets": [0, len(blob)]},
            },
        ),
        "gapped-offsets.tvskill": skill(
            {"a": (blob + b"\0" * 8, [2, 2])},
            entries={"a": {"dtype": "U8", "shape": [len(blob)], "data_offsets": [8, 8 + len(blob)]}},
        ),
        "trailing-bytes.tvskill": good + b"\0" * 16,
        "truncated.tvskill": good[:-3],
        "shape-disagrees-with-span.tvskill": skill(
            {"a": (blob, [2, 2])},
            entries={"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, len(blob)]}},
        ),
        "shape-overflow.tvskill": skill(
            {"a": (blob, [2, 2])},
            entries={"a": {"dtype": "F32", "shape": [2, 2**64 - 2], "data_offsets": [0, len(blob)]}},
        ),
        "negative-offsets.tvskill": skill(
            {"a": (blob, [2, 2])},
            entries={"a": {"dtype": "U8", "shape": [len(blob)], "data_offsets": [-8, len(blob) - 8]}},
        ),
        "unknown-dtype.tvskill": skill(
            {"a": (blob, [2, 2])},
            entries={"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, len(blob)]}},
        ),
        "duplicate-tensor-names.tvskill": skill(
            {"a": (blob, [2, 2])},
            entries=f'{{"a":{{"dtype":"U8","shape":[{len(blob)}],"data_offsets":[0,{len(blob)}]}},'
            f'"a":{{"dtype":"U8","shape":[{len(blob)}],"data_offsets":[0,{len(blob)}]}}}}',
        ),
        "duplicate-manifest-keys.tvskill": skill(
            manifest=json.dumps(_manifest({"layer.weight": (_frame([0.5] * 6), [2, 3])}))[:-1]
            + ',"name":"other"}',
            tensors={"layer.weight": (_frame([0.5] * 6), [2, 3])},
        ),
        "no-manifest.tvskill": _header({}, {"format": "pt"}),
        "manifest-not-json.tvskill": skill(manifest="{not json"),
        "manifest-deep-nesting.tvskill": skill(manifest="[" * 5000 + "]" * 5000),
        "manifest-future-format.tvskill": skill(format_version=99),
        "manifest-bad-fingerprint.tvskill": skill(base_fingerprint="../../etc"),
        "manifest-tensor-missing.tvskill": skill(
            manifest=_manifest({"other": (blob, [2, 2])}), tensors={"layer.weight": (blob, [2, 2])}
        ),
        "manifest-tensor-wrong-digest.tvskill": skill(
            manifest=_manifest({"layer.weight": (_frame([9.0] * 4), [2, 2])}),
            tensors={"layer.weight": (blob, [2, 2])},
        ),
        "manifest-shape-disagrees.tvskill": skill({"layer.weight": (blob, [3, 3])}),
        "manifest-huge-shape.tvskill": skill({"layer.weight": (blob, [2**31, 2**31])}),
        "manifest-negative-shape.tvskill": skill({"layer.weight": (blob, [-4])}),
        "manifest-unknown-codec.tvskill": skill(
            manifest=json.dumps(_manifest({"layer.weight": (blob, [2, 2])})).replace('"exact"', '"magic"'),
            tensors={"layer.weight": (blob, [2, 2])},
        ),
        # A frame with no size that inflates to 64 MiB, where the manifest declares 4 KB.
        "zstd-bomb.tvskill": skill(
            {
                "layer.weight": (
                    zstandard.ZstdCompressor(write_content_size=False).compress(bytes(64 * 1024 * 1024)),
                    [1000],
                )
            }
        ),
        # A frame whose header claims 4 GiB, with a manifest shape that agrees.
        "zstd-declares-4gib.tvskill": skill({"layer.weight": (_lying_frame(4 * 2**30, 1000), [2**30])}),
        "nan-values.tvskill": skill({"layer.weight": (_frame([1.0, float("nan"), 0.0, 2.0]), [4])}),
        "inf-values.tvskill": skill({"layer.weight": (_frame([float("inf"), 0.0]), [2])}),
        "name-dot-dot.tvskill": skill(name="../../evil"),
        "name-absolute.tvskill": skill(name="/etc/passwd"),
        "name-backslash.tvskill": skill(name="..\\..\\evil"),
        "name-nul.tvskill": skill(name="sci\u0000ence"),
        "name-lookalike.tvskill": skill(name="\u0455cience"),  # Cyrillic dze
        "name-drive.tvskill": skill(name="C:evil"),
        "version-not-semver.tvskill": skill(version="1.0"),
        "tensor-name-dot-dot.tvskill": skill({"../../evil": (blob, [2, 2])}),
        "tensor-name-nul.tvskill": skill({"a\u0000b": (blob, [2, 2])}),
    }
    out.update(_decode_bombs())
    # A pickle that would create a marker file if anything ever unpickled it.
    marker = "tvreg-pickle-was-loaded"
    payload = pickle.dumps(_Marker(marker), protocol=2)
    out["pickle-payload.pt"] = payload
    out["pickle-named-tvskill.tvskill"] = payload
    return out


class _Marker:
    """Unpickling this creates a file named ``path`` in the working directory."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: D105
        return (open, (self.path, "w"))


VALID = frozenset({"valid-small.tvskill", "valid-two-tensors.tvskill"})


def main() -> None:
    for old in HERE.glob("*.tvskill"):
        old.unlink()
    for old in HERE.glob("*.pt"):
        old.unlink()
    for name, data in cases().items():
        (HERE / name).write_bytes(data)
    print(f"wrote {len(cases())} files to {HERE}", file=sys.stderr)


if __name__ == "__main__":
    main()
