"""What each page shows, read from the database with the caller's visibility (the API's rules).

Builders return plain dicts for the templates; a skill the caller may not read raises the
very :class:`~registry_server.errors.NotFound` the API raises for it, so a private skill's
page is the same 404 as a missing one's.
"""

from __future__ import annotations

import json
import math
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from tvreg._format.codecs.report import calibration_line
from tvreg._format.interference import (
    NORM_RATIO,
    OPPOSED_COSINE,
    OPPOSED_LAYER_COSINE,
    SIGN_CONFLICT,
    SkillEntry,
    check_sketches,
)
from tvreg._format.manifest import Manifest
from tvreg._format.sketch import Sketch, SketchError
from tvreg.errors import SketchMismatch

from ..auth import Principal, can_read, readable_skill, skill_not_found
from ..errors import BadRequest, NotFound
from ..models import Card, Membership, Namespace, Skill, User, Version, VersionSketch
from ..names import semver_key
from ..routes.skills import _search, _skill_info, _visible_namespaces, ordered_versions, versions_by_id
from ..schemas import version_out
from ..trust_models import Attestation, SigningKey, VersionSignature
from .render import split_front_matter

RECENT = 10
MAX_PICKS = 8
PER_PAGE = 20
VERSIONS_PER_PAGE = 50
BASE_PER_PAGE = 50
MOST_INSTALLED = 10


def front(s: Session, principal: Principal | None) -> dict[str, Any]:
    visible = _visible_namespaces(principal)
    skills = s.scalar(select(func.count()).select_from(Skill).join(Namespace).where(visible)) or 0
    versions = (
        s.scalar(select(func.count()).select_from(Version).join(Skill).join(Namespace).where(visible)) or 0
    )
    bases = (
        s.scalar(
            select(func.count(func.distinct(Version.base_fingerprint)))
            .select_from(Version)
            .join(Skill)
            .join(Namespace)
            .where(visible)
        )
        or 0
    )
    recent = s.execute(
        select(
            Namespace.name,
            Skill.name,
            Skill.description,
            Version.version,
            Version.published_at,
            Namespace.private,
        )
        .select_from(Version)
        .join(Skill, Version.skill_id == Skill.id)
        .join(Namespace, Skill.namespace_id == Namespace.id)
        .where(visible)
        .order_by(Version.published_at.desc(), Version.id.desc())
        .limit(RECENT)
    ).all()
    total = func.sum(Version.downloads)
    most = s.execute(
        select(Namespace.name, Skill.name, Skill.description, total, Namespace.private)
        .select_from(Version)
        .join(Skill, Version.skill_id == Skill.id)
        .join(Namespace, Skill.namespace_id == Namespace.id)
        .where(visible)
        .group_by(Skill.id, Namespace.name, Skill.name, Skill.description, Namespace.private)
        .having(total > 0)
        .order_by(total.desc(), Namespace.name, Skill.name)
        .limit(MOST_INSTALLED)
    ).all()
    return {
        "counts": {"skills": skills, "versions": versions, "bases": bases},
        "most_installed": [
            {"ns": r[0], "skill": r[1], "description": r[2], "downloads": int(r[3]), "private": r[4]} for r in most
        ],
        "recent": [
            {
                "ns": r[0],
                "skill": r[1],
                "description": r[2],
                "version": r[3],
                "published_at": r[4],
                "private": r[5],
            }
            for r in recent
        ],
    }


def search(
    s: Session,
    principal: Principal | None,
    q: str | None,
    base: str | None,
    tag: str | None,
    namespace: str | None,
    page: int,
    per_page: int = PER_PAGE,
) -> dict[str, Any]:
    if base and (len(base) != 64 or any(c not in "0123456789abcdef" for c in base)):
        raise BadRequest(f"`base` must be a 64-hex base fingerprint, not {base[:80]!r}.")
    found = _search(s, principal, q or None, base or None, tag or None, namespace or None, page, per_page)
    for item in found["items"]:
        item["ns"], _, item["skill"] = item["name"].partition("/")
    found["pages"] = max(1, math.ceil(found["total"] / per_page))
    return found


