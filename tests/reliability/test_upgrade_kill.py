"""``kill -9`` of ``tvreg upgrade`` at each phase leaves the model and tvreg.lock old or new, never mixed.

docs/reliability.md row 21 for upgrades (install and uninstall are in tests/test_interrupt.py and
tests/test_environments.py): the crash points of the install pipeline (decode, shard
writing, just before and just after the swap) are hit by a real SIGKILL of the CLI
process, then the model directory is compared file by file with its state before.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from client_helpers import build_artifacts, cli, login, write_project
from helpers import copy_model, subprocess_env, tree_digest

from tvreg._env.environment import init_environment
from tvreg._env.lockfile import read_lock


@pytest.fixture(scope="module")
def artifacts(family, tmp_path_factory):
    return build_artifacts(family, tmp_path_factory.mktemp("upgrade-artifacts"))


@pytest.mark.parametrize("registry", ["sqlite"], indirect=True)
def test_a_killed_upgrade_leaves_old_or_new_and_the_retry_upgrades(registry, artifacts, family, tmp_path):
    login(registry, "alice")
    for key, version in (("science", "1.0.0"), ("science-1.0.1", "1.0.1")):
        project = write_project(
            tmp_path / key, name="alice/science", version=version, artifact=str(artifacts[key])
        )
        if version == "1.0.0":
            assert cli("publish", project).exit_code == 0
    model = copy_model(family.general, tmp_path / "mymodel")
    init_environment(model, base=family.pre, general_size=10000)
    res = cli("install", "alice/science@^1.0.0", "--into", model)
    assert res.exit_code == 0, res.stderr
    assert cli("publish", tmp_path / "science-1.0.1").exit_code == 0
    old = tree_digest(model)

    def upgrade(fault: str | None) -> subprocess.CompletedProcess[str]:
        env = subprocess_env()
        if fault:
            env["TVREG_FAULT"] = fault
        return subprocess.run(
            [sys.executable, "-m", "tvreg.cli", "upgrade", "--into", str(model)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    for point in ("install:decode", "install:before-swap"):
        proc = upgrade(point)
        assert proc.returncode == -signal.SIGKILL, (point, proc.stderr)
        assert tree_digest(model) == old, point
        assert [s.version for s in read_lock(model).skills] == ["1.0.0"]

    proc = upgrade("install:after-swap")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    new = tree_digest(model)
    assert new != old and [s.version for s in read_lock(model).skills] == ["1.0.1"]

    proc = upgrade(None)  # nothing left to do, and nothing left behind
    assert proc.returncode == 0, proc.stderr
    assert tree_digest(model) == new
    assert not list(model.parent.glob(f".{model.name}.tvreg-*"))
