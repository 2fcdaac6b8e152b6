"""``/uploads``: create, append to (PATCH with ``Upload-Offset``), inspect and abandon uploads.

PATCH is the only async route: it streams the body to the staging area without holding
it in memory, counting bytes so that a body running past the declared size is refused
after reading at most one network chunk too many (docs/reliability.md row 6). Blocking work (file
writes, database calls) runs in worker threads, in writes of about 4 MiB.
"""

from __future__ import annotations

import errno
import logging
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from tvreg._format.faults import crash_point

from .. import uploads
from ..auth import require_principal
from ..deps import ContextDep, PrincipalDep
from ..errors import ApiError, BadRequest, InsufficientStorage
from ..gate import streamed
from ..schemas import ErrorBody, UploadCreate, UploadCreated, UploadOffset, UploadState

log = logging.getLogger("registry_server")
router = APIRouter(tags=["uploads"])
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 503, 507)}
_WRITE_BYTES = 4 * 1024 * 1024


@router.post("/uploads", status_code=201, response_model=UploadCreated, responses=_ERRORS)
def create_upload(
    body: UploadCreate,
    ctx: ContextDep,
    principal: PrincipalDep,
) -> dict:
    """Start a resumable upload of `size` bytes that must hash to `digest`."""
    upload = uploads.create(ctx, principal, size=body.size, digest=body.digest)
    return {"id": upload.id, "offset": 0, "chunk_size": ctx.settings.chunk_size}


@router.get("/uploads/{upload_id}", response_model=UploadState, responses=_ERRORS)
def get_upload(
    upload_id: str,
    ctx: ContextDep,
    principal: PrincipalDep,
) -> dict:
    """Where an upload stands, to resume it after a crash."""
    principal = require_principal(principal, action="reading an upload")
    upload = uploads.get(ctx, principal, upload_id)
    return {
        "id": upload.id,
        "offset": upload.received,
        "size": upload.size,
        "digest": upload.digest,
        "state": upload.state,
    }


@router.delete("/uploads/{upload_id}", status_code=204, responses=_ERRORS)
def delete_upload(
    upload_id: str,
    ctx: ContextDep,
    principal: PrincipalDep,
) -> Response:
    """Abandon an upload and remove its bytes."""
    principal = require_principal(principal, action="deleting an upload")
    uploads.delete(ctx, principal, upload_id)
    return Response(status_code=204)


def _storage_error(exc: OSError, unstored: int) -> ApiError:
    """507 for a full disk (the client retries later), 500 for any other write failure."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        log.error("upload staging is out of space at %s: %s", exc.filename or "the staging area", exc)
        return InsufficientStorage(
            f"the registry is out of storage space; {unstored} bytes of this chunk could not be "
            "stored. Retry later: the upload resumes from its recorded offset."
        )
    log.error("upload staging failed", exc_info=exc)
    return ApiError("the registry could not store the uploaded bytes.")


def _int_header(request: Request, name: str, *, required: bool) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        if required:
            raise BadRequest(f"the `{name}` header is required: the offset this chunk starts at.")
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"the `{name}` header must be a non-negative integer, not {raw!r}.") from None
    if value < 0:
        raise BadRequest(f"the `{name}` header must be a non-negative integer, not {raw!r}.")
    return value


@router.patch(
    "/uploads/{upload_id}",
    response_model=UploadOffset,
    responses=_ERRORS,
    openapi_extra={
        "requestBody": {
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
        }
    },
)
@streamed
async def append_upload(
    upload_id: str,
    request: Request,
    ctx: ContextDep,
    principal: PrincipalDep,
) -> dict:
    """Append the raw body at `Upload-Offset`, which must equal the upload's current offset."""
    principal = require_principal(principal, action="uploading an artifact")
    offset = _int_header(request, "Upload-Offset", required=True)
    assert offset is not None
    length = _int_header(request, "Content-Length", required=False)
    claim = await run_in_threadpool(uploads.claim, ctx, principal, upload_id, offset, length)
    try:
        writer = await run_in_threadpool(ctx.staging.open, upload_id, offset)
    except BaseException:
        await run_in_threadpool(uploads.release, ctx, claim, offset)
        raise
    room = claim.size - offset
    pending = bytearray()
    written = 0
    renewed = time.monotonic()
    try:
        try:
            async for chunk in request.stream():
                if written + len(pending) + len(chunk) > room:
                    raise uploads.past_end(claim.size)
                pending += chunk
                if len(pending) >= _WRITE_BYTES:
                    full, pending = pending, bytearray()
                    await run_in_threadpool(writer.write, full)
                    written += len(full)
                if time.monotonic() - renewed > uploads.RENEW_AFTER_SECONDS:
                    await run_in_threadpool(uploads.renew, ctx, claim)
                    renewed = time.monotonic()
        except ClientDisconnect:
            # Keep what arrived: the client resumes from the offset GET /uploads/{id} reports.
            pass
        if pending:
            await run_in_threadpool(writer.write, pending)
        new_offset = await run_in_threadpool(writer.finish)
    except BaseException as exc:
        await run_in_threadpool(writer.abort)
        await run_in_threadpool(uploads.release, ctx, claim, offset)
        if isinstance(exc, OSError):
            raise _storage_error(exc, (length - written) if length is not None else _WRITE_BYTES) from exc
        raise
    crash_point("registry.upload.before_offset")
    await run_in_threadpool(uploads.release, ctx, claim, new_offset)
    return {"offset": new_offset}
