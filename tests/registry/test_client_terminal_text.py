"""Terminal injection (issue 18, class 9): registry-supplied text reaches the terminal neutralised.

A real registry holds a skill whose description carries an escape sequence (clear the
screen, set the window title), a bidi override, a newline forging an ``error:`` line and
rich markup; its version is yanked with a reason of the same kind. ``tvreg search`` and
``tvreg info`` print it through :mod:`tvreg.cli.text`: no control character reaches the
output, the escapes are shown (``\\x1b``) and the markup is printed as text.
"""

from __future__ import annotations

import json

import pytest
from client_helpers import cli, login, write_project

from tvreg._build.build import build_skill
from tvreg._registry.client import RegistryClient

HOSTILE = "tiny \x1b[2J\x1b]0;pwned\x07 \u202egnp.exe\nerror: forged [bold red]LOUD[/] [link=http://x]y[/link]"


def _controls(text: str) -> list[str]:
    return [c for c in text if (ord(c) < 32 and c not in "\n") or 0x7F <= ord(c) <= 0x9F or c in "\u202e"]


@pytest.mark.parametrize("registry", ["sqlite"], indirect=True)
def test_search_and_info_neutralise_registry_text(registry, family, tmp_path):
    token = login(registry, "alice")
    path = tmp_path / "s.tvskill"
    build_skill(family.pre, finetuned=family.science, output=path, name="science", version="1.0.0", description="tiny")
    project = write_project(tmp_path / "p", name="alice/science", version="1.0.0", artifact=str(path))
    assert cli("publish", project, "--registry", registry.url).exit_code == 0
    with RegistryClient(registry.url, token) as c:
        c.yank("alice/science", "1.0.0", "bad")
    # This registry refuses control characters in text (docs/reliability.md, row 31), so the hostile text
    # goes straight into its database: rows from before the limits, or a registry that is not tvreg's.
    (manifest,) = registry.sql("SELECT manifest FROM versions")[0]
    manifest = json.loads(manifest) if isinstance(manifest, str) else manifest
    registry.sql(
        "UPDATE versions SET manifest = :m, yanked_reason = :r",
        m=json.dumps({**manifest, "description": HOSTILE}),
        r="bad \x1b[31m[blink]reason[/blink]\x9b",
    )
    registry.sql("UPDATE skills SET description = :d", d=HOSTILE)
    for args in (("search", "tiny"), ("info", "alice/science"), ("info", "alice/science@1.0.0")):
        res = cli(*args, "--registry", registry.url)
        assert res.exit_code == 0, (args, res.output)
        text = res.stdout + res.stderr
        assert _controls(text) == [], (args, text)
        assert "\nerror: forged" not in text, args
        if args[0] != "search":
            assert "\\x1b[2J" in text and "\\u202e" in text and "[bold red]LOUD[/]" in text, text
    info = cli("info", "alice/science@1.0.0", "--registry", registry.url).stdout
    assert "yes (bad \\x1b[31m[blink]reason[/blink]\\x9b)" in info


def test_clean_and_safe():
    from tvreg.cli.text import clean, safe

    assert clean("a\x1b[2Jb\u202ec\nd") == "a\\x1b[2Jb\\u202ec\\x0ad"
    assert clean("a\nb\tc", lines=True) == "a\nb\tc"
    assert safe("[bold]x[/]") == "\\[bold]x\\[/]"
