"""Failed-token throttling: an address that keeps sending bad tokens gets 429, not more guesses.

Tokens carry 256 random bits, so guessing one is hopeless; the limit exists so that a
flood of bad credentials cannot turn the server into an oracle or a CPU sink (FAULTS.md
row 29, after warehouse's per-user login limit). Failed authentications are recorded
per client address in the database, so every replica counts the same failures: once
an address has ``limit`` failures in ``window`` seconds, every request from it that
carries an ``Authorization`` header is answered 429 with ``Retry-After`` (when the
oldest of those failures leaves the window) on any replica, whether or not its token
is valid, so a guess can never be confirmed while throttled. Anonymous requests are
never throttled here.

The address is the TCP peer's, or what a trusted proxy says in ``X-Forwarded-For``
(``tvreg-server serve --forwarded-allow-ips``; by default no proxy is trusted, so the
header cannot be used to dodge the limit). Timestamps are the replicas' clocks, so
replicas on several hosts need synchronised clocks (NTP) for the window to be exact.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from .db import write_session
from .errors import TooManyRequests
from .models import AuthFailure, utcnow

DEFAULT_FAILURE_LIMIT = 20
DEFAULT_WINDOW_SECONDS = 60.0
MAX_ADDRESS_LENGTH = 100


class AuthFailureLimiter:
    """Counts failed authentications per client address over a sliding window, in the database."""

    def __init__(self, limit: int = DEFAULT_FAILURE_LIMIT, window: float = DEFAULT_WINDOW_SECONDS) -> None:
        self.limit = limit
        self.window = timedelta(seconds=window)

    def check(self, session: Session, address: str) -> None:
        """Raise :class:`TooManyRequests` while ``address`` is over its failure limit."""
        self.check_at(
            session.scalar(
                select(AuthFailure.at)
                .where(AuthFailure.address == address[:MAX_ADDRESS_LENGTH])
                .order_by(AuthFailure.at.desc())
                .offset(self.limit - 1)
                .limit(1)
            ),
            address,
        )

    def check_at(self, nth_newest: datetime | None, address: str) -> None:
        """:meth:`check`, given the time of the address's ``limit``-th newest failure (None: fewer)."""
        if nth_newest is None:
            return
        left = (nth_newest + self.window - utcnow()).total_seconds()
        if left <= 0:
            return
        wait = max(1, math.ceil(left))
        raise TooManyRequests(
            f"too many failed authentications from {address}; retry in {wait} s.", retry_after=wait
        )

    def failed(self, sessions: sessionmaker[Session], address: str) -> None:
        """Record one failed authentication from ``address``, forgetting failures out of the window."""
        now = utcnow()
        with write_session(sessions) as s:
            s.execute(delete(AuthFailure).where(AuthFailure.at <= now - self.window))
            s.add(AuthFailure(address=address[:MAX_ADDRESS_LENGTH], at=now))
            s.commit()
