"""``/skills``: publish, search, read, download, yank and tag skill versions.

Reads answer 404 with the same body for a private skill the caller cannot see as for
a missing one (see :mod:`registry_server.auth`). Writes that change a skill (yank,
tags) take the skill row lock, like publish, so tag moves never interleave.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable
from typing import IO, Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import exists, func, or_, select
from sqlalchemy.orm import Session, selectinload
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import Receive, Scope, Send

from .. import audit
from ..auth import (
    Principal,
    readable_namespace,
    readable_skill,
    require_role,
    skill_not_found,
)
from ..context import Context
from ..db import write_session
from ..deps import ContextDep, PrincipalDep, reading
from ..errors import ApiError, BadRequest, NotFound, RangeNotSatisfiable, ServerFault
from ..fields import MAX_PAGE, MAX_YANK_REASON, check_query, check_text
from ..models import DistTag, Namespace, Skill, Version
from ..names import check_tag, check_version, semver_key
from ..publish import move_tag, publish
from ..schemas import (
    DistTags,
    ErrorBody,
    PublishRequest,
    SearchResults,
    SkillOut,
    TagRequest,
    VersionOut,
    YankRequest,
    version_out,
)

router = APIRouter(tags=["skills"])
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 503)}
MAX_PER_PAGE = 100


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# A ranged GET from byte 0 of at most this many bytes, short of the end, reads a header
# (safetensors metadata, a `.tvskill` manifest): it is not counted as a download.
_PROBE_BYTES = 1024 * 1024


def _single_range(header: str, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) of a one-part ``bytes=`` range, or None to send everything.

    Raises ValueError when the range starts past the end (416). Several ranges, other
    units and malformed values are ignored, as RFC 9110 lets a server do.
    """
    m = _RANGE.match(header.replace(" ", ""))
    if m is None or m.group(0) == "bytes=-":
        return None
    first, last = m.groups()
    if not first:
        return (max(size - int(last), 0), size) if int(last) > 0 else None
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size:
        raise ValueError(start)
    return (start, end) if start < end else None


def _starts_download(request: Headers, start: int, end: int, size: int) -> bool:
    """Whether a GET of ``[start, end)`` begins a download of the artifact (it is counted once).

    A ranged download's pieces say which they are (``X-Tvreg-Download: first`` on the first
    request of the piece at byte 0, ``more`` on every other), so one download over many
    connections counts once whatever its piece size and retries. Without the header, a read
    from byte 0 counts unless it is a header read (at most 1 MiB, short of the end).
    """
    part = request.get("x-tvreg-download")
    if part == "first":
        return start == 0
    if part == "more":
        return False
    probe = end < size and end - start <= _PROBE_BYTES  # a header read (`install --dry-run hf://`)
    return start == 0 and not probe


