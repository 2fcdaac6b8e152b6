"""Signed skills on a real registry: keys, signature bundles, attestations, and the client's own verdict.

The registry refuses bundles that do not cover the artifact or that no registered,
unrevoked key of the publisher signed. The client never takes the registry's word:
it verifies against the keys in its own trust list, so a registry that swaps a
signature, or a key stolen and then revoked, is caught.
"""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
from client_helpers import build_artifacts, cli, login, write_project

from tvreg._format.artifact import file_digest
from tvreg._format.signing import (
    EVAL_PREDICATE,
    STATEMENT_TYPE,
    generate_key,
    sign_artifact,
    sign_statement,
    verify_artifact_bundle,
)
from tvreg._registry import config
from tvreg._registry.client import RegistryClient
from tvreg._registry.refs import SkillRef
from tvreg._registry.trust import check_version, trusted_keys
from tvreg.errors import SignatureError

HOOK = """
from tiny_models import read_state_dict

def checksum(model_dir):
    sd = read_state_dict(model_dir)
    return {"checksum": sum(float(t.double().sum()) for t in sd.values()), "tensors": len(sd)}
"""


@pytest.fixture(scope="session")
def artifacts(family, tmp_path_factory):
    return build_artifacts(family, tmp_path_factory.mktemp("trust-artifacts"))


def _api(registry, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=registry.url + "/api/v1", headers=headers, timeout=30)


def _publish(tmp_path, artifact, name: str, *extra) -> None:
    project = write_project(
        tmp_path / name.replace("/", "-"), name=name, version="1.0.0", artifact=str(artifact)
    )
    res = cli("publish", project, *extra)
    assert res.exit_code == 0, res.output


def _register(registry, token: str, key_name: str, team: str | None = None) -> str:
    made = generate_key(key_name)
    with _api(registry, token) as api:
        resp = api.post("/keys", json={"public_key": made.public.pem, "team": team})
    assert resp.status_code == 201, resp.text
    return made.public.id


