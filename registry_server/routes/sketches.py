"""``/skills/{ns}/{name}/versions/{version}/sketch``: a version's interference sketch.

The sketch (``tvreg.sketch``) is what ``tvreg check`` downloads instead of the artifact.
It is uploaded after the version is published, once: the first upload wins, the same
bytes again are a no-op, other bytes are a 409, as for versions. The registry checks the
sketch's layout and that it names this version and this version's artifact digest, so a
sketch cannot be attached to the wrong artifact by mistake; that its numbers describe
the artifact is, like the manifest, the publisher's word.

A sketch's size is bounded by its version's tensors: at most
``projection_dim + sample_size`` float32 values per tensor the manifest lists (fewer for
a small tensor, which is kept whole), plus a header allowance (:func:`sketch_limit`).
The body is streamed under that bound after the caller was authenticated (see
:mod:`registry_server.gate`), and the whole sketch is parsed and checked against the
manifest (tensor names, element counts, array lengths, finite numbers) before it is
stored, so a malformed sketch is a 400 here, never a failure later in ``tvreg check``.
"""

from __future__ import annotations

import base64
import hashlib
import math
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from tvreg._format.sketch import (
    DEFAULT_PROJECTION_DIM,
    DEFAULT_SAMPLE_SIZE,
    Sketch,
    SketchError,
    read_sketch_header,
)

from .. import audit
from ..auth import Principal, readable_namespace, require_role
from ..context import Context
from ..db import write_session
from ..deps import ContextDep, PrincipalDep
from ..errors import Conflict, InvalidSketch, NoSketch, NotFound, TooLarge
from ..gate import streamed
from ..models import Namespace, Skill, Version, VersionSketch
from ..publish import check_quota
from ..schemas import ErrorBody, VersionOut, version_out
from .skills import load_version

router = APIRouter(tags=["sketches"])
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 503)}
_PATH = "/skills/{namespace}/{name}/versions/{version}/sketch"


HEADER_ALLOWANCE = 16 * 1024
PER_TENSOR_HEADER = 768
MAX_VALUES = DEFAULT_PROJECTION_DIM + DEFAULT_SAMPLE_SIZE


def _numel(entry: Any) -> int:
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        return 0
    n = 1
    for d in shape:
        n *= d
    return n


def sketch_limit(manifest: dict) -> int:
    """The largest sketch a version with this manifest can have, in bytes."""
    tensors = manifest.get("tensors") if isinstance(manifest, dict) else None
    if not isinstance(tensors, dict):
        return HEADER_ALLOWANCE
    total = HEADER_ALLOWANCE
    for name, entry in tensors.items():
        total += PER_TENSOR_HEADER + 3 * len(str(name).encode()) + 4 * min(_numel(entry), MAX_VALUES)
    return total


