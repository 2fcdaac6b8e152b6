"""An environment policy (``tvreg.toml``) enforced against a real registry on loopback.

The client verifies every signature and attestation itself, against the keys the
*environment* trusts: an unsigned, untrusted or revoked version is not a candidate and
the resolver says why; a registry that serves other bytes under a signed version is
caught; an attestation counts only when its subject is the artifact and its G is ours.
"""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
from client_helpers import build_artifacts, cli, login, write_project
from helpers import tree_digest

from tvreg._env.lockfile import read_lock
from tvreg._format.artifact import file_digest
from tvreg._format.signing import generate_key, sign_statement

HOOK = """
from tiny_models import read_state_dict

def score(model_dir):
    sd = read_state_dict(model_dir)
    return {"tensors": len(sd), "checksum": sum(float(t.double().sum()) for t in sd.values())}
"""


@pytest.fixture(scope="session")
def artifacts(family, tmp_path_factory):
    return build_artifacts(family, tmp_path_factory.mktemp("policy-artifacts"))


def _publish(tmp_path, artifact, name: str, version: str, *extra) -> None:
    project = write_project(
        tmp_path / f"{name.replace('/', '-')}-{version}", name=name, version=version, artifact=str(artifact)
    )
    res = cli("publish", project, *extra)
    assert res.exit_code == 0, res.output


def _register(registry, token: str, key_name: str, team: str | None = None) -> str:
    made = generate_key(key_name)
    with httpx.Client(base_url=registry.url + "/api/v1", headers={"Authorization": f"Bearer {token}"}) as api:
        resp = api.post("/keys", json={"public_key": made.public.pem, "team": team})
    assert resp.status_code == 201, resp.text
    return made.public.id


def _model(family, tmp_path, policy: str):
    model = tmp_path / "mymodel"
    shutil.copytree(family.general, model)
    res = cli("init", model, "--base", family.pre, "--general-size", 275000)
    assert res.exit_code == 0, res.output
    (model / "tvreg.toml").write_text(policy)
    return model


@pytest.fixture
def nlp(registry, artifacts, tmp_path):
    """Team `nlp` (alice is its admin) with a team key; nlp/science 1.0.0 signed by it, 1.0.1 unsigned."""
    login(registry, "alice")
    registry.make_team("nlp")
    registry.add_member("nlp", "alice", "admin")
    key = _register(registry, registry.token("alice", role="admin"), "nlp", team="nlp")
    _publish(tmp_path, artifacts["science"], "nlp/science", "1.0.0", "--sign", "nlp")
    _publish(tmp_path, artifacts["science-1.0.1"], "nlp/science", "1.0.1")
    return key


def test_require_signature_makes_unsigned_versions_no_candidates_and_locks_the_verifying_key(
    registry, family, nlp, tmp_path
):
    model = _model(family, tmp_path, '[policy]\nrequire-signature = true\ntrusted-keys = ["nlp"]\n')
    res = cli("install", "nlp/science@1.0.1", "--into", model)
    assert res.exit_code == 1
    assert (
        "because you asked for nlp/science@1.0.1 and nlp/science 1.0.1 is not signed, no version of "
        "nlp/science fits" in res.stderr
    )
    res = cli("check", "--policy", "--into", model, "nlp/science@1.0.1")
    assert res.exit_code == 1
    assert "refused: No solution found when resolving skills: because you asked for nlp/science@1.0.1 and " \
        "nlp/science 1.0.1 is not signed" in res.stderr
    # The highest version is unsigned, so the highest *candidate* is 1.0.0.
    res = cli("install", "nlp/science", "--into", model)
    assert res.exit_code == 0, res.output
    assert "signed by" in res.stdout  # the install summary
    (skill,) = read_lock(model).skills
    assert (skill.version, skill.signed_by) == ("1.0.0", nlp)
    assert json.loads((model / "tvreg.lock").read_text())["skills"][0]["signed_by"] == nlp
    assert "signed by" in cli("list", "--into", model).stdout
    assert [s["signed_by"] for s in json.loads(cli("list", "--into", model, "--format", "json").stdout)] == [nlp]
    res = cli("check", "--policy", "--into", model)
    assert res.exit_code == 0, res.output
    assert f"nlp/science 1.0.0  signed by team nlp {nlp[:19]}…" in res.stdout
    assert "mymodel meets its policy" in res.stdout


