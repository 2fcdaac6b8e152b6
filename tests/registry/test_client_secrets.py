"""Local secrets (issue 18, class 13): the config directory is tightened to 0700, URL credentials never echoed."""

from __future__ import annotations

import os
import stat

import pytest
from client_helpers import cli

from tvreg._registry import config
from tvreg._registry.client import RegistryClient
from tvreg._util.paths import config_dir

SECRET = "s3cret-pw"


def test_an_existing_loose_config_dir_is_tightened_to_0700():
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    path = config.remember_login("http://127.0.0.1:9", "tvr_token")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_credentials_in_a_registry_url_never_reach_an_error():
    url = f"http://bob:{SECRET}@127.0.0.1:9"
    res = cli("search", "x", "--registry", url)
    assert res.exit_code != 0
    assert SECRET not in res.output and "http://***@127.0.0.1:9" in res.stderr, res.stderr
    bad = cli("search", "x", "--registry", f"ftp://bob:{SECRET}@host")
    assert SECRET not in bad.output and "ftp://***@host" in bad.stderr, bad.stderr


@pytest.mark.parametrize("registry", ["sqlite"], indirect=True)
def test_credentials_in_a_registry_url_never_reach_output(registry):
    token = registry.make_user("alice")
    url = registry.url.replace("http://", f"http://bob:{SECRET}@")
    with RegistryClient(url, token) as c:
        assert c.url == registry.url.replace("http://", "http://***@")
    config.remember_login(url, token)
    who = cli("whoami", "--registry", url)
    assert SECRET not in who.output and "***@" in who.output, who.output
    missing = cli("info", "alice/nothing", "--registry", url)
    assert missing.exit_code != 0 and SECRET not in missing.output