def _info(target: str) -> dict:
    res = cli("info", target, "--format", "json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["trust"]


def test_keys_are_registered_listed_with_their_revocation_and_revoked_only_by_owners(registry, tmp_path):
    alice = login(registry, "alice")
    bob = registry.make_user("bob")
    registry.make_team("safety")
    registry.add_member("safety", "alice", "admin")
    registry.add_member("safety", "bob", "write")
    made = generate_key("a")
    res = cli("key", "add", made.public_path, "--name", "laptop")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == made.public.id
    listed = json.loads(cli("key", "list", "--format", "json").stdout)
    assert [(k["key_id"], k["owner"], k["name"], k["revoked_at"]) for k in listed] == [
        (made.public.id, {"user": "alice"}, "laptop", None)
    ]
    with _api(registry, alice) as api:
        again = api.post("/keys", json={"public_key": made.public.pem})
        assert again.status_code == 409 and "already registered" in again.json()["error"]["message"]
        bad = api.post(
            "/keys", json={"public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"}
        )
        assert bad.status_code == 400 and "not a PEM public key" in bad.json()["error"]["message"]
    team_key = generate_key("t")
    with _api(registry, bob) as api:
        denied = api.post("/keys", json={"public_key": team_key.public.pem, "team": "safety"})
        assert denied.status_code == 403 and "`admin` role" in denied.json()["error"]["message"]
        assert api.post(f"/keys/{made.public.id}/revoke", json={"reason": "mine now"}).status_code == 403
    with _api(registry, alice) as api:  # a `write` token caps alice's admin role on the team
        assert (
            api.post("/keys", json={"public_key": team_key.public.pem, "team": "safety"}).status_code == 403
        )
    with _api(registry, registry.token("alice", role="admin")) as api:
        assert (
            api.post("/keys", json={"public_key": team_key.public.pem, "team": "safety"}).status_code == 201
        )
    assert [
        k["key_id"] for k in json.loads(cli("key", "list", "--team", "safety", "--format", "json").stdout)
    ] == [team_key.public.id]

    res = cli("key", "revoke", made.public.id, "--reason", "laptop stolen")
    assert res.exit_code == 0, res.output
    with _api(registry) as anonymous:
        (key,) = anonymous.get("/keys", params={"user": "alice"}).json()["keys"]
    assert key["revoked_at"] is not None and key["revoked_reason"] == "laptop stolen"

    admin_key = generate_key("ops")
    assert registry.admin("add-key", "safety", admin_key.public_path, "--team").strip() == admin_key.public.id
    registry.admin("revoke-key", admin_key.public.id, "--reason", "rotated")
    rows = [json.loads(line) for line in registry.admin("list-keys", "safety", "--team").splitlines()]
    assert [(r["key_id"], r["revoked_reason"]) for r in rows] == [
        (team_key.public.id, None),
        (admin_key.public.id, "rotated"),
    ]


def test_publish_sign_attaches_a_bundle_that_verifies_only_once_the_user_trusts_the_key(
    registry, artifacts, tmp_path
):
    login(registry, "alice")
    made = generate_key("release")
    assert cli("key", "add", made.public_path).exit_code == 0
    _publish(tmp_path, artifacts["science"], "alice/science", "--sign", "release")
    project = write_project(
        tmp_path / "coding",
        name="alice/coding",
        version="1.0.0",
        artifact=str(artifacts["coding"]),
        sign={"key": "release"},
    )
    res = cli("publish", project)
    assert res.exit_code == 0, res.output
    assert f"Signed by {made.public.id}." in res.stdout

    view = _info("alice/science@1.0.0")
    assert [(s["key_id"], s["owner"], s["status"]) for s in view["signatures"]] == [
        (made.public.id, "alice", "untrusted")
    ]
    res = cli("key", "trust", "alice")
    assert res.exit_code == 0, res.output
    assert [k.id for k in trusted_keys()] == [made.public.id]
    for target in ("alice/science@1.0.0", "alice/coding@1.0.0"):
        assert [s["status"] for s in _info(target)["signatures"]] == ["verified"]
    text = cli("info", "alice/science@1.0.0").stdout
    assert "signed by" in text and "verified" in text

    # Publishing again with the same key is a no-op; an unregistered key is refused before any upload.
    res = cli("publish", tmp_path / "alice-science", "--sign", "release")
    assert res.exit_code == 0, res.output
    generate_key("stray")
    _other = write_project(
        tmp_path / "sci2", name="alice/science", version="1.0.1", artifact=str(artifacts["science-1.0.1"])
    )
    res = cli("publish", _other, "--sign", "stray")
    assert res.exit_code == 1
    assert "is not registered on" in res.stderr and "tvreg key add" in res.stderr
    with _api(registry) as api:
        assert api.get("/skills/alice/science/versions/1.0.1").status_code == 404


def test_the_registry_refuses_a_bundle_not_covering_the_artifact_or_not_by_the_publishers_key(
    registry, artifacts, tmp_path
):
    alice = login(registry, "alice")
    mallory = registry.make_user("mallory")
    _publish(tmp_path, artifacts["science"], "alice/science")
    alice_key = _register(registry, alice, "alice")
    _register(registry, mallory, "mallory")
    url = "/skills/alice/science/versions/1.0.0/signature"

    with _api(registry, alice) as api:
        wrong_artifact = api.put(url, content=sign_artifact(artifacts["coding"], "alice"))
        assert wrong_artifact.status_code == 400
        error = wrong_artifact.json()["error"]
        assert error["code"] == "invalid_signature" and "does not cover the artifact" in error["message"]
        foreign = api.put(url, content=sign_artifact(artifacts["science"], "mallory"))
        assert foreign.status_code == 400
        assert (
            "not signed by any of the 1 registered, unrevoked key(s) of `alice`"
            in foreign.json()["error"]["message"]
        )
        generate_key("unregistered")
        assert api.put(url, content=sign_artifact(artifacts["science"], "unregistered")).status_code == 400
        assert api.post(f"/keys/{alice_key}/revoke", json={"reason": "stolen"}).status_code == 200
        revoked = api.put(url, content=sign_artifact(artifacts["science"], "alice"))
        assert revoked.status_code == 400 and f"revoked: {alice_key}" in revoked.json()["error"]["message"]
        assert api.get("/skills/alice/science/versions/1.0.0/signatures").json()["signatures"] == []
    with _api(registry, mallory) as api:
        # Write access is needed to sign a version at all.
        assert api.put(url, content=sign_artifact(artifacts["science"], "mallory")).status_code == 403


def test_a_swapped_signature_a_tampered_artifact_and_a_revoked_key_all_fail_on_the_client(
    registry, artifacts, tmp_path
):
    alice = login(registry, "alice")
    mallory = registry.make_user("mallory")
    alice_key = _register(registry, alice, "alice")
    mallory_key = _register(registry, mallory, "mallory")
    _publish(tmp_path, artifacts["science"], "alice/science", "--sign", "alice")
    assert cli("key", "trust", alice_key).exit_code == 0
    ref = SkillRef("alice", "science")
    digest = file_digest(artifacts["science"])
    url = config.normalize_url(registry.url)
    with RegistryClient(url) as client:
        (check,) = check_version(client, ref, "1.0.0", digest)[0]
        assert check.status == "verified"
        bundle = client.request("GET", "/skills/alice/science/versions/1.0.0/signatures").json()[
            "signatures"
        ][0]

    # The artifact as a mirror might serve it, one byte changed: the original bundle does not cover it.
    tampered = tmp_path / "tampered.tvskill"
    shutil.copyfile(artifacts["science"], tampered)
    data = bytearray(tampered.read_bytes())
    data[-100] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(SignatureError, match="does not cover the artifact"):
        verify_artifact_bundle(
            bundle["bundle"].encode(), file_digest(tampered), [k.public for k in trusted_keys()]
        )

    # A compromised registry replaces alice's bundle with one signed by a key it controls.
    forged = sign_artifact(artifacts["science"], "mallory")
    registry.sql("UPDATE version_signatures SET bundle = :b, key_id = :k", b=forged, k=mallory_key)
    with RegistryClient(url) as client:
        (check,) = check_version(client, ref, "1.0.0", digest)[0]
    assert (check.key_id, check.status) == (mallory_key, "untrusted")

    # Alice's key is stolen and revoked: her old signature no longer verifies for anyone who looks.
    registry.sql(
        "UPDATE version_signatures SET bundle = :b, key_id = :k", b=bundle["bundle"].encode(), k=alice_key
    )
    assert cli("key", "revoke", alice_key, "--reason", "stolen").exit_code == 0
    with RegistryClient(url) as client:
        (check,) = check_version(client, ref, "1.0.0", digest)[0]
    assert check.status == "revoked"
    assert "revoked" in cli("info", "alice/science@1.0.0").stdout


def _model(family, tmp_path):
    model = tmp_path / "mymodel"
    shutil.copytree(family.general, model)
    res = cli("init", model, "--base", family.pre, "--general-size", 275000)
    assert res.exit_code == 0, res.output
    return model


def test_eval_attests_the_score_of_g_plus_omega_tau_and_only_a_matching_attestation_counts(
    registry, family, artifacts, tmp_path, monkeypatch
):
    from helpers import reference_install
    from tiny_models import read_state_dict  # noqa: F401  (the hook imports it)

    from tvreg._env.lockfile import read_lock

    alice = login(registry, "alice")
    carol = registry.make_user("carol")
    alice_key = _register(registry, alice, "alice")
    _publish(tmp_path, artifacts["science"], "alice/science")
    model = _model(family, tmp_path)
    before = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    hook = tmp_path / "hooks" / "score.py"
    hook.parent.mkdir()
    hook.write_text(HOOK)
    out = tmp_path / "science.attestation.json"
    res = cli(
        "eval", "alice/science@1.0.0", "--into", model, "--eval", f"{hook}:checksum",
        "--weight", "0.3", "--sign", "alice", "-o", out,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()} == before

    statement = json.loads(
        __import__("base64").b64decode(json.loads(out.read_bytes())["dsseEnvelope"]["payload"])
    )
    predicate = statement["predicate"]
    digest = file_digest(artifacts["science"])
    general = read_lock(model).general_fingerprint
    expected = sum(
        float(t.double().sum())
        for t in reference_install(family.general, family.pre, [(family.science, 0.3)]).values()
    )
    assert statement["subject"][0]["digest"]["sha256"] == digest.split(":")[1]
    assert predicate["general"]["fingerprint"] == general
    assert predicate["weight"] == 0.3 and predicate["method"] == "task_arithmetic"
    assert predicate["metrics"]["checksum"] == pytest.approx(expected, rel=1e-6)
    assert predicate["eval"]["hook"] == f"{hook}:checksum"
    assert (
        predicate["eval"]["source_sha256"]
        == "sha256:" + __import__("hashlib").sha256(HOOK.encode()).hexdigest()
    )
    assert predicate["tvreg_version"] and predicate["created"]

    res = cli("attest", "push", out)
    assert res.exit_code == 0, res.output
    # Carol measured the same artifact on another G; the registry takes it (it is about this artifact) ...
    carol_key = _register(registry, carol, "carol")
    other_g = dict(statement, predicate={**predicate, "general": {"fingerprint": "f" * 64, "hub_id": None}})
    with _api(registry, carol) as api:
        assert (
            api.post(
                "/skills/alice/science/versions/1.0.0/attestations", content=sign_statement(other_g, "carol")
            ).status_code
            == 201
        )
        # ... but not one whose subject is another artifact, nor one by a key that is not hers.
        other_subject = dict(statement, subject=[{"name": "x", "digest": {"sha256": "0" * 64}}])
        refused = api.post(
            "/skills/alice/science/versions/1.0.0/attestations",
            content=sign_statement(other_subject, "carol"),
        )
        assert refused.status_code == 400 and "about another artifact" in refused.json()["error"]["message"]
        assert (
            api.post(
                "/skills/alice/science/versions/1.0.0/attestations",
                content=sign_statement(statement, "alice"),
            ).status_code
            == 400
        )

    assert cli("key", "trust", alice_key).exit_code == 0
    assert cli("key", "trust", carol_key).exit_code == 0
    with RegistryClient(config.normalize_url(registry.url)) as client:
        _, atts = check_version(client, SkillRef("alice", "science"), "1.0.0", digest, general=general)
    assert [(a.key_id, a.status, a.reason) for a in atts] == [
        (alice_key, "verified", ""),
        (carol_key, "invalid", "it was measured on another G"),
    ]
    listed = _info("alice/science@1.0.0")["attestations"]
    assert [(a["owner"], a["status"], a["weight"]) for a in listed] == [
        ("alice", "verified", 0.3),
        ("carol", "verified", 0.3),
    ]
    assert listed[0]["metrics"]["checksum"] == pytest.approx(expected, rel=1e-6)


def test_attest_push_refuses_an_unsigned_statement(registry, family, artifacts, tmp_path):
    login(registry, "alice")
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": "alice/science@1.0.0", "digest": {"sha256": "0" * 64}}],
        "predicateType": EVAL_PREDICATE,
        "predicate": {"skill": {"name": "alice/science", "version": "1.0.0"}},
    }
    path = tmp_path / "unsigned.json"
    path.write_text(json.dumps(statement))
    res = cli("attest", "push", path)
    assert res.exit_code == 1
    assert "is an unsigned statement" in res.stderr and "--sign KEY" in res.stderr