def test_a_key_the_environment_does_not_trust_or_a_revoked_key_is_refused(registry, family, nlp, tmp_path):
    stranger = _register(registry, registry.make_user("bob"), "stranger")
    model = _model(
        family, tmp_path, f'[policy]\nrequire-signature = true\ntrusted-keys = ["{stranger}", "nobody-here"]\n'
    )
    res = cli("install", "nlp/science@1.0.0", "--into", model)
    assert res.exit_code == 1 and "trusts `nobody-here`, which is no team or user" in res.stderr
    (model / "tvreg.toml").write_text(f'[policy]\nrequire-signature = true\ntrusted-keys = ["{stranger}"]\n')
    res = cli("install", "nlp/science@1.0.0", "--into", model)
    assert res.exit_code == 1
    assert "nlp/science 1.0.0 is signed by a key mymodel does not trust" in res.stderr

    (model / "tvreg.toml").write_text('[policy]\nrequire-signature = true\ntrusted-keys = ["nlp"]\n')
    assert cli("install", "nlp/science@1.0.0", "--into", model).exit_code == 0
    before = (model / "tvreg.lock").read_bytes()
    registry.admin("revoke-key", nlp, "--reason", "stolen")
    for args in (("sync", "--locked", "--into", model), ("upgrade", "--into", model)):
        res = cli(*args)
        assert res.exit_code == 1, args
        assert "nlp/science 1.0.0 is signed by a key that was revoked" in res.stderr, args
    assert (model / "tvreg.lock").read_bytes() == before


def test_a_registry_serving_other_bytes_under_a_signed_version_is_caught(
    registry, family, nlp, artifacts, tmp_path
):
    # The registry (or a mirror) now announces and serves coding's bytes as nlp/science 1.0.0,
    # keeping the original bundle: the signature does not cover what it serves.
    _publish(tmp_path, artifacts["coding"], "alice/coding", "1.0.0")
    other = file_digest(artifacts["coding"])
    registry.sql(
        "UPDATE versions SET digest = :d, size = :s WHERE version = '1.0.0' AND skill_id = "
        "(SELECT id FROM skills WHERE name = 'science')",
        d=other, s=artifacts["coding"].stat().st_size,
    )  # fmt: skip
    model = _model(family, tmp_path, '[policy]\nrequire-signature = true\ntrusted-keys = ["nlp"]\n')
    res = cli("install", "nlp/science@1.0.0", "--into", model)
    assert res.exit_code == 1
    assert f"nlp/science 1.0.0's signature does not cover the artifact the registry serves ({other[:19]}…)" in res.stderr
    assert read_lock(model).skills == ()


def test_unsigned_installs_with_a_note_always_is_added_and_cannot_be_removed(
    registry, family, nlp, artifacts, tmp_path
):
    _publish(tmp_path, artifacts["coding"], "alice/coding", "1.0.0")
    model = _model(family, tmp_path, '[policy]\ntrusted-keys = ["nlp"]\nalways = ["nlp/science>=1.0.1"]\n')
    res = cli("install", "alice/coding", "--into", model)
    assert res.exit_code == 0, res.output
    assert "note: alice/coding 1.0.0 is not signed; installing it because the policy does not require" in res.stderr
    assert "note: nlp/science 1.0.1 is not signed" in res.stderr
    assert {(s.id, s.version, s.requested) for s in read_lock(model).skills} == {
        ("alice/coding", "1.0.0", "alice/coding"),
        ("nlp/science", "1.0.1", "nlp/science@>=1.0.1"),
    }
    res = cli("uninstall", "nlp/science", "--into", model)
    assert res.exit_code == 1
    assert "requires nlp/science >=1.0.1 in every install, and mymodel would not have it" in res.stderr
    res = cli("check", "--policy", "--into", model, "--format", "json")
    assert res.exit_code == 0, res.output
    assert [(r["skill"], r["signed_by"]) for r in json.loads(res.stdout)["skills"]] == [
        ("alice/coding", None), ("nlp/science", None),
    ]  # fmt: skip


def test_only_a_trusted_attestation_of_this_artifact_on_this_g_counts(registry, family, nlp, tmp_path):
    hook = tmp_path / "hooks" / "score.py"
    hook.parent.mkdir()
    hook.write_text(HOOK)
    model = _model(
        family, tmp_path,
        '[policy]\nrequire-signature = true\ntrusted-keys = ["nlp"]\n'
        '[policy.attested]\n"nlp/science" = { tensors = ">=1" }\n',
    )  # fmt: skip
    res = cli("install", "nlp/science@1.0.0", "--into", model)
    assert res.exit_code == 1
    assert "nlp/science 1.0.0 has no attestation by a key mymodel trusts, on this G, showing tensors>=1 (it has no" in res.stderr

    out = tmp_path / "att.json"
    res = cli("eval", "nlp/science@1.0.0", "--into", model, "--eval", f"{hook}:score", "--weight", "0.3", "-o", out)
    assert res.exit_code == 0, res.output
    statement = json.loads(out.read_text())
    # Attestations the registry would not take (or a compromised one might plant): another G, another artifact.
    other_g = dict(statement, predicate={**statement["predicate"], "general": {"fingerprint": "f" * 64}})
    other_subject = dict(statement, subject=[{"name": "x", "digest": {"sha256": "0" * 64}}])
    admin = registry.token("alice", role="admin")
    with httpx.Client(base_url=registry.url + "/api/v1", headers={"Authorization": f"Bearer {admin}"}) as api:
        resp = api.post("/skills/nlp/science/versions/1.0.0/attestations", content=sign_statement(other_g, "nlp"))
        assert resp.status_code == 201, resp.text
    res = cli("install", "nlp/science@1.0.0", "--into", model)
    assert res.exit_code == 1 and "(it was measured on another G)" in res.stderr
    registry.sql("UPDATE attestations SET bundle = :b", b=sign_statement(other_subject, "nlp"))
    res = cli("install", "nlp/science@1.0.0", "--into", model)
    assert res.exit_code == 1 and "(it is about another artifact)" in res.stderr

    registry.sql("UPDATE attestations SET bundle = :b", b=sign_statement(statement, "nlp"))
    res = cli("install", "nlp/science@1.0.0", "--into", model)
    assert res.exit_code == 0, res.output
    (model / "tvreg.toml").write_text(
        '[policy]\ntrusted-keys = ["nlp"]\n[policy.attested]\n"nlp/science" = { tensors = ">=1000" }\n'
    )
    res = cli("check", "--policy", "--into", model)
    assert res.exit_code == 1
    assert "showing tensors>=1000 (it measured tensors=" in res.stderr


