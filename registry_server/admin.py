"""Account administration behind ``tvreg-server admin``: users, teams, roles, tokens, garbage.

These are the only writes not made over HTTP, so each one records an audit row with
the actor ``cli:admin``, like the API's writes record their user.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from . import audit
from .auth import hash_token, new_token
from .context import Context
from .db import write_session
from .errors import BadRequest, Conflict, NotFound
from .models import ROLES, Membership, Namespace, Team, Token, Upload, User, Version, utcnow
from .names import check_namespace_name, ultranormalize


def _user(s: Session, name: str) -> User:
    user = s.scalars(select(User).where(User.name == name)).first()
    if user is None:
        raise NotFound(
            f"user `{name}` does not exist; create it with `tvreg-server admin create-user {name}`."
        )
    return user


def _team(s: Session, name: str) -> Team:
    team = s.scalars(select(Team).where(Team.name == name)).first()
    if team is None:
        raise NotFound(
            f"team `{name}` does not exist; create it with `tvreg-server admin create-team {name}`."
        )
    return team


def _claim_namespace(s: Session, name: str, *, what: str) -> str:
    """Check that ``name`` can become a new namespace (and team); return its normalized form."""
    check_namespace_name(name, what=what)
    norm = ultranormalize(name)
    clash = s.scalars(
        select(Namespace.name).where(or_(Namespace.name == name, Namespace.normalized_name == norm))
    ).first()
    if clash is None:
        clash = s.scalars(select(Team.name).where(Team.name == name)).first()
    if clash is not None:
        same = "already exists" if clash == name else f"is too similar to the existing namespace `{clash}`"
        raise Conflict(f"{what} `{name}` {same}.")
    return norm


def create_user(ctx: Context, name: str) -> None:
    """Create user ``name`` with a personal team and a public namespace of the same name."""
    with write_session(ctx.sessions) as s:
        norm = _claim_namespace(s, name, what="user name")
        if s.scalars(select(User.id).where(User.name == name)).first() is not None:
            raise Conflict(f"user `{name}` already exists.")
        user = User(name=name)
        team = Team(name=name, personal=True)
        s.add_all([user, team])
        s.flush()
        s.add(Membership(team_id=team.id, user_id=user.id, role="admin"))
        s.add(Namespace(name=name, normalized_name=norm, team_id=team.id, private=False))
        audit.record(s, actor=audit.CLI_ACTOR, action="user.create", target=name)
        s.commit()


def create_team(ctx: Context, name: str, *, private: bool = False) -> None:
    """Create team ``name`` owning a namespace of the same name (``private``: members only)."""
    with write_session(ctx.sessions) as s:
        norm = _claim_namespace(s, name, what="team name")
        team = Team(name=name, personal=False)
        s.add(team)
        s.flush()
        s.add(Namespace(name=name, normalized_name=norm, team_id=team.id, private=private))
        audit.record(s, actor=audit.CLI_ACTOR, action="team.create", target=name, private=private)
        s.commit()


def add_member(ctx: Context, team_name: str, user_name: str, role: str) -> None:
    """Give ``user_name`` ``role`` on ``team_name`` (replacing any earlier role)."""
    if role not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}, not `{role}`.")
    with write_session(ctx.sessions) as s:
        team, user = _team(s, team_name), _user(s, user_name)
        row = s.scalars(
            select(Membership).where(Membership.team_id == team.id, Membership.user_id == user.id)
        ).first()
        if row is None:
            s.add(Membership(team_id=team.id, user_id=user.id, role=role))
        else:
            row.role = role
        audit.record(
            s, actor=audit.CLI_ACTOR, action="member.set", target=team_name, user=user_name, role=role
        )
        s.commit()


def create_token(
    ctx: Context, user_name: str, *, name: str = "", expires_days: float | None = None, role: str = "admin"
) -> str:
    """Create a token for ``user_name`` and return it; only its hash is stored.

    ``role`` caps what the token may do (``read`` makes a read-only token);
    ``expires_days`` of None means it never expires.
    """
    if role not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}, not `{role}`.")
    if expires_days is not None and expires_days <= 0:
        raise BadRequest(f"--expires-days must be positive, not {expires_days}.")
    token = new_token()
    with write_session(ctx.sessions) as s:
        user = _user(s, user_name)
        expires = utcnow() + timedelta(days=expires_days) if expires_days is not None else None
        s.add(Token(user_id=user.id, name=name, token_hash=hash_token(token), scope=role, expires_at=expires))
        audit.record(
            s,
            actor=audit.CLI_ACTOR,
            action="token.create",
            target=user_name,
            name=name,
            role=role,
            expires_at=expires.isoformat() if expires else None,
        )
        s.commit()
    return token


def revoke_tokens(ctx: Context, user_name: str, *, name: str) -> int:
    """Revoke every live token of ``user_name`` called ``name``; return how many."""
    with write_session(ctx.sessions) as s:
        user = _user(s, user_name)
        count = s.execute(
            update(Token)
            .where(Token.user_id == user.id, Token.name == name, Token.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        ).rowcount  # type: ignore[attr-defined]  # DML gives a CursorResult; Session.execute says Result
        if not count:
            raise NotFound(f"user `{user_name}` has no live token named `{name}`.")
        audit.record(
            s, actor=audit.CLI_ACTOR, action="token.revoke", target=user_name, name=name, count=count
        )
        s.commit()
    return count


@dataclass(frozen=True)
class Collected:
    blobs: int
    staged: int


def collect_garbage(ctx: Context, *, grace_seconds: float) -> Collected:
    """Delete blobs no version names, and staged bytes of finished or abandoned uploads.

    Open uploads idle for longer than the grace period are marked failed first.

    Only files older than ``grace_seconds`` go: a publish links its blob *before* it
    commits the version row, so a young unreferenced blob may be about to be named.
    """
    now = time.time()
    cutoff = utcnow() - timedelta(seconds=grace_seconds)
    with write_session(ctx.sessions) as s:
        stale = s.execute(
            update(Upload)
            .where(
                Upload.state == "open",
                Upload.updated_at <= cutoff,
                or_(Upload.writer.is_(None), Upload.lease_expires_at < utcnow()),
            )
            .values(state="failed", updated_at=utcnow())
        ).rowcount  # type: ignore[attr-defined]  # DML gives a CursorResult; Session.execute says Result
        s.commit()
    with ctx.sessions() as s:
        referenced = set(s.scalars(select(Version.digest).distinct()).all())
        live = set(s.scalars(select(Upload.id).where(Upload.state == "open")).all())
    blobs = staged = 0
    for digest, mtime in list(ctx.store.blobs()):
        if digest not in referenced and now - mtime > grace_seconds:
            ctx.store.delete(digest)
            blobs += 1
    for upload_id, mtime in list(ctx.staging.entries()):
        if upload_id not in live and now - mtime > grace_seconds:
            ctx.staging.discard(upload_id)
            staged += 1
    if blobs or staged or stale:
        with write_session(ctx.sessions) as s:
            audit.record(
                s,
                actor=audit.CLI_ACTOR,
                action="gc",
                target="blobs",
                blobs=blobs,
                staged=staged,
                stale_uploads=stale,
            )
            s.commit()
    return Collected(blobs, staged)


def remove_member(ctx: Context, team_name: str, user_name: str) -> None:
    """Take ``user_name`` out of ``team_name``; effective for the next request on every replica.

    The membership row's deletion bumps the registry generation (migration 0004's
    triggers), so cached reads and cached token lookups of every replica are dropped,
    and writes resolve roles afresh anyway. A personal team keeps its owner.
    """
    with write_session(ctx.sessions) as s:
        team, user = _team(s, team_name), _user(s, user_name)
        if team.personal and team.name == user.name:
            raise Conflict(f"`{user_name}` owns the personal team `{team_name}` and cannot leave it.")
        row = s.scalars(
            select(Membership).where(Membership.team_id == team.id, Membership.user_id == user.id)
        ).first()
        if row is None:
            raise NotFound(f"user `{user_name}` is not a member of team `{team_name}`.")
        s.delete(row)
        audit.record(s, actor=audit.CLI_ACTOR, action="member.remove", target=team_name, user=user_name)
        s.commit()


def list_users(ctx: Context) -> list[dict]:
    with ctx.sessions() as s:
        users = s.scalars(select(User).order_by(User.name)).all()
        return [{"name": u.name, "created_at": u.created_at.isoformat()} for u in users]


def list_teams(ctx: Context) -> list[dict]:
    with ctx.sessions() as s:
        rows = s.execute(
            select(Team.name, Team.personal, Namespace.private)
            .join(Namespace, Namespace.team_id == Team.id, isouter=True)
            .order_by(Team.name)
        ).all()
        return [{"name": n, "personal": bool(p), "private": bool(pr)} for n, p, pr in rows]


def list_members(ctx: Context, team_name: str) -> list[dict]:
    with ctx.sessions() as s:
        team = _team(s, team_name)
        rows = s.execute(
            select(User.name, Membership.role)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.team_id == team.id)
            .order_by(User.name)
        ).all()
        return [{"user": u, "role": r} for u, r in rows]


def list_tokens(ctx: Context, user_name: str) -> list[dict]:
    """``user_name``'s tokens (never their secrets: only names, roles and dates are stored)."""
    with ctx.sessions() as s:
        user = _user(s, user_name)
        rows = s.scalars(select(Token).where(Token.user_id == user.id).order_by(Token.created_at)).all()
        now = utcnow()
        out = []
        for t in rows:
            state = (
                "revoked" if t.revoked_at else "expired" if t.expires_at and t.expires_at <= now else "live"
            )
            out.append(
                {
                    "name": t.name,
                    "role": t.scope,
                    "state": state,
                    "created_at": t.created_at.isoformat(),
                    "expires_at": t.expires_at.isoformat() if t.expires_at else None,
                }
            )
        return out