def test_attestations_are_bounded_per_user_and_read_page_by_page(registry, artifacts, tmp_path):
    """Anyone who can read a skill may attest it: 8 per user and version, served 20 a page, read whole by the client."""
    from registry_server.trust import MAX_ATTESTATIONS_PER_UPLOADER

    login(registry, "alice")
    _publish(tmp_path, artifacts["science"], "alice/science")
    digest = file_digest(artifacts["science"])
    url = "/skills/alice/science/versions/1.0.0/attestations"

    def statement(i: int) -> dict:
        return {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": "science", "digest": {"sha256": digest.split(":")[1]}}],
            "predicateType": EVAL_PREDICATE,
            "predicate": {"general": {"fingerprint": "f" * 64, "hub_id": None}, "weight": 0.3,
                          "method": "task_arithmetic", "metrics": {"run": i}},
        }  # fmt: skip

    for user in ("bob", "carol", "dave"):
        token = registry.make_user(user)
        _register(registry, token, user)
        with _api(registry, token) as api:
            bundles = [sign_statement(statement(i), user) for i in range(MAX_ATTESTATIONS_PER_UPLOADER)]
            for bundle in bundles:
                r = api.post(url, content=bundle)
                assert r.status_code == 201, r.text
            assert api.post(url, content=bundles[0]).status_code == 200  # the same bundle is a no-op
            refused = api.post(url, content=sign_statement(statement(99), user))
            assert refused.status_code == 409, refused.text
            assert f"`{user}` already attached 8 attestations" in refused.json()["error"]["message"]
    assert registry.sql("SELECT count(*) FROM attestations") == [(24,)]
    with _api(registry) as api:
        first = api.get(url)
        assert len(first.json()["attestations"]) == 20 and first.json()["total"] == 24
        assert 'rel="next"' in first.headers["link"] and first.headers["x-total-count"] == "24"
        assert len(api.get(url, params={"page": 2}).json()["attestations"]) == 4
        assert api.get(url, params={"per_page": 21}).status_code == 400
    with RegistryClient(config.normalize_url(registry.url)) as client:
        _, atts = check_version(client, SkillRef("alice", "science"), "1.0.0", digest)
    assert len(atts) == 24 and len({a.key_id for a in atts}) == 3


