"""Blobs in an S3-compatible object store: the real server against a real S3 server on loopback.

moto's standalone server speaks the S3 HTTP API on 127.0.0.1; the registry reaches it
through fsspec/s3fs exactly as it would reach AWS or MinIO (``--blob-url s3://…`` and
``--blob-option client_kwargs=…``). Uploads are staged on local disk and the blob appears
in the bucket only after its digest and size are checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid

import pytest
from client_helpers import write_project

import tvreg
from tvreg._registry.cache import BlobCache

_MISSING = [m for m in ("s3fs", "moto", "boto3") if __import__("importlib").util.find_spec(m) is None]
if _MISSING:
    _reason = f"the object-store tests need {', '.join(_MISSING)}: pip install -e '.[test]'"
    if os.environ.get("CI"):
        pytest.fail(f"{_reason} (CI must run them).", pytrace=False)
    pytest.skip(_reason, allow_module_level=True)

CREDENTIALS = {"key": "testing", "secret": "testing"}


class S3:
    """A moto S3 server on loopback and a boto3 client for looking inside its buckets."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        sock = __import__("socket").socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def new_bucket(self) -> str:
        name = f"tvreg-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in listed.get("Contents", []))

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def blob_args(self, bucket: str) -> tuple[str, ...]:
        client_kwargs = {"endpoint_url": self.endpoint, "region_name": "us-east-1"}
        return (
            "--blob-url",
            f"s3://{bucket}/registry",
            "--blob-option",
            "client_kwargs=" + json.dumps(client_kwargs),
            *(a for k, v in CREDENTIALS.items() for a in ("--blob-option", f"{k}={v}")),
        )


@pytest.fixture(scope="module")
def s3():
    server = S3()
    try:
        yield server
    finally:
        server.server.stop()


