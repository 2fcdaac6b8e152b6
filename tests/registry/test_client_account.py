"""`tvreg login`, `whoami` and `logout` against a real registry: the token is checked, then kept 0600."""

from __future__ import annotations

import stat

from client_helpers import cli

from tvreg._registry import config


def test_login_whoami_logout(registry):
    token = registry.make_user("alice")
    res = cli("login", "--registry", registry.url, "--token", token)
    assert res.exit_code == 0, res.output
    url = config.normalize_url(registry.url)
    path = config.config_path()
    assert res.stdout == f"Logged in to {url} as alice (token saved in {path}).\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token in path.read_text()

    res = cli("whoami")
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0] == f"alice on {url}"
    assert "alice" in res.stdout.splitlines()[2]  # the personal namespace

    res = cli("logout")
    assert (res.exit_code, res.stdout) == (0, f"Logged out of {url}.\n")
    assert token not in path.read_text()
    res = cli("whoami")
    assert res.exit_code == 1
    assert res.stderr.splitlines() == [
        f"error: the registry at {url} needs a login for this.",
        f"hint: log in: `tvreg login --registry {url}`",
    ]


def test_a_bad_token_is_refused_and_not_saved(registry):
    registry.make_user("alice")
    res = cli("login", "--registry", registry.url, "--token", "tvr_" + "x" * 43)
    assert res.exit_code == 1
    url = config.normalize_url(registry.url)
    lines = res.stderr.splitlines()
    assert lines[0].startswith(f"error: the registry at {url} rejected the token: ")
    assert lines[1] == f"hint: log in again: `tvreg login --registry {url}`"
    assert "Traceback" not in res.stderr
    assert not config.config_path().exists()


def test_login_reads_the_token_from_stdin(registry):
    token = registry.make_user("bob")
    from click.testing import CliRunner

    from tvreg.cli import main

    res = CliRunner().invoke(main, ["login", "--registry", registry.url, "--token", "-"], input=token + "\n")
    assert res.exit_code == 0, res.output
    assert config.resolve().token == token
