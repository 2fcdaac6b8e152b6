"""The schema is made by migrations, upgrades keep data, and a server never runs on an old schema."""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import datetime, timezone

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import JSON, DateTime, bindparam, create_engine, text

from registry_server.cli import cli
from registry_server.migrate import head_revision
from registry_server.models import Base

MANIFEST = {
    "format_version": 1,
    "name": "science",
    "version": "1.0.0",
    "kind": "task_vector",
    "base_fingerprint": "ab" * 32,
    "dataset_size": 61000,
    "dataset_unit": "examples",
    "description": "from before the upgrade",
    "tensors": {},
}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request, tmp_path) -> str:
    """The URL of a database with no schema at all."""
    if request.param == "sqlite":
        (tmp_path / "registry").mkdir()
        return f"sqlite:///{tmp_path / 'registry' / 'registry.db'}"
    cluster = request.getfixturevalue("postgres_cluster")
    url = cluster.create_database()
    request.addfinalizer(lambda: cluster.drop_database(url))
    return url


def _db(url: str, tmp_path, *args: str) -> str:
    result = CliRunner().invoke(
        cli,
        ["db", *args, "--database-url", url, "--data", str(tmp_path / "registry")],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    return result.stdout


def _execute(url: str, *statements) -> list[tuple]:
    engine = create_engine(url)
    rows: list[tuple] = []
    try:
        with engine.begin() as conn:
            for statement, params in statements:
                result = conn.execute(statement, params)
                if result.returns_rows:
                    rows = [tuple(r) for r in result]
    finally:
        engine.dispose()
    return rows


def _sql(statement: str, **types):
    return text(statement).bindparams(*(bindparam(k, type_=t) for k, t in types.items()))


def test_upgrade_from_the_first_migration_keeps_the_data(empty_database, tmp_path, make_registry):
    url = empty_database
    _db(url, tmp_path, "upgrade", "--revision", "0001")
    assert _db(url, tmp_path, "current").strip() == f"0001 (head: {head_revision()})"
    now = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
    ts = DateTime(timezone=True)
    _execute(
        url,
        (_sql("INSERT INTO users (id, name, created_at) VALUES (1, 'alice', :now)", now=ts), {"now": now}),
        (
            _sql("INSERT INTO teams (id, name, personal, created_at) VALUES (1, 'alice', :t, :now)", now=ts),
            {"t": True, "now": now},
        ),
        (text("INSERT INTO memberships (id, team_id, user_id, role) VALUES (1, 1, 1, 'admin')"), {}),
        (
            _sql(
                "INSERT INTO namespaces (id, name, normalized_name, team_id, private, created_at) "
                "VALUES (1, 'alice', 'alice', 1, :f, :now)",
                now=ts,
            ),
            {"f": False, "now": now},
        ),
        (
            _sql(
                "INSERT INTO skills (id, namespace_id, name, normalized_name, description, created_at) "
                "VALUES (1, 1, 'science', 'science', 'from before the upgrade', :now)",
                now=ts,
            ),
            {"now": now},
        ),
        (
            _sql(
                "INSERT INTO versions (id, skill_id, version, digest, size, manifest, base_fingerprint, kind, "
                "dataset_size, dataset_unit, published_at, publisher_id, yanked, yanked_reason) VALUES "
                "(1, 1, '1.0.0', :digest, 1234, :manifest, :base, 'task_vector', 61000, 'examples', :now, 1, :f, NULL)",
                manifest=JSON(),
                now=ts,
            ),
            {
                "digest": "sha256:" + "cd" * 32,
                "manifest": MANIFEST,
                "base": "ab" * 32,
                "now": now,
                "f": False,
            },
        ),
        (text("INSERT INTO dist_tags (skill_id, tag, version_id) VALUES (1, 'latest', 1)"), {}),
    )

    _db(url, tmp_path, "upgrade")
    assert _db(url, tmp_path, "current").strip() == f"{head_revision()} (head: {head_revision()})"

    registry = make_registry(url)
    registry.start()
    info = httpx.get(registry.url + "/api/v1/skills/alice/science").json()
    assert info["description"] == "from before the upgrade" and info["dist_tags"] == {"latest": "1.0.0"}
    (version,) = info["versions"]
    assert version["manifest"] == MANIFEST
    assert version["published_at"] == "2024-05-01T12:30:00+00:00"
    assert version["downloads"] == info["downloads"] == 0  # 0009_downloads: the new column on an old row
    assert (version["digest"], version["size"], version["publisher"]) == (
        "sha256:" + "cd" * 32,
        1234,
        "alice",
    )
    # the tables 0002 added work on the upgraded database
    token = registry.token("alice")
    r = httpx.post(
        registry.url + "/api/v1/uploads",
        json={"size": 10, "digest": "sha256:" + "0" * 64},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 201, r.text
    assert registry.sql("SELECT action FROM audit ORDER BY id") == [("token.create",), ("upload.create",)]


def test_the_migrations_build_exactly_the_models(empty_database, tmp_path):
    _db(empty_database, tmp_path, "upgrade")
    engine = create_engine(empty_database)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
    finally:
        engine.dispose()
    assert diff == []


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(url: str, tmp_path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "registry_server.cli",
            "serve",
            "--database-url",
            url,
            "--data",
            str(tmp_path / "registry"),
        ]
        + ["--port", str(_port())],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_server_refuses_a_schema_behind_head(empty_database, tmp_path):
    _db(empty_database, tmp_path, "upgrade", "--revision", "0001")
    res = _serve(empty_database, tmp_path)
    assert (res.returncode, res.stdout) == (1, "")
    assert res.stderr == (
        f"error: the registry database schema is at revision 0001, behind this server's {head_revision()}; "
        "run `tvreg-server db upgrade` (with the same --data or --database-url) first.\n"
    )
    admin = CliRunner().invoke(cli, ["admin", "create-user", "bob", "--database-url", empty_database])
    assert admin.exit_code == 1 and "`tvreg-server db upgrade`" in admin.stderr


def test_an_empty_server_database_is_refused_but_a_new_sqlite_dir_is_created(tmp_path, request):
    cluster = request.getfixturevalue("postgres_cluster")
    url = cluster.create_database()
    request.addfinalizer(lambda: cluster.drop_database(url))
    res = _serve(url, tmp_path)
    assert res.returncode == 1
    assert res.stderr.startswith(
        "error: the registry database has no registry schema yet; run `tvreg-server db upgrade`"
    )

    fresh = tmp_path / "fresh"
    made = CliRunner().invoke(cli, ["admin", "create-user", "alice", "--data", str(fresh)])
    assert made.exit_code == 0, made.stderr
    assert (fresh / "registry.db").is_file()
    current = CliRunner().invoke(cli, ["db", "current", "--data", str(fresh)])
    assert current.stdout.strip() == f"{head_revision()} (head: {head_revision()})"
