"""The artifact endpoint's ``Range`` answers agree with docs/registry-api.md on the local blob store.

Issue #18, class 14 (docs/reliability.md row 43). The local store used
Starlette's file response (multipart for several ranges, 400 and bodies outside the API's
error shape), the object store its own; both now answer through one implementation,
which ``registry/test_server_objectstore.py`` exercises on the object store.
"""

from __future__ import annotations

from serverprobe import MIB, peak_rss, reset_peak


def test_range_answers_follow_the_documented_contract(registry, api, server_artifacts):
    token = registry.make_user("alice")
    data = server_artifacts.make()
    assert api.publish(token, "alice/science", "1.0.0", data).status_code == 201
    url = "/skills/alice/science/versions/1.0.0/artifact"
    size = len(data)
    start = reset_peak(registry.proc.pid)
    with api.client() as c:
        r = c.get(url, headers={"Range": "bytes=10-19"})
        assert r.status_code == 206 and r.content == data[10:20]
        assert r.headers["content-range"] == f"bytes 10-19/{size}"
        r = c.get(url, headers={"Range": "bytes=-5"})
        assert r.status_code == 206 and r.content == data[-5:]
        # Several ranges (a multipart amplification vector), another unit or garbage: the whole blob.
        for value in ("bytes=0-1,5-9", "bytes=0-0," + ",".join([f"0-{size}"] * 200), "items=0-1", "bytes=x-y"):
            r = c.get(url, headers={"Range": value})
            assert r.status_code == 200 and r.content == data, value
            assert "multipart" not in r.headers["content-type"]
        r = c.get(url, headers={"Range": f"bytes={size}-"})
        assert r.status_code == 416
        assert r.headers["content-range"] == f"bytes */{size}"
        assert r.json()["error"]["code"] == "range_not_satisfiable" and r.json()["error"]["size"] == size
        r = c.get(url, headers={"Range": "bytes=0-3", "If-Range": '"sha256:other"'})
        assert r.status_code == 200 and r.content == data
    assert peak_rss(registry.proc.pid) - start < 32 * MIB
