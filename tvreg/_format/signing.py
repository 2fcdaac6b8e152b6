"""Signatures over skill artifacts and statements about them: Sigstore bundles, checked offline.

Why this format: OpenSSF ``model-signing`` is the ML field's signing standard. It writes
a Sigstore bundle (``application/vnd.dev.sigstore.bundle.v0.3+json``) holding a DSSE
envelope whose payload is an in-toto Statement v1. For one file its statement says::

    subject   = [{"name": "<file name>", "digest": {"sha256": sha256(bytes.fromhex(D))}}]
    predicate = {"resources": [{"name": ".", "digest": D, "algorithm": "sha256"}],
                 "serialization": {"method": "files", "hash_type": "sha256", ...}}

where ``D`` is the artifact's SHA-256: the subject is a root digest *over* the file's
digest, not the file's digest itself. :func:`sign_artifact` calls ``model-signing``
itself (elliptic-curve key, no network), so ``model_signing verify key`` accepts what
tvreg signs. Evaluation attestations (:func:`sign_statement`) use the same bundle and
envelope with tvreg's own predicate; their subject *is* the artifact's digest.

Verification (:func:`verify_bundle`, :func:`verify_artifact_bundle`) is written here
with ``cryptography`` alone rather than through ``model-signing``: it must check one
bundle against a *set* of keys the caller trusts, run inside the registry without the
Sigstore client stack, and never print. A bundle verifies only when its DSSE signature
is valid under one of the ``trusted`` keys passed in; the key the bundle names is a
hint for picking it, never a reason to believe it.

Keys are ECDSA on NIST P-256 (the curves ``model-signing`` accepts; it has no Ed25519).
A key's id is ``sha256:<hex of its SubjectPublicKeyInfo DER>``, so anyone holding the
public key can recompute the id and nobody can pass another key off under it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .._util.paths import config_dir
from ..errors import SignatureError
from .fsutil import atomic_writer

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
ARTIFACT_PREDICATE = "https://model_signing/signature/v1.0"
"""The predicate ``model-signing`` writes: the signed resources and how they were hashed."""
EVAL_PREDICATE = "https://tvreg.dev/attestation/eval/v1"
"""tvreg's evaluation attestation: metrics measured with the skill installed on one G."""
MAX_BUNDLE_BYTES = 256 * 1024
_CURVES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384, "secp521r1": hashes.SHA512}
_KEY_ID_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_KEY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class PublicKey:
    """A verification key: its id (``sha256:`` of the SPKI DER) and its PEM text."""

    id: str
    pem: str

    @property
    def short(self) -> str:
        return self.id[:19]

    def key(self) -> ec.EllipticCurvePublicKey:
        loaded = serialization.load_pem_public_key(self.pem.encode("ascii"))
        assert isinstance(loaded, ec.EllipticCurvePublicKey)
        return loaded


@dataclass(frozen=True)
class GeneratedKey:
    """A new key pair: the private key file (0600), the public key file, and the public key."""

    private_path: Path
    public_path: Path
    public: PublicKey


@dataclass(frozen=True)
class Verified:
    """A bundle whose signature a trusted key checked: that key's id and the signed statement."""

    key_id: str
    statement: dict[str, Any]


