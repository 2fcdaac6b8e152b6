"""Taking someone out of a team works at once, cached reads included; admins can list accounts.

Issue #18, class 7 (docs/reliability.md row 36): there was no way to remove a member.
A live server (both backends) serves a private team's skill from its read cache; after
``admin remove-member`` and after a role change, the very next requests of the removed
or demoted user are refused, and the listings show the change.
"""

from __future__ import annotations

import json

import pytest
from serverprobe import MIB, peak_rss, reset_peak
from tvreg_registry_fixtures import AdminFailed


def test_removal_and_role_changes_take_effect_at_once(registry, api, server_artifacts):
    owner = registry.make_user("olga")
    bob = registry.make_user("bob")
    registry.make_team("lab", private=True)
    registry.add_member("lab", "olga", "admin")
    registry.add_member("lab", "bob", "write")
    assert api.publish(owner, "lab/science", "1.0.0", server_artifacts.make()).status_code == 201
    start = reset_peak(registry.proc.pid)
    with api.client(bob) as c:
        for _ in range(3):  # warm the read cache and the token cache
            assert c.get("/skills/lab/science").status_code == 200
        assert c.post("/skills/lab/science/versions/1.0.0/yank", json={"reason": "x"}).status_code == 200
    registry.add_member("lab", "bob", "read")
    with api.client(bob) as c:
        assert c.delete("/skills/lab/science/versions/1.0.0/yank").status_code == 403
        assert c.get("/skills/lab/science").status_code == 200
    registry.admin("remove-member", "lab", "bob")
    with api.client(bob) as c:
        assert c.get("/skills/lab/science").status_code == 404
        assert c.get("/skills", params={"namespace": "lab"}).json()["total"] == 0
        assert {"team": "lab", "role": "read"} not in c.get("/whoami").json()["teams"]
    members = json.loads(registry.admin("list-members", "lab", "--format", "json"))
    assert members == [{"user": "olga", "role": "admin"}]
    with pytest.raises(AdminFailed, match="not a member"):
        registry.admin("remove-member", "lab", "bob")
    with pytest.raises(AdminFailed, match="personal team"):
        registry.admin("remove-member", "bob", "bob")
    assert registry.sql("SELECT count(*) FROM audit WHERE action = 'member.remove'") == [(1,)]
    assert peak_rss(registry.proc.pid) - start < 32 * MIB


@pytest.mark.parametrize("registry", ["sqlite"], indirect=True)
def test_admin_lists_users_teams_and_tokens_without_secrets(registry):
    token = registry.make_user("alice")
    registry.make_team("lab", private=True)
    registry.admin("revoke-token", "alice", "--name", "test")
    users = json.loads(registry.admin("list-users", "--format", "json"))
    assert [u["name"] for u in users] == ["alice"]
    teams = json.loads(registry.admin("list-teams", "--format", "json"))
    assert teams == [
        {"name": "alice", "personal": True, "private": False},
        {"name": "lab", "personal": False, "private": True},
    ]
    tokens = registry.admin("list-tokens", "alice", "--format", "json")
    assert token not in tokens and json.loads(tokens)[0] | {"created_at": None} == {
        "name": "test", "role": "write", "state": "revoked", "created_at": None, "expires_at": None
    }
    table = registry.admin("list-members", "lab")
    assert table.splitlines()[0].split() == ["USER", "ROLE"]
