"""Strict, streaming reader and writer for the safetensors format.

Why not just ``safetensors.safe_open``: tvreg must (a) read one tensor at a time into
plain heap memory so peak RSS is measurable and bounded (mmap pages of a 10 GB model
count against RSS while touched), (b) write a file whose header is known up front
tensor by tensor without holding the model, and (c) refuse hostile headers with a
sentence naming the file and tensor (docs/reliability.md rows 8-10): header past EOF or over
100 MB, duplicate names, overlapping/gapped/aliased offsets, trailing bytes,
shape x dtype that disagrees with the byte span, integer overflow.

Files written here are ordinary safetensors files: ``safetensors`` and
``transformers`` read them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CorruptCheckpoint, TvregError
from ._json import strict_json_loads
from .fsutil import WriteBehind

MAX_HEADER_BYTES = 100 * 1024 * 1024

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})


def itemsize(dtype: str) -> int:
    return DTYPES[dtype].itemsize


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: name, safetensors dtype code, shape and absolute byte span."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


class SafetensorsFile:
    """A validated safetensors file whose tensors are read one at a time on demand.

    Args:
        path: the file.
        error: the error class to raise on a malformed file (checkpoints and skill
            artifacts report different families).

    Raises:
        CorruptCheckpoint (or ``error``): the header or layout is invalid.
    """

    def __init__(self, path: str | os.PathLike[str], *, error: type[TvregError] = CorruptCheckpoint) -> None:
        self.path = Path(path)
        self._error = error
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise error(f"cannot open `{self.path}`: {exc.strerror}.") from exc
        try:
            self.size = os.fstat(self._fd).st_size
            self.metadata, self.tensors, self.data_start = self._parse_header()
        except BaseException:
            self.close()
            raise

    def _fail(self, what: str) -> TvregError:
        return self._error(f"`{self.path}` is not a valid safetensors file: {what}.")

    def _parse_header(self) -> tuple[dict[str, str], dict[str, TensorInfo], int]:
        if self.size < 8:
            raise self._fail(f"it is {self.size} bytes long, shorter than the 8-byte header length")
        n = int.from_bytes(os.pread(self._fd, 8, 0), "little")
        if n > MAX_HEADER_BYTES:
            raise self._fail(f"the header claims {n} bytes, over the {MAX_HEADER_BYTES} byte limit")
        if 8 + n > self.size:
            raise self._fail(
                f"the header claims {n} bytes but the file has only {self.size - 8} after the length"
            )
        raw = os.pread(self._fd, n, 8)
        try:
            header = strict_json_loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise self._fail(f"its header is not valid JSON ({exc})") from exc
        if not isinstance(header, dict):
            raise self._fail("its header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise self._fail("`__metadata__` must map strings to strings")
        data_start = 8 + n
        data_len = self.size - data_start
        infos: list[TensorInfo] = []
        for name, entry in header.items():
            infos.append(self._parse_entry(name, entry, data_start))
        infos.sort(key=lambda t: (t.start, t.end))
        cursor = data_start
        for info in infos:
            if info.start != cursor:
                kind = "overlaps another tensor" if info.start < cursor else "leaves a gap before it"
                raise self._fail(f"tensor `{info.name}` {kind} (offset {info.start - data_start})")
            cursor = info.end
        if cursor - data_start != data_len:
            raise self._fail(
                f"the tensors cover {cursor - data_start} bytes but the data section has {data_len}"
                + (" (trailing bytes)" if cursor - data_start < data_len else " (file truncated)")
            )
        ordered = {t.name: t for t in sorted(infos, key=lambda t: t.start)}
        return metadata, ordered, data_start

    def _parse_entry(self, name: str, entry: object, data_start: int) -> TensorInfo:
        if not isinstance(entry, dict):
            raise self._fail(f"entry `{name}` is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPES:
            raise self._fail(f"tensor `{name}` has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise self._fail(f"tensor `{name}` has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise self._fail(f"tensor `{name}` has invalid data_offsets {offsets!r}")
        expected = math.prod(shape) * itemsize(dtype)
        if expected != offsets[1] - offsets[0]:
            raise self._fail(
                f"tensor `{name}` has shape {shape} x {dtype} = {expected} bytes "
                f"but its offsets span {offsets[1] - offsets[0]}"
            )
        return TensorInfo(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])

    def pread(self, buf: memoryview, offset: int) -> int:
        """Read up to ``len(buf)`` bytes at an absolute offset; thread-safe (no shared file position)."""
        got = os.preadv(self._fd, [buf], offset)
        if got <= 0:
            raise self._fail(f"it ends at byte {offset}, before the data its header declares")
        return got

    def read_into(self, info: TensorInfo, buf: memoryview) -> None:
        """Fill ``buf`` (exactly ``info.nbytes`` long) with the tensor's bytes."""
        done = 0
        while done < info.nbytes:
            got = os.preadv(self._fd, [buf[done:]], info.start + done)
            if got <= 0:
                raise self._fail(f"tensor `{info.name}` ends past the end of the file")
            done += got

    def read_bytes(self, name: str) -> bytearray:
        """The tensor's raw bytes (a bytearray: no second copy for large blobs)."""
        info = self.tensors[name]
        buf = bytearray(info.nbytes)
        self.read_into(info, memoryview(buf))
        return buf

    def read(self, name: str, *, into: torch.Tensor | None = None) -> torch.Tensor:
        """Read one tensor, with its stored dtype and shape, into fresh heap memory or the front of
        ``into`` (a contiguous uint8 buffer of at least its size, e.g. reused from tensor to tensor)."""
        info = self.tensors[name]
        if into is None:
            raw = torch.empty(info.nbytes, dtype=torch.uint8)
        elif into.dtype != torch.uint8 or not into.is_contiguous() or into.numel() < info.nbytes:
            raise ValueError(f"`into` must be a contiguous uint8 buffer of at least {info.nbytes} bytes")
        else:
            raw = into.reshape(-1)[: info.nbytes]
        if info.nbytes:
            self.read_into(info, memoryview(raw.numpy()).cast("B"))  # type: ignore[arg-type]  # numpy's stubs make ndarray a buffer only on 3.12+
        return raw.view(info.torch_dtype).reshape(info.shape)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def build_header(
    entries: Sequence[tuple[str, str, Sequence[int]]], metadata: Mapping[str, str] | None = None
) -> tuple[bytes, list[tuple[int, int]]]:
    """Return the encoded header (length prefix included) and each entry's relative span.

    Entries are laid out in the given order. The JSON is padded with spaces to a
    multiple of 8 bytes, as the reference implementation does, so data stays aligned.
    """
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    spans: list[tuple[int, int]] = []
    offset = 0
    for name, dtype, shape in entries:
        if name in header:
            raise ValueError(f"duplicate tensor name `{name}`")
        size = math.prod(shape) * itemsize(dtype)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        spans.append((offset, offset + size))
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(len(raw) + 8) % 8)
    return len(raw).to_bytes(8, "little") + raw, spans


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor, in a layout fixed up front.

    The header is written first, so only one tensor is in memory at a time. Call
    :meth:`write` once per entry, in order, then :meth:`finish`, which fsyncs, or with
    ``behind`` hands the file to that :class:`~tvreg._format.fsutil.WriteBehind` (which
    also syncs what is written as it goes): the file is durable after its ``wait()``.
    """

    def __init__(
        self,
        fileobj,
        entries: Sequence[tuple[str, str, Sequence[int]]],
        metadata: Mapping[str, str] | None = None,
        *,
        behind: WriteBehind | None = None,
    ) -> None:
        self._f = fileobj
        self._behind = behind
        self._entries = [(n, d, tuple(s)) for n, d, s in entries]
        self._next = 0
        head, _ = build_header(self._entries, metadata)
        self._f.write(head)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        want_name, want_dtype, want_shape = self._entries[self._next]
        if name != want_name:
            raise ValueError(f"expected tensor `{want_name}`, got `{name}`")
        if DTYPE_NAMES.get(tensor.dtype) != want_dtype or tuple(tensor.shape) != want_shape:
            raise ValueError(
                f"tensor `{name}` is {tensor.dtype} {tuple(tensor.shape)}, declared {want_dtype} {want_shape}"
            )
        if tensor.numel():
            self._f.write(memoryview(tensor.contiguous().view(-1).view(torch.uint8).numpy()))  # type: ignore[arg-type]  # numpy's stubs make ndarray a buffer only on 3.12+
            if self._behind is not None:
                self._behind.wrote(self._f, tensor.numel() * tensor.element_size())
        self._next += 1

    def write_bytes(self, name: str, data: bytes | memoryview) -> None:
        want_name = self._entries[self._next][0]
        if name != want_name:
            raise ValueError(f"expected tensor `{want_name}`, got `{name}`")
        self._f.write(data)
        self._next += 1

    def finish(self) -> None:
        if self._next != len(self._entries):
            raise ValueError(f"only {self._next} of {len(self._entries)} tensors were written")
        if self._behind is not None:
            self._behind.finished(self._f)
            return
        self._f.flush()
        os.fsync(self._f.fileno())
