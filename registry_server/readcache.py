"""Read answers and resolved tokens cached per replica, valid for one registry generation.

Search and info are most of a registry's traffic and change rarely, but each answer
costs several queries and an ORM graph. Every change a read can see bumps the database's
``registry_state.generation`` in its own transaction (migration 0004's triggers), so a
replica may reuse an answer for as long as the generation it reads at the start of a
request is the one the answer was built under. Reading the generation costs one
single-row query; a publish or yank committed through any replica, or a token revoked
with ``tvreg-server admin``, changes it, so the very next request on every replica
rebuilds its answer: nothing is ever served stale after a write has completed.

The generation is read before the data, so an answer is never older than the
generation it is stored under (at worst newer, which is harmless). Answers depend on
who asks only through which teams' private namespaces the caller can see, which is
part of the key.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from datetime import datetime

from sqlalchemy import BigInteger, Connection, text
from sqlalchemy.orm import Session

from .auth import Principal
from .models import UTCDateTime
from .ratelimit import MAX_ADDRESS_LENGTH

MAX_ENTRIES = 4096
MAX_BYTES = 64 * 1024 * 1024
MAX_BODY_BYTES = 1024 * 1024
# A whole answer: its raw headers as sent, and its body.
Answer = tuple[tuple[tuple[bytes, bytes], ...], bytes]
_GENERATION = text("SELECT generation FROM registry_state WHERE id = 1")
# With the address's ``skip``+1-th newest failed token check (registry_server.ratelimit), so that
# an authenticated cached read costs one round trip.
_GENERATION_AND_FAILURE = text(
    "SELECT generation, (SELECT at FROM auth_failures WHERE address = :address"
    " ORDER BY at DESC LIMIT 1 OFFSET :skip) AS nth_failure FROM registry_state WHERE id = 1"
).columns(generation=BigInteger(), nth_failure=UTCDateTime())


def read_generation(session: Session | Connection) -> int:
    """The registry's current generation, read as the first statement of ``session``."""
    return session.execute(_GENERATION).scalar_one()


def read_generation_and_failure(session: Session, address: str, nth: int) -> tuple[int, datetime | None]:
    """:func:`read_generation`, and when ``address`` failed a token check for the ``nth``-newest time."""
    row = session.execute(_GENERATION_AND_FAILURE, {"address": address[:MAX_ADDRESS_LENGTH], "skip": nth - 1})
    generation, at = row.one()
    return generation, at


def _size(value: bytes | Answer) -> int:
    if isinstance(value, bytes):
        return len(value)
    return len(value[1]) + sum(len(k) + len(v) for k, v in value[0])


class ReadCache:
    """Response bodies and token lookups of the newest generation seen, least recently used out."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.generation = -1
        self._bodies: OrderedDict[Hashable, bytes | Answer] = OrderedDict()
        self._bytes = 0
        self._tokens: dict[str, Principal] = {}
        self._lock = threading.Lock()

    def _current(self, generation: int) -> bool:
        """Whether ``generation`` is the cached one, moving to it (and emptying) when it is newer."""
        if generation > self.generation:
            self.generation = generation
            self._bodies.clear()
            self._bytes = 0
            self._tokens.clear()
        return generation == self.generation

    def _get(self, generation: int, key: Hashable) -> bytes | Answer | None:
        with self._lock:
            if not self._current(generation):
                return None
            value = self._bodies.get(key)
            if value is not None:
                self._bodies.move_to_end(key)
            return value

    def _keep(self, generation: int, key: Hashable, value: bytes | Answer) -> None:
        with self._lock:
            if not self._current(generation):
                return
            old = self._bodies.pop(key, None)
            self._bytes += _size(value) - (_size(old) if old is not None else 0)
            self._bodies[key] = value
            while len(self._bodies) > self.max_entries or self._bytes > self.max_bytes:
                self._bytes -= _size(self._bodies.popitem(last=False)[1])

    def body(self, generation: int, key: Hashable) -> bytes | None:
        value = self._get(generation, key)
        return value if isinstance(value, bytes) else None

    def keep_body(self, generation: int, key: Hashable, body: bytes) -> None:
        if len(body) <= MAX_BODY_BYTES:
            self._keep(generation, key, body)

    def answer(self, generation: int, key: Hashable) -> Answer | None:
        """A whole HTTP answer kept by :meth:`keep_answer`: its headers, ready to send, and its body."""
        value = self._get(generation, key)
        return value if isinstance(value, tuple) else None

    def keep_answer(self, generation: int, key: Hashable, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        if len(body) <= MAX_BODY_BYTES:
            self._keep(generation, key, (tuple(headers), body))

    def token(self, generation: int, token_hash: str) -> Principal | None:
        """The caller behind a token seen valid in this generation, or None."""
        with self._lock:
            return self._tokens.get(token_hash) if self._current(generation) else None

    def keep_token(self, generation: int, token_hash: str, found: Principal) -> None:
        with self._lock:
            if self._current(generation):
                if len(self._tokens) >= self.max_entries:
                    self._tokens.clear()
                self._tokens[token_hash] = found
