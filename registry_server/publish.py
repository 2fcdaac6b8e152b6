"""Publishing a version: from a finished upload to an immutable, visible version row.

The order is what makes a publish safe to kill or race at any point:

1. Check access, names, and that the upload received every byte it declared.
2. If the version already exists, answer without storing anything: identical digest →
   200 (an idempotent retry), other bytes → 409 naming both digests.
3. Hash the staged bytes (SHA-256, streaming) and parse the artifact header with
   tvreg's own strict reader; the manifest must name this skill and version.
4. In one write transaction: create the skill if new, lock its row, re-check the
   version, insert it, link the blob into the store, move dist-tags, consume the
   upload, write the audit row, commit. Concurrent publishers of one version queue on
   the skill row lock (SQLite: on ``BEGIN IMMEDIATE``) and the later ones see the
   committed row, so exactly one answers 201; the unique constraint on
   ``(skill_id, version)`` backs this up. A kill before the commit leaves at most an
   orphan blob (harmless: no row names it) and the upload ready for a retry.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from tvreg._format.artifact import MANIFEST_KEY, verify_stored_artifact
from tvreg._format.faults import crash_point
from tvreg._format.safetensors_io import SafetensorsFile
from tvreg.errors import TvregError

from . import audit, uploads
from .auth import Principal, readable_namespace, require_role
from .context import Context
from .db import write_session
from .errors import ApiError, Conflict, InvalidArtifact, QuotaExceeded, SizeMismatch
from .fields import check_manifest
from .models import DistTag, Namespace, Skill, Upload, Version, utcnow
from .names import (
    check_name,
    check_tag,
    check_version,
    is_prerelease,
    precedence_core,
    semver_key,
    ultranormalize,
)
from .schemas import version_out

_ATTEMPTS = 3
VERIFY_WORKERS = max(1, min(4, os.cpu_count() or 1))
"""Threads checking one upload's tensors at the end of a publish (:func:`verify_stored_artifact`)."""


@dataclass(frozen=True)
class Published:
    """The version object to return, and whether this call created it (201) or found it (200)."""

    body: dict[str, Any]
    created: bool


@dataclass(frozen=True)
class _UploadSnapshot:
    id: str
    size: int
    digest: str
    received: int
    state: str


def publish(
    ctx: Context,
    principal: Principal | None,
    namespace: str,
    name: str,
    version: str,
    *,
    upload_id: str,
    tag: str | None,
) -> Published:
    """Publish upload ``upload_id`` as ``namespace/name@version`` and move ``tag``.

    Raises:
        ApiError: 400 (names, incomplete upload, digest mismatch, invalid artifact),
            401/403 (token, role), 404 (namespace or upload), 409 (other bytes already
            published, look-alike name).
    """
    check_name(namespace, what="namespace")
    check_name(name)
    check_version(version)
    if tag is not None:
        check_tag(tag)
    label = f"{namespace}/{name}@{version}"
    with ctx.sessions() as s:
        ns = readable_namespace(s, principal, namespace, skill=name)
        principal = require_role(principal, ns, "write", action=f"publishing `{label}`")
        upload = uploads.owned(s, principal, upload_id)
        up = _UploadSnapshot(upload.id, upload.size, upload.digest, upload.received, upload.state)
        ns_id = ns.id
        existing = _find_version(s, ns_id, name, version)
    if existing is not None and up.state != "open":
        # A retry of a publish whose answer was lost: same digest answers 200 again.
        return _existing_answer(ctx, existing, up, label)
    if up.state != "open":
        raise Conflict(f"upload `{up.id}` was already used; start a new upload.")
    if up.received != up.size:
        raise SizeMismatch(
            f"upload `{up.id}` received {up.received} of {up.size} bytes; finish it before publishing `{label}`.",
            expected=up.size,
            received=up.received,
        )
    if existing is not None:
        return _existing_answer(ctx, existing, up, label)

    try:
        manifest = _checked_upload(ctx, up, label)
        check_manifest(manifest, label)
        if (manifest["name"], manifest["version"]) != (name, version):
            raise InvalidArtifact(
                f"the artifact is `{manifest['name']}@{manifest['version']}` according to its manifest, "
                f"but it is being published as `{label}`."
            )
        _check_base_shapes(ctx, manifest, label)
    except ApiError as exc:
        _fail_upload(ctx, up.id, principal, label, exc)
        raise

    for _ in range(_ATTEMPTS):
        try:
            return _commit(ctx, principal, ns_id, name, version, up, manifest, tag, label)
        except IntegrityError:
            # A concurrent transaction created the same skill or version between our
            # checks and our insert; the next attempt sees its committed rows.
            continue
    raise Conflict(f"`{label}` is being published concurrently; retry the request.")


