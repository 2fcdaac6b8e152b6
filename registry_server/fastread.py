"""Cached API reads answered below the framework: the generation check, then the stored bytes.

A cached search or info answer costs a replica one single-row query and a dictionary
lookup, yet through FastAPI it cost ~1.5–2.7 ms of CPU: routing, dependency solving,
query validation, a response object and two thread hops, about four times the bare
HTTP server's 0.37 ms (measured with ``benchmarks/read_path.py``). This middleware sits
inside the connection limits, the gate and the security headers, and in front of the
router. For a ``GET`` of a cacheable API read (search, skill info, version info) it
reads the registry generation and, when it holds an answer of that generation for the
same URL and the same visibility, sends those bytes; otherwise the application answers
as before and a ``200`` is kept for next time.

What may be reused follows :mod:`registry_server.readcache` exactly: an answer is kept
under the generation read *before* the application built it (never older than it
claims), every write bumps the generation so the next read rebuilds, and the key holds
what the answer depends on — scheme, ``Host`` (the ``Link`` header is absolute), path,
query, and the teams whose private namespaces the caller can see. A token is used only
when the read cache already resolved it in this generation; any other token, a bad one
included, goes through the application (so 401, the failed-token limiter and expiry
behave as before). A database fault while reading the generation is answered here in the
API's error shape (503 with ``Retry-After`` for an outage), as the application would,
rather than making the client wait for the database a second time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .context import Context
from .db import translate
from .limits import has_body
from .readcache import MAX_BODY_BYTES, read_generation

log = logging.getLogger("registry_server")
CACHE_HEADER = b"x-tvreg-cache"
_KEPT_HEADERS = frozenset({b"content-type", b"link", b"x-total-count"})


def cacheable_paths(prefix: str) -> re.Pattern[str]:
    """The API reads whose answers depend only on the URL, the caller's teams and the generation."""
    p = re.escape(prefix)
    return re.compile(rf"^{p}/skills(?:/[^/]+/[^/]+(?:/versions/[^/]+)?)?$")


class CachedReads:
    """ASGI middleware: answer a repeated cacheable read from the read cache, or pass it on."""

    def __init__(self, app: ASGIApp, *, context: Context, prefix: str, enabled: bool = True) -> None:
        self.app = app
        self.context = context
        self.paths = cacheable_paths(prefix)
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            not self.enabled
            or scope["type"] != "http"
            or scope["method"] != "GET"
            or not self.paths.match(scope["path"])
            or has_body(scope)
        ):
            await self.app(scope, receive, send)
            return
        try:
            generation, make_key, stored = await run_in_threadpool(self._lookup, scope)
        except SQLAlchemyError as exc:  # answered here: asking the database again would wait twice
            error = translate(exc)
            log.warning("database error answered %s: %s", error.status, exc)
            response = JSONResponse(error.body(), status_code=error.status, headers=error.headers)
            await response(scope, receive, send)
            return
        if stored is not None:
            headers = json.loads(stored[0])
            body = stored[1]
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
                    + [(b"content-length", str(len(body)).encode()), (CACHE_HEADER, b"hit")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, self._keeping(send, generation, make_key))

    def _lookup(self, scope: Scope) -> tuple[int, Callable[[], tuple | None], tuple[bytes, bytes] | None]:
        """The generation, the cache key's maker and the stored answer, if any.

        A token this generation has not resolved yet has no key before the application
        resolves it; the maker asks again once the answer is built.
        """
        cache = self.context.read_cache
        authorization = None
        host = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"host":
                host = value
        with self.context.engine.connect() as connection:  # one statement: no ORM session needed
            generation = read_generation(connection)
        url = ("fastread", scope.get("scheme", "http"), host, scope["path"], scope.get("query_string", b""))
        token_key = (
            hashlib.sha256(authorization.decode("latin-1").encode("utf-8", "surrogateescape")).hexdigest()
            if authorization
            else None
        )

        def make_key() -> tuple | None:
            if token_key is None:
                return (*url, ())
            known = cache.token(generation, token_key)
            return None if known is None or known.expired() else (*url, tuple(sorted(known.roles)))

        key = make_key()
        if key is None:
            return generation, make_key, None
        head = cache.body(generation, (key, "headers"))
        body = cache.body(generation, key)
        return generation, make_key, (head, body) if head is not None and body is not None else None

    def _keeping(self, send: Send, generation: int, make_key: Callable[[], tuple | None]) -> Send:
        """``send``, keeping a plain ``200`` answer of at most the cache's body limit under its key."""
        cache = self.context.read_cache
        start: dict[str, Any] = {}
        parts: list[bytes] = []
        size = [0]

        async def run(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body" and start.get("status") == 200 and size[0] >= 0:
                chunk = message.get("body", b"")
                size[0] = size[0] + len(chunk) if size[0] + len(chunk) <= MAX_BODY_BYTES else -1
                if size[0] >= 0:
                    parts.append(chunk)
                key = make_key() if not message.get("more_body", False) and size[0] >= 0 else None
                if key is not None:
                    headers = [
                        (k.decode("latin-1"), v.decode("latin-1"))
                        for k, v in start.get("headers", [])
                        if k.lower() in _KEPT_HEADERS
                    ]
                    cache.keep_body(generation, (key, "headers"), json.dumps(headers).encode())
                    cache.keep_body(generation, key, b"".join(parts))
            await send(message)

        return run
