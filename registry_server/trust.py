"""Signing keys, version signatures and attestations: what the registry checks and records.

Why the registry checks at all, when clients verify against their own trusted keys:
a bundle that does not cover the artifact, or that no key of the publisher signed, is
a mistake or an attack, and refusing it at upload keeps the registry from serving
signatures that can only confuse. The registry's word is not what makes a signature
trusted: :mod:`tvreg._format.signing` verifies on the client against the keys *it* trusts.

Keys belong to one user or one team and are never deleted: revoking one records when
and why, and the key stays listed, so everyone can see it is no longer good.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tvreg._format.signing import (
    EVAL_PREDICATE,
    PublicKey,
    artifact_digests,
    load_public_key,
    read_bundle,
    verify_bundle,
)
from tvreg.errors import SignatureError

from . import audit
from .auth import Principal, require_scope, role_at_least
from .errors import BadRequest, Conflict, Forbidden, InvalidSignature, NotFound
from .models import Membership, Namespace, Team, User, Version, utcnow
from .trust_models import Attestation, SigningKey, VersionSignature

MAX_ATTESTATIONS_PER_UPLOADER = 8
"""Attestations one user may attach to one version: anyone who can read a skill may attest
it, so without a bound one account could fill a version's list (served to every reader)."""
MAX_KEYS_PER_OWNER = 32
"""Signing keys one user or team may register (revoked ones stay listed, so they count):
``GET /keys`` lists them all to anyone."""
MAX_ATTESTATIONS_PER_PAGE = 20
"""Attestations per page of ``GET …/attestations`` (each bundle is up to 64 KiB)."""


def key_out(key: SigningKey) -> dict[str, Any]:
    """The key object of the API (``key.user`` / ``key.team`` loaded)."""
    return {
        "key_id": key.key_id,
        "name": key.name,
        "owner": {"user": key.user.name}
        if key.user is not None
        else {"team": key.team.name if key.team else None},
        "public_key": key.public_key,
        "created_at": key.created_at.isoformat(),
        "created_by": key.created_by,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "revoked_reason": key.revoked_reason,
    }


def _user(s: Session, name: str) -> User:
    user = s.scalars(select(User).where(User.name == name)).first()
    if user is None:
        raise NotFound(f"user `{name}` was not found.")
    return user


def _team(s: Session, name: str) -> Team:
    team = s.scalars(select(Team).where(Team.name == name)).first()
    if team is None:
        raise NotFound(f"team `{name}` was not found.")
    return team


def _parse_key(pem: str) -> PublicKey:
    try:
        return load_public_key(pem, where="`public_key`")
    except SignatureError as exc:
        raise BadRequest(exc.message) from exc


def register_key(
    s: Session, *, actor: str, pem: str, user: User | None = None, team: Team | None = None, name: str = ""
) -> SigningKey:
    """Record ``pem`` as a key of ``user`` or ``team`` (the caller checked the right to do so).

    Raises:
        BadRequest: not an EC public key on an accepted curve.
        Conflict: the key is registered already (to anyone; a key has one owner).
    """
    public = _parse_key(pem)
    existing = s.scalars(select(SigningKey).where(SigningKey.key_id == public.id)).first()
    if existing is not None:
        owner = (
            existing.user.name if existing.user else f"team {existing.team.name}" if existing.team else "?"
        )
        raise Conflict(f"the key {public.id} is already registered (to `{owner}`).")
    owner_column = SigningKey.user_id if user is not None else SigningKey.team_id
    owner_id = user.id if user is not None else team.id if team is not None else None
    held = s.scalar(select(func.count()).select_from(SigningKey).where(owner_column == owner_id))
    if (held or 0) >= MAX_KEYS_PER_OWNER:
        who = f"user `{user.name}`" if user is not None else f"team `{team.name if team else '?'}`"
        raise Conflict(
            f"{who} already has {held} signing keys, revoked ones included, the most one owner may register."
        )
    key = SigningKey(
        key_id=public.id, public_key=public.pem, name=name[:100], user=user, team=team, created_by=actor
    )
    s.add(key)
    target = f"user:{user.name}" if user is not None else f"team:{team.name if team else '?'}"
    audit.record(s, actor=actor, action="key.register", target=target, key_id=public.id)
    s.flush()
    return key


def register_key_for(
    s: Session, principal: Principal | None, pem: str, *, team: str | None, name: str
) -> SigningKey:
    """``POST /keys``: a key for the caller, or for ``team`` when the caller is its admin."""
    principal = require_scope(principal, "write", action="registering a signing key")
    if team is None:
        return register_key(s, actor=principal.name, pem=pem, user=s.get(User, principal.user_id), name=name)
    row = _team(s, team)
    role = principal.roles.get(row.id)
    if not role_at_least(role, "admin") or not role_at_least(principal.scope, "admin"):
        raise Forbidden(f"registering a key for team `{team}` needs the `admin` role on it.")
    return register_key(s, actor=principal.name, pem=pem, team=row, name=name)


