"""Browser sessions signed in with a registry token; no password exists anywhere.

Signing in checks the token exactly as the API does (same throttle on failures) and
creates a ``web_sessions`` row keyed by the SHA-256 of a fresh random cookie. The cookie
is ``HttpOnly``, ``SameSite=Strict``, ``Secure`` when the request came over HTTPS, and
expires with the session (at most :data:`SESSION_LIFETIME`, never past the token's own
expiry). Every lookup joins the token, so revoking it (``tvreg-server admin
revoke-token``) ends its sessions at once, on every replica (the revocation bumps the
registry generation, which empties the per-replica cache of resolved sessions).

Sign-in and sign-out are the only state-changing forms. Both carry a CSRF secret:
before sign-in a double-submit cookie scoped to ``/-/``; after it, the session's own
secret. A cross-site ``Origin`` is refused as well.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from fastapi import Request, Response
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ..auth import Principal, authenticate, hash_token
from ..context import Context
from ..db import write_session
from ..deps import client_address
from ..errors import Unauthenticated
from ..models import Membership, Token, User, WebSession, utcnow

SESSION_COOKIE = "tvreg_session"
CSRF_COOKIE = "tvreg_csrf"
SESSION_LIFETIME = timedelta(hours=12)


@dataclass(frozen=True)
class WebPrincipal(Principal):
    """A caller signed in through the browser: the principal plus its session's id and CSRF secret."""

    session_id: int = 0
    csrf: str = ""


def _cookie_hash(value: str) -> str:
    return "web:" + hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


def secure(request: Request) -> bool:
    return request.url.scheme == "https"


def signed_in(ctx: Context, request: Request, session: Session, generation: int) -> WebPrincipal | None:
    """The caller behind the session cookie, or None (no cookie, unknown, expired, or its token is dead)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie or len(cookie) > 100:
        return None
    key = _cookie_hash(cookie)
    known = ctx.read_cache.token(generation, key)
    if isinstance(known, WebPrincipal) and not known.expired():
        return known
    now = utcnow()
    row = session.execute(
        select(WebSession, Token, User)
        .join(Token, WebSession.token_id == Token.id)
        .join(User, Token.user_id == User.id)
        .where(WebSession.session_hash == key.removeprefix("web:"))
    ).first()
    if row is None:
        return None
    web, token, user = row
    if (
        web.expires_at <= now
        or token.revoked_at is not None
        or (token.expires_at and token.expires_at <= now)
    ):
        return None
    roles = dict(
        session.execute(
            select(Membership.team_id, Membership.role).where(Membership.user_id == user.id)
        ).all()
    )
    ends = web.expires_at if token.expires_at is None else min(web.expires_at, token.expires_at)
    found = WebPrincipal(
        user_id=user.id,
        name=user.name,
        scope=token.scope,
        roles=roles,
        expires_at=ends,
        session_id=web.id,
        csrf=web.csrf,
    )
    ctx.read_cache.keep_token(generation, key, found)
    return found


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


def csrf_matches(given: str | None, expected: str | None) -> bool:
    return bool(given) and bool(expected) and hmac.compare_digest(str(given), str(expected))


def same_origin(request: Request) -> bool:
    """False when the browser says the form came from another site (``Origin`` or ``Sec-Fetch-Site``)."""
    origin = request.headers.get("origin")
    if origin and origin != "null":
        own = f"{request.url.scheme}://{request.url.netloc}"
        if origin != own:
            return False
    return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


def sign_in(ctx: Context, request: Request, token: str) -> tuple[str, WebSession]:
    """A new session for ``token``: the cookie value to set, and its row.

    Raises:
        Unauthenticated: the token is malformed, unknown, revoked or expired (the failure counts
            towards the address's throttle, as on the API).
        TooManyRequests: this address failed too often recently.
    """
    address = client_address(request)
    with ctx.sessions() as s:
        ctx.auth_failures.check(s, address)
        try:
            authenticate(s, f"Bearer {token.strip()}")
        except Unauthenticated:
            ctx.auth_failures.failed(ctx.sessions, address)
            raise
    with write_session(ctx.sessions) as s:
        row = s.scalars(select(Token).where(Token.token_hash == hash_token(token.strip()))).one()
        now = utcnow()
        ends = now + SESSION_LIFETIME
        if row.expires_at is not None:
            ends = min(ends, row.expires_at)
        cookie = secrets.token_urlsafe(32)
        web = WebSession(
            session_hash=_cookie_hash(cookie).removeprefix("web:"),
            token_id=row.id,
            csrf=new_csrf(),
            expires_at=ends,
        )
        s.execute(delete(WebSession).where(WebSession.expires_at <= now))
        s.add(web)
        s.commit()
        s.refresh(web)
        s.expunge(web)
    return cookie, web


def sign_out(ctx: Context, session_id: int) -> None:
    with write_session(ctx.sessions) as s:
        s.execute(delete(WebSession).where(WebSession.id == session_id))
        s.commit()


def set_session_cookie(response: Response, request: Request, cookie: str, web: WebSession) -> None:
    max_age = max(1, round((web.expires_at - utcnow()).total_seconds()))
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure(request),
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=secure(request))
