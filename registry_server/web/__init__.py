"""The registry's web pages (issue 19): browse, read and trust skills without the CLI.

:func:`mount` adds the pages, their static files (``/-/static``, served by the registry,
nothing from elsewhere) and the security headers to the application. The pages read
through the same visibility rules and read cache as the API; see :mod:`.pages`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .cards import router as cards_router
from .pages import error_page
from .pages import router as pages_router

__all__ = ["SecurityHeaders", "error_page", "mount"]

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Add the CSP and the other safety headers to every response, the API's included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    h for h in HEADERS if h[0] not in present
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


def mount(app: FastAPI, api_prefix: str) -> None:
    """Add the card API under ``api_prefix``, the static files, and the pages (last: they match broadly)."""
    app.include_router(cards_router, prefix=api_prefix)
    app.mount("/-/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(pages_router)
