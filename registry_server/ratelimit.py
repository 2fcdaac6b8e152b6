"""Failed-token throttling: bad tokens get 429 once an address, its network or the whole registry
has failed too often; valid tokens always pass.

Tokens carry 256 random bits, so guessing one is hopeless; the limit exists so that a
flood of bad credentials cannot turn the server into a CPU sink or fill its database
with failure rows (docs/reliability.md row 29, issue #18 class 12). A token is looked up first: a
valid one is served whatever its address did, so twenty bad tokens from a NAT, a proxy
or a CI host never lock out the valid users behind it. A bad one is counted against
three ceilings over a sliding ``window``:

* its address (``limit``, ``--auth-failure-limit``, default 20 a minute);
* its network, ``/24`` for IPv4 and ``/56`` for IPv6 (``limit`` × :data:`PREFIX_FACTOR`),
  so rotating source addresses inside one allocation does not reset the count;
* the whole registry (``limit`` × :data:`TOTAL_FACTOR`), so addresses spread over the
  internet cannot write more than that many failure rows a window.

Past any ceiling a bad token is answered 429 with ``Retry-After`` and *not* recorded,
so the failure table never holds more than the total ceiling's rows per window.
Failures live in the database (``auth_failures``), so every replica counts the same;
each row's ``address`` is ``<network>|<address>``, so one index serves the address and
network counts.

The address is the TCP peer's, or what a trusted proxy says in ``X-Forwarded-For``
(``tvreg-server serve --forwarded-allow-ips``; by default no proxy is trusted).
Timestamps are the replicas' clocks, so replicas on several hosts need NTP.
"""

from __future__ import annotations

import ipaddress
import math
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from .db import write_session
from .errors import TooManyRequests
from .models import AuthFailure, utcnow

DEFAULT_FAILURE_LIMIT = 20
DEFAULT_WINDOW_SECONDS = 60.0
PREFIX_FACTOR = 5
TOTAL_FACTOR = 50
MAX_ADDRESS_LENGTH = 100


def network_of(address: str) -> str:
    """The ``/24`` (IPv4) or ``/56`` (IPv6) network of ``address``; the address itself if it is not an IP."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:40]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    bits = 24 if ip.version == 4 else 56
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


def failure_key(address: str) -> str:
    return f"{network_of(address)}|{address}"[:MAX_ADDRESS_LENGTH]


class AuthFailureLimiter:
    """Counts failed authentications per address, network and in total, in the database."""

    def __init__(self, limit: int = DEFAULT_FAILURE_LIMIT, window: float = DEFAULT_WINDOW_SECONDS) -> None:
        self.limit = limit
        self.prefix_limit = limit * PREFIX_FACTOR
        self.total_limit = limit * TOTAL_FACTOR
        self.window = timedelta(seconds=window)

    def _nth_newest(self, session: Session, since: datetime, n: int, *where) -> datetime | None:
        return session.scalar(
            select(AuthFailure.at)
            .where(AuthFailure.at > since, *where)
            .order_by(AuthFailure.at.desc())
            .offset(n - 1)
            .limit(1)
        )

    def check(self, session: Session, address: str) -> None:
        """Raise :class:`TooManyRequests` while ``address``, its network or the registry is over its ceiling."""
        now = utcnow()
        since = now - self.window
        key = failure_key(address)
        net = network_of(address)
        lo, hi = net + "|", net + "}"  # '}' follows '|': every key of this network, by index range
        for n, where, what in (
            (self.limit, (AuthFailure.address == key,), address),
            (self.prefix_limit, (AuthFailure.address >= lo, AuthFailure.address < hi), f"network {net}"),
            (self.total_limit, (), "all clients"),
        ):
            nth = self._nth_newest(session, since, n, *where)
            if nth is not None:
                wait = max(1, math.ceil((nth + self.window - now).total_seconds()))
                raise TooManyRequests(
                    f"too many failed authentications from {what}; retry in {wait} s.", retry_after=wait
                )

    def failed(self, sessions: sessionmaker[Session], address: str) -> None:
        """A token from ``address`` was bad: 429 when a ceiling is reached, else record it (then 401)."""
        with sessions() as s:
            self.check(s, address)
        now = utcnow()
        with write_session(sessions) as s:
            s.execute(delete(AuthFailure).where(AuthFailure.at <= now - self.window))
            s.add(AuthFailure(address=failure_key(address), at=now))
            s.commit()

    def count(self, session: Session) -> int:
        return session.scalar(select(func.count()).select_from(AuthFailure)) or 0