def _spki_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _pem(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def key_id_of(key: ec.EllipticCurvePublicKey) -> str:
    """``sha256:<hex>`` of the key's DER SubjectPublicKeyInfo."""
    return "sha256:" + hashlib.sha256(_spki_der(key)).hexdigest()


def is_key_id(text: str) -> bool:
    """Whether ``text`` has the shape of a key id (``sha256:`` and 64 hex digits)."""
    return bool(_KEY_ID_RE.match(text))


def load_public_key(data: str | bytes, *, where: str = "the public key") -> PublicKey:
    """Parse a PEM public key (an EC key on P-256, P-384 or P-521).

    Raises:
        SignatureError: not a PEM public key, or another algorithm or curve.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SignatureError(
            f"{where} is not a PEM public key.",
            hints=["give the `.pub` file `tvreg key generate` wrote (`-----BEGIN PUBLIC KEY-----`)"],
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVES:
        raise SignatureError(
            f"{where} is not an elliptic-curve key on P-256, P-384 or P-521.",
            hints=["make one with `tvreg key generate` (model-signing accepts only these curves)"],
        )
    return PublicKey(key_id_of(key), _pem(key))


def keys_dir() -> Path:
    """Where ``tvreg key generate`` keeps key pairs: ``<config dir>/keys`` (0700)."""
    return config_dir() / "keys"


def generate_key(name: str = "default", *, directory: str | os.PathLike[str] | None = None) -> GeneratedKey:
    """Make an ECDSA P-256 key pair: ``NAME.key`` (PKCS#8 PEM, mode 0600) and ``NAME.pub``.

    Args:
        name: the file stem; ``tvreg publish --sign NAME`` finds the key by it.
        directory: where to write (default :func:`keys_dir`).

    Raises:
        SignatureError: the name is not a plain file stem, or ``NAME.key`` exists already
            (a key is never overwritten: its signatures would become unverifiable).
    """
    if not _KEY_NAME_RE.match(name):
        raise SignatureError(
            f"`{name}` is not a key name.", hints=["use letters, digits, `.`, `_` and `-` (at most 64)"]
        )
    folder = Path(directory) if directory is not None else keys_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path, public_path = folder / f"{name}.key", folder / f"{name}.pub"
    if private_path.exists():
        raise SignatureError(
            f"the key `{private_path}` already exists.",
            hints=["pick another name with `--name`; a key is never overwritten"],
        )
    private = ec.generate_private_key(ec.SECP256R1())
    with atomic_writer(private_path, permissions=0o600) as f:
        f.write(
            private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    public = PublicKey(key_id_of(private.public_key()), _pem(private.public_key()))
    with atomic_writer(public_path, permissions=0o644) as f:
        f.write(public.pem.encode("ascii"))
    return GeneratedKey(private_path, public_path, public)


def private_key_path(spec: str | os.PathLike[str]) -> Path:
    """The private key file ``spec`` names: a path, or a name under :func:`keys_dir`.

    Raises:
        SignatureError: there is no such file.
    """
    text = os.fspath(spec)
    candidates = [Path(text).expanduser()]
    if _KEY_NAME_RE.match(text):
        candidates.append(keys_dir() / f"{text}.key")
    for path in candidates:
        if path.is_file():
            return path
    raise SignatureError(
        f"no private key `{text}` (looked at {', '.join(f'`{c}`' for c in candidates)}).",
        hints=["make one with `tvreg key generate --name NAME`, or give the key file's path"],
    )


def _load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SignatureError(
            f"`{path}` is not an unencrypted PEM private key.",
            hints=["give the `.key` file `tvreg key generate` wrote"],
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in _CURVES:
        raise SignatureError(f"`{path}` is not an elliptic-curve key on P-256, P-384 or P-521.")
    return key


def public_key_of(private_key: str | os.PathLike[str]) -> PublicKey:
    """The public half of the private key ``private_key`` names (see :func:`private_key_path`)."""
    key = _load_private_key(private_key_path(private_key))
    return PublicKey(key_id_of(key.public_key()), _pem(key.public_key()))


def _pae(payload: bytes) -> bytes:
    # DSSE v1 pre-authentication encoding; the signature covers the type and the bytes.
    return b"DSSEv1 %d %s %d " % (len(PAYLOAD_TYPE), PAYLOAD_TYPE.encode(), len(payload)) + payload


def _pem_hint(key: ec.EllipticCurvePublicKey) -> str:
    # model-signing's key hint: SHA-256 of the PEM text (not of the DER, unlike our key id).
    return hashlib.sha256(_pem(key).encode("ascii")).hexdigest()


def sign_artifact(artifact: str | os.PathLike[str], private_key: str | os.PathLike[str]) -> bytes:
    """Sign one ``.tvskill`` file with ``model-signing``; returns the bundle's JSON bytes.

    The key is used offline (no Sigstore, no transparency log). The bundle is checked
    with :func:`verify_artifact_bundle` before it is returned, so a tvreg that cannot read
    what ``model-signing`` wrote fails here, not at a user's install.

    Raises:
        SignatureError: no such key, ``model-signing`` is not installed, or it failed.
    """
    path = Path(artifact)
    key_path = private_key_path(private_key)
    own = public_key_of(key_path)
    try:
        import model_signing
    except ImportError as exc:
        raise SignatureError(
            "signing needs the `model-signing` package, which is not installed.",
            hints=["install it: `pip install 'tvreg[sign]'`"],
        ) from exc
    with tempfile.TemporaryDirectory(prefix="tvreg-sign-") as tmp:
        out = Path(tmp) / "bundle.sig"
        try:
            model_signing.signing.Config().use_elliptic_key_signer(private_key=key_path).sign(path, out)
        except (OSError, ValueError) as exc:
            raise SignatureError(f"model-signing could not sign `{path}`: {exc}.") from exc
        data = out.read_bytes()
    from .artifact import file_digest

    verify_artifact_bundle(
        data, file_digest(path), [own], where=f"the bundle model-signing wrote for `{path}`"
    )
    return data


def sign_statement(statement: dict[str, Any], private_key: str | os.PathLike[str]) -> bytes:
    """Sign an in-toto statement into a Sigstore bundle (the envelope ``model-signing`` writes).

    Raises:
        SignatureError: no such key, or ``statement`` is not an in-toto Statement v1.
    """
    _check_statement_shape(statement, where="the statement to sign")
    key = _load_private_key(private_key_path(private_key))
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode("utf-8")
    sig = key.sign(_pae(payload), ec.ECDSA(_CURVES[key.curve.name]()))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": _pem_hint(key.public_key())}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode("ascii"),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [
                {"sig": base64.b64encode(sig).decode("ascii"), "keyid": key_id_of(key.public_key())}
            ],
        },
    }
    return json.dumps(bundle, indent=1).encode("utf-8") + b"\n"


def _bad(where: str, what: str) -> SignatureError:
    return SignatureError(f"{where} is not a valid Sigstore bundle: {what}.")


def _check_statement_shape(statement: Any, *, where: str) -> None:
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise _bad(where, f"its payload is not an in-toto Statement v1 (`_type` must be `{STATEMENT_TYPE}`)")
    subjects = statement.get("subject")
    if (
        not isinstance(subjects, list)
        or not subjects
        or not all(isinstance(s, dict) and isinstance(s.get("digest"), dict) for s in subjects)
    ):
        raise _bad(where, "the statement has no `subject` with a `digest`")
    if not isinstance(statement.get("predicateType"), str) or not isinstance(
        statement.get("predicate"), dict
    ):
        raise _bad(where, "the statement has no `predicateType` and `predicate`")


def read_bundle(data: bytes, *, where: str = "the bundle") -> tuple[dict[str, Any], bytes, list[dict]]:
    """Parse a bundle without checking any signature: ``(statement, payload bytes, signatures)``.

    Raises:
        SignatureError: too large, not JSON, not a Sigstore DSSE bundle, or not in-toto.
    """
    if len(data) > MAX_BUNDLE_BYTES:
        raise _bad(where, f"it is {len(data)} bytes, over the limit of {MAX_BUNDLE_BYTES}")
    try:
        bundle = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(where, "it is not JSON") from exc
    if not isinstance(bundle, dict) or bundle.get("mediaType") != BUNDLE_MEDIA_TYPE:
        raise _bad(where, f"`mediaType` must be `{BUNDLE_MEDIA_TYPE}`")
    envelope = bundle.get("dsseEnvelope")
    if not isinstance(envelope, dict) or envelope.get("payloadType") != PAYLOAD_TYPE:
        raise _bad(where, f"it holds no DSSE envelope of `{PAYLOAD_TYPE}`")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures or not all(isinstance(s, dict) for s in signatures):
        raise _bad(where, "the envelope has no signatures")
    try:
        payload = base64.b64decode(envelope.get("payload", ""), validate=True)
        statement = json.loads(payload)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise _bad(where, "the envelope's payload is not base64 JSON") from exc
    _check_statement_shape(statement, where=where)
    return statement, payload, signatures


def verify_bundle(data: bytes, trusted: Iterable[PublicKey], *, where: str = "the bundle") -> Verified:
    """Check that one of the ``trusted`` keys signed the bundle; return that key and the statement.

    Only the keys passed in count; the bundle's own key hint merely orders the tries.

    Raises:
        SignatureError: the bundle is malformed, or no trusted key's signature is in it.
    """
    statement, payload, signatures = read_bundle(data, where=where)
    message = _pae(payload)
    sigs = []
    for entry in signatures:
        try:
            sigs.append(base64.b64decode(entry.get("sig", ""), validate=True))
        except (binascii.Error, ValueError, TypeError):
            continue
    keys = list(trusted)
    if not keys:
        raise SignatureError(
            f"{where} cannot be verified: no key is trusted.",
            hints=["trust the signer's key or team: `tvreg key trust ID|TEAM`"],
        )
    for public in keys:
        key = public.key()
        for sig in sigs:
            try:
                key.verify(sig, message, ec.ECDSA(_CURVES[key.curve.name]()))
            except InvalidSignature:
                continue
            return Verified(public.id, statement)
    raise SignatureError(
        f"{where} is not signed by any trusted key ({', '.join(k.short + '…' for k in keys)}).",
        hints=["check who signed it with `tvreg info`; trust that key only if you know whose it is"],
    )


def artifact_digests(statement: dict[str, Any]) -> set[str]:
    """The artifact digests (``sha256:<hex>``) a statement covers.

    A ``model-signing`` statement covers its one file's digest when the subject's root
    digest is the SHA-256 over that digest, as ``model-signing`` computes it; any other
    statement covers the ``sha256`` digests of its subjects.
    """
    subjects = statement.get("subject") or []
    if statement.get("predicateType") != ARTIFACT_PREDICATE:
        return {
            "sha256:" + s["digest"]["sha256"]
            for s in subjects
            if isinstance(s, dict)
            and isinstance(s.get("digest"), dict)
            and isinstance(s["digest"].get("sha256"), str)
        }
    predicate = statement.get("predicate") or {}
    resources = predicate.get("resources")
    serialization_ = predicate.get("serialization") or {}
    if (
        not isinstance(resources, list)
        or len(resources) != 1
        or len(subjects) != 1
        or serialization_.get("method") != "files"
        or serialization_.get("hash_type") != "sha256"
    ):
        return set()
    resource = resources[0]
    if not isinstance(resource, dict) or resource.get("algorithm") != "sha256":
        return set()
    try:
        raw = bytes.fromhex(str(resource.get("digest")))
    except ValueError:
        return set()
    root = (subjects[0].get("digest") or {}).get("sha256")
    if len(raw) != 32 or root != hashlib.sha256(raw).hexdigest():
        return set()
    return {"sha256:" + raw.hex()}


def verify_artifact_bundle(
    data: bytes, digest: str, trusted: Iterable[PublicKey], *, where: str = "the signature bundle"
) -> Verified:
    """Check that a trusted key signed ``data`` and that it covers the artifact ``digest``.

    Raises:
        SignatureError: malformed, not by a trusted key, or it covers other bytes (a
            swapped or tampered artifact).
    """
    statement, _, _ = read_bundle(data, where=where)
    covered = artifact_digests(statement)
    if digest not in covered:
        raise SignatureError(
            f"{where} does not cover the artifact {digest} (it signs {', '.join(sorted(covered)) or 'nothing usable'}).",
            hints=["the artifact was changed after signing, or the bundle belongs to another artifact"],
        )
    return verify_bundle(data, trusted, where=where)


__all__ = [
    "ARTIFACT_PREDICATE",
    "EVAL_PREDICATE",
    "GeneratedKey",
    "PublicKey",
    "Verified",
    "artifact_digests",
    "generate_key",
    "is_key_id",
    "key_id_of",
    "keys_dir",
    "load_public_key",
    "private_key_path",
    "public_key_of",
    "read_bundle",
    "sign_artifact",
    "sign_statement",
    "verify_artifact_bundle",
    "verify_bundle",
]
