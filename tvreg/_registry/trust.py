"""Which signing keys this user trusts, and what the registry says about signatures.

Why a local list: a signature is worth something only when it is checked against keys
the *client* chose to trust. If tvreg believed whichever key the registry named, a
compromised registry or mirror could swap an artifact and sign the swap with a key of
its own. So the trusted keys, PEM text included, live in ``config.toml``::

    [[trust.keys]]
    id = "sha256:…"                 # sha256 of the key's SubjectPublicKeyInfo DER
    pem = "-----BEGIN PUBLIC KEY-----…"
    owner = "team nlp-safety"       # who the registry said it belonged to, when trusted
    source = "https://registry…"     # where it came from (or a file path)

``tvreg key trust ID`` fetches the key by id and checks the PEM hashes to that id, so
the registry cannot substitute another key. ``tvreg key trust TEAM`` pins the team's
keys registered *at that moment* (trust on first use): a later registry compromise
cannot add keys to the team behind the user's back. Verification never needs the
network; the registry's revocation list is consulted when it can be reached, and can
only make a verdict stricter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._format.signing import (
    EVAL_PREDICATE,
    PublicKey,
    artifact_digests,
    is_key_id,
    load_public_key,
    read_bundle,
    verify_bundle,
)
from ..errors import NotFound, RegistryError, SignatureError
from .client import RegistryClient, _next_page
from .config import load_config, save_config
from .refs import SkillRef


@dataclass(frozen=True)
class TrustedKey:
    """A key in the user's trust list."""

    public: PublicKey
    owner: str = ""
    source: str = ""

    @property
    def id(self) -> str:
        return self.public.id


def trusted_keys() -> list[TrustedKey]:
    """The keys in ``config.toml``'s ``[[trust.keys]]``; entries whose PEM is not their id are dropped.

    Raises:
        ConfigError: the configuration file cannot be read.
    """
    entries = (load_config().get("trust") or {}).get("keys") or []
    keys: list[TrustedKey] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("pem"), str):
            continue
        try:
            public = load_public_key(entry["pem"])
        except SignatureError:
            continue
        if public.id != entry.get("id"):
            continue
        keys.append(TrustedKey(public, str(entry.get("owner", "")), str(entry.get("source", ""))))
    return keys


def _save(keys: list[TrustedKey]) -> Path:
    data = load_config()
    trust = dict(data.get("trust") or {})
    trust["keys"] = [{"id": k.id, "pem": k.public.pem, "owner": k.owner, "source": k.source} for k in keys]
    data["trust"] = trust
    return save_config(data)


def _owner(key: dict[str, Any]) -> str:
    owner = key.get("owner") or {}
    if owner.get("team"):
        return f"team {owner['team']}"
    return str(owner.get("user") or "")


def _registry_key(
    client: RegistryClient, key: dict[str, Any], *, expected_id: str | None = None
) -> TrustedKey:
    public = load_public_key(
        str(key.get("public_key", "")), where=f"the key the registry sent for {key.get('key_id')}"
    )
    if public.id != (expected_id or key.get("key_id")):
        raise SignatureError(
            f"the registry at {client.url} sent a key whose id is {public.id}, not {expected_id or key.get('key_id')}.",
            hints=["the registry or a proxy is tampering with keys: trust nothing from it"],
        )
    return TrustedKey(public, _owner(key), client.url)


def trust(spec: str, *, client: RegistryClient | None = None) -> list[TrustedKey]:
    """Add keys to the trust list: a key id, a PEM public-key file, or a team or user name.

    A name pins the owner's unrevoked keys as the registry lists them now. Returns the
    keys added (already-trusted ones are not repeated).

    Raises:
        SignatureError: a file that is not a public key, a key whose PEM does not hash to
            its id, or a name with no usable key.
        NotFound: the registry has no such key, team or user.
    """
    new: list[TrustedKey] = []
    if os.path.isfile(spec):
        with open(spec, encoding="utf-8", errors="replace") as f:
            new.append(TrustedKey(load_public_key(f.read(), where=f"`{spec}`"), "", os.path.abspath(spec)))
    elif client is None:
        raise SignatureError(f"`{spec}` is not a file, and trusting a key id or a team needs a registry.")
    elif is_key_id(spec):
        key = _json(client.request("GET", f"/keys/{spec}", what=f"key `{spec}`"))
        new.append(_registry_key(client, key, expected_id=spec))
    else:
        keys: list[dict[str, Any]] = []
        found = False
        for kind in ("user", "team"):  # a user's personal team has the user's name: take both
            try:
                keys += _json(client.request("GET", "/keys", params={kind: spec}, what=f"{kind} `{spec}`"))[
                    "keys"
                ]
                found = True
            except NotFound:
                continue
        if not found:
            raise NotFound(f"the registry at {client.url} has no team or user `{spec}`.")
        new = [_registry_key(client, k) for k in keys if not k.get("revoked_at")]
        if not new:
            raise SignatureError(
                f"`{spec}` has no unrevoked signing key on {client.url}.",
                hints=[f"ask `{spec}` to register one with `tvreg key add`"],
            )
    have = trusted_keys()
    known = {k.id for k in have}
    added = [k for k in new if k.id not in known]
    if added:
        _save(have + added)
    return added


