"""Shared set-up of the web page tests: a registry with public, private and hostile skills.

Imported by name (``from web_helpers import ...``), like ``tests/helpers.py``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import httpx

from tvreg._format.sketch import sketch_artifact

# Script tags, an event handler, javascript:/data: links, a terminal escape, an RTL override.
HOSTILE = (
    '<script>alert("desc")</script><img src=x onerror=alert(2)>'
    " [click](javascript:alert(3)) \x1b[31mred\x1b]0;title\x07 \u202egnp.exe"
)
HOSTILE_CARD = (
    "---\nlicense: mit\ntitle: '<b onmouseover=alert(7)>x</b>'\n---\n"
    "# Hostile card\n\n<script>alert('card')</script>\n\n<img src=x onerror=alert(6)>\n\n"
    "[js](javascript:alert(5)) [data](data:text/html,<script>alert(8)</script>) "
    "[spaced]( JaVaScRiPt:alert(9)) [fine](https://example.org/x) \u202eevil \x1b[2J\n"
)
# The registry refuses control characters in a manifest's text (docs/reliability.md), so the
# description carries every hostile part it accepts: markup, links, an RTL override, 2000 characters.
PRINTABLE_HOSTILE = HOSTILE.replace("\x1b", "").replace("\x07", "")
HOSTILE_DESCRIPTION = (PRINTABLE_HOSTILE + " " + "A" * 2000)[:2000]


@dataclass
class Published:
    base: str
    alice: str
    bob: str
    public: str = "alice/science"
    other: str = "alice/coding"
    hostile: str = "alice/hostile"
    secret: str = "lab/secret"


def sketch_bytes(tmp_path: Path, data: bytes) -> bytes:
    path = tmp_path / f"{hashlib.sha256(data).hexdigest()}.tvskill"
    path.write_bytes(data)
    return sketch_artifact(path).to_bytes()


def populate(registry, api, server_artifacts, tmp_path: Path) -> Published:
    """alice/science (2 versions, one yanked; 1.1.0 coded by calibrated `auto`), alice/coding, alice/hostile,
    lab/secret (private, bob's)."""
    alice = registry.make_user("alice")
    bob = registry.make_user("bob")
    registry.make_team("lab", private=True)
    registry.add_member("lab", "bob", "write")
    bob = registry.token("bob", role="write", name="web")
    items = [
        (alice, "alice/science", "1.0.0", server_artifacts.make("science", "1.0.0", license="apache-2.0")),
        (alice, "alice/science", "1.1.0", server_artifacts.make(
            "science", "1.1.0", base=server_artifacts.calibrated, requires={"alice/coding": ">=1"}
        )),
        (alice, "alice/coding", "1.0.0", server_artifacts.make("coding", "1.0.0")),
        (bob, "lab/secret", "1.0.0", server_artifacts.make("secret", "1.0.0", description="top secret skill")),
        (
            alice,
            "alice/hostile",
            "1.0.0",
            server_artifacts.make("hostile", "1.0.0", description=HOSTILE_DESCRIPTION, license=HOSTILE[:60]),
        ),
    ]
    base = ""
    for token, skill, version, data in items:
        r = api.publish(token, skill, version, data)
        assert r.status_code == 201, r.text
        base = r.json()["base_fingerprint"]
        if skill != "alice/hostile":
            with api.client(token) as c:
                url = f"/skills/{skill}/versions/{version}/sketch"
                assert c.put(url, content=sketch_bytes(tmp_path, data)).status_code == 201
    with api.client(alice) as c:
        r = c.post("/skills/alice/science/versions/1.0.0/yank", json={"reason": PRINTABLE_HOSTILE})
        assert r.status_code == 200, r.text
        r = c.put("/skills/alice/hostile/versions/1.0.0/card", content=HOSTILE_CARD.encode())
        assert r.status_code == 200, r.text
        r = c.put("/skills/alice/science/versions/1.1.0/card", content=b"---\nlicense: apache-2.0\n---\n# Science\n\nAnswers **science** questions.\n")
        assert r.status_code == 200, r.text
    return Published(base=base, alice=alice, bob=bob)


class _Markup(HTMLParser):
    """Every element and attribute of a page, as a browser's parser would see them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, attrs))


def assert_inert(html: str) -> None:
    """No hostile markup survived as markup (only as escaped text), and no control character at all."""
    parser = _Markup()
    parser.feed(html)
    for tag, attrs in parser.elements:
        names = {k for k, _ in attrs}
        assert not any(k.startswith("on") for k in names), (tag, attrs)
        if tag in ("script", "iframe", "object", "embed", "base"):
            assert tag == "script" and dict(attrs).get("src") == "/-/static/tvreg.js", (tag, attrs)
        for k, v in attrs:
            if k in ("href", "src", "action", "formaction") and v:
                assert not re.match(r"\s*(javascript|data|vbscript):", v, re.I), (tag, attrs)
    for ch in ("\x1b", "\x07", "\u202e"):
        assert ch not in html


def web(registry, **kw) -> httpx.Client:
    return httpx.Client(base_url=registry.url, timeout=60, **kw)
