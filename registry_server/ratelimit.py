"""Failed-token throttling: an address that keeps sending bad tokens gets 429, not more guesses.

Tokens carry 256 random bits, so guessing one is hopeless; the limit exists so that a
flood of bad credentials cannot turn the server into an oracle or a CPU sink (FAULTS.md
row 29, after warehouse's per-user login limit). Each process counts the failed
authentications per client address in a sliding window; once an address has
``limit`` failures in ``window`` seconds, every request from it that carries an
``Authorization`` header is answered 429 with ``Retry-After`` (when the oldest failure
leaves the window), whether or not its token is valid, so a guess can never be
confirmed while throttled. Anonymous requests are never throttled here.

The counts live in the process, not the database: two replicas each allow ``limit``,
which bounds a brute force just as well and costs no write per failed request.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

from .errors import TooManyRequests

DEFAULT_FAILURE_LIMIT = 20
DEFAULT_WINDOW_SECONDS = 60.0
_MAX_TRACKED = 100_000


class AuthFailureLimiter:
    """Counts failed authentications per client address over a sliding window."""

    def __init__(self, limit: int = DEFAULT_FAILURE_LIMIT, window: float = DEFAULT_WINDOW_SECONDS) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, address: str) -> None:
        """Raise :class:`TooManyRequests` while ``address`` is over its failure limit."""
        now = time.monotonic()
        with self._lock:
            times = self._failures.get(address)
            if times is None:
                return
            self._expire(address, times, now)
            if len(times) < self.limit:
                return
            wait = max(1, math.ceil(times[0] + self.window - now))
        raise TooManyRequests(
            f"too many failed authentications from {address}; retry in {wait} s.", retry_after=wait
        )

    def failed(self, address: str) -> None:
        """Record one failed authentication from ``address``."""
        now = time.monotonic()
        with self._lock:
            if address not in self._failures and len(self._failures) >= _MAX_TRACKED:
                self._prune(now)
            old = self._failures.get(address)
            if old is not None:
                self._expire(address, old, now)
            times = self._failures.setdefault(address, deque())
            times.append(now)
            while len(times) > self.limit:
                times.popleft()

    def _expire(self, address: str, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            self._failures.pop(address, None)

    def _prune(self, now: float) -> None:
        for address in list(self._failures):
            self._expire(address, self._failures[address], now)
        if len(self._failures) >= _MAX_TRACKED:  # a spoofing flood: forget the oldest half
            for address in list(self._failures)[: _MAX_TRACKED // 2]:
                del self._failures[address]
