"""Stage timers for the ``--breakdown`` runs of ``install.py`` and ``build.py``.

A breakdown replaces library functions in its own process with timed wrappers and sums
wall and calling-thread CPU seconds per label over every thread. Why a name that is no
longer there is recorded rather than raised: the library moves code between modules,
and a breakdown that silently timed nothing once went unnoticed for several rounds;
``missing`` is written into the results and the tests require it to be empty.
"""

from __future__ import annotations

import hashlib
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any


class StageTimer:
    """Wall and CPU seconds per label, summed over calls and threads."""

    def __init__(self) -> None:
        self.totals: dict[str, list[float]] = {}  # label -> [wall s, calling-thread CPU s, calls]
        self.missing: list[str] = []
        self._guard = threading.Lock()

    def add(self, label: str, wall: float, cpu: float) -> None:
        with self._guard:
            slot = self.totals.setdefault(label, [0.0, 0.0, 0])
            slot[0] += wall
            slot[1] += cpu
            slot[2] += 1

    def timed(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            t, c = time.perf_counter(), time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                self.add(label, time.perf_counter() - t, time.thread_time() - c)

        return wrapper

    def patch(self, owner: Any, attr: str, label: str) -> None:
        """Time ``owner.attr`` (a module's function or a class's method), or record that it is gone."""
        if not hasattr(owner, attr):
            self.missing.append(f"{getattr(owner, '__name__', owner)}.{attr}")
            return
        setattr(owner, attr, self.timed(getattr(owner, attr), label))

    def patch_where_called(self, owners: tuple[Any, ...], name: str, label: str) -> None:
        """Time ``name`` in each of ``owners`` that imported it: a function is looked up where it was imported."""
        found = [m for m in owners if hasattr(m, name)]
        if not found:
            self.missing.append(name)
        for owner in found:
            setattr(owner, name, self.timed(getattr(owner, name), label))

    def hashlib_with_timed_sha256(self, label: str) -> types.SimpleNamespace:
        """A stand-in for a module's ``hashlib`` whose ``sha256`` constructor is timed."""
        ns = {k: getattr(hashlib, k) for k in dir(hashlib) if not k.startswith("__")}
        ns["sha256"] = self.timed(hashlib.sha256, label)
        return types.SimpleNamespace(**ns)

    def waited(self, ordered_map: Callable[..., Iterator[Any]], label: str) -> Callable[..., Iterator[Any]]:
        """``ordered_map`` with the consumer's wait for each next result timed under ``label``."""

        def waited_map(*a: Any, **k: Any) -> Iterator[Any]:
            gen = ordered_map(*a, **k)
            while True:
                t, c = time.perf_counter(), time.thread_time()
                try:
                    item = next(gen)
                except StopIteration:
                    return
                finally:
                    self.add(label, time.perf_counter() - t, time.thread_time() - c)
                yield item

        return waited_map

    def results(self, wall_s: float) -> dict[str, Any]:
        return {"wall_s": wall_s, "stages": self.totals, "not_patched": self.missing}
