"""The test helpers hold the project's rules for tests: under CI a missing component fails, locally it skips."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import ROOT, subprocess_env, wait_until

_MODULE = '''
from helpers import importorskip_unless_ci
importorskip_unless_ci("tvreg_no_such_component", reason="the component is not installed")

def test_needs_it():
    pass
'''


def _run(tmp_path, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_needs_component.py").write_text(_MODULE)
    env = subprocess_env()
    env["PYTHONPATH"] += f":{ROOT / 'tests'}"
    env.pop("CI", None)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_missing_component_skips_locally_with_its_reason(tmp_path):
    res = _run(tmp_path, None)
    assert res.returncode == 5, res.stdout  # 5: nothing ran, nothing failed
    assert "1 skipped" in res.stdout and "the component is not installed" in res.stdout


def test_missing_component_fails_under_ci(tmp_path):
    res = _run(tmp_path, "1")
    assert res.returncode != 0, res.stdout
    assert "the component is not installed" in res.stdout and "CI must run these tests" in res.stdout
    assert "skipped" not in res.stdout


def test_wait_until_returns_once_the_condition_holds():
    calls = iter([0, "", None, "ready"])
    assert wait_until(lambda: next(calls), "the value") == "ready"


def test_wait_until_fails_naming_what_it_waited_for():
    with pytest.raises(AssertionError, match=r"timed out after 0.1 s waiting for the server to close"):
        wait_until(lambda: False, "the server to close", timeout=0.1)