def test_signing_keys_are_bounded_per_owner(registry):
    """`GET /keys` lists every key of an owner to anyone, so an owner may register at most 32."""
    from registry_server.trust import MAX_KEYS_PER_OWNER

    token = registry.make_user("alice")
    with _api(registry, token) as api:
        for i in range(MAX_KEYS_PER_OWNER):
            r = api.post("/keys", json={"public_key": generate_key(f"k{i}").public.pem})
            assert r.status_code == 201, r.text
        refused = api.post("/keys", json={"public_key": generate_key("one-more").public.pem})
        assert refused.status_code == 409
        assert refused.json()["error"]["message"] == (
            "user `alice` already has 32 signing keys, revoked ones included, the most one owner may register."
        )
        assert len(api.get("/keys", params={"user": "alice"}).json()["keys"]) == MAX_KEYS_PER_OWNER
    bob = registry.make_user("bob")
    with _api(registry, bob) as api:  # the bound is per owner
        assert api.post("/keys", json={"public_key": generate_key("bob").public.pem}).status_code == 201


def _page(registry, path: str) -> str:
    with httpx.Client(base_url=registry.url, timeout=30) as web:
        res = web.get(path)
    assert res.status_code == 200, res.text
    return res.text


def _section(html: str, ident: str) -> str:
    start = html.index(f'id="{ident}"')
    return html[start : html.index("</table>", start)]