def set_quota(
    ctx: Context,
    *,
    namespace: str | None = None,
    storage: int | None = None,
    user: str | None = None,
    open_uploads: int | None = None,
) -> None:
    """Set a namespace's storage quota and/or a user's open-upload limit; 0 goes back to the default."""
    with write_session(ctx.sessions) as s:
        if namespace is not None:
            ns = s.scalars(select(Namespace).where(Namespace.name == namespace)).first()
            if ns is None:
                raise NotFound(f"namespace `{namespace}` does not exist.")
            ns.storage_quota = storage or None
            audit.record(s, actor=audit.CLI_ACTOR, action="quota.set", target=namespace, storage=storage)
        if user is not None:
            row = _user(s, user)
            row.max_open_uploads = open_uploads or None
            audit.record(s, actor=audit.CLI_ACTOR, action="quota.set", target=user, open_uploads=open_uploads)
        s.commit()


def show_quota(ctx: Context, *, namespace: str | None = None, user: str | None = None) -> dict:
    """What a namespace holds against its quota, and/or a user's open uploads against their limit."""
    from sqlalchemy import func

    from .publish import namespace_used

    out: dict = {}
    with ctx.sessions() as s:
        if namespace is not None:
            ns = s.scalars(select(Namespace).where(Namespace.name == namespace)).first()
            if ns is None:
                raise NotFound(f"namespace `{namespace}` does not exist.")
            used = namespace_used(s, ns.id)
            limit = ns.storage_quota if ns.storage_quota is not None else ctx.settings.namespace_quota
            out["namespace"] = {
                "name": namespace,
                "used_bytes": used,
                "quota_bytes": limit,
                "default": ns.storage_quota is None,
            }
        if user is not None:
            row = _user(s, user)
            held = s.scalar(
                select(func.count())
                .select_from(Upload)
                .where(Upload.user_id == row.id, Upload.state == "open")
            )
            limit = (
                row.max_open_uploads if row.max_open_uploads is not None else ctx.settings.max_open_uploads
            )
            out["user"] = {
                "name": user,
                "open_uploads": int(held or 0),
                "max_open_uploads": limit,
                "default": row.max_open_uploads is None,
            }
    return out
