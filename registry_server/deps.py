"""FastAPI dependencies: the process context and the (optional) caller of a request.

Writes resolve the caller in a short transaction of its own (:func:`get_principal`), so
the route's session can start its transaction the way it needs (a write lock up front,
on SQLite). Cached reads (:func:`reading`) do everything in one session: the registry
generation, the caller (from the cache when the token was seen in this generation)
and, on a cache miss, the answer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from pydantic import BaseModel
from sqlalchemy.orm import Session

from .auth import Principal, authenticate
from .context import Context
from .errors import Unauthenticated
from .gate import PRINCIPAL_KEY
from .readcache import read_generation


async def get_context(request: Request) -> Context:
    return request.app.state.context


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _principal(
    ctx: Context, request: Request, session: Session, generation: int | None = None, *, checked: bool = False
) -> Principal | None:
    return resolve(
        ctx, request.headers.get("authorization"), client_address(request), session, generation, checked=checked
    )


def resolve(
    ctx: Context,
    authorization: str | None,
    address: str,
    session: Session,
    generation: int | None = None,
    *,
    checked: bool = False,
) -> Principal | None:
    """The caller, or None when anonymous; 401 for a bad, expired or revoked token.

    A bad token is counted by the failed-token limiter, which answers 429 instead once
    its address, network or the registry is over a ceiling; a valid token always passes
    (``checked`` is kept for callers and ignored). With a ``generation``, a token
    already resolved in that generation is not looked up again (an expired one still
    is, to answer 401).
    """
    if not authorization:
        return None
    key = hashlib.sha256(authorization.encode("utf-8", "surrogateescape")).hexdigest()
    if generation is not None:
        known = ctx.read_cache.token(generation, key)
        if known is not None and not known.expired():
            return known
    try:
        principal = authenticate(session, authorization)
    except Unauthenticated:
        ctx.auth_failures.failed(ctx.sessions, address)  # 429 instead once a ceiling is reached
        raise
    if generation is not None and principal is not None:
        ctx.read_cache.keep_token(generation, key, principal)
    return principal


def get_principal(request: Request) -> Principal | None:
    """The caller of a write, resolved in its own short transaction (see the module docstring).

    A request with a body was already authenticated by :class:`~registry_server.gate.Gate`
    before its body was read; that answer is reused.
    """
    if PRINCIPAL_KEY in request.scope:
        return request.scope[PRINCIPAL_KEY]
    ctx: Context = request.app.state.context
    if not request.headers.get("authorization"):
        return None
    with ctx.sessions() as s:
        return _principal(ctx, request, s)


@dataclass
class Read:
    """One cached read: its session, the caller and the generation read first."""

    ctx: Context
    session: Session
    principal: Principal | None
    generation: int

    def answer(
        self,
        key: Hashable,
        model: type[BaseModel],
        build: Callable[[], dict[str, Any]],
        *,
        headers: Callable[[dict[str, Any]], dict[str, str]] | None = None,
    ) -> Response:
        """The JSON body for ``key`` from the cache, or built by ``build`` and kept.

        ``model`` serialises the body exactly as FastAPI's ``response_model`` would;
        ``headers`` derives response headers from the built body, cached beside it.
        """
        visible = tuple(sorted(self.principal.roles)) if self.principal is not None else ()
        full_key = (key, visible)
        body = self.ctx.read_cache.body(self.generation, full_key)
        extra = self.ctx.read_cache.body(self.generation, (full_key, "headers")) if headers else b"{}"
        if body is None or extra is None:
            built = build()
            body = model.model_validate(built).model_dump_json().encode()
            extra = json.dumps(headers(built) if headers else {}).encode()
            self.ctx.read_cache.keep_body(self.generation, full_key, body)
            if headers:
                self.ctx.read_cache.keep_body(self.generation, (full_key, "headers"), extra)
        return Response(body, media_type="application/json", headers=json.loads(extra))


@contextmanager
def reading(ctx: Context, request: Request) -> Iterator[Read]:
    """A :class:`Read` for this request: one session from the generation to the answer."""
    with ctx.sessions() as s:
        generation = read_generation(s)
        yield Read(ctx, s, _principal(ctx, request, s, generation, checked=True), generation)


def gate_resolver(ctx: Context) -> Callable[[str, str], Principal | None]:
    """The caller lookup :class:`~registry_server.gate.Gate` runs before a body is read."""

    def run(authorization: str, address: str) -> Principal | None:
        with ctx.sessions() as s:
            return resolve(ctx, authorization, address, s)

    return run


ContextDep = Annotated[Context, Depends(get_context)]
PrincipalDep = Annotated[Principal | None, Depends(get_principal)]
