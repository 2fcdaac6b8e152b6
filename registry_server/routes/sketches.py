"""``/skills/{ns}/{name}/versions/{version}/sketch``: a version's interference sketch.

The sketch (``tvreg.sketch``) is what ``tvreg check`` downloads instead of the artifact.
It is uploaded after the version is published, once: the first upload wins, the same
bytes again are a no-op, other bytes are a 409, as for versions. The registry checks the
sketch's layout and that it names this version and this version's artifact digest, so a
sketch cannot be attached to the wrong artifact by mistake; that its numbers describe
the artifact is, like the manifest, the publisher's word.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from tvreg.sketch import SketchError, read_sketch_header

from .. import audit
from ..auth import Principal, readable_namespace, require_role
from ..context import Context
from ..db import write_session
from ..deps import ContextDep, PrincipalDep
from ..errors import Conflict, InvalidSketch, NoSketch, NotFound
from ..models import Skill, Version, VersionSketch
from ..schemas import ErrorBody, VersionOut, version_out
from .skills import load_version

router = APIRouter(tags=["sketches"])
_ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 503)}
_PATH = "/skills/{namespace}/{name}/versions/{version}/sketch"


def _store(
    ctx: Context, principal: Principal | None, namespace: str, name: str, version: str, data: bytes
) -> tuple[dict, bool]:
    label = f"{namespace}/{name}@{version}"
    with write_session(ctx.sessions) as s:
        ns = readable_namespace(s, principal, namespace, skill=name)
        principal = require_role(principal, ns, "write", action=f"uploading the sketch of `{label}`")
        row = s.scalars(
            select(Version)
            .join(Skill, Version.skill_id == Skill.id)
            .where(Skill.namespace_id == ns.id, Skill.name == name, Version.version == version)
            .with_for_update()
        ).first()
        if row is None:
            raise NotFound(f"version `{version}` of skill `{namespace}/{name}` was not found.")
        try:
            meta, _ = read_sketch_header(data, where="the uploaded sketch")
        except SketchError as exc:
            raise InvalidSketch(exc.message) from exc
        if meta.get("artifact_digest") != row.digest:
            raise InvalidSketch(
                f"the uploaded sketch was made from artifact {meta.get('artifact_digest')}, "
                f"but `{label}` is {row.digest}."
            )
        if meta.get("skill") != name or meta.get("version") != version:
            raise InvalidSketch(
                f"the uploaded sketch is of `{meta.get('skill')}@{meta.get('version')}`, not of `{label}`."
            )
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if row.sketch_digest is not None:
            if row.sketch_digest == digest:
                return version_out(row.skill, row), False
            raise Conflict(
                f"`{label}` already has a sketch ({row.sketch_digest}; this one is {digest}); "
                "sketches are immutable, like versions.",
                extra={"published_digest": row.sketch_digest, "upload_digest": digest},
            )
        s.add(VersionSketch(version_id=row.id, sketch_version=int(meta["sketch_version"]), data=data))
        row.sketch_digest, row.sketch_size = digest, len(data)
        audit.record(
            s, actor=principal.name, action="version.sketch", target=label, digest=digest, size=len(data)
        )
        s.commit()
        return version_out(row.skill, row), True


@router.put(
    _PATH,
    status_code=201,
    response_model=VersionOut,
    responses={**_ERRORS, 200: {"model": VersionOut, "description": "The same sketch was already stored."}},
)
async def put_sketch(
    namespace: str, name: str, version: str, request: Request, ctx: ContextDep, principal: PrincipalDep
) -> Any:
    """Attach a sketch (the raw bytes of a `.tvsketch` file) to a published version; needs `write`."""
    data = await request.body()
    body, created = await run_in_threadpool(_store, ctx, principal, namespace, name, version, data)
    return JSONResponse(body, status_code=201 if created else 200)


@router.get(
    _PATH,
    responses={
        **_ERRORS,
        200: {"content": {"application/octet-stream": {}}, "description": "The sketch bytes."},
    },
    response_class=Response,
)
def get_sketch(namespace: str, name: str, version: str, ctx: ContextDep, principal: PrincipalDep) -> Response:
    """The version's sketch; 404 `no_sketch` when it was published without one."""
    with ctx.sessions() as s:
        row = load_version(s, principal, namespace, name, version)
        if row.sketch_digest is None:
            raise NoSketch(f"`{namespace}/{name}@{version}` was published without a sketch.")
        digest = row.sketch_digest
        stored = s.get(VersionSketch, row.id)
        if stored is None:
            raise NoSketch(f"`{namespace}/{name}@{version}` was published without a sketch.")
        data = stored.data
    raw = bytes.fromhex(digest.removeprefix("sha256:"))
    return Response(
        data,
        media_type="application/octet-stream",
        headers={
            "Digest": "sha-256=" + base64.b64encode(raw).decode("ascii"),
            "X-Tvreg-Digest": digest,
            "ETag": f'"{digest}"',
        },
    )
