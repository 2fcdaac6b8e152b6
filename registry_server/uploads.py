"""Resumable uploads whose state lives in the database, so any replica can continue one.

An upload's durable offset (``received``) only moves after the bytes are fsynced in
the staging area. A PATCH first takes a short *lease* on the upload with one
conditional UPDATE (offset must match, no live lease), renews it while streaming, and
releases it with the new offset. Two PATCHes for one upload, on one replica or two,
therefore never write at once; a writer that dies simply lets its lease expire, and
the bytes it wrote past the recorded offset are cut off by the next writer.

A lease token starts with the serving process's *instance prefix*, derived from its
host name and port. A server killed mid-PATCH and restarted on the same address
drops the leases its previous life held (:func:`drop_dead_leases`), so the client's
retry goes through at once instead of waiting for them to expire.
"""

from __future__ import annotations

import hashlib
import secrets
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from . import audit
from .auth import Principal, require_scope
from .context import Context
from .db import write_session
from .errors import Conflict, NotFound, TooLarge, TooManyRequests
from .models import Upload, User, utcnow

LEASE_SECONDS = 60
RENEW_AFTER_SECONDS = 15
_PREFIX_CHARS = 12  # of the 32-character lease token


def instance_prefix(host: str, port: int) -> str:
    """The lease-token prefix of the server process listening on ``host:port`` of this machine."""
    name = f"{socket.gethostname()}/{host}:{port}"
    return hashlib.sha256(name.encode()).hexdigest()[:_PREFIX_CHARS]


def drop_dead_leases(ctx: Context) -> int:
    """Release the leases held by an earlier process of this instance (it died mid-PATCH).

    Called once at startup, before serving: nothing of this process holds a lease yet,
    so every lease with this instance's prefix belongs to a dead process. Their bytes
    past the recorded offset are cut off by the next PATCH, as for an expired lease.
    """
    if not ctx.instance:
        return 0
    with write_session(ctx.sessions) as s:
        dropped = s.execute(
            update(Upload)
            .where(Upload.writer.like(ctx.instance + "%"))
            .values(writer=None, lease_expires_at=None)
        ).rowcount  # type: ignore[attr-defined]  # DML gives a CursorResult; Session.execute says Result
        s.commit()
    return dropped


@dataclass(frozen=True)
class Claim:
    """A lease on an upload, held while one request appends to it."""

    upload_id: str
    token: str
    offset: int
    size: int


def _not_found(upload_id: str) -> NotFound:
    return NotFound(f"upload `{upload_id}` was not found.")


def owned(s: Session, principal: Principal, upload_id: str) -> Upload:
    """The upload ``upload_id`` if ``principal`` created it; 404 otherwise (even if it exists)."""
    try:
        uuid.UUID(upload_id)
    except ValueError:
        raise _not_found(upload_id) from None
    upload = s.get(Upload, upload_id)
    if upload is None or upload.user_id != principal.user_id:
        raise _not_found(upload_id)
    return upload


def _owned(ctx: Context, principal: Principal, upload_id: str) -> Upload:
    with ctx.sessions() as s:
        return owned(s, principal, upload_id)


def create(ctx: Context, principal: Principal | None, *, size: int, digest: str) -> Upload:
    """Start an upload of ``size`` bytes declared to hash to ``digest``.

    Raises:
        TooLarge: ``size`` exceeds the server's maximum artifact size.
        Forbidden: the token cannot write (a read-only token cannot publish anything).
    """
    principal = require_scope(principal, "write", action="uploading an artifact")
    limit = ctx.settings.max_artifact_bytes
    if size > limit:
        raise TooLarge(
            f"the artifact is {size} bytes, over this registry's limit of {limit} bytes.", limit=limit
        )
    upload = Upload(id=str(uuid.uuid4()), user_id=principal.user_id, size=size, digest=digest)
    _expire(ctx, principal.user_id)
    with write_session(ctx.sessions) as s:
        # Counted under the user's row lock (SQLite: the write lock), so concurrent creations cannot overshoot.
        own_limit = s.scalar(
            select(User.max_open_uploads).where(User.id == principal.user_id).with_for_update()
        )
        held = s.scalar(
            select(func.count())
            .select_from(Upload)
            .where(Upload.user_id == principal.user_id, Upload.state == "open")
        ) or 0  # a count: never None
        limit = own_limit if own_limit is not None else ctx.settings.max_open_uploads
        if held >= limit:
            wait = max(1, int(ctx.settings.upload_expiry))
            raise TooManyRequests(
                f"`{principal.name}` already has {held} open uploads, the limit; finish or delete one "
                f"(DELETE /uploads/{{id}}) or wait for one to expire ({ctx.settings.upload_expiry:g} s idle).",
                retry_after=wait,
            )
        ctx.staging.new(upload.id)
        s.add(upload)
        audit.record(
            s, actor=principal.name, action="upload.create", target=upload.id, size=size, digest=digest
        )
        s.commit()
    return upload


