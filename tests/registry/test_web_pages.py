"""The registry's web pages over plain HTTP: safety headers, 404 parity, escaping, sessions, cards.

The browser tests (test_web_browser.py) click through the same pages; these check what
a browser cannot easily show (headers, exact bodies, cookie attributes) and run on both
database backends.
"""

from __future__ import annotations

import re

from web_helpers import HOSTILE, assert_inert, populate, web

from registry_server.web.render import MAX_TEXT, inert


def test_pages_carry_safety_headers_and_load_nothing_from_elsewhere(registry, api, server_artifacts, tmp_path):
    pub = populate(registry, api, server_artifacts, tmp_path)
    with web(registry) as c:
        for path in ("/", "/search?q=sci", "/alice/science", "/alice/science/1.0.0", f"/bases/{pub.base}", "/alice", "/docs", "/-/sign-in"):
            r = c.get(path)
            assert r.status_code == 200, (path, r.text[:300])
            assert r.headers["content-type"] == "text/html; charset=utf-8"
            csp = r.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
            assert "unsafe-inline" not in csp
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "same-origin"
            # No external asset, no inline script or style.
            assert not re.search(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", r.text), path
            assert not re.search(r"<script(?![^>]*\bsrc=)", r.text) and "style=" not in r.text, path
        docs = c.get("/docs").text
        assert "/api/v1/skills/{namespace}/{name}/versions/{version}/card" in docs and "cdn" not in docs.lower()
        assert c.get("/-/static/tvreg.js").headers["content-type"].startswith("text/javascript")
        r = c.get("/api/v1/no-such-thing")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert c.get("/redoc").status_code == 404
        front = c.get("/").text
        assert 'id="counts"><strong>3</strong> skills' in front  # lab/secret is not counted anonymously
        skill = c.get("/alice/science").text
        assert "tvreg install alice/science</code>" in skill and "tvreg install alice/science@^1</code>" in skill
        assert f'href="/bases/{pub.base}"' in skill and '<svg class="profile"' in skill
        assert 'href="/alice/coding"' in skill  # requires links to its skill
        assert "<h1>Science</h1>" in skill and "<dt>license</dt><dd>apache-2.0</dd>" in skill
        assert "lossless" in skill and "sketch" in skill and "yanked" in skill
        assert "No skill card was published" in c.get("/alice/coding").text


def test_a_private_skill_page_is_the_same_404_as_a_missing_one(registry, api, server_artifacts, tmp_path):
    pub = populate(registry, api, server_artifacts, tmp_path)
    pairs = [
        ("/lab/secret", "/lab/missing"),
        ("/lab/secret/1.0.0", "/lab/missing/1.0.0"),
        ("/lab", "/nosuchns"),
    ]
    with web(registry) as c:
        for hidden, missing in pairs:
            a, b = c.get(hidden), c.get(missing)
            assert a.status_code == b.status_code == 404
            name_a, name_b = hidden.split("/")[1:3] if hidden.count("/") > 1 else (hidden[1:], hidden[1:])
            body_b = b.text.replace(missing.strip("/").split("/")[0], hidden.strip("/").split("/")[0])
            body_b = body_b.replace("missing", "secret")
            assert a.text == body_b, (hidden, a.text, b.text)
            assert dict(a.headers).keys() == dict(b.headers).keys()
        assert "lab/secret" not in c.get("/search?q=secret").text
        assert "lab/secret" not in c.get(f"/bases/{pub.base}").text
        assert "lab/secret" not in c.get("/").text
        r = c.get(f"/bases/{pub.base}?pick=lab/secret@1.0.0&pick=alice/coding@1.0.0")
        assert r.status_code == 404 and "lab/secret" in r.text and "top secret" not in r.text


def test_hostile_text_renders_inert(registry, api, server_artifacts, tmp_path):
    populate(registry, api, server_artifacts, tmp_path)
    with web(registry) as c:
        for path in ("/alice/hostile", "/alice/hostile/1.0.0", "/alice/science/1.0.0", "/search?q=hostile", "/", "/alice"):
            r = c.get(path)
            assert r.status_code == 200, path
            assert_inert(r.text)
            assert len(r.content) < 200_000, (path, len(r.content))
        page = c.get("/alice/hostile").text
        assert "&lt;script&gt;alert(&#34;desc&#34;)&lt;/script&gt;" in page
        assert "⟨U+202E⟩gnp.exe" in page and "⟨U+001B⟩[2J" in page  # description, card
        assert "&lt;script&gt;alert('card')&lt;/script&gt;" in page  # raw HTML in the card is text
        assert '<a href="https://example.org/x" rel="nofollow noopener">fine</a>' in page
        assert "[js](javascript:alert(5))" in page  # the refused link stays visible text
        assert inert("A" * (MAX_TEXT + 1)).endswith(f"(cut at {MAX_TEXT} characters)")  # rows from before the limits
        yanked = c.get("/alice/science/1.0.0").text
        assert "is yanked" in yanked and "&lt;img src=x onerror=alert(2)&gt;" in yanked
        # Reflected input is escaped too.
        r = c.get("/search", params={"q": HOSTILE, "namespace": '"><script>alert(1)</script>'})
        assert r.status_code == 200
        assert_inert(r.text)


def _csrf(c) -> str:
    r = c.get("/-/sign-in")
    return re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)


