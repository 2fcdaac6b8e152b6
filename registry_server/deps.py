"""FastAPI dependencies: the process context and the (optional) caller of a request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .auth import Principal, authenticate
from .context import Context


def get_context(request: Request) -> Context:
    return request.app.state.context


def get_principal(request: Request) -> Principal | None:
    """The caller, or None when anonymous; 401 for a bad, expired or revoked token.

    Resolved in its own short transaction, so that the route's own session can start
    its transaction the way it needs (a write lock up front, on SQLite).
    """
    ctx: Context = request.app.state.context
    with ctx.sessions() as s:
        return authenticate(s, request.headers.get("authorization"))


ContextDep = Annotated[Context, Depends(get_context)]
PrincipalDep = Annotated[Principal | None, Depends(get_principal)]
