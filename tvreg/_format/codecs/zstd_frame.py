"""Bounded, chunked zstandard: the declared size is a hard cap (no zstd bomb), big streams decode in parallel.

Every codec turns a tensor into one *raw stream* of bytes whose length follows from the
tensor's shape and the codec's parameters, so the decoder always knows how many bytes
to expect before reading any. The stream is cut into chunks of ``chunk_bytes`` and each
chunk is its own zstd frame; the compressed length of every frame is listed in the
manifest (``frames``) when there is more than one. Frames then decompress independently,
in threads (zstandard releases the GIL), each straight into its slice of one
preallocated output buffer.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
import zstandard

from ...errors import CorruptArtifact
from . import budget

_LEVEL = 1
PLANES = "planes"
"""The profile for the masked byte planes of floats (:func:`.planes.encode_masked`): see :func:`_new_compressor`."""
MAX_RATIO = 32768
"""No zstd frame inflates more: a block holds at most 128 KiB, and the cheapest (RLE) block costs 4 bytes."""
_RATIO_SLACK = 1 << 17
CHUNK_BYTES = 4 << 20
"""Raw bytes per zstd frame: big enough that zstd's ratio does not suffer, small enough to spread over cores."""

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_threads = max(1, min(8, os.cpu_count() or 1))


def set_decode_threads(n: int) -> None:
    """Use ``n`` threads to decode the frames of one tensor (1 decodes inline)."""
    global _threads, _pool
    with _pool_lock:
        _threads = max(1, int(n))
        if _pool is not None:
            _pool.shutdown(wait=False)
            _pool = None


def decode_threads() -> int:
    """How many threads :func:`each_chunk` spreads work over."""
    return _threads


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_threads, thread_name_prefix="tvreg-zstd")
        return _pool


_local = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    """One decompression context per thread: contexts are not thread-safe, and making one per frame costs."""
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


def _new_compressor(profile: str | None) -> zstandard.ZstdCompressor:
    """A compressor for a kind of stream: level 1, or for :data:`PLANES` level 1 with a 64-entry match table.

    Why the small table: the byte planes of float τ are mostly high-entropy bytes whose worth
    is in Huffman coding, and level 1's 16K-entry table finds short, spurious matches in them
    that cost more than the literals they replace and slow both directions. 64 entries still
    find the real repeats (runs of zero bytes, a bitmap's runs). Measured on synthetic τ and two
    SmolLM2 fine-tunes' ``exact`` segments (``benchmarks/zstd_profile.py``): 2.1-4.1% smaller,
    compressed in 0.67-0.86x and decompressed in 0.75-0.91x the CPU time. Streams with real
    structure (sparse positions, low-rank factors) keep plain level 1, which was 0.9-1.2%
    smaller there. The decoder reads either the same way.
    """
    if profile is None:
        return zstandard.ZstdCompressor(level=_LEVEL, write_content_size=True, write_checksum=True)
    if profile != PLANES:
        raise ValueError(f"unknown zstd profile {profile!r}")
    params = zstandard.ZstdCompressionParameters(
        window_log=19, hash_log=6, chain_log=13, search_log=1, min_match=7, target_length=0,
        strategy=1, write_content_size=1, write_checksum=1,
    )  # fmt: skip
    return zstandard.ZstdCompressor(compression_params=params)


def compress(data: bytes | memoryview, *, profile: str | None = None) -> bytes:
    """One zstd frame that records its content size."""
    return _new_compressor(profile).compress(data)


def compress_stream(raw: bytes | memoryview) -> tuple[bytes, dict]:
    """Compress ``raw`` as consecutive frames of :data:`CHUNK_BYTES` input each.

    Returns the blob and the manifest parameters describing its frames (none for a
    single frame: the blob is that frame).
    """
    view = memoryview(raw).cast("B")
    if len(view) == 0:
        return b"", {}
    chunk = CHUNK_BYTES
    cctx = _new_compressor(None)
    frames = [cctx.compress(view[i : i + chunk]) for i in range(0, len(view), chunk)]
    params = {"chunk_bytes": chunk, "frames": [len(f) for f in frames]} if len(frames) > 1 else {}
    return b"".join(frames), params


