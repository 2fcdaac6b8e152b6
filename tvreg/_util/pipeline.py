"""Bounded, order-preserving parallel map: the overlap engine of build and install.

Why: reading, zstd (de)compression, hashing and torch math all release the GIL, so
on a few cores the next tensors can be prepared while the current one is written;
bounding the number in flight bounds memory to a few tensors.
"""

from __future__ import annotations

import contextlib
import gc
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



@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Run the block with every object that exists now left out of the cyclic garbage collector's walks.

    Why: a tensor stream allocates enough small objects (futures, views, frame lists) to
    set off full collections, and each full collection walks every object the process
    holds; with torch and Numba loaded that is some 280,000 objects and about a quarter
    of a second, several times per install, all of it under the GIL. Frozen
    (:func:`gc.freeze`), the objects from before the block are skipped, while garbage
    made inside it is collected as usual; on exit they are handed back to the collector
    (:func:`gc.unfreeze`), so nothing is kept alive longer than the block. A process
    that froze its own heap already (a pre-fork server) is left as it is.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
