"""``/health`` (is the database reachable?) and ``/whoami`` (who does this token belong to?)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select, text

from ..auth import require_principal
from ..deps import ContextDep, PrincipalDep
from ..models import Membership, Namespace, Team
from ..schemas import ErrorBody, WhoAmI

router = APIRouter(tags=["meta"])


@router.get("/health", responses={503: {"model": ErrorBody}})
def health(ctx: ContextDep) -> dict:
    """200 when the server and its database answer; 503 (with `Retry-After`) otherwise."""
    with ctx.sessions() as s:
        s.execute(text("SELECT 1"))
    return {"status": "ok"}


@router.get("/whoami", response_model=WhoAmI, responses={401: {"model": ErrorBody}})
def whoami(
    ctx: ContextDep,
    principal: PrincipalDep,
) -> dict:
    """The token's user, their teams and roles, and the namespaces those teams own."""
    principal = require_principal(principal, action="`whoami`")
    with ctx.sessions() as s:
        teams = s.execute(
            select(Team.name, Membership.role)
            .join(Membership, Membership.team_id == Team.id)
            .where(Membership.user_id == principal.user_id)
            .order_by(Team.name)
        ).all()
        namespaces = s.scalars(
            select(Namespace.name)
            .join(Membership, Membership.team_id == Namespace.team_id)
            .where(Membership.user_id == principal.user_id)
            .order_by(Namespace.name)
        ).all()
    return {
        "user": principal.name,
        "teams": [{"team": t, "role": r} for t, r in teams],
        "namespaces": list(namespaces),
    }