def untrust(spec: str) -> list[TrustedKey]:
    """Remove keys from the trust list by id (or id prefix) or by owner; returns those removed."""
    have = trusted_keys()
    gone = [
        k
        for k in have
        if k.id == spec or (len(spec) >= 15 and k.id.startswith(spec)) or k.owner in (spec, f"team {spec}")
    ]
    if gone:
        _save([k for k in have if k not in gone])
    return gone


MAX_ATTESTATIONS = 2000
"""The most attestations of one version read across pages (the registry allows 8 per user)."""


def _attestations(client: RegistryClient, seg: str, version: str) -> list[dict[str, Any]]:
    """Every attestation of ``seg@version``, page after page (``Link: rel="next"``), up to
    :data:`MAX_ATTESTATIONS`; a registry whose pages do not advance is refused in one sentence."""
    what = f"`{seg}@{version}`"
    path = f"/skills/{seg}/versions/{version}/attestations"
    out: list[dict[str, Any]] = []
    page = 1
    while True:
        resp = client.request("GET", path, params={"page": page}, what=what)
        body = _json(resp)
        got = body.get("attestations") if isinstance(body, dict) else None
        if not isinstance(got, list):
            raise RegistryError(f"the registry at {client.url} sent the attestations of {what} without a list.")
        out += got
        if len(out) > MAX_ATTESTATIONS:
            raise RegistryError(
                f"{what} has more than {MAX_ATTESTATIONS} attestations on the registry at {client.url}; "
                "refusing to read them all."
            )
        following = _next_page(resp.headers.get("Link"))
        if following is None:
            return out
        if following != page + 1 or not got:
            raise RegistryError(
                f"the registry at {client.url} sent pages of the attestations of {what} that do not advance."
            )
        page = following


def _json(resp: Any) -> Any:
    try:
        return resp.json()
    except ValueError as exc:
        raise RegistryError(
            f"the registry sent an answer that is not JSON (HTTP {resp.status_code})."
        ) from exc


def register_key(
    client: RegistryClient, pem: str, *, team: str | None = None, name: str = ""
) -> dict[str, Any]:
    """``POST /keys``: register a public key for the logged-in user or ``team``."""
    load_public_key(pem)
    body: dict[str, Any] = {"public_key": pem, "name": name}
    if team:
        body["team"] = team
    return _json(client.request("POST", "/keys", json=body))


def list_keys(
    client: RegistryClient, *, user: str | None = None, team: str | None = None
) -> list[dict[str, Any]]:
    params = {"team": team} if team else {"user": user}
    return _json(
        client.request("GET", "/keys", params=params, what=f"team `{team}`" if team else f"user `{user}`")
    )["keys"]


def get_key(client: RegistryClient, key_id: str) -> dict[str, Any]:
    return _json(client.request("GET", f"/keys/{key_id}", what=f"key `{key_id}`"))


def revoke_key(client: RegistryClient, key_id: str, reason: str) -> dict[str, Any]:
    return _json(
        client.request("POST", f"/keys/{key_id}/revoke", json={"reason": reason}, what=f"key `{key_id}`")
    )


def _seg(ref: SkillRef) -> str:
    return ref.name


def push_signature(client: RegistryClient, ref: SkillRef, version: str, bundle: bytes) -> bool:
    """Attach a signature bundle to a published version; True when it was new."""
    resp = client.request(
        "PUT",
        f"/skills/{_seg(ref)}/versions/{version}/signature",
        content=bundle,
        headers={"Content-Type": "application/json"},
        what=f"`{_seg(ref)}@{version}`",
    )
    return resp.status_code == 201


def push_attestation(client: RegistryClient, ref: SkillRef, version: str, bundle: bytes) -> dict[str, Any]:
    """Attach a signed attestation to a version; returns the registry's summary of it."""
    resp = client.request(
        "POST",
        f"/skills/{_seg(ref)}/versions/{version}/attestations",
        content=bundle,
        headers={"Content-Type": "application/json"},
        what=f"`{_seg(ref)}@{version}`",
    )
    return {**_json(resp), "created": resp.status_code == 201}