def _check_sketch(data: bytes, manifest: dict, label: str) -> dict:
    """Parse the whole sketch and check it against the version's manifest; its metadata."""

    def bad(what: str) -> InvalidSketch:
        return InvalidSketch(f"the uploaded sketch of `{label}` is malformed: {what}.")

    try:
        meta, spans = read_sketch_header(data, where="the uploaded sketch")
    except SketchError as exc:
        raise InvalidSketch(exc.message) from exc
    for key, (a, b) in spans.items():
        if a < 0 or b < a:
            raise bad(f"array `{key}` has a negative span ({a}, {b})")
    try:
        sketch = Sketch.from_bytes(data, where="the uploaded sketch")
    except SketchError as exc:
        raise InvalidSketch(exc.message) from exc
    if not 2 <= sketch.projection_dim <= DEFAULT_PROJECTION_DIM or sketch.projection_dim & (
        sketch.projection_dim - 1
    ):
        raise bad(f"`projection_dim` is {sketch.projection_dim}, not a power of two up to {DEFAULT_PROJECTION_DIM}")
    if not 1 <= sketch.sample_size <= DEFAULT_SAMPLE_SIZE:
        raise bad(f"`sample_size` is {sketch.sample_size}, not between 1 and {DEFAULT_SAMPLE_SIZE}")
    if not math.isfinite(sketch.top_fraction) or not 0 < sketch.top_fraction <= 1:
        raise bad(f"`top_fraction` is {sketch.top_fraction}")
    listed = found if isinstance(found := manifest.get("tensors"), dict) else {}
    expected_keys = set()
    for name, t in sketch.tensors.items():
        if name not in listed:
            raise bad(f"tensor `{name}` is not in the artifact")
        numel = _numel(listed[name])
        if t.numel != numel:
            raise bad(f"tensor `{name}` has {t.numel} elements in the sketch but {numel} in the artifact")
        small = numel <= sketch.projection_dim + sketch.sample_size
        if small != t.exact:
            raise bad(f"tensor `{name}` is {'not ' if small else ''}kept whole, against its size")
        if t.exact:
            counts = {"values": (t.sample, numel)}
        else:
            assert t.projection is not None
            counts = {"sample": (t.sample, sketch.sample_size), "projection": (t.projection, sketch.projection_dim)}
        for suffix, (array, count) in counts.items():
            if array.size != count:
                raise bad(f"`{name}::{suffix}` holds {array.size} values, not {count}")
            if not np.isfinite(array).all():
                raise bad(f"`{name}::{suffix}` holds NaN or infinite values")
            expected_keys.add(f"{name}::{suffix}")
        numbers = (t.norm, t.positive_fraction, t.top_threshold)
        if not all(math.isfinite(x) for x in numbers) or t.norm < 0 or not 0 <= t.positive_fraction <= 1:
            raise bad(f"tensor `{name}` has an invalid norm, fraction or threshold")
    if set(spans) != expected_keys:
        extra = sorted(set(spans) - expected_keys)
        raise bad(f"array `{extra[0] if extra else sorted(expected_keys - set(spans))[0]}` belongs to no tensor")
    return meta


def _limit_for(
    ctx: Context, principal: Principal | None, namespace: str, name: str, version: str
) -> tuple[int, str]:
    """Check the caller may attach a sketch and return the version's sketch limit (and label)."""
    label = f"{namespace}/{name}@{version}"
    with ctx.sessions() as s:
        ns = readable_namespace(s, principal, namespace, skill=name)
        require_role(principal, ns, "write", action=f"uploading the sketch of `{label}`")
        manifest = s.scalars(
            select(Version.manifest)
            .join(Skill, Version.skill_id == Skill.id)
            .where(Skill.namespace_id == ns.id, Skill.name == name, Version.version == version)
        ).first()
        if manifest is None:
            raise NotFound(f"version `{version}` of skill `{namespace}/{name}` was not found.")
    return sketch_limit(manifest), label


def _sketch_too_large(label: str, limit: int) -> TooLarge:
    error = TooLarge(
        f"the sketch of `{label}` may be at most {limit} bytes (its tensors' sample and projection sizes).",
        limit=limit,
    )
    error.headers["Connection"] = "close"  # the rest of the body is not read
    return error


def _store(
    ctx: Context, principal: Principal | None, namespace: str, name: str, version: str, data: bytes
) -> tuple[dict, bool]:
    label = f"{namespace}/{name}@{version}"
    with write_session(ctx.sessions) as s:
        ns = readable_namespace(s, principal, namespace, skill=name)
        principal = require_role(principal, ns, "write", action=f"uploading the sketch of `{label}`")
        # The namespace row first, as publish takes it: sketches count against its storage quota.
        ns = s.get_one(Namespace, ns.id, with_for_update=True)
        row = s.scalars(
            select(Version)
            .join(Skill, Version.skill_id == Skill.id)
            .where(Skill.namespace_id == ns.id, Skill.name == name, Version.version == version)
            .with_for_update()
        ).first()
        if row is None:
            raise NotFound(f"version `{version}` of skill `{namespace}/{name}` was not found.")
        meta = _check_sketch(data, row.manifest, label)
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
        check_quota(ctx, s, ns, len(data), what="this sketch", kept=False)
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
@streamed
async def put_sketch(
    namespace: str, name: str, version: str, request: Request, ctx: ContextDep, principal: PrincipalDep
) -> Any:
    """Attach a sketch (the raw bytes of a `.tvsketch` file) to a published version; needs `write`."""
    limit, label = await run_in_threadpool(_limit_for, ctx, principal, namespace, name, version)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _sketch_too_large(label, limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _sketch_too_large(label, limit)
    data = bytes(body)
    stored, created = await run_in_threadpool(_store, ctx, principal, namespace, name, version, data)
    return JSONResponse(stored, status_code=201 if created else 200)


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
