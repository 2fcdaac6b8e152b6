"""The FastAPI application: routes under ``/api/v1`` and the error boundary.

Every failure leaves here as ``{"error": {"code", "message"}}`` (docs/registry-api.md):
:class:`~registry_server.errors.ApiError` as itself, request validation as 400
``bad_request``, unknown paths and methods as 404/405 in the same shape, and
SQLAlchemy errors through :func:`registry_server.db.translate` (a database that is
down or locked becomes 503 with ``Retry-After``). Anything else is a bug: logged
with its traceback, answered 500 without internals.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .context import Context
from .db import WORKER_THREADS, translate
from .errors import ApiError, BadRequest, NotFound, ServerFault, TooLarge
from .limits import BodyTimeout, has_body
from .routes import keys, meta, sketches, skills, uploads

log = logging.getLogger("registry_server")
API_PREFIX = "/api/v1"
MAX_JSON_BODY = 1024 * 1024
MAX_SKETCH_BODY = 64 * 1024 * 1024


class _BodyLimit:
    """Refuse request bodies over :data:`MAX_JSON_BODY` except upload chunks (PATCH).

    A version's sketch (``PUT .../sketch``) may be up to :data:`MAX_SKETCH_BODY`.

    JSON bodies are parsed in memory, so without a bound one request could exhaust the
    server's memory; upload chunks stream to disk under their own limit instead. The body
    is read here up to one byte past the limit and then replayed to the application.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "PATCH" or not has_body(scope):
            await self.app(scope, receive, send)
            return
        limit = MAX_SKETCH_BODY if scope["path"].endswith("/sketch") else MAX_JSON_BODY
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                chunks = []
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                error = TooLarge(f"request bodies are limited to {limit} bytes.", limit=limit)
                await _answer(error)(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _answer(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "the request is malformed."
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return f"invalid request: `{where}`: {first.get('msg', 'invalid value')}."


def create_app(context: Context) -> FastAPI:
    """The registry application serving ``context`` (settings, database, blob store)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Fewer threads than anyio's 40: on a few cores more only contend for the GIL.
        anyio.to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="tvreg registry",
        version=__version__,
        description="Publish, search and download task-vector skills. See docs/registry-api.md.",
    )
    app.state.context = context
    app.add_middleware(_BodyLimit)
    # Outermost, so the JSON body limit's reads are timed too.
    app.add_middleware(BodyTimeout, limit=context.settings.request_timeout)
    for router in (meta.router, uploads.router, skills.router, sketches.router, keys.router):
        app.include_router(router, prefix=API_PREFIX)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _answer(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _answer(BadRequest(_validation_message(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _answer(NotFound("no such endpoint; see /docs for the API."))
        error = ApiError(str(exc.detail))
        error.status = exc.status_code
        error.code = "method_not_allowed" if exc.status_code == 405 else "bad_request"
        return _answer(error)

    @app.exception_handler(SQLAlchemyError)
    async def _database(_request: Request, exc: SQLAlchemyError) -> JSONResponse:
        error = translate(exc)
        if isinstance(error, ServerFault):
            log.error("unexpected database error", exc_info=exc)
        else:
            log.warning("database error answered %s: %s", error.status, exc)
        return _answer(error)

    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return _answer(ServerFault("the registry hit an internal error; it has been logged."))

    return app
