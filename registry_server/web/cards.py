"""``/skills/{ns}/{name}/versions/{version}/card``: a version's skill card (its project's README.md).

Like a Hub model card: Markdown, YAML front matter allowed, shown on the skill page and by
``tvreg info``. A card is documentation, not content, so unlike the artifact and sketch a
writer may replace it (each change is audited). At most :data:`MAX_CARD_BYTES` of UTF-8,
counted against the namespace's storage quota like the artifact and sketch (a card that
grows past it is 507 and the old card stays).
"""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from .. import audit
from ..auth import Principal, readable_namespace, require_role
from ..context import Context
from ..db import write_session
from ..deps import ContextDep, PrincipalDep, reading
from ..errors import BadRequest, NotFound, TooLarge
from ..gate import read_capped, streamed
from ..models import Card, Namespace, Skill, Version, utcnow
from ..publish import check_quota
from ..routes.skills import load_version
from ..schemas import ErrorBody

router = APIRouter(tags=["cards"])
MAX_CARD_BYTES = 256 * 1024
_PATH = "/skills/{namespace}/{name}/versions/{version}/card"
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 503, 507)}


def _store(
    ctx: Context, principal: Principal | None, namespace: str, name: str, version: str, data: bytes
) -> dict:
    label = f"{namespace}/{name}@{version}"
    if len(data) > MAX_CARD_BYTES:
        raise TooLarge(
            f"the card of `{label}` is {len(data)} bytes; cards are limited to {MAX_CARD_BYTES}.",
            limit=MAX_CARD_BYTES,
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the card of `{label}` is not UTF-8 text (byte {exc.start}).") from exc
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with write_session(ctx.sessions) as s:
        ns = readable_namespace(s, principal, namespace, skill=name)
        principal = require_role(principal, ns, "write", action=f"uploading the card of `{label}`")
        row = s.scalars(
            select(Version)
            .join(Skill, Version.skill_id == Skill.id)
            .where(Skill.namespace_id == ns.id, Skill.name == name, Version.version == version)
        ).first()
        if row is None:
            raise NotFound(f"version `{version}` of skill `{namespace}/{name}` was not found.")
        locked = s.get_one(Namespace, ns.id, with_for_update=True)  # quota: one writer per namespace
        card = s.get(Card, row.id)
        if card is None or card.digest != digest:
            growth = len(data) - (card.size if card is not None else 0)
            if growth > 0:
                check_quota(ctx, s, locked, growth, what="this card", kept=False)
            if card is None:
                s.add(Card(version_id=row.id, text=text, digest=digest, size=len(data)))
            else:
                card.text, card.digest, card.size, card.updated_at = text, digest, len(data), utcnow()
            audit.record(
                s, actor=principal.name, action="version.card", target=label, digest=digest, size=len(data)
            )
            s.commit()
    return {"digest": digest, "size": len(data)}


@router.put(_PATH, responses=_ERRORS)
@streamed
async def put_card(
    namespace: str, name: str, version: str, request: Request, ctx: ContextDep, principal: PrincipalDep
) -> Any:
    """Set the version's skill card (UTF-8 Markdown, at most 256 KiB); needs `write`."""
    data = await read_capped(request, MAX_CARD_BYTES, "a skill card")
    body = await run_in_threadpool(_store, ctx, principal, namespace, name, version, data)
    return JSONResponse(body)


@router.get(
    _PATH,
    responses={**_ERRORS, 200: {"content": {"text/markdown": {}}, "description": "The card."}},
    response_class=Response,
)
def get_card(namespace: str, name: str, version: str, request: Request, ctx: ContextDep) -> Response:
    """The version's skill card as Markdown; 404 when it was published without one."""
    with reading(ctx, request) as r:
        row = load_version(r.session, r.principal, namespace, name, version)
        card = r.session.get(Card, row.id)
        if card is None:
            raise NotFound(f"`{namespace}/{name}@{version}` was published without a card.")
        return Response(
            card.text.encode("utf-8"),
            media_type="text/markdown; charset=utf-8",
            headers={"X-Tvreg-Digest": card.digest},
        )
