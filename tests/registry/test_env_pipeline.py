"""One pipeline for the CLI and the library (issue #16): resolve once, check on that resolution,
dry runs that are the real run minus writes, a no-op that loads no torch, and typo hints.

The real registry runs on loopback; the CLI runs in-process unless a test needs a fresh
interpreter (to see which modules a command imports).
"""

from __future__ import annotations

import shutil

import pytest
from client_helpers import FaultProxy, cli, login, write_project
from conftest import rewrite_manifest
from helpers import cli_without_torch, tree_digest
from test_client_check import _publish_two, artifacts  # noqa: F401 - fixture
from test_client_resolve import published, versions  # noqa: F401 - fixtures
from test_env_sharing import _model, _stats, built, teams  # noqa: F401 - fixtures

import tvreg
from tvreg._env.lockfile import read_lock
from tvreg._util.paths import cache_dir, data_dir
from tvreg._util.progress import Progress

pytestmark = pytest.mark.parametrize("registry", ["sqlite"], indirect=True)


class _Recorder(Progress):
    """A progress sink that keeps the warnings and notes it is given (what a GUI would show)."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.notes: list[str] = []

    def warn(self, message):
        self.warnings.append(message)

    def note(self, message):
        self.notes.append(message)


def _resolutions(proxy, *names):
    """How many times each skill's metadata (what a resolution reads) was asked for.

    Counts first pages: skill info is paged, and a later page is the same reading continued.
    """
    from urllib.parse import parse_qs, urlsplit

    def first_page(path: str, name: str) -> bool:
        url = urlsplit(path)
        return url.path == f"/api/v1/skills/{name}" and parse_qs(url.query).get("page", ["1"]) == ["1"]

    return [sum(1 for m, p, _ in proxy.requests if m == "GET" and first_page(p, n)) for n in names]


def test_install_resolves_once_and_warns_from_that_resolution(
    registry, family, artifacts, tmp_path, monkeypatch  # noqa: F811
):
    model = _publish_two(registry, family, artifacts, tmp_path)
    monkeypatch.setenv("TVREG_CACHE_DIR", str(tmp_path / "fresh-cache"))  # sketches come from the registry
    args = ["install", "alice/science", "alice/coding", "--into", model, "--weight", "coding=0.001"]
    before, stores = tree_digest(model), _everything()
    with FaultProxy(registry.url) as proxy:
        dry = cli(*args, "--dry-run", "--registry", proxy.url)
        assert dry.exit_code == 0, dry.output
        assert tree_digest(model) == before and _everything() == stores, "the dry run wrote (sketches?)"
        assert _resolutions(proxy, "alice/science", "alice/coding") == [1, 1]
        proxy.requests.clear()
        real = cli(*args, "--registry", proxy.url)
        assert real.exit_code == 0, real.output
        assert _resolutions(proxy, "alice/science", "alice/coding") == [1, 1], "the install resolved twice"
        warning = [line for line in real.stderr.splitlines() if "may be drowned out" in line]
        assert warning and warning == [line for line in dry.stderr.splitlines() if "may be drowned out" in line]
        assert "hint: lower ω of `science`" in real.stderr

        # The library is the same pipeline: same warnings (through its progress), same lock.
        other = tmp_path / "from-python"
        shutil.copytree(family.general, other)
        assert cli("init", other, "--base", family.pre, "--general-size", 275000).exit_code == 0
        seen = _Recorder()
        res = tvreg.install(
            ["alice/science", "alice/coding"], into=other, weights={"coding": 0.001}, registry=proxy.url,
            progress=seen,
        )  # fmt: skip
    assert res.changed and [w for w in seen.warnings if "may be drowned out" in w]
    assert read_lock(other).skills == read_lock(model).skills
    assert read_lock(other).output_fingerprint == read_lock(model).output_fingerprint


def _everything():
    return tree_digest(data_dir()) if data_dir().exists() else {}, tree_digest(cache_dir()) if cache_dir().exists() else {}


@pytest.mark.parametrize("case", ["conflicting-requires", "yanked-pin", "wrong-base-registry"])
def test_dry_run_parity_for_requires_and_yanks(teams, built, family, tmp_path, registry, case):  # noqa: F811
    if case == "conflicting-requires":
        tool = rewrite_manifest(built["bob"], tmp_path / "tool.tvskill", name="tool", requires={"bob/science": "^2"})
        login(registry, "carol")
        project = write_project(tmp_path / "p-tool", name="carol/tool", version="1.0.0", artifact=str(tool))
        assert cli("publish", project).exit_code == 0
        args, code, line = ["carol/tool"], 1, "error: "
    elif case == "wrong-base-registry":
        login(registry, "dave")
        project = write_project(tmp_path / "p-dave", name="dave/science", version="1.0.0", artifact=str(built["wrong"]))
        assert cli("publish", project).exit_code == 0
        args, code, line = ["dave/science"], 1, "error: "
    else:
        assert cli("yank", "alice/science@1.0.0", "--reason", "regressed").exit_code == 0
        args, code, line = ["alice/science@1.0.0"], 0, "warning: `alice/science@1.0.0` is yanked (regressed)"
    model = _model(family, tmp_path)
    before, stores = tree_digest(model), _everything()
    dry = cli("install", *args, "--dry-run", "--into", model)
    assert tree_digest(model) == before and _everything() == stores, "a dry run wrote something"
    real = cli("install", *args, "--into", model)
    assert (dry.exit_code, real.exit_code) == (code, code), (dry.output, real.output)
    assert dry.stderr.startswith(line) and real.stderr.startswith(line)
    assert dry.stderr.splitlines()[0] == real.stderr.splitlines()[0]
    assert "Traceback" not in dry.stderr + real.stderr
    if case == "conflicting-requires":
        assert "requires bob/science^2, no version of bob/science fits" in real.stderr
    if case == "wrong-base-registry":
        assert "base" in real.stderr.splitlines()[0], real.stderr
    if code:
        assert tree_digest(model) == before


def test_nothing_to_change_loads_no_torch_and_writes_nothing(teams, family, tmp_path):  # noqa: F811
    model = _model(family, tmp_path)
    assert cli("install", "alice/science", "bob/science", "--weight", "bob/science=0.3", "--into", model).exit_code == 0
    stats, digest, stores = _stats(model), tree_digest(model), _everything()
    for args in (
        ["install", "alice/science", "--into", model],
        ["install", "bob/science", "--weight", "bob/science=0.3", "--into", model],
        ["install", "--into", model],
        ["upgrade", "--into", model],
        ["upgrade", "alice/science", "--into", model],
        ["sync", "--locked", "--into", model],
        ["sync", "--into", model],
    ):
        stdout, torch_free = cli_without_torch(*args)
        assert "Nothing to change:" in stdout and "2 skill(s) already installed" in stdout, args
        assert torch_free, args
        assert _stats(model) == stats and tree_digest(model) == digest, args
    assert _everything()[0] == stores[0], "a no-op wrote to the store"
    # Anything that would change goes the full way: a new weight rewrites the model.
    res = cli("install", "bob/science", "--weight", "bob/science=0.2", "--into", model)
    assert res.exit_code == 0 and "Installed 2 skill(s)" in res.stdout, res.output
    assert _stats(model) != stats


def test_the_no_op_fingerprint_equals_the_full_one(teams, family, tmp_path):  # noqa: F811
    from tvreg._env.noop import cached_fingerprint
    from tvreg._format.fingerprint import fingerprint

    model = _model(family, tmp_path)
    assert cli("install", "alice/science", "--into", model).exit_code == 0
    assert cached_fingerprint(model) == fingerprint(model) == read_lock(model).output_fingerprint
    shard = next(model.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes())  # same bytes, new stat identity: the stat cache no longer vouches
    assert cached_fingerprint(model) is None


def test_a_mistyped_bare_name_suggests_the_close_one(teams, family, tmp_path):  # noqa: F811
    model = _model(family, tmp_path)
    before = tree_digest(model)
    for extra in ([], ["--dry-run"]):
        res = cli("install", "sciense", "--namespace", "alice", "--into", model, *extra)
        assert res.exit_code == 1
        assert res.stderr.startswith("error: no skill named `sciense` in your namespaces (searched: `alice`).")
        assert "hint: did you mean `alice/science`?" in res.stderr
        assert "Traceback" not in res.stderr
    res = cli("install", "zzzzzz", "--namespace", "alice", "--into", model)
    assert res.exit_code == 1 and "did you mean" not in res.stderr
    assert tree_digest(model) == before


def test_uninstall_dry_run_refuses_alike_and_shows_the_orphans(published, family, tmp_path):  # noqa: F811
    model = _model(family, tmp_path)
    assert cli("install", "alice/coding@^1", "--into", model).exit_code == 0
    before, stores = tree_digest(model), _everything()
    dry = cli("uninstall", "alice/science", "--dry-run", "--into", model)
    real = cli("uninstall", "alice/science", "--into", model)
    assert (dry.exit_code, real.exit_code) == (1, 1)
    assert dry.stderr.splitlines()[0] == real.stderr.splitlines()[0] == (
        "error: cannot uninstall `alice/science`: `alice/coding@1.0.0` requires it."
    )
    stores = _everything()
    dry = cli("uninstall", "alice/coding", "--dry-run", "--into", model)
    assert dry.exit_code == 0, dry.output
    assert "removing `alice/science@1.1.0`: only the uninstalled skills required it." in dry.stderr
    removed = sorted(w[1] for w in map(str.split, dry.stdout.splitlines()) if w[:1] == ["-"])
    assert removed == ["alice/coding", "alice/science"], dry.stdout
    assert "Would install 0 skill(s)" in dry.stdout
    after = _everything()
    assert tree_digest(model) == before and after == stores, {
        k for part in (0, 1) for k in set(after[part]) ^ set(stores[part]) | {
            k for k in after[part] if after[part].get(k) != stores[part].get(k)}
    }
    real = cli("uninstall", "alice/coding", "--into", model)
    assert real.exit_code == 0 and "removing `alice/science@1.1.0`" in real.stderr
    assert read_lock(model).skills == ()