def list_keys(s: Session, *, user: str | None = None, team: str | None = None) -> list[SigningKey]:
    """Every key of ``user`` or ``team``, revoked ones included, oldest first."""
    if (user is None) == (team is None):
        raise BadRequest("give exactly one of the query parameters `user` and `team`.")
    q = select(SigningKey).order_by(SigningKey.created_at, SigningKey.id)
    if user is not None:
        q = q.where(SigningKey.user_id == _user(s, user).id)
    else:
        q = q.where(SigningKey.team_id == _team(s, team or "").id)
    return list(s.scalars(q))


def get_key(s: Session, key_id: str) -> SigningKey:
    key = s.scalars(select(SigningKey).where(SigningKey.key_id == key_id)).first()
    if key is None:
        raise NotFound(f"no key {key_id} is registered.")
    return key


def revoke_key(
    s: Session, key_id: str, reason: str, *, actor: str, principal: Principal | None = None
) -> SigningKey:
    """Mark a key revoked (kept and listed). With ``principal``, it must own the key or admin its team."""
    key = get_key(s, key_id)
    if principal is not None:
        own = key.user_id == principal.user_id and role_at_least(principal.scope, "write")
        team_admin = (
            key.team_id is not None
            and role_at_least(principal.roles.get(key.team_id), "admin")
            and role_at_least(principal.scope, "admin")
        )
        if not (own or team_admin):
            raise Forbidden(f"revoking {key_id} needs its owner or an admin of its team.")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        key.revoked_reason = reason or "revoked"
        audit.record(s, actor=actor, action="key.revoke", target=key_id, reason=key.revoked_reason)
    return key


def _usable(keys: list[SigningKey]) -> list[PublicKey]:
    return [PublicKey(k.key_id, k.public_key) for k in keys if k.revoked_at is None]


def publisher_keys(s: Session, version: Version, namespace: Namespace) -> list[SigningKey]:
    """Keys a version's signature may be by: the publisher's own and the namespace team's."""
    return list(
        s.scalars(
            select(SigningKey).where(
                (SigningKey.user_id == version.publisher_id) | (SigningKey.team_id == namespace.team_id)
            )
        )
    )


def uploader_keys(s: Session, principal: Principal) -> list[SigningKey]:
    """Keys an attestation uploaded by ``principal`` may be by: theirs and their teams' (write or more)."""
    teams = [
        team_id
        for team_id, role in s.execute(
            select(Membership.team_id, Membership.role).where(Membership.user_id == principal.user_id)
        ).all()
        if role_at_least(role, "write")
    ]
    return list(
        s.scalars(
            select(SigningKey).where(
                (SigningKey.user_id == principal.user_id) | (SigningKey.team_id.in_(teams))
            )
        )
    )


def _statement(data: bytes, where: str) -> dict[str, Any]:
    try:
        statement, _, _ = read_bundle(data, where=where)
    except SignatureError as exc:
        raise InvalidSignature(exc.message) from exc
    return statement


def _refuse(exc: SignatureError, label: str, keys: list[SigningKey], whose: str) -> InvalidSignature:
    revoked = [k.key_id for k in keys if k.revoked_at is not None]
    usable = len(keys) - len(revoked)
    detail = f"{usable} registered, unrevoked key(s) of {whose}"
    if revoked:
        detail += f"; revoked: {', '.join(revoked)}"
    return InvalidSignature(f"the bundle for `{label}` is not signed by any of the {detail}.")


def attach_signature(
    s: Session, principal: Principal, version: Version, data: bytes
) -> tuple[VersionSignature, bool]:
    """Store a signature bundle for ``version`` after checking it covers its artifact and a
    registered, unrevoked key of the publisher (or the namespace's team) signed it.

    Returns ``(row, created)``; the same key's bundle again is a no-op, another one a 409.
    """
    namespace = version.skill.namespace
    label = f"{version.skill.full_name}@{version.version}"
    keys = publisher_keys(s, version, namespace)
    statement = _statement(data, "the signature bundle")
    covered = artifact_digests(statement)
    if version.digest not in covered:
        raise InvalidSignature(
            f"the signature bundle does not cover the artifact of `{label}` ({version.digest}); "
            f"it signs {', '.join(sorted(covered)) or 'no artifact digest'}."
        )
    try:
        verified = verify_bundle(data, _usable(keys), where="the signature bundle")
    except SignatureError as exc:
        raise _refuse(
            exc, label, keys, f"`{version.publisher.name}` or team `{namespace.team.name}`"
        ) from exc
    existing = s.scalars(
        select(VersionSignature).where(
            VersionSignature.version_id == version.id, VersionSignature.key_id == verified.key_id
        )
    ).first()
    if existing is not None:
        # ECDSA signatures differ each time; one valid bundle per key is enough, the first stays.
        return existing, False
    row = VersionSignature(
        version_id=version.id, key_id=verified.key_id, bundle=data, uploaded_by=principal.name
    )
    s.add(row)
    audit.record(s, actor=principal.name, action="version.sign", target=label, key_id=verified.key_id)
    return row, True