def _versions_row(v: dict[str, Any], tags_by_version: dict[str, list[str]]) -> dict[str, Any]:
    manifest = v["manifest"]
    tensors = manifest.get("tensors") or {}
    codecs = sorted({str(t.get("codec")) for t in tensors.values() if isinstance(t, dict)})
    errors = [t.get("rel_error") for t in tensors.values() if isinstance(t, dict)]
    worst = max((e for e in errors if isinstance(e, (int, float))), default=None)
    try:
        lossy = Manifest.from_json(json.dumps(manifest), where="the stored manifest").lossy
    except Exception:  # noqa: BLE001 - a manifest the server accepted; show what can be shown
        lossy = bool(worst)
    calibration = manifest.get("calibration")
    return {
        **v,
        "codecs": codecs,
        "lossy": lossy,
        "worst_error": worst,
        "fidelity": calibration_line(calibration, lossy=lossy),
        "fidelity_short": calibration_line(calibration, lossy=lossy, detail=False),
        "tags": tags_by_version.get(v["version"], []),
    }


def _requirement_links(spec: Any) -> list[dict[str, str]]:
    out = []
    if isinstance(spec, dict):
        for name, rng in sorted(spec.items()):
            ns, _, skill = str(name).partition("/")
            out.append({"name": str(name), "range": str(rng), "ns": ns if skill else "", "skill": skill})
    return out


def skill_page(
    s: Session,
    principal: Principal | None,
    namespace: str,
    name: str,
    version: str | None,
    page: int = 1,
    per_page: int = VERSIONS_PER_PAGE,
) -> dict[str, Any]:
    """The skill (or version) page; its versions table shows page ``page``, newest first."""
    info = _skill_info(s, principal, namespace, name, 1, 1)
    skill = readable_skill(s, principal, namespace, name)
    ordered = ordered_versions(s, skill)
    newest_first = list(reversed(ordered))
    tags_by_version: dict[str, list[str]] = {}
    for tag, ver in info["dist_tags"].items():
        tags_by_version.setdefault(ver, []).append(tag)

    def rows_of(ids: list[int]) -> list[dict[str, Any]]:
        return [_versions_row(version_out(skill, v), tags_by_version) for v in versions_by_id(s, ids)]

    if version is None:
        latest = info["dist_tags"].get("latest")
        pick = next((r for r in ordered if r[1] == latest), None)
        pick = pick or next((r for r in newest_first if not r[2]), None) or (newest_first[0] if newest_first else None)
    else:
        pick = next((r for r in ordered if r[1] == version), None)
        if pick is None:
            raise NotFound(f"version `{version}` of skill `{namespace}/{name}` was not found.")
    shown = rows_of([pick[0]])[0] if pick is not None else None
    pages = max(1, math.ceil(len(ordered) / per_page))
    rows = rows_of([r[0] for r in newest_first[(page - 1) * per_page : page * per_page]])
    front_matter: dict[str, Any]
    card, front_matter, profile = None, {}, {}
    card_digest = None
    trust: dict[str, list[dict[str, Any]]] = {"signatures": [], "attestations": []}
    if shown is not None:
        version_id = s.scalar(
            select(Version.id)
            .join(Skill)
            .join(Namespace)
            .where(Namespace.name == namespace, Skill.name == name, Version.version == shown["version"])
        )
        trust = _trust(s, version_id)
        stored = s.get(Card, version_id)
        if stored is not None:
            front_matter, card = split_front_matter(stored.text)
            card_digest = stored.digest
        if shown["sketch"]:
            sketch = s.get(VersionSketch, version_id)
            if sketch is not None:
                try:
                    profile = Sketch.from_bytes(sketch.data).layer_norms()
                except SketchError:
                    profile = {}
    major = shown["version"].split(".", 1)[0] if shown else None
    return {
        "ns": namespace,
        "skill": name,
        "info": info,
        "rows": rows,
        "page": page,
        "pages": pages,
        "per_page": per_page,
        "total_versions": len(ordered),
        "shown": shown,
        "specific": version is not None,
        "card": card,
        "card_digest": card_digest,
        "front_matter": front_matter,
        "profile": profile,
        "line": f"@^{major}"
        if major and major != "0"
        else (f"@~{shown['version'].rsplit('.', 1)[0]}" if shown else ""),
        "requires": _requirement_links(shown["manifest"].get("requires")) if shown else [],
        "conflicts": _requirement_links(shown["manifest"].get("conflicts")) if shown else [],
        "license": shown["manifest"].get("license") if shown else None,
        "signatures": trust["signatures"],
        "attestations": trust["attestations"],
    }


