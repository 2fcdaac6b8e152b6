"""Bounded, order-preserving parallel map: the overlap engine of build and install.

Why: reading, zstd (de)compression, hashing and torch math all release the GIL, so
on a few cores the next tensors can be prepared while the current one is written;
bounding the number in flight bounds memory to a few tensors.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int, in_flight: int) -> Iterator[R]:
    """Yield ``fn(item)`` in input order, computing at most ``in_flight`` results ahead."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= in_flight:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with torch's intra-op pool at ``n`` threads (``None``: leave it).

    Why: when :func:`ordered_map` already runs one tensor per core, torch splitting each
    op over every core as well puts several OpenMP teams on the same cores, whose
    threads spin at barriers waiting for each other; measured on the install path that
    made the merge arithmetic several times slower than on one thread.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