@pytest.fixture
def bucket(s3) -> str:
    return s3.new_bucket()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request, tmp_path, make_registry, s3, bucket):
    """The conftest ``registry``, with its blobs in ``bucket`` (overrides it for this module, ``api`` included)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry' / 'registry.db'}"
    else:
        cluster = request.getfixturevalue("postgres_cluster")
        url = cluster.create_database(template=request.getfixturevalue("postgres_template"))
        request.addfinalizer(lambda: cluster.drop_database(url))
    reg = make_registry(url, extra_args=s3.blob_args(bucket))
    reg.start()
    return reg


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _key(data: bytes) -> str:
    hexd = hashlib.sha256(data).hexdigest()
    return f"registry/sha256/{hexd[:2]}/{hexd}"


def test_a_blob_reaches_the_bucket_only_after_publish_verifies_it(
    registry, api, s3, bucket, server_artifacts
):
    token = registry.make_user("alice")
    data = server_artifacts.make("science", "1.0.0")
    upload_id = api.upload(token, data, chunk=50_000)
    assert s3.keys(bucket) == []  # chunks are staged on local disk, never in the bucket
    assert [p.name for p in registry.staged_files()] == [upload_id]

    with api.client(token) as c:
        r = c.put("/skills/alice/science/versions/1.0.0", json={"upload_id": upload_id})
    assert r.status_code == 201, r.text
    assert s3.keys(bucket) == [_key(data)]
    assert s3.get(bucket, _key(data)) == data
    assert registry.staged_files() == [] and registry.blob_files() == []


def test_a_digest_mismatch_puts_nothing_in_the_bucket(registry, api, s3, bucket, server_artifacts):
    token = registry.make_user("alice")
    data = server_artifacts.make("science", "1.0.0")
    declared = _sha(data[:-1] + bytes([data[-1] ^ 1]))
    r = api.publish(token, "alice/science", "1.0.0", data, digest=declared)
    assert r.status_code == 400 and r.json()["error"]["code"] == "digest_mismatch"
    assert r.json()["error"]["expected"] == declared and r.json()["error"]["found"] == _sha(data)
    assert s3.keys(bucket) == []
    assert registry.staged_files() == []


def test_downloads_stream_from_the_bucket_and_honour_ranges(registry, api, server_artifacts):
    token = registry.make_user("alice")
    data = server_artifacts.make("science", "1.0.0")
    assert api.publish(token, "alice/science", "1.0.0", data).status_code == 201
    path = "/skills/alice/science/versions/1.0.0/artifact"
    with api.client() as c:
        whole = c.get(path)
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["content-length"] == str(len(data))
        assert whole.headers["x-tvreg-digest"] == _sha(data)
        assert whole.headers["accept-ranges"] == "bytes"

        r = c.get(path, headers={"Range": "bytes=10-99"})
        assert r.status_code == 206 and r.content == data[10:100]
        assert r.headers["content-range"] == f"bytes 10-99/{len(data)}"
        assert r.headers["content-length"] == "90"

        r = c.get(path, headers={"Range": f"bytes={len(data) - 7}-"})
        assert r.status_code == 206 and r.content == data[-7:]
        r = c.get(path, headers={"Range": "bytes=-5"})
        assert r.status_code == 206 and r.content == data[-5:]
        r = c.get(path, headers={"Range": f"bytes=5-{len(data) + 100}"})
        assert r.status_code == 206 and r.content == data[5:]

        r = c.get(path, headers={"Range": f"bytes={len(data)}-"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(data)}"
        r = c.get(path, headers={"Range": "bytes=0-9", "If-Range": '"sha256:other"'})
        assert r.status_code == 200 and r.content == data

        head = c.head(path)
        assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
        assert head.content == b""


def test_publish_and_fetch_round_trip_through_the_client(registry, s3, bucket, server_artifacts, tmp_path):
    token = registry.make_user("alice")
    artifact = server_artifacts.science
    project = write_project(tmp_path / "p", name="alice/science", version="1.0.0", artifact=str(artifact))
    res = tvreg.publish(project, registry=registry.url, token=token, chunk_size=100_000)
    assert res.status == "published"
    data = artifact.read_bytes()
    assert s3.keys(bucket) == [_key(data)]

    got = tvreg.fetch_skill(
        "alice/science@1.0.0",
        base_fingerprint=None,
        registry=registry.url,
        cache=BlobCache(tmp_path / "cache"),
    )
    assert got.read_bytes() == data


def test_gc_removes_unreferenced_blobs_from_the_bucket(registry, api, s3, bucket, server_artifacts):
    token = registry.make_user("alice")
    data = server_artifacts.make("science", "1.0.0")
    assert api.publish(token, "alice/science", "1.0.0", data).status_code == 201
    orphan = "registry/sha256/ab/" + "ab" * 32
    s3.client().put_object(Bucket=bucket, Key=orphan, Body=b"orphan")

    blob_args = s3.blob_args(bucket)
    registry.admin("gc", "--grace-hours", "0", *blob_args)
    assert s3.keys(bucket) == [_key(data)]


def test_a_store_that_does_not_answer_stops_the_server_at_startup(tmp_path):
    from click.testing import CliRunner

    from registry_server.cli import cli

    client_kwargs = json.dumps({"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"})
    args = ["serve", "--data", str(tmp_path / "d"), "--blob-url", "s3://nowhere/x"]
    args += ["--blob-option", f"client_kwargs={client_kwargs}", "--blob-option", "key=k"]
    args += ["--blob-option", "secret=s", "--blob-option", 'config_kwargs={"retries": {"max_attempts": 1}}']
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: the blob store `s3://nowhere/x` failed while opening it:")


def test_a_blob_option_without_a_value_is_a_usage_error(tmp_path):
    from click.testing import CliRunner

    from registry_server.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--blob-url", "s3://b", "--blob-option", "anon"])
    assert result.exit_code == 2
    assert "`anon` is not key=value" in result.stderr


def test_the_server_reports_a_missing_s3fs_by_name(monkeypatch, tmp_path):
    from registry_server.errors import Unavailable
    from registry_server.storage_fsspec import FsspecBlobStore

    def without_s3fs(url, **options):
        raise ImportError("Install s3fs to access S3")  # what fsspec says when s3fs is missing

    monkeypatch.setattr("fsspec.core.url_to_fs", without_s3fs)
    with pytest.raises(
        Unavailable, match=r"is not installed .*; install it with `pip install 'tvreg\[s3\]'`"
    ):
        FsspecBlobStore("s3://bucket/x", staging=tmp_path)