def _expire(ctx: Context, user_id: int) -> int:
    """Mark ``user_id``'s open uploads idle past the expiry failed and drop their bytes."""
    cutoff = utcnow() - timedelta(seconds=ctx.settings.upload_expiry)
    with ctx.sessions() as s:
        stale = s.scalars(
            select(Upload.id).where(
                Upload.user_id == user_id,
                Upload.state == "open",
                Upload.updated_at <= cutoff,
                or_(Upload.writer.is_(None), Upload.lease_expires_at < utcnow()),
            )
        ).all()
    for upload_id in stale:
        with write_session(ctx.sessions) as s:
            done = s.execute(
                update(Upload)
                .where(Upload.id == upload_id, Upload.state == "open", Upload.updated_at <= cutoff)
                .values(state="failed", updated_at=utcnow())
            ).rowcount  # type: ignore[attr-defined]  # DML gives a CursorResult; Session.execute says Result
            s.commit()
        if done:
            ctx.staging.discard(upload_id)
    return len(stale)


def get(ctx: Context, principal: Principal, upload_id: str) -> Upload:
    return _owned(ctx, principal, upload_id)


def delete(ctx: Context, principal: Principal, upload_id: str) -> None:
    """Abandon an upload: its staged bytes are removed, the row is kept as ``failed``."""
    upload = _owned(ctx, principal, upload_id)
    with write_session(ctx.sessions) as s:
        s.execute(
            update(Upload)
            .where(Upload.id == upload.id, Upload.state == "open")
            .values(state="failed", writer=None, lease_expires_at=None, updated_at=utcnow())
        )
        audit.record(s, actor=principal.name, action="upload.delete", target=upload.id)
        s.commit()
    if upload.state == "open":
        ctx.staging.discard(upload.id)


def claim(ctx: Context, principal: Principal, upload_id: str, offset: int, length: int | None) -> Claim:
    """Take the write lease on an upload whose durable offset is ``offset``.

    ``length`` is the request's Content-Length when known: a body that would run past
    the declared size is refused before a byte is read.

    Raises:
        NotFound: no such upload for this user.
        Conflict: the upload is finished or abandoned, ``offset`` is not its current
            offset (the body carries the current one), or another request holds the lease.
        TooLarge: ``offset + length`` exceeds the declared size.
    """
    upload = _owned(ctx, principal, upload_id)
    if upload.state != "open":
        raise Conflict(f"upload `{upload_id}` is {upload.state}; start a new upload.")
    if offset != upload.received:
        raise Conflict(
            f"Upload-Offset is {offset} but upload `{upload_id}` has {upload.received} bytes; "
            f"resume from offset {upload.received}.",
            headers={"Upload-Offset": str(upload.received)},
            extra={"offset": upload.received},
            top_level={"offset": upload.received},
        )
    if length is not None and offset + length > upload.size:
        raise past_end(upload.size)
    token = secrets.token_hex(16)
    token = ctx.instance + token[len(ctx.instance) :]
    now = utcnow()
    with write_session(ctx.sessions) as s:
        won = s.execute(
            update(Upload)
            .where(
                Upload.id == upload_id,
                Upload.state == "open",
                Upload.received == offset,
                or_(Upload.writer.is_(None), Upload.lease_expires_at < now),
            )
            .values(writer=token, lease_expires_at=now + timedelta(seconds=LEASE_SECONDS))
        ).rowcount  # type: ignore[attr-defined]  # DML gives a CursorResult; Session.execute says Result
        s.commit()
    if won != 1:
        raise Conflict(
            f"another request is writing to upload `{upload_id}`; retry in a few seconds.",
            headers={"Retry-After": "5"},
        )
    return Claim(upload_id, token, offset, upload.size)


def past_end(size: int) -> TooLarge:
    """413 for a body that would run past the upload's declared size (the limit it names)."""
    return TooLarge(f"the body runs past the upload's declared size of {size} bytes.", limit=size)


def renew(ctx: Context, claim: Claim) -> None:
    """Extend the lease while a long body streams in; Conflict if it was lost."""
    with write_session(ctx.sessions) as s:
        kept = s.execute(
            update(Upload)
            .where(Upload.id == claim.upload_id, Upload.writer == claim.token)
            .values(lease_expires_at=utcnow() + timedelta(seconds=LEASE_SECONDS))
        ).rowcount  # type: ignore[attr-defined]  # DML gives a CursorResult; Session.execute says Result
        s.commit()
    if kept != 1:
        raise Conflict(
            f"upload `{claim.upload_id}` was taken over by another request; resume from its offset."
        )


def release(ctx: Context, claim: Claim, offset: int) -> None:
    """Record the new durable ``offset`` and drop the lease."""
    with write_session(ctx.sessions) as s:
        kept = s.execute(
            update(Upload)
            .where(Upload.id == claim.upload_id, Upload.writer == claim.token)
            .values(received=offset, writer=None, lease_expires_at=None, updated_at=utcnow())
        ).rowcount  # type: ignore[attr-defined]  # DML gives a CursorResult; Session.execute says Result
        s.commit()
    if kept != 1:
        raise Conflict(
            f"upload `{claim.upload_id}` was taken over by another request; resume from its offset."
        )
