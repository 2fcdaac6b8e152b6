"""``/keys`` and a version's ``signature`` and ``attestations``: the registry side of signed skills.

Keys are public: anyone may list a user's or a team's keys, revoked ones included, so
a revocation is visible to every client. Registering needs a token (``write`` for a
key of your own, ``admin`` on the team for a team key). Signatures and attestations
are uploaded as the raw bundle bytes (``application/json``) and checked before they
are stored; see :mod:`registry_server.trust` for what is checked.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from .. import trust
from ..auth import Principal, readable_namespace, require_principal, require_role
from ..context import Context
from ..db import write_session
from ..deps import ContextDep, PrincipalDep
from ..errors import NotFound
from ..fields import MAX_PAGE
from ..models import Skill, Version
from ..schemas import ErrorBody
from .skills import TOTAL_HEADER, load_version, page_links

router = APIRouter(tags=["trust"])
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 503)}
_VERSION = "/skills/{namespace}/{name}/versions/{version}"


class KeyCreate(BaseModel):
    public_key: str = Field(description="PEM SubjectPublicKeyInfo of an EC key (P-256, P-384 or P-521).")
    team: str | None = Field(default=None, description="Register the key for this team (needs `admin`).")
    name: str = Field(default="", max_length=100)


class KeyRevoke(BaseModel):
    reason: str = Field(default="", max_length=1000)


def _create(ctx: Context, principal: Principal | None, body: KeyCreate) -> dict[str, Any]:
    with write_session(ctx.sessions) as s:
        key = trust.register_key_for(s, principal, body.public_key, team=body.team, name=body.name)
        out = trust.key_out(key)
        s.commit()
        return out


@router.post("/keys", status_code=201, responses=_ERRORS)
async def create_key(body: KeyCreate, ctx: ContextDep, principal: PrincipalDep) -> Any:
    """Register a public signing key for yourself or, with `team`, for a team you administer."""
    return await run_in_threadpool(_create, ctx, principal, body)


@router.get("/keys", responses=_ERRORS)
def list_keys(
    ctx: ContextDep,
    user: str | None = Query(default=None),
    team: str | None = Query(default=None),
) -> Any:
    """Every key of a user or a team, revoked ones included (with when and why)."""
    with ctx.sessions() as s:
        return {"keys": [trust.key_out(k) for k in trust.list_keys(s, user=user, team=team)]}


@router.get("/keys/{key_id}", responses=_ERRORS)
def get_key(key_id: str, ctx: ContextDep) -> Any:
    """One key by its id (`sha256:…`)."""
    with ctx.sessions() as s:
        return trust.key_out(trust.get_key(s, key_id))


def _revoke(ctx: Context, principal: Principal | None, key_id: str, reason: str) -> dict[str, Any]:
    principal = require_principal(principal, action="revoking a key")
    with write_session(ctx.sessions) as s:
        key = trust.revoke_key(s, key_id, reason, actor=principal.name, principal=principal)
        out = trust.key_out(key)
        s.commit()
        return out


@router.post("/keys/{key_id}/revoke", responses=_ERRORS)
async def revoke_key(key_id: str, body: KeyRevoke, ctx: ContextDep, principal: PrincipalDep) -> Any:
    """Revoke a key of yours or of a team you administer; it stays listed, marked revoked."""
    return await run_in_threadpool(_revoke, ctx, principal, key_id, body.reason)


def _locked_version(s, principal: Principal | None, namespace: str, name: str, version: str) -> Version:
    ns = readable_namespace(s, principal, namespace, skill=name)
    row = s.scalars(
        select(Version)
        .join(Skill, Version.skill_id == Skill.id)
        .where(Skill.namespace_id == ns.id, Skill.name == name, Version.version == version)
        .with_for_update()
    ).first()
    if row is None:
        raise NotFound(f"version `{version}` of skill `{namespace}/{name}` was not found.")
    return row


def _sign(
    ctx: Context, principal: Principal | None, namespace: str, name: str, version: str, data: bytes
) -> tuple[dict[str, Any], bool]:
    label = f"{namespace}/{name}@{version}"
    with write_session(ctx.sessions) as s:
        ns = readable_namespace(s, principal, namespace, skill=name)
        principal = require_role(principal, ns, "write", action=f"signing `{label}`")
        row = _locked_version(s, principal, namespace, name, version)
        sig, created = trust.attach_signature(s, principal, row, data)
        out = {"key_id": sig.key_id, "version": label}
        s.commit()
        return out, created


@router.put(_VERSION + "/signature", status_code=201, responses=_ERRORS)
async def put_signature(
    namespace: str, name: str, version: str, request: Request, ctx: ContextDep, principal: PrincipalDep
) -> Any:
    """Attach a Sigstore bundle signing the version's artifact; needs `write` on the namespace."""
    data = await request.body()
    body, created = await run_in_threadpool(_sign, ctx, principal, namespace, name, version, data)
    return JSONResponse(body, status_code=201 if created else 200)


@router.get(_VERSION + "/signatures", responses=_ERRORS)
def get_signatures(namespace: str, name: str, version: str, ctx: ContextDep, principal: PrincipalDep) -> Any:
    """The version's signature bundles, each with the key that signed it (and its revocation)."""
    with ctx.sessions() as s:
        row = load_version(s, principal, namespace, name, version)
        return {"digest": row.digest, "signatures": trust.signatures_out(s, row)}


def _attest(
    ctx: Context, principal: Principal | None, namespace: str, name: str, version: str, data: bytes
) -> tuple[dict[str, Any], bool]:
    principal = require_principal(principal, action="uploading an attestation")
    with write_session(ctx.sessions) as s:
        row = _locked_version(s, principal, namespace, name, version)
        att, created = trust.attach_attestation(s, principal, row, data)
        out = {"key_id": att.key_id, "bundle_digest": att.bundle_digest, "summary": att.summary}
        s.commit()
        return out, created


@router.post(_VERSION + "/attestations", status_code=201, responses=_ERRORS)
async def post_attestation(
    namespace: str, name: str, version: str, request: Request, ctx: ContextDep, principal: PrincipalDep
) -> Any:
    """Attach a signed evaluation attestation; any user who can read the skill, signing with a registered key."""
    data = await request.body()
    body, created = await run_in_threadpool(_attest, ctx, principal, namespace, name, version, data)
    return JSONResponse(body, status_code=201 if created else 200)


@router.get(_VERSION + "/attestations", responses=_ERRORS)
def get_attestations(
    namespace: str,
    name: str,
    version: str,
    request: Request,
    ctx: ContextDep,
    principal: PrincipalDep,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    per_page: Annotated[int, Query(ge=1, le=trust.MAX_ATTESTATIONS_PER_PAGE)] = trust.MAX_ATTESTATIONS_PER_PAGE,
) -> Any:
    """One page of the version's attestations, each with its signer's key and a summary of its claims.

    `total` counts them all; `Link` (`rel="next"`, …) and `X-Total-Count` as for skill info.
    """
    with ctx.sessions() as s:
        row = load_version(s, principal, namespace, name, version)
        total = trust.count_attestations(s, row)
        body = {
            "digest": row.digest,
            "attestations": trust.attestations_out(s, row, page, per_page),
            "page": page,
            "per_page": per_page,
            "total": total,
        }
    headers = {TOTAL_HEADER: str(total)}
    link = page_links(request, page, per_page, total)
    if link:
        headers["Link"] = link
    return JSONResponse(body, headers=headers)
