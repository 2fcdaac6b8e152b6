"""Reserved namespaces: no user or team may take a name the registry's own paths use.

A namespace is the first segment of its page (``/<namespace>``) and of the Hub-compatible
paths, so ``api``, ``docs``, ``static``, ``login``, ``settings``, ``new``, ``hf`` ... would
shadow the registry's pages or impersonate its operators. One list
(:data:`tvreg._names.RESERVED_NAMES`) serves the admin CLI and the web routes.
"""

from __future__ import annotations

import pytest
from web_helpers import web

from tvreg._names import RESERVED_NAMES, validate_namespace_name
from tvreg.errors import InvalidName

SAMPLE = ["admin", "api", "static", "login", "settings", "new", "hf", "docs", "bases", "search", "sign_in", "Sign-In"]


@pytest.mark.parametrize("name", SAMPLE)
def test_the_one_list_refuses_reserved_names_and_their_look_alikes(name):
    with pytest.raises(InvalidName) as err:
        validate_namespace_name(name, what="user name")
    assert name in err.value.message
    for name_ok in ("alice", "admins-team", "newton", "apiary", "static-analysis"):
        assert validate_namespace_name(name_ok) == name_ok


def test_the_web_routes_and_the_list_agree():
    from registry_server.web.pages import RESERVED

    assert RESERVED_NAMES <= RESERVED
    for path in ("api", "docs", "search", "bases"):
        assert path in RESERVED_NAMES


def test_admin_refuses_reserved_users_and_teams_in_one_sentence_with_a_hint(registry):
    for command in ("create-user", "create-team"):
        for name in ("admin", "static", "settings", "hf", "sign_in"):
            with pytest.raises(RuntimeError) as err:  # conftest's AdminFailed: exit code and stderr
                registry.admin(command, name)
            what = "user name" if command == "create-user" else "team name"
            assert err.value.code == 1
            assert err.value.stderr == (
                f"error: {what} `{name}` is reserved: `/{name}` is a path of the registry's own pages or API.\n"
                f"hint: choose another name, such as `{name}-team` or your organisation's name\n"
            )
    assert registry.sql("SELECT count(*) FROM namespaces") == [(0,)]
    assert registry.sql("SELECT count(*) FROM users") == [(0,)]
    registry.make_user("alice")  # an ordinary name still works
    registry.admin("create-team", "settings-team")


def test_reserved_paths_stay_the_registrys_own_over_http(registry):
    registry.make_user("alice")
    # A namespace named `hf` made before the rule (straight in the database) cannot shadow the path.
    team = registry.sql("SELECT team_id FROM namespaces WHERE name = 'alice'")[0][0]
    registry.sql(
        "INSERT INTO namespaces (name, normalized_name, team_id, private, created_at) "
        "SELECT 'hf', 'hf', team_id, private, created_at FROM namespaces WHERE team_id = :t",
        t=team,
    )
    with web(registry) as c:
        assert c.get("/alice").status_code == 200
        for path in ("/hf", "/login", "/settings", "/new", "/static", "/admin"):
            r = c.get(path)
            assert r.status_code == 404 and "no such page" in r.text, path
            assert c.head(path).status_code == 404, path
        r = c.get("/api/v1/skills", params={"namespace": "admin"})
        assert r.status_code == 200 and r.json()["total"] == 0