def test_the_skill_page_shows_who_signed_and_attested_and_a_later_revocation(registry, artifacts, tmp_path):
    alice = login(registry, "alice")
    made = generate_key("release")
    assert cli("key", "add", made.public_path).exit_code == 0
    _publish(tmp_path, artifacts["science"], "alice/science", "--sign", "release")
    _other = write_project(
        tmp_path / "sci2", name="alice/science", version="1.0.1", artifact=str(artifacts["science-1.0.1"])
    )
    assert cli("publish", _other).exit_code == 0

    signed = _page(registry, "/alice/science/1.0.0")
    rows = _section(signed, "signatures")
    assert made.public.id[:19] in rows and "user alice" in rows and "active" in rows
    assert 'id="unsigned"' not in signed
    unsigned = _page(registry, "/alice/science/1.0.1")
    assert 'id="unsigned"' in unsigned and 'id="signatures"' not in unsigned

    digest = file_digest(artifacts["science"])
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": "science.tvskill", "digest": {"sha256": digest.split(":")[1]}}],
        "predicateType": EVAL_PREDICATE,
        "predicate": {
            "general": {"fingerprint": "a" * 64, "hub_id": "org/general-<b>x</b>"},
            "weight": 0.3,
            "method": "task_arithmetic",
            "metrics": {"refusal_rate": 0.91},
        },
    }
    with _api(registry, alice) as api:
        res = api.post(
            "/skills/alice/science/versions/1.0.0/attestations", content=sign_statement(statement, "release")
        )
        assert res.status_code == 201, res.text
    attested = _section(_page(registry, "/alice/science/1.0.0"), "attestations")
    assert "refusal_rate = 0.91" in attested and "task_arithmetic" in attested and "0.3" in attested
    assert "org/general-&lt;b&gt;x&lt;/b&gt;" in attested and "<b>" not in attested

    # The page was cached under the registry's generation: a revocation must reach it at once.
    assert cli("key", "revoke", made.public.id, "--reason", "laptop stolen").exit_code == 0
    after = _page(registry, "/alice/science/1.0.0")
    assert "revoked: laptop stolen" in _section(after, "signatures")
    assert "revoked: laptop stolen" in _section(after, "attestations")