def _same_version(version: str) -> Any:
    """Rows whose version equals ``version`` in SemVer precedence: the same core, any build metadata.

    ``1.0.0+evil`` is ``1.0.0`` to every resolver, so it may not be published beside it
    (class 5 of docs/reliability.md). Cores hold only ``[0-9A-Za-z.-]``, so no LIKE
    wildcards; SQLite's LIKE ignores case, so callers keep only rows :func:`_is_same` accepts.
    """
    core = precedence_core(version)
    return or_(Version.version == core, Version.version.like(f"{core}+%"))


def _is_same(row: Version | None, version: str) -> bool:
    return row is not None and precedence_core(row.version) == precedence_core(version)


def _find_version(s: Session, ns_id: int, name: str, version: str) -> Version | None:
    rows = s.scalars(
        select(Version)
        .join(Skill, Version.skill_id == Skill.id)
        .where(Skill.namespace_id == ns_id, Skill.name == name, _same_version(version))
        .options(selectinload(Version.skill).selectinload(Skill.namespace), selectinload(Version.publisher))
    ).all()
    return next((row for row in rows if _is_same(row, version)), None)


def _existing_answer(ctx: Context, existing: Version, up: _UploadSnapshot, label: str) -> Published:
    """Answer for a version that is already published: 200 if same bytes, else 409."""
    if existing.version != label.rpartition("@")[2]:
        _consume_upload(ctx, up.id, "failed")
        raise Conflict(
            f"`{label}` has the same precedence as the published `{existing.version}` (build metadata "
            "does not make a new version); publish a new version number.",
            extra={"published_version": existing.version, "published_digest": existing.digest},
        )
    body = version_out(existing.skill, existing)
    if existing.digest == up.digest:
        _consume_upload(ctx, up.id, "published")
        return Published(body, created=False)
    _consume_upload(ctx, up.id, "failed")
    raise Conflict(
        f"`{label}` is already published with digest {existing.digest}; the upload has digest {up.digest}. "
        "Published versions are immutable: publish a new version number.",
        extra={"published_digest": existing.digest, "upload_digest": up.digest},
    )


def _consume_upload(ctx: Context, upload_id: str, state: str) -> None:
    with write_session(ctx.sessions) as s:
        s.execute(
            update(Upload)
            .where(Upload.id == upload_id, Upload.state == "open")
            .values(state=state, updated_at=utcnow())
        )
        s.commit()
    ctx.staging.discard(upload_id)


def _fail_upload(ctx: Context, upload_id: str, principal: Principal, label: str, exc: ApiError) -> None:
    """Remove the bytes of an upload that cannot be published, and record why."""
    ctx.staging.discard(upload_id)
    with write_session(ctx.sessions) as s:
        s.execute(update(Upload).where(Upload.id == upload_id).values(state="failed", updated_at=utcnow()))
        audit.record(
            s,
            actor=principal.name,
            action="version.publish_rejected",
            target=label,
            upload=upload_id,
            code=exc.code,
            message=exc.message,
        )
        s.commit()


def _checked_upload(ctx: Context, up: _UploadSnapshot, label: str) -> dict[str, Any]:
    """The staged upload's manifest once its bytes are the declared size and digest and every tensor checks.

    The digest and the tensors are checked at once, the digest on a thread of its own, since both
    only read the staged file: the publish waits for the longer of the two, not their sum. A digest
    or size that disagrees is the error reported whatever the tensors hold (the bytes are not
    what was declared, so nothing else about them matters).
    """
    with ThreadPoolExecutor(1, thread_name_prefix="tvreg-digest") as pool:
        staged = pool.submit(ctx.staging.verify, up.id, size=up.size, digest=up.digest)
        try:
            manifest = _read_manifest(ctx.staging.path(up.id), label)
        except ApiError:
            staged.result()
            raise
        staged.result()
    return manifest