MAX_ATTESTATIONS_SHOWN = 50


def _signer(key: SigningKey | None, key_id: str) -> dict[str, Any]:
    """Who a key belongs to and whether it is still good, as the registry knows it.

    The registry checked each bundle against this key when it was uploaded; a key revoked
    since (stolen, rotated) is shown revoked with its reason, because a browser cannot verify
    the bundle itself. The client verifies on install against the keys *its* environment trusts.
    """
    if key is None:
        return {"key_id": key_id, "owner": None, "name": "", "state": "unknown key", "reason": None}
    owner = f"user {key.user.name}" if key.user is not None else f"team {key.team.name}" if key.team else None
    return {
        "key_id": key_id,
        "owner": owner,
        "name": key.name,
        "state": "revoked" if key.revoked_at is not None else "active",
        "reason": key.revoked_reason,
    }


def _trust(s: Session, version_id: int | None) -> dict[str, list[dict[str, Any]]]:
    """The version's signatures and (newest first, bounded) attestations, each with its signer's state."""
    if version_id is None:
        return {"signatures": [], "attestations": []}
    sigs = list(
        s.scalars(select(VersionSignature).where(VersionSignature.version_id == version_id).order_by(VersionSignature.id))
    )
    atts = list(
        s.scalars(
            select(Attestation)
            .where(Attestation.version_id == version_id)
            .order_by(Attestation.id.desc())
            .limit(MAX_ATTESTATIONS_SHOWN)
        )
    )
    ids = {r.key_id for r in sigs} | {r.key_id for r in atts}
    keys = {
        k.key_id: k
        for k in s.scalars(
            select(SigningKey)
            .where(SigningKey.key_id.in_(ids))
            .options(selectinload(SigningKey.user), selectinload(SigningKey.team))
        )
    } if ids else {}  # fmt: skip
    signatures = [
        {**_signer(keys.get(r.key_id), r.key_id), "uploaded_by": r.uploaded_by, "at": r.created_at.isoformat()[:10]}
        for r in sigs
    ]
    attestations = []
    for r in atts:
        summary = r.summary if isinstance(r.summary, dict) else {}
        found = summary.get("metrics")
        metrics: dict[str, Any] = found if isinstance(found, dict) else {}
        attestations.append(
            {
                **_signer(keys.get(r.key_id), r.key_id),
                "general": str(summary.get("general_hub_id") or summary.get("general_fingerprint") or "unknown"),
                "weight": summary.get("weight"),
                "method": summary.get("method"),
                "metrics": {str(k): v for k, v in list(metrics.items())[:20]},
                "at": r.created_at.isoformat()[:10],
            }
        )
    return {"signatures": signatures, "attestations": attestations}


def namespace_page(
    s: Session, principal: Principal | None, namespace: str, page: int = 1, per_page: int = PER_PAGE
) -> dict[str, Any]:
    ns = s.scalars(
        select(Namespace).where(Namespace.name == namespace).options(selectinload(Namespace.team))
    ).first()
    if ns is None or not can_read(principal, ns):
        raise NotFound(f"namespace `{namespace}` was not found.")
    found = search(s, principal, None, None, None, namespace, page, per_page)
    members = None
    if principal is not None and ns.team_id in principal.roles:
        members = s.execute(
            select(User.name, Membership.role)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.team_id == ns.team_id)
            .order_by(User.name)
        ).all()
    return {
        "ns": namespace,
        "private": ns.private,
        "team": ns.team.name,
        "found": found,
        "page": page,
        "per_page": per_page,
        "members": members,
    }


