"""Bounded, order-preserving parallel map: the overlap engine of build and install.

Why: reading, zstd (de)compression, hashing and torch math all release the GIL, so
on a few cores the next tensors can be prepared while the current one is written;
bounding the number in flight bounds memory to a few tensors.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

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
