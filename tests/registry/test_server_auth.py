"""Who may do what: tokens, roles, private namespaces, hostile names, and the audit trail.

docs/reliability.md rows 12 (path-like names), 13 (look-alike names), 27 (scope, expired and
revoked tokens) and 28 (private namespace probes).
"""

from __future__ import annotations

import socket

import pytest


def _paths(ns: str, name: str) -> list[str]:
    return [
        f"/skills/{ns}/{name}",
        f"/skills/{ns}/{name}/versions/1.0.0",
        f"/skills/{ns}/{name}/versions/1.0.0/artifact",
    ]


def test_private_namespace_is_404_identical_to_missing_for_outsiders(registry, api, server_artifacts):
    alice = registry.make_user("alice")
    bob = registry.make_user("bob")
    carol = registry.make_user("carol")
    registry.make_team("acme", private=True)
    registry.add_member("acme", "alice", "write")
    registry.add_member("acme", "carol", "read")

    with api.client() as anonymous, api.client(bob) as outsider:
        before = {p: (anonymous.get(p).json(), outsider.get(p).json()) for p in _paths("acme", "secret")}
    for anon_body, outsider_body in before.values():
        assert (
            anon_body
            == outsider_body
            == {"error": {"code": "not_found", "message": "skill `acme/secret` was not found."}}
        )

    r = api.publish(alice, "acme/secret", "1.0.0", server_artifacts.make("secret", "1.0.0"))
    assert r.status_code == 201, r.text

    with api.client() as anonymous, api.client(bob) as outsider:
        for path, (anon_before, outsider_before) in before.items():
            a, o = anonymous.get(path), outsider.get(path)
            assert (a.status_code, a.json()) == (404, anon_before), path
            assert (o.status_code, o.json()) == (404, outsider_before), path
            assert a.headers.get("content-length") == o.headers.get("content-length")
        assert anonymous.get("/skills").json()["total"] == 0
        assert outsider.get("/skills", params={"namespace": "acme"}).json()["total"] == 0
        # an outsider cannot publish into it either, and learns nothing from trying
        upload = api.upload(bob, server_artifacts.make("secret", "1.0.1"))
        r = outsider.put("/skills/acme/secret/versions/1.0.1", json={"upload_id": upload})
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")

    with api.client(carol) as member:
        assert member.get("/skills/acme/secret").json()["private"] is True
        assert member.get("/skills/acme/secret/versions/1.0.0/artifact").status_code == 200
        found = member.get("/skills").json()
        assert [(i["name"], i["private"]) for i in found["items"]] == [("acme/secret", True)]
        # read members cannot write: 403 naming the role
        upload = api.upload(carol, server_artifacts.make("secret", "1.0.2"))
        r = member.put("/skills/acme/secret/versions/1.0.2", json={"upload_id": upload})
        assert r.status_code == 403
        assert "`write`" in r.json()["error"]["message"] and "`read`" in r.json()["error"]["message"]


def test_read_only_token_cannot_publish(registry, api, server_artifacts):
    write = registry.make_user("alice")
    read = registry.token("alice", role="read")
    data = server_artifacts.make("science", "1.0.0")
    with api.client(read) as c:
        r = c.post("/uploads", json={"size": len(data), "digest": "sha256:" + "0" * 64})
        assert r.status_code == 403
        assert r.json()["error"] == {
            "code": "forbidden",
            "message": "uploading an artifact needs a token with the `write` role; this token is limited to `read`.",
        }
        upload = api.upload(write, data)
        r = c.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload})
        assert r.status_code == 403 and "needs the `write` role" in r.json()["error"]["message"]
        assert c.get("/whoami").json()["user"] == "alice"
    assert registry.sql("SELECT count(*) FROM versions") == [(0,)]


def test_publishing_to_someone_elses_public_namespace_is_403(registry, api, server_artifacts):
    registry.make_user("alice")
    bob = registry.make_user("bob")
    upload = api.upload(bob, server_artifacts.make("science", "1.0.0"))
    with api.client(bob) as c:
        r = c.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload})
    assert r.status_code == 403
    assert r.json()["error"]["message"] == (
        "publishing `alice/science@1.0.0` needs the `write` role on namespace `alice`; "
        "`bob` is not a member of team `alice`."
    )


def test_expired_revoked_and_malformed_tokens_are_401(registry, api):
    registry.make_user("alice")
    revoked = registry.token("alice", name="laptop")
    expiring = registry.token("alice", name="ci", expires_days=1)
    with api.client(revoked) as c:
        assert c.get("/whoami").status_code == 200
    registry.admin("revoke-token", "alice", "--name", "laptop")
    registry.sql("UPDATE tokens SET expires_at = :t WHERE name = 'ci'", t="2000-01-01 00:00:00+00:00")
    for token, words in ((revoked, "revoked"), (expiring, "expired"), ("tvr_" + "x" * 43, "not valid")):
        with api.client(token) as c:
            for r in (
                c.get("/whoami"),
                c.get("/skills"),
                c.post("/uploads", json={"size": 1, "digest": "sha256:" + "0" * 64}),
            ):
                assert r.status_code == 401, r.text
                assert (
                    r.json()["error"]["code"] == "unauthenticated" and words in r.json()["error"]["message"]
                )
                assert r.headers["www-authenticate"] == "Bearer"
    with api.client() as c:
        assert c.get("/whoami").status_code == 401
        assert c.post("/uploads", json={"size": 1, "digest": "sha256:" + "0" * 64}).status_code == 401
        assert c.get("/whoami", headers={"Authorization": "Basic Zm9vOmJhcg=="}).status_code == 401


