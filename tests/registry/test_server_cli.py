"""``tvreg-server``: the admin commands print a token and nothing else, and fail in one sentence."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from registry_server.cli import cli, main

TOKEN = re.compile(r"^tvr_[A-Za-z0-9_-]{43}\n$")


def _run(*args: str, data) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("tvreg-server")
    assert exe, "the tvreg-server script is not installed"
    return subprocess.run([exe, *args, "--data", str(data)], capture_output=True, text=True, timeout=120)


def test_the_installed_command_creates_users_and_prints_only_the_token(tmp_path):
    data = tmp_path / "registry"
    made = _run("admin", "create-user", "alice", data=data)
    assert (made.returncode, made.stdout) == (0, "")
    token = _run("admin", "create-token", "alice", "--name", "ci", "--expires-days", "30", data=data)
    assert token.returncode == 0 and TOKEN.match(token.stdout), token
    missing = _run("admin", "create-token", "nobody", data=data)
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == (
        "error: user `nobody` does not exist; create it with `tvreg-server admin create-user nobody`.\n"
    )


def _admin(data, *args: str):
    return CliRunner().invoke(cli, ["admin", *args, "--data", str(data)])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("create-user", "alice"), "user name `alice` already exists."),
        (
            ("create-user", "../x"),
            "invalid user name `../x`: use lowercase letters, digits, '-', '_' and '.', ",
        ),
        (("create-team", "alice"), "team name `alice` already exists."),
        (("add-member", "nope", "alice", "--role", "write"), "team `nope` does not exist; "),
        (("add-member", "alice", "bob", "--role", "write"), "user `bob` does not exist; "),
        (("revoke-token", "alice", "--name", "none"), "user `alice` has no live token named `none`."),
    ],
)
def test_admin_errors_are_one_sentence_on_stderr(tmp_path, args, message):
    data = tmp_path / "registry"
    assert _admin(data, "create-user", "alice").exit_code == 0
    res = _admin(data, *args)
    assert (res.exit_code, res.stdout) == (1, "")
    assert res.stderr.startswith("error: " + message) and res.stderr.count("\n") == 1, res.stderr


def test_an_unreachable_database_is_one_sentence(tmp_path):
    res = CliRunner().invoke(
        cli, ["admin", "create-user", "alice", "--database-url", "postgresql://nobody@127.0.0.1:1/none"]
    )
    assert res.exit_code == 1
    assert (
        res.stderr.startswith("error: the registry database cannot be used: ") and res.stderr.count("\n") == 1
    )


def test_roles_and_teams_show_in_the_database(tmp_path):
    data = tmp_path / "registry"
    for args in (
        ("create-user", "alice"),
        ("create-team", "nlp", "--private"),
        ("add-member", "nlp", "alice", "--role", "read"),
        ("add-member", "nlp", "alice", "--role", "admin"),
    ):
        res = _admin(data, *args)
        assert res.exit_code == 0 and res.stdout == "", res.stderr
    read = _admin(data, "create-token", "alice", "--role", "read", "--name", "ro")
    assert TOKEN.match(read.stdout)
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{data / 'registry.db'}")
    with engine.connect() as conn:
        assert conn.execute(
            text(
                "SELECT t.name, m.role FROM memberships m JOIN teams t ON t.id = m.team_id "
                "JOIN users u ON u.id = m.user_id WHERE u.name = 'alice' ORDER BY t.name"
            )
        ).all() == [("alice", "admin"), ("nlp", "admin")]
        assert conn.execute(text("SELECT name, private FROM namespaces ORDER BY name")).all() == [
            ("alice", 0),
            ("nlp", 1),
        ]
        assert conn.execute(text("SELECT scope, token_hash FROM tokens WHERE name = 'ro'")).one()[0] == "read"
        assert read.stdout.strip() not in str(conn.execute(text("SELECT * FROM tokens")).all())
    engine.dispose()


def test_serve_is_the_default_command(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "main", lambda args, prog_name: seen.append(args))
    main(["--data", "x", "--port", "1"])
    main(["admin", "create-user", "a"])
    main([])
    assert seen == [["serve", "--data", "x", "--port", "1"], ["admin", "create-user", "a"], ["serve"]]