def _read_manifest(path: Path, label: str) -> dict[str, Any]:
    """The artifact's full manifest, as stored, after tvreg's strict checks.

    Every tensor is checked as a decode would check it, as ``tvreg publish`` does before
    uploading, so that a hand-made artifact with a corrupt blob or NaN/Inf values
    (docs/reliability.md row 15) is refused here rather than by every installer. The check never
    expands a tensor (:func:`tvreg._format.artifact.verify_stored_artifact`): a declared shape is
    a claim, and memory stays a few MiB whatever an upload declares (issue 18, class 1).
    """
    try:
        verify_stored_artifact(path, workers=VERIFY_WORKERS)
        with SafetensorsFile(path) as f:
            text = f.metadata[MANIFEST_KEY]
    except TvregError as exc:
        reason = exc.message.replace(f"`{path}`", "the artifact").replace(str(path), "the artifact")
        raise InvalidArtifact(f"`{label}` cannot be published: {reason}") from exc
    return json.loads(text)


def _check_base_shapes(ctx: Context, manifest: dict[str, Any], label: str) -> None:
    """Refuse tensors whose shapes differ from the base model's, as the base's first published skill recorded them.

    Why: τ = θ_ft − θ_pre has exactly θ_pre's shapes, so every skill of one base
    fingerprint agrees on the shape of every tensor they share. The first publish for a
    fingerprint records them (its manifest); a later upload declaring another shape for
    one of them is lying about its base, whatever its bytes hold.
    """
    fingerprint = manifest["base_fingerprint"]
    with ctx.sessions() as s:
        first = s.scalars(
            select(Version.manifest).where(Version.base_fingerprint == fingerprint).order_by(Version.id).limit(1)
        ).first()
    known = (first or {}).get("tensors") or {}
    for name, entry in sorted(manifest["tensors"].items()):
        recorded = known.get(name)
        if isinstance(recorded, dict) and list(recorded.get("shape", [])) != list(entry["shape"]):
            raise InvalidArtifact(
                f"`{label}` cannot be published: tensor `{name}` has shape {list(entry['shape'])}, but base "
                f"{fingerprint[:12]}'s is {list(recorded['shape'])} (as its first published skill records it)."
            )


def _get_or_create_skill(s: Session, ns: Namespace, name: str, description: str) -> tuple[Skill, bool]:
    norm = ultranormalize(name)

    def lookup() -> Skill | None:
        return s.scalars(
            select(Skill).where(Skill.namespace_id == ns.id, Skill.normalized_name == norm).with_for_update()
        ).first()

    skill = lookup()
    created = False
    if skill is None:
        try:
            with s.begin_nested():
                skill = Skill(namespace_id=ns.id, name=name, normalized_name=norm, description=description)
                s.add(skill)
            created = True
        except IntegrityError:
            skill = lookup()
            if skill is None:
                raise
    if skill.name != name:
        raise Conflict(
            f"skill name `{ns.name}/{name}` is too similar to the existing `{ns.name}/{skill.name}` "
            "(names are compared ignoring case and runs of `-`, `_` and `.`)."
        )
    return skill, created


def move_tag(s: Session, skill: Skill, tag: str, version: Version) -> None:
    """Point ``tag`` at ``version``; the caller holds the skill row lock."""
    row = s.get(DistTag, (skill.id, tag))
    if row is None:
        s.add(DistTag(skill_id=skill.id, tag=tag, version_id=version.id))
    else:
        row.version_id = version.id


def _apply_publish_tag(s: Session, skill: Skill, version: Version, tag: str | None) -> bool:
    """Move ``tag`` on publish with npm's rules; True when ``latest`` now points here.

    ``latest`` moves only for a release (not a prerelease) higher than the current
    ``latest``, so publishing a 1.x backport after 2.0.0 does not demote ``latest``.
    """
    if tag is None:
        return False
    if tag == "latest":
        if is_prerelease(version.version):
            return False
        current = s.get(DistTag, (skill.id, "latest"))
        if current is not None and semver_key(current.version.version) >= semver_key(version.version):
            return False
    move_tag(s, skill, tag, version)
    return tag == "latest"