def _base_versions(s: Session, principal: Principal | None, fingerprint: str) -> list[dict[str, Any]]:
    rows = s.execute(
        select(
            Namespace.name,
            Skill.name,
            Skill.description,
            Version.version,
            Version.sketch_digest,
            Version.dataset_size,
            Version.dataset_unit,
            Namespace.private,
        )
        .select_from(Version)
        .join(Skill, Version.skill_id == Skill.id)
        .join(Namespace, Skill.namespace_id == Namespace.id)
        .where(
            _visible_namespaces(principal), Version.base_fingerprint == fingerprint, Version.yanked.is_(False)
        )
    ).all()
    newest: dict[tuple[str, str], Any] = {}
    for r in rows:
        key = (r[0], r[1])
        if key not in newest or semver_key(r[3]) > semver_key(newest[key][3]):
            newest[key] = r
    return [
        {
            "ns": r[0],
            "skill": r[1],
            "description": r[2],
            "version": r[3],
            "sketch": r[4] is not None,
            "dataset_size": r[5],
            "dataset_unit": r[6],
            "private": r[7],
            "pick": f"{r[0]}/{r[1]}@{r[3]}",
        }
        for _k, r in sorted(newest.items())
    ]


def base_page(
    s: Session,
    principal: Principal | None,
    fingerprint: str,
    picks: list[str],
    page: int = 1,
    per_page: int = BASE_PER_PAGE,
) -> dict[str, Any]:
    """The skills built for a base, ``per_page`` a page, and the matrix of the picked ones."""
    if len(fingerprint) != 64 or any(c not in "0123456789abcdef" for c in fingerprint):
        raise NotFound(f"base `{fingerprint[:80]}` was not found.")
    every = _base_versions(s, principal, fingerprint)
    if not every:
        raise NotFound(f"base `{fingerprint}` was not found.")
    pages = max(1, math.ceil(len(every) / per_page))
    skills = every[(page - 1) * per_page : page * per_page]
    shown = {item["pick"] for item in skills}
    picks = list(dict.fromkeys(picks))
    result = None
    if picks:
        result = _interference(s, principal, fingerprint, picks)
    return {
        "fingerprint": fingerprint,
        "skills": skills,
        "page": page,
        "pages": pages,
        "per_page": per_page,
        "total": len(every),
        "hidden_picks": [p for p in picks if p not in shown],
        "picks": set(picks),
        "result": result,
        "max_picks": MAX_PICKS,
    }


def _interference(
    s: Session, principal: Principal | None, fingerprint: str, picks: list[str]
) -> dict[str, Any]:
    """The pairwise report of ``tvreg check`` over the stored sketches of the picked versions (ω = 1)."""
    thresholds = {
        "opposed_cosine": OPPOSED_COSINE,
        "opposed_layer_cosine": OPPOSED_LAYER_COSINE,
        "sign_conflict": SIGN_CONFLICT,
        "norm_ratio": NORM_RATIO,
    }
    if len(picks) < 2:
        return {"error": "pick at least two skills to compare.", "thresholds": thresholds}
    if len(picks) > MAX_PICKS:
        return {
            "error": f"pick at most {MAX_PICKS} skills at once ({len(picks)} were picked).",
            "thresholds": thresholds,
        }
    entries, missing = [], []
    for pick in picks:
        ref, _, version = pick.partition("@")
        namespace, _, name = ref.partition("/")
        skill = readable_skill(s, principal, namespace, name)
        row = s.scalars(
            select(Version).where(
                Version.skill_id == skill.id,
                Version.version == version,
                Version.base_fingerprint == fingerprint,
            )
        ).first()
        if row is None:
            raise skill_not_found(namespace, name)
        stored = s.get(VersionSketch, row.id) if row.sketch_digest else None
        if stored is None:
            missing.append(pick)
            continue
        entries.append(SkillEntry(pick, Sketch.from_bytes(stored.data, where=f"the sketch of `{pick}`"), 1.0))
    if len(entries) < 2:
        return {
            "error": None,
            "missing": missing,
            "labels": [],
            "cells": {},
            "pairs": [],
            "thresholds": thresholds,
        }
    try:
        report = check_sketches(entries)
    except SketchMismatch as exc:
        return {"error": str(exc), "thresholds": thresholds}
    cells = {}
    for p in report.pairs:
        cells[(p.a, p.b)] = cells[(p.b, p.a)] = p
    return {
        "error": None,
        "missing": missing,
        "labels": [e.label for e in entries],
        "cells": cells,
        "pairs": report.pairs,
        "thresholds": thresholds,
    }
