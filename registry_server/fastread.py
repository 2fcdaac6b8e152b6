"""Cached API reads answered in front of the framework: one shared generation check, then stored bytes.

A cached search or info answer costs a replica a generation query and a dictionary
lookup, yet through FastAPI it cost ~1.5 ms of CPU: FastAPI's own per-request work,
four middlewares, routing, dependency solving, a response object and a thread hop for
a pooled connection (ping, query, rollback: three round trips). :class:`CachedReads`
is called by the application object itself (:class:`registry_server.app.RegistryApp`),
before any middleware: for a ``GET`` of a cacheable API read (search, skill info,
version info) it waits for the registry generation and, when it holds an answer of that
generation for the same URL and the same visibility, sends those bytes with exactly the
headers the whole stack sent when it built them (security headers included); otherwise
the application answers as before and a ``200`` is kept for next time. While one request
builds an answer, the same read (same generation and key) waits for it rather than
building it again, so a cold cache costs one build per answer, not one per client.

The generation is read by :class:`SharedGeneration`: one query answers every request
that arrived before the query started, so under load a replica sends one query per
round trip instead of one per read, and no read ever takes a generation read before it
arrived. That is the same guarantee as one query per request: a write that completed
before a read started is in that read's answer, on every replica (docs/registry-api.md,
"Read cache").

What may be reused follows :mod:`registry_server.readcache` exactly: an answer is kept
under the generation read *before* the application built it (never older than it
claims), every write bumps the generation so the next read rebuilds, and the key holds
what the answer depends on — scheme, ``Host`` (the ``Link`` header is absolute), path,
query, and the teams whose private namespaces the caller can see. A token is used only
when the read cache already resolved it in this generation; any other token, a bad one
included, goes through the application (so 401, the failed-token limiter and expiry
behave as before). A database fault while reading the generation is answered here in the
API's error shape (503 with ``Retry-After`` for an outage, the security headers
included), as the application would, rather than making the client wait for the
database a second time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from .context import Context
from .db import translate
from .limits import has_body
from .readcache import MAX_BODY_BYTES, read_generation
from .web import HEADERS as SECURITY_HEADERS

log = logging.getLogger("registry_server")
CACHE_HEADER = b"x-tvreg-cache"
# What a cached read's answer may carry to be replayed: what the route sets and what the stack adds.
# An answer with any other header (one that could depend on the request) is not kept.
_KEPT_HEADERS = frozenset({b"content-type", b"content-length", b"link", b"x-total-count"}) | frozenset(
    name for name, _ in SECURITY_HEADERS
)


def cacheable_paths(prefix: str) -> re.Pattern[str]:
    """The API reads whose answers depend only on the URL, the caller's teams and the generation."""
    p = re.escape(prefix)
    return re.compile(rf"^{p}/skills(?:/[^/]+/[^/]+(?:/versions/[^/]+)?)?$")


class SharedGeneration:
    """The registry generation for the requests waiting on the event loop, one query for all of them.

    A request waits for the next query that has not started yet (starting it when none is
    running), never for one already running: that one may have read the database before
    the request arrived, and so miss a write that completed just before. At most one query
    runs per process, in a thread of its own (a database that stops answering must not stall
    the event loop, and a cached read must not queue for the worker threads behind slow
    routes; a plain executor also costs less per hop than anyio's), and the requests that
    arrive meanwhile share the one after it.
    """

    def __init__(self, read: Callable[[], int]) -> None:
        self._read = read
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: asyncio.Task[None] | None = None
        self._next: asyncio.Future[int] | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self.queries = 0  # how many queries were sent (tests and benchmarks read it)

    async def get(self) -> int:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (a restarted in-process server): start afresh
            self._loop, self._running, self._next = loop, None, None
        waiting = self._next
        if waiting is None:
            waiting = self._next = loop.create_future()
            if self._running is None:
                self._start()
        # Shielded: a request that goes away must not cancel the query the others wait for.
        return await asyncio.shield(waiting)

    def _start(self) -> None:
        assert self._loop is not None and self._next is not None
        waiting, self._next = self._next, None  # from here on, a request that arrives waits for the next query
        self._running = self._loop.create_task(self._run(waiting))

    async def _run(self, waiting: asyncio.Future[int]) -> None:
        try:
            self.queries += 1
            if self._thread is None:
                self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tvreg-generation")
            value = await asyncio.get_running_loop().run_in_executor(self._thread, self._read)
        except BaseException as exc:
            if not waiting.done():
                if isinstance(exc, asyncio.CancelledError):
                    waiting.cancel()
                else:
                    waiting.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if not waiting.done():
                waiting.set_result(value)
        finally:
            self._running = None
            if self._next is not None and self._loop is asyncio.get_running_loop():
                self._start()


