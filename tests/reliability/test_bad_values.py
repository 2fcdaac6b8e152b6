"""Values the database cannot hold are 400s before it sees them, and a refused publish leaves nothing.

Issue #18, class 10 (docs/reliability.md row 39) and the field limits of class 2 (row 31):
``page=10^20``, ``q=%00``, a ``dataset_size`` of 2^70 and NaN in the manifest answered 500
(on PostgreSQL; NaN after the version was committed). Both backends, a live server, peak
RSS of the server bounded, and no version, skill or blob visible after a refusal.
"""

from __future__ import annotations

import pytest
from serverprobe import MIB, peak_rss, reset_peak


def _nothing_published(registry, api) -> None:
    assert registry.sql("SELECT count(*) FROM versions") == [(0,)]
    assert registry.sql("SELECT count(*) FROM skills") == [(0,)]
    assert registry.blob_files() == []
    with api.client() as c:
        assert c.get("/skills").json()["total"] == 0


def test_out_of_range_search_parameters_are_400(registry, api):
    start = reset_peak(registry.proc.pid)
    with api.client() as c:
        for params in (
            {"page": str(10**20)},
            {"page": "0"},
            {"q": "\x00"},
            {"q": "x" * 10_000},
            {"tag": "la\x00test"},
            {"namespace": "a\nb"},
            {"per_page": "1000"},
        ):
            r = c.get("/skills", params=params)
            assert r.status_code == 400, (params, r.text)
            assert r.json()["error"]["code"] == "bad_request"
        assert c.get("/skills", params={"page": "1000000"}).json()["items"] == []
    assert peak_rss(registry.proc.pid) - start < 32 * MIB


@pytest.mark.parametrize(
    "changes, culprit",
    [
        ({"dataset_size": 2**70}, "dataset_size"),
        ({"dataset_size": -1}, "dataset_size"),
        ({"description": "x" * 5000}, "description"),
        ({"description": "bell\x07"}, "description"),
        ({"description": "nul\x00"}, "NUL"),
        ({"license": "y" * 1000}, "license"),
        ({"extra_metadata": float("nan")}, "finite"),
        ({"extra_metadata": {"deep": [2**64]}}, "64 bits"),
        ({"extra_metadata": "z" * (2 * MIB)}, "bytes"),
    ],
)
def test_a_manifest_the_database_cannot_hold_is_refused_and_nothing_is_visible(
    registry, api, server_artifacts, changes, culprit
):
    token = registry.make_user("alice")
    data = server_artifacts.make("science", "1.0.0", **changes)
    start = reset_peak(registry.proc.pid)
    r = api.publish(token, "alice/science", "1.0.0", data)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_artifact"
    assert culprit in r.json()["error"]["message"]
    assert peak_rss(registry.proc.pid) - start < 64 * MIB
    _nothing_published(registry, api)


def test_a_yank_reason_is_limited(registry, api, server_artifacts):
    token = registry.make_user("alice")
    assert api.publish(token, "alice/science", "1.0.0", server_artifacts.make()).status_code == 201
    with api.client(token) as c:
        url = "/skills/alice/science/versions/1.0.0/yank"
        for reason in ("r" * 501, "esc\x1b[31m"):
            r = c.post(url, json={"reason": reason})
            assert r.status_code == 400 and "`reason`" in r.json()["error"]["message"]
        assert c.get("/skills/alice/science/versions/1.0.0").json()["yanked"] is False
        assert c.post(url, json={"reason": "broken\ttokenizer"}).status_code == 200