def check_declared_size(data: bytes | memoryview, expected: int, *, where: str) -> None:
    """Refuse a frame whose header does not declare exactly ``expected`` bytes of content.

    Called before the output buffer is allocated, so that a frame and a manifest that
    disagree cost no memory. A frame without a content size is checked while it is
    decompressed (:func:`decompress_into` never writes past ``expected``). No frame of
    ``len(data)`` bytes can hold more than :data:`MAX_RATIO` times that, so a manifest
    declaring more is refused here, before any work.
    """
    if expected > MAX_RATIO * len(data) + _RATIO_SLACK:
        raise CorruptArtifact(
            f"tensor `{where}` declares {expected} bytes from a {len(data)}-byte zstd frame, "
            f"more than zstd can hold ({MAX_RATIO}:1)."
        )
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
        with _decompressor().stream_reader(data, read_across_frames=False) as reader:
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


def _spans(data_len: int, out_len: int, params: dict, where: str) -> list[tuple[int, int, int, int]]:
    """Spans of a stream cut into equal chunks of ``params["chunk_bytes"]`` (one frame if no table)."""
    if params.get("frames") is None:
        return [(0, data_len, 0, out_len)] if data_len or out_len else []
    chunk = params.get("chunk_bytes")
    if type(chunk) is not int or chunk <= 0:
        raise CorruptArtifact(f"tensor `{where}` has a malformed frame table in its manifest.")
    return _layout(data_len, [min(chunk, out_len - i) for i in range(0, out_len, chunk)], params, where)


def _layout(data_len: int, segments: list[int], params: dict, where: str) -> list[tuple[int, int, int, int]]:
    """(src_lo, src_hi, dst_lo, dst_hi) of every frame, one frame per raw segment, checked against the blob."""
    frames = params.get("frames")
    if frames is None:
        if len(segments) > 1:
            raise CorruptArtifact(f"tensor `{where}` lacks the frame table its {len(segments)} chunks need.")
        frames = [data_len] if segments else []
    if not isinstance(frames, Sequence) or not all(type(f) is int and f >= 0 for f in frames):
        raise CorruptArtifact(f"tensor `{where}` has a malformed frame table in its manifest.")
    if len(frames) != len(segments) or sum(frames) != data_len:
        raise CorruptArtifact(
            f"tensor `{where}` lists {len(frames)} frames of {sum(frames)} bytes, but holds {data_len} bytes "
            f"that decode to {sum(segments)}."
        )
    spans, src, dst = [], 0, 0
    for size, seg in zip(frames, segments, strict=True):
        spans.append((src, src + size, dst, dst + seg))
        src += size
        dst += seg
    return spans


def compress_segments(segments: Sequence[bytes | memoryview]) -> tuple[bytes, dict]:
    """One frame per raw segment (sizes known to the decoder); the frame table when there are several."""
    return compress_made(len(segments), segments.__getitem__)


def _compressor(profile: str | None) -> zstandard.ZstdCompressor:
    """One compression context per thread and profile (contexts are not thread-safe)."""
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    c = cache.get(profile)
    if c is None:
        c = cache[profile] = _new_compressor(profile)
    return c


def compress_made(
    count: int, segment: Callable[[int], bytes | memoryview], *, profile: str | None = None
) -> tuple[bytes, dict]:
    """:func:`compress_segments` of ``segment(0..count-1)``, each made and compressed by one task on the
    shared threads (:func:`each_chunk`); the frames are joined in order, so the blob does not
    depend on the thread count.

    ``segment(i)`` may return a view of a buffer of the calling thread (:func:`scratch`): it is
    compressed before that thread makes another.
    """
    frames: list[bytes] = [b""] * count

    def one(i: int) -> None:
        frames[i] = _compressor(profile).compress(segment(i))

    each_chunk(count, one)
    return b"".join(frames), ({"frames": [len(f) for f in frames]} if count > 1 else {})


def plan_segments(
    data: bytes | memoryview, segments: list[int], params: dict, *, where: str
) -> list[tuple[int, int, int, int]]:
    """Like :func:`plan` for a stream of unequal segments, whose raw sizes the codec derived from its params."""
    src = memoryview(data).cast("B")
    spans = _layout(len(src), segments, params, where)
    for s_lo, s_hi, d_lo, d_hi in spans:
        check_declared_size(src[s_lo:s_hi], d_hi - d_lo, where=where)
    return spans


def plan(data: bytes | memoryview, raw_len: int, params: dict, *, where: str) -> list[tuple[int, int, int, int]]:
    """Check a stream's frame table and every frame's declared size against ``raw_len``, allocating nothing.

    Returns the (src_lo, src_hi, dst_lo, dst_hi) span of every frame. Codecs call it
    before allocating their output, so a manifest declaring a huge tensor over a tiny
    blob costs no memory.
    """
    src = memoryview(data).cast("B")
    spans = _spans(len(src), raw_len, params, where)
    for s_lo, s_hi, d_lo, d_hi in spans:
        check_declared_size(src[s_lo:s_hi], d_hi - d_lo, where=where)
    return spans