def test_whoami_lists_teams_and_namespaces(registry, api):
    alice = registry.make_user("alice")
    registry.make_team("nlp")
    registry.add_member("nlp", "alice", "write")
    with api.client(alice) as c:
        assert c.get("/whoami").json() == {
            "user": "alice",
            "teams": [{"team": "alice", "role": "admin"}, {"team": "nlp", "role": "write"}],
            "namespaces": ["alice", "nlp"],
        }


@pytest.mark.parametrize(
    "name",
    [
        "Safety",
        "\u0455afety",
        "safety\u200b",
        "-safety",
        "safety-",
        "a..b",
        "a b",
        "%2e%2e",
        "s%00",
        "caf\u00e9",
    ],
)
def test_unsafe_or_look_alike_names_in_urls_are_400(registry, api, server_artifacts, name):
    alice = registry.make_user("alice")
    upload = api.upload(alice, server_artifacts.make("safety", "1.0.0"))
    with api.client(alice) as c:
        r = c.put(f"/skills/alice/{name}/versions/1.0.0", json={"upload_id": upload})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "bad_request"
        r = c.put(f"/skills/{name}/safety/versions/1.0.0", json={"upload_id": upload})
        assert r.status_code in (400, 404), r.text
        assert c.put("/skills/alice/safety/versions/1.0.0", json={"upload_id": upload}).status_code == 201


def test_dot_dot_and_absolute_names_are_refused_everywhere(registry, api, server_artifacts, tmp_path):
    alice = registry.make_user("alice")
    port = int(registry.url.rsplit(":", 1)[1])
    for target in (
        "/api/v1/skills/alice/../../../etc/versions/1.0.0",
        "/api/v1/skills//etc/passwd/versions/1.0.0",
    ):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(
                f"PUT {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\n"
                "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".encode()
            )
            status = s.recv(4096).split(b" ", 2)[1]
        assert status in (b"400", b"404"), (target, status)

    for evil in ("../evil", "/abs/evil", "..", "a/evil", "c:\\evil", "\u0455afety"):
        upload = api.upload(alice, server_artifacts.make(evil, "1.0.0"))
        with api.client(alice) as c:
            r = c.put("/skills/alice/evil/versions/1.0.0", json={"upload_id": upload})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_artifact"), evil

    for evil in ("../x", "/abs", "\u0455afety", "Alice", "a" * 101):
        with pytest.raises(RuntimeError) as failed:
            registry.admin("create-user", evil)
        assert failed.value.code == 1 and failed.value.stderr.startswith("error: invalid user name")
    assert registry.blob_files() == [] and registry.staged_files() == []
    assert not [p for p in tmp_path.rglob("*") if "evil" in p.name or p.name in ("x", "abs")]


def test_look_alike_skill_names_collide(registry, api, server_artifacts):
    alice = registry.make_user("alice")
    assert (
        api.publish(alice, "alice/safe-ty", "1.0.0", server_artifacts.make("safe-ty", "1.0.0")).status_code
        == 201
    )
    for other in ("safe_ty", "safe.ty", "safe--ty"):
        r = api.publish(alice, f"alice/{other}", "1.0.0", server_artifacts.make(other, "1.0.0"))
        assert r.status_code == 409, other
        assert r.json()["error"]["message"] == (
            f"skill name `alice/{other}` is too similar to the existing `alice/safe-ty` "
            "(names are compared ignoring case and runs of `-`, `_` and `.`)."
        )
    bob = registry.make_user("bob")
    assert (
        api.publish(bob, "bob/safe_ty", "1.0.0", server_artifacts.make("safe_ty", "1.0.0")).status_code == 201
    )
    registry.make_team("nlp-team")
    with pytest.raises(RuntimeError, match="too similar to the existing namespace `nlp-team`"):
        registry.make_team("nlp_team")
    assert registry.sql("SELECT name FROM skills ORDER BY name") == [("safe-ty",), ("safe_ty",)]


def test_every_write_is_audited(registry, api, server_artifacts):
    alice = registry.make_user("alice")
    registry.make_team("nlp", private=True)
    registry.add_member("nlp", "alice", "write")
    data = server_artifacts.make("science", "1.0.0")
    assert api.publish(alice, "nlp/science", "1.0.0", data).status_code == 201
    bad = bytearray(server_artifacts.make("science", "1.0.1"))
    bad[-1] ^= 1
    assert (
        api.publish(alice, "nlp/science", "1.0.1", bytes(bad), digest="sha256:" + "0" * 64).status_code == 400
    )
    with api.client(alice) as c:
        c.post("/skills/nlp/science/versions/1.0.0/yank", json={"reason": "bad"})
        c.delete("/skills/nlp/science/versions/1.0.0/yank")
        c.put("/skills/nlp/science/tags/stable", json={"version": "1.0.0"})
        c.delete("/skills/nlp/science/tags/stable")
        upload = c.post("/uploads", json={"size": 1, "digest": "sha256:" + "0" * 64}).json()["id"]
        assert c.delete(f"/uploads/{upload}").status_code == 204
    rows = registry.sql("SELECT actor, action, target FROM audit ORDER BY id")
    actions = [(actor, action) for actor, action, _ in rows]
    assert actions == [
        ("cli:admin", "user.create"),
        ("cli:admin", "token.create"),
        ("cli:admin", "team.create"),
        ("cli:admin", "member.set"),
        ("alice", "upload.create"),
        ("alice", "version.publish"),
        ("alice", "upload.create"),
        ("alice", "version.publish_rejected"),
        ("alice", "version.yank"),
        ("alice", "version.unyank"),
        ("alice", "tag.set"),
        ("alice", "tag.delete"),
        ("alice", "upload.create"),
        ("alice", "upload.delete"),
    ]
    assert rows[5][2] == "nlp/science@1.0.0"
    assert registry.sql("SELECT count(*) FROM audit WHERE at IS NULL") == [(0,)]