def test_sign_in_sessions_follow_their_token(registry, api, server_artifacts, tmp_path):
    pub = populate(registry, api, server_artifacts, tmp_path)
    with web(registry) as c:
        csrf = _csrf(c)
        r = c.post("/-/sign-in", data={"csrf": "forged", "token": pub.bob})
        assert r.status_code == 403 and "tvreg_session" not in r.headers.get("set-cookie", "")
        r = c.post("/-/sign-in", data={"csrf": _csrf(c), "token": pub.bob}, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403
        for target in ("/\t/evil.example", "/\\evil.example", "https://evil.example"):
            assert 'name="next" value="/"' in c.get("/-/sign-in", params={"next": target}).text
        r = c.post("/-/sign-in", data={"csrf": _csrf(c), "token": "tvr_" + "x" * 43})
        assert r.status_code == 401 and "not valid" in r.text
        csrf = _csrf(c)
        r = c.post("/-/sign-in", data={"csrf": csrf, "token": pub.bob, "next": "//evil.example/"})
        assert r.status_code == 303 and r.headers["location"] == "/"  # no open redirect
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("tvreg_session=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert 43100 < int(re.search(r"Max-Age=(\d+)", cookie).group(1)) <= 43200  # 12 hours
        assert "Secure" not in cookie  # plain HTTP here; over HTTPS the cookie is Secure
        secret = c.get("/lab/secret")
        assert secret.status_code == 200 and "top secret skill" in secret.text and "signed in as" in secret.text
        assert secret.headers["cache-control"] == "no-store"
        assert "lab/secret" in c.get("/search?q=secret").text
        assert 'id="members"' in c.get("/lab").text
        assert registry.sql("SELECT count(*) FROM web_sessions")[0][0] == 1
        assert pub.bob not in str(registry.sql("SELECT * FROM web_sessions"))
        r = c.post("/-/sign-out", data={"csrf": "wrong"})
        assert r.status_code == 403
        session_csrf = re.search(r'name="csrf" value="([^"]+)"', secret.text).group(1)
        r = c.post("/-/sign-out", data={"csrf": session_csrf})
        assert r.status_code == 303
        assert c.get("/lab/secret").status_code == 404
        assert registry.sql("SELECT count(*) FROM web_sessions")[0][0] == 0
        # Revoking the token ends its sessions, even one whose cookie is still held.
        r = c.post("/-/sign-in", data={"csrf": _csrf(c), "token": pub.bob})
        assert r.status_code == 303 and c.get("/lab/secret").status_code == 200
        registry.admin("revoke-token", "bob", "--name", "web")
        assert c.get("/lab/secret").status_code == 404
        assert "signed in as" not in c.get("/").text


def test_cards_are_bounded_text_and_read_back(registry, api, server_artifacts, tmp_path):
    pub = populate(registry, api, server_artifacts, tmp_path)
    url = "/skills/alice/coding/versions/1.0.0/card"
    with api.client(pub.alice) as c:
        r = c.put(url, content=b"x" * (256 * 1024 + 1))
        assert r.status_code == 413 and r.json()["error"]["limit"] == 256 * 1024
        r = c.put(url, content=b"\xff\xfe not utf-8")
        assert r.status_code == 400 and "not UTF-8" in r.json()["error"]["message"]
        assert c.get(url).status_code == 404
    with api.client(registry.token("alice", role="read")) as reader:
        assert reader.put(url, content=b"# mine").status_code == 403
    with api.client() as anon:
        assert anon.put(url, content=b"# mine").status_code == 401
    with api.client(pub.bob) as c:
        assert c.put(url, content=b"# mine").status_code == 403
        assert c.put("/skills/lab/secret/versions/1.0.0/card", content=b"# lab").status_code == 200
    with web(registry) as page, api.client(pub.alice) as c:
        assert "No skill card was published" in page.get("/alice/coding").text  # now in the page cache
        assert c.put(url, content=b"# Coding\n").status_code == 200
        assert "<h1>Coding</h1>" in page.get("/alice/coding").text  # the new card shows at once
        r = c.get(url)
        assert r.text == "# Coding\n" and r.headers["content-type"] == "text/markdown; charset=utf-8"
    with api.client() as anon:
        assert anon.get("/skills/lab/secret/versions/1.0.0/card").status_code == 404


def test_the_base_page_matrix_is_tvreg_checks_report(registry, api, server_artifacts, tmp_path):
    """Same numbers, flags and hints as `tvreg check` computes from the same sketches."""
    from html import unescape

    from tvreg._format.interference import SkillEntry, check_sketches
    from tvreg._format.sketch import Sketch

    pub = populate(registry, api, server_artifacts, tmp_path)
    picks = ["alice/coding@1.0.0", "alice/science@1.1.0"]
    entries = []
    with api.client() as c:
        for pick in picks:
            ref, version = pick.split("@")
            data = c.get(f"/skills/{ref}/versions/{version}/sketch").content
            entries.append(SkillEntry(pick, Sketch.from_bytes(data), 1.0))
    (pair,) = check_sketches(entries).pairs
    with web(registry) as c:
        page = c.get(f"/bases/{pub.base}", params={"pick": picks})
        assert page.status_code == 200
        text = unescape(page.text)
        cells = re.findall(r'<td class="(flagged|ok)">cos ([+-]\d\.\d\d)<br>sign (\d+)%<br>ratio (\d+\.\d)×</td>', page.text)
        expected = ("flagged" if pair.warnings else "ok", f"{pair.cosine:+.2f}", f"{pair.sign_conflict * 100:.0f}", f"{pair.norm_ratio:.1f}")
        assert cells == [expected, expected]
        for line in pair.warnings + [f"hint: {h}" for h in pair.suggestions]:
            assert line in text
        assert ("No pair is flagged." in text) == (not pair.warnings)
        # More than the limit, and a skill without a sketch, are explained rather than computed.
        many = c.get(f"/bases/{pub.base}", params={"pick": [f"alice/x{i}@1.0.0" for i in range(9)]})
        assert many.status_code == 200 and "pick at most 8 skills" in many.text
        one = c.get(f"/bases/{pub.base}", params={"pick": ["alice/hostile@1.0.0", "alice/coding@1.0.0"]})
        assert "Without a sketch, not compared: alice/hostile@1.0.0" in unescape(one.text)


def _raw(registry, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh socket, read to EOF: status, headers, and every byte after them."""
    import socket

    with socket.create_connection(("127.0.0.1", registry.port), timeout=30) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers, rest


def test_head_answers_every_page_like_get_without_a_body(registry, api, server_artifacts, tmp_path):
    pub = populate(registry, api, server_artifacts, tmp_path)
    paths = [
        "/", "/search?q=sci", "/alice/science", "/alice/science?page=1&per_page=1", "/alice/science/1.0.0",
        f"/bases/{pub.base}", "/alice", "/docs", "/-/sign-in", "/-/static/tvreg.js", "/openapi.json",
        "/lab/secret", "/nosuchns/nothing", "/alice/science/9.9.9", "/alice/science?page=0",
    ]  # fmt: skip
    varying = {"date", "set-cookie", "content-length"}  # a new CSRF secret per sign-in form
    for path in paths:
        got_status, got_headers, got_body = _raw(registry, "GET", path)
        status, headers, body = _raw(registry, "HEAD", path)
        assert status == got_status, path
        assert body == b"", path
        assert {k: v for k, v in headers.items() if k not in varying} == {
            k: v for k, v in got_headers.items() if k not in varying
        }, path
        if path != "/-/sign-in":
            assert headers.get("content-length") == got_headers.get("content-length") == str(len(got_body)), path


def test_namespace_and_base_pages_paginate_like_the_api(registry, api, server_artifacts, tmp_path):
    pub = populate(registry, api, server_artifacts, tmp_path)
    names = r'class="skill-link" href="/alice/(\w+)">'
    with web(registry) as c:
        seen = []
        for page in (1, 2, 3):
            html = c.get("/alice", params={"page": page, "per_page": 1}).text
            found = re.findall(names, html.split('id="results"')[1].split("</ul>")[0])
            seen += found
            assert len(found) == 1, html
            assert f"page {page} of 3 (3 skills)" in html
            assert ('rel="next"' in html) == (page < 3) and ('rel="prev"' in html) == (page > 1)
        assert sorted(seen) == ["coding", "hostile", "science"]
        picks = ["alice/science@1.1.0", "alice/coding@1.0.0"]
        rows = []
        for page in (1, 2, 3):
            html = c.get(f"/bases/{pub.base}", params={"page": page, "per_page": 1, "pick": picks}).text
            table = html.split('id="base-skills"')[1].split("</table>")[0]
            rows += re.findall(r'name="pick" value="([^"]+)"', table)
            hidden = re.findall(r'<input type="hidden" name="pick" value="([^"]+)">', html)
            assert sorted(hidden + [p for p in picks if p in table]) == sorted(picks)  # no pick lost across pages
            assert 'id="matrix"' in html  # the matrix is of the picks, whatever the page
        assert len(rows) == 3 and len(set(rows)) == 3
        for bad in ("/alice?per_page=101", f"/bases/{pub.base}?page=0"):
            assert c.get(bad).status_code == 400, bad