class Arena:
    """Decode buffers handed back and taken again, tensor after tensor, shared by worker threads.

    Why: an install decodes K task-vector tensors, merges them and drops them, for
    every tensor of the model. Fresh tensor-sized buffers each time cost a page fault
    per 4 KiB (in a VM, more than zstd spends filling them). The arena keeps the
    buffers instead, never more than were in use at once across all threads, so its
    memory is what the install needed at its peak anyway. Each thread calls
    :meth:`recycle` once nothing it decoded since its last call is still used.
    """

    def __init__(self) -> None:
        self._free: list[torch.Tensor] = []
        self._lock = threading.Lock()
        self._mine = threading.local()

    def _used(self) -> list[torch.Tensor]:
        used = getattr(self._mine, "used", None)
        if used is None:
            used = self._mine.used = []
        return used

    def take(self, nbytes: int) -> torch.Tensor:
        """A buffer of at least ``nbytes``, handed back by the calling thread's next :meth:`recycle`."""
        buf = self.lend(nbytes)
        self._used().append(buf)
        return buf

    def lend(self, nbytes: int) -> torch.Tensor:
        """A buffer of at least ``nbytes`` that whoever ends up holding it hands back with :meth:`give_back`
        (an install's merged tensor, given back by the thread that writes it)."""
        with self._lock:
            sizes = [b.numel() for b in self._free]
            fits = [i for i, size in enumerate(sizes) if size >= nbytes]
            buf = self._free.pop(min(fits, key=sizes.__getitem__)) if fits else None
            if buf is None and self._free:  # replace the largest buffer too small: the count stays bounded
                self._free.pop(max(range(len(sizes)), key=sizes.__getitem__))
        if buf is None:
            buf = torch.empty(nbytes, dtype=torch.uint8)
        return buf

    def give_back(self, buf: torch.Tensor) -> None:
        """Return a buffer from :meth:`lend`; nothing may use it afterwards."""
        with self._lock:
            self._free.append(buf)

    def recycle(self) -> None:
        """Hand back every buffer the calling thread took since its last call."""
        used = self._used()
        with self._lock:
            self._free.extend(used)
        used.clear()

    @contextlib.contextmanager
    def active(self) -> Iterator[Arena]:
        """Decode into this arena on the calling thread while the block runs."""
        before = getattr(_local, "arena", None)
        _local.arena = self
        try:
            yield self
        finally:
            _local.arena = before


