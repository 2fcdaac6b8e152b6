"""Client configuration and names, without a registry: what is stored where, and what never leaves."""

from __future__ import annotations

import os
import stat

import httpx
import pytest

from tvreg._registry import config
from tvreg._registry.client import RegistryClient
from tvreg._registry.fetch import fetch_skill
from tvreg._registry.refs import SkillRef, looks_like_ref, parse_ref
from tvreg.errors import ConfigError, InvalidName


def test_login_is_saved_0600_in_xdg_config_home(tvreg_home):
    path = config.remember_login("http://127.0.0.1:8123/", "tvr_secret")
    assert path == tvreg_home / "xdg-config" / "tvreg" / "config.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    s = config.resolve()
    assert (s.url, s.token) == ("http://127.0.0.1:8123", "tvr_secret")
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]  # no temp file left behind


def test_a_second_registry_keeps_the_first_token():
    config.remember_login("http://a.example", "tvr_a")
    config.remember_login("http://b.example/api/v1", "tvr_b")
    assert config.resolve().url == "http://b.example"
    assert config.resolve("http://a.example").token == "tvr_a"
    assert config.forget_login("http://b.example") is True
    assert config.forget_login("http://b.example") is False
    assert config.resolve().token is None
    assert config.resolve("http://a.example").token == "tvr_a"


def test_environment_overrides_the_file(monkeypatch):
    config.remember_login("http://a.example", "tvr_a")
    monkeypatch.setenv("TVREG_REGISTRY", "http://ci.example")
    monkeypatch.setenv("TVREG_TOKEN", "tvr_ci")
    s = config.resolve()
    assert (s.url, s.token, s.token_source) == ("http://ci.example", "tvr_ci", "TVREG_TOKEN")
    assert config.resolve("http://a.example", "tvr_arg").token == "tvr_arg"


def test_no_registry_configured_says_how_to_log_in():
    with pytest.raises(ConfigError) as exc:
        config.resolve()
    assert exc.value.message == "no registry is configured."
    assert exc.value.hints[0] == "log in first: `tvreg login --registry URL`"


@pytest.mark.parametrize("url", ["ftp://x", "registry.example.org", "http://", "http://x/?q=1"])
def test_malformed_registry_urls_are_refused(url):
    with pytest.raises(ConfigError):
        config.normalize_url(url)


def test_a_corrupt_config_file_is_one_sentence():
    path = config.config_path()
    path.parent.mkdir(parents=True)
    path.write_text("registry = [")
    with pytest.raises(ConfigError) as exc:
        config.resolve()
    assert exc.value.message.startswith(f"cannot read the tvreg configuration `{path}`")


def test_skill_references():
    assert parse_ref("nlp/science") == SkillRef("nlp", "science")
    assert str(parse_ref("nlp/science@1.2.0-rc.1")) == "nlp/science@1.2.0-rc.1"
    assert looks_like_ref("nlp/science") and looks_like_ref("../etc")
    assert not looks_like_ref("science.tvskill") and not looks_like_ref("out/science.tvskill")
    assert not looks_like_ref("/abs/path/science")


@pytest.mark.parametrize(
    "text",
    [
        "../etc",
        "nlp/..",
        "nlp/../x",
        "nlp/a..b",
        "nlp/Science",
        "nlp/sc\x00ience",
        "nlp\\science",
        "/science",
        "nlp/",
        "nlp/ѕcience",  # Cyrillic s
        "nlp/science@latest/../../x",
    ],
)
def test_unsafe_names_are_refused_before_any_request(text, monkeypatch):
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    real_init = RegistryClient.__init__

    def init(self, url, token=None, **kwargs):
        real_init(
            self, url, token, transport=httpx.MockTransport(record), **{k: v for k, v in kwargs.items()}
        )

    monkeypatch.setattr(RegistryClient, "__init__", init)
    monkeypatch.setenv("TVREG_REGISTRY", "http://127.0.0.1:9")
    with pytest.raises(InvalidName):
        fetch_skill(text, base_fingerprint=None)
    assert sent == []


def test_unreachable_registry_is_one_sentence_with_a_hint():
    from tvreg.errors import RegistryUnavailable

    with RegistryClient("http://127.0.0.1:9", timeout=2) as client, pytest.raises(RegistryUnavailable) as exc:
        client.search()
    assert exc.value.message == "cannot connect to the registry at http://127.0.0.1:9."
    assert "registry is running" in exc.value.hints[0]
    assert not os.environ.get("TVREG_TOKEN")


@pytest.mark.parametrize("name", ["tvreg._registry.refs", "tvreg._registry.fetch", "tvreg._registry.project", "tvreg._registry.client"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    failures, tried = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0
