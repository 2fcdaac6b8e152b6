"""Publishing uploads in resumable chunks: a publish killed mid-upload continues where it stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from client_helpers import FaultProxy, build_artifacts, login, write_project

from tvreg._registry.client import RegistryClient
from tvreg._registry.publish import publish
from tvreg.errors import NotFound


@pytest.fixture(scope="session")
def artifacts(family, tmp_path_factory):
    return build_artifacts(family, tmp_path_factory.mktemp("client-artifacts"))


def _api(requests):
    return [(method, path.split("?")[0], headers.get("Upload-Offset")) for method, path, headers in requests]


def test_a_killed_publish_resumes_its_upload(registry, artifacts, tmp_path):
    token = login(registry, "alice")
    project = write_project(
        tmp_path / "p", name="alice/science", version="1.0.0", artifact=str(artifacts["science"])
    )
    size = artifacts["science"].stat().st_size
    chunk = 100_000
    with FaultProxy(registry.url) as proxy:
        script = textwrap.dedent(
            f"""
            from tvreg._registry.publish import publish
            publish({str(project)!r}, registry={proxy.url!r}, token={token!r}, chunk_size={chunk})
            """
        )
        env = dict(os.environ, TVREG_FAULT="publish:chunk")
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
        assert proc.returncode == -9, proc.stderr
        first = _api(proxy.requests)
        assert ("POST", "/api/v1/uploads", None) in first
        assert [r for r in first if r[0] == "PATCH"][-1][2] == "0"  # killed right after the first chunk
        upload_id = next(p for m, p, _ in first if m == "PATCH").rsplit("/", 1)[1]
        with RegistryClient(registry.url) as c, pytest.raises(NotFound):
            c.version("alice/science", "1.0.0")

        proxy.requests.clear()
        res = publish(project, registry=proxy.url, token=token, chunk_size=chunk)
        second = _api(proxy.requests)
    assert res.status == "published" and res.size == size
    assert ("POST", "/api/v1/uploads", None) not in second
    assert ("GET", f"/api/v1/uploads/{upload_id}", None) in second
    offsets = [int(o) for m, _, o in second if m == "PATCH"]
    assert offsets == list(range(chunk, size, chunk))
    assert ("PUT", "/api/v1/skills/alice/science/versions/1.0.0", None) in second
    with RegistryClient(registry.url) as c:
        assert c.version("alice/science", "1.0.0")["digest"] == res.digest
