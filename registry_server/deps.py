"""FastAPI dependencies: the process context and the (optional) caller of a request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .auth import Principal, authenticate
from .context import Context
from .errors import Unauthenticated


def get_context(request: Request) -> Context:
    return request.app.state.context


def get_principal(request: Request) -> Principal | None:
    """The caller, or None when anonymous; 401 for a bad, expired or revoked token.

    Resolved in its own short transaction, so that the route's own session can start
    its transaction the way it needs (a write lock up front, on SQLite). An address
    with too many failed tokens gets 429 before its token is even looked up.
    """
    ctx: Context = request.app.state.context
    authorization = request.headers.get("authorization")
    if not authorization:
        return None
    address = request.client.host if request.client else "unknown"
    ctx.auth_failures.check(address)
    try:
        with ctx.sessions() as s:
            return authenticate(s, authorization)
    except Unauthenticated:
        ctx.auth_failures.failed(address)
        raise


ContextDep = Annotated[Context, Depends(get_context)]
PrincipalDep = Annotated[Principal | None, Depends(get_principal)]