def _summary(statement: dict[str, Any]) -> dict[str, Any]:
    predicate: dict[str, Any] = statement.get("predicate") or {}
    general = g if isinstance(g := predicate.get("general"), dict) else {}
    return {
        "general_fingerprint": general.get("fingerprint"),
        "general_hub_id": general.get("hub_id"),
        "weight": predicate.get("weight"),
        "method": predicate.get("method"),
        "metrics": predicate.get("metrics") if isinstance(predicate.get("metrics"), dict) else {},
        "eval": (predicate.get("eval") or {}).get("hook")
        if isinstance(predicate.get("eval"), dict)
        else None,
        "created": predicate.get("created"),
    }


def attach_attestation(
    s: Session, principal: Principal, version: Version, data: bytes
) -> tuple[Attestation, bool]:
    """Store an evaluation attestation about ``version``: its subject must be the artifact's
    digest and one of the uploader's registered, unrevoked keys (or their teams') must have
    signed it. Many attestations, by many signers, may be attached to one version.
    """
    label = f"{version.skill.full_name}@{version.version}"
    statement = _statement(data, "the attestation")
    if statement.get("predicateType") != EVAL_PREDICATE:
        raise InvalidSignature(
            f"the attestation's predicate is `{statement.get('predicateType')}`, not `{EVAL_PREDICATE}`."
        )
    if version.digest not in artifact_digests(statement):
        raise InvalidSignature(
            f"the attestation is about another artifact, not `{label}` ({version.digest})."
        )
    keys = uploader_keys(s, principal)
    try:
        verified = verify_bundle(data, _usable(keys), where="the attestation")
    except SignatureError as exc:
        raise _refuse(exc, label, keys, f"`{principal.name}` or their teams") from exc
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    existing = s.scalars(
        select(Attestation).where(Attestation.version_id == version.id, Attestation.bundle_digest == digest)
    ).first()
    if existing is not None:
        return existing, False
    held = s.scalar(
        select(func.count())
        .select_from(Attestation)
        .where(Attestation.version_id == version.id, Attestation.uploaded_by == principal.name)
    )
    if (held or 0) >= MAX_ATTESTATIONS_PER_UPLOADER:
        raise Conflict(
            f"`{principal.name}` already attached {held} attestations to `{label}`, the most one user may; "
            "they are immutable, so attach a new one to the next version instead.",
        )
    row = Attestation(
        version_id=version.id,
        key_id=verified.key_id,
        bundle=data,
        bundle_digest=digest,
        summary=_summary(statement),
        uploaded_by=principal.name,
    )
    s.add(row)
    audit.record(
        s, actor=principal.name, action="version.attest", target=label, key_id=verified.key_id, digest=digest
    )
    return row, True


def _owners(s: Session, key_ids: set[str]) -> dict[str, SigningKey]:
    if not key_ids:
        return {}
    return {k.key_id: k for k in s.scalars(select(SigningKey).where(SigningKey.key_id.in_(key_ids)))}


def signatures_out(s: Session, version: Version) -> list[dict[str, Any]]:
    rows = list(
        s.scalars(
            select(VersionSignature)
            .where(VersionSignature.version_id == version.id)
            .order_by(VersionSignature.id)
        )
    )
    keys = _owners(s, {r.key_id for r in rows})
    return [
        {
            "key": key_out(keys[r.key_id]) if r.key_id in keys else None,
            "key_id": r.key_id,
            "bundle": r.bundle.decode("utf-8"),
            "created_at": r.created_at.isoformat(),
            "uploaded_by": r.uploaded_by,
        }
        for r in rows
    ]


def count_attestations(s: Session, version: Version) -> int:
    """How many attestations ``version`` holds (for the paged answer's total)."""
    return int(
        s.scalar(select(func.count()).select_from(Attestation).where(Attestation.version_id == version.id)) or 0
    )


def attestations_out(
    s: Session, version: Version, page: int = 1, per_page: int = MAX_ATTESTATIONS_PER_PAGE
) -> list[dict[str, Any]]:
    """One page of ``version``'s attestations, oldest first, each with its signer's key."""
    rows = list(
        s.scalars(
            select(Attestation)
            .where(Attestation.version_id == version.id)
            .order_by(Attestation.id)
            .offset((page - 1) * per_page)
            .limit(per_page)
        )
    )
    keys = _owners(s, {r.key_id for r in rows})
    return [
        {
            "key": key_out(keys[r.key_id]) if r.key_id in keys else None,
            "key_id": r.key_id,
            "summary": r.summary,
            "bundle": r.bundle.decode("utf-8"),
            "bundle_digest": r.bundle_digest,
            "created_at": r.created_at.isoformat(),
            "uploaded_by": r.uploaded_by,
        }
        for r in rows
    ]