def namespace_used(s: Session, ns_id: int) -> int:
    """Bytes a namespace holds: its artifacts, sketches and skill cards.

    One definition for the quota check and ``admin show-quota``, so what is refused and
    what is shown cannot drift apart.
    """
    from .models import Card

    stored = s.scalar(
        select(func.coalesce(func.sum(Version.size), 0) + func.coalesce(func.sum(Version.sketch_size), 0))
        .join(Skill, Version.skill_id == Skill.id)
        .where(Skill.namespace_id == ns_id)
    )
    cards = s.scalar(
        select(func.coalesce(func.sum(Card.size), 0))
        .join(Version, Card.version_id == Version.id)
        .join(Skill, Version.skill_id == Skill.id)
        .where(Skill.namespace_id == ns_id)
    )
    return int(stored or 0) + int(cards or 0)  # PostgreSQL sums BIGINT as NUMERIC


def check_quota(
    ctx: Context, s: Session, ns: Namespace, size: int, *, what: str = "this artifact", kept: bool = True
) -> None:
    """507 ``quota_exceeded`` when ``size`` more bytes would put ``ns`` past the namespace quota.

    Artifacts, sketches and cards count alike; the caller holds the namespace row lock, so two
    writes cannot both pass the check and overshoot the quota together.
    """
    quota = ns.storage_quota if ns.storage_quota is not None else ctx.settings.namespace_quota
    if quota is None:
        return
    used = namespace_used(s, ns.id)
    if used + size > quota:
        raise QuotaExceeded(
            f"namespace `{ns.name}` holds {used} bytes; {what}'s {size} would pass its quota of {quota} bytes."
            + (" The upload is kept: publish it once an administrator raises the quota." if kept else ""),
            limit=quota,
            used=used,
        )


def _commit(
    ctx: Context,
    principal: Principal,
    ns_id: int,
    name: str,
    version: str,
    up: _UploadSnapshot,
    manifest: dict[str, Any],
    tag: str | None,
    label: str,
) -> Published:
    with write_session(ctx.sessions) as s:
        # The namespace row lock serialises its publishes, so the quota cannot be overshot by a race.
        ns = s.get_one(Namespace, ns_id, with_for_update=True)
        check_quota(ctx, s, ns, up.size)
        description = manifest.get("description") or ""
        skill, created = _get_or_create_skill(s, ns, name, description)
        existing = s.scalars(
            select(Version).where(Version.skill_id == skill.id, _same_version(version))
        ).all()
        if any(_is_same(row, version) for row in existing):
            s.rollback()
            with ctx.sessions() as r:
                found = _find_version(r, ns_id, name, version)
                assert found is not None
                return _existing_answer(ctx, found, up, label)
        row = Version(
            skill_id=skill.id,
            version=version,
            digest=up.digest,
            size=up.size,
            manifest=manifest,
            base_fingerprint=manifest["base_fingerprint"],
            kind=manifest["kind"],
            dataset_size=manifest.get("dataset_size"),
            dataset_unit=manifest.get("dataset_unit", "examples"),
            publisher_id=principal.user_id,
        )
        s.add(row)
        s.flush()
        ctx.store.link(ctx.staging.path(up.id), up.digest)
        crash_point("registry.publish.after_link")
        if _apply_publish_tag(s, skill, row, tag) or created:
            skill.description = description
        consumed = s.execute(
            update(Upload)
            .where(Upload.id == up.id, Upload.state == "open")
            .values(state="published", updated_at=utcnow())
        ).rowcount  # type: ignore[attr-defined]  # DML gives a CursorResult; Session.execute says Result
        if consumed != 1:
            raise Conflict(f"upload `{up.id}` was used by another publish; start a new upload.")
        audit.record(
            s,
            actor=principal.name,
            action="version.publish",
            target=label,
            digest=up.digest,
            size=up.size,
            upload=up.id,
            tag=tag,
        )
        s.commit()
        body = version_out(skill, row)
    ctx.staging.discard(up.id)
    return Published(body, created=True)