class _StreamedBlob(Response):
    """A blob from either store, read 1 MiB at a time off the event loop, one range at most.

    Both stores answer through this class, so their ``Range`` answers are the same: one
    ``bytes=`` range → 206 with ``Content-Range``; several ranges, another unit or a
    malformed value → 200 with the whole blob (RFC 9110 lets a server ignore ``Range``;
    multipart answers to many small overlapping ranges are a known amplification, so
    none are built); a range starting past the end → 416 ``range_not_satisfiable`` in
    the API's error shape with ``Content-Range: bytes */size``. A remote store is asked
    only for the bytes sent. ``If-Range`` is honoured against the ETag (the digest).
    """

    chunk_size = 1024 * 1024

    def __init__(
        self,
        file: IO[bytes],
        size: int,
        *,
        headers: dict[str, str],
        on_download: Callable[[], None] | None = None,
    ) -> None:
        self.on_download = on_download
        self.file = file
        self.size = size
        self.status_code = 200
        self.media_type = "application/octet-stream"
        self.background = None
        self.init_headers({**headers, "Content-Length": str(size), "Accept-Ranges": "bytes"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._respond(scope, receive, send)
        finally:
            await run_in_threadpool(self.file.close)

    async def _respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Headers(scope=scope)
        start, end, status = 0, self.size, 200
        headers = MutableHeaders(raw=list(self.raw_headers))
        wanted = request.get("range")
        if wanted and request.get("if-range", self.headers["etag"]) == self.headers["etag"]:
            try:
                part = _single_range(wanted, self.size)
            except ValueError:
                error = RangeNotSatisfiable(
                    f"the range `{wanted}` starts past the end of the {self.size}-byte artifact.",
                    size=self.size,
                )
                await _json_error(error)(scope, receive, send)
                return
            if part is not None:
                (start, end), status = part, 206
                headers["content-range"] = f"bytes {start}-{end - 1}/{self.size}"
                headers["content-length"] = str(end - start)
        await send({"type": "http.response.start", "status": status, "headers": headers.raw})
        if self.on_download is not None and scope["method"] == "GET" and _starts_download(request, start, end, self.size):
            self.on_download()  # a download from the first byte; a resumed one was counted when it began
        if scope["method"] == "HEAD" or start == end:
            await send({"type": "http.response.body", "body": b""})
            return

        async with anyio.create_task_group() as group:

            async def stream() -> None:
                await run_in_threadpool(self.file.seek, start)
                pos = start
                while pos < end:
                    chunk = await run_in_threadpool(self.file.read, min(self.chunk_size, end - pos))
                    if not chunk:
                        raise OSError(f"the stored blob ended at byte {pos} of {end}")
                    pos += len(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": pos < end})
                group.cancel_scope.cancel()

            group.start_soon(stream)
            # Stop reading from the store as soon as the client goes away.
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()


@router.put(
    "/skills/{namespace}/{name}/versions/{version}",
    status_code=201,
    response_model=VersionOut,
    responses={
        **_ERRORS,
        200: {"model": VersionOut, "description": "Identical bytes were already published."},
    },
)
def publish_version(
    namespace: str,
    name: str,
    version: str,
    body: PublishRequest,
    ctx: ContextDep,
    principal: PrincipalDep,
) -> Any:
    """Publish a finished upload as `namespace/name@version` (201), or confirm identical bytes (200)."""
    result = publish(ctx, principal, namespace, name, version, upload_id=body.upload_id, tag=body.tag)
    return JSONResponse(result.body, status_code=201 if result.created else 200)


def _json_error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _visible_namespaces(principal: Principal | None) -> Any:
    if principal is None:
        return Namespace.private.is_(False)
    return or_(Namespace.private.is_(False), Namespace.team_id.in_(list(principal.roles)))


@router.get("/skills", response_model=SearchResults, responses=_ERRORS)
def search(
    request: Request,
    ctx: ContextDep,
    q: str | None = None,
    base: str | None = None,
    tag: str | None = None,
    namespace: str | None = None,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    per_page: Annotated[int, Query(ge=1, le=MAX_PER_PAGE)] = 20,
) -> Response:
    """Skills the caller can read, filtered by text, base fingerprint, dist-tag and namespace."""
    q = check_query(q, field="q")
    tag = check_query(tag, field="tag")
    namespace = check_query(namespace, field="namespace")
    if base and (len(base) != 64 or any(c not in "0123456789abcdef" for c in base)):
        raise BadRequest(f"`base` must be a 64-hex base fingerprint, not {base!r}.")
    with reading(ctx, request) as r:
        return r.answer(
            ("search", q, base, tag, namespace, page, per_page),
            SearchResults,
            lambda: _search(r.session, r.principal, q, base, tag, namespace, page, per_page),
        )


def _search(
    s: Session,
    principal: Principal | None,
    q: str | None,
    base: str | None,
    tag: str | None,
    namespace: str | None,
    page: int,
    per_page: int,
) -> dict:
    where: list[Any] = [_visible_namespaces(principal)]
    if q:
        needle = q.lower()
        where.append(
            or_(
                func.lower(Skill.name).contains(needle, autoescape=True),
                func.lower(Skill.description).contains(needle, autoescape=True),
            )
        )
    if base:
        where.append(
            exists().where(
                Version.skill_id == Skill.id, Version.base_fingerprint == base, Version.yanked.is_(False)
            )
        )
    if tag:
        where.append(exists().where(DistTag.skill_id == Skill.id, DistTag.tag == tag))
    if namespace:
        where.append(Namespace.name == namespace)
    query = select(Skill).join(Namespace, Skill.namespace_id == Namespace.id).where(*where)
    total = s.scalar(select(func.count()).select_from(query.subquery())) or 0
    skills = s.scalars(
        query.order_by(Namespace.name, Skill.name)
        .offset((page - 1) * per_page)
        .limit(per_page)
        .options(
            selectinload(Skill.namespace),
            # A summary needs four columns of each version, not its manifest.
            selectinload(Skill.versions).load_only(
                Version.skill_id, Version.version, Version.base_fingerprint, Version.yanked
            ),
            selectinload(Skill.tags).selectinload(DistTag.version).load_only(Version.version),
        )
    ).all()
    items = [_summary(skill) for skill in skills]
    return {"items": items, "page": page, "per_page": per_page, "total": total}


def _summary(skill: Skill) -> dict:
    tags = {t.tag: t.version.version for t in skill.tags}
    return {
        "name": skill.full_name,
        "description": skill.description,
        "latest": tags.get("latest"),
        "versions": len(skill.versions),
        "bases": sorted({v.base_fingerprint for v in skill.versions if not v.yanked}),
        "private": skill.namespace.private,
    }


def load_version(s: Session, principal: Principal | None, namespace: str, name: str, version: str) -> Version:
    skill = readable_skill(s, principal, namespace, name)
    row = s.scalars(
        select(Version)
        .where(Version.skill_id == skill.id, Version.version == version)
        .options(selectinload(Version.publisher), selectinload(Version.skill).selectinload(Skill.namespace))
    ).first()
    if row is None:
        raise NotFound(f"version `{version}` of skill `{namespace}/{name}` was not found.")
    return row


@router.get("/skills/{namespace}/{name}", response_model=SkillOut, responses=_ERRORS)
def skill_info(
    namespace: str,
    name: str,
    request: Request,
    ctx: ContextDep,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    per_page: Annotated[int, Query(ge=1, le=MAX_PER_PAGE)] = MAX_PER_PAGE,
) -> Response:
    """A skill, its dist-tags and one page of its versions in semver order.

    `total_versions` counts them all; a `Link` header (`rel="next"`, `"prev"`, `"first"`,
    `"last"`, as GitHub's) points at the neighbouring pages.
    """
    with reading(ctx, request) as r:
        response = r.answer(
            ("skill", namespace, name, page, per_page),
            SkillOut,
            lambda: _skill_info(r.session, r.principal, namespace, name, page, per_page),
            headers=lambda body: {TOTAL_HEADER: str(body["total_versions"])},
        )
    total = int(response.headers.get(TOTAL_HEADER, "0"))
    link = page_links(request, page, per_page, total)
    if link:
        response.headers["Link"] = link
    return response


TOTAL_HEADER = "X-Total-Count"


def page_links(request: Request, page: int, per_page: int, total: int) -> str:
    """A GitHub-style ``Link`` header for ``page`` of ``total`` items, ``per_page`` each ("" for one page)."""
    last = max(1, -(-total // per_page))
    rels = []
    if page < last:
        rels += [("next", page + 1), ("last", last)]
    if page > 1:
        rels += [("first", 1), ("prev", min(page - 1, last))]
    return ", ".join(
        f'<{request.url.include_query_params(page=n, per_page=per_page)}>; rel="{rel}"' for rel, n in rels
    )


def ordered_versions(s: Session, skill: Skill) -> list[tuple[int, str, bool]]:
    """``(id, version, yanked)`` of every version of ``skill`` in ascending semver order.

    Three narrow columns per version, so ordering a long history costs little; the
    rows of one page are loaded afterwards by :func:`versions_by_id`.
    """
    rows = s.execute(
        select(Version.id, Version.version, Version.yanked).where(Version.skill_id == skill.id)
    ).all()
    return sorted(((r[0], r[1], r[2]) for r in rows), key=lambda r: semver_key(r[1]))


def versions_by_id(s: Session, ids: list[int]) -> list[Version]:
    """The version rows ``ids`` (publisher loaded), in the order given."""
    rows = s.scalars(select(Version).where(Version.id.in_(ids)).options(selectinload(Version.publisher))).all()
    by_id = {row.id: row for row in rows}
    return [by_id[i] for i in ids if i in by_id]


def _skill_info(
    s: Session, principal: Principal | None, namespace: str, name: str, page: int = 1, per_page: int = MAX_PER_PAGE
) -> dict:
    skill = readable_skill(s, principal, namespace, name)
    ordered = ordered_versions(s, skill)
    ids = [r[0] for r in ordered[(page - 1) * per_page : page * per_page]]
    tags = s.execute(
        select(DistTag.tag, Version.version)
        .join(Version, DistTag.version_id == Version.id)
        .where(DistTag.skill_id == skill.id)
    ).all()
    downloads = s.scalar(select(func.coalesce(func.sum(Version.downloads), 0)).where(Version.skill_id == skill.id))
    return {
        "name": skill.full_name,
        "description": skill.description,
        "private": skill.namespace.private,
        "dist_tags": dict(sorted(tags)),
        "downloads": int(downloads or 0),
        "page": page,
        "per_page": per_page,
        "total_versions": len(ordered),
        "versions": [version_out(skill, v) for v in versions_by_id(s, ids)],
    }


@router.get("/skills/{namespace}/{name}/versions/{version}", response_model=VersionOut, responses=_ERRORS)
def version_info(namespace: str, name: str, version: str, request: Request, ctx: ContextDep) -> Response:
    """One version object."""
    with reading(ctx, request) as r:

        def build() -> dict:
            row = load_version(r.session, r.principal, namespace, name, version)
            return version_out(row.skill, row)

        return r.answer(("version", namespace, name, version), VersionOut, build)


@router.api_route(
    "/skills/{namespace}/{name}/versions/{version}/artifact",
    methods=["GET", "HEAD"],
    responses={
        **_ERRORS,
        200: {"content": {"application/octet-stream": {}}, "description": "The artifact bytes."},
        206: {"content": {"application/octet-stream": {}}, "description": "The requested byte range."},
    },
    response_class=Response,
)
def download(
    namespace: str,
    name: str,
    version: str,
    ctx: ContextDep,
    principal: PrincipalDep,
) -> Response:
    """The artifact bytes; honours `Range: bytes=a-b`; digest in `Digest`, `X-Tvreg-Digest` and `ETag`."""
    with ctx.sessions() as s:
        row = load_version(s, principal, namespace, name, version)
        digest, size, version_id = row.digest, row.size, row.id
    try:
        if ctx.store.local:
            path = ctx.store.path(digest)
            stored = os.stat(path).st_size
        else:
            stored = ctx.store.size(digest)
    except FileNotFoundError as exc:
        raise ServerFault(
            f"the stored bytes of `{namespace}/{name}@{version}` are missing on the server."
        ) from exc
    if stored != size:
        raise ServerFault(
            f"the stored bytes of `{namespace}/{name}@{version}` have the wrong size on the server."
        )
    raw = bytes.fromhex(digest.removeprefix("sha256:"))
    headers = {
        "Digest": "sha-256=" + base64.b64encode(raw).decode("ascii"),
        "X-Tvreg-Digest": digest,
        "ETag": f'"{digest}"',
        "Cache-Control": "public, max-age=31536000, immutable",
    }
    # One implementation of Range for both stores, so their answers agree (docs/registry-api.md).
    try:
        file = open(path, "rb") if ctx.store.local else ctx.store.open(digest)  # noqa: SIM115
    except FileNotFoundError as exc:
        raise ServerFault(
            f"the stored bytes of `{namespace}/{name}@{version}` are missing on the server."
        ) from exc
    counter = ctx.downloads
    return _StreamedBlob(
        file, size, headers=headers, on_download=(lambda: counter.count(version_id)) if counter else None
    )


def _yank(
    ctx: Context,
    principal: Principal | None,
    namespace: str,
    name: str,
    version: str,
    *,
    yanked: bool,
    reason: str | None,
) -> dict:
    label = f"{namespace}/{name}@{version}"
    with write_session(ctx.sessions) as s:
        ns = readable_namespace(s, principal, namespace, skill=name)
        principal = require_role(
            principal, ns, "write", action=f"{'yanking' if yanked else 'un-yanking'} `{label}`"
        )
        row = load_version(s, principal, namespace, name, version)
        row.yanked = yanked
        row.yanked_reason = reason if yanked else None
        audit.record(
            s,
            actor=principal.name,
            action="version.yank" if yanked else "version.unyank",
            target=label,
            reason=reason,
        )
        s.commit()
        return version_out(row.skill, row)


@router.post(
    "/skills/{namespace}/{name}/versions/{version}/yank", response_model=VersionOut, responses=_ERRORS
)
def yank(
    namespace: str,
    name: str,
    version: str,
    body: YankRequest,
    ctx: ContextDep,
    principal: PrincipalDep,
) -> dict:
    """Mark a version yanked: ranges skip it, exact pins still install it (with the reason)."""
    reason = check_text(body.reason, field="reason", limit=MAX_YANK_REASON, allow_newlines=True)
    return _yank(ctx, principal, namespace, name, version, yanked=True, reason=reason or None)


@router.delete(
    "/skills/{namespace}/{name}/versions/{version}/yank", response_model=VersionOut, responses=_ERRORS
)
def unyank(
    namespace: str,
    name: str,
    version: str,
    ctx: ContextDep,
    principal: PrincipalDep,
) -> dict:
    """Undo a yank."""
    return _yank(ctx, principal, namespace, name, version, yanked=False, reason=None)


def _tags_of(s: Session, skill: Skill) -> dict[str, str]:
    rows = s.execute(
        select(DistTag.tag, Version.version)
        .join(Version, DistTag.version_id == Version.id)
        .where(DistTag.skill_id == skill.id)
    ).all()
    return dict(sorted(rows))


def _locked_skill(s: Session, principal: Principal | None, namespace: str, name: str, action: str) -> Skill:
    ns = readable_namespace(s, principal, namespace, skill=name)
    require_role(principal, ns, "write", action=action)
    skill = s.scalars(
        select(Skill).where(Skill.namespace_id == ns.id, Skill.name == name).with_for_update()
    ).first()
    if skill is None:
        raise skill_not_found(namespace, name)
    return skill


@router.put("/skills/{namespace}/{name}/tags/{tag}", response_model=DistTags, responses=_ERRORS)
def set_tag(
    namespace: str,
    name: str,
    tag: str,
    body: TagRequest,
    ctx: ContextDep,
    principal: PrincipalDep,
) -> dict:
    """Point a dist-tag at an existing version."""
    check_tag(tag)
    check_version(body.version)
    with write_session(ctx.sessions) as s:
        skill = _locked_skill(s, principal, namespace, name, f"tagging `{namespace}/{name}`")
        row = s.scalars(
            select(Version).where(Version.skill_id == skill.id, Version.version == body.version)
        ).first()
        if row is None:
            raise NotFound(f"version `{body.version}` of skill `{namespace}/{name}` was not found.")
        move_tag(s, skill, tag, row)
        assert principal is not None
        audit.record(
            s,
            actor=principal.name,
            action="tag.set",
            target=f"{namespace}/{name}",
            tag=tag,
            version=body.version,
        )
        s.commit()
        return {"dist_tags": _tags_of(s, skill)}


@router.delete("/skills/{namespace}/{name}/tags/{tag}", response_model=DistTags, responses=_ERRORS)
def delete_tag(
    namespace: str,
    name: str,
    tag: str,
    ctx: ContextDep,
    principal: PrincipalDep,
) -> dict:
    """Remove a dist-tag (never `latest`)."""
    if tag == "latest":
        raise BadRequest("the `latest` tag cannot be deleted; point it at another version instead.")
    with write_session(ctx.sessions) as s:
        skill = _locked_skill(s, principal, namespace, name, f"untagging `{namespace}/{name}`")
        row = s.get(DistTag, (skill.id, tag))
        if row is None:
            raise NotFound(f"tag `{tag}` of skill `{namespace}/{name}` was not found.")
        s.delete(row)
        assert principal is not None
        audit.record(s, actor=principal.name, action="tag.delete", target=f"{namespace}/{name}", tag=tag)
        s.commit()
        return {"dist_tags": _tags_of(s, skill)}