def buffer(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """``numel`` elements of scratch from the thread's :class:`Arena` when one is active, else fresh.

    For buffers sized by the model itself (the merge's float32 sum, a build's τ and the
    tensors it is read from), whose sizes come from checkpoints the user chose, so no decode
    budget is charged: :func:`empty` is the one for sizes an artifact declares.
    """
    arena = getattr(_local, "arena", None)
    if arena is None or numel == 0:
        return torch.empty(numel, dtype=dtype)
    itemsize = dtype.itemsize
    return arena.take(numel * itemsize)[: numel * itemsize].view(dtype)


def empty(numel: int, dtype: torch.dtype, *, where: str) -> torch.Tensor:
    """A buffer for a decoded tensor (from the thread's :class:`Arena` when one is active).

    A size the machine cannot hold is the artifact's fault; one over the decode memory
    budget (:mod:`tvreg._format.codecs.budget`) is refused before allocating.
    """
    itemsize = dtype.itemsize
    budget.charge(numel * itemsize, where=where)
    try:
        arena = getattr(_local, "arena", None)
        if arena is None or numel == 0:
            return torch.empty(numel, dtype=dtype)
        return arena.take(numel * itemsize)[: numel * itemsize].view(dtype)
    except (RuntimeError, MemoryError) as exc:
        raise CorruptArtifact(f"tensor `{where}` declares {numel} elements, too many to decode.") from exc


def each_chunk(count: int, one: Callable[[int], None]) -> None:
    """``one(i)`` for ``i < count``, on the shared worker threads when there are several (zstd, NumPy
    and the compiled kernels release the GIL); returns once all are done.

    ``one`` must not itself wait on work given to these threads.

    The calling thread takes chunks too, from the same counter as the shared threads: it
    would otherwise sit waiting while its chunks queue behind other callers' (an install
    runs a tensor per worker thread, each spreading its frames here), and a helper that
    has not started by the time the chunks are gone is dropped, never waited for. On an
    error no new chunk is started, and the error of the lowest-numbered chunk that failed
    is raised (every lower one was taken before it, so has finished).
    """
    if count <= 1 or _threads == 1:
        for i in range(count):
            one(i)
        return
    claim = itertools.count().__next__
    failed: list[tuple[int, BaseException]] = []

    def drain() -> None:
        while not failed:
            i = claim()
            if i >= count:
                return
            try:
                one(i)
            except BaseException as exc:  # re-raised by the caller's thread
                failed.append((i, exc))
                return

    helpers = [_executor().submit(drain) for _ in range(min(_threads, count - 1))]
    try:
        drain()
    finally:
        for fut in helpers:
            if not fut.cancel():
                fut.result()
    if failed:
        raise min(failed, key=lambda f: f[0])[1]


def decompress_spans_into(
    data: bytes | memoryview,
    out: memoryview,
    spans: list[tuple[int, int, int, int]],
    *,
    where: str,
    finish: Callable[[int, int, int], None] | None = None,
) -> None:
    """Decompress the frames of :func:`plan` into ``out``, in parallel threads when there are several.

    ``finish(i, lo, hi)`` runs in the same worker right after frame ``i``'s bytes
    ``lo:hi`` are in place, so a codec can undo its transform chunk by chunk while the
    data is hot in cache.
    """
    src = memoryview(data).cast("B")

    def one(i: int) -> None:
        s_lo, s_hi, d_lo, d_hi = spans[i]
        decompress_into(src[s_lo:s_hi], out[d_lo:d_hi], where=where)
        if finish is not None:
            finish(i, d_lo, d_hi)

    each_chunk(len(spans), one)


#: Frames up to this many raw bytes decode into a reused per-thread buffer (the writers cut at 4 MiB).
SCRATCH_MAX = 16 << 20


def scratch(n: int, where: str, *, slot: str = "frame", limit: int = SCRATCH_MAX) -> torch.Tensor:
    """``n`` bytes of this thread's reused buffer named ``slot``; past ``limit``, a buffer of its own.

    A codec that needs a second temporary while a frame's raw bytes are still in use
    (``"frame"``) asks for another slot; one that holds a frame per skill at once raises
    ``limit`` to what those frames need.
    """
    if n > limit:
        return empty(n, torch.uint8, where=where)
    buffers = getattr(_local, "scratch", None)
    if buffers is None:
        buffers = _local.scratch = {}
    buf = buffers.get(slot)
    if buf is None or buf.numel() < n:
        buf = buffers[slot] = torch.empty(max(n, CHUNK_BYTES + (CHUNK_BYTES >> 3)), dtype=torch.uint8)
    return buf[:n]


def decompress_frames(
    data: bytes | memoryview,
    spans: list[tuple[int, int, int, int]],
    *,
    where: str,
    each: Callable[[int, torch.Tensor], None],
) -> None:
    """Decompress every frame of :func:`plan` into scratch and call ``each(i, raw_bytes)``, in parallel threads.

    Why scratch: a frame's raw bytes only live until the codec has un-transformed them
    into the output, so one small buffer per thread, reused, replaces a tensor-sized
    temporary whose fresh pages cost more to fault in than zstd costs to fill them.
    ``raw_bytes`` is only valid during the call.
    """
    src = memoryview(data).cast("B")

    def one(i: int) -> None:
        s_lo, s_hi, d_lo, d_hi = spans[i]
        raw = scratch(d_hi - d_lo, where)
        decompress_into(src[s_lo:s_hi], memoryview(raw.numpy()).cast("B"), where=where)  # type: ignore[arg-type]  # numpy's stubs make ndarray a buffer only on 3.12+
        each(i, raw)

    each_chunk(len(spans), one)


def decompress_stream(data: bytes | memoryview, raw_len: int, params: dict, *, where: str) -> torch.Tensor:
    """The ``raw_len`` bytes of a stream written by :func:`compress_stream`, as a fresh uint8 tensor."""
    spans = plan(data, raw_len, params, where=where)
    buf = empty(raw_len, torch.uint8, where=where)
    decompress_spans_into(data, memoryview(buf.numpy()).cast("B"), spans, where=where)  # type: ignore[arg-type]  # numpy's stubs make ndarray a buffer only on 3.12+
    return buf
