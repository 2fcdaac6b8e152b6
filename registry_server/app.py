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
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from . import __version__
from .context import Context
from .db import WORKER_THREADS, translate
from .deps import gate_resolver
from .downloads import DownloadCounter
from .errors import ApiError, BadRequest, NotFound, ServerFault
from .fastread import CachedReads
from .gate import Gate
from .limits import BodyTimeout
from .routes import hub, keys, meta, sketches, skills, uploads
from .web import SecurityHeaders, cards_router, error_page
from .web import mount as mount_web

log = logging.getLogger("registry_server")
API_PREFIX = "/api/v1"
def _answer(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "the request is malformed."
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return f"invalid request: `{where}`: {first.get('msg', 'invalid value')}."


class RegistryApp(FastAPI):
    """FastAPI, with the cached API reads answered before the framework's per-request work.

    :class:`~registry_server.fastread.CachedReads` runs here, outside every middleware, so a
    cache hit costs no middleware layer, no FastAPI telemetry check and no router; it
    replays the headers the whole stack sent (security headers included), and anything it
    does not answer goes through the stack unchanged.
    """

    fast_reads: CachedReads | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast_reads
        if fast is not None and fast.takes(scope):
            await fast.serve(scope, receive, send, super().__call__)
        else:
            await super().__call__(scope, receive, send)


def create_app(context: Context) -> FastAPI:
    """The registry application serving ``context`` (settings, database, blob store)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Fewer threads than anyio's 40: on a few cores more only contend for the GIL.
        anyio.to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS
        counter = DownloadCounter(context.sessions, context.settings.download_flush)
        context.downloads = counter
        counter.start()
        try:
            yield
        finally:
            context.downloads = None
            await anyio.to_thread.run_sync(counter.close)

    app = RegistryApp(
        lifespan=lifespan,
        title="tvreg registry",
        version=__version__,
        description="Publish, search and download task-vector skills. See docs/registry-api.md.",
        # /docs is the registry's own page (registry_server.web), rendered from /openapi.json:
        # FastAPI's Swagger UI and ReDoc load their scripts from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.context = context
    routers = (meta.router, uploads.router, skills.router, sketches.router, keys.router)
    routes = [route for router in (*routers, cards_router) for route in router.routes]
    # Before everything: a repeated read is answered from the read cache (A/B switch for
    # benchmarks/read_path.py: TVREG_SERVER_FAST_READS=0).
    if os.environ.get("TVREG_SERVER_FAST_READS", "1") != "0":
        app.fast_reads = CachedReads(context=context, prefix=API_PREFIX)
    app.add_middleware(Gate, prefix=API_PREFIX, routes=routes, resolve=gate_resolver(context))
    # Outermost, so the gate's body reads are timed too.
    app.add_middleware(BodyTimeout, limit=context.settings.request_timeout)
    app.add_middleware(SecurityHeaders)
    for router in routers:
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(hub.router)  # the Hugging Face Hub's read API, at the Hub's own paths (before the pages)
    mount_web(app, API_PREFIX)

    def _page(request: Request) -> bool:
        """Whether a failure should be answered as a web page rather than the API's JSON."""
        path = request.url.path
        return not (path.startswith("/api/") or path == API_PREFIX or path == "/openapi.json")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_page(request, exc) if _page(request) else _answer(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        error = BadRequest(_validation_message(exc))
        return error_page(request, error) if _page(request) else _answer(error)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            if _page(request):
                return error_page(request, NotFound("there is no page here."))
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
