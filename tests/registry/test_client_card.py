"""`tvreg publish` sends the project's README.md as the skill card; `tvreg info` shows it, inert."""

from __future__ import annotations

import httpx
import pytest
from client_helpers import build_artifacts, cli, login, write_project


@pytest.fixture(scope="session")
def artifacts(family, tmp_path_factory):
    return build_artifacts(family, tmp_path_factory.mktemp("card-artifacts"))


CARD = "---\nlicense: mit\n---\n# Coding\n\nWrites \x1b[31mcode\x1b[0m.\n"


def test_publish_sends_the_readme_as_card_and_info_shows_it(registry, artifacts, tmp_path):
    login(registry, "alice")
    project = write_project(tmp_path / "coding", name="alice/coding", version="1.0.0", artifact=str(artifacts["coding"]))
    (project / "README.md").write_text(CARD)
    res = cli("publish", project)
    assert res.exit_code == 0, res.output
    assert "Set README.md as its skill card." in res.stdout
    card = httpx.get(f"{registry.url}/api/v1/skills/alice/coding/versions/1.0.0/card")
    assert card.status_code == 200 and card.text == CARD
    # Publishing the same bytes again updates the card.
    (project / "README.md").write_text("# Coding v2\n")
    res = cli("publish", project)
    assert res.exit_code == 0 and "Set README.md as its skill card." in res.stdout, res.output
    assert httpx.get(f"{registry.url}/api/v1/skills/alice/coding/versions/1.0.0/card").text == "# Coding v2\n"
    (project / "README.md").write_text(CARD)
    assert cli("publish", project).exit_code == 0
    for target in ("alice/coding", "alice/coding@1.0.0"):
        res = cli("info", target)
        assert res.exit_code == 0, res.output
        assert "README.md, 6 lines" in res.stdout and "    # Coding" in res.stdout
        assert "Writes <U+001B>[31mcode<U+001B>[0m." in res.stdout and "\x1b[31m" not in res.stdout
    assert "<h1>Coding</h1>" in httpx.get(f"{registry.url}/alice/coding").text


def test_an_oversized_readme_fails_before_any_upload(registry, artifacts, tmp_path):
    login(registry, "alice")
    project = write_project(tmp_path / "big", name="alice/coding", version="1.0.0", artifact=str(artifacts["coding"]))
    (project / "README.md").write_text("x" * (256 * 1024 + 1))
    res = cli("publish", project)
    assert res.exit_code != 0
    assert "README.md` is over 256 KiB" in res.stderr and "hint:" in res.stderr
    assert registry.sql("SELECT count(*) FROM uploads")[0][0] == 0
    (project / "README.md").unlink()
    res = cli("publish", project)
    assert res.exit_code == 0 and "skill card" not in res.stdout
    assert "published without a README.md" in cli("info", "alice/coding@1.0.0").stdout