class CachedReads:
    """Answer a repeated cacheable read from the read cache, or pass it on to ``app``."""

    def __init__(self, *, context: Context, prefix: str) -> None:
        self.context = context
        self.paths = cacheable_paths(prefix)
        self.generation = SharedGeneration(self._read_generation)
        # Answers being built, by generation and key: the same read arriving meanwhile waits for it
        # instead of building it again (a cold cache, or every replica's cache after a write).
        self._building: dict[tuple[int, tuple], asyncio.Future[None]] = {}

    def _read_generation(self) -> int:
        with self.context.engine.connect() as connection:  # one statement: no ORM session needed
            return read_generation(connection)

    def takes(self, scope: Scope) -> bool:
        """Whether ``scope`` is a read this class may answer (the others go straight to the application)."""
        return (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and self.paths.match(scope["path"]) is not None
            and not has_body(scope)
        )

    async def serve(
        self, scope: Scope, receive: Receive, send: Send, app: Callable[[Scope, Receive, Send], Awaitable[None]]
    ) -> None:
        """Answer ``scope`` (for which :meth:`takes` holds) from the cache, or through ``app``."""
        try:
            generation = await self.generation.get()
        except SQLAlchemyError as exc:  # answered here: asking the database again would wait twice
            error = translate(exc)
            log.warning("database error answered %s: %s", error.status, exc)
            extra = dict(error.headers)
            extra.update((k.decode("latin-1"), v.decode("latin-1")) for k, v in SECURITY_HEADERS)
            response = JSONResponse(error.body(), status_code=error.status, headers=extra)
            await response(scope, receive, send)
            return
        cache = self.context.read_cache
        authorization = None
        host = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"host":
                host = value
        url = ("fastread", scope.get("scheme", "http"), host, scope["path"], scope.get("query_string", b""))
        token_key = (
            hashlib.sha256(authorization.decode("latin-1").encode("utf-8", "surrogateescape")).hexdigest()
            if authorization
            else None
        )

        def make_key() -> tuple | None:
            """The cache key; None while the token is not resolved in this generation (asked again after)."""
            if token_key is None:
                return (*url, ())
            known = cache.token(generation, token_key)
            return None if known is None or known.expired() else (*url, tuple(sorted(known.roles)))

        key = make_key()
        stored = cache.answer(generation, key) if key is not None else None
        if stored is None and key is not None and (generation, key) in self._building:
            await asyncio.shield(self._building[(generation, key)])  # the same answer is being built
            stored = cache.answer(generation, key)
        if stored is None:
            if key is None or (generation, key) in self._building:
                await app(scope, receive, self._keeping(send, generation, make_key))
                return
            building = self._building[(generation, key)] = asyncio.get_running_loop().create_future()
            try:
                await app(scope, receive, self._keeping(send, generation, make_key))
            finally:
                del self._building[(generation, key)]
                building.set_result(None)
            return
        kept, body = stored
        await send({"type": "http.response.start", "status": 200, "headers": [*kept, (CACHE_HEADER, b"hit")]})
        await send({"type": "http.response.body", "body": body})

    def _keeping(self, send: Send, generation: int, make_key: Callable[[], tuple | None]) -> Send:
        """``send``, keeping a plain ``200`` answer of at most the cache's body limit under its key."""
        cache = self.context.read_cache
        start: dict[str, Any] = {}
        parts: list[bytes] = []
        size = [0]

        async def run(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
                if start.get("status") != 200 or any(k.lower() not in _KEPT_HEADERS for k, _ in headers):
                    size[0] = -1
                start["headers"] = headers
            elif message["type"] == "http.response.body" and size[0] >= 0:
                chunk = message.get("body", b"")
                size[0] = size[0] + len(chunk) if size[0] + len(chunk) <= MAX_BODY_BYTES else -1
                if size[0] >= 0:
                    parts.append(chunk)
                key = make_key() if not message.get("more_body", False) and size[0] >= 0 else None
                if key is not None:
                    cache.keep_answer(generation, key, start["headers"], b"".join(parts))
            await send(message)

        return run