def _set_signed_by(model, key_id: str) -> None:
    lock = json.loads((model / "tvreg.lock").read_text())
    lock["skills"][0]["signed_by"] = key_id
    (model / "tvreg.lock").write_text(json.dumps(lock, indent=2))


def test_a_no_op_rerun_rechecks_the_locked_signer_and_a_key_revoked_since(registry, family, nlp, tmp_path):
    stranger = _register(registry, registry.make_user("bob"), "stranger")
    model = _model(
        family, tmp_path, f'[policy]\nrequire-signature = true\ntrusted-keys = ["nlp", "{stranger}"]\n'
    )
    assert cli("install", "nlp/science@1.0.0", "--into", model).exit_code == 0
    res = cli("install", "nlp/science@1.0.0", "--into", model)
    assert res.exit_code == 0 and "Nothing to change" in res.stdout, res.output

    # The lock's `signed_by` is a record, not a credential: a lock naming another trusted key
    # is caught by `sync --locked` (the lock would change) and corrected by a re-install.
    _set_signed_by(model, stranger)
    weights = {p.name: p.read_bytes() for p in model.glob("*.safetensors")}
    res = cli("sync", "--locked", "--into", model)
    assert res.exit_code == 1
    assert f"the lock says nlp/science 1.0.0 was signed by {stranger[:19]}…, but it verifies with {nlp[:19]}…" \
        in res.stderr
    assert read_lock(model).skills[0].signed_by == stranger
    assert cli("install", "nlp/science@1.0.0", "--into", model).exit_code == 0
    assert read_lock(model).skills[0].signed_by == nlp
    assert {p.name: p.read_bytes() for p in model.glob("*.safetensors")} == weights

    # Trust withdrawn from the signer, or its key revoked since the lock was written: every re-run refuses.
    (model / "tvreg.toml").write_text(f'[policy]\nrequire-signature = true\ntrusted-keys = ["{stranger}"]\n')
    _set_signed_by(model, stranger)  # a lock claiming a trusted signer does not help
    before = tree_digest(model)
    for args in (("install", "nlp/science@1.0.0", "--into", model), ("sync", "--locked", "--into", model)):
        res = cli(*args)
        assert res.exit_code == 1, args
        assert "nlp/science 1.0.0 is signed by a key mymodel does not trust" in res.stderr, args
    (model / "tvreg.toml").write_text('[policy]\nrequire-signature = true\ntrusted-keys = ["nlp"]\n')
    assert cli("install", "nlp/science@1.0.0", "--into", model).exit_code == 0
    before = tree_digest(model)
    registry.admin("revoke-key", nlp, "--reason", "stolen")
    for args in (("install", "nlp/science@1.0.0", "--into", model), ("sync", "--locked", "--into", model)):
        res = cli(*args)
        assert res.exit_code == 1, args
        assert "nlp/science 1.0.0 is signed by a key that was revoked" in res.stderr, args
    assert tree_digest(model) == before


def test_a_failing_gate_on_upgrade_keeps_the_old_model_byte_identical(registry, family, artifacts, tmp_path):
    hook = tmp_path / "hooks" / "score.py"
    hook.parent.mkdir()
    hook.write_text(HOOK)
    login(registry, "alice")
    _publish(tmp_path, artifacts["science"], "alice/science", "1.0.0")
    model = _model(family, tmp_path, "")
    (model / "tvreg.toml").unlink()
    assert cli("install", "alice/science@^1", "--into", model).exit_code == 0
    _publish(tmp_path, artifacts["science-1.0.1"], "alice/science", "1.0.1")
    before = tree_digest(model)
    res = cli("upgrade", "--into", model, "--gate", f"{hook}:score", "--require", "checksum>=1e30")
    assert res.exit_code == 1
    assert f"error: the gate `{hook}:score` failed: `checksum>=1e+30` not met (measured " in res.stderr
    assert "nothing was upgraded." in res.stderr
    assert tree_digest(model) == before
    res = cli("upgrade", "--into", model, "--gate", f"{hook}:score", "--require", "tensors>=1")
    assert res.exit_code == 0, res.output
    assert [s.version for s in read_lock(model).skills] == ["1.0.1"]
