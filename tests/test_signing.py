"""Signature bundles: made by model-signing, verified only against the keys the caller trusts."""

from __future__ import annotations

import base64
import hashlib
import json
import stat

import pytest
from cryptography.hazmat.primitives import serialization

from tvreg._format.artifact import file_digest
from tvreg._format.signing import (
    EVAL_PREDICATE,
    STATEMENT_TYPE,
    artifact_digests,
    generate_key,
    load_public_key,
    sign_artifact,
    sign_statement,
    verify_artifact_bundle,
    verify_bundle,
)
from tvreg.errors import SignatureError


@pytest.fixture
def artifact(tmp_path):
    path = tmp_path / "science-1.0.0.tvskill"
    path.write_bytes(bytes(range(256)) * 400)
    return path


def test_generate_writes_a_private_key_only_the_user_can_read_and_an_id_of_its_spki(tmp_path):
    made = generate_key("release")
    assert made.private_path.parent.name == "keys"
    assert stat.S_IMODE(made.private_path.stat().st_mode) == 0o600
    der = serialization.load_pem_public_key(made.public_path.read_bytes()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert made.public.id == "sha256:" + hashlib.sha256(der).hexdigest()
    assert load_public_key(made.public_path.read_text()).id == made.public.id
    with pytest.raises(SignatureError, match="already exists"):
        generate_key("release")


def test_a_signed_artifact_verifies_and_model_signing_itself_accepts_the_bundle(artifact, tmp_path):
    import model_signing

    made = generate_key("k")
    bundle = sign_artifact(artifact, "k")
    assert verify_artifact_bundle(bundle, file_digest(artifact), [made.public]).key_id == made.public.id
    (tmp_path / "b.sig").write_bytes(bundle)
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=made.public_path).verify(
        artifact, tmp_path / "b.sig"
    )


def test_a_tampered_artifact_with_the_original_bundle_fails(artifact):
    made = generate_key("k")
    bundle = sign_artifact(artifact, "k")
    data = bytearray(artifact.read_bytes())
    data[1000] ^= 1
    artifact.write_bytes(bytes(data))
    with pytest.raises(SignatureError, match="does not cover the artifact"):
        verify_artifact_bundle(bundle, file_digest(artifact), [made.public])


def test_a_bundle_rewritten_to_cover_other_bytes_fails_its_signature(artifact):
    """A mirror that swaps the artifact and edits the statement to match cannot re-sign it."""
    made = generate_key("k")
    bundle = json.loads(sign_artifact(artifact, "k"))
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    other = hashlib.sha256(b"evil").digest()
    statement["predicate"]["resources"][0]["digest"] = other.hex()
    statement["subject"][0]["digest"]["sha256"] = hashlib.sha256(other).hexdigest()
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    forged = json.dumps(bundle).encode()
    assert artifact_digests(json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))) == {
        "sha256:" + other.hex()
    }
    with pytest.raises(SignatureError, match="not signed by any trusted key"):
        verify_artifact_bundle(forged, "sha256:" + other.hex(), [made.public])


def test_a_bundle_by_a_key_the_caller_does_not_trust_fails_whatever_key_it_names(artifact):
    generate_key("mallory")
    alice = generate_key("alice")
    bundle = sign_artifact(artifact, "mallory")
    with pytest.raises(SignatureError, match="not signed by any trusted key"):
        verify_artifact_bundle(bundle, file_digest(artifact), [alice.public])
    with pytest.raises(SignatureError, match="no key is trusted"):
        verify_artifact_bundle(bundle, file_digest(artifact), [])


def test_an_attestation_covers_its_subject_digest_only(artifact):
    made = generate_key("k")
    digest = file_digest(artifact)
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": "alice/science@1.0.0", "digest": {"sha256": digest.split(":")[1]}}],
        "predicateType": EVAL_PREDICATE,
        "predicate": {"metrics": {"refusal_rate": 0.9}},
    }
    bundle = sign_statement(statement, "k")
    assert verify_bundle(bundle, [made.public]).statement == statement
    assert verify_artifact_bundle(bundle, digest, [made.public]).key_id == made.public.id
    with pytest.raises(SignatureError, match="does not cover"):
        verify_artifact_bundle(bundle, "sha256:" + "0" * 64, [made.public])


@pytest.mark.parametrize(
    "data, message",
    [
        (b"not json", "not JSON"),
        (b'{"mediaType": "x"}', "`mediaType` must be"),
        (b"x" * 300_000, "over the limit"),
    ],
)
def test_malformed_bundles_are_refused_with_one_sentence(data, message):
    with pytest.raises(SignatureError, match=message):
        verify_bundle(data, [])
