"""Route and authenticate a request before reading a byte of its body.

A request that announces a body (``Content-Length`` > 0 or ``Transfer-Encoding``) is
matched against the application's routes first, and then, because every route that
takes a body needs a token, its ``Authorization`` header is checked (failed-token
throttling included) *before* the body is read. Only then is the body read, under the
route's own limit:

* JSON routes (upload creation, publish, yank, tags): buffered up to
  :data:`MAX_JSON_BODY` and replayed to the application; a declared or actual length
  past it is 413 ``too_large``.
* streamed routes (``PATCH /uploads/{id}``, ``PUT .../sketch``, marked with
  :func:`streamed`): passed through untouched; the route bounds what it keeps (the
  upload's declared size, the sketch's bound from its version's tensors).

So an anonymous client, a bad token, an unknown path or a wrong method costs the server
one header parse, whatever body it announces or trickles, and an authenticated one at
most its route's limit. Answers given here before the body was read carry
``Connection: close``: the unread body is never parsed as a next request.

The resolved caller is kept in the ASGI scope (:data:`PRINCIPAL_KEY`), so the route's
dependency does not look the token up a second time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi.routing import APIRoute
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .db import translate
from .errors import ApiError, NotFound, TooLarge, Unauthenticated
from .limits import has_body

MAX_JSON_BODY = 64 * 1024
PRINCIPAL_KEY = "tvreg.principal"
_STREAMED = "__tvreg_streamed_body__"

F = TypeVar("F", bound=Callable[..., Any])


def streamed(fn: F) -> F:
    """Mark a route that reads its own body as a stream and bounds it itself."""
    setattr(fn, _STREAMED, True)
    return fn


def answer(exc: ApiError, *, close: bool = False) -> JSONResponse:
    headers = dict(exc.headers)
    if close:
        headers["Connection"] = "close"
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class Gate:
    """The ASGI middleware described in the module docstring.

    ``resolve(authorization, address)`` returns the caller (blocking: run in a worker
    thread) or raises the :class:`ApiError` to answer (401, 429, 503).
    """

    def __init__(
        self, app: ASGIApp, *, prefix: str, routes: list[Any], resolve: Callable[[str, str], Any]
    ) -> None:
        self.app = app
        self.prefix = prefix
        self.routes = routes
        self.resolve = resolve

    def _route(self, scope: Scope) -> tuple[APIRoute | None, bool]:
        """The route serving ``scope``, and whether some route had this path (for 405)."""
        path: str = scope["path"]
        if not path.startswith(self.prefix + "/"):
            return None, False
        rest = path[len(self.prefix) :]
        known = False
        for route in self.routes:
            if isinstance(route, APIRoute) and route.path_regex.match(rest):
                known = True
                if scope["method"] in (route.methods or ()):
                    return route, True
        return None, known

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not has_body(scope):
            await self.app(scope, receive, send)
            return
        if not scope["path"].startswith(self.prefix + "/"):
            await self.app(scope, receive, send)  # web pages bound their own forms (read_capped)
            return
        route, path_known = self._route(scope)
        if not isinstance(route, APIRoute):
            if path_known:
                error = ApiError(f"method {scope['method']} is not allowed here.")
                error.status, error.code = 405, "method_not_allowed"
            else:
                error = NotFound("no such endpoint; see /docs for the API.")
            await answer(error, close=True)(scope, receive, send)
            return
        is_streamed = getattr(route.endpoint, _STREAMED, False)
        if not is_streamed and route.body_field is None:
            await self.app(scope, receive, send)  # the route never reads the body it was sent
            return
        headers = Headers(scope=scope)
        authorization = headers.get("authorization")
        try:
            if not authorization:
                raise Unauthenticated("this request needs a token: send `Authorization: Bearer <token>`.")
            client = scope.get("client")
            address = client[0] if client else "unknown"
            scope[PRINCIPAL_KEY] = await run_in_threadpool(self.resolve, authorization, address)
            if not is_streamed:
                declared = _declared_length(scope)
                if declared is not None and declared > MAX_JSON_BODY:
                    raise _too_large()
        except ApiError as exc:
            await answer(exc, close=True)(scope, receive, send)
            return
        except SQLAlchemyError as exc:
            await answer(translate(exc), close=True)(scope, receive, send)
            return
        if is_streamed:
            await self.app(scope, receive, send)
            return
        body = await _read_json_body(receive)
        if body is None:
            await answer(_too_large(), close=True)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def read_capped(request: Request, limit: int, what: str) -> bytes:
    """A body read as it arrives, refused with 413 once it passes ``limit`` (the rest is never read)."""
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise TooLarge(f"{what} is limited to {limit} bytes.", limit=limit)
    return bytes(body)


def _too_large() -> TooLarge:
    return TooLarge(f"JSON request bodies are limited to {MAX_JSON_BODY} bytes.", limit=MAX_JSON_BODY)


async def _read_json_body(receive: Receive) -> bytes | None:
    """The whole body, or None once it runs past :data:`MAX_JSON_BODY` (the rest is not read)."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return bytes(body)
        body += message.get("body", b"")
        if len(body) > MAX_JSON_BODY:
            return None
        if not message.get("more_body", False):
            return bytes(body)
