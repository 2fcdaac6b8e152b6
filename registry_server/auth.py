"""Who is calling, and what they may do to a namespace.

Tokens are ``tvr_`` + 43 URL-safe characters (256 random bits), shown once and stored
only as SHA-256: a leaked database does not leak credentials, and no slow hash is
needed because the secret is random, not chosen by a person. Tokens never reach a log:
they travel only in the ``Authorization`` header, which uvicorn's access log omits.

A caller's role on a namespace is the lower of their team membership role and their
token's scope (``read`` < ``write`` < ``admin``), so a read-only token stays read-only
whatever its user may do. Private namespaces are invisible to outsiders: every lookup
that fails for lack of access raises the very same :class:`NotFound` a missing name
does, so a probe learns nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import Forbidden, NotFound, Unauthenticated
from .models import ROLES, Membership, Namespace, Skill, Token, User, utcnow

TOKEN_PREFIX = "tvr_"
_TOKEN_RE = re.compile(r"^tvr_[A-Za-z0-9_-]{43}$")
_RANK = {role: i for i, role in enumerate(ROLES)}


def new_token() -> str:
    """A fresh random token (``tvr_`` + 43 URL-safe characters)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def lower_role(a: str, b: str) -> str:
    return a if _RANK[a] <= _RANK[b] else b


def role_at_least(role: str | None, needed: str) -> bool:
    return role is not None and _RANK[role] >= _RANK[needed]


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the user, the token's scope and expiry, and their role per team id."""

    user_id: int
    name: str
    scope: str
    roles: dict[int, str] = field(default_factory=dict)
    expires_at: datetime | None = None

    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= utcnow()

    def role_on(self, namespace: Namespace) -> str | None:
        """The effective role on ``namespace``: membership role capped by the token's scope."""
        role = self.roles.get(namespace.team_id)
        return None if role is None else lower_role(role, self.scope)


def authenticate(session: Session, authorization: str | None) -> Principal | None:
    """The caller behind an ``Authorization`` header; None when there is no header.

    Raises:
        Unauthenticated: the header is not ``Bearer <token>``, or the token is unknown,
            expired or revoked.
    """
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not _TOKEN_RE.match(token):
        raise Unauthenticated("the Authorization header must be `Bearer tvr_…` with a registry token.")
    digest = hash_token(token)
    row = session.execute(
        select(Token, User).join(User, Token.user_id == User.id).where(Token.token_hash == digest)
    ).first()
    # The lookup compares SHA-256 digests, whose prefixes say nothing about the token;
    # the constant-time check keeps even that comparison free of timing differences.
    if row is None or not hmac.compare_digest(row[0].token_hash, digest):
        raise Unauthenticated(
            "the token is not valid; create a new one with `tvreg-server admin create-token`."
        )
    tok, user = row
    if tok.revoked_at is not None:
        raise Unauthenticated(
            "the token was revoked; create a new one with `tvreg-server admin create-token`."
        )
    if tok.expires_at is not None and tok.expires_at <= utcnow():
        raise Unauthenticated(
            f"the token expired at {tok.expires_at.isoformat()}; create a new one with "
            "`tvreg-server admin create-token`."
        )
    roles = dict(
        session.execute(
            select(Membership.team_id, Membership.role).where(Membership.user_id == user.id)
        ).all()
    )
    return Principal(user_id=user.id, name=user.name, scope=tok.scope, roles=roles, expires_at=tok.expires_at)


def require_principal(principal: Principal | None, *, action: str) -> Principal:
    """``principal``, or 401 naming the ``action`` that needs a token."""
    if principal is None:
        raise Unauthenticated(f"{action} needs a token: send `Authorization: Bearer <token>`.")
    return principal


def can_read(principal: Principal | None, namespace: Namespace) -> bool:
    return not namespace.private or (principal is not None and namespace.team_id in principal.roles)


def skill_not_found(namespace: str, name: str) -> NotFound:
    """The one answer for a skill that is missing *or* hidden: identical bodies by construction."""
    return NotFound(f"skill `{namespace}/{name}` was not found.")


def readable_namespace(session: Session, principal: Principal | None, name: str, *, skill: str) -> Namespace:
    """The namespace called ``name`` if the caller may read it, else the skill-level 404."""
    namespace = session.scalars(select(Namespace).where(Namespace.name == name)).first()
    if namespace is None or not can_read(principal, namespace):
        raise skill_not_found(name, skill)
    return namespace


def readable_skill(session: Session, principal: Principal | None, namespace: str, name: str) -> Skill:
    """The skill ``namespace/name`` if it exists and the caller may read it, else 404."""
    ns = readable_namespace(session, principal, namespace, skill=name)
    skill = session.scalars(select(Skill).where(Skill.namespace_id == ns.id, Skill.name == name)).first()
    if skill is None:
        raise skill_not_found(namespace, name)
    return skill


def require_role(principal: Principal | None, namespace: Namespace, needed: str, *, action: str) -> Principal:
    """Check that the caller has at least ``needed`` on ``namespace``'s team.

    Raises:
        Unauthenticated: anonymous caller.
        Forbidden: the caller's effective role is lower; the message names the role needed.
    """
    principal = require_principal(principal, action=action)
    role = principal.role_on(namespace)
    if not role_at_least(role, needed):
        if principal.roles.get(namespace.team_id) is not None and not role_at_least(principal.scope, needed):
            why = f"this token is limited to `{principal.scope}`"
        elif role is None:
            why = f"`{principal.name}` is not a member of team `{namespace.team.name}`"
        else:
            why = f"`{principal.name}` has `{role}`"
        raise Forbidden(f"{action} needs the `{needed}` role on namespace `{namespace.name}`; {why}.")
    return principal


def require_scope(principal: Principal | None, needed: str, *, action: str) -> Principal:
    """Check the token's scope alone, for requests not tied to a namespace (uploads)."""
    principal = require_principal(principal, action=action)
    if not role_at_least(principal.scope, needed):
        raise Forbidden(
            f"{action} needs a token with the `{needed}` role; this token is limited to `{principal.scope}`."
        )
    return principal