def check_publish_key(client: RegistryClient, key: PublicKey, who: dict[str, Any], namespace: str) -> None:
    """Before uploading: the signing key must be registered, unrevoked, to the publisher or
    the namespace's team, or the registry will refuse the signature after the version is out.

    Raises:
        SignatureError: the key is unknown to the registry, revoked, or someone else's.
    """
    try:
        info = get_key(client, key.id)
    except NotFound:
        raise SignatureError(
            f"the signing key {key.id} is not registered on {client.url}.",
            hints=["register it first: `tvreg key add PUBFILE` (or `--team TEAM`)"],
        ) from None
    if info.get("revoked_at"):
        raise SignatureError(
            f"the signing key {key.id} was revoked on {info['revoked_at']} ({info.get('revoked_reason')}).",
            hints=["make a new key with `tvreg key generate` and register it"],
        )
    owner = info.get("owner") or {}
    teams = {t.get("team") for t in who.get("teams", [])}
    if owner.get("user") != who.get("user") and owner.get("team") not in teams | {namespace}:
        raise SignatureError(
            f"the signing key {key.id} belongs to {_owner(info)}, not to `{who.get('user')}` or the team of `{namespace}`.",
            hints=["sign with one of your own keys (`tvreg key list`)"],
        )


@dataclass
class SignatureCheck:
    """One signature or attestation as the client judges it.

    ``status``: ``verified`` (a trusted key signed it, over this artifact), ``untrusted``
    (valid shape, but no trusted key signed it), ``revoked`` (signed by a trusted key the
    registry lists as revoked), or ``invalid`` (malformed, or about other bytes / another G).
    """

    key_id: str
    owner: str
    status: str
    reason: str = ""
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return self.status == "verified"


def _judge(
    bundle: bytes,
    digest: str,
    keys: list[TrustedKey],
    revoked: set[str],
    *,
    general: str | None,
    attestation: bool,
) -> tuple[str, str, dict[str, Any]]:
    try:
        statement, _, _ = read_bundle(bundle)
    except SignatureError as exc:
        return "invalid", exc.message, {}
    summary: dict[str, Any] = {}
    if not attestation and digest not in artifact_digests(statement):
        return "invalid", "it signs other bytes than this artifact", summary
    if attestation:
        if statement.get("predicateType") != EVAL_PREDICATE:
            return "invalid", f"predicate `{statement.get('predicateType')}` is not an evaluation", {}
        summary = attestation_summary(statement)
        if digest not in artifact_digests(statement):
            return "invalid", "it is about another artifact", summary
        if general is not None and summary.get("general_fingerprint") != general:
            return "invalid", "it was measured on another G", summary
    usable = [k.public for k in keys if k.id not in revoked]
    try:
        verify_bundle(bundle, usable)
    except SignatureError:
        if any(k.id in revoked for k in keys):
            try:
                verify_bundle(bundle, [k.public for k in keys if k.id in revoked])
                return "revoked", "signed by a key that has been revoked", summary
            except SignatureError:
                pass
        return "untrusted", "not signed by a key you trust", summary
    return "verified", "", summary


def attestation_summary(statement: dict[str, Any]) -> dict[str, Any]:
    """G, ω, method, metrics and hook of an evaluation statement, as listed by ``tvreg info``."""
    predicate: dict[str, Any] = statement.get("predicate") or {}
    general = g if isinstance(g := predicate.get("general"), dict) else {}
    hook = h if isinstance(h := predicate.get("eval"), dict) else {}
    return {
        "general_fingerprint": general.get("fingerprint"),
        "general_hub_id": general.get("hub_id"),
        "weight": predicate.get("weight"),
        "method": predicate.get("method"),
        "metrics": predicate.get("metrics") if isinstance(predicate.get("metrics"), dict) else {},
        "eval": hook.get("hook"),
        "created": predicate.get("created"),
    }


def check_version(
    client: RegistryClient,
    ref: SkillRef,
    version: str,
    digest: str,
    *,
    keys: list[TrustedKey] | None = None,
    general: str | None = None,
) -> tuple[list[SignatureCheck], list[SignatureCheck]]:
    """Judge a version's signatures and attestations against the user's trusted keys.

    ``digest`` is the artifact digest the caller believes in (from a lock, or the bytes
    it downloaded); a bundle over other bytes never verifies. With ``general``, an
    attestation measured on another G is ``invalid`` for this purpose.
    """
    keys = trusted_keys() if keys is None else keys
    seg = _seg(ref)
    sigs = _json(
        client.request("GET", f"/skills/{seg}/versions/{version}/signatures", what=f"`{seg}@{version}`")
    )
    atts = {"attestations": _attestations(client, seg, version)}
    revoked = {
        entry["key"]["key_id"]
        for entry in sigs.get("signatures", []) + atts.get("attestations", [])
        if entry.get("key") and entry["key"].get("revoked_at")
    }
    out: tuple[list[SignatureCheck], list[SignatureCheck]] = ([], [])
    for i, entries in enumerate((sigs.get("signatures", []), atts.get("attestations", []))):
        for entry in entries:
            status, reason, summary = _judge(
                str(entry.get("bundle", "")).encode("utf-8"),
                digest,
                keys,
                revoked,
                general=general,
                attestation=i == 1,
            )
            out[i].append(
                SignatureCheck(
                    str(entry.get("key_id")), _owner(entry.get("key") or {}), status, reason, summary
                )
            )
    return out
